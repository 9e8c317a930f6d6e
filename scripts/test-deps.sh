#!/usr/bin/env bash
# Installs the programs the integration tests start themselves: Debian's redis-server (the
# broker tests in tests/broker.rs run their own instances on free loopback ports). Does
# nothing when they are there already; the tests fail with a message when one is missing.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server: $(redis-server --version | head -1)"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing: install Debian's redis-server (apt-get install redis-server)" >&2
    exit 1
fi
echo "installing redis-server (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The tests start their own instances: the packaged service is not needed.
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
redis-server --version | head -1
