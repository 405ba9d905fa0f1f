# The benchmark's plan case (issue 10): 8 VMs with small dense disks into two pools through two
# URIs of the local daemon (qemu:///system and qemu+tcp://127.0.0.1/system), `plan stage1` then
# `plan cutover`, once with each of PLAN_JOBS (default "1 4"): wall time, the speed-up over
# jobs 1, and the peak memory of the whole run (the plan process and its children summed,
# sampled every 20 ms). Sourced by scripts/bench.sh; needs its W, BIN, MKDELTA, MiB, v, log,
# base_descriptor and row.

PLAN_URI2=qemu+tcp://127.0.0.1/system
PLAN_POOLS=(vmdkimport-bench-plan-a vmdkimport-bench-plan-b)
PLAN_N=8

# plan_cleanup: the plan case's domains and pools.
plan_cleanup() {
    local i p
    for i in $(seq 1 "$PLAN_N"); do
        v destroy "vmdkimport-bench-plan-$i" >/dev/null 2>&1 || true
        v undefine "vmdkimport-bench-plan-$i" >/dev/null 2>&1 || true
    done
    for p in "${PLAN_POOLS[@]}"; do
        if v pool-info "$p" >/dev/null 2>&1; then
            for vol in $(v vol-list "$p" 2>/dev/null | awk '{ print $1 }'); do v vol-delete "$vol" --pool "$p" >/dev/null 2>&1 || true; done
            v pool-destroy "$p" >/dev/null 2>&1 || true
            v pool-undefine "$p" >/dev/null 2>&1 || true
        fi
    done
}

# tree_measure NAME CMD...: run CMD in a session of its own; T (seconds) and TREE_RSS (KiB,
# the largest sum of RSS over the session's processes seen), its stdout in $W/out/NAME.
tree_measure() {
    local name=$1; shift
    sync
    local t0 t1 pid peak=0 now
    t0=$(date +%s%N)
    setsid "$@" >"$W/out/$name" 2>"$W/out/$name.err" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        now=$({ ps -o rss= -s "$pid" 2>/dev/null || true; } | awk '{ s += $1 } END { print s + 0 }')
        [ "$now" -gt "$peak" ] && peak=$now
        sleep 0.02
    done
    if ! wait "$pid"; then log "FAILED: $*"; cat "$W/out/$name" "$W/out/$name.err" >&2; return 1; fi
    t1=$(date +%s%N)
    T=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    TREE_RSS=$peak
}

# plan_write FILE JOBS: the plan of the 8 VMs, alternating between the two URIs and pools.
plan_write() {
    local i uri
    {
        echo "jobs = $2"
        echo "max_per_target = ${PLAN_PER_TARGET:-2}"
        echo "log_dir = \"logs-j$2\""
        printf '[defaults]\nmemory = 64\ncpu = "default"\nos = "linux"\nno_start = true\n'
        for i in $(seq 1 "$PLAN_N"); do
            uri=$URI; [ $((i % 2)) = 0 ] && uri=$PLAN_URI2
            printf '\n[[vm]]\nname = "vmdkimport-bench-plan-%s"\nconnect = "%s"\npool = "%s"\n' "$i" "$uri" "${PLAN_POOLS[$((i % 2))]}"
            printf 'flat = "vm%s/vm%s.vmdk"\ndeltas = ["vm%s/vm%s-000001.vmdk"]\n' "$i" "$i" "$i" "$i"
        done
    } >"$1"
}

plan_case() {
    local d=$W/plan i jobs base_s1="" base_co="" size=$PLAN_SIZE peak=0
    PLAN_JOBS=${PLAN_JOBS:-1 4}
    mkdir -p "$d" "$W/out"
    log "plan case: $PLAN_N VMs of $((size / MiB)) MiB (dense), two URIs, jobs $PLAN_JOBS"
    for i in $(seq 1 "$PLAN_N"); do
        mkdir -p "$d/vm$i"
        head -c "$size" /dev/urandom >"$d/vm$i/vm$i-flat.vmdk"
        base_descriptor "$d/vm$i" "vm$i" "$size" "6d00000$i"
        "$MKDELTA" --format sesparse --capacity "$size" --base-descriptor "$d/vm$i/vm$i.vmdk" \
            --out "$d/vm$i/vm$i-000001.vmdk" --runs 64 --run-size 65536 --seed "$i" >&2
    done
    mkdir -p "$d/pa" "$d/pb"
    virsh -q -c "$URI" pool-create-as "${PLAN_POOLS[0]}" dir --target "$d/pa" >/dev/null
    virsh -q -c "$PLAN_URI2" pool-create-as "${PLAN_POOLS[1]}" dir --target "$d/pb" >/dev/null
    for jobs in $PLAN_JOBS; do
        plan_cleanup_doms
        plan_write "$d/plan.toml" "$jobs"
        cat "$d"/vm*/*.vmdk >/dev/null
        tree_measure "plan-s1-j$jobs" "$BIN" plan stage1 "$d/plan.toml"
        local s1=$T s1_rss=$TREE_RSS
        tree_measure "plan-co-j$jobs" "$BIN" plan cutover "$d/plan.toml"
        local co=$T co_rss=$TREE_RSS
        [ -n "$base_s1" ] || base_s1=$s1 base_co=$co
        # One run each (marked *): a plan run is many runs already.
        row "7 plan stage1, 8 VMs, jobs $jobs" "$s1*" "-" "$s1_rss" "plan stage1, jobs ${PLAN_JOBS%% *}" "$base_s1" - -
        row "7 plan cutover, 8 VMs, jobs $jobs" "$co*" "-" "$co_rss" "plan cutover, jobs ${PLAN_JOBS%% *}" "$base_co" - -
        [ "$s1_rss" -le "$peak" ] || peak=$s1_rss
        [ "$co_rss" -le "$peak" ] || peak=$co_rss
    done
    PLAN_PEAK=$peak
    plan_cleanup
}

# Domains and volumes only (the pools stay), between two runs of the plan.
plan_cleanup_doms() {
    local i p
    for i in $(seq 1 "$PLAN_N"); do
        v destroy "vmdkimport-bench-plan-$i" >/dev/null 2>&1 || true
        v undefine "vmdkimport-bench-plan-$i" >/dev/null 2>&1 || true
        for p in "${PLAN_POOLS[@]}"; do v vol-delete "vmdkimport-bench-plan-$i-disk0" --pool "$p" >/dev/null 2>&1 || true; done
    done
}
