#!/usr/bin/env bash
# One `hushwire serve` node on PostgreSQL (pinned to CPU 1) under the load generator's
# `run` scenario (pinned to CPU 0), at each offered rate given, plus PostgreSQL's
# transaction and tuple counters per rate. Needs a release build and a PostgreSQL that
# accepts `psql -h 127.0.0.1 -U postgres` (this machine's): a fresh database is made and
# dropped.
#   bench/pg-node.sh 500 800 2000        results: bench/results/pg-node-<time>/run_<rate>.json
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 RATE..." >&2; exit 2; }
OUT=bench/results/pg-node-$(date -u +%Y%m%dT%H%M%SZ); mkdir -p "$OUT"
DB=hw_bench_$$_$RANDOM
PSQL=(psql -h 127.0.0.1 -U postgres -X -q)
"${PSQL[@]}" -c "CREATE DATABASE $DB" postgres
DATA=$(mktemp -d); SP=
cleanup() {
    [ -n "$SP" ] && kill -TERM "$SP" 2>/dev/null && wait "$SP" 2>/dev/null
    "${PSQL[@]}" -c "DROP DATABASE IF EXISTS $DB" postgres || true
    rm -rf "$DATA"
}
trap cleanup EXIT
printf 'max_connections = 20000\n[rate_limits]\nregistrations_per_ip_per_minute = 10000000\nclaims_per_device_per_minute = 10000000\nsubmits_per_device_per_minute = 10000000\n' > "$DATA/bench.toml"
taskset -c 1 target/release/hushwire serve --listen 127.0.0.1:0 --data "$DATA" \
    --config "$DATA/bench.toml" --store "postgres://postgres@127.0.0.1:5432/$DB" \
    > "$DATA/out.log" 2> "$DATA/err.log" &
SP=$!
for _ in $(seq 1 150); do grep -q '^pin:' "$DATA/out.log" 2>/dev/null && break; sleep 0.2; done
URL=$(awk '/^url:/ {print $2}' "$DATA/out.log"); PIN=$(awk '/^pin:/ {print $2}' "$DATA/out.log")
counters() { "${PSQL[@]}" -Atc "SELECT xact_commit, tup_inserted, tup_deleted FROM pg_stat_database WHERE datname = '$DB'" postgres; }
for RATE in "$@"; do
    BEFORE=$(counters)
    taskset -c 0 target/release/hushwire-loadgen --url "$URL" --pin "$PIN" --server-pid "$SP" \
        --json run --devices 1000 --rate "$RATE" --warmup-secs 3 --duration-secs 10 \
        --drain-secs 10 > "$OUT/run_$RATE.json"
    AFTER=$(counters)
    echo "rate $RATE: pg xact_commit|tup_inserted|tup_deleted before $BEFORE after $AFTER" | tee -a "$OUT/pg_counters.txt"
done
echo "results: $OUT"
