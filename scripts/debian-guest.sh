#!/usr/bin/env bash
# scripts/debian-guest.sh [--rebuild]: make, once, the minimal Debian bookworm guest the real-guest
# tests boot, cached outside the repository (VMDKIMPORT_GUEST_CACHE, default
# /var/tmp/vmdkimport-debian-guest): disk.raw (an MBR disk, one ext4 partition at 1 MiB), and
# the guest's vmlinuz and initrd.img for a direct kernel boot. The guest runs the unit
# vmdkimport-report.service: once boot is over it prints `ip -br addr`, `findmnt /` and
# `systemctl --failed` on ttyS0 between REPORT-BEGIN and REPORT-END lines, each line starting
# with `REPORT: `, then powers off. No getty on ttyS0, so no login prompt cuts into the report.
# No mounts of our own: debootstrap (minbase) makes the root in a folder, mkfs.ext4 -d makes the
# filesystem from it, sfdisk and dd make the disk. Prints the seconds it took. The packages come
# from the mirror this machine's apt takes bookworm from (/etc/apt/sources.list or
# sources.list.d), or from VMDKIMPORT_GUEST_MIRROR when it is set. debootstrap's output goes
# to $cache/debootstrap.log.
set -euo pipefail

cache=${VMDKIMPORT_GUEST_CACHE:-/var/tmp/vmdkimport-debian-guest}
pkgs=systemd,systemd-sysv,udev,iproute2,ifupdown,linux-image-amd64
key="v2 bookworm $pkgs"
say() { echo "debian-guest: $*"; }
die() { echo "debian-guest: $*" >&2; exit 1; }

cached() { [ "$(cat "$cache/key" 2>/dev/null || true)" = "$key" ]; }
if [ "${1:-}" != --rebuild ] && cached; then
    exit 0
fi
# One build at a time: the real-guest tests run this in parallel; the second waits, then finds it.
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
flock 9
if [ "${1:-}" != --rebuild ] && cached; then
    exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap)"
for tool in debootstrap mkfs.ext4; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/setup-host.sh"
done
source "$(dirname "$0")/lib/mirrors.sh"
mirror=${VMDKIMPORT_GUEST_MIRROR:-$(apt_mirror bookworm)}
[ -n "$mirror" ] || die "apt has no bookworm source here (/etc/apt/sources.list, sources.list.d): give a Debian mirror in VMDKIMPORT_GUEST_MIRROR"

# safe_rm DIR: rm -rf, refused while anything is mounted at or under DIR (debootstrap mounts
# proc and sysfs in its target while it runs and unmounts them when it exits).
safe_rm() {
    local d m mounts
    d=$(realpath -m "$1")
    mounts=$(awk '{ print $2 }' /proc/mounts)
    while read -r m; do
        case $m in "$d" | "$d"/*) die "$m is mounted; not removing $d" ;; esac
    done <<<"$mounts"
    rm -rf --one-file-system "$d"
}

# le32 N: N as four little-endian bytes, in printf's \x escapes.
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
# mbr FILE START SECTORS: an MBR with one Linux partition (type 0x83) of SECTORS at START.
mbr() {
    # shellcheck disable=SC2059 # the format is the bytes
    printf "\x00\xfe\xff\xff\x83\xfe\xff\xff$(le32 "$2")$(le32 "$3")" |
        dd of="$1" bs=1 seek=446 conv=notrunc status=none
    printf '\x55\xaa' | dd of="$1" bs=1 seek=510 conv=notrunc status=none
}

start=$(date +%s)
work=$cache.build
[ -e "$work" ] && safe_rm "$work"
mkdir -p "$work"
root=$work/root
say "debootstrap bookworm ($pkgs) from $mirror into $root"
if ! debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log: $work/debootstrap.log): the real-guest tests cannot run without this guest"
fi
say "debootstrap done in $(($(date +%s) - start)) s"

# The guest's configuration: a report on the serial console once boot is over, then power off.
echo guest >"$root/etc/hostname"
printf '# replaced by the test\n' >"$root/etc/fstab"
cat >"$root/usr/local/sbin/vmdkimport-report" <<'EOF'
#!/bin/sh
# Wait until boot is over (running or degraded), report, power off.
state=$(systemctl is-system-running --wait)
report=$(
    echo "system: $state"
    ip -br addr
    findmnt -n -o SOURCE,TARGET,FSTYPE /
    systemctl --failed --no-legend --plain
)
printf 'REPORT-BEGIN\n%s\nREPORT-END\n' "$(printf '%s\n' "$report" | sed 's/^/REPORT: /')" >/dev/ttyS0
systemctl poweroff
EOF
chmod 755 "$root/usr/local/sbin/vmdkimport-report"
cat >"$root/etc/systemd/system/vmdkimport-report.service" <<'EOF'
[Unit]
Description=Report names and state on ttyS0, then power off

[Service]
Type=simple
ExecStart=/usr/local/sbin/vmdkimport-report

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/vmdkimport-report.service \
    "$root/etc/systemd/system/multi-user.target.wants/vmdkimport-report.service"
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
# Smaller image: no documentation, no package lists, no downloaded packages.
rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/locale" \
    "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*

kernel=$(ls "$root"/boot/vmlinuz-* | tail -n 1)
initrd=$(ls "$root"/boot/initrd.img-* | tail -n 1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"

# The disk: the filesystem made from the folder, at 1 MiB behind an MBR with one partition.
used_mib=$(du -sm "$root" | cut -f1)
fs_mib=$((used_mib * 13 / 10 + 64))
mkfs.ext4 -q -F -L root -d "$root" "$work/fs.raw" "${fs_mib}M" >/dev/null # "Creating regular file"
truncate -s "$((fs_mib + 1))M" "$work/disk.raw"
mbr "$work/disk.raw" 2048 "$((fs_mib * 2048))"
dd if="$work/fs.raw" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$work/fs.raw"
safe_rm "$root"

mkdir -p "$cache"
mv "$work/disk.raw" "$work/vmlinuz" "$work/initrd.img" "$work/debootstrap.log" "$cache/"
echo "$key" >"$cache/key"
safe_rm "$work"
say "made $cache (disk $((fs_mib + 1)) MiB) in $(($(date +%s) - start)) s; debootstrap's log: $cache/debootstrap.log"
