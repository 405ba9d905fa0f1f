#!/usr/bin/env bash
# scripts/fresh-check.sh [--rebuild] [--image] [--keep] [--run CMD] [COMMIT]
# The README's quick start on a fresh machine of this project's kind, as root: a clean clone of
# COMMIT (default HEAD) in a fresh copy of a Debian bookworm root in the image's state, where it
# runs scripts/demo.sh, scripts/test.sh, scripts/demo.sh --cleanup, each timed, PASS or FAIL.
# Slow (builds and tests from nothing): not part of .ci/run.
#   --rebuild  make the cached root again (else it is reused: /var/tmp/vmdkimport-fresh-image)
#   --image    only make (or check) the cached root, run nothing
#   --run CMD  run CMD (bash) in the clone instead of the three steps (to look into a failure)
#   --keep     keep the run's copy of the root (/var/tmp/vmdkimport-fresh-run.*) for a look
# The root's packages come from the mirrors this machine's apt uses for bookworm and
# bookworm-security (or VMDKIMPORT_FRESH_MIRROR, VMDKIMPORT_FRESH_SECURITY_MIRROR); the run
# reaches the mirrors the root's apt names and the crate registries this machine's cargo uses
# (or VMDKIMPORT_FRESH_REGISTRIES, HOST:PORT separated by spaces), and nothing else.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
self="$here/scripts/fresh-check.sh"
relay="$here/scripts/lib/fresh-relay.py"
source "$here/scripts/lib/mirrors.sh"
CACHE=/var/tmp/vmdkimport-fresh-image
IMAGE=$CACHE/root
LOGS=/var/tmp/vmdkimport-fresh-logs
# The machine image: Debian bookworm with these, Rust in /root/.cargo and /root/.rustup, and
# qemu-utils from bookworm-backports installed while no backports source is configured.
IMAGE_PKGS=ca-certificates,gcc,libc6-dev,make,pkg-config,git,python3,procps,xz-utils
QEMU_BPO=1:10.0.2+ds-2+deb13u1~bpo12+1
IMAGE_KEY="v1 $IMAGE_PKGS qemu-utils=$QEMU_BPO"
PROJECT=/root/virt-vmdkimport
INNER_PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "fresh-check: $*"; }
die() { echo "fresh-check: $*" >&2; exit 1; }
now() { date +%s; }

# safe_rm DIR: rm -rf, refused while anything is mounted at or under DIR, or while a process
# has its root there (a namespace of a run still alive).
safe_rm() {
    local d m p mounts roots
    d=$(realpath -m "$1")
    mounts=$(awk '{ print $2 }' /proc/mounts)
    while read -r m; do
        case $m in "$d" | "$d"/*) echo "fresh-check: $m is mounted; not removing $d" >&2; return 1 ;; esac
    done <<<"$mounts"
    roots=$(for p in /proc/[0-9]*; do readlink "$p/root" 2>/dev/null || true; done)
    while read -r m; do
        case $m in "$d" | "$d"/*) echo "fresh-check: a process runs in $m; not removing $d" >&2; return 1 ;; esac
    done <<<"$roots"
    rm -rf --one-file-system "$d"
}

# umount_under DIR: unmount everything at or under DIR in this mount namespace, deepest first.
umount_under() {
    local d m mounts
    d=$(realpath -m "$1")
    mounts=$(awk '{ print $2 }' /proc/mounts | tac)
    while read -r m; do
        case $m in "$d" | "$d"/*) umount "$m" 2>/dev/null || umount -l "$m" || true ;; esac
    done <<<"$mounts"
}

# wait_for FILE: until it exists (a relay's listeners are up), 10 s at most.
wait_for() {
    local _
    for _ in $(seq 1 100); do
        [ ! -e "$1" ] || return 0
        sleep 0.1
    done
    die "no $1 after 10 s"
}

# --- the image ------------------------------------------------------------------------------

# Runs in its own mount namespace (unshare --mount), with the host's network: apt in the new
# root installs qemu-utils from bookworm-backports (on MIRROR), then forgets that source.
inner_image() {
    local root=$1 mirror=$2
    trap "umount_under '$root'" EXIT
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    local ch=(chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive)
    echo "deb $mirror bookworm-backports main" >"$root/etc/apt/sources.list.d/backports.list"
    "${ch[@]}" apt-get update -q
    if ! "${ch[@]}" apt-get install -y -q --no-install-recommends -t bookworm-backports "qemu-utils=$QEMU_BPO"; then
        echo "fresh-check: qemu-utils $QEMU_BPO is not on the mirror; taking bookworm-backports' newest"
        "${ch[@]}" apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-utils
    fi
    rm "$root/etc/apt/sources.list.d/backports.list"
    "${ch[@]}" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/*
}

build_image() {
    local new=$CACHE/root.new t0 mirror security
    t0=$(now)
    mirror=${VMDKIMPORT_FRESH_MIRROR:-$(apt_mirror bookworm)}
    security=${VMDKIMPORT_FRESH_SECURITY_MIRROR:-$(apt_mirror bookworm-security)}
    [ -n "$mirror" ] || die "apt has no bookworm source here (/etc/apt/sources.list, sources.list.d): give a Debian mirror in VMDKIMPORT_FRESH_MIRROR"
    mkdir -p "$CACHE"
    [ ! -e "$new" ] || safe_rm "$new"
    say "making the image root in $IMAGE (debootstrap from $mirror; log: $CACHE/build.log)"
    # debootstrap mounts proc and sys in the target: in a mount namespace of its own, nothing it
    # leaves mounted survives it.
    if ! unshare --mount --fork debootstrap --variant=minbase --include="$IMAGE_PKGS" \
        bookworm "$new" "$mirror" >"$CACHE/build.log" 2>&1; then
        tail -n 30 "$CACHE/build.log" >&2
        die "debootstrap failed (log: $CACHE/build.log)"
    fi
    # apt's sources as on the machine: bookworm, -updates and -security, deb822.
    rm -f "$new/etc/apt/sources.list"
    cat >"$new/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    if [ -n "$security" ]; then
        cat >>"$new/etc/apt/sources.list.d/debian.sources" <<EOF

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    else
        say "apt has no bookworm-security source here: the root has none either"
    fi
    cp /etc/resolv.conf "$new/etc/resolv.conf"
    if ! unshare --mount --fork "$self" --inner-image "$new" "$mirror" >>"$CACHE/build.log" 2>&1; then
        tail -n 30 "$CACHE/build.log" >&2
        die "installing qemu-utils from bookworm-backports failed (log: $CACHE/build.log)"
    fi
    [ ! -e "$IMAGE" ] || safe_rm "$IMAGE"
    mv "$new" "$IMAGE"
    echo "$IMAGE_KEY" >"$CACHE/key"
    say "image made in $(($(now) - t0)) s: $(image_qemu)"
}

image_qemu() {
    chroot "$IMAGE" dpkg-query -W -f='qemu-utils ${Version}' qemu-utils
}

ensure_image() {
    local key=""
    [ ! -f "$CACHE/key" ] || key=$(cat "$CACHE/key")
    if [ "$rebuild" = 1 ] || [ "$key" != "$IMAGE_KEY" ] || [ ! -d "$IMAGE" ]; then
        build_image
    else
        say "reusing the image root $IMAGE ($(image_qemu); --rebuild to make it again)"
    fi
}

# --- one run --------------------------------------------------------------------------------

# run_targets: HOST:PORT of each server the run reaches through the relay, one a line: the
# mirrors the root's own apt names (as its apt-get sees them), and the crate registries this
# machine's cargo uses (scripts/lib/mirrors.sh), or VMDKIMPORT_FRESH_REGISTRIES.
run_targets() {
    local suite uri hp registries list
    for suite in bookworm bookworm-security; do
        uri=$(apt_mirror "$suite" "$IMAGE/etc/apt")
        [ -n "$uri" ] || continue
        hp=$(url_host_port "$uri") || die "the root's apt takes $suite from $uri: only http:// and https:// mirrors reach the run"
        echo "$hp"
    done
    registries=${VMDKIMPORT_FRESH_REGISTRIES:-$(cargo_registry_hosts /root/.cargo)}
    [ -n "$registries" ] || die "cargo has fetched no crate on this machine (nothing in /root/.cargo/registry/index): build the project once, or give VMDKIMPORT_FRESH_REGISTRIES (HOST:PORT ...)"
    read -r -d '' -a list <<<"$registries" || true
    printf '%s\n' "${list[@]}"
}

# Runs as pid 1 of new mount, network and pid namespaces: the host's libvirtd keeps running
# beside the root's own (its own /run, its own 127.0.0.1:16509, its own processes for pgrep).
# /run stays the copy's own directory: on this kind of machine /run is no tmpfs either.
inner_run() {
    local run=$1 logs=$2 root=$1/root i=1 t
    shift 2
    local targets=("$@")
    trap 'inner_exit' EXIT
    trap 'exit 130' INT TERM
    ip link set lo up
    local hosts="127.0.0.1 localhost"$'\n' specs=()
    for t in "${targets[@]}"; do
        hosts+="127.0.2.$i ${t%:*}"$'\n'
        specs+=("127.0.2.$i=$t")
        i=$((i + 1))
    done
    printf '%s' "$hosts" >"$root/etc/hosts"
    # The root is a mount point, as / is on a machine: libvirt's QEMU driver starts each QEMU in a
    # mount namespace of its own and first makes / a slave mount, which fails with EINVAL on a
    # plain directory ("Failed disable mount propagation out of the root filesystem").
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
    mkdir -p "$root/root/.rustup" "$root/.fresh-check/relay" "$root/.fresh-check/logs" "$root/.fresh-check/old"
    mount --bind /root/.rustup "$root/root/.rustup"
    mount -o remount,bind,ro "$root/root/.rustup"
    mount --bind "$run/relay" "$root/.fresh-check/relay"
    mount --bind "$logs" "$root/.fresh-check/logs"
    # pivot_root, not chroot: libvirt creates each QEMU's /dev nodes from a helper that enters
    # QEMU's mount namespace (setns), which puts it at the namespace's real root; under a chroot
    # that is the host's /dev, and QEMU finds no /dev/urandom, /dev/null, /dev/kvm, /dev/ptmx.
    cd "$root"
    pivot_root . .fresh-check/old
    cd /
    umount -l /.fresh-check/old
    PATH=$INNER_PATH
    hash -r
    python3 /.fresh-check/relay/fresh-relay.py in /.fresh-check/relay "${specs[@]}" &
    wait_for /.fresh-check/relay/ready-in
    if [ -f /.fresh-check/relay/command ]; then
        step "--run COMMAND" command bash -c "$(cat /.fresh-check/relay/command)"
        return
    fi
    step "scripts/demo.sh" demo scripts/demo.sh
    step "scripts/test.sh" test scripts/test.sh
    step "scripts/demo.sh --cleanup" cleanup scripts/demo.sh --cleanup
}

# Every other process of the namespace ends (libvirtd, virtlogd, QEMU, the relay), libvirt's
# logs join the run's, then every mount but / is undone, deepest first (the namespace's end
# releases / and anything left).
inner_exit() {
    kill -TERM -1 2>/dev/null || true
    sleep 2
    kill -KILL -1 2>/dev/null || true
    sleep 0.5
    cp /var/log/libvirt/*.log /.fresh-check/logs/ 2>/dev/null || true
    umount_under /.fresh-check
    local m mounts
    mounts=$(awk '$2 != "/" { print $2 }' /proc/mounts | tac)
    while read -r m; do
        [ -z "$m" ] || umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done <<<"$mounts"
}

# step TITLE SLUG CMD...: CMD in the project's clone inside the root, logged (in /.fresh-check/logs,
# which is $logs on the host), timed.
step() {
    local title=$1 slug=$2 t0 dt result
    shift 2
    printf 'fresh-check: %-26s ... ' "$title"
    t0=$(now)
    if /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
        TERM=dumb LANG=C.UTF-8 PATH="$INNER_PATH" \
        /bin/bash -c 'cd "$0" && exec "$@"' "$PROJECT" "$@" >"/.fresh-check/logs/$slug.log" 2>&1 </dev/null; then
        result=PASS
    else
        result="FAIL (exit $?)"
    fi
    dt=$(($(now) - t0))
    printf '%s in %d s\n' "$result" "$dt"
    printf '%-26s %-14s %5d s\n' "$title" "$result" "$dt" >>/.fresh-check/logs/results
    if [ "$result" != PASS ]; then
        tail -n 40 "/.fresh-check/logs/$slug.log" | sed 's/^/    | /'
        if pgrep -x libvirtd >/dev/null; then
            echo "    (libvirtd in the root is running)"
        else
            echo "    (libvirtd in the root is not running; its log: $logs/libvirtd.log)"
        fi
        echo "    (whole log: $logs/$slug.log)"
    fi
}

outer_exit() {
    [ -z "${relay_pid:-}" ] || kill "$relay_pid" 2>/dev/null || true
    if [ -n "${run:-}" ] && [ -d "$run" ]; then
        if [ "$keep" = 1 ]; then
            say "kept the run's root: $run/root"
        else
            safe_rm "$run" || true
        fi
    fi
}

main() {
    local commit=HEAD sha subject t0 result list targets
    rebuild=0 keep=0 image_only=0 command=""
    while [ $# -gt 0 ]; do
        case $1 in
        --rebuild) rebuild=1 ;;
        --keep) keep=1 ;;
        --image) image_only=1 ;;
        --run) command=$2; shift ;;
        -*) sed -n '2,10p' "$0" >&2; exit 2 ;;
        *) commit=$1 ;;
        esac
        shift
    done
    [ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, namespaces)"
    for c in debootstrap unshare chroot python3 git; do
        command -v "$c" >/dev/null || die "needs $c (apt-get install debootstrap util-linux python3 git)"
    done
    sha=$(git -C "$here" rev-parse --verify "$commit^{commit}") || die "no commit $commit"
    subject=$(git -C "$here" log -1 --format='%h %s' "$sha")
    say "commit $subject"
    t0=$(now)
    ensure_image
    [ "$image_only" = 0 ] || return 0

    run=$(mktemp -d /var/tmp/vmdkimport-fresh-run.XXXXXX)
    logs=$LOGS/$(date -u +%Y%m%dT%H%M%SZ)-${sha:0:10}
    mkdir -p "$logs"
    trap outer_exit EXIT
    cp -a "$IMAGE" "$run/root"
    git clone -q --no-checkout "$here" "$run/root$PROJECT"
    git -C "$run/root$PROJECT" checkout -q --detach "$sha" 2>/dev/null || {
        git -C "$run/root$PROJECT" fetch -q "$here" "$sha"
        git -C "$run/root$PROJECT" checkout -q --detach "$sha"
    }
    # The toolchain as the machine has it: rustup's toolchains (bound read-only in the run), and
    # cargo's bin and env copied, so the run's downloads and installs never touch the host's.
    mkdir -p "$run/root/root/.cargo"
    cp -a /root/.cargo/bin /root/.cargo/env "$run/root/root/.cargo/"
    # cargo's configuration too, when there is one: its registries are the ones the relay serves.
    local c
    for c in config.toml config; do
        [ ! -f "/root/.cargo/$c" ] || cp -a "/root/.cargo/$c" "$run/root/root/.cargo/"
    done
    local nextest
    nextest=$(command -v cargo-nextest || true)
    [ -z "$nextest" ] || { mkdir -p "$run/root$(dirname "$nextest")"; cp -a "$nextest" "$run/root$nextest"; }

    # The machine's own CA certificates (this workplace's HTTPS egress signs with them): part of
    # the machine, not of what the project installs, so the run gets them as the machine has them.
    if [ -d /usr/local/share/ca-certificates ]; then
        cp -a /usr/local/share/ca-certificates/. "$run/root/usr/local/share/ca-certificates/"
        chroot "$run/root" update-ca-certificates >/dev/null 2>&1
    fi
    mkdir "$run/relay"
    cp "$relay" "$run/relay/fresh-relay.py"
    [ -z "$command" ] || printf '%s' "$command" >"$run/relay/command"
    # Hosts the namespace reaches through the relay (127.0.2.N in its /etc/hosts), each once.
    list=$(run_targets)
    mapfile -t targets < <(awk '!seen[$0]++' <<<"$list")
    say "the run reaches ${targets[*]}"
    python3 "$relay" out "$run/relay" "${targets[@]}" &
    relay_pid=$!
    wait_for "$run/relay/ready-out"
    say "root: $run/root; logs: $logs"
    unshare --mount --net --pid --fork "$self" --inner-run "$run" "$logs" "${targets[@]}" || true

    echo
    say "commit $subject"
    sed 's/^/  /' "$logs/results" 2>/dev/null || echo "  (no step finished)"
    local steps=3
    [ -z "$command" ] || steps=1
    if [ "$(grep -c ' PASS ' "$logs/results" 2>/dev/null)" = "$steps" ]; then result=PASS; else result=FAIL; fi
    say "$result ($(($(now) - t0)) s in all; logs in $logs)"
    [ "$result" = PASS ]
}

case ${1:-} in
--inner-image) inner_image "$2" "$3" ;;
--inner-run) shift; inner_run "$@" ;;
*) main "$@" ;;
esac
