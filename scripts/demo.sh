#!/usr/bin/env bash
# The README's quick start: a demo migration end to end on this host's libvirt (qemu:///system).
#
#   scripts/demo.sh            run the demo (as root; again to start over)
#   scripts/demo.sh --cleanup  remove the demo's domain, volume, pool and files
#
# It sets up libvirtd when absent (scripts/setup-host.sh), builds the tool, writes a small
# VMware-style VM folder under /var/tmp/vmdkimport-demo/vmware (a bootable base disk
# demo.vmdk + demo-flat.vmdk and a snapshot demo-000001.vmdk + demo-000001-sesparse.vmdk),
# runs stage 1 (volume, domain, base upload) and stage 2 (the snapshot's delta applied, domain
# started), then shows the guest's serial console. The guest's boot sector prints the text
# stored at disk sector 8; the base says one thing there and the snapshot another, so the
# console line proves that the domain booted from the imported volume with the delta in it.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
URI=qemu:///system
NAME=vmdkimport-demo          # the domain's and the pool's name
D=/var/tmp/vmdkimport-demo    # everything the demo writes on the host
LOG=$D/console.log            # the guest's COM1, logged by virtlogd
BIN=$here/target/release/virt-vmdkimport
DELTA_TEXT="the snapshot delta, applied by virt-vmdkimport stage 2"

v() { virsh -c "$URI" "$@"; }
run() { printf '$ %s\n' "$*"; "$@"; } # show the command as a reader would type it
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Remove what an earlier demo made. Only objects named $NAME (and its volume) are touched.
cleanup() {
    if v dominfo "$NAME" >/dev/null 2>&1; then
        v destroy "$NAME" >/dev/null 2>&1 || true # fails when it is not running: fine
        v undefine "$NAME" >/dev/null
        echo "removed domain $NAME"
    fi
    if v pool-info "$NAME" >/dev/null 2>&1; then
        v pool-start "$NAME" >/dev/null 2>&1 || true # vol-delete needs an active pool
        v vol-delete "$NAME-disk0" --pool "$NAME" >/dev/null 2>&1 && echo "removed volume $NAME-disk0"
        v pool-destroy "$NAME" >/dev/null 2>&1 || true
        v pool-undefine "$NAME" >/dev/null
        echo "removed pool $NAME"
    fi
    rm -rf "$D"
}

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it sets up libvirtd and uses $URI)" >&2; exit 1; }
case ${1:-} in
--cleanup)
    cleanup
    exit 0
    ;;
"") ;;
*) sed -n '2,6p' "$0" >&2; exit 2 ;;
esac

on_error() {
    echo >&2
    echo "demo: failed (see above; libvirtd's log is /var/log/libvirt/libvirtd.log)." >&2
    echo "demo: what it made so far stays for a look; remove it with: $0 --cleanup" >&2
}
trap on_error ERR

say "setting up the host (packages, virtlogd, libvirtd)"
"$here/scripts/setup-host.sh"

say "building virt-vmdkimport"
(cd "$here" && cargo build --release --bin virt-vmdkimport --example mkdemo)

say "removing an earlier demo, if any"
# Started over from scratch so a second run shows the same thing as the first.
v dominfo "$NAME" >/dev/null 2>&1 || v pool-info "$NAME" >/dev/null 2>&1 || [ -e "$D" ] || echo "(none)"
cleanup

say "writing a VMware-style VM folder: $D/vmware"
mkdir -p "$D/vmware" "$D/pool"
nasm -f bin -o "$D/demo-boot.bin" "$here/tests/fixtures/demo-boot.asm"
"$here/target/release/examples/mkdemo" --dir "$D/vmware" --boot "$D/demo-boot.bin" \
    --capacity $((64 * 1024 * 1024)) --base-text "the base disk (VMware, before the snapshot)" \
    --delta-text "$DELTA_TEXT"
ls -l "$D/vmware"
echo "sector 8 of the base:      $(dd if="$D/vmware/demo-flat.vmdk" bs=512 skip=8 count=1 status=none | tr -d '\0')"
echo "sector 8 in the snapshot:  $DELTA_TEXT"

say "a storage pool for the volume: $NAME (dir pool in $D/pool)"
v pool-define-as "$NAME" dir --target "$D/pool" >/dev/null
v pool-start "$NAME" >/dev/null
v pool-list --all | sed -n "1,2p;/ $NAME /p"

say "stage 1 (while the VM would still run on VMware): volume, domain, base upload"
# No --cpu: stage 1 trial-starts the domain paused and, on hosts that refuse the default
# host-passthrough CPU (nested KVM: "failed to set MSR 0x10a"), falls back along the ladder
# and says which CPU it kept and why.
run "$BIN" -c "$URI" --domain "$NAME" --pool "$NAME" --flat "$D/vmware/demo.vmdk" --memory 128

# Log the guest's COM1 to a file as well, so this script can show it without an interactive
# console: the domain's pty serial gets a <log> (virtlogd writes it; `virsh console` still
# works). Stage 2 keeps an existing domain's XML, and the import state in its <metadata>
# stays in the dumped XML.
v dumpxml --inactive "$NAME" |
    sed "0,/<serial type='pty'>/s||&\n      <log file='$LOG' append='off'/>|" >"$D/domain.xml"
grep -q "<log file='$LOG'" "$D/domain.xml" || { echo "demo: no <serial type='pty'> in the domain XML" >&2; false; }
v define "$D/domain.xml" >/dev/null
echo "(demo: the domain's serial console is also logged to $LOG)"

say "stage 2 (after the VM is shut down on VMware): apply the snapshot's delta, start the domain"
t0=$(date +%s%N)
run "$BIN" -c "$URI" --domain "$NAME" "$D/vmware/demo-000001.vmdk"
t1=$(date +%s%N)
echo "(demo: stage 2 to a started domain took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')s)"

say "the guest's console ($LOG)"
# SeaBIOS takes a few seconds to reach the boot sector (more on a busy or non-KVM host).
for _ in $(seq 1 120); do
    grep -q "Hello from" "$LOG" 2>/dev/null && break
    sleep 0.5
done
sleep 0.5 # the rest of the line
tr -d '\r' <"$LOG" | sed '/^$/d'
if grep -qF "Hello from $DELTA_TEXT" "$LOG"; then
    echo "(demo: the guest booted from the imported volume and read the snapshot's version of sector 8)"
else
    echo "demo: the console does not show the snapshot's text" >&2
    false
fi

say "virsh list"
v list

cat <<EOF

The demo domain '$NAME' is running (its boot sector halts after printing).
  attach to its console:  virsh -c $URI console $NAME     (leave with Ctrl-])
  remove everything:      $0 --cleanup
EOF
