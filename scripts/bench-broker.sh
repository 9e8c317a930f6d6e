#!/usr/bin/env bash
# Issue 12's figures, side by side in one run, REPS times each (the two set-ups alternate):
#
#   latency    one 64-byte admin publish to N subscribers: on ONE node without a broker,
#              and spread over THREE nodes joined through one Redis (`--broker`), a third
#              on each. p50, p99 and last delivery, measured by the load generators from
#              the publisher's stamp (CLOCK_REALTIME, the same clock in every process).
#   sustained  publishes per second through the broker to 3 nodes x N_SUSTAINED subscribers
#              each: one run per rate in RATES (publishes/s, fixed, SUSTAIN_S seconds). Per
#              rate: publishes/s achieved, delivery p50/p99, the CPU of every node, of Redis
#              and of both cores over the publishing window, Redis CPU per publish, and
#              where the bottleneck is.
#
#   scripts/bench-broker.sh [FIGURE...]        figures: latency sustained (default: both)
#
# Three nodes, one load generator each. Redis has one process, fresh (no persistence) for
# every run, on a free loopback port. The load generators on the second and third node
# subscribe only (`broadcast --publisher none --count K`); the script waits until the
# nodes count their subscribers and Redis counts both nodes' pub/sub subscriptions, then
# starts the first node's load generator, which connects its share and publishes through
# that node (admin API for the latency; SUS_PUBLISHER for the sustained runs). Each load
# generator judges what its own subscribers received.
# The 3-node figures: last delivery is the largest of the three; p50 and p99 are merged
# from the three delivery spectra (each weighted by its deliveries; exact to the
# spectrum's step, HdrHistogram's 5 steps per halving), and each node's own p50 / p99 /
# last delivery is listed beside them.
#
# CPU: each node's and Redis' over the publishing window, summed over their threads from
# /proc/<pid>/task/*/schedstat (ns); each core's busy and softirq share from /proc/stat.
#
# Cores (2 here): every node and redis-server on core 0, every load generator on core 1
# (taskset), as in the other bench scripts: the server side on one core, the client side
# on the other. So three nodes and Redis share the one core one node has alone, and three
# load generators share the one core one load generator has alone: the ratio is at equal
# hardware and measures what the broker path adds (Redis, a hop through each node's broker
# thread, three reactors instead of one), not what spreading over machines would gain.
#
# Environment:
#   N [10000]            latency: subscribers in all
#   N_SUSTAINED [10000]  sustained: subscribers per node
#   RATES ["5 10 20 40 80 160"]  publishes/s, climbed in order; a rate that loses
#                        deliveries ends the climb of its run (the higher ones are not run)
#   SUSTAIN_S [10]       seconds of publishing per rate
#   P99_MAX_MS [1000]    a rate is kept up when every delivery arrived, >= 95 % of it was
#                        published and the delivery p99 stays under this
#   SUS_PUBLISHER [client]  who publishes in the sustained runs: `client`, one WebSocket on
#                        node a sending data messages (nodes get --client-publish), open
#                        loop, so the rate is what the nodes and Redis take; or `admin`,
#                        POST /publish on node a, which waits for each answer (given once
#                        Redis took the publish and it came back to node a), so the rate is
#                        capped near 1 / round trip. Both run the same publish script in Redis.
#   REPS [5], SRC_BASE [100] (second octet of the first source block),
#   OUT [benches/runs/<date>-<host>-broker], NODE [target/release/ringpush],
#   REDIS_SERVER [redis-server]
# The full run (about 15 minutes on a 2-core box):
#   scripts/bench-broker.sh
# A smoke run (seconds):
#   N=300 N_SUSTAINED=300 REPS=1 RATES="100 1000" SUSTAIN_S=2 scripts/bench-broker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FIGURES=("$@")
((${#FIGURES[@]})) || FIGURES=(latency sustained)
N=${N:-10000}
N_SUSTAINED=${N_SUSTAINED:-10000}
RATES=${RATES:-5 10 20 40 80 160}
SUSTAIN_S=${SUSTAIN_S:-10}
P99_MAX_MS=${P99_MAX_MS:-1000}
SUS_PUBLISHER=${SUS_PUBLISHER:-client}
REPS=${REPS:-5}
SRC=${SRC_BASE:-100}
OUT=${OUT:-benches/runs/$(date +%Y-%m-%d)-$(hostname)-broker}
NODE=${NODE:-target/release/ringpush}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
LOADGEN=target/release/ringpush-loadgen
CHANNEL=fan
[[ -x $NODE && -x $LOADGEN ]] || cargo build --release --workspace --bins
if ! command -v "$REDIS_SERVER" >/dev/null || ! command -v redis-cli >/dev/null; then
    echo "bench-broker: needs redis-server and redis-cli (scripts/deps.sh installs them)" >&2
    exit 2
fi
RAW=$OUT/raw
mkdir -p "$RAW"
CMDS=$OUT/commands.txt
: >"$CMDS"
NOFILE=$(ulimit -n)
FAILED=0
PIDS=()
say() { echo "bench-broker: $*"; }
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
    local cmd=(taskset -c 0 "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save ""
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

start_node() { # tag shards extra... → NODE_PID, NODE_PORT, ADMIN_PORT
    local tag=$1 shards=$2
    shift 2
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

# A load generator in the background on core 1: tag n node_port extra... → LG_PID.
start_loadgen() {
    local tag=$1 n=$2 port=$3
    shift 3
    next_source
    local cmd=(taskset -c 1 "$LOADGEN" broadcast --addr "127.0.0.1:$port" -n "$n"
        --channel "$CHANNEL" --size 64 --source "$SOURCE" --no-pin --json
        --close-timeout 30s "$@")
    log_cmd "$tag" "${cmd[@]}"
    "${cmd[@]}" >"$RAW/$tag.out" 2>"$RAW/$tag.err" &
    LG_PID=$!
    PIDS+=("$LG_PID")
}

# Forgets a pid that has been waited for, so that cleanup never signals a reused one.
forget() { # pid
    local kept=() pid
    for pid in "${PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    PIDS=("${kept[@]}")
}

# Waits for a load generator; its JSON summary goes to RAW/tag.json. Its exit status is
# returned in LG_RC: a failure of the latency figure fails the script; in the sustained
# figure it means the rate was more than the nodes took (counted in the summary).
finish_loadgen() { # tag pid
    LG_RC=0
    wait "$2" || LG_RC=$?
    forget "$2"
    tail -n 1 "$RAW/$1.out" >"$RAW/$1.json"
    ((LG_RC == 0)) || say "$1: load generator exit status $LG_RC (see $RAW/$1.err)"
}

subscribers() { # admin_port → the node's subscriber count of CHANNEL
    curl -sf "http://127.0.0.1:$1/channels/$CHANNEL" 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["subscribers"])' 2>/dev/null ||
        echo 0
}

# Waits until the subscribe-only nodes hold their subscribers and Redis has a pub/sub
# subscription from each of them, so that the publisher starts only when all can hear it.
wait_subscribed() { # want admin_port...
    local want=$1 port
    shift
    for _ in $(seq 1200); do
        local ok=1
        for port in "$@"; do
            (($(subscribers "$port") >= want)) || ok=0
        done
        local numsub
        numsub=$(redis-cli -p "$REDIS_PORT" pubsub numsub "ringpush:{$CHANNEL}" | tail -n 1)
        ((ok && ${numsub:-0} >= $#)) && return 0
        sleep 0.1
    done
    say "the subscribe-only nodes never held $want subscribers each (or Redis never saw them)"
    return 1
}

stop_all() {
    cleanup
    sleep 1
}

# One CPU sample: wall time, then per process "name=CPU ns" (the run time of all its threads
# from /proc/<pid>/task/*/schedstat: exact, where /proc/<pid>/stat's utime + stime count
# 10 ms ticks, coarser than a 10 s window of a few publishes a second needs), then per core
# "cpuK=busy,softirq,total ticks" from /proc/stat.
cpu_sample() { # name=pid...
    local line item
    line="t=$(date +%s.%N)"
    for item in "$@"; do
        local pid=${item#*=}
        local ticks
        # A process that has exited is written as "gone": its figure is then unknown.
        local ns
        ns=$(cat "/proc/$pid/task/"*/schedstat 2>/dev/null |
            awk '{s += $1} END {if (NR) printf "%d", s; else print "gone"}')
        line+=" ${item%%=*}=$ns"
    done
    line+=" $(awk '/^cpu[0-9]/ {busy = $2 + $3 + $4 + $7 + $8 + $9; total = busy + $5 + $6;
        printf "%s=%d,%d,%d ", $1, busy, $8, total}' /proc/stat)"
    echo "$line"
}

# The phase column of the load generator's last progress line.
phase_of() { # err file
    { grep -o '^\[ *[0-9.]*s\] [a-z]*' "$1" 2>/dev/null || true; } | tail -n 1 | awk '{print $NF}'
}

latency_single() { # rep
    local tag=latency-single-$1
    local shards=$((N / (NOFILE - 1000) + 1))
    start_node "$tag" "$shards"
    start_loadgen "$tag" "$N" "$NODE_PORT" --admin "127.0.0.1:$ADMIN_PORT" --count 1 --settle 1s \
        --progress 0
    finish_loadgen "$tag" "$LG_PID"
    ((LG_RC == 0)) || FAILED=1
    stop_all
}

# Three nodes on one Redis; the load generators of nodes b and c subscribe only, node a's
# publishes COUNT messages at RATE (through the admin API, or as a client: PUBLISHER).
# Sets the run's pids for the CPU samples.
three_nodes() { # tag per_node_a per_node_bc count rate publisher
    local tag=$1 n_a=$2 n_bc=$3 count=$4 rate=$5 publisher=$6
    local shards=$(((n_a > n_bc ? n_a : n_bc) / (NOFILE - 1000) + 1))
    # A client publisher may publish as fast as the run asks.
    local node_extra=()
    [[ $publisher == client ]] && node_extra=(--client-publish --client-publish-rate 10000000)
    start_redis "$tag"
    local node
    for node in a b c; do
        start_node "$tag-$node" "$shards" --broker "redis://127.0.0.1:$REDIS_PORT" \
            "${node_extra[@]}"
        eval "PID_$node=$NODE_PID PORT_$node=$NODE_PORT ADMIN_$node=$ADMIN_PORT"
    done
    # Subscribers wait for the publisher's ramp, settle and publishing, then its drain.
    local wait_s=$((count / rate + 90))
    for node in b c; do
        local port=PORT_$node
        start_loadgen "$tag-$node" "$n_bc" "${!port}" --publisher none --count "$count" \
            --drain-timeout "${wait_s}s" --progress 0
        eval "LG_$node=$LG_PID"
    done
    wait_subscribed "$n_bc" "$ADMIN_b" "$ADMIN_c"
    start_loadgen "$tag-a" "$n_a" "$PORT_a" --admin "127.0.0.1:$ADMIN_a" --count "$count" \
        --msg-rate "$rate" --publisher "$publisher" --settle 1s --progress 50ms \
        --drain-timeout 30s
    LG_a=$LG_PID
}

latency_broker() { # rep
    local tag=latency-broker-$1
    local n_bc=$((N / 3))
    three_nodes "$tag" $((N - 2 * n_bc)) "$n_bc" 1 10 admin
    local node
    for node in a b c; do
        local lg=LG_$node
        finish_loadgen "$tag-$node" "${!lg}"
        ((LG_RC == 0)) || FAILED=1
    done
    stop_all
}

# One rate of the sustained ladder; OVER=1 when some deliveries failed (over capacity). (Not
# an exit status: a function called in a condition runs without `set -e`.)
sustained() { # rate rep
    local rate=$1 tag=sustained-$1-$2
    local count=$((rate * SUSTAIN_S))
    three_nodes "$tag" "$N_SUSTAINED" "$N_SUSTAINED" "$count" "$rate" "$SUS_PUBLISHER"
    # The load generators end as soon as their share arrived, often before the window's
    # end is seen: they are core 1's busy share instead.
    local procs=(node_a="$PID_a" node_b="$PID_b" node_c="$PID_c" redis="$REDIS_PID")
    # The publishing window: node a's load generator in its run phase.
    local phase=""
    while kill -0 "$LG_a" 2>/dev/null; do
        phase=$(phase_of "$RAW/$tag-a.err")
        [[ $phase == run ]] && break
        sleep 0.02
    done
    cpu_sample "${procs[@]}" >"$RAW/$tag.cpu"
    while kill -0 "$LG_a" 2>/dev/null; do
        phase=$(phase_of "$RAW/$tag-a.err")
        [[ $phase == run ]] || break
        sleep 0.02
    done
    cpu_sample "${procs[@]}" >>"$RAW/$tag.cpu"
    local node
    OVER=0
    for node in a b c; do
        local lg=LG_$node
        finish_loadgen "$tag-$node" "${!lg}"
        ((LG_RC == 0)) || OVER=1
    done
    stop_all
}

{
    uname -a
    nproc
    "$REDIS_SERVER" --version
    echo "RLIMIT_NOFILE $NOFILE"
    echo "N=$N N_SUSTAINED=$N_SUSTAINED RATES=$RATES SUSTAIN_S=$SUSTAIN_S REPS=$REPS"
} >"$RAW/host.txt"
for figure in "${FIGURES[@]}"; do
    for rep in $(seq "$REPS"); do
        case $figure in
        latency)
            say "latency run $rep: one node, no broker"
            latency_single "$rep"
            say "latency run $rep: three nodes, one Redis"
            latency_broker "$rep"
            ;;
        sustained)
            # Up the ladder until a rate loses deliveries: the higher ones would too.
            for rate in $RATES; do
                say "sustained run $rep: $rate publishes/s"
                sustained "$rate" "$rep"
                ((OVER)) || continue
                say "sustained run $rep: $rate publishes/s lost deliveries; higher rates skipped"
                break
            done
            ;;
        *) say "unknown figure $figure (latency, sustained)"; exit 2 ;;
        esac
    done
done

python3 - "$RAW" "$OUT/summary.md" "$N" "$N_SUSTAINED" "$REPS" "$RATES" "$SUSTAIN_S" \
    "$P99_MAX_MS" "$SUS_PUBLISHER" "${FIGURES[@]}" <<'PY'
import glob, json, os, statistics, sys
raw, out, n, n_sus, reps, rates, sustain_s, p99_max_ms, publisher = sys.argv[1:10]
figures = sys.argv[10:]
rates = [int(r) for r in rates.split()]
lines = [f"# Issue 12 figures: Redis broker, medians of {reps} runs", ""]

def load(path):
    try:
        return json.load(open(path))
    except (ValueError, OSError):
        return None

def clean(d):
    return (d is not None and d.get("errors") == 0
            and d.get("messages_received") == d.get("deliveries_expected"))

def merged_quantile(runs, q):
    """The q quantile of the union of the runs' deliveries, from their spectra."""
    points = []
    for d in runs:
        spectrum = d["spectrum_us"]["delivery"]
        weight = d["latency_us"]["delivery"]["count"]
        points.append((spectrum, weight))
    total = sum(w for _, w in points)
    values = sorted({v for s, _ in points for _, v in s})
    for v in values:
        below = sum(w * max([p for p, x in s if x <= v], default=0.0) for s, w in points)
        if below >= q * total - 1e-9:
            return v
    return values[-1]

fmt = lambda v: "-" if v is None else f"{v:,.1f}"
med = lambda vals: statistics.median(vals) if vals else None

if "latency" in figures:
    single = {"max": [], "p50": [], "p99": []}
    broker = {"max": [], "p50": [], "p99": []}
    per_node = []
    for rep in range(1, int(reps) + 1):
        d = load(f"{raw}/latency-single-{rep}.json")
        if clean(d):
            l = d["latency_us"]["delivery"]
            for k in single:
                single[k].append(l[k] / 1000)
        runs = [load(f"{raw}/latency-broker-{rep}-{x}.json") for x in "abc"]
        if all(clean(d) for d in runs):
            broker["max"].append(max(d["latency_us"]["delivery"]["max"] for d in runs) / 1000)
            broker["p50"].append(merged_quantile(runs, 0.5) / 1000)
            broker["p99"].append(merged_quantile(runs, 0.99) / 1000)
            per_node.append((rep, [(x, d) for x, d in zip("abc", runs)]))
    lines += [f"## Added latency of the broker path: one 64-byte publish to {n} subscribers", "",
              "| measure | 1 node, no broker | 3 nodes + Redis | 3 nodes ÷ 1 node | 3-node runs |",
              "|---|---:|---:|---:|---|"]
    for label, k in (("last delivery ms", "max"), ("p50 ms", "p50"), ("p99 ms", "p99")):
        a, b = med(single[k]), med(broker[k])
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        lines.append(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} | "
                     f"{', '.join(fmt(v) for v in broker[k])} |")
    lines += ["", "3 nodes: last delivery is the largest of the three load generators'; p50 and "
              "p99 are merged from their delivery spectra. Each node's own figures (ms, "
              "publisher on node a):", "",
              "| run | node | subscribers | p50 | p99 | last delivery |",
              "|---:|---|---:|---:|---:|---:|"]
    for rep, runs in per_node:
        for x, d in runs:
            l = d["latency_us"]["delivery"]
            lines.append(f"| {rep} | {x} | {d['subscribers']} | {fmt(l['p50'] / 1000)} | "
                         f"{fmt(l['p99'] / 1000)} | {fmt(l['max'] / 1000)} |")
    lines.append("")

def cpu_window(path):
    """Seconds of the window, CPU seconds per process, and per core (busy, softirq) shares."""
    try:
        first, second = [dict(kv.split("=", 1) for kv in l.split()) for l in open(path)][:2]
    except (ValueError, OSError):
        return None
    window = float(second["t"]) - float(first["t"])
    procs, cores = {}, {}
    for k in first:
        if k == "t":
            continue
        if k.startswith("cpu"):
            b0, s0, t0 = map(int, first[k].split(","))
            b1, s1, t1 = map(int, second[k].split(","))
            total = max(t1 - t0, 1)
            cores[k] = ((b1 - b0) / total, (s1 - s0) / total)
        elif "gone" not in (first[k], second[k]):
            procs[k] = (int(second[k]) - int(first[k])) / 1e9
    return window, procs, cores

if "sustained" in figures:
    subs = 3 * int(n_sus)
    lines += [f"## Sustained: publishes through the broker to 3 nodes x {n_sus} subscribers "
              f"({sustain_s} s per rate, {publisher} publisher on node a)", "",
              "| offered /s | published /s | deliveries /s | all delivered | p50 ms | p99 ms "
              "| admin publish rtt p50 ms | nodes (cores) | Redis (cores) | Redis µs/publish "
              "| core 0 busy / softirq | core 1 (load generators) busy / softirq "
              "| kept up | bottleneck (if kept up: the nearest limit) |",
              "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
    best = None
    for rate in rates:
        rows = []
        for rep in range(1, int(reps) + 1):
            tag = f"{raw}/sustained-{rate}-{rep}"
            runs = [load(f"{tag}-{x}.json") for x in "abc"]
            cpu = cpu_window(f"{tag}.cpu")
            if any(d is None for d in runs) or cpu is None:
                continue
            window, procs, cores = cpu
            a = runs[0]
            published = (a.get("publish") or {}).get("published", 0)
            delivered = all(clean(d) for d in runs)
            rate_out = published / window if window > 0 else 0
            p50 = merged_quantile(runs, 0.5) / 1000 if delivered else None
            p99 = merged_quantile(runs, 0.99) / 1000 if delivered else None
            rtt = ((a.get("publish") or {}).get("rtt_us") or {}).get("p50")
            nodes = sum(v for k, v in procs.items() if k.startswith("node")) / window
            redis = procs.get("redis", 0) / window
            redis_us = procs.get("redis", 0) * 1e6 / published if published else None
            c0, c1 = cores.get("cpu0", (0, 0)), cores.get("cpu1", (0, 0))
            kept = (delivered and rate_out >= 0.95 * rate and p99 is not None
                    and p99 <= float(p99_max_ms))
            if c0[0] >= 0.9 and c0[0] >= c1[0]:
                where = max((("node CPU (core 0)", nodes), ("Redis CPU (core 0)", redis),
                             ("loopback softirq (core 0)", c0[1])), key=lambda x: x[1])[0]
            elif c1[0] >= 0.9:
                where = "load generators (core 1)"
            elif rate_out < 0.95 * rate:
                where = ("the publisher's round trip (one admin POST at a time)"
                     if publisher == "admin" else "the publishing client's connection")
            else:
                where = "none reached"
            rows.append(dict(rate_out=rate_out, dps=rate_out * subs if delivered else None,
                             delivered=delivered, p50=p50, p99=p99,
                             rtt=rtt / 1000 if rtt is not None else None, nodes=nodes,
                             redis=redis, redis_us=redis_us, c0=c0, c1=c1, kept=kept,
                             where=where))
        if not rows:
            lines.append(f"| {rate} | (not run: a lower rate lost deliveries) |" + " |" * 12)
            continue
        m = lambda k: med([r[k] for r in rows if r[k] is not None])
        kept = sum(r["kept"] for r in rows) * 2 > len(rows)
        if kept:
            best = rate
        wheres = sorted({r["where"] for r in rows})
        pct = lambda k, i: f"{100 * med([r[k][i] for r in rows]):.0f} %"
        lines.append(
            f"| {rate} | {fmt(m('rate_out'))} | {fmt(m('dps'))} | "
            f"{sum(r['delivered'] for r in rows)}/{len(rows)} | {fmt(m('p50'))} | "
            f"{fmt(m('p99'))} | {fmt(m('rtt'))} | {m('nodes'):.2f} | {m('redis'):.2f} | "
            f"{fmt(m('redis_us'))} | "
            f"{pct('c0', 0)} / {pct('c0', 1)} | {pct('c1', 0)} / {pct('c1', 1)} | "
            f"{'yes' if kept else 'no'} | {'; '.join(wheres)} |")
    lines += ["", f"Sustained (the highest rate kept up in most runs: every delivery arrived, "
              f">= 95 % of the rate published, p99 <= {p99_max_ms} ms): "
              + (f"**{best} publishes/s** ({best * subs:,} deliveries/s)" if best
                 else "none of the rates")
              + (" (the top of RATES: the ceiling is higher; raise RATES)"
                 if best == rates[-1] else ""),
              "", "CPU over the publishing window (node a's load generator in its run phase): "
              "nodes and Redis share core 0, the load generators core 1. The bottleneck is the "
              "largest consumer of a core that is >= 90 % busy; with neither core saturated and "
              "the rate not reached, the publisher. A core's busy share counts every process on it "
              "(run on a quiet machine).", ""]

lines += ["Runs with errors or missing deliveries are left out of the medians (raw/*.err). "
          "Commands: commands.txt."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY

# Charts beside the summary: every run's delivery spectrum (each 3-node run as its three
# load generators), then the publishing node's message rate in the sustained runs.
for figure in "${FIGURES[@]}"; do
    case $figure in
    latency)
        scripts/plot-runs.sh "$OUT/latency-spectrum.svg" spectrum "$RAW/latency-*.json" || true
        ;;
    sustained)
        scripts/plot-runs.sh "$OUT/sustained-spectrum.svg" spectrum "$RAW/sustained-*-a.json" ||
            true
        scripts/plot-runs.sh "$OUT/sustained-rate.svg" rate "$RAW/sustained-*-a.json" || true
        ;;
    esac
done
# Raw output stays in the run directory compressed; the summary stays readable.
tar -C "$OUT" -cJf "$OUT/raw.tar.xz" raw && rm -rf "$RAW"
exit "$FAILED"
