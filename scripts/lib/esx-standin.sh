# The stand-in ESXi host for scripts (the benchmark), as strict as tests/util/esx.rs: sshd with
# ESXi 8.0.2's ciphers, key exchanges and ECDSA/RSA keys (ESX-REAL.md section 8), root's login
# shell BusyBox's sh with only ESXi's applets (tests/fixtures/esx/applets) and the stand-in's
# vim-cmd, dd and head on PATH, plus `nc` (a separate binary on ESXi since 4.1, ESX.md; BusyBox's
# serves here). Sourced; needs $here (the repository) and the examples built in $2.
#
#   standin_start ROOT EXAMPLES_DIR [NETNS ADDR]   sets STANDIN_PORT, STANDIN_ADDR and
#                        STANDIN_SSH_CONFIG; sshd runs (inside network namespace NETNS on ADDR
#                        when given, else on 127.0.0.1)
#   standin_register ROOT ID NAME DIR/FILE.vmx on|off FORMAT
#   standin_stop ROOT

standin_config() {
    local s=$1 root=$2 examples=$3
    cat <<EOF
Port $STANDIN_PORT
ListenAddress $STANDIN_ADDR
HostKey $s/host_rsa_key
HostKey $s/host_ecdsa_key
PidFile $s/sshd.pid
AuthorizedKeysFile $s/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LogLevel VERBOSE
Ciphers aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr
HostKeyAlgorithms ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-256,rsa-sha2-512
KexAlgorithms ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256
MACs hmac-sha2-256,hmac-sha2-512
PubkeyAcceptedAlgorithms ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-256,rsa-sha2-512
MaxStartups 10:30:100
AllowTcpForwarding no
Compression no
SetEnv PATH=$s/bin STANDIN_ROOT=$root STANDIN_MKDELTA=$examples/mkdelta STANDIN_VM=$examples/standin_vm
EOF
}

# standin_bin DIR: ESXi's applets (links to BusyBox), the stand-in's commands, and nc.
standin_bin() {
    local bin=$1 a c
    mkdir -p "$bin"
    while read -r a; do ln -sf /usr/bin/busybox "$bin/$a"; done <"$here/tests/fixtures/esx/applets"
    for c in vim-cmd dd head; do ln -sf "$here/tests/fixtures/esx/$c" "$bin/$c"; done
    printf '#!/bin/sh\nexec /usr/bin/busybox nc "$@"\n' >"$bin/nc"
    chmod +x "$bin/nc"
}

standin_start() {
    local root=$1 examples=$2 netns=${3:-} s
    s=$root/standin
    STANDIN_ADDR=${4:-127.0.0.1}
    mkdir -p "$s" "$root/vmfs/volumes/datastore1" /run/sshd
    : >"$s/vms.tsv"
    ssh-keygen -q -t rsa -b 2048 -N '' -f "$s/host_rsa_key"
    ssh-keygen -q -t ecdsa -N '' -f "$s/host_ecdsa_key"
    ssh-keygen -q -t ecdsa -N '' -f "$s/client_key"
    cp "$s/client_key.pub" "$s/authorized_keys"
    standin_bin "$s/bin"
    STANDIN_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    standin_config "$s" "$root" "$examples" >"$s/sshd_config"
    # ESXi's root shell is BusyBox's ash: root's login shell made bin/sh in a passwd of sshd's own.
    sed "s#^\(root:.*:\)[^:]*\$#\1$s/bin/sh#" /etc/passwd >"$s/passwd"
    echo "[$STANDIN_ADDR]:$STANDIN_PORT $(cat "$s/host_ecdsa_key.pub")" >"$s/known_hosts"
    STANDIN_SSH_CONFIG=$s/ssh_config
    printf 'Host *\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  BatchMode yes\n' \
        "$s/client_key" "$s/known_hosts" >"$STANDIN_SSH_CONFIG"
    local run=()
    [ -n "$netns" ] && run=(ip netns exec "$netns")
    "${run[@]}" unshare --mount --propagation private sh -c \
        'mount --bind "$1" /etc/passwd && exec /usr/sbin/sshd -f "$2" -E "$3"' \
        sh "$s/passwd" "$s/sshd_config" "$s/sshd.log"
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
