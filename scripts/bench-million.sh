#!/usr/bin/env bash
# One million WebSocket subscribers on one host: connect rate, memory per connection, the
# fan-out of one message to all, and a sustained broadcast.
#
# The node runs pinned to one CPU (taskset), ringpush-loadgen to another. Because RLIMIT_NOFILE
# caps each file table, the node gets about N/19000+1 shards and the load generator as many
# workers, each with its own table. Two load generator runs, each on a fresh block of
# loopback source addresses (no TIME_WAIT or port reuse between them):
#   1. oneshot:   connect N subscribers, hold them idle for HOLD (memory is sampled at its
#                 end), publish one 64-byte message through the admin API, time every delivery.
#   2. sustained: connect N subscribers again, publish at a rate that offers about
#                 SUSTAIN_DELIVERIES deliveries per second for SUSTAIN.
# Raw output and a summary land in benches/runs/<date>-<hostname>/.
#
# Environment (defaults in brackets): N [1000000], HOLD [60s], SUSTAIN [60s],
# SUSTAIN_DELIVERIES [100000], SHARDS [N/(nofile-1000)+1], WORKERS [SHARDS], PORT [18400],
# ADMIN_PORT [18401], NODE_CPU [0], LOADGEN_CPU [1], FORCE [0: refuse when memory looks short],
# NETNS [0: 1 runs everything in a fresh network namespace whose TCP established-connection
# hash has EHASH [4194304] buckets; the host's, sized at boot (262144 here), holds 2M sockets
# in chains of 8 and slows every lookup as the ramp fills it], SKIP_SUSTAINED [0], NODE_EXTRA [none: extra node flags, e.g. "--ping-interval 120s"].
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

N=${N:-1000000}
HOLD=${HOLD:-60s}
SUSTAIN=${SUSTAIN:-60s}
SUSTAIN_DELIVERIES=${SUSTAIN_DELIVERIES:-100000}
PORT=${PORT:-18400}
ADMIN_PORT=${ADMIN_PORT:-18401}
NODE_CPU=${NODE_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
FORCE=${FORCE:-0}
SKIP_SUSTAINED=${SKIP_SUSTAINED:-0}

NOFILE=$(ulimit -n)
PER_TABLE=$((NOFILE - 1000))
SHARDS=${SHARDS:-$((N / PER_TABLE + 1))}
WORKERS=${WORKERS:-$SHARDS}

NODE=$ROOT/target/release/ringpush
LOADGEN=$ROOT/target/release/ringpush-loadgen

say() { echo "bench-million: $*"; }

if [[ ${NETNS:-0} == 1 && -z ${RINGPUSH_BENCH_IN_NETNS:-} ]]; then
    ns=ringpush-bench-$$
    EHASH=${EHASH:-4194304}
    say "running inside network namespace $ns: net.ipv4.tcp_child_ehash_entries=$EHASH"
    sysctl -qw net.ipv4.tcp_child_ehash_entries="$EHASH"
    ip netns add "$ns"
    trap 'ip netns del "$ns"' EXIT
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" sysctl -qw net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
        "net.ipv4.ip_local_port_range=10000 65535"
    say "namespace ehash: $(ip netns exec "$ns" sysctl -n net.ipv4.tcp_ehash_entries)"
    RINGPUSH_BENCH_IN_NETNS=1 ip netns exec "$ns" "$0" "$@"
    exit $?
fi

if [[ ! -x $NODE || ! -x $LOADGEN ]]; then
    say "building the node and the load generator (cargo build --release --workspace)"
    cargo build --release --workspace --bins
fi

RUN_DIR=benches/runs/$(date +%Y-%m-%d)-$(hostname)
[[ -e $RUN_DIR ]] && RUN_DIR=$RUN_DIR-$(date +%H%M%S)
RAW=$RUN_DIR/raw
mkdir -p "$RAW"
say "writing to $RUN_DIR"

# Preflight: kernel memory is about 10 KB per loopback pair (both socket ends, armed recvs).
avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
need_kb=$((N * 12))
say "N=$N shards=$SHARDS workers=$WORKERS nofile=$NOFILE MemAvailable=$((avail_kb / 1024))MiB (need about $((need_kb / 1024))MiB)"
if ((avail_kb < need_kb)) && [[ $FORCE != 1 ]]; then
    say "not enough memory for $N connection pairs; lower N or set FORCE=1"
    exit 1
fi
file_max=$(cat /proc/sys/fs/file-max)
if ((file_max < 2 * N + 10000)); then
    say "fs.file-max=$file_max is below 2*N: run scripts/tune-host.sh as root first"
    exit 1
fi
{
    echo "# host"
    uname -a
    grep -m1 'model name' /proc/cpuinfo || true
    nproc
    for k in fs.nr_open fs.file-max net.core.somaxconn net.ipv4.tcp_max_syn_backlog \
        net.ipv4.ip_local_port_range net.ipv4.tcp_tw_reuse; do
        echo "$k = $(cat "/proc/sys/${k//.//}" 2>/dev/null)"
    done
    echo "nf_conntrack_max = $(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo n/a)"
    echo "RLIMIT_NOFILE = $(ulimit -Sn)/$(ulimit -Hn)"
} >"$RAW/host.txt"
cp /proc/meminfo "$RAW/meminfo-before.txt"

# A fresh /24 of loopback sources per load generator run.
BLOCK=$(( ($(date +%s) / 60) % 100 * 2 + 20 ))
SRC1="127.$BLOCK.0.1-127.$BLOCK.0.254"
SRC2="127.$((BLOCK + 1)).0.1-127.$((BLOCK + 1)).0.254"

# --no-pin: taskset decides the CPU; the node's own pinning would spread shards over cores.
# Small rings and buffer rings: these are fixed costs per shard, and there are ~53 shards.
NODE_ARGS=(--listen "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN_PORT" --shards "$SHARDS" --no-pin
    --recv-buffers 16 --recv-buffer-bytes 4KiB --sq-entries 1024 --cq-entries 8192
    --stats-interval 10s)
# shellcheck disable=SC2206 # NODE_EXTRA is a list of flags, split on purpose.
NODE_ARGS+=(${NODE_EXTRA:-})
say "node: taskset -c $NODE_CPU $NODE ${NODE_ARGS[*]}"
taskset -c "$NODE_CPU" "$NODE" "${NODE_ARGS[@]}" >"$RAW/node.out" 2>"$RAW/node.err" &
NODE_PID=$!
cleanup() { kill -TERM "$NODE_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
    grep -q "ringpush listening" "$RAW/node.out" 2>/dev/null && break
    sleep 0.1
done
if ! grep -q "ringpush listening" "$RAW/node.out"; then
    say "the node did not start:"
    cat "$RAW/node.err"
    exit 1
fi
head -1 "$RAW/node.out"
sleep 1
node_rss_idle=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$NODE_PID/status")
say "node pid=$NODE_PID idle VmRSS=$node_rss_idle bytes ($((node_rss_idle / SHARDS)) per shard)"

LG_COMMON=(--addr "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN_PORT" -n "$N" --workers "$WORKERS" --no-pin
    --recv-buffers 32 --recv-buffer-bytes 4KiB --close abort --ramp-timeout 30m
    --drain-timeout 300s --connect-timeout 30s --node-pid "$NODE_PID" --json)

say "stage 1 (oneshot): taskset -c $LOADGEN_CPU ringpush-loadgen broadcast ${LG_COMMON[*]} --source $SRC1 --settle $HOLD --count 1 --size 64"
set +e
taskset -c "$LOADGEN_CPU" "$LOADGEN" broadcast "${LG_COMMON[@]}" --source "$SRC1" \
    --settle "$HOLD" --count 1 --msg-rate 1 --size 64 \
    >"$RAW/oneshot.out" 2>"$RAW/oneshot.err"
rc1=$?
set -e
cp /proc/meminfo "$RAW/meminfo-after-oneshot.txt"
say "stage 1 exit=$rc1"
grep -E '^(summary|memory)' "$RAW/oneshot.out" || tail -5 "$RAW/oneshot.err"

rc2=skipped
if [[ $SKIP_SUSTAINED != 1 ]]; then
    RATE=$(awk -v d="$SUSTAIN_DELIVERIES" -v n="$N" 'BEGIN { printf "%.6f", d / n }')
    say "stage 2 (sustained): ringpush-loadgen broadcast ${LG_COMMON[*]} --source $SRC2 --msg-rate $RATE --duration $SUSTAIN --size 64"
    set +e
    taskset -c "$LOADGEN_CPU" "$LOADGEN" broadcast "${LG_COMMON[@]}" --source "$SRC2" \
        --msg-rate "$RATE" --duration "$SUSTAIN" --size 64 \
        >"$RAW/sustained.out" 2>"$RAW/sustained.err"
    rc2=$?
    set -e
    say "stage 2 exit=$rc2"
    grep -E '^summary' "$RAW/sustained.out" || tail -5 "$RAW/sustained.err"
fi

kill -TERM "$NODE_PID" 2>/dev/null || true
wait "$NODE_PID" 2>/dev/null || true
trap - EXIT
cp /proc/meminfo "$RAW/meminfo-after.txt"

python3 - "$RAW" "$RUN_DIR/summary.md" "$N" "$SHARDS" "$WORKERS" "$node_rss_idle" \
    "$rc1" "$rc2" <<'EOF'
import json, sys, os
raw, out, n, shards, workers, rss_idle, rc1, rc2 = sys.argv[1:]
def last_json(path):
    try:
        lines = [l for l in open(path) if l.startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except OSError:
        return None
def spectrum(path, title):
    try:
        text = open(path).read()
    except OSError:
        return ""
    start = text.find("# " + title)
    if start < 0:
        return ""
    end = text.find("#[Buckets", start)
    return text[start:text.find("\n", end) + 1]
one = last_json(os.path.join(raw, "oneshot.out"))
sus = last_json(os.path.join(raw, "sustained.out"))
L = []
L.append(f"# bench-million: {n} subscribers, {shards} node shards, {workers} loadgen workers\n")
L.append(open(os.path.join(raw, "host.txt")).read().replace("# host", "```") + "```\n")
L.append(f"Node idle VmRSS (fixed cost of {shards} shards): {int(rss_idle):,} B "
         f"({int(rss_idle) // int(shards):,} B per shard)\n")
def lat(d, k):
    v = (d or {}).get("latency_us", {}).get(k) or {}
    return f"p50 {v.get('p50')} µs, p99 {v.get('p99')} µs, p99.9 {v.get('p999')} µs, max {v.get('max')} µs ({v.get('count')} samples)"
if one:
    m = one.get("memory", {})
    L.append("## Stage 1: connect, hold, one message to all\n")
    L.append(f"- exit status {rc1}; connected {one['connected']:,} of {one['connections_target']:,}; "
             f"errors {one['errors']}; failures {one['connect_failures_total']}")
    L.append(f"- connect rate {one.get('connects_per_s') or 0:,.0f}/s over {one.get('ramp_s') or 0:.1f} s")
    L.append(f"- connect latency (start to 101): {lat(one, 'connect')}")
    L.append(f"- node RSS growth per held connection: {m.get('node_rss_per_conn_bytes')} B "
             f"({m.get('node_rss_before_bytes')} → {m.get('node_rss_held_bytes')} B)")
    L.append(f"- kernel memory per connection pair (node + loadgen sockets): MemAvailable drop "
             f"{m.get('mem_available_drop_per_conn_bytes')} B, Slab growth {m.get('slab_growth_per_conn_bytes')} B")
    L.append(f"- one 64-byte message: {one['messages_received']:,} deliveries of "
             f"{one.get('deliveries_expected', 0):,} expected, missing {one['missing']}, "
             f"out of order {one['out_of_order']}, duplicates {one['duplicates']}")
    L.append(f"- delivery latency: {lat(one, 'delivery')} (max = time to the last subscriber)\n")
    L.append("```\n" + spectrum(os.path.join(raw, "oneshot.out"), "broadcast delivery") + "```\n")
else:
    L.append(f"## Stage 1 failed (exit {rc1}); see raw/oneshot.err\n")
if sus:
    p = sus.get("publish", {})
    L.append("## Stage 2: sustained broadcast\n")
    L.append(f"- exit status {rc2}; connected {sus['connected']:,}; published {p.get('published')} "
             f"(acked {p.get('acked')}); deliveries {sus['messages_received']:,} of "
             f"{sus.get('deliveries_expected', 0):,}; missing {sus['missing']}; errors {sus['errors']}")
    L.append(f"- deliveries per second over {sus.get('traffic_s') or 0:.1f} s of traffic: "
             f"{sus.get('messages_received_per_s') or 0:,.0f}")
    L.append(f"- delivery latency: {lat(sus, 'delivery')}")
    L.append(f"- admin publish round trip: {(p.get('rtt_us') or {})}\n")
elif rc2 != "skipped":
    L.append(f"## Stage 2 failed (exit {rc2}); see raw/sustained.err\n")
open(out, "w").write("\n".join(L) + "\n")
print("\n".join(L))
EOF
say "summary: $RUN_DIR/summary.md"

# Raw output stays in the run directory compressed; the summary and commands stay readable.
tar -C "$RUN_DIR" -cJf "$RUN_DIR/raw.tar.xz" raw && rm -rf "$RAW"
say "raw output: $RUN_DIR/raw.tar.xz"
