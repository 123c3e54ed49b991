#!/usr/bin/env bash
# Installs, from Debian's packages, the outside programs some tests drive: proxies
# (microsocks, tinyproxy), nginx (the camouflage comparison), nftables and iproute2
# (network-namespace firewall tests), Pebble (a local ACME CA) and tmux (the terminal
# app's smoke test); and, from PyPI, moto
# (a local S3 server). Idempotent: does nothing when they are all present. Needs root
# (apt-get), as on CI and the dev machines.
set -euo pipefail
need=0
for tool in microsocks tinyproxy nginx nft ip pebble pebble-challtestsrv tmux; do
    command -v "$tool" >/dev/null 2>&1 || need=1
done
if [ "$need" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        microsocks tinyproxy nginx-light nftables iproute2 pebble tmux >/dev/null
fi

# moto, a local S3 server (media blobs in S3), from PyPI, only when it is missing.
if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
    # A Debian-managed Python refuses plain `pip install` (PEP 668): then install anyway,
    # as the other test tools are installed system-wide.
    python3 -m pip install --quiet --disable-pip-version-check 'moto[server]' ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
            'moto[server]'
fi
