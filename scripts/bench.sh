#!/usr/bin/env bash
# The benchmark of issue 5: virt-vmdkimport's stage 1 and stage 2 against a real libvirtd
# (qemu:///system), each next to the plain virsh / raw-file operation that does the same work,
# with every ratio computed from figures measured in this run. Prints one table.
#
#   scripts/bench.sh          full sizes (about 5-10 minutes on 2 cores)
#   scripts/bench.sh --quick  scaled-down sizes, one run per figure (for trying it out)
#   scripts/bench.sh --keep   leave inputs, pools and domains in place afterwards (for a look)
#   scripts/bench.sh --esx-only   only case 5 (the cutover from the stand-in ESXi host)
#   scripts/bench.sh --overlay-only   only case 6 (--io overlay through qemu+tcp://127.0.0.1/system)
#   scripts/bench.sh --link-only  only case 8 (the stand-in ESXi across a shaped 1 Gbit/s link:
#                                 ssh connections and nc, the cutover; scripts/lib/esx-link.sh)
#   scripts/bench.sh --plan-only  only case 7 (a plan of 8 VMs over two URIs, jobs 1 and 4;
#                                 PLAN_JOBS="1 2 4 8" PLAN_PER_TARGET=8 for other limits)
#
# Run as root (it starts libvirtd through scripts/setup-host.sh). Everything it makes is named
# vmdkimport-bench* and lives under /var/tmp/vmdkimport-bench; it is all removed at the end,
# on failure and on Ctrl-C too.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
URI=qemu:///system
W=/var/tmp/vmdkimport-bench
P1=vmdkimport-bench-1vol   # holds only the bench's own volumes
P2=vmdkimport-bench-2kvol  # holds the bench's volumes plus OTHERS small unrelated ones
MiB=$((1024 * 1024))
GiB=$((1024 * MiB))

QUICK=0
KEEP=0
ESX_ONLY=0
OVL_ONLY=0
PLAN_ONLY=0
LINK_ONLY=0
for a in "$@"; do
    case $a in
    --quick) QUICK=1 ;;
    --keep) KEEP=1 ;; # leave everything in place for a look afterwards
    --esx-only) ESX_ONLY=1 ;;
    --overlay-only) OVL_ONLY=1 ;;
    --plan-only) PLAN_ONLY=1 ;;
    --link-only) LINK_ONLY=1 ESX_ONLY=1 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $a" >&2; exit 2 ;;
    esac
done
# The plan case alone touches only its own folder, domains and pools, so it can run beside a
# full benchmark without either removing the other's.
[ "$PLAN_ONLY" = 1 ] && W=/var/tmp/vmdkimport-bench-plan

if [ "$OVL_ONLY" = 1 ]; then
    # Names of its own, so it can run beside another bench run.
    W=/var/tmp/vmdkimport-bench-ovl P1=vmdkimport-bench-ovl-1vol P2=vmdkimport-bench-ovl-2kvol
fi
if [ "$QUICK" = 1 ]; then
    DENSE=$((256 * MiB)) S1_RUNS=64                       # case 1 (and 3's dense image)
    SCAT_CAP=$((1 * GiB)) SCAT_RUNS=8192                  # case 2
    ZERO_CAP=$((1 * GiB))                                 # case 3's 90%-zero image
    OTHERS=200 REPEAT=1 PROBE_RUNS=8 OVL_REPEAT=1
    ESX_CAP=$((1 * GiB)) ESX_RUNS=1024                    # case 5: runs of 64 KiB
    LINK_BASE=$((512 * MiB)) LINK_DELTA=$((64 * MiB))     # case 8
    PLAN_SIZE=${PLAN_SIZE:-$((16 * MiB))}                            # case 7: each VM's disk
else
    DENSE=$((1 * GiB)) S1_RUNS=256
    SCAT_CAP=$((4 * GiB)) SCAT_RUNS=32768
    ZERO_CAP=$((4 * GiB))
    OTHERS=2000 REPEAT=3 PROBE_RUNS=16
    ESX_CAP=$((4 * GiB)) ESX_RUNS=4096
    LINK_BASE=$((2 * GiB)) LINK_DELTA=$((256 * MiB))
    PLAN_SIZE=${PLAN_SIZE:-$((64 * MiB))}
fi

BIN=$here/target/release/virt-vmdkimport
MKDELTA=$here/target/release/examples/mkdelta
DOMS=(vmdkimport-bench-dense vmdkimport-bench-zero90 vmdkimport-bench-scat1 vmdkimport-bench-scat2k
      vmdkimport-bench-probe1 vmdkimport-bench-probe2k vmdkimport-bench-esx vmdkimport-bench-esxlocal
      vmdkimport-bench-ovl vmdkimport-bench-link vmdkimport-bench-linklocal)
# Case 6 goes through the remote URI, as a plan driving a fleet of KVM hosts would.
RURI=qemu+tcp://127.0.0.1/system
: "${OVL_REPEAT:=3}"

v() { virsh -q -c "$URI" "$@"; }
log() { printf 'bench: %s\n' "$*" >&2; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ "$KEEP" = 1 ]; then log "--keep: leaving $W, pools $P1 $P2 and the bench domains"; exit $rc; fi
    log "cleaning up"
    standin_stop "$W/esx"
    link_cleanup
    plan_cleanup
    [ "$PLAN_ONLY" = 1 ] && { rm -rf "$W"; exit $rc; }
    for d in "${DOMS[@]}"; do
        v destroy "$d" >/dev/null 2>&1 || true
        v undefine "$d" >/dev/null 2>&1 || true
    done
    for p in "$P1" "$P2"; do
        v pool-destroy "$p" >/dev/null 2>&1 || true
        v pool-undefine "$p" >/dev/null 2>&1 || true
    done
    rm -rf "$W"
    exit $rc
}

# ---------------------------------------------------------------------------------------------
# Measuring. Each timed command runs under /usr/bin/time for its peak RSS; the wall time is
# taken with date +%s%N around it because /usr/bin/time's %e has only 10 ms resolution and
# case 1's baseline is ~0.15 s. Before each run: sync, so the previous run's dirty pages are
# not written back on this run's clock.

# measure NAME CMD...: run once; sets T (seconds), RSS (KiB), leaves stdout in $W/out/NAME.
measure() {
    local name=$1; shift
    sync
    local t0 t1
    t0=$(date +%s%N)
    if ! /usr/bin/time -f '%e %M' -o "$W/out/$name.time" "$@" >"$W/out/$name" 2>"$W/out/$name.err"; then
        log "FAILED: $*"; cat "$W/out/$name" "$W/out/$name.err" >&2; return 1
    fi
    t1=$(date +%s%N)
    T=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    RSS=$(awk '{ print $2 }' "$W/out/$name.time")
    echo "$T" >"$W/out/$name.wall"
}

# one_run NAME PREP CMD...: one more run of CMD after the shell command PREP (untimed; it
# resets the state, e.g. a fresh volume), unless NAME has had REPEAT runs or is marked done.
# Keeps NAME's minimum time, max RSS and the stdout of its fastest run ($W/out/NAME). A command
# whose first run takes over COSTLY seconds is not repeated (marked "*" in the table), to keep
# the whole benchmark near 10 minutes.
COSTLY=15
declare -A BT=() BR=() BN=() BM=()
one_run() {
    local name=$1 prep=$2; shift 2
    local n=${BN[$name]:-0}
    if [ "$n" -ge "$REPEAT" ] || [ -n "${BM[$name]:-}" ]; then return 0; fi
    n=$((n + 1)) BN[$name]=$n
    eval "$prep"
    measure "$name.$n" "$@"
    [ "$RSS" -gt "${BR[$name]:-0}" ] && BR[$name]=$RSS
    if [ -z "${BT[$name]:-}" ] || awk -v a="$T" -v b="${BT[$name]}" 'BEGIN { exit !(a < b) }'; then
        BT[$name]=$T; cp "$W/out/$name.$n" "$W/out/$name"
    fi
    if [ "$REPEAT" -gt 1 ] && [ "$n" = 1 ] && awk -v a="$T" -v c="$COSTLY" 'BEGIN { exit !(a > c) }'; then
        BM[$name]="*"
    fi
}
# result NAME: T (best seconds, with its mark) and RSS (KiB) of NAME.
result() { T=${BT[$1]}${BM[$1]:-} RSS=${BR[$1]}; }

# Stage 1 ends with a trial start (issue 8): the domain started paused and destroyed, along a
# fallback ladder of CPU modes (on this nested host host-passthrough and host-model fail, a few
# seconds each). Case 3 is about the base upload, so its goal is taken on stage 1 without that
# trial, whose time each --json run reports as its "trial start" phase; the whole command is
# in the table too.
# phase_s FILE PHASE: the seconds of the phases named PHASE in the --json document in FILE
# (a loud failure when it has none).
phase_s() {
    python3 -c 'import json, sys
ms = [p["ms"] for p in json.load(open(sys.argv[1]))["phases"] if p["name"] == sys.argv[2] and p["ms"] is not None]
sys.exit("bench: FAILED: no phase %r in %s" % (sys.argv[2], sys.argv[1])) if not ms else print("%.3f" % (sum(ms) / 1000))' "$1" "$2"
}
# less_trial NAME: T = the best over NAME's runs of the wall time less the trial start.
less_trial() {
    local n t best=""
    for n in $(seq 1 "${BN[$1]}"); do
        t=$(phase_s "$W/out/$1.$n" "trial start")
        t=$(awk -v w="$(cat "$W/out/$1.$n.wall")" -v m="$t" 'BEGIN { printf "%.3f", w - m }')
        best=$(minof "$t" "$best")
    done
    T=$best${BM[$1]:-}
}

# pair NAME_A PREP_A NAME_B PREP_B: the two sides of a ratio, commands in the arrays A and B,
# run alternately (A B A B A B), so that both meet the same load on a shared host.
pair() {
    local i
    for i in $(seq 1 "$REPEAT"); do
        one_run "$1" "$2" "${A[@]}"
        one_run "$3" "$4" "${B[@]}"
    done
}

# field KEY FILE: the value of KEY= in the stage 2 "disk vda: ..." line (a loud failure when
# there is none: take it into a variable, as a failure inside an argument would pass unseen).
field() {
    local x
    x=$(sed -n "s/^disk [a-z0-9]*: .*\\b$1=\\([^ ]*\\).*/\\1/p" "$2" | head -n1)
    need "$1= in $2's stats line" "$x" || return 1
    echo "$x"
}
# need WHAT VALUE: fails loudly when VALUE, parsed from the tool's output, is empty.
need() { [ -n "$2" ] || { log "FAILED: no $1 (has the tool's output changed?)"; return 1; }; }

warm() { cat "$@" >/dev/null; } # the same page-cache state for both sides of a ratio

# ---------------------------------------------------------------------------------------------
# Inputs: VMware-style folders (a monolithic flat base: descriptor + -flat extent; a
# snapshot: child descriptor + SEsparse extent written by examples/mkdelta.rs).

# vm_vmx DIR NAME: DIR/NAME.vmx, a small Linux VM whose one disk is NAME.vmdk.
vm_vmx() {
    printf '%s\n' 'config.version = "8"' 'virtualHW.version = "19"' "displayName = \"$2\"" \
        'guestOS = "ubuntu-64"' 'memsize = "128"' 'numvcpus = "1"' 'scsi0.present = "TRUE"' \
        'scsi0.virtualDev = "pvscsi"' 'scsi0:0.present = "TRUE"' "scsi0:0.fileName = \"$2.vmdk\"" >"$1/$2.vmx"
}

# base_descriptor DIR NAME CAPACITY CID: DIR/NAME.vmdk describing DIR/NAME-flat.vmdk (ESX "vmfs").
base_descriptor() {
    cat >"$1/$2.vmdk" <<EOF
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=$4
parentCID=ffffffff
createType="vmfs"

# Extent description
RW $(($3 / 512)) VMFS "$2-flat.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "14"
ddb.adapterType = "lsilogic"
EOF
}

make_inputs() {
    mkdir -p "$W/dense" "$W/zero90" "$W/scat" "$W/out" "$W/pool1" "$W/pool2k"
    if [ "$OVL_ONLY" = 1 ]; then make_scat; return; fi

    # Dense: random bytes throughout (nothing for a sparse stream to skip).
    head -c "$DENSE" /dev/urandom >"$W/dense/dense-flat.vmdk"
    base_descriptor "$W/dense" dense "$DENSE" 1d000001
    "$MKDELTA" --format sesparse --capacity "$DENSE" --base-descriptor "$W/dense/dense.vmdk" \
        --out "$W/dense/dense-000001.vmdk" --runs "$S1_RUNS" --run-size $MiB --seed 11 >&2
    # Case 1's baseline uploads the same number of bytes as the delta holds.
    head -c $((S1_RUNS * MiB)) "$W/dense/dense-flat.vmdk" >"$W/dense/delta-bytes.bin"

    # 90% zeros: a sparse file with 10% of its 1 MiB blocks, picked at random, full of random data.
    truncate -s "$ZERO_CAP" "$W/zero90/zero90-flat.vmdk"
    python3 - "$W/zero90/zero90-flat.vmdk" "$ZERO_CAP" <<'EOF'
import os, random, sys
path, cap = sys.argv[1], int(sys.argv[2])
blocks = cap // (1 << 20)
rnd = random.Random(90)
with open(path, "r+b") as f:
    for b in sorted(rnd.sample(range(blocks), blocks // 10)):
        f.seek(b << 20)
        f.write(os.urandom(1 << 20))
EOF
    base_descriptor "$W/zero90" zero90 "$ZERO_CAP" 2d000002

    make_scat
    # The raw-file reference (a): the base copied sparse, the same delta applied with --target.
    # The call-cost probe: a few 4 KiB runs too far apart to share a call, on a disk of the
    # same size; its stage 2 time over its calls is what one call per run costs on a pool.
    mkdir -p "$W/probe"
    truncate -s "$SCAT_CAP" "$W/probe/probe-flat.vmdk"
    base_descriptor "$W/probe" probe "$SCAT_CAP" 3d000004
    "$MKDELTA" --format sesparse --capacity "$SCAT_CAP" --base-descriptor "$W/probe/probe.vmdk" \
        --out "$W/probe/probe-000001.vmdk" --runs "$PROBE_RUNS" --run-size 4096 --seed 23 >&2
    cp --sparse=always "$W/scat/scat-flat.vmdk" "$W/scat/raw.img"
    # The whole-disk reference (c): the disk as it is after the delta, 4 GiB sent by vol-upload.
    cp --sparse=always "$W/scat/scat-flat.vmdk" "$W/scat/full.img"
    "$BIN" --target "$W/scat/full.img" "$W/scat/scat-000001.vmdk" >&2
}

# Scattered: an empty (sparse) base and a delta of SCAT_RUNS random 4 KiB runs; for case 6
# also S1_RUNS runs of 1 MiB over the same base, and files holding just each delta's bytes.
make_scat() {
    truncate -s "$SCAT_CAP" "$W/scat/scat-flat.vmdk"
    base_descriptor "$W/scat" scat "$SCAT_CAP" 3d000003
    "$MKDELTA" --format sesparse --capacity "$SCAT_CAP" --base-descriptor "$W/scat/scat.vmdk" \
        --out "$W/scat/scat-000001.vmdk" --runs "$SCAT_RUNS" --run-size 4096 --seed 22 >&2
    "$MKDELTA" --format sesparse --capacity "$SCAT_CAP" --base-descriptor "$W/scat/scat.vmdk" \
        --out "$W/scat/big-000001.vmdk" --runs "$S1_RUNS" --run-size $MiB --seed 33 >&2
    head -c $((SCAT_RUNS * 4096)) /dev/urandom >"$W/scat/scat-bytes.bin"
    head -c $((S1_RUNS * MiB)) /dev/urandom >"$W/scat/big-bytes.bin"
}

make_pools() {
    for p in "$P1:$W/pool1" "$P2:$W/pool2k"; do
        v pool-define-as "${p%%:*}" dir --target "${p#*:}" >/dev/null
        v pool-start "${p%%:*}" >/dev/null
    done
    # OTHERS unrelated small volumes: sparse files made directly and picked up by one refresh
    # (vol-create-as one by one takes minutes, and each create refreshes nothing anyway).
    (cd "$W/pool2k" && seq -f 'other-%04g.img' 1 "$OTHERS" | xargs truncate -s 1M)
    v pool-refresh "$P2" >/dev/null
    log "pool $P2 holds $(v vol-list "$P2" | wc -l) volumes"
}

# fresh_vol POOL NAME SIZE: an empty volume, as a baseline's upload target.
fresh_vol() {
    v vol-delete "$2" --pool "$1" >/dev/null 2>&1 || true
    v vol-create-as "$1" "$2" "$3" --format raw >/dev/null
}

# Repeated stage 2 runs. Since the import lifecycle (issue 8), stage 2 refuses a delta already
# applied and handed over (here: finished with --no-start), as it would write the delta's old
# grains over what the guest wrote since. So each timed stage 2 starts from the state right
# after its (untimed) stage 1:
# - case 1 (a dense base, every block of the volume allocated): the import state saved after
#   stage 1, put back in the shut-off domain's persistent definition. The volume then already
#   holds that delta's bytes, which the rerun reads and writes again: the same calls, reads
#   and writes as the first run, down to the filesystem, so the timing is fair.
# - case 2 (an empty base, uploaded as holes): a fresh stage 1 (s2_stage1). There a rerun would
#   write into blocks the first run allocated, which is less work: measured here, --io stream
#   1.7 s on a rerun against 9.1 s on the first run, --io direct 0.31 s against 0.49 s.
NS_IMPORT=https://virt-vmdkimport.example/ns/import/1
# save_state DOMAIN: DOMAIN's import state as it is now, kept in $W/state/DOMAIN.xml.
save_state() {
    mkdir -p "$W/state"
    v metadata "$1" "$NS_IMPORT" >"$W/state/$1.xml"
    [ -s "$W/state/$1.xml" ] || { log "FAILED: domain $1 has no import state to save"; return 1; }
}
# restore_state DOMAIN: the import state save_state kept, put back (and checked).
restore_state() {
    local now
    v metadata "$1" --uri "$NS_IMPORT" --key vmdkimport --set "$(cat "$W/state/$1.xml")" --config >/dev/null
    now=$(v metadata "$1" "$NS_IMPORT")
    [ "$now" = "$(cat "$W/state/$1.xml")" ] || { log "FAILED: the import state of $1 was not put back"; return 1; }
}

# s2_stage1 DOMAIN POOL: case 2's domain made afresh by an untimed stage 1 of the empty base
# (--cpu default: one trial start instead of the whole ladder; stage 2 is the same).
s2_stage1() {
    fresh_dom "$1" "$2"
    "$BIN" -c "$URI" --domain "$1" --pool "$2" --flat "$W/scat/scat.vmdk" --no-start --cpu default \
        >/dev/null 2>"$W/out/s2-prep.err" || { log "FAILED: stage 1 of $1"; cat "$W/out/s2-prep.err" >&2; return 1; }
}
# fresh_raw: (a)'s raw file as the base, sparse, with nothing applied yet.
fresh_raw() { cp --sparse=always "$W/scat/scat-flat.vmdk" "$W/scat/raw.img"; }

# fresh_dom DOMAIN POOL: no domain and no volume, so stage 1 creates both as on a new host.
fresh_dom() {
    v undefine "$1" >/dev/null 2>&1 || true
    v vol-delete "$1-disk0" --pool "$2" >/dev/null 2>&1 || true
}

# Timed commands run under /usr/bin/time, so they are programs with arguments, not shell functions.
VIRSH=(virsh -q -c "$URI")

. "$here/scripts/lib/esx-standin.sh"
. "$here/scripts/lib/bench-plan.sh"
. "$here/scripts/lib/esx-link.sh"
. "$here/scripts/lib/bench-link.sh"

# Case 5: the cutover from a (stand-in) ESXi host over ssh, a VM powered off already, its
# final delta ESX_RUNS x 64 KiB scattered; and stage 1's base streaming. Each side once.
esx_case() {
    local root=$W/esx dir url
    dir=$root/vmfs/volumes/datastore1/bench
    standin_start "$root" "$here/target/release/examples"
    mkdir -p "$dir"
    log "case 5: a $((ESX_CAP / MiB)) MiB base on the stand-in ESXi host (sshd on port $STANDIN_PORT)"
    head -c "$ESX_CAP" /dev/urandom >"$dir/bench-flat.vmdk"
    base_descriptor "$dir" bench "$ESX_CAP" 5d000005
    vm_vmx "$dir" bench
    standin_register "$root" 4 bench bench/bench.vmx off sesparse
    url=ssh://root@127.0.0.1:$STANDIN_PORT$dir/bench.vmx
    export VIRT_VMDKIMPORT_SSH_CONFIG=$STANDIN_SSH_CONFIG
    local SSH=(ssh -F "$STANDIN_SSH_CONFIG" -p "$STANDIN_PORT" root@127.0.0.1)
    warm "$dir/bench-flat.vmdk"

    log "case 5: stage 1 over ssh, and ssh cat of the base"
    measure s5-cat-base sh -c '"$@" >/dev/null' - "${SSH[@]}" cat "$dir/bench-flat.vmdk"
    local cat_base=$T
    measure s5-stage1 "$BIN" -c "$URI" --domain vmdkimport-bench-esx --pool "$P1" --vmx "$url" --cpu default --json
    local s1_rss=$RSS s1_stream
    note_rss "$RSS"
    s1_stream=$(phase_s "$W/out/s5-stage1" "base upload")
    # The same work done by hand with the standard tools, for context: ssh cat piped into
    # virsh vol-upload.
    fresh_vol "$P1" bench-up-esx "$ESX_CAP"
    measure s5-cat-upload sh -c 'u=$1 p=$2; shift 2; "$@" | virsh -q -c "$u" vol-upload --vol bench-up-esx --pool "$p" /dev/stdin' \
        - "$URI" "$P1" "${SSH[@]}" cat "$dir/bench-flat.vmdk"
    local cat_upload=$T
    v vol-delete bench-up-esx --pool "$P1" >/dev/null

    log "case 5: the final delta, $ESX_RUNS x 64 KiB"
    "$MKDELTA" --format sesparse --capacity "$ESX_CAP" --base-descriptor "$dir/bench.vmdk" \
        --out "$dir/bench-000001.vmdk" --runs "$ESX_RUNS" --run-size 65536 --seed 55 >&2
    warm "$dir/bench-000001-sesparse.vmdk"
    measure s5-cat-delta sh -c '"$@" >/dev/null' - "${SSH[@]}" cat "$dir/bench-000001-sesparse.vmdk"
    local cat_delta=$T
    log "case 5: the same stage 2 from local files (the .vmx read locally), and the cutover"
    "$BIN" -c "$URI" --domain vmdkimport-bench-esxlocal --pool "$P1" --vmx "$dir/bench.vmx" --cpu default >&2
    measure s5-local "$BIN" -c "$URI" --domain vmdkimport-bench-esxlocal --vmx "$dir/bench.vmx" --io direct
    local local_s2=$T
    measure s5-cutover "$BIN" -c "$URI" --domain vmdkimport-bench-esx --vmx "$url" --cutover
    local c_rss=$RSS outage read
    note_rss "$RSS"
    outage=$(sed -n 's/^  total *\([0-9.]*\) s.*/\1/p' "$W/out/s5-cutover")
    local finals
    finals=$(sed -n 's/^  final deltas *\([0-9.]*\) s.*/\1/p' "$W/out/s5-cutover")
    read=$(sed -n 's/.* \([0-9]*\) bytes read over ssh.*/\1/p' "$W/out/s5-cutover")
    need "total in the cutover's outage table" "$outage"
    need "final deltas in the cutover's outage table" "$finals"
    need "bytes read over ssh in the cutover's outage table" "$read"
    local larger
    larger=$(awk -v a="$cat_delta" -v b="$local_s2" 'BEGIN { print (a > b ? a : b) }')
    row "5 ESXi cutover, off->running" "$outage" "-" "$c_rss" "larger of the two below" "$larger" le 1.2
    row + "$outage" "" "" "ssh cat delta ($((read / MiB)) MiB read)" "$cat_delta" - -
    row + "$outage" "" "" "stage 2 from local files" "$local_s2" - -
    row "  of it: final delta read+applied" "$finals" "-" "" "ssh cat delta" "$cat_delta" le 1.2
    row "5 ESXi stage 1, base streaming" "$s1_stream" "-" "$s1_rss" "ssh cat base $((ESX_CAP / MiB)) MiB" "$cat_base" le 1.1
    row + "$s1_stream" "" "" "ssh cat base, piped to vol-upload" "$cat_upload" - -
    v destroy vmdkimport-bench-esx >/dev/null 2>&1 || true
    v destroy vmdkimport-bench-esxlocal >/dev/null 2>&1 || true
    fresh_dom vmdkimport-bench-esx "$P1"
    fresh_dom vmdkimport-bench-esxlocal "$P1"
}

# Case 6: --io overlay through the remote URI.
# ovl_stage1 POOL: the domain made afresh by stage 1 (a started stage 2 refuses to run again).
ovl_stage1() {
    v destroy vmdkimport-bench-ovl >/dev/null 2>&1 || true
    fresh_dom vmdkimport-bench-ovl "$1"
    "$BIN" -c "$RURI" --domain vmdkimport-bench-ovl --pool "$1" --flat "$W/scat/scat.vmdk" \
        --memory 128 --vcpus 1 >/dev/null 2>"$W/out/ovl-stage1.err" || { cat "$W/out/ovl-stage1.err" >&2; return 1; }
}
# ovl_field KEY FILE: KEY= anywhere in the tool's output (a loud failure when it is not).
ovl_field() {
    local x
    x=$(sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" "$2" | head -n1)
    need "$1= in $2" "$x" || return 1
    echo "$x"
}
minof() { awk -v a="$1" -v b="$2" 'BEGIN { print (b == "" || a + 0 < b + 0) ? a : b }'; }

# ovl_case POOL TAG DELTA BYTES LABEL: OVL_REPEAT alternating runs of --io overlay (its outage:
# command start to domain running, as the tool reports it) and of the baseline (vol-upload of
# a file of just the delta's bytes into a fresh volume, then virsh start of the same domain,
# shut off); then one --io stream stage 2 of the same delta (a fresh stage 1 before each).
ovl_case() {
    local pool=$1 tag=$2 delta=$3 bytes=$4 label=$5 i f ours="" base="" commit="" rss=0
    warm "${delta%.vmdk}-sesparse.vmdk" "$bytes"
    for i in $(seq 1 "$OVL_REPEAT"); do
        ovl_stage1 "$pool"
        measure "ovl-$tag.$i" "$BIN" -c "$RURI" --domain vmdkimport-bench-ovl "$delta" --io overlay
        f=$(ovl_field outage_s "$W/out/ovl-$tag.$i"); ours=$(minof "$f" "$ours")
        f=$(ovl_field commit_s "$W/out/ovl-$tag.$i"); commit=$(minof "$f" "$commit")
        [ "$RSS" -gt "$rss" ] && rss=$RSS
        v destroy vmdkimport-bench-ovl >/dev/null
        fresh_vol "$pool" bench-ovl-up "$(stat -c %s "$bytes")"
        measure "ovl-base-$tag.$i" bash -c "virsh -q -c $RURI vol-upload --vol bench-ovl-up --pool $pool $bytes && virsh -q -c $RURI start vmdkimport-bench-ovl"
        base=$(minof "$T" "$base")
    done
    v vol-delete bench-ovl-up --pool "$pool" >/dev/null
    ovl_stage1 "$pool"
    measure "ovl-stream-$tag" "$BIN" -c "$RURI" --domain vmdkimport-bench-ovl "$delta" --io stream
    local st=$T calls
    calls=$(field calls "$W/out/ovl-stream-$tag")
    v destroy vmdkimport-bench-ovl >/dev/null 2>&1 || true
    note_rss "$rss"
    row "6 $label, overlay outage" "$ours" 1 "$rss" "vol-upload $(($(stat -c %s "$bytes") / MiB)) MiB + virsh start" "$base" le 1.5
    row "  same, --io stream (stage 2+start)" "$st*" "$calls" "" "as above" "$base" - -
    row "  same, overlay's commit (guest runs)" "$commit" - "" "" "" - -
}

overlay_cases() {
    local pool tag
for pool in "$P1" "$P2"; do
    if [ "$pool" = "$P1" ]; then tag=1vol; else tag=${OTHERS}vol; fi
    log "case 6, pool $pool: --io overlay, ${SCAT_RUNS}x4KiB"
    ovl_case "$pool" "scat-$tag" "$W/scat/scat-000001.vmdk" "$W/scat/scat-bytes.bin" "$tag ${SCAT_RUNS}x4KiB"
    log "case 6, pool $pool: --io overlay, ${S1_RUNS}x1MiB"
    ovl_case "$pool" "big-$tag" "$W/scat/big-000001.vmdk" "$W/scat/big-bytes.bin" "$tag ${S1_RUNS}x1MiB"
done
fresh_dom vmdkimport-bench-ovl "$P1"; fresh_dom vmdkimport-bench-ovl "$P2"
}

# ---------------------------------------------------------------------------------------------
trap cleanup EXIT INT TERM
[ "$(id -u)" = 0 ] || { echo "bench: run as root (it uses qemu:///system)" >&2; exit 1; }
"$here/scripts/setup-host.sh"
(cd "$here" && cargo build --release --bins --examples) >&2
# Leftovers of an interrupted earlier run.
[ "$PLAN_ONLY" = 1 ] || for d in "${DOMS[@]}"; do v destroy "$d" >/dev/null 2>&1 || true; v undefine "$d" >/dev/null 2>&1 || true; done
[ "$PLAN_ONLY" = 1 ] || for p in "$P1" "$P2"; do v pool-destroy "$p" >/dev/null 2>&1 || true; v pool-undefine "$p" >/dev/null 2>&1 || true; done
plan_cleanup
rm -rf "$W"

started=$(date +%s)
load0=$(cut -d' ' -f1 /proc/loadavg)
log "making inputs under $W"
if [ "$PLAN_ONLY" = 1 ]; then
    mkdir -p "$W/out"
elif [ "$ESX_ONLY" = 1 ]; then
    mkdir -p "$W/out" "$W/pool1"
    v pool-define-as "$P1" dir --target "$W/pool1" >/dev/null
    v pool-start "$P1" >/dev/null
else
    make_inputs
    make_pools
fi

ROWS=()   # table rows: case|ours_s|calls|rss_kib|baseline|base_s|ratio|goal|result
MAXRSS=0
note_rss() { [ "$1" -gt "$MAXRSS" ] && MAXRSS=$1; return 0; }

# row CASE OURS CALLS RSS BASELINE BASE GOALOP GOALVAL: ratio OURS/BASE, checked against the goal
# (GOALOP le: ratio <= GOALVAL; ge-inv: BASE/OURS >= GOALVAL, i.e. "at least N x faster"; -: none).
# A CASE of "+" continues the row above: another baseline for the same run.
row() {
    local ratio goal result
    ratio=$(awk -v a="${2%\*}" -v b="${6%\*}" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }')
    case $7 in
    le) goal="<= $8x"; result=$(awk -v a="${2%\*}" -v b="${6%\*}" -v g="$8" 'BEGIN { print (b > 0 && a / b <= g ? "PASS" : "MISS") }') ;;
    ge-inv) goal=">= ${8}x faster"
        result=$(awk -v a="${2%\*}" -v b="${6%\*}" -v g="$8" 'BEGIN { print (a > 0 && b / a >= g ? "PASS" : "MISS") }')
        ratio="$ratio ($(awk -v a="${2%\*}" -v b="${6%\*}" 'BEGIN { printf "%.1f", (a > 0 ? b / a : 0) }')x faster)" ;;
    *) goal="-"; result="" ;;
    esac
    ROWS+=("$1|$2|$3|$4|$5|$6|$ratio|$goal|$result")
}

# Cases 1-3 (all but --esx-only); indented as before to keep the history readable.
if [ "$ESX_ONLY" = 0 ] && [ "$OVL_ONLY" = 0 ] && [ "$PLAN_ONLY" = 0 ]; then
# --- case 3 first: its dense stage 1 also makes the domain case 1 needs -------------------------
log "case 3: stage 1 of a dense $((DENSE / MiB)) MiB image"
warm "$W/dense/dense-flat.vmdk"
A=("$BIN" -c "$URI" --domain vmdkimport-bench-dense --pool "$P1" --flat "$W/dense/dense.vmdk" --no-start --json)
B=("${VIRSH[@]}" vol-upload --vol bench-up-dense --pool "$P1" "$W/dense/dense-flat.vmdk")
pair s3-dense "fresh_dom vmdkimport-bench-dense $P1" s3-dense-virsh "fresh_vol $P1 bench-up-dense $DENSE"
# The domain as stage 1 left it: case 1's stage 2 runs start from this state.
save_state vmdkimport-bench-dense
result s3-dense; s3d_w=$T s3d_rss=$RSS; note_rss "$RSS"
less_trial s3-dense; s3d_t=$T
result s3-dense-virsh; s3d_b=$T
v vol-delete bench-up-dense --pool "$P1" >/dev/null

log "case 3: stage 1 of a $((ZERO_CAP / MiB)) MiB image that is 90% zeros"
warm "$W/zero90/zero90-flat.vmdk"
A=("$BIN" -c "$URI" --domain vmdkimport-bench-zero90 --pool "$P1" --flat "$W/zero90/zero90.vmdk" --no-start --json)
B=("${VIRSH[@]}" vol-upload --vol bench-up-zero --pool "$P1" "$W/zero90/zero90-flat.vmdk")
pair s3-zero "fresh_dom vmdkimport-bench-zero90 $P1" s3-zero-virsh "fresh_vol $P1 bench-up-zero $ZERO_CAP"
result s3-zero; s3z_w=$T s3z_rss=$RSS; note_rss "$RSS"
less_trial s3-zero; s3z_t=$T
result s3-zero-virsh; s3z_b=$T
# For reference, no goal: what libvirt's own sparse upload (holes found with SEEK_DATA/SEEK_HOLE)
# does with the same file.
for _ in $(seq 1 "$REPEAT"); do
    one_run s3-zero-sparse "fresh_vol $P1 bench-up-zero $ZERO_CAP" \
        "${VIRSH[@]}" vol-upload --sparse --vol bench-up-zero --pool "$P1" "$W/zero90/zero90-flat.vmdk"
done
result s3-zero-sparse; s3z_s=$T
v vol-delete bench-up-zero --pool "$P1" >/dev/null
# Done with it: free its space and page cache before the stage 2 cases.
fresh_dom vmdkimport-bench-zero90 "$P1"

# --- case 1: on the dense domain of case 3 ------------------------------------------------------
log "case 1: stage 2 of $S1_RUNS x 1 MiB runs, --io stream"
warm "$W/dense/dense-000001-sesparse.vmdk" "$W/dense/delta-bytes.bin"
A=("$BIN" -c "$URI" --domain vmdkimport-bench-dense "$W/dense/dense-000001.vmdk" --io stream --no-start)
B=("${VIRSH[@]}" vol-upload --vol bench-up-256 --pool "$P1" "$W/dense/delta-bytes.bin")
pair s1 "restore_state vmdkimport-bench-dense" s1-virsh "fresh_vol $P1 bench-up-256 $((S1_RUNS * MiB))"
result s1; s1_t=$T s1_rss=$RSS s1_calls=$(field calls "$W/out/s1"); note_rss "$RSS"
result s1-virsh; s1_b=$T
v vol-delete bench-up-256 --pool "$P1" >/dev/null
fresh_dom vmdkimport-bench-dense "$P1"
row "1 stage 2, ${S1_RUNS}x1MiB runs, stream" "$s1_t" "$s1_calls" "$s1_rss" "virsh vol-upload $((S1_RUNS)) MiB" "$s1_b" le 1.1

# --- case 2 -----------------------------------------------------------------------------------
for pool in "$P1" "$P2"; do
    if [ "$pool" = "$P1" ]; then dom=vmdkimport-bench-scat1 tag=1vol; else dom=vmdkimport-bench-scat2k tag=${OTHERS}vol; fi
    log "case 2, pool $pool: stage 1 of the empty base"
    measure "s2-stage1-$tag" "$BIN" -c "$URI" --domain "$dom" --pool "$pool" --flat "$W/scat/scat.vmdk" --no-start
    note_rss "$RSS"
    warm "$W/scat/scat-000001-sesparse.vmdk" "$W/scat/raw.img" "$W/scat/full.img"

    log "case 2, pool $pool: stage 2 --io stream, and (c) virsh vol-upload of the whole disk"
    A=("$BIN" -c "$URI" --domain "$dom" "$W/scat/scat-000001.vmdk" --io stream --no-start)
    B=("${VIRSH[@]}" vol-upload --vol bench-full --pool "$pool" "$W/scat/full.img")
    pair "s2-stream-$tag" "s2_stage1 $dom $pool" "s2-full-$tag" "fresh_vol $pool bench-full $SCAT_CAP"
    v vol-delete bench-full --pool "$pool" >/dev/null
    result "s2-full-$tag"; c=$T

    log "case 2, pool $pool: stage 2 --io direct, and (a) --target apply to a raw file"
    A=("$BIN" -c "$URI" --domain "$dom" "$W/scat/scat-000001.vmdk" --io direct --no-start)
    B=("$BIN" --target "$W/scat/raw.img" "$W/scat/scat-000001.vmdk")
    pair "s2-direct-$tag" "s2_stage1 $dom $pool" "s2-raw-$tag" fresh_raw
    result "s2-raw-$tag"; a=$T a_rss=$RSS; note_rss "$RSS"

    log "case 2, pool $pool: the call-cost probe ($PROBE_RUNS runs far apart, one call each)"
    probe=vmdkimport-bench-probe$([ "$pool" = "$P1" ] && echo 1 || echo 2k)
    "$BIN" -c "$URI" --domain "$probe" --pool "$pool" --flat "$W/probe/probe.vmdk" --no-start >/dev/null
    measure "s2-probe-$tag" "$BIN" -c "$URI" --domain "$probe" "$W/probe/probe-000001.vmdk" --io stream --no-start
    pout=$W/out/s2-probe-$tag
    # Two of its runs may land close enough to share a call; a few hundred KiB of gap change
    # nothing, more would overstate (b).
    p_gap=$(field gap_bytes "$pout")
    p_elapsed=$(field elapsed_s "$pout")
    p_calls=$(field calls "$pout")
    [ "$p_gap" -lt $((4 * MiB)) ] || log "warning: the probe merged runs (gap_bytes $p_gap): (b) is overstated"
    per_call_ms=$(awk -v e="$p_elapsed" -v c="$p_calls" 'BEGIN { printf "%.3f", e * 1000 / c }')
    fresh_dom "$probe" "$pool"

    log "case 2, pool $pool: stage 2 --io stream with the base moved away (gaps downloaded from the volume)"
    s2_stage1 "$dom" "$pool"
    mv "$W/scat/scat-flat.vmdk" "$W/scat/scat-flat.vmdk.away"
    measure "s2-streamdl-$tag" "$BIN" -c "$URI" --domain "$dom" "$W/scat/scat-000001.vmdk" --io stream --no-start
    mv "$W/scat/scat-flat.vmdk.away" "$W/scat/scat-flat.vmdk"
    tdl=$T rssdl=$RSS; note_rss "$RSS"

    for variant in stream streamdl; do
        if [ "$variant" = stream ]; then
            result "s2-stream-$tag"; t=$T rss=$RSS; note_rss "$RSS"
            label="2 $tag, --io stream (gaps: base)"
        else
            t=$tdl rss=$rssdl label="2 $tag, --io stream (gaps: volume)"
        fi
        out=$W/out/s2-$variant-$tag
        calls=$(field calls "$out")
        runs=$(field runs "$out")
        # (b) one upload call per run, at the time one call took in the probe on this pool.
        b=$(awk -v r="$runs" -v c="$per_call_ms" 'BEGIN { printf "%.3f", r * c / 1000 }')
        row "$label" "$t" "$calls" "$rss" "(a) --target raw apply" "$a" - -
        row + "$t" "" "" "(b) $runs calls x ${per_call_ms} ms" "$b" le "$([ "$pool" = "$P2" ] && echo 0.02 || echo 1)"
        row + "$t" "" "" "(c) virsh vol-upload $((SCAT_CAP / MiB)) MiB" "$c" "$([ "$pool" = "$P2" ] && echo le || echo -)" 5
    done

    result "s2-direct-$tag"; t=$T rss=$RSS; note_rss "$RSS"
    calls=$(field calls "$W/out/s2-direct-$tag")
    row "2 $tag, --io direct" "$t" "$calls" "$rss" "(a) --target raw apply" "$a" le 1.5
    row + "$t" "" "" "(b) as above" "$b" - -
    row + "$t" "" "" "(c) virsh vol-upload $((SCAT_CAP / MiB)) MiB" "$c" - -
    row "  (a) itself: --target raw apply" "$a" - "$a_rss" "" "" - -
    fresh_dom "$dom" "$pool"
done

row "3 stage 1, dense $((DENSE / MiB)) MiB" "$s3d_t" "-" "$s3d_rss" "virsh vol-upload, same file" "$s3d_b" le 1.05
row "  same, with its trial start" "$s3d_w" "-" "" "virsh vol-upload, same file" "$s3d_b" - -
row "3 stage 1, 90%-zero $((ZERO_CAP / MiB)) MiB" "$s3z_t" "-" "$s3z_rss" "virsh vol-upload, same file" "$s3z_b" ge-inv 5
row + "$s3z_t" "" "" "virsh vol-upload --sparse, same file" "$s3z_s" - -
row "  same, with its trial start" "$s3z_w" "-" "" "virsh vol-upload, same file" "$s3z_b" - -

fi

# --- case 5 -------------------------------------------------------------------------------------
[ "$OVL_ONLY" = 1 ] || [ "$PLAN_ONLY" = 1 ] || [ "$LINK_ONLY" = 1 ] || esx_case

# --- case 6 -------------------------------------------------------------------------------------
[ "$ESX_ONLY" = 1 ] || [ "$PLAN_ONLY" = 1 ] || overlay_cases

# --- case 7 -------------------------------------------------------------------------------------
PLAN_PEAK=
[ "$ESX_ONLY" = 1 ] || [ "$OVL_ONLY" = 1 ] || plan_case

# --- case 8 -------------------------------------------------------------------------------------
[ "$OVL_ONLY" = 1 ] || [ "$PLAN_ONLY" = 1 ] || link_case

# --- the table ----------------------------------------------------------------------------------
elapsed=$(($(date +%s) - started))
{
    echo
    echo "virt-vmdkimport benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME"), $(v version | sed -n 's/.*Using library: //p' | head -n1), $(v version | sed -n 's/.*Running hypervisor: //p' | head -n1), $URI (case 6: $RURI), dir pools"
    echo "load average (1 min) at start $load0, at end $(cut -d' ' -f1 /proc/loadavg): other work shares this host"
    if [ "$REPEAT" -gt 1 ]; then echo "times: wall seconds, best of $REPEAT runs (* = one run: it took over ${COSTLY}s); RSS: peak of those runs"; else echo "times: wall seconds, 1 run each (--quick)"; fi
    echo
    printf '%-36s %8s %6s %8s  %-34s %8s  %-22s %-15s %s\n' case ours_s calls rss_MiB baseline base_s ratio goal result
    for r in "${ROWS[@]}"; do
        IFS='|' read -r c o k m bn bs ra g res <<<"$r"
        [ "$c" = + ] && c="" o="" k="" m=""
        [ -n "$m" ] && [ "$m" != - ] && m=$(awk -v k="$m" 'BEGIN { printf "%.1f", k / 1024 }')
        [ -z "$bn" ] && ra="" && g="" && res=""
        printf '%-36s %8s %6s %8s  %-34s %8s  %-22s %-15s %s\n' "$c" "$o" "$k" "$m" "$bn" "$bs" "$ra" "$g" "$res"
    done
    maxm=$(awk -v k="$MAXRSS" 'BEGIN { printf "%.1f", k / 1024 }')
    [ "$MAXRSS" = 0 ] || printf '%-36s %8s %6s %8s  %-34s %8s  %-22s %-15s %s\n' "4 peak RSS, all our runs" "" "" "$maxm" "" "" "" "< 64 MiB" \
        "$(awk -v k="$MAXRSS" 'BEGIN { print (k < 64 * 1024 ? "PASS" : "MISS") }')"
    if [ -n "$PLAN_PEAK" ]; then
        printf '%-36s %8s %6s %8s  %-34s %8s  %-22s %-15s %s\n' "7 peak memory, whole plan run" "" "" \
            "$(awk -v k="$PLAN_PEAK" 'BEGIN { printf "%.1f", k / 1024 }')" "plan process + children, summed" "" "" "< 128 MiB" \
            "$(awk -v k="$PLAN_PEAK" 'BEGIN { print (k < 128 * 1024 ? "PASS" : "MISS") }')"
    fi
    echo
    echo "bench took ${elapsed}s"
}
