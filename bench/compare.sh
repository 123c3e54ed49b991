#!/usr/bin/env bash
# Hushwire against ejabberd (XMPP) and Mosquitto (MQTT 3.1.1, QoS 1, persistent
# sessions), back to back on this machine, with the same load generator
# (bench/loadgen) and the same scenarios:
#   - sustained rate: the highest offered 1:1 rate whose delivery p99 stays <= 50 ms
#     (delivered >= 99% of offered, nothing lost), 10,000 connected clients;
#   - Hushwire at ejabberd's maximum sustained rate (p99 side by side);
#   - idle connections: server RSS per idle logged-in connection (least-squares slope).
# Every server runs on CPU 1, the generator on CPU 0 (one thread). Hushwire runs with its
# default storage settings: every message is fsynced (SQLite WAL, synchronous=FULL)
# before the sender gets `accepted`. The peers never fsync per message.
#
# Usage: bench/compare.sh [--quick]
#   --quick  fewer rate steps, short windows, idle at 1k/5k/10k (under 10 minutes once
#            the release binaries are built)
#   full     more steps and longer windows, idle at 5k/10k/19k, tsung against
#            ejabberd as a cross-check of the generator, the offline backlog drain
#            (1,000 receivers: 1M messages for Hushwire and Mosquitto, 100k for all
#            three: ejabberd's offline store cannot take 1M in the run's budget), and
#            (Hushwire only) the sustained rate with real client-side MLS
# Smoke-test knobs (environment): COMPARE_DEVICES, COMPARE_IDLE_STEPS, COMPARE_PROBES,
# COMPARE_NO_BUILD=1 (use the binaries in target/release as they are), START_HUSHWIRE,
# START_EJABBERD, START_MOSQUITTO (first rate probed).
# Results: bench/results/<UTC timestamp>/ (JSON per scenario, summary.csv, summary.json,
# machine.json, logs). The last line printed is
#   ratios: sustained_vs_ejabberd=<x> sustained_vs_mosquitto=<y> p99_vs_ejabberd=<z> kib_per_idle_conn=<k>
set -euo pipefail

QUICK=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PEERS="$ROOT/bench/peers"
export SERVER_CPU=1
GEN_CPU=0
DEVICES=${COMPARE_DEVICES:-10000}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
R="$ROOT/bench/results/$STAMP"
mkdir -p "$R"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

if [ $QUICK = 1 ]; then
  MODE=quick
  # warm-up / window / drain seconds per probe; probes; growth between probes
  WIN=(--warmup-secs 2 --duration-secs 5 --drain-secs 5)
  PROBES=3        # Hushwire probes cost ~40 s each (10k registrations + TLS logins)
  PEER_PROBES=4   # peer probes ~15-25 s each
  IDLE_STEPS=1000,5000,10000
  SETTLE=2
else
  MODE=full
  WIN=(--warmup-secs 3 --duration-secs 10 --drain-secs 10)
  PROBES=7
  PEER_PROBES=8
  IDLE_STEPS=5000,10000,19000
  SETTLE=3
fi
# First rate probed per target (close to where each one was seen to saturate on this
# machine kind, so few probes are wasted), then x1.5 until a failure, then bisection.
START_HUSHWIRE=${START_HUSHWIRE:-6000}
START_EJABBERD=${START_EJABBERD:-3500}
START_MOSQUITTO=${START_MOSQUITTO:-12000}
PROBES=${COMPARE_PROBES:-$PROBES}
PEER_PROBES=${COMPARE_PROBES:-$PEER_PROBES}
IDLE_STEPS=${COMPARE_IDLE_STEPS:-$IDLE_STEPS}
MAXARGS=(--devices $DEVICES --growth 1.5 --precision 0.1 --max-p99-ms 50 --min-ratio 0.99 "${WIN[@]}")

cleanup() {
  "$PEERS/ejabberd.sh" stop >/dev/null 2>&1 || true
  "$PEERS/mosquitto.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [ "${COMPARE_NO_BUILD:-0}" != 1 ]; then
  say "building release binaries (hushwire, hushwire-loadgen)"
  cargo build --release -q -p hushwire -p hushwire-loadgen
fi
"$PEERS/install.sh"
LGBIN="$ROOT/target/release/hushwire-loadgen"
LG=("$LGBIN" --json --generator-cpu $GEN_CPU)
T0=$(date +%s)   # the contract's clock starts once the binaries exist

# Machine facts.
python3 - "$R/machine.json" "$MODE" <<'EOF'
import json, os, platform, subprocess, sys
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        return None
cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), None)
mem = next((int(l.split()[1]) for l in open('/proc/meminfo') if l.startswith('MemTotal')), None)
json.dump({
    'mode': sys.argv[2],
    'cpus': os.cpu_count(), 'cpu_model': cpu, 'mem_total_kib': mem,
    'kernel': platform.release(),
    'nofile_limit': sh('ulimit -n'),
    'loadavg_start': open('/proc/loadavg').read().split()[:3],
    'git_rev': sh('git rev-parse --short HEAD'),
    'git_dirty': bool(sh('git status --porcelain --untracked-files=no')),
    'ejabberd': sh("dpkg-query -W -f='${Version}' ejabberd"),
    'mosquitto': sh("dpkg-query -W -f='${Version}' mosquitto"),
    'tsung': sh("dpkg-query -W -f='${Version}' tsung"),
    'data_fs': sh("df -T /tmp | awk 'NR==2{print $2}'"),
    'pinning': {'server_cpu': 1, 'generator_cpu': 0, 'generator_threads': 1},
}, open(sys.argv[1], 'w'), indent=1)
EOF

# Runs the generator; JSON report to $R/$1.json, progress to $R/$1.log.
lg() {
  local name=$1; shift
  say "$name: ${*}"
  if ! "${LG[@]}" "$@" > "$R/$name.json" 2> "$R/$name.log"; then
    say "$name FAILED (see $R/$name.log)"; tail -3 "$R/$name.log" >&2 || true
    return 0
  fi
  python3 - "$R/$name.json" <<'EOF' || true
import json, sys
d = json.load(open(sys.argv[1]))
if d.get('mode') == 'max':
    b = d.get('best') or {}
    print(f"    sustained {d.get('sustained_rate')} msgs/s (first failing {d.get('first_failing_rate')}), "
          f"p99 {((b.get('delivery_latency') or {}).get('p99_ms'))} ms")
elif d.get('mode') == 'idle':
    print(f"    {d['report'].get('slope_rss_bytes_per_conn')} B RSS per idle connection")
elif d.get('mode') == 'backlog':
    r = d['report']
    print(f"    {r['messages']} messages drained in {r['drain_s']} s = {r['drain_msgs_per_s']} msgs/s, lost {r['lost']}")
else:
    r = d['report']
    print(f"    {r['window']['delivered_per_s']} delivered/s, p99 {r['delivery_latency']['p99_ms']} ms, lost {r['lost']}")
EOF
}

# --- ejabberd first: its sustained rate sets the rate of the p99 comparison.
say "ejabberd: start, register $DEVICES users"
"$PEERS/ejabberd.sh" start > "$R/ejabberd-start.log" 2>&1
MAXU=$(python3 -c "import sys; print(max([$DEVICES] + [int(x) for x in sys.argv[1].split(',')]))" "$IDLE_STEPS")
"$PEERS/ejabberd.sh" register $MAXU >> "$R/ejabberd-start.log" 2>&1
EJ_PID=$("$PEERS/ejabberd.sh" pid)
lg ejabberd_max --target xmpp --server-pid "$EJ_PID" max --start-rate "$START_EJABBERD" --max-probes $PEER_PROBES "${MAXARGS[@]}"
"$PEERS/ejabberd.sh" clear >> "$R/ejabberd-start.log" 2>&1 || true
if [ $QUICK = 0 ]; then
  say "tsung cross-check against ejabberd"
  "$PEERS/tsung_xmpp.sh" "$R/tsung" --users 10000 --rate 2000 --secs 30 > "$R/tsung.log" 2>&1 \
    && cp "$R/tsung/summary.json" "$R/tsung_ejabberd.json" || say "tsung FAILED (see $R/tsung.log)"
  "$PEERS/ejabberd.sh" clear >> "$R/ejabberd-start.log" 2>&1 || true
fi
# Idle on a fresh node: the traffic above left garbage and caches behind.
"$PEERS/ejabberd.sh" stop >> "$R/ejabberd-start.log" 2>&1
"$PEERS/ejabberd.sh" start >> "$R/ejabberd-start.log" 2>&1
"$PEERS/ejabberd.sh" register $MAXU >> "$R/ejabberd-start.log" 2>&1
EJ_PID=$("$PEERS/ejabberd.sh" pid)
lg ejabberd_idle --target xmpp --server-pid "$EJ_PID" idle --steps $IDLE_STEPS --settle-secs $SETTLE
if [ $QUICK = 0 ]; then
  # The backlog on a fresh node too (users 1..2000: receivers, then senders).
  "$PEERS/ejabberd.sh" stop >> "$R/ejabberd-start.log" 2>&1
  "$PEERS/ejabberd.sh" start >> "$R/ejabberd-start.log" 2>&1
  "$PEERS/ejabberd.sh" register 2000 >> "$R/ejabberd-start.log" 2>&1
  EJ_PID=$("$PEERS/ejabberd.sh" pid)
  lg ejabberd_backlog_100k --target xmpp --server-pid "$EJ_PID" backlog --devices 2000 --messages 100000
fi
"$PEERS/ejabberd.sh" stop >> "$R/ejabberd-start.log" 2>&1

# --- Mosquitto.
say "mosquitto: start"
"$PEERS/mosquitto.sh" start > "$R/mosquitto-start.log" 2>&1
MQ_PID=$("$PEERS/mosquitto.sh" pid)
lg mosquitto_max --target mqtt --server-pid "$MQ_PID" max --start-rate "$START_MOSQUITTO" --max-probes $PEER_PROBES "${MAXARGS[@]}"
"$PEERS/mosquitto.sh" stop >> "$R/mosquitto-start.log" 2>&1
"$PEERS/mosquitto.sh" start >> "$R/mosquitto-start.log" 2>&1
MQ_PID=$("$PEERS/mosquitto.sh" pid)
lg mosquitto_idle --target mqtt --server-pid "$MQ_PID" idle --steps $IDLE_STEPS --settle-secs $SETTLE
if [ $QUICK = 0 ]; then
  for n in 1000000:backlog 100000:backlog_100k; do
    "$PEERS/mosquitto.sh" stop >> "$R/mosquitto-start.log" 2>&1
    "$PEERS/mosquitto.sh" start >> "$R/mosquitto-start.log" 2>&1
    MQ_PID=$("$PEERS/mosquitto.sh" pid)
    lg "mosquitto_${n#*:}" --target mqtt --server-pid "$MQ_PID" backlog --devices 2000 --messages "${n%%:*}"
  done
fi
"$PEERS/mosquitto.sh" stop >> "$R/mosquitto-start.log" 2>&1

# --- Hushwire (a fresh server and database per probe, started by the generator).
HW=(--server-cpu $SERVER_CPU)
lg hushwire_max "${HW[@]}" max --start-rate "$START_HUSHWIRE" --max-probes $PROBES "${MAXARGS[@]}"
EJ_RATE=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('sustained_rate') or '')" "$R/ejabberd_max.json" 2>/dev/null || true)
if [ -n "$EJ_RATE" ]; then
  lg hushwire_at_ejabberd_rate "${HW[@]}" run --devices $DEVICES --rate "$EJ_RATE" "${WIN[@]}"
else
  say "no sustained ejabberd rate: skipping the p99 comparison run"
fi
lg hushwire_idle "${HW[@]}" idle --steps $IDLE_STEPS --settle-secs $SETTLE
if [ $QUICK = 0 ]; then
  # The offline backlog drain, and (Hushwire only) the sustained rate when the generator
  # also does the clients' MLS encryption and decryption.
  lg hushwire_backlog "${HW[@]}" backlog --devices 2000 --messages 1000000
  lg hushwire_backlog_100k "${HW[@]}" backlog --devices 2000 --messages 100000
  lg hushwire_max_real_mls "${HW[@]}" --real-mls max --start-rate 3000 --max-probes $PROBES "${MAXARGS[@]}"
fi

say "done in $(( $(date +%s) - T0 )) s after the build; results in ${R#"$ROOT"/}"
# Summary tables and the ratios line (printed last).
python3 "$PEERS/summarize.py" "$R" "$(( $(date +%s) - T0 ))"
