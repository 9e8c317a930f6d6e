#!/usr/bin/env bash
# ringpush vs uWebSockets.js (scripts/peer-uws.sh), side by side, same load generator.
# Each server pinned to CPU 0, ringpush-loadgen to CPU 1 (--no-pin); a fresh server, fresh
# ports and a fresh --source block for every run; runs alternate ringpush / peer.
#
#   scripts/bench-peers.sh OUT_DIR [SCENARIO...]     scenarios: idle burst echo sustained
#
# Environment: REPS [3], BASE_PORT [19000], SRC_BASE [20] (second octet of the first
# source block; each run takes the next one), ECHO_SIZE [16] (the loadgen's minimum),
# PEER_NODE [unset]: another ringpush binary (an older build) to run as the peer instead of
# uWebSockets.js, for before/after comparisons of a change (the peer is then named "base").
# Medians per scenario and server are written to OUT_DIR/medians.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:?usage: $0 OUT_DIR [SCENARIO...]}
shift
SCENARIOS=("$@")
((${#SCENARIOS[@]})) || SCENARIOS=(idle burst echo sustained)
REPS=${REPS:-3}
PORT=${BASE_PORT:-19000}
SRC=${SRC_BASE:-20}
ECHO_SIZE=${ECHO_SIZE:-16}
NODE=$ROOT/target/release/ringpush
LOADGEN=$ROOT/target/release/ringpush-loadgen
RAW=$OUT/raw
mkdir -p "$RAW"
CMDS=$OUT/commands.txt

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_server() { # kind port admin log → sets SERVER_PID
    local kind=$1 port=$2 admin=$3 log=$4
    case $kind in
    ringpush)
        echo "taskset -c 0 $NODE --listen 0.0.0.0:$port --admin 127.0.0.1:$admin --shards 1 --no-pin" >>"$CMDS"
        taskset -c 0 "$NODE" --listen "0.0.0.0:$port" --admin "127.0.0.1:$admin" --shards 1 --no-pin >"$log" 2>&1 &
        ;;
    base)
        echo "taskset -c 0 $PEER_NODE --listen 0.0.0.0:$port --admin 127.0.0.1:$admin --shards 1 --no-pin" >>"$CMDS"
        taskset -c 0 "$PEER_NODE" --listen "0.0.0.0:$port" --admin "127.0.0.1:$admin" --shards 1 --no-pin >"$log" 2>&1 &
        ;;
    uws)
        echo "taskset -c 0 scripts/peer-uws.sh $port $admin" >>"$CMDS"
        taskset -c 0 scripts/peer-uws.sh "$port" "$admin" >"$log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" && return 0
        sleep 0.1
    done
    echo "bench-peers: $kind did not come up on $port/$admin" >&2
    cat "$log" >&2
    return 1
}

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    local rc=0
    wait "$SERVER_PID" || rc=$?
    echo "server exit status $rc" >>"$1"
}

run_one() { # scenario kind rep
    local scenario=$1 kind=$2 rep=$3
    local port=$PORT admin=$((PORT + 1))
    PORT=$((PORT + 2))
    local src="127.$SRC.0.1-127.$SRC.0.254"
    SRC=$((SRC + 1))
    local tag=$scenario-$kind-$rep
    start_server "$kind" "$port" "$admin" "$RAW/$tag.server.log"
    local common=(--addr "127.0.0.1:$port" --source "$src" --no-pin --json)
    local args
    case $scenario in
    idle) args=(connect --path /ws/c -n 10000 --hold 5s --node-pid "$SERVER_PID") ;;
    burst) args=(broadcast -n 10000 --count 1 --size 64 --settle 1s --admin "127.0.0.1:$admin") ;;
    echo) args=(echo -n 512 --msg-rate 0 --pipeline 16 --size "$ECHO_SIZE" --duration 10s) ;;
    sustained) args=(broadcast -n 10000 --msg-rate 10 --size 64 --duration 10s --settle 1s --admin "127.0.0.1:$admin") ;;
    esac
    echo "[$tag] taskset -c 1 $LOADGEN ${args[*]} ${common[*]}" >>"$CMDS"
    local t0 t1 rc=0
    t0=$(cpu_ticks "$SERVER_PID")
    taskset -c 1 "$LOADGEN" "${args[@]}" "${common[@]}" >"$RAW/$tag.out" 2>"$RAW/$tag.err" || rc=$?
    t1=$(cpu_ticks "$SERVER_PID")
    echo "loadgen exit status $rc; server cpu ticks during run $((t1 - t0)) (CLK_TCK $(getconf CLK_TCK))" >>"$RAW/$tag.err"
    tail -n 1 "$RAW/$tag.out" >"$RAW/$tag.json"
    stop_server "$RAW/$tag.server.log"
    echo "bench-peers: $tag loadgen rc=$rc"
}

uname -a >"$RAW/host.txt"
nproc >>"$RAW/host.txt"
echo "RLIMIT_NOFILE $(ulimit -n)" >>"$RAW/host.txt"
PEER=uws
if [[ -n ${PEER_NODE:-} ]]; then
    PEER=base
    echo "peer: $PEER_NODE" >>"$RAW/host.txt"
else
    node --version >>"$RAW/host.txt"
fi
for scenario in "${SCENARIOS[@]}"; do
    for rep in $(seq "$REPS"); do
        run_one "$scenario" ringpush "$rep"
        sleep 1
        run_one "$scenario" "$PEER" "$rep"
        sleep 1
    done
done

python3 - "$RAW" "$OUT/medians.md" "$PEER" "${SCENARIOS[@]}" <<'PY'
import json, os, statistics, sys
raw, out, peer, scenarios = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
figures = {
    "idle": [("RSS B/conn", "memory.node_rss_per_conn_bytes", 1)],
    "burst": [("last delivery ms", "latency_us.delivery.max", 1e-3),
              ("p99 ms", "latency_us.delivery.p99", 1e-3)],
    "echo": [("frames/s", "messages_received_per_s", 1),
             ("p99 ms", "latency_us.rtt.p99", 1e-3)],
    "sustained": [("p50 ms", "latency_us.delivery.p50", 1e-3),
                  ("p99 ms", "latency_us.delivery.p99", 1e-3)],
}
def get(d, path):
    for k in path.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d
lines = ["| scenario | figure | ringpush | %s | ratio |" % peer, "|---|---|---:|---:|---:|"]
for sc in scenarios:
    for label, path, scale in figures.get(sc, []):
        med = {}
        for kind in ("ringpush", peer):
            vals = []
            for name in sorted(os.listdir(raw)):
                if name.startswith(f"{sc}-{kind}-") and name.endswith(".json"):
                    try:
                        v = get(json.load(open(os.path.join(raw, name))), path)
                    except (ValueError, OSError):
                        v = None
                    if isinstance(v, (int, float)):
                        vals.append(v * scale)
            med[kind] = statistics.median(vals) if vals else None
        a, b = med["ringpush"], med[peer]
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        fmt = lambda v: "-" if v is None else f"{v:,.1f}"
        lines.append(f"| {sc} | {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

# Charts: ringpush and the peer side by side, every run of each scenario.
for sc in "${SCENARIOS[@]}"; do
    case $sc in
    idle) scripts/plot-runs.sh "$OUT/idle-rss.svg" rss "$RAW/idle-*.json" || true ;;
    *) scripts/plot-runs.sh "$OUT/$sc-spectrum.svg" spectrum "$RAW/$sc-*.json" || true ;;
    esac
done

# The summary is written by hand from raw/; commit raw/ compressed, not as it is.
echo "raw output: $RAW (before committing: tar -C $OUT -cJf $OUT/raw.tar.xz raw && rm -rf $RAW)"
