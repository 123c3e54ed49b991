#!/usr/bin/env bash
# Our own ejabberd on 127.0.0.1:$XMPP_PORT (default 15222), pinned to $SERVER_CPU.
#   ejabberd.sh start        fresh spool, config from ejabberd.yml.in, waits until up
#   ejabberd.sh register N   users user1..userN / pass1..passN, one RPC inside the node
#   ejabberd.sh clear        drops queued offline messages (between scenarios)
#   ejabberd.sh rpc EXPR     evaluates an Erlang expression (node is N)
#   ejabberd.sh pid | stop
#
# Trap: the packaged ejabberdctl switches to the ejabberd user, whose open-file limit
# (1,024) makes the server spin above ~1,000 connections. We run a private copy of it
# as the current user (root here), which keeps the process's own limit (20,000).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
B="$PEERS_RUN/ejabberd"
NODE=hwbench@localhost
CTL=("$B/ejabberdctl" --config-dir "$B/etc" --config "$B/etc/ejabberd.yml"
     --ctl-config "$B/etc/ejabberdctl.cfg" --spool "$B/spool" --logs "$B/logs" --node "$NODE")

pid() { pgrep -f "beam.smp.*-sname $NODE" | head -1 || true; }

rpc() {
  local cookie
  cookie=$(cat "$B/cookie")
  ERL_CRASH_DUMP_BYTES=0 ERL_EPMD_ADDRESS=127.0.0.1 timeout 600 erl -sname "hwrpc$$@localhost" -setcookie "$cookie" \
    -kernel inet_dist_use_interface '{127,0,0,1}' -noshell -eval "
N = '$NODE', true = net_kernel:connect_node(N),
R = begin $1 end, io:format(\"~p~n\", [R]), halt()."
}

start() {
  [ -z "$(pid)" ] || die "our ejabberd is already running (pid $(pid)); ejabberd.sh stop"
  command -v ejabberdctl >/dev/null || die "ejabberd is not installed (bench/peers/install.sh)"
  rm -rf "$B"
  mkdir -p "$B/etc/modules.d" "$B/spool" "$B/logs"
  chmod 700 "$B"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$B/cookie"
  chmod 600 "$B/cookie"
  sed "s/^INSTALLUSER=.*/INSTALLUSER=/; s/\"\$EPMD\" -kill/true/" "$(command -v ejabberdctl)" > "$B/ejabberdctl"
  chmod 700 "$B/ejabberdctl"
  sed "s#@RUN@#$PEERS_RUN#g; s#@PORT@#$XMPP_PORT#g" "$PEERS_DIR/ejabberd.yml.in" > "$B/etc/ejabberd.yml"
  sed "s#@RUN@#$PEERS_RUN#g; s#@COOKIE@#$(cat "$B/cookie")#g" "$PEERS_DIR/ejabberdctl.cfg.in" > "$B/etc/ejabberdctl.cfg"
  cp "$PEERS_DIR/inetrc" "$B/etc/inetrc"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=bench.local" \
    -keyout "$B/etc/key.pem" -out "$B/etc/cert.pem" 2>/dev/null
  cat "$B/etc/key.pem" "$B/etc/cert.pem" > "$B/etc/bench.local.pem"
  chmod 600 "$B/etc/"*.pem
  (cd "$B/spool" && taskset -c "$SERVER_CPU" "${CTL[@]}" start)
  "${CTL[@]}" started >/dev/null 2>&1 || true
  wait_port "$XMPP_PORT" 90 || { tail -20 "$B/logs/"*.log >&2 || true; die "ejabberd did not come up"; }
  echo "ejabberd: pid $(pid) on 127.0.0.1:$XMPP_PORT (CPU $SERVER_CPU)"
}

stop() {
  [ -n "$(pid)" ] || return 0
  local p
  p=$(pid)
  "${CTL[@]}" stop >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
  echo "ejabberd: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  pid) pid ;;
  rpc) shift; rpc "$1" ;;
  register)
    n=${2:?usage: ejabberd.sh register N}
    rpc "T0 = erlang:monotonic_time(millisecond),
      Ok = rpc:call(N, lists, foldl, [fun(I, Acc) ->
          U = integer_to_binary(I),
          case ejabberd_auth:try_register(<<\"user\", U/binary>>, <<\"bench.local\">>, <<\"pass\", U/binary>>) of
            ok -> Acc + 1;
            {error, exists} -> Acc + 1;
            _ -> Acc
          end end, 0, lists:seq(1, $n)], infinity),
      {registered, Ok, requested, $n, ms, erlang:monotonic_time(millisecond) - T0}" ;;
  clear) rpc "rpc:call(N, mnesia, clear_table, [offline_msg])" ;;
  *) echo "usage: $0 start|stop|pid|register N|clear|rpc EXPR" >&2; exit 2 ;;
esac
