#!/usr/bin/env bash
# scripts/stress-precopy.sh [ROUNDS]: doc/operator-guide.md's pre-copy (delta 1 with --no-start, then
# delta 2 through upload streams whose gaps are downloaded from the volume) run ROUNDS times
# (default 200), half of them with each window's upload held until its download has filled
# the queue (VMDKIMPORT_TEST_HOLD_UPLOAD=1). Every round has a time bound (the nextest
# profile's slow-timeout), so a hang fails a round instead of stopping the run. Not in CI:
# it takes about 7 s a round. Prints the count of rounds passed and failed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
test_filter='test(=lifecycle::pre_copy_applies_delta_1_with_no_start_then_delta_2_and_starts)'
cargo build --all-targets -q
log=$(mktemp -t stress-precopy.XXXXXX)
status=0
for hold in 0 1; do
    n=$((rounds / 2 + (hold == 0 ? rounds % 2 : 0)))
    [ "$n" -gt 0 ] || continue
    echo "stress-precopy: $n rounds with VMDKIMPORT_TEST_HOLD_UPLOAD=$hold (log: $log)"
    if ! VMDKIMPORT_TEST_HOLD_UPLOAD=$hold cargo nextest run --no-fail-fast --retries 0 \
        --test import -E "$test_filter" --stress-count "$n" >>"$log" 2>&1; then
        status=1
    fi
done
summary=$(grep -E '^ +Summary' "$log" || true)
echo "$summary"
[ "$status" = 0 ] && echo "stress-precopy: all $rounds rounds passed" || echo "stress-precopy: FAILED (see $log)"
exit "$status"
