#!/usr/bin/env bash
# Fuzz every reader with cargo-fuzz (libFuzzer, AddressSanitizer, nightly toolchain):
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# runs each target (default: all) for SECONDS (default 60), one after the other, and prints
# one line per target: name, executions, coverage, crashes. Exits non-zero if any target
# crashed, hung (-timeout), or went over 128 MiB (-rss_limit_mb, -malloc_limit_mb; plan has
# 256 MiB of RSS, see below). Crashing inputs land in fuzz/artifacts/TARGET/; reproduce with
# `cargo +nightly fuzz run TARGET FILE`. Seeds come from the test fixture writers
# (examples/fuzzseeds.rs) into fuzz/seeds/; what the fuzzer finds is kept in fuzz/corpus/ for
# the next run. Not part of CI: too slow (scripts/test.sh only compiles the targets).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
all=(descriptor cowd sesparse hosted vmx chain vimcmd plan)
[ $# -gt 0 ] && targets=("$@") || targets=("${all[@]}")

toolchains=$(rustup toolchain list)
case "$toolchains" in
    *nightly*) ;;
    *) rustup toolchain install nightly --profile minimal ;;
esac
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz
fi

rm -rf fuzz/seeds
mkdir -p fuzz/logs
# Debug assertions and overflow checks on (-a): an arithmetic overflow is a crash too.
if ! { cargo run -q --example fuzzseeds -- fuzz/seeds && cargo +nightly fuzz build -a; } \
        >fuzz/logs/build.log 2>&1; then
    cat fuzz/logs/build.log >&2
    echo "fuzz.sh: building the seeds or the targets failed (fuzz/logs/build.log)" >&2
    exit 2
fi

# The targets write their inputs to /dev/shm/vmdkfuzz-PID: remove those of finished runs.
remove_stale_scratch() {
    local d
    for d in /dev/shm/vmdkfuzz-*; do
        [ -d "$d" ] || continue
        kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
    done
}

# AddressSanitizer keeps freed memory in a quarantine (256 MiB by default) that counts in the
# RSS: keep it small so the 128 MiB limit measures the readers, not the sanitizer.
export ASAN_OPTIONS="${ASAN_OPTIONS:-quarantine_size_mb=16}"

failed=0
for t in "${targets[@]}"; do
    # plan reaches clap, toml and serde: libFuzzer's own tables for its 7,000+ edges and its
    # corpus (3,161 inputs) passed 128 MiB of RSS 150 s into a run, with 35 MiB of live heap,
    # on a 199-byte plan that replays alone in 0.1 ms. So 256 MiB of RSS for plan; no single
    # allocation over 128 MiB (-malloc_limit_mb) holds for every target.
    rss=128
    [ "$t" != plan ] || rss=256
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    log="fuzz/logs/$t.log"
    status=0
    cargo +nightly fuzz run -a "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb="$rss" -malloc_limit_mb=128 \
        -max_len=262144 -print_final_stats=1 >"$log" 2>&1 || status=$?
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    [ "$status" -eq 0 ] || [ "$crashes" -gt 0 ] || crashes=1
    stats=$(cat "$log")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' <<<"$stats" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' <<<"$stats" | tail -n 1 || true)
    printf '%-10s executions=%s %s crashes=%s\n' "$t" "${execs:-?}" "${cov:-cov: ? ft: ?}" "$crashes"
    [ "$crashes" -eq 0 ] || { failed=1; grep -m 3 -E 'panicked|ERROR: libFuzzer|SUMMARY' <<<"$stats" || true; }
    remove_stale_scratch
done
exit "$failed"
