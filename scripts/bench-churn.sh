#!/usr/bin/env bash
# Issue 12's subscription churn figure: N connections at once at most, each living LIFETIME
# on average, joining and leaving CHANNELS distinct channels against one node with
# `--broker` (a fresh Redis per run), REPS times. It shows that the node's reference counts
# keep Redis traffic per channel, not per connection: SUBSCRIBE calls stay near CHANNELS
# while the joins run into the hundreds of thousands.
#
#   scripts/bench-churn.sh
#
# The load generator runs `churn --channels CHANNELS`: the i-th connection it opens (reopens
# count) joins `churn.<i mod CHANNELS>` on /ws/churn.<i mod CHANNELS>, so joins cycle through
# every channel and about N / CHANNELS connections share each channel at any time. A channel
# costs Redis a SUBSCRIBE only when its first local subscriber arrives and an UNSUBSCRIBE
# when its last one leaves.
#
# Per run: Redis `INFO commandstats` before the load generator starts and after the node
# has unsubscribed everything (its deltas: subscribe, unsubscribe, ssubscribe, sunsubscribe,
# publish, evalsha, ...), Redis `INFO cpu` (used_cpu_user + used_cpu_sys) over the same
# window, the node's CPU over it (utime + stime from /proc/<pid>/stat), and the load
# generator's JSON summary (connections opened, closed, failed). Once a second a sampler
# writes raw/<run>.rate.tsv: time, Redis' subscribe and unsubscribe calls so far, and the
# node's CPU ticks so far (the commands-per-second timeline).
#
# Cores (2 here), as in the other bench scripts: the node on core 0, the load generator and
# redis-server on core 1 (taskset).
#
# Environment:
#   N [100000]          connections open at once at most
#   CHANNELS [10000]    distinct channels
#   LIFETIME [10s]      mean life of a connection (each drawn from 0.5x to 1.5x)
#   DURATION [60s]      churn time per run
#   REPS [3], CLOSE [graceful] (how churned connections end: graceful or abort),
#   SRC_BASE [150] (second octet of the first source block),
#   OUT [benches/runs/<date>-<host>-churn], NODE [target/release/ringpush],
#   REDIS_SERVER [redis-server]
# The full run (about 4 minutes on a 2-core box):
#   scripts/bench-churn.sh
# A smoke run (about 30 seconds):
#   N=2000 CHANNELS=200 DURATION=5s LIFETIME=1s REPS=1 OUT=/tmp/churn-smoke scripts/bench-churn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
CHANNELS=${CHANNELS:-10000}
LIFETIME=${LIFETIME:-10s}
DURATION=${DURATION:-60s}
REPS=${REPS:-3}
CLOSE=${CLOSE:-graceful}
SRC=${SRC_BASE:-150}
OUT=${OUT:-benches/runs/$(date +%Y-%m-%d)-$(hostname)-churn}
NODE=${NODE:-target/release/ringpush}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
LOADGEN=target/release/ringpush-loadgen
STEM=churn
[[ -x $NODE && -x $LOADGEN ]] || cargo build --release --workspace --bins
if ! command -v "$REDIS_SERVER" >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "bench-churn: needs redis-server and redis-cli (scripts/deps.sh installs them)" >&2
    exit 2
fi
RAW=$OUT/raw
mkdir -p "$RAW"
CMDS=$OUT/commands.txt
: >"$CMDS"
NOFILE=$(ulimit -n)
CLK_TCK=$(getconf CLK_TCK)
FAILED=0
PIDS=()
say() { echo "bench-churn: $*"; }
log_cmd() { # tag command... → one line of commands.txt, quoted as a shell would need it
    local tag=$1
    shift
    { printf '[%s]' "$tag"; printf ' %q' "$@"; echo; } >>"$CMDS"
}

# Everything this script started is stopped when it exits, however it exits.
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

next_source() { # → a fresh block of 254 loopback source addresses (TIME_WAIT stays behind)
    SOURCE="127.$SRC.0.1-127.$SRC.0.254"
    SRC=$((SRC % 250 + 1))
}

start_redis() { # tag → REDIS_PID, REDIS_PORT
    REDIS_PORT=$(free_port)
    local cmd=(taskset -c 1 "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save ""
        --appendonly no --protected-mode no)
    log_cmd "$1" "${cmd[@]}"
    "${cmd[@]}" >"$RAW/$1.redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.05
    done
    say "redis-server never answered on $REDIS_PORT"
    return 1
}

start_node() { # tag extra... → NODE_PID, NODE_PORT, ADMIN_PORT
    local tag=$1
    shift
    local shards=$((N / (NOFILE - 1000) + 1))
    NODE_PORT=$(free_port)
    ADMIN_PORT=$(free_port)
    local cmd=(taskset -c 0 "$NODE" --listen "127.0.0.1:$NODE_PORT"
        --admin "127.0.0.1:$ADMIN_PORT" --shards "$shards" --no-pin --stats-interval 0 "$@")
    log_cmd "$tag" "${cmd[@]}"
    "${cmd[@]}" >"$RAW/$tag.node.log" 2>&1 &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/healthz" && return 0
        sleep 0.1
    done
    say "the node $tag did not come up"
    return 1
}

# Forgets a pid that has been waited for, so that cleanup never signals a reused one.
forget() { # pid
    local kept=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

node_ticks() { # pid → utime + stime in clock ticks (fields 14 and 15 after the comm)
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

redis_calls() { # command... → the sum of their calls so far
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[:,=]' -v want=" $* " '
        /^cmdstat_/ {name = substr($1, 9); if (index(want, " " name " ")) s += $3}
        END {print s + 0}'
}

# Churn channels the node still holds in Redis (classic and sharded pub/sub; the node's own
# sessions channel stays subscribed for its whole life and is not counted).
redis_channels() {
    local classic sharded
    classic=$(redis-cli -p "$REDIS_PORT" pubsub channels "ringpush:{$STEM.*" | grep -c . || true)
    sharded=$(redis-cli -p "$REDIS_PORT" pubsub shardchannels "ringpush:{$STEM.*" |
        grep -c . || true)
    echo $((${classic:-0} + ${sharded:-0}))
}

snapshot() { # tag when → RAW/tag.when.{commandstats,cpu,node}
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' >"$RAW/$1.$2.commandstats"
    redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' >"$RAW/$1.$2.cpu"
    echo "t=$(date +%s.%N) ticks=$(node_ticks "$NODE_PID") clk_tck=$CLK_TCK" >"$RAW/$1.$2.node"
}

# Once a second until stopped: time, subscribe and unsubscribe calls so far, node ticks.
sampler() { # tag
    printf 't\tsubscribes\tunsubscribes\tnode_ticks\n'
    while kill -0 "$NODE_PID" 2>/dev/null; do
        printf '%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$(redis_calls subscribe ssubscribe)" \
            "$(redis_calls unsubscribe sunsubscribe)" "$(node_ticks "$NODE_PID" 2>/dev/null)"
        sleep 1
    done
}

run() { # rep
    local tag=churn-$1
    start_redis "$tag"
    start_node "$tag" --broker "redis://127.0.0.1:$REDIS_PORT"
    next_source
    snapshot "$tag" before
    sampler "$tag" >"$RAW/$tag.rate.tsv" 2>/dev/null &
    local sampler_pid=$!
    PIDS+=("$sampler_pid")
    local cmd=(taskset -c 1 "$LOADGEN" churn --addr "127.0.0.1:$NODE_PORT" -n "$N"
        --channels "$CHANNELS" --channel "$STEM" --lifetime "$LIFETIME" --duration "$DURATION"
        --close "$CLOSE" --source "$SOURCE" --no-pin --json --close-timeout 30s)
    log_cmd "$tag" "${cmd[@]}"
    local rc=0
    "${cmd[@]}" >"$RAW/$tag.out" 2>"$RAW/$tag.err" || rc=$?
    tail -n 1 "$RAW/$tag.out" >"$RAW/$tag.json"
    ((rc == 0)) || {
        say "$tag: load generator exit status $rc (see $RAW/$tag.err)"
        FAILED=1
    }
    # The window ends once the node has let go of every channel in Redis.
    local held=0
    for _ in $(seq 300); do
        held=$(redis_channels)
        ((held == 0)) && break
        sleep 0.1
    done
    ((held == 0)) || say "$tag: the node still holds $held channels in Redis after 30 s"
    snapshot "$tag" after
    echo "held_after=$held lg_rc=$rc" >>"$RAW/$tag.after.node"
    kill "$sampler_pid" 2>/dev/null || true
    wait "$sampler_pid" 2>/dev/null || true
    forget "$sampler_pid"
    cleanup
    sleep 1
}

say "N=$N CHANNELS=$CHANNELS LIFETIME=$LIFETIME DURATION=$DURATION REPS=$REPS -> $OUT"
for rep in $(seq "$REPS"); do
    run "$rep"
done

python3 - "$RAW" "$OUT/summary.md" "$N" "$CHANNELS" "$LIFETIME" "$DURATION" "$REPS" <<'PY'
import glob, json, os, statistics, sys

raw, out, n, channels, lifetime, duration, reps = sys.argv[1:]

def kv(path):
    d = {}
    for line in open(path):
        for item in line.split():
            if "=" in item:
                k, v = item.split("=", 1)
                d[k] = v
    return d

def commandstats(path):
    calls = {}
    for line in open(path):
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            calls[name] = int(dict(x.split("=") for x in rest.strip().split(","))["calls"])
    return calls

def info(path):
    return dict(l.strip().split(":", 1) for l in open(path) if ":" in l and not l.startswith("#"))

rows = []
for rep in range(1, int(reps) + 1):
    tag = f"churn-{rep}"
    try:
        lg = json.load(open(f"{raw}/{tag}.json"))
    except (OSError, ValueError):
        print(f"{tag}: no load generator summary", file=sys.stderr)
        continue
    b, a = commandstats(f"{raw}/{tag}.before.commandstats"), commandstats(
        f"{raw}/{tag}.after.commandstats")
    delta = {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}
    # The script's own probes (INFO, PING, PUBSUB CHANNELS) are not the node's traffic.
    delta = {k: v for k, v in delta.items()
             if v and k not in ("info", "ping") and not k.startswith("pubsub")}
    nb, na = kv(f"{raw}/{tag}.before.node"), kv(f"{raw}/{tag}.after.node")
    window = float(na["t"]) - float(nb["t"])
    node_cpu = (int(na["ticks"]) - int(nb["ticks"])) / int(nb["clk_tck"])
    cb, ca = info(f"{raw}/{tag}.before.cpu"), info(f"{raw}/{tag}.after.cpu")
    redis_cpu = sum(float(ca[k]) - float(cb[k]) for k in ("used_cpu_user", "used_cpu_sys"))
    joins = lg.get("opened", lg["upgrades"])
    run_s = lg.get("traffic_s") or lg["duration_s"]
    subs = delta.get("subscribe", 0) + delta.get("ssubscribe", 0)
    unsubs = delta.get("unsubscribe", 0) + delta.get("sunsubscribe", 0)
    commands = sum(delta.values())
    rows.append(dict(rep=rep, joins=joins, closed=lg.get("closed", 0),
                     failed=lg.get("failed", 0), run_s=run_s, window=window,
                     joins_s=joins / run_s, subs=subs, unsubs=unsubs,
                     sub_s=(subs + unsubs) / window, commands=commands,
                     ratio=commands / max(joins, 1), node_cpu=node_cpu,
                     node_pct=100 * node_cpu / window, node_us=1e6 * node_cpu / max(joins, 1),
                     redis_cpu=redis_cpu, redis_pct=100 * redis_cpu / window,
                     held=int(na.get("held_after", -1)), delta=delta))

lines = [f"# Subscription churn through the broker ({n} connections at once, {channels} "
         f"channels, lifetime {lifetime}, {duration} per run, {len(rows)} of {reps} runs)", "",
         "One node with `--broker` (core 0), one redis-server and one load generator "
         "(`churn --channels`, core 1). The window runs from just before the load generator "
         "starts to the moment the node holds no channel in Redis any more. Joins: "
         "connections opened (each joins one channel); joins/s over the churn time.", "",
         "| run | joins | joins/s | SUBSCRIBE | UNSUBSCRIBE | (UN)SUBSCRIBE/s | Redis "
         "commands / join | node CPU % | node µs / join | Redis CPU % | failed | window s |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    lines.append(f"| {r['rep']} | {r['joins']:,} | {r['joins_s']:,.0f} | {r['subs']:,} | "
                 f"{r['unsubs']:,} | {r['sub_s']:,.1f} | {r['ratio']:.4f} | "
                 f"{r['node_pct']:.1f} | {r['node_us']:.1f} | {r['redis_pct']:.1f} | "
                 f"{r['failed']} | {r['window']:.1f} |")
if rows:
    med = lambda k: statistics.median(r[k] for r in rows)
    lines.append(f"| **median** | {med('joins'):,.0f} | {med('joins_s'):,.0f} | "
                 f"{med('subs'):,.0f} | {med('unsubs'):,.0f} | {med('sub_s'):,.1f} | "
                 f"{med('ratio'):.4f} | {med('node_pct'):.1f} | {med('node_us'):.1f} | "
                 f"{med('redis_pct'):.1f} | {med('failed'):.0f} | {med('window'):.1f} |")
    lines += ["", "Redis commands over the window, by name (summed over the runs): " + ", ".join(
        f"{k} {v:,}" for k, v in sorted(
            {k: sum(r["delta"].get(k, 0) for r in rows) for r in rows
             for k in r["delta"]}.items(), key=lambda kv: -kv[1])) + "."]
    held = [r["held"] for r in rows if r["held"]]
    if held:
        lines.append(f"Channels still held in Redis at the window's end: {held} (see raw/).")
lines += ["", "Commands per second over time: raw/churn-*.rate.tsv (cumulative subscribe and "
          "unsubscribe calls, node CPU ticks, one line a second). Commands: commands.txt."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

# Raw output stays in the run directory compressed; the summary stays readable.
tar -C "$OUT" -cJf "$OUT/raw.tar.xz" raw && rm -rf "$RAW"
exit "$FAILED"
