#!/usr/bin/env bash
# Runs every test ringpush has: formatting, lints, unit and integration tests (the real
# binary over real sockets), the Autobahn conformance suite against /echo, and a bounded fuzz
# run of every fuzz target (when the nightly toolchain is installed).
# Installs what the tests need: Debian packages (scripts/deps.sh), chromium and
# playwright-core for the JavaScript client's browser tests (scripts/browser-deps.sh), and
# the Autobahn runner's venv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

echo "== test dependencies (Debian packages, when missing)"
scripts/deps.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings
echo "== cargo build (release)"
cargo build --workspace --release --bins
echo "== browser test dependencies (chromium, playwright-core)"
scripts/browser-deps.sh
echo "== cargo test"
cargo test --workspace --release
echo "== autobahn (all cases but compression, 12.* and 13.*)"
scripts/autobahn.sh "${CARGO_TARGET_DIR:-target}/release/ringpush"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "== fuzz (every target: seeds, then ${FUZZ_SECONDS:-60} s)"
    scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
else
    echo "== fuzz NOT RUN: the nightly toolchain is missing (rustup toolchain install nightly)"
fi
echo "== all tests passed in $(($(date +%s) - started)) s"
