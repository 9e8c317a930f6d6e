#!/usr/bin/env bash
# Peer server for side-by-side benchmarks: uWebSockets.js (npm `uwebsockets`, a republication
# of the uWebSockets.js binaries; the upstream project is not on the npm registry) running
# scripts/peer/uws-server.js, which speaks ringpush's API (GET /ws/<channel>, GET /echo,
# admin POST /publish/<channel>), so ringpush-loadgen drives both.
#
#   scripts/peer-uws.sh PORT ADMIN_PORT        (foreground; SIGTERM/SIGINT stop it)
#
# The package is installed once into target/peer-uws/ (npm, install scripts disabled).
# UWS_PACKAGE overrides the package spec [uwebsockets@3.0.6]. The script execs node, so its
# pid is the server's pid (use it for --node-pid) and `taskset -c 0 scripts/peer-uws.sh ...`
# pins the server.
set -euo pipefail
if [[ $# -ne 2 ]]; then
    echo "usage: $0 PORT ADMIN_PORT" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PREFIX=$ROOT/target/peer-uws
PACKAGE=${UWS_PACKAGE:-uwebsockets@3.0.6}
MODULE=$PREFIX/node_modules/uwebsockets

if [[ ! -f $PREFIX/.installed ]] || [[ $(cat "$PREFIX/.installed") != "$PACKAGE" ]]; then
    echo "peer-uws: installing $PACKAGE into $PREFIX" >&2
    mkdir -p "$PREFIX"
    [[ -f $PREFIX/package.json ]] || echo '{"name":"peer-uws","private":true}' >"$PREFIX/package.json"
    npm install --prefix "$PREFIX" --ignore-scripts --no-audit --no-fund "$PACKAGE" >&2
    echo "$PACKAGE" >"$PREFIX/.installed"
fi

echo "peer-uws: $(node -p "require('$MODULE/package.json').name + '@' + require('$MODULE/package.json').version") (uWS source commit $(cat "$MODULE/source_commit" 2>/dev/null || echo unknown)), node $(node --version)" >&2
export UWS_MODULE=$MODULE
exec node "$ROOT/scripts/peer/uws-server.js" "$1" "$2"
