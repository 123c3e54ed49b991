#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ on the stable toolchain (--sanitizer none: the
# code is safe Rust, so a finding is a panic, an assert or a hang, not memory misuse).
#
#   scripts/fuzz.sh            CI smoke: each target for $FUZZ_SECONDS (default 20 s)
#   FUZZ_SECONDS=1800 scripts/fuzz.sh client_frame   a long run of one target
#
# Each target first replays its committed regression inputs (fuzz/regressions/<target>/,
# every crash ever found), then fuzzes from its corpus (fuzz/corpus/<target>/, kept
# between runs, not committed) and its committed seed inputs (fuzz/seeds/<target>/:
# valid examples, so the fuzzer starts past the format's front door). Prints one summary line per target (executions, corpus
# size); exits non-zero on the first failure, leaving the crashing input in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-20}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build -s none
targets=("$@")
if [ "${#targets[@]}" = 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        cargo fuzz run -s none "$t" "regressions/$t"/* -- -runs=1 >/dev/null 2>&1 ||
            { echo "$t: a committed regression input fails"; cargo fuzz run -s none "$t" "regressions/$t"/* -- -runs=1; exit 1; }
    fi
    log="$(mktemp)"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    if ! cargo fuzz run -s none "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "$t: FAILED (input saved under fuzz/artifacts/$t/)"
        exit 1
    fi
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    echo "$t: ${seconds}s, ${execs} executions, $(ls "corpus/$t" | wc -l) corpus inputs, no findings"
    rm -f "$log"
done
