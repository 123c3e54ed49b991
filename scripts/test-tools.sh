#!/usr/bin/env bash
# Installs, from Debian's packages, the outside programs some tests drive: proxies
# (microsocks, tinyproxy), nginx (the camouflage comparison), nftables and iproute2
# (network-namespace firewall tests) and Pebble (a local ACME CA). Idempotent: does
# nothing when they are all present. Needs root (apt-get), as on CI and the dev machines.
set -euo pipefail
need=0
for tool in microsocks tinyproxy nginx nft ip pebble pebble-challtestsrv; do
    command -v "$tool" >/dev/null 2>&1 || need=1
done
if [ "$need" = 1 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        microsocks tinyproxy nginx-light nftables iproute2 pebble >/dev/null
fi
