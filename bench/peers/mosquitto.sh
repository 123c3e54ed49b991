#!/usr/bin/env bash
# Our own Mosquitto on 127.0.0.1:$MQTT_PORT (default 11883), pinned to $SERVER_CPU.
#   mosquitto.sh start   fresh data directory, config from mosquitto.conf.in
#   mosquitto.sh pid | stop
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
B="$PEERS_RUN/mosquitto"
BIN=$(command -v mosquitto || echo /usr/sbin/mosquitto)

pid() { [ -f "$B/pid" ] && kill -0 "$(cat "$B/pid")" 2>/dev/null && cat "$B/pid" || true; }

case "${1:-}" in
  start)
    [ -z "$(pid)" ] || die "our mosquitto is already running (pid $(pid)); mosquitto.sh stop"
    [ -x "$BIN" ] || die "mosquitto is not installed (bench/peers/install.sh)"
    [ "$MQTT_PORT" != 1883 ] || die "port 1883 belongs to the machine's own Mosquitto"
    rm -rf "$B"
    mkdir -p "$B/data"
    sed "s#@RUN@#$PEERS_RUN#g; s#@PORT@#$MQTT_PORT#g" "$PEERS_DIR/mosquitto.conf.in" > "$B/mosquitto.conf"
    # As root Mosquitto would switch to the mosquitto user (its own open-file limit);
    # `user root` in the config keeps it as is. Not in the template: only when root.
    [ "$(id -u)" = 0 ] && echo "user root" >> "$B/mosquitto.conf"
    taskset -c "$SERVER_CPU" "$BIN" -c "$B/mosquitto.conf" > "$B/stdout.log" 2>&1 &
    echo $! > "$B/pid"
    wait_port "$MQTT_PORT" 30 || { cat "$B/stdout.log" "$B/mosquitto.log" >&2 || true; die "mosquitto did not come up"; }
    echo "mosquitto: pid $(pid) on 127.0.0.1:$MQTT_PORT (CPU $SERVER_CPU)"
    ;;
  stop)
    p=$(pid)
    [ -n "$p" ] || exit 0
    kill -TERM "$p"
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" || true
    rm -f "$B/pid"
    echo "mosquitto: stopped"
    ;;
  pid) pid ;;
  *) echo "usage: $0 start|stop|pid" >&2; exit 2 ;;
esac
