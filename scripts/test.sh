#!/usr/bin/env bash
# Runs every test ringpush has: formatting, lints, unit and integration tests (the real
# binary over real sockets), and the Autobahn conformance suite against /echo.
# Installs what the tests need (the Autobahn runner's venv) under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build (release)"
cargo build --workspace --release --bins
echo "== cargo test"
cargo test --workspace --release
echo "== autobahn (all cases but compression, 12.* and 13.*)"
scripts/autobahn.sh "${CARGO_TARGET_DIR:-target}/release/ringpush"
echo "== all tests passed in $(($(date +%s) - started)) s"
