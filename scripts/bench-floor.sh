#!/usr/bin/env bash
# The floor: the node beside the least a server on this box can do, in the same script run
# (issue 14). Three measures per subscriber count N, REPS runs each (medians):
#   fan-out: one 64-byte admin publish to N subscribers, publish to last delivery, p50, p99,
#            for the node, `ringpush-loadgen floor-server --send plain` (one send(2) per
#            client) and `--send uring` (batched io_uring sends); ratio node / floor.
#   connect: the node's connect-and-upgrade rate (loadgen `connect`) against raw TCP
#            connect + accept of the same count (`floor-connect` to `floor-server
#            --handshake none`); ratio node / floor.
#   memory:  the node's RSS growth per held connection beside the kernel's Slab and
#            SUnreclaim growth per loopback pair (and /proc/slabinfo's socket caches).
# Servers run on CPU 0, the load generator on CPU 1; each run gets a fresh server, ports and
# a fresh block of loopback sources. Above one file table (RLIMIT_NOFILE) the node gets
# more shards and the floor server as many holder threads, each with its own file table.
#
#   scripts/bench-floor.sh [N ...]           default: 10000 100000
#
# Environment: REPS [3], BASE_PORT [19800], OUT [benches/runs/<date>-vm-floor], NODE
# [target/release/ringpush], SKIP [none: any of fanout connect to leave out].
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
((${#SIZES[@]})) || SIZES=(10000 100000)
REPS=${REPS:-3}
PORT=${BASE_PORT:-19800}
OUT=${OUT:-benches/runs/$(date +%Y-%m-%d)-vm-floor}
NODE=${NODE:-target/release/ringpush}
SKIP=${SKIP:-}
LOADGEN=target/release/ringpush-loadgen
[[ -x $NODE && -x $LOADGEN ]] || cargo build --release --workspace --bins
mkdir -p "$OUT/raw"
: >"$OUT/commands.txt"
NOFILE=$(ulimit -n)
say() { echo "bench-floor: $*" >&2; }
block=$((($(date +%s) / 60) % 50 * 4 + 30))
next_source() {
    block=$((block + 1))
    echo "127.$((block % 250 + 2)).0.1-127.$((block % 250 + 2)).0.254"
}
# Starts a server pinned to CPU 0; its pid goes to $server.
start() {
    local log=$1
    shift
    echo "taskset -c 0 $*" >>"$OUT/commands.txt"
    taskset -c 0 "$@" >"$log" 2>&1 &
    server=$!
    sleep 0.5
}
stop() { kill -INT "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
loadgen() {
    local json=$1
    shift
    echo "taskset -c 1 $LOADGEN $*" >>"$OUT/commands.txt"
    taskset -c 1 "$LOADGEN" "$@" 2>"${json%.json}.err" | tail -1 >"$json" || true
}

for n in "${SIZES[@]}"; do
    shards=$((n / (NOFILE - 1000) + 1))
    for run in $(seq 1 "$REPS"); do
        if [[ " $SKIP " != *" fanout "* ]]; then
            for server_kind in node floor-plain floor-uring; do
                PORT=$((PORT + 2))
                admin=$((PORT + 1))
                case $server_kind in
                    node) start "$OUT/raw/server-$server_kind-$n-$run.out" "$NODE" \
                        --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$admin" --shards "$shards" \
                        --no-pin --stats-interval 0 ;;
                    floor-*) start "$OUT/raw/server-$server_kind-$n-$run.out" "$LOADGEN" floor-server \
                        --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$admin" --threads "$shards" \
                        --send "${server_kind#floor-}" ;;
                esac
                json=$OUT/raw/fanout-$server_kind-$n-$run.json
                loadgen "$json" broadcast --addr "127.0.0.1:$PORT" --admin "127.0.0.1:$admin" \
                    -n "$n" --no-pin --channel fan --size 64 --count 1 --settle 1s --close abort \
                    --source "$(next_source)" --json
                stop
                say "fanout n=$n run=$run $server_kind: $(python3 -c "
import json; d=json.load(open('$json')); l=d['latency_us']['delivery']
print('last_us=%s p50_us=%s p99_us=%s missing=%s errors=%s' % (l['max'], l['p50'], l['p99'], d['missing'], d['errors']))")"
            done
        fi
        if [[ " $SKIP " != *" connect "* ]]; then
            PORT=$((PORT + 2))
            admin=$((PORT + 1))
            start "$OUT/raw/server-node-connect-$n-$run.out" "$NODE" --listen "127.0.0.1:$PORT" \
                --admin "127.0.0.1:$admin" --shards "$shards" --no-pin --stats-interval 0
            json=$OUT/raw/connect-node-$n-$run.json
            loadgen "$json" connect --addr "127.0.0.1:$PORT" -n "$n" --no-pin --channel fan \
                --settle 1s --hold 1s --close abort --node-pid "$server" \
                --source "$(next_source)" --json
            stop
            PORT=$((PORT + 2))
            admin=$((PORT + 1))
            start "$OUT/raw/server-floor-connect-$n-$run.out" "$LOADGEN" floor-server \
                --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$admin" --threads "$shards" \
                --handshake none
            json=$OUT/raw/connect-floor-$n-$run.json
            loadgen "$json" floor-connect --addr "127.0.0.1:$PORT" --stats "127.0.0.1:$admin" \
                -n "$n" --source "$(next_source)" --hold 1s
            stop
            say "connect n=$n run=$run: node $(python3 -c "
import json; d=json.load(open('$OUT/raw/connect-node-$n-$run.json')); print('%.0f/s' % d['connects_per_s'])") floor $(python3 -c "
import json; d=json.load(open('$json')); print('%.0f/s failed=%s' % (d['connects_per_s'], d['failed']))")"
        fi
    done
done

# Medians, ratios, summary.md and summary.json from the raw JSON of this run.
python3 - "$OUT" "$REPS" "${SIZES[@]}" <<'PY'
import json, glob, os, statistics, sys
out, reps, sizes = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3:]]
def load(pattern):
    runs = []
    for f in sorted(glob.glob(os.path.join(out, 'raw', pattern))):
        try:
            runs.append(json.load(open(f)))
        except (ValueError, OSError):
            print(f'bench-floor: {f} holds no JSON summary; left out', file=sys.stderr)
    return runs
def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
def ratio(a, b):
    return a / b if a is not None and b else None
def fmt(v, scale=1.0, digits=1):
    return 'n/a' if v is None else f'{v / scale:,.{digits}f}'
summary = {'reps': reps, 'sizes': {}}
lines = [f'# Floor: the node beside the least a server can do here, medians of {reps} runs', '',
         '## Fan-out: one 64-byte publish to N subscribers', '',
         '| subscribers | server | last delivery (ms) | p50 (ms) | p99 (ms) | node / floor, last | node / floor, p99 | clean runs |',
         '|---:|---|---:|---:|---:|---:|---:|---:|']
for n in sizes:
    figures = {}
    for kind in ('node', 'floor-plain', 'floor-uring'):
        runs = load(f'fanout-{kind}-{n}-*.json')
        clean = [r for r in runs if r.get('missing') == 0 and r.get('errors') == 0]
        d = lambda key: med([r['latency_us']['delivery'][key] for r in clean])
        figures[kind] = {'last_us': d('max'), 'p50_us': d('p50'), 'p99_us': d('p99'),
                         'runs': len(runs), 'clean_runs': len(clean)}
    node = figures['node']
    for kind, f in figures.items():
        if f['runs'] == 0:
            continue
        if kind != 'node':
            f['node_over_floor_last'] = ratio(node['last_us'], f['last_us'])
            f['node_over_floor_p99'] = ratio(node['p99_us'], f['p99_us'])
        lines.append(f"| {n:,} | {kind} | {fmt(f['last_us'], 1000)} | {fmt(f['p50_us'], 1000)} | "
                     f"{fmt(f['p99_us'], 1000)} | {fmt(f.get('node_over_floor_last'), 1, 2) if kind != 'node' else ''} | "
                     f"{fmt(f.get('node_over_floor_p99'), 1, 2) if kind != 'node' else ''} | {f['clean_runs']}/{f['runs']} |")
    summary['sizes'][n] = {'fanout': figures}
lines += ['', '## Connect: the node\'s connect + upgrade against raw TCP connect + accept', '',
          '| connections | node (connects/s) | floor (connects/s) | node / floor |', '|---:|---:|---:|---:|']
mem_lines = ['', '## Memory per connection: the node\'s RSS beside the kernel\'s per loopback pair', '',
             '| connections | node RSS growth (B) | kernel Slab per pair (B) | SUnreclaim per pair (B) | TCP | sock_inode_cache | filp | dentry | node RSS / kernel per socket end |',
             '|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
for n in sizes:
    node_runs, floor_runs = load(f'connect-node-{n}-*.json'), load(f'connect-floor-{n}-*.json')
    if not node_runs and not floor_runs:
        continue
    node_rate = med([r.get('connects_per_s') for r in node_runs])
    floor_rate = med([r.get('connects_per_s') for r in floor_runs if r.get('failed') == 0])
    rss = med([(r.get('memory') or {}).get('node_rss_per_conn_bytes') for r in node_runs])
    k = lambda key: med([r['kernel_per_pair'].get(key) for r in floor_runs])
    cache = lambda name: med([r['kernel_per_pair']['caches_bytes_per_connection'].get(name) for r in floor_runs])
    slab = k('slab_bytes_per_connection')
    connect = {'node_connects_per_s': node_rate, 'floor_connects_per_s': floor_rate,
               'node_over_floor': ratio(node_rate, floor_rate)}
    memory = {'node_rss_per_conn_bytes': rss, 'kernel_slab_per_pair_bytes': slab,
              'kernel_sunreclaim_per_pair_bytes': k('sunreclaim_bytes_per_connection'),
              'caches_per_pair_bytes': {c: cache(c) for c in ('TCP', 'sock_inode_cache', 'filp', 'dentry')},
              'node_rss_over_kernel_per_end': ratio(rss, slab / 2 if slab else None)}
    summary['sizes'][n].update({'connect': connect, 'memory': memory})
    lines.append(f"| {n:,} | {fmt(node_rate, 1, 0)} | {fmt(floor_rate, 1, 0)} | {fmt(connect['node_over_floor'], 1, 2)} |")
    c = memory['caches_per_pair_bytes']
    mem_lines.append(f"| {n:,} | {fmt(rss, 1, 0)} | {fmt(slab, 1, 0)} | {fmt(memory['kernel_sunreclaim_per_pair_bytes'], 1, 0)} | "
                     f"{fmt(c['TCP'], 1, 0)} | {fmt(c['sock_inode_cache'], 1, 0)} | {fmt(c['filp'], 1, 0)} | {fmt(c['dentry'], 1, 0)} | "
                     f"{fmt(memory['node_rss_over_kernel_per_end'], 1, 3)} |")
lines += mem_lines
lines += ['', 'A pair is both ends of a loopback connection (server and load generator); the kernel '
          'figures are Slab growth per pair from /proc/meminfo (and /proc/slabinfo when readable), '
          'so one server socket end is about half. Commands: commands.txt.']
open(os.path.join(out, 'summary.md'), 'w').write('\n'.join(lines) + '\n')
json.dump(summary, open(os.path.join(out, 'summary.json'), 'w'), indent=1)
PY
cat "$OUT/summary.md"

# The delivery spectra of every fan-out run, one chart per size: node and floors side by side.
for n in "${SIZES[@]}"; do
    if compgen -G "$OUT/raw/fanout-*-$n-*.json" >/dev/null; then
        scripts/plot-runs.sh "$OUT/floor-spectrum-$n.svg" spectrum "$OUT/raw/fanout-*-$n-*.json" \
            "One 64-byte publish to $n subscribers: node and floor" || true
    fi
done

# Raw output stays in the run directory compressed; the summaries stay readable.
tar -C "$OUT" -cJf "$OUT/raw.tar.xz" raw && rm -rf "$OUT/raw"
