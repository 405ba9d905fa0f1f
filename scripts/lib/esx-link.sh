# The benchmark's model of an ESXi host across a LAN: the stand-in's sshd in a network namespace
# of its own, behind a veth pair shaped to LINK_RATE by `tc htb` both ways (netem and fq are not
# in this kernel), and every ssh connection's sshd processes in a cgroup (v1 cpu) of their own with a
# CPU quota: a model of ESXi's sshd, one process a connection on a host that gives it little CPU
# (ESX-REAL.md section 8: scp at 6.4 MB/s on 1 GbE while dd | nc reaches wire speed). The
# quota's size and that it holds per connection are the model's assumptions, not ESXi's
# measured figures: real hosts must be probed (virt-vmdkimport probe). Sourced.
#
#   link_up NS          the namespace, the veth pair (LINK_HOST here, LINK_ESX there), shaped
#   link_down NS
#   link_seconds BYTES  seconds for BYTES of plain TCP from the namespace to here (the baseline)
#   link_quota PIDFILE PERCENT   start moving the sshd processes of each connection of the sshd
#                       in PIDFILE into a cgroup with PERCENT of one core (the commands they run
#                       stay out: dd and nc are not held); link_quota_stop ends it

LINK_RATE=${LINK_RATE:-1gbit}
LINK_HOST=10.213.0.1
LINK_ESX=10.213.0.2
LINK_CG=/sys/fs/cgroup/cpu/vmdkimport-bench-esx

link_up() {
    local ns=$1
    LINK_NS=$ns
    link_down "$ns"
    ip netns add "$ns"
    ip link add vmdkb-h type veth peer name vmdkb-e
    ip link set vmdkb-e netns "$ns"
    ip addr add "$LINK_HOST/30" dev vmdkb-h
    ip link set vmdkb-h up
    ip netns exec "$ns" ip addr add "$LINK_ESX/30" dev vmdkb-e
    ip netns exec "$ns" ip link set vmdkb-e up
    ip netns exec "$ns" ip link set lo up
    local dev run
    for dev in vmdkb-h vmdkb-e; do
        run=()
        [ "$dev" = vmdkb-e ] && run=(ip netns exec "$ns")
        "${run[@]}" tc qdisc add dev "$dev" root handle 1: htb default 10 r2q 1000
        "${run[@]}" tc class add dev "$dev" parent 1: classid 1:10 htb rate "$LINK_RATE" ceil "$LINK_RATE"
    done
}

link_down() {
    ip link del vmdkb-h 2>/dev/null || true
    ip netns del "$1" 2>/dev/null || true
}

# A receiver here that counts BYTES and prints the seconds from its first byte to its last; the
# sender is BusyBox's nc in the namespace, as ESXi's dd | nc would send.
link_seconds() {
    local bytes=$1 port out
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    out=$(mktemp)
    python3 - "$LINK_HOST" "$port" "$bytes" >"$out" <<'EOF' &
import socket, sys, time
host, port, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen(1)
c, _ = s.accept()
n, t0 = 0, None
while n < want:
    b = c.recv(1 << 20)
    if not b:
        break
    t0 = t0 or time.monotonic()
    n += len(b)
print(f"{time.monotonic() - t0:.3f}" if n == want else f"short {n}")
EOF
    local rx=$!
    sleep 0.3
    head -c "$bytes" /dev/zero | ip netns exec "$LINK_NS" busybox nc "$LINK_HOST" "$port"
    wait "$rx"
    cat "$out"
    rm -f "$out"
}

# Every process under PID, PID first.
link_tree() {
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do link_tree "$c"; done
}

link_quota() {
    local pidfile=$1 percent=$2
    mkdir -p "$LINK_CG"
    (
        local listener conn cg p
        listener=$(cat "$pidfile")
        while kill -0 "$listener" 2>/dev/null; do
            for conn in $(cat /proc/"$listener"/task/*/children 2>/dev/null); do
                cg=$LINK_CG/conn$conn
                if [ ! -d "$cg" ]; then
                    mkdir "$cg"
                    echo 100000 >"$cg/cpu.cfs_period_us"
                    echo $((percent * 1000)) >"$cg/cpu.cfs_quota_us"
                fi
                # sshd's processes of the connection (its encryption) are held to the quota;
                # the commands it runs (dd, nc) inherit the cgroup and are moved back out.
                for p in $(link_tree "$conn"); do
                    if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = sshd ]; then
                        echo "$p" >"$cg/cgroup.procs" 2>/dev/null || true
                    else
                        echo "$p" >/sys/fs/cgroup/cpu/cgroup.procs 2>/dev/null || true
                    fi
                done
            done
            sleep 0.02
        done
    ) &
    LINK_QUOTA_PID=$!
}

link_quota_stop() {
    if [ -n "${LINK_QUOTA_PID:-}" ]; then
        kill "$LINK_QUOTA_PID" 2>/dev/null || true
        wait "$LINK_QUOTA_PID" 2>/dev/null || true
    fi
    LINK_QUOTA_PID=
    local cg p
    for cg in "$LINK_CG"/conn*; do
        [ -d "$cg" ] || continue
        for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do
            echo "$p" >/sys/fs/cgroup/cpu/cgroup.procs 2>/dev/null || true
        done
        rmdir "$cg" 2>/dev/null || true
    done
    rmdir "$LINK_CG" 2>/dev/null || true
}
