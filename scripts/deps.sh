#!/usr/bin/env bash
# Installs the Debian packages the tests use when their commands are missing (a fresh
# machine): apt-get update once, then only what is absent. Called by scripts/test.sh;
# safe to run again. Needs root (or passwordless sudo) only when something is missing.
set -euo pipefail

missing=()
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}

need systemd-analyze systemd   # tests/contrib.rs verifies contrib/systemd/ringpush.service
need redis-server redis-server # tests/broker.rs starts its own instances on free ports
need redis-cli redis-tools     # tests/broker_cluster.rs: redis-cli --cluster create

if ((${#missing[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo -n)
    echo "== installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
