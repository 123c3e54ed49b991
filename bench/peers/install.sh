#!/usr/bin/env bash
# Installs the peers from Debian's packages, only what is missing: ejabberd (and its
# Erlang), Mosquitto, tsung (the cross-check of the generator in the full run).
# Packaged services are not used: ejabberd.sh and mosquitto.sh start private instances.
set -euo pipefail
need=()
command -v ejabberdctl >/dev/null || need+=(ejabberd)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v tsung >/dev/null || need+=(tsung)
command -v openssl >/dev/null || need+=(openssl)
command -v erl >/dev/null || need+=(erlang-base)
if [ ${#need[@]} -eq 0 ]; then
  echo "peers: all installed"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "error: installing ${need[*]} needs root" >&2; exit 1; }
echo "peers: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
