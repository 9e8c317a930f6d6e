#!/usr/bin/env bash
# usage: idle.sh BINDIR KIND(none|hs256) N PORT OUTTAG
set -u
BIN=$1 KIND=$2 N=$3 PORT=$4 TAG=$5
KEYS=/work/main/tests/fixtures/keys
OUT=/tmp/ab-close; mkdir -p $OUT
NOFILE=$(ulimit -n); shards=$((N / (NOFILE - 1000) + 1))
auth=(); token=()
if [[ $KIND == hs256 ]]; then
  "$BIN/mint_token" --alg hs256 --key "$KEYS/hs1.secret" --kid hs1 --channels 'bench' >$OUT/hs256.token
  auth=(--auth required --token-key "$KEYS/hs1.secret"); token=(--token-file $OUT/hs256.token)
fi
admin=$((PORT+1))
node=("$BIN/ringpush" --listen "127.0.0.1:$PORT" --admin "127.0.0.1:$admin" --shards $shards --no-pin --stats-interval 0 "${auth[@]}")
echo "${node[*]}" > $OUT/$TAG.cmd
"${node[@]}" > $OUT/$TAG.node.log 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$admin/healthz" && break; sleep 0.1; done
cmd=("$BIN/ringpush-loadgen" connect --channel bench -n $N --hold 3s --node-pid $pid --addr 127.0.0.1:$PORT --source 127.9.0.1-127.9.0.254 --no-pin --json --progress 0 --close-timeout 30s "${token[@]}")
echo "${cmd[*]}" >> $OUT/$TAG.cmd
"${cmd[@]}" > $OUT/$TAG.out 2> $OUT/$TAG.err
tail -n1 $OUT/$TAG.out > $OUT/$TAG.json
kill -TERM $pid; wait $pid
python3 -c "import json,sys; d=json.load(open('$OUT/$TAG.json')); print('$TAG', d.get('memory'))"
