# The benchmark's link case (issue 18): the stand-in ESXi host behind a shaped link with a CPU
# quota on each of its ssh connections (scripts/lib/esx-link.sh: the model and its assumptions).
# Stage 1 of a LINK_BASE base by ssh with 1, 2, 4 and 8 connections and by nc, each against the
# link's own rate measured in this run (plain TCP, BusyBox nc from the namespace); then the
# cutover of a LINK_DELTA final delta with the best of them, against the larger of the delta's
# bytes over the link and the same stage 2 from local files. Sourced by scripts/bench.sh; needs
# its W, BIN, MKDELTA, URI, P1, MiB, v, log, measure, phase_s, base_descriptor, vm_vmx,
# fresh_dom, row.

LINK_NS_NAME=vmdkimport-bench-link
LINK_DOM=vmdkimport-bench-link
LINK_LOCAL=vmdkimport-bench-linklocal
# Each ssh connection's sshd's share of one core (percent): one connection then gets about
# two thirds of a 1 Gbit/s link here (73 MiB/s of 112 on 2026-12-07, doc/measured.md).
: "${LINK_SSH_CPU:=10}"

link_cleanup() {
    link_quota_stop
    standin_stop "$W/link"
    link_down "$LINK_NS_NAME"
    local d
    for d in "$LINK_DOM" "$LINK_LOCAL"; do
        v destroy "$d" >/dev/null 2>&1 || true
        v undefine "$d" >/dev/null 2>&1 || true
    done
}

# link_vm DIR: the VM's files: a random base of LINK_BASE bytes, powered off on the stand-in.
link_vm() {
    local dir=$1
    mkdir -p "$dir"
    head -c "$LINK_BASE" /dev/urandom >"$dir/link-flat.vmdk"
    base_descriptor "$dir" link "$LINK_BASE" 5d000008
    vm_vmx "$dir" link
    standin_register "$W/link" 8 link link/link.vmx off sesparse
}

# link_stage1 NAME ARGS...: stage 1 afresh with ARGS; LINK_S = its base upload's seconds.
link_stage1() {
    local name=$1; shift
    v destroy "$LINK_DOM" >/dev/null 2>&1 || true
    fresh_dom "$LINK_DOM" "$P1"
    measure "$name" "$BIN" -c "$URI" --domain "$LINK_DOM" --pool "$P1" --vmx "$LINK_URL" --cpu default --json "$@"
    LINK_S=$(phase_s "$W/out/$name" "base upload")
}

link_case() {
    local dir=$W/link/vmfs/volumes/datastore1/link n best_s best_args=() link_s
    link_up "$LINK_NS_NAME"
    standin_start "$W/link" "$here/target/release/examples" "$LINK_NS_NAME" "$LINK_ESX"
    link_quota "$W/link/standin/sshd.pid" "$LINK_SSH_CPU"
    link_vm "$dir"
    LINK_URL=ssh://root@$LINK_ESX:$STANDIN_PORT$dir/link.vmx
    export VIRT_VMDKIMPORT_SSH_CONFIG=$STANDIN_SSH_CONFIG
    warm "$dir/link-flat.vmdk"
    log "case 8: a $((LINK_BASE / MiB)) MiB base across a $LINK_RATE link, ${LINK_SSH_CPU}% of a core per ssh connection"
    link_s=$(link_seconds "$LINK_BASE")
    need "the link's seconds" "$link_s"
    for n in 1 2 4 8; do
        link_stage1 "s8-ssh$n" --ssh-connections "$n"
        row "8 stage 1 base, ssh x$n" "$LINK_S" "-" "$RSS" "the link, $((LINK_BASE / MiB)) MiB plain TCP" "$link_s" - -
        if [ -z "${best_s:-}" ] || awk -v a="$LINK_S" -v b="$best_s" 'BEGIN { exit !(a < b) }'; then
            best_s=$LINK_S best_args=(--ssh-connections "$n")
        fi
    done
    link_stage1 s8-nc --transport nc --nc-port 0
    row "8 stage 1 base, nc" "$LINK_S" "-" "$RSS" "the link, $((LINK_BASE / MiB)) MiB plain TCP" "$link_s" - -
    if awk -v a="$LINK_S" -v b="$best_s" 'BEGIN { exit !(a < b) }'; then
        best_s=$LINK_S best_args=(--transport nc --nc-port 0)
    fi
    # The link again, after the runs: the goal is taken against the faster of the two readings.
    link_s=$(minof "$link_s" "$(link_seconds "$LINK_BASE")")
    row "8 best transport (${best_args[*]})" "$best_s" "-" "" "the link (best of 2 readings)" "$link_s" le 1.15
    link_cutover "$dir" "${best_args[@]}"
}

# link_cutover DIR ARGS...: stage 1 with ARGS, a LINK_DELTA final delta, the cutover with ARGS.
link_cutover() {
    local dir=$1; shift
    local delta_s local_s outage larger runs=$((LINK_DELTA / 65536))
    # Stage 1 took the migration snapshot: the VM writes into link-000001.vmdk from here on.
    link_stage1 s8-cut-stage1 "$@"
    log "case 8: the final delta, $runs x 64 KiB, and the cutover ($*)"
    "$MKDELTA" --format sesparse --capacity "$LINK_BASE" --base-descriptor "$dir/link.vmdk" \
        --out "$dir/link-000001.vmdk" --runs "$runs" --run-size 65536 --seed 58 >&2
    warm "$dir/link-000001-sesparse.vmdk"
    delta_s=$(link_seconds "$(stat -c %s "$dir/link-000001-sesparse.vmdk")")
    fresh_dom "$LINK_LOCAL" "$P1"
    "$BIN" -c "$URI" --domain "$LINK_LOCAL" --pool "$P1" --vmx "$dir/link.vmx" --cpu default >&2
    measure s8-local "$BIN" -c "$URI" --domain "$LINK_LOCAL" --vmx "$dir/link.vmx" --io direct
    local_s=$T
    measure s8-cutover "$BIN" -c "$URI" --domain "$LINK_DOM" --vmx "$LINK_URL" --cutover "$@"
    sed -n '/the outage$/,/^  total/p' "$W/out/s8-cutover" >&2
    outage=$(sed -n 's/^  total *\([0-9.]*\) s.*/\1/p' "$W/out/s8-cutover")
    need "total in the cutover's outage table" "$outage"
    larger=$(awk -v a="$delta_s" -v b="$local_s" 'BEGIN { print (a > b ? a : b) }')
    row "8 cutover, $((LINK_DELTA / MiB)) MiB delta" "$outage" "-" "$RSS" "larger of the two below" "$larger" le 1.2
    row + "$outage" "" "" "the delta's file over the link" "$delta_s" - -
    row + "$outage" "" "" "stage 2 from local files" "$local_s" - -
}
