#!/usr/bin/env bash
# Install what virt-vmdkimport's build, tests and demo need on a Debian bookworm host, and
# start virtlogd and libvirtd when they are not running (hosts without systemd included).
# Idempotent: a second run only checks. libxml2-utils: virt-xml-validate runs xmllint.
set -euo pipefail

# Everything the build, the tests, the demo and the benchmark use. libxml2-utils: xmllint,
# which virt-xml-validate runs; time: GNU time for the benchmark's peak memory; iproute2: `ip`,
# with which the .vmx tests make the bridges their NICs name; openssh-client: `ssh` for
# --vmx ssh://; openssh-server: the tests' stand-in ESXi host runs its own `sshd` (the
# system's ssh service is not used); busybox: the stand-in runs every command in BusyBox's `sh`
# with BusyBox's applets, as ESXi does; debootstrap, e2fsprogs: scripts/debian-guest.sh makes the
# real-guest tests' Debian guest (mkfs.ext4 -d, and debugfs writes the tests' files into it);
# g++: libfuzzer-sys compiles libFuzzer (C++) whenever the fuzz crate builds, as scripts/test.sh
# has it do; tesseract-ocr: `test-boot` reads the guest's screen with it; chromium: the tests
# open `plan test-boot`'s HTML page in it (headless) and read its screenshot.
pkgs=(libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86
      qemu-utils pkg-config ovmf nasm python3 libxml2-utils time iproute2 openssh-client
      openssh-server busybox debootstrap e2fsprogs g++ tesseract-ocr chromium)
need_pkgs=()
for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || need_pkgs+=("$p")
done
# apt's whole output (hundreds of lines) goes to a log; the screen gets what is installed, each
# step's outcome and time, and the log's path (on a failure, the log's tail too).
log=${VMDKIMPORT_SETUP_LOG:-/var/tmp/vmdkimport-setup-host.log}
# apt_step WHAT CMD...: CMD, its output added to the log; "WHAT: done in N s", or the log's tail.
apt_step() {
    local what=$1 t=$SECONDS status=0
    shift
    printf '\n$ %s\n' "$*" >>"$log"
    "$@" >>"$log" 2>&1 </dev/null || status=$?
    if [ "$status" -ne 0 ]; then
        echo "setup-host: $what FAILED (exit $status) after $((SECONDS - t)) s; the end of apt's output:" >&2
        tail -n 25 "$log" | sed 's/^/    | /' >&2
        echo "setup-host: apt's whole output: $log" >&2
        exit "$status"
    fi
    echo "setup-host: $what: done in $((SECONDS - t)) s"
}
if [ ${#need_pkgs[@]} -gt 0 ]; then
    start=$SECONDS
    echo "setup-host: installing ${need_pkgs[*]} (apt's output in $log)"
    mkdir -p "$(dirname "$log")"
    : >"$log"
    export DEBIAN_FRONTEND=noninteractive
    # --error-on=any: an unreachable mirror is an error here, not later.
    apt_step "apt-get update" apt-get update -q --error-on=any
    # A qemu-utils from bookworm-backports conflicts with bookworm's qemu-system-x86: ask for
    # bookworm's qemu-utils in the same command (scripts/lib/qemu-pin.sh decides).
    source "$(dirname "$0")/lib/qemu-pin.sh"
    policy=$(apt-cache policy qemu-utils 2>/dev/null || true)
    qemu_utils=$(qemu_utils_request "$policy")
    [ "$qemu_utils" = qemu-utils ] || echo "setup-host: asking for $qemu_utils (bookworm's, to match qemu-system-x86)"
    pkgs=("${pkgs[@]/#qemu-utils/$qemu_utils}")
    apt_step "apt-get install" apt-get install -y -q --allow-downgrades --no-install-recommends "${pkgs[@]}"
    # apt's own count: "N upgraded, N newly installed, N downgraded, N to remove and N not upgraded."
    counts=$(grep -E '^[0-9]+ upgraded, [0-9]+ newly installed' "$log" || true)
    echo "setup-host: installed in $((SECONDS - start)) s${counts:+ (${counts%.})}; apt's whole output: $log"
fi

# The QEMU driver resolves its user before it reads qemu.conf.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /var/run/libvirt
if ! grep -qs '^user = "root"' /etc/libvirt/qemu.conf; then
    printf 'user = "root"\ngroup = "root"\n' >> /etc/libvirt/qemu.conf
fi

# Tests use a remote URI too: libvirtd on loopback TCP without auth (test hosts only).
conf=/etc/libvirt/libvirtd.conf
if ! grep -qs "^listen_tcp = 1" "$conf"; then
    printf 'listen_tls = 0\nlisten_tcp = 1\nlisten_addr = "127.0.0.1"\nauth_tcp = "none"\n' >> "$conf"
fi

# Alive by the daemon's own pid file, not by pgrep: a process of that name may belong to
# another daemon on this machine (scripts/fresh-check.sh runs one in its own namespaces).
alive() { local pid; pid=$(cat "/run/$1.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; }
alive virtlogd || virtlogd -d
alive libvirtd || libvirtd -d --listen
for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
done
virsh -c qemu:///system version >/dev/null
