#!/usr/bin/env bash
# Issue 11's figures, side by side in one run: connections per second through the upgrade
# on ONE shard with no token, with an HS256 token and with an ES256 token (connect start to
# 101, over the ramp), and the node's RSS per idle connection at N_IDLE with and without an
# (HS256) token. Each REPS times; medians to OUT/summary.md, charts beside it.
#
#   scripts/bench-auth.sh                      N=15000 N_IDLE=100000 REPS=3
#
# The node runs on core 0, the load generator on core 1 (taskset). Tokens are minted by
# examples/mint_token from the test fixtures' keys; every connection presents the same
# token (without a `tab` claim each gets a tab of its own, so none replaces another).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-15000}
N_IDLE=${N_IDLE:-100000}
REPS=${REPS:-3}
PORT=${PORT:-23000}
OUT=${OUT:-benches/runs/$(date +%Y-%m-%d)-$(hostname)-auth}
NODE=${NODE:-target/release/ringpush}
LOADGEN=target/release/ringpush-loadgen
cargo build --release --workspace --bins --examples -q
MINT=target/release/examples/mint_token
RAW=$OUT/raw
mkdir -p "$RAW"
CMDS=$OUT/commands.txt
: >"$CMDS"
NOFILE=$(ulimit -n)
SRC=1
say() { echo "bench-auth: $*"; }

KEYS=tests/fixtures/keys
"$MINT" --alg hs256 --key "$KEYS/hs1.secret" --kid hs1 --channels 'bench' >"$RAW/hs256.token"
"$MINT" --alg es256 --key "$KEYS/private/es1.pem" --kid es1 --channels 'bench' >"$RAW/es256.token"

run_one() { # figure kind rep
    local figure=$1 kind=$2 rep=$3
    local port=$PORT admin=$((PORT + 1))
    PORT=$((PORT + 2))
    local src="127.$SRC.0.1-127.$SRC.0.254"
    SRC=$((SRC % 250 + 1))
    local tag=$figure-$kind-$rep n=$N shards=1
    if [[ $figure == idle ]]; then
        n=$N_IDLE
        shards=$((n / (NOFILE - 1000) + 1))
    fi
    local auth=() token=()
    case $kind in
    none) ;;
    hs256) auth=(--auth required --token-key "$KEYS/hs1.secret") ;;
    es256) auth=(--auth required --token-key "$KEYS/es1.pem") ;;
    esac
    [[ $kind != none ]] && token=(--token-file "$RAW/$kind.token")
    local node=(taskset -c 0 "$NODE" --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin"
        --shards "$shards" --no-pin --stats-interval 0 "${auth[@]}")
    echo "[$tag] ${node[*]}" >>"$CMDS"
    "${node[@]}" >"$RAW/$tag.node.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" && break
        sleep 0.1
    done
    local cmd=(taskset -c 1 "$LOADGEN" connect --channel bench -n "$n" --hold 3s
        --node-pid "$pid" --addr "127.0.0.1:$port" --source "$src" --no-pin --json
        --progress 0 "${token[@]}")
    echo "[$tag] ${cmd[*]}" >>"$CMDS"
    "${cmd[@]}" >"$RAW/$tag.out" 2>"$RAW/$tag.err" || say "$tag: load generator exit $?"
    tail -n 1 "$RAW/$tag.out" >"$RAW/$tag.json"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    sleep 1
}

for rep in $(seq "$REPS"); do
    for kind in none hs256 es256; do
        say "handshake $kind run $rep"
        run_one handshake "$kind" "$rep"
    done
    for kind in none hs256; do
        say "idle $kind run $rep"
        run_one idle "$kind" "$rep"
    done
done

python3 - "$RAW" "$OUT/summary.md" "$N" "$N_IDLE" "$REPS" <<'PY'
import json, os, statistics, sys
raw, out, n, n_idle, reps = sys.argv[1:]
def runs(prefix, pick):
    vals = []
    for name in sorted(os.listdir(raw)):
        if name.startswith(prefix) and name.endswith(".json"):
            try:
                d = json.load(open(os.path.join(raw, name)))
            except Exception:
                continue
            if d.get("errors", 1) == 0 and pick(d) is not None:
                vals.append(pick(d))
    return vals
rate = lambda d: d.get("connects_per_s")
p99 = lambda d: (d.get("latency_us", {}).get("connect", {}) or {}).get("p99")
per_conn = lambda d: (d.get("memory") or {}).get("node_rss_per_conn_bytes")
lines = [f"# Issue 11 figures: tokens at the upgrade, medians of {reps} runs", "",
         "| figure | token | median | runs | ÷ no token |", "|---|---|---:|---|---:|"]
def row(label, prefix, kind, pick, fmt, base):
    vals = runs(f"{prefix}-{kind}-", pick)
    if not vals:
        lines.append(f"| {label} | {kind} | - | (no clean run) | - |")
        return None
    m = statistics.median(vals)
    ratio = f"{m / base:.2f}" if base else "-"
    lines.append(f"| {label} | {kind} | {fmt(m)} | {', '.join(fmt(v) for v in vals)} | {ratio} |")
    return m
base = row(f"connects/s through the upgrade, 1 shard, {n} conns", "handshake", "none", rate, lambda v: f"{v:,.0f}", None)
for kind in ("hs256", "es256"):
    row(f"connects/s through the upgrade, 1 shard, {n} conns", "handshake", kind, rate, lambda v: f"{v:,.0f}", base)
base = row(f"connect p99 ms, 1 shard", "handshake", "none", p99, lambda v: f"{v/1000:,.1f}", None)
for kind in ("hs256", "es256"):
    row(f"connect p99 ms, 1 shard", "handshake", kind, p99, lambda v: f"{v/1000:,.1f}", base)
base = row(f"node RSS per idle connection, {n_idle} conns (B)", "idle", "none", per_conn, lambda v: f"{v:,.1f}", None)
row(f"node RSS per idle connection, {n_idle} conns (B)", "idle", "hs256", per_conn, lambda v: f"{v:,.1f}", base)
lines.append("")
lines.append("Runs with errors are left out of the medians (raw/*.err). Commands: commands.txt.")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
scripts/plot-runs.sh "$OUT/handshake-spectrum.svg" spectrum "$RAW/handshake-*.json" || true
scripts/plot-runs.sh "$OUT/idle-rss.svg" rss "$RAW/idle-*.json" || true
tar -C "$OUT" -cJf "$OUT/raw.tar.xz" raw && rm -rf "$RAW"
