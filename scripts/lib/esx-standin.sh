# The stand-in ESXi host for scripts (the benchmark): the same sshd setup as tests/util/esx.rs
# (its own keys and config on a free loopback port, tests/fixtures/esx first on the session's
# PATH), in shell. Sourced; needs $here (the repository) and the examples built in $1.
#
#   standin_start ROOT EXAMPLES_DIR   sets STANDIN_PORT and STANDIN_SSH_CONFIG; sshd runs
#   standin_register ROOT ID NAME DIR/FILE.vmx on|off FORMAT
#   standin_stop ROOT

standin_start() {
    local root=$1 examples=$2 s
    s=$root/standin
    mkdir -p "$s" "$s/bin" "$root/vmfs/volumes/datastore1" /run/sshd
    # ESXi's own `nc` (a binary of its own there, ESX-REAL.md section 7) for --transport nc:
    # BusyBox's serves, as in tests/util/esx.rs.
    ln -sf /usr/bin/busybox "$s/bin/nc"
    : >"$s/vms.tsv"
    ssh-keygen -q -t ed25519 -N '' -f "$s/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$s/client_key"
    cp "$s/client_key.pub" "$s/authorized_keys"
    STANDIN_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cat >"$s/sshd_config" <<EOF
Port $STANDIN_PORT
ListenAddress 127.0.0.1
HostKey $s/host_key
PidFile $s/sshd.pid
AuthorizedKeysFile $s/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
SetEnv PATH=$here/tests/fixtures/esx:$s/bin:/usr/bin:/bin STANDIN_ROOT=$root STANDIN_MKDELTA=$examples/mkdelta STANDIN_VM=$examples/standin_vm
EOF
    echo "[127.0.0.1]:$STANDIN_PORT $(cat "$s/host_key.pub")" >"$s/known_hosts"
    STANDIN_SSH_CONFIG=$s/ssh_config
    cat >"$STANDIN_SSH_CONFIG" <<EOF
Host *
  IdentityFile $s/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $s/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
EOF
    /usr/sbin/sshd -f "$s/sshd_config" -E "$s/sshd.log"
    local i
    for i in $(seq 1 100); do
        [ -s "$s/sshd.pid" ] && return 0
        sleep 0.1
    done
    echo "the stand-in's sshd did not start: $(cat "$s/sshd.log")" >&2
    return 1
}

standin_register() {
    local root=$1 id=$2 name=$3 vmx=$4 power=$5 format=$6
    printf '%s\t%s\t[datastore1] %s\tubuntu64Guest\t%s\t\n' "$id" "$name" "$vmx" "$power" >>"$root/standin/vms.tsv"
    echo "$format" >"$root/standin/format-$id"
}

standin_stop() {
    local pid
    pid=$(cat "$1/standin/sshd.pid" 2>/dev/null) || return 0
    kill "$pid" 2>/dev/null || true
}
