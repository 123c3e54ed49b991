#!/usr/bin/env bash
# N `hushwire serve` nodes sharing one PostgreSQL database and one NATS (MODE pg), or one
# embedded node (MODE embedded, the default store), under the load generator's `run`
# scenario at each offered rate given. With N > 1 the generator spreads the devices
# round-robin over the nodes (`--also-url`), so the two devices of every pair are on
# different nodes: every message is a cross-node delivery (stored by the sender's node,
# woken through NATS on the recipient's). All nodes on CPU 1, the generator on CPU 0,
# PostgreSQL and NATS float over both cores: 2 vCPU shared by everything.
#
#   bench/pg-cluster.sh pg 3 1000 3000      results: bench/results/cluster-pg-3n-<time>/
#   bench/pg-cluster.sh embedded 1 3000
#   bench/pg-cluster.sh pg 6 idle 10000,50000,100000
#
# `idle STEPS` measures idle connections instead (the generator's `fleet-idle`): one
# generator process per node holds that node's share of each step, since no process
# here can hold more than 19,000 connections (20,000 open files). Result: idle.json.
#
# Per rate: run_<rate>.json (the generator's report), and a line in counters.csv with
# PostgreSQL's committed transactions (pg_stat_database.xact_commit, all nodes), the
# nodes' own statement/commit counters (PgStats, logged by each node at debug level
# about once a second; summed over nodes), the nodes' CPU seconds, the load average.
# Environment: DEVICES (default 1000), WINDOW (measurement seconds, 10), WARMUP (3),
# STORE_PARAMS (query appended to the store URL, e.g. "pool_size=16&batch_max=256"),
# DIRECTORY_INTERVAL (the nodes' key directory publish interval, e.g. 24h),
# NATS_URL (nats://127.0.0.1:4222). Needs a release build and `psql -h 127.0.0.1 -U
# postgres`. Everything it starts is stopped on exit, the database dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { echo "usage: $0 pg|embedded NODES RATE... | idle [STEPS]" >&2; exit 2; }
MODE=$1 NODES=$2; shift 2
SCENARIO=run; [ "$1" = idle ] && SCENARIO=idle && STEPS=${2:-10000,50000,100000}
# Idle: six nodes at the default pool of 16 would take most of PostgreSQL's 100 slots.
[ "$SCENARIO" = idle ] && STORE_PARAMS=${STORE_PARAMS:-pool_size=6}
case $MODE in pg) ;; embedded) [ "$NODES" = 1 ] || { echo "embedded: one node" >&2; exit 2; } ;;
    *) echo "MODE: pg or embedded" >&2; exit 2 ;; esac
DEVICES=${DEVICES:-1000} WINDOW=${WINDOW:-10} WARMUP=${WARMUP:-3}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
OUT=bench/results/cluster-$MODE-${NODES}n${SCENARIO/run/}-$(date -u +%Y%m%dT%H%M%SZ); mkdir -p "$OUT"
PSQL=(psql -h 127.0.0.1 -U postgres -X -q)
ROOT=$(mktemp -d); PIDS=(); DB=
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -n "$DB" ] && "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" postgres || true
    rm -rf "$ROOT"
}
trap cleanup EXIT
STORE_LINE=
if [ "$MODE" = pg ]; then
    DB=hw_cluster_$$_$RANDOM
    "${PSQL[@]}" -c "CREATE DATABASE $DB" postgres
    STORE="postgres://postgres@127.0.0.1:5432/$DB${STORE_PARAMS:+?$STORE_PARAMS}"
    STORE_LINE="store = \"$STORE\""
fi
PREFIX=/bench-$RANDOM$RANDOM
URLS=(); PIN=
for n in $(seq 1 "$NODES"); do
    D=$ROOT/node$n; mkdir -p "$D"
    {
        echo "listen = \"127.0.0.1:0\""
        echo "data_dir = \"$D\""
        echo "path_prefix = \"$PREFIX\""
        echo "max_connections = 20000"
        [ -n "$STORE_LINE" ] && echo "$STORE_LINE"
        if [ -n "$PIN" ]; then
            printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$ROOT/node1/tls/cert.pem" "$ROOT/node1/tls/key.pem"
        fi
        if [ "$MODE" = pg ]; then
            printf '[bus]\nurl = "%s"\nsubject_prefix = "bench%s"\n' "$NATS_URL" "$$"
        fi
        printf '[rate_limits]\nregistrations_per_ip_per_minute = 10000000\nclaims_per_device_per_minute = 10000000\nsubmits_per_device_per_minute = 10000000\n'
        # DIRECTORY_INTERVAL=24h keeps the key directory from publishing the registered
        # accounts during an idle run (its tree costs memory per account, not per
        # connection, and the heap it frees would flatter the per-connection slope).
        if [ -n "${DIRECTORY_INTERVAL:-}" ]; then
            printf '[directory]\npublish_interval = "%s"\n' "$DIRECTORY_INTERVAL"
        fi
    } > "$D/node.toml"
    RUST_LOG="warn,hushwire_store_postgres::stats=debug,hushwire_directory=debug" taskset -c 1 target/release/hushwire serve \
        --config "$D/node.toml" > "$D/out.log" 2> "$D/err.log" &
    PIDS+=($!)
    for _ in $(seq 1 300); do grep -q '^pin:' "$D/out.log" 2>/dev/null && break; sleep 0.2; done
    grep -q '^pin:' "$D/out.log" || { echo "node $n did not start" >&2; cat "$D/err.log" >&2; exit 1; }
    URLS+=("$(awk '/^url:/ {print $2}' "$D/out.log")")
    PIN=$(awk '/^pin:/ {print $2}' "$D/out.log")
done
echo "nodes: ${URLS[*]} (pids ${PIDS[*]})" | tee "$OUT/nodes.txt"
ALSO=(); for u in "${URLS[@]:1}"; do ALSO+=(--also-url "$u"); done
if [ "$SCENARIO" = idle ]; then
    NODE_PIDS=$(IFS=,; echo "${PIDS[*]}")
    taskset -c 0 target/release/hushwire-loadgen --url "${URLS[0]}" "${ALSO[@]}" --pin "$PIN" \
        --json fleet-idle --node-pids "$NODE_PIDS" --steps "$STEPS" > "$OUT/idle.json" \
        2> "$OUT/idle.log" || { echo "fleet-idle failed (see $OUT/idle.log)" >&2; tail -5 "$OUT/idle.log" >&2; RC=1; }
    for n in $(seq 1 "$NODES"); do cp "$ROOT/node$n/err.log" "$OUT/node$n.log"; done
    echo "results: $OUT"
    exit "${RC:-0}"
fi

xact() { [ -n "$DB" ] && "${PSQL[@]}" -Atc "SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'" postgres || echo 0; }
# Sum over nodes of the last logged counter NAME.
stat_sum() {
    local s=0 v
    for n in $(seq 1 "$NODES"); do
        v=$(sed "s/\x1b\[[0-9;]*m//g" "$ROOT/node$n/err.log" 2>/dev/null | grep -o "$1=[0-9]*" | tail -1 | cut -d= -f2)
        s=$((s + ${v:-0}))
    done
    echo $s
}
cpu_ticks() { local s=0; for p in "${PIDS[@]}"; do s=$((s + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $s; }
echo "rate,nodes,mode,xact_commit,pg_statements,pg_commits,batches,batched_submits,batched_ack_hints,nodes_cpu_s,loadavg_before,loadavg_after" > "$OUT/counters.csv"
for RATE in "$@"; do
    X0=$(xact); S0=$(stat_sum statements); C0=$(stat_sum commits); B0=$(stat_sum batches)
    U0=$(stat_sum batched_submits); H0=$(stat_sum batched_ack_hints); T0=$(cpu_ticks)
    L0=$(cut -d' ' -f1 /proc/loadavg)
    taskset -c 0 target/release/hushwire-loadgen --url "${URLS[0]}" "${ALSO[@]}" --pin "$PIN" \
        --server-pid "${PIDS[0]}" --json run --devices "$DEVICES" --rate "$RATE" \
        --warmup-secs "$WARMUP" --duration-secs "$WINDOW" --drain-secs 10 > "$OUT/run_$RATE.json" \
        2> "$OUT/run_$RATE.log" || echo "rate $RATE: generator failed (see run_$RATE.log)" >&2
    sleep 2 # let the last batches be logged
    X1=$(xact); S1=$(stat_sum statements); C1=$(stat_sum commits); B1=$(stat_sum batches)
    U1=$(stat_sum batched_submits); H1=$(stat_sum batched_ack_hints); T1=$(cpu_ticks)
    L1=$(cut -d' ' -f1 /proc/loadavg)
    CPU=$(awk -v t="$((T1 - T0))" 'BEGIN {printf "%.2f", t / 100}')
    echo "$RATE,$NODES,$MODE,$((X1 - X0)),$((S1 - S0)),$((C1 - C0)),$((B1 - B0)),$((U1 - U0)),$((H1 - H0)),$CPU,$L0,$L1" | tee -a "$OUT/counters.csv"
done
for n in $(seq 1 "$NODES"); do cp "$ROOT/node$n/err.log" "$OUT/node$n.log"; done
echo "results: $OUT"
