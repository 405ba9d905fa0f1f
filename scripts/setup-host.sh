#!/usr/bin/env bash
# Install what virt-vmdkimport's build, tests and demo need on a Debian bookworm host, and
# start virtlogd and libvirtd when they are not running (hosts without systemd included).
# Idempotent: a second run only checks. libxml2-utils: virt-xml-validate runs xmllint.
set -euo pipefail

# Everything the build, the tests, the demo and the benchmark use. libxml2-utils: xmllint,
# which virt-xml-validate runs; time: GNU time for the benchmark's peak memory; iproute2: `ip`,
# with which the .vmx tests make the bridges their NICs name; openssh-client: `ssh` for
# --vmx ssh://; openssh-server: the tests' stand-in ESXi host runs its own `sshd` (the
# system's ssh service is not used); debootstrap, e2fsprogs: scripts/debian-guest.sh makes the
# real-guest tests' Debian guest (mkfs.ext4 -d, and debugfs writes the tests' files into it);
# g++: libfuzzer-sys compiles libFuzzer (C++) whenever the fuzz crate builds, as scripts/test.sh
# has it do.
pkgs=(libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86
      qemu-utils pkg-config ovmf nasm python3 libxml2-utils time iproute2 openssh-client
      openssh-server debootstrap e2fsprogs g++)
need_pkgs=()
for p in "${pkgs[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    echo "setup-host: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q --error-on=any # an unreachable mirror is an error here, not later
    # A qemu-utils from bookworm-backports conflicts with bookworm's qemu-system-x86: ask for
    # bookworm's qemu-utils in the same command (scripts/lib/qemu-pin.sh decides).
    source "$(dirname "$0")/lib/qemu-pin.sh"
    policy=$(apt-cache policy qemu-utils 2>/dev/null || true)
    qemu_utils=$(qemu_utils_request "$policy")
    [ "$qemu_utils" = qemu-utils ] || echo "setup-host: asking for $qemu_utils (bookworm's, to match qemu-system-x86)"
    pkgs=("${pkgs[@]/#qemu-utils/$qemu_utils}")
    apt-get install -y -q --allow-downgrades --no-install-recommends "${pkgs[@]}"
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
