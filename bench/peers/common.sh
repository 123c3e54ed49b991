# Shared settings for bench/peers/*.sh (sourced). Everything lives under $PEERS_RUN,
# outside the repository; ports are loopback-only and differ from the machine's own
# services (Mosquitto on 1883 belongs to the machine: never touched).
PEERS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS_RUN="${HUSHWIRE_PEERS_RUN:-/tmp/hushwire-peers}"
XMPP_PORT="${HUSHWIRE_XMPP_PORT:-15222}"
MQTT_PORT="${HUSHWIRE_MQTT_PORT:-11883}"
# The peer servers run on this CPU; the load generator on another (compare.sh).
SERVER_CPU="${SERVER_CPU:-1}"

die() { echo "error: $*" >&2; exit 1; }

# Waits (at most $2 s) until something accepts TCP connections on 127.0.0.1:$1.
wait_port() {
  local port=$1 secs=${2:-60} i
  for ((i = 0; i < secs * 10; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
