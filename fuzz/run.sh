#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the other, and
# prints a table: target, seconds, executions, crashes. Exits 1 if any target found a
# crash, a panic, a hang (an input taking over 10 s) or an out-of-memory (over 2 GiB);
# the input that did it is in fuzz/artifacts/TARGET/, and
#   cargo fuzz run TARGET fuzz/artifacts/TARGET/FILE
# replays it. Turn each one into a unit test beside the parser.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (cargo install cargo-fuzz). On a stable toolchain RUSTC_BOOTSTRAP=1
# lets rustc take the -Z flags that cargo-fuzz passes; this script sets it. New inputs
# found go to fuzz/corpus/TARGET (not committed); fuzz/seeds/TARGET holds the small
# committed starting set.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"

cargo fuzz build --fuzz-dir fuzz || exit 2

logs="fuzz/target/run-logs"
mkdir -p "$logs"
failed=0
rows=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    dict=()
    if [ -f "fuzz/dicts/$target.dict" ]; then
        dict=("-dict=fuzz/dicts/$target.dict")
    fi
    echo "== $target: ${seconds}s"
    cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${dict[@]}" >"$logs/$target.log" 2>&1
    status=$?
    executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$target.log" |
        grep -o '[0-9]*$' | tail -1)
    crashes=0
    if [ "$status" -ne 0 ]; then
        crashes=1
        failed=1
        echo "!! $target failed (exit $status); see $logs/$target.log and fuzz/artifacts/$target/"
        tail -30 "$logs/$target.log"
    fi
    rows+=("$target ${seconds} ${executions:-?} $crashes")
done

echo
printf '%-16s %8s %14s %8s\n' target seconds executions crashes
for row in "${rows[@]}"; do
    # shellcheck disable=SC2086
    printf '%-16s %8s %14s %8s\n' $row
done
exit "$failed"
