#!/usr/bin/env bash
# Issue 10's figures: raw mode and JSON mode side by side, same node build, same load
# generator. Every run gets a fresh node, fresh ports and a fresh block of loopback source
# addresses; the node is pinned to CPU 0 and the load generator to CPU 1; runs alternate
# raw / json. Medians of REPS runs go to OUT/summary.md.
#
#   idle    N connections held: raw on /ws/bench, JSON on /ws?format=json with CHANNELS
#           channels each (bench, then fillers bench.2 … as FILLERS says); node RSS growth
#           per connection (issue goal: JSON ≤ 400 B with 4 channels, raw ~125-230 B).
#   fanout  one 64-byte admin publish to N subscribers (JSON: one channel each): time from
#           the publish to the last delivery, p50, p99 (goal: JSON within 10 % of raw).
#   resume  JSON only: RESUME_N clients subscribe, disconnect, RESUME_MESSAGES are published,
#           all reconnect at once with `since`: time until every client has every missed
#           message, and the node's peak RSS while they resume (node --history-size is
#           RESUME_MESSAGES).
#
#   scripts/bench-json.sh [FIGURE...]        figures: idle fanout resume (default: all)
#
# Environment: N [10000], CHANNELS [4], FILLERS [shared|distinct], RESUME_N [2000],
# RESUME_MESSAGES [100], REPS [3], BASE_PORT [19700], SRC_BASE [60] (second octet of the
# first source block), OUT [benches/runs/<date>-<host>-json], NODE [target/release/ringpush].
# The defaults finish in a minute or two on a 2-core box; the issue's sizes are
#   N=100000 RESUME_N=10000 REPS=5 scripts/bench-json.sh
# (more connections than the 20,000-descriptor file cap per process: the node gets
# N / 19,000 + 1 shards and the load generator as many workers, each with its own file
# table).
set -euo pipefail
cd "$(dirname "$0")/.."
FIGURES=("$@")
((${#FIGURES[@]})) || FIGURES=(idle fanout resume)
N=${N:-10000}
CHANNELS=${CHANNELS:-4}
FILLERS=${FILLERS:-shared}
RESUME_N=${RESUME_N:-2000}
RESUME_MESSAGES=${RESUME_MESSAGES:-100}
REPS=${REPS:-3}
PORT=${BASE_PORT:-19700}
SRC=${SRC_BASE:-60}
OUT=${OUT:-benches/runs/$(date +%Y-%m-%d)-$(hostname)-json}
NODE=${NODE:-target/release/ringpush}
LOADGEN=target/release/ringpush-loadgen
[[ -x $NODE && -x $LOADGEN ]] || cargo build --release --workspace --bins
RAW=$OUT/raw
mkdir -p "$RAW"
CMDS=$OUT/commands.txt
NOFILE=$(ulimit -n)
FAILED=0
say() { echo "bench-json: $*"; }

start_node() { # port admin log shards extra... → sets NODE_PID
    local port=$1 admin=$2 log=$3 shards=$4
    shift 4
    local cmd=(taskset -c 0 "$NODE" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin"
        --shards "$shards" --no-pin --stats-interval 0 "$@")
    echo "${cmd[*]}" >>"$CMDS"
    "${cmd[@]}" >"$log" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" && return 0
        sleep 0.1
    done
    say "the node did not come up on $port/$admin"
    cat "$log" >&2
    return 1
}

run_one() { # figure mode rep
    local figure=$1 mode=$2 rep=$3
    local port=$PORT admin=$((PORT + 1))
    PORT=$((PORT + 2))
    local src="127.$SRC.0.1-127.$SRC.0.254"
    SRC=$((SRC % 250 + 1))
    local tag=$figure-$mode-$rep n=$N node_extra=()
    [[ $figure == resume ]] && n=$RESUME_N && node_extra=(--history-size "$RESUME_MESSAGES")
    local shards=$((n / (NOFILE - 1000) + 1))
    start_node "$port" "$admin" "$RAW/$tag.node.log" "$shards" "${node_extra[@]}"
    local json=()
    [[ $mode == json ]] && json=(--format json)
    local args
    case $figure in
    idle)
        args=(connect --channel bench -n "$n" --hold 5s --node-pid "$NODE_PID")
        [[ $mode == json ]] && json+=(--channels-per-conn "$CHANNELS" --fillers "$FILLERS")
        ;;
    fanout)
        args=(broadcast --channel fan -n "$n" --count 1 --size 64 --settle 1s
            --admin "127.0.0.1:$admin")
        ;;
    resume)
        args=(resume --channel bench -n "$n" --messages "$RESUME_MESSAGES" --size 64
            --admin "127.0.0.1:$admin" --node-pid "$NODE_PID")
        ;;
    esac
    local cmd=(taskset -c 1 "$LOADGEN" "${args[@]}" "${json[@]}" --addr "127.0.0.1:$port"
        --source "$src" --no-pin --json --progress 0)
    echo "[$tag] ${cmd[*]}" >>"$CMDS"
    local rc=0
    "${cmd[@]}" >"$RAW/$tag.out" 2>"$RAW/$tag.err" || rc=$?
    tail -n 1 "$RAW/$tag.out" >"$RAW/$tag.json"
    kill -TERM "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" || true
    if ((rc != 0)); then
        FAILED=1
        say "$tag FAILED (loadgen exit status $rc; see $RAW/$tag.err)"
    else
        local figures
        case $figure in
        idle) figures=$(grep '^memory ' "$RAW/$tag.out" | grep -o 'node_rss_per_conn_bytes=\S*') ;;
        fanout) figures=$(grep '^summary ' "$RAW/$tag.out" | grep -o 'delivery_p99_us=\S*') ;;
        resume) figures=$(grep '^resume ' "$RAW/$tag.out") ;;
        esac
        say "$tag ok: $figures"
    fi
}

{
    uname -a
    nproc
    echo "RLIMIT_NOFILE $NOFILE"
    echo "N=$N CHANNELS=$CHANNELS FILLERS=$FILLERS RESUME_N=$RESUME_N"
    echo "RESUME_MESSAGES=$RESUME_MESSAGES REPS=$REPS"
} >"$RAW/host.txt"
for figure in "${FIGURES[@]}"; do
    for rep in $(seq "$REPS"); do
        if [[ $figure == resume ]]; then
            run_one resume json "$rep"
        else
            run_one "$figure" raw "$rep"
            sleep 1
            run_one "$figure" json "$rep"
        fi
        sleep 1
    done
done

python3 - "$RAW" "$OUT/summary.md" "$N" "$CHANNELS" "$FILLERS" "$RESUME_N" \
    "$RESUME_MESSAGES" "$REPS" "${FIGURES[@]}" <<'PY'
import json, os, statistics, sys
raw, out, n, channels, fillers, resume_n, messages, reps = sys.argv[1:9]
figures = sys.argv[9:]
rows = {
    "idle": [("node RSS B/conn", "memory.node_rss_per_conn_bytes", 1)],
    "fanout": [("last delivery ms", "latency_us.delivery.max", 1e-3),
               ("p50 ms", "latency_us.delivery.p50", 1e-3),
               ("p99 ms", "latency_us.delivery.p99", 1e-3)],
    "resume": [("all caught up ms", "resume.catch_up_ms", 1),
               ("catch-up p99 ms", "latency_us.catch_up.p99", 1e-3),
               ("node peak RSS MB (sampled while resuming)", "resume.node_rss_peak_bytes", 1e-6),
               ("node VmHWM MB", "resume.node_rss_high_water_bytes", 1e-6),
               ("node RSS before resume MB", "memory.node_rss_held_bytes", 1e-6)],
}
sizes = {"idle": f"{n} connections (JSON: {channels} channels each, {fillers} fillers)",
         "fanout": f"{n} subscribers, one 64-byte publish",
         "resume": f"{resume_n} clients, {messages} missed messages each"}
def get(d, path):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d
def values(figure, mode, path, scale):
    vals = []
    for name in sorted(os.listdir(raw)):
        if name.startswith(f"{figure}-{mode}-") and name.endswith(".json"):
            try:
                d = json.load(open(os.path.join(raw, name)))
            except (ValueError, OSError):
                continue
            v = get(d, path)
            if d.get("errors") == 0 and isinstance(v, (int, float)):
                vals.append(v * scale)
    return vals
fmt = lambda v: "-" if v is None else f"{v:,.1f}"
lines = [f"# Issue 10 figures: raw vs JSON mode, medians of {reps} runs", "",
         "| figure | size | measure | raw | json | json / raw | json runs |",
         "|---|---|---|---:|---:|---:|---|"]
for fig in figures:
    for label, path, scale in rows.get(fig, []):
        raw_vals = values(fig, "raw", path, scale)
        json_vals = values(fig, "json", path, scale)
        a = statistics.median(raw_vals) if raw_vals else None
        b = statistics.median(json_vals) if json_vals else None
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        runs = ", ".join(fmt(v) for v in json_vals)
        lines.append(f"| {fig} | {sizes[fig]} | {label} | {fmt(a)} | {fmt(b)} | {ratio} | {runs} |")
lines += ["", "Runs with errors are left out of the medians (see raw/*.err)."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

# Raw output stays in the run directory compressed; the summary stays readable.
# Charts beside the summary: every run of a figure, raw and JSON, in one chart.
for figure in "${FIGURES[@]}"; do
    case $figure in
    idle) scripts/plot-runs.sh "$OUT/idle-rss.svg" rss "$RAW/idle-*.json" || true ;;
    fanout) scripts/plot-runs.sh "$OUT/fanout-spectrum.svg" spectrum "$RAW/fanout-*.json" || true ;;
    resume) scripts/plot-runs.sh "$OUT/resume-spectrum.svg" spectrum "$RAW/resume-*.json" || true ;;
    esac
done
tar -C "$OUT" -cJf "$OUT/raw.tar.xz" raw && rm -rf "$RAW"
exit "$FAILED"
