#!/usr/bin/env bash
# ringpush vs uWebSockets.js (scripts/peer-uws.sh), side by side, same load generator.
# Each server pinned to CPU 0, ringpush-loadgen to CPU 1 (--no-pin); a fresh server, fresh
# ports and a fresh --source block for every run; runs alternate ringpush / peer.
#
#   scripts/bench-peers.sh OUT_DIR [SCENARIO...]     scenarios: idle burst echo sustained
#
# Environment: REPS [3], BASE_PORT [19000], SRC_BASE [20] (second octet of the first
# source block; each run takes the next one), ECHO_SIZE [16] (the loadgen's minimum).
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
node --version >>"$RAW/host.txt"
for scenario in "${SCENARIOS[@]}"; do
    for rep in $(seq "$REPS"); do
        run_one "$scenario" ringpush "$rep"
        sleep 1
        run_one "$scenario" uws "$rep"
        sleep 1
    done
done

# The summary is written by hand from raw/; commit raw/ compressed, not as it is.
echo "raw output: $RAW (before committing: tar -C $OUT -cJf $OUT/raw.tar.xz raw && rm -rf $RAW)"
