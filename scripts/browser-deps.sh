#!/usr/bin/env bash
# Installs what the browser tests (tests/browser.rs, clients/js/test/) need: Node.js ≥ 20,
# Debian's chromium (never a browser download) and playwright-core from npm, pinned by
# clients/js/package-lock.json, into clients/js/node_modules. Idempotent: each piece is
# installed only when missing. scripts/test.sh calls it before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        apt-get update
        apt_updated=yes
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

if ! command -v chromium >/dev/null; then
    echo "== installing chromium (apt)"
    apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "== installing nodejs and npm (apt)"
    apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "browser tests: node $(node --version) is too old (playwright-core needs ≥ 20)" >&2
    exit 1
fi
locked=$(node -p 'require("./clients/js/package-lock.json").packages["node_modules/playwright-core"].version')
installed=$(node -p 'try { require("./clients/js/node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$installed" != "$locked" ]; then
    echo "== installing playwright-core $locked (npm ci, no browser download)"
    (cd clients/js && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
