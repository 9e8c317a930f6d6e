#!/usr/bin/env bash
# Burst fan-out: one 64-byte admin publish to N subscribers, time from the publish to the
# last delivery seen by the clients. REPS runs per size (default 5), each with a fresh node,
# fresh ports and a fresh block of loopback source addresses; node pinned to CPU 0, the load
# generator to CPU 1. Prints and writes the medians.
#
#   scripts/bench-fanout.sh [N ...]          default: 10000 100000
#
# Environment: REPS [5], BASE_PORT [19500], OUT [benches/runs/<date>-<host>-fanout], NODE
# [target/release/ringpush] (another build, for a before/after comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(10000 100000)
REPS=${REPS:-5}
PORT=${BASE_PORT:-19500}
OUT=${OUT:-benches/runs/$(date +%Y-%m-%d)-$(hostname)-fanout}
NODE=${NODE:-target/release/ringpush}
LOADGEN=target/release/ringpush-loadgen
[[ -x $NODE && -x $LOADGEN ]] || cargo build --release --workspace --bins
mkdir -p "$OUT/raw"
NOFILE=$(ulimit -n)
say() { echo "bench-fanout: $*"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

SUMMARY=$OUT/summary.md
echo "# Burst fan-out: one 64-byte publish, medians of $REPS runs" >"$SUMMARY"
echo >>"$SUMMARY"
echo "| subscribers | node shards | last delivery (ms) | p50 (ms) | p99 (ms) | runs (last delivery, ms) |" >>"$SUMMARY"
echo "|---:|---:|---:|---:|---:|---|" >>"$SUMMARY"
block=$((($(date +%s) / 60) % 50 * 4 + 30))
for n in "${SIZES[@]}"; do
    shards=$((n / (NOFILE - 1000) + 1))
    maxes=() p50s=() p99s=()
    for run in $(seq 1 "$REPS"); do
        PORT=$((PORT + 2))
        block=$((block + 1))
        taskset -c 0 "$NODE" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$((PORT + 1))" \
            --shards "$shards" --no-pin --stats-interval 0 >"$OUT/raw/node-$n-$run.out" 2>&1 &
        node=$!
        sleep 0.5
        json=$OUT/raw/loadgen-$n-$run.json
        cmd=(taskset -c 1 "$LOADGEN" broadcast --addr "127.0.0.1:$PORT" --admin "127.0.0.1:$((PORT + 1))"
            -n "$n" --no-pin --channel fan --size 64 --count 1 --settle 1s
            --source "127.$((block % 250 + 2)).0.1-127.$((block % 250 + 2)).0.254" --json)
        echo "${cmd[*]}" >>"$OUT/commands.txt"
        "${cmd[@]}" 2>"$OUT/raw/loadgen-$n-$run.err" | tail -1 >"$json" || true
        kill -INT "$node"; wait "$node" || true
        read -r max p50 p99 missing errors < <(python3 -c "
import json,sys; d=json.load(open('$json')); l=d['latency_us']['delivery']
print(l['max'], l['p50'], l['p99'], d['missing'], d['errors'])")
        say "n=$n run=$run last_delivery_us=$max p50_us=$p50 p99_us=$p99 missing=$missing errors=$errors"
        [[ $missing == 0 && $errors == 0 ]] || { say "FAILED: messages missing or errors"; exit 1; }
        maxes+=("$max") p50s+=("$p50") p99s+=("$p99")
    done
    m_max=$(printf '%s\n' "${maxes[@]}" | median)
    m_p50=$(printf '%s\n' "${p50s[@]}" | median)
    m_p99=$(printf '%s\n' "${p99s[@]}" | median)
    runs=$(printf '%s\n' "${maxes[@]}" | awk '{printf "%s%.1f", (NR > 1 ? ", " : ""), $1 / 1000}')
    printf '| %s | %s | %.1f | %.1f | %.1f | %s |\n' "$n" "$shards" "$(echo "$m_max / 1000" | bc -l)" \
        "$(echo "$m_p50 / 1000" | bc -l)" "$(echo "$m_p99 / 1000" | bc -l)" "$runs" >>"$SUMMARY"
done
cat "$SUMMARY"

# The delivery spectra of every run in one chart beside the summary.
scripts/plot-runs.sh "$OUT/fanout-spectrum.svg" spectrum "$OUT/raw/loadgen-*.json" || true

# Raw output stays in the run directory compressed; the summary stays readable.
tar -C "$OUT" -cJf "$OUT/raw.tar.xz" raw && rm -rf "$OUT/raw"
