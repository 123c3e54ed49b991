#!/usr/bin/env bash
# tsung against our ejabberd, as a cross-check of hushwire-loadgen's XMPP figures.
#   tsung_xmpp.sh OUTDIR [--users N] [--rate MSGS_PER_S] [--secs S]
# N users (user1..userN, registered by `ejabberd.sh register`) log in with SASL PLAIN,
# bind, send initial presence and wait until all are online; then each sends a
# 100-byte chat message to a random online user every N/RATE seconds for S seconds
# (tsung's own stamp gives the send->receive latency). tsung runs on CPU 0 (the server
# on CPU 1). Writes OUTDIR/{scenario.xml,tsung.out,summary.json}.
#
# Each login step waits for the server's specific reply (tsung's documented sequence
# with ack="local" loses some logins to a race on a busy server).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
OUT=${1:?usage: tsung_xmpp.sh OUTDIR [--users N] [--rate R] [--secs S]}
shift
USERS=10000 RATE=2000 SECS=30
while [ $# -gt 0 ]; do
  case "$1" in
    --users) USERS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
command -v tsung >/dev/null || die "tsung is not installed (bench/peers/install.sh)"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
python3 - "$USERS" "$RATE" "$SECS" "$XMPP_PORT" > "$OUT/scenario.xml" <<'EOF'
import sys
users, rate, secs, port = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
interval = users / rate                 # seconds between two messages of one user
count = max(1, int(secs / interval))    # messages per user
arrival = 500                           # logins per second
ramp = int(users / arrival * 1.5) + 10
print(f'''<?xml version="1.0"?>
<!DOCTYPE tsung SYSTEM "/usr/share/tsung/tsung-1.0.dtd">
<tsung loglevel="warning" version="1.0" dumptraffic="false" backend="fullstats">
 <clients><client host="localhost" use_controller_vm="true" maxusers="{users + 10}"/></clients>
 <servers><server host="127.0.0.1" port="{port}" type="tcp"/></servers>
 <load duration="{ramp + secs + 120}" unit="second">
  <arrivalphase phase="1" duration="{ramp}" unit="second">
   <users maxnumber="{users}" arrivalrate="{arrival}" unit="second"/>
  </arrivalphase>
 </load>
 <options>
  <option type="ts_jabber" name="global_number" value="{users}"/>
  <option type="ts_jabber" name="userid_max" value="{users}"/>
  <option type="ts_jabber" name="domain" value="bench.local"/>
  <option type="ts_jabber" name="username" value="user"/>
  <option type="ts_jabber" name="passwd" value="pass"/>
 </options>
 <sessions>
  <session probability="100" name="chat" type="ts_jabber" bidi="true">
   <request><jabber type="connect" ack="parse" regexp="&lt;/stream:features&gt;"/></request>
   <transaction name="login">
    <request><jabber type="auth_sasl" ack="parse" regexp="&lt;success"/></request>
    <request><jabber type="connect" ack="parse" regexp="&lt;/stream:features&gt;"/></request>
    <request><jabber type="auth_sasl_bind" ack="parse" regexp="&lt;/jid&gt;"/></request>
    <request><jabber type="auth_sasl_session" ack="parse" regexp="type=.result."/></request>
   </transaction>
   <request><jabber type="presence:initial" ack="no_ack"/></request>
   <thinktime value="wait_global"/>
   <setdynvars sourcetype="eval" code="fun({{_P,_D}}) -> float_to_list(rand:uniform() * {interval:.3f}, [{{decimals,3}}]) end.">
    <var name="phase"/>
   </setdynvars>
   <thinktime value="%%_phase%%"/>
   <for from="1" to="{count}" var="i">
    <request><jabber type="chat" ack="no_ack" size="100" destination="online" stamped="true"/></request>
    <thinktime value="{interval:.3f}" random="false"/>
   </for>
   <thinktime value="5"/>
   <request><jabber type="close" ack="no_ack"/></request>
  </session>
 </sessions>
</tsung>''')
EOF
MAXD=$(grep -o 'load duration="[0-9]*"' "$OUT/scenario.xml" | grep -o '[0-9]*')
SPID=$("$PEERS_DIR/ejabberd.sh" pid)
[ -n "$SPID" ] || die "our ejabberd is not running (ejabberd.sh start)"
CPU0=$(awk '{print $14+$15}' "/proc/$SPID/stat")
T0=$(date +%s.%N)
( cd "$OUT" && timeout $((MAXD + 60)) taskset -c 0 tsung -f scenario.xml -l "$OUT/log" start > tsung.out 2>&1 ) || true
T1=$(date +%s.%N)
CPU1=$(awk '{print $14+$15}' "/proc/$SPID/stat")
python3 - "$OUT" "$USERS" "$RATE" "$SECS" "$CPU0" "$CPU1" "$T0" "$T1" <<'EOF'
import glob, json, re, sys
out, users, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
cpu0, cpu1, t0, t1 = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
logs = sorted(glob.glob(f'{out}/log/*/'))
if not logs:
    sys.exit('tsung wrote no log (see tsung.out)')
d = logs[-1]
samples = []
for m in re.finditer(r'\{sample,xmpp_msg_latency,\s*(\[[^\]]*\]|[-0-9.e+]+)\}',
                     open(d + 'tsung-fullstats.log').read()):
    v = m.group(1)
    samples += [float(x) for x in v.strip('[]').split(',') if x.strip()]
samples.sort()
def pct(p):
    return round(samples[min(len(samples) - 1, int(p / 100 * len(samples)))], 2) if samples else None
connected, errors = 0, {}
interval = users / rate
sent = users * max(1, int(secs / interval))   # chat messages in the scenario
for line in open(d + 'tsung.log'):
    f = line.split()
    if len(f) >= 3 and f[0] == 'stats:':
        if f[1] == 'connected':
            connected = max(connected, int(float(f[3])) if len(f) > 3 else 0)
        elif f[1].startswith('error'):
            errors[f[1]] = errors.get(f[1], 0) + int(float(f[2]))
summary = {
    'tool': 'tsung', 'users': users, 'offered_rate': rate, 'secs': secs,
    'users_connected_max': connected, 'chat_scheduled': sent,
    'latency_samples': len(samples), 'delivered_ratio': round(len(samples) / sent, 4) if sent else None,
    'p50_ms': pct(50), 'p90_ms': pct(90), 'p99_ms': pct(99), 'p99_9_ms': pct(99.9),
    'max_ms': round(samples[-1], 2) if samples else None,
    'server_cpu_pct_whole_run': round((cpu1 - cpu0) / 100 / max(t1 - t0, 1e-3) * 100, 1),
    'errors': errors,
}
json.dump(summary, open(f'{out}/summary.json', 'w'), indent=1)
print(json.dumps(summary))
EOF
