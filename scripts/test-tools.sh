#!/usr/bin/env bash
# Installs, from Debian's packages, the outside programs some tests drive: proxies
# (microsocks, tinyproxy), nginx (the camouflage comparison), nftables and iproute2
# (network-namespace firewall tests), Pebble (a local ACME CA), testssl.sh (the TLS
# check), tmux (the terminal app's smoke test), chromium, Node.js and an emoji font (the
# web app's browser test); from PyPI, moto (a local S3 server); and from npm,
# playwright-core (drives chromium). Idempotent: does nothing when they are all present.
# Needs root (apt-get), as on CI and the dev machines.
set -euo pipefail
need=0
for tool in microsocks tinyproxy nginx nft ip pebble pebble-challtestsrv tmux chromium testssl; do
    command -v "$tool" >/dev/null 2>&1 || need=1
done
if [ "$need" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        microsocks tinyproxy nginx-light nftables iproute2 pebble tmux testssl.sh \
        chromium fonts-noto-color-emoji fonts-dejavu-core >/dev/null
fi

# moto, a local S3 server (media blobs in S3), from PyPI, only when it is missing.
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
    # A Debian-managed Python refuses plain `pip install` (PEP 668): then install anyway,
    # as the other test tools are installed system-wide.
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            'moto[server]'
fi
# Node.js with npm (Debian's, unless one is already installed: a NodeSource nodejs
# carries its own npm and conflicts with Debian's npm package).
if ! command -v npm >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

# playwright-core (the exact version in package.json) for the web app's browser test.
browser_test="$(dirname "$0")/../crates/hushwire-webapp/tests/browser"
if [ ! -d "$browser_test/node_modules/playwright-core" ]; then
    (cd "$browser_test" && npm install --no-audit --no-fund --silent >/dev/null)
fi
