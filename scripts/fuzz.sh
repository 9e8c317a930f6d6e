#!/usr/bin/env bash
# Bounded libFuzzer run of every fuzz target (fuzz/README.md), as CI runs it.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60, or $FUZZ_SECONDS)
#
# Needs the nightly toolchain (cargo fuzz builds with AddressSanitizer). Installs cargo-fuzz
# (pinned) under target/tools when it is not on PATH, creates the working corpus directories
# cargo-fuzz 0.13 refuses to start without, and replays the committed seeds first.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-${FUZZ_SECONDS:-60}}
targets=(frame_parse decoder handshake)
CARGO_FUZZ_VERSION=0.13.2

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: the nightly toolchain is not installed (rustup toolchain install nightly)" >&2
    exit 1
fi
tools="${CARGO_TARGET_DIR:-$PWD/target}/tools"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    if [ ! -x "$tools/bin/cargo-fuzz" ]; then
        echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION under $tools"
        cargo install --quiet --locked --root "$tools" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
    fi
    export PATH="$tools/bin:$PATH"
fi

for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
done
cargo +nightly fuzz build
for t in "${targets[@]}"; do
    echo "== fuzz $t: seeds, then ${seconds} s"
    log="target/fuzz-$t.log"
    if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t failed; the input is under fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
done
echo "== fuzz: ${#targets[@]} targets ran ${seconds} s each with no failure"
