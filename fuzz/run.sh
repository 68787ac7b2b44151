#!/bin/sh
# Runs the fuzz targets one at a time with cargo-fuzz (libFuzzer) on stable
# Rust (RUSTC_BOOTSTRAP=1 lets stable take the sanitizer flags cargo-fuzz
# passes), and prints per target the executions, coverage and crashes.
#
#   fuzz/run.sh [TARGET|all] [SECONDS]     (default: all, 120 s each)
#
# The corpus of a target grows in fuzz/corpus/<target>/ (only the seed-*
# files are committed); a crash leaves its input in fuzz/artifacts/<target>/
# and makes the script exit 1 after the remaining targets ran. Full
# libFuzzer output: $FUZZ_LOG_DIR/fuzz-<target>.log (default /tmp).
# Extra libFuzzer flags: FUZZ_ARGS="-max_len=8192".
set -eu

cd "$(dirname "$0")"
TARGETS="cert crl config bgp bfd inband control firewall_packet receive"
target=${1:-all}
secs=${2:-120}
logs=${FUZZ_LOG_DIR:-/tmp}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

case $target in
all) run=$TARGETS ;;
*)
    case " $TARGETS " in
    *" $target "*) run=$target ;;
    *) echo "unknown target $target (one of: $TARGETS)" >&2; exit 2 ;;
    esac
    ;;
esac

export RUSTC_BOOTSTRAP=1
# Build first, so the time limit is all fuzzing.
cargo fuzz build >&2

failed=0
printf '%-16s %6s %12s %8s %6s %7s %7s %7s\n' target secs execs exec/s cov ft corpus crashes
for t in $run; do
    log=$logs/fuzz-$t.log
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | wc -l)
    status=0
    # One process (no -jobs/-workers); a stuck input fails after 25 s.
    # shellcheck disable=SC2086
    cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -timeout=25 \
        -rss_limit_mb=2048 -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
    crashes=$(($(ls "artifacts/$t" | wc -l) - before))
    if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="?"
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corpus=$(ls "corpus/$t" | wc -l)
    printf '%-16s %6s %12s %8s %6s %7s %7s %7s\n' "$t" "$secs" "${execs:--}" "${rate:--}" \
        "${cov:--}" "${ft:--}" "$corpus" "$crashes"
    if [ "$crashes" != 0 ]; then
        failed=1
        echo "  $t: exit $status, see $log and fuzz/artifacts/$t/" >&2
    fi
done
exit $failed
