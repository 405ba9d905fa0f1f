# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_virt_vmdkimport_global_optspecs
    string join \n q/quiet json v/verbose c/connect= target= d/domain= pool= flat= capacity= vmx= os= memory= vcpus= network= bridge= mac= cpu= hyperv-passthrough no-start print-xml dry-run io= overlay-pool= commit-bandwidth= allow-outside-paths reupload-base copy-independent driver-disk switch-to-virtio sync cutover shutdown-timeout= stall-timeout= hard-off rollback-on-failure jobs= ssh-connections= transport= nc-port= nc-address= remove-esx-snapshots nic-names= disk-bus= h/help V/version
end

function __fish_virt_vmdkimport_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_virt_vmdkimport_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_virt_vmdkimport_using_subcommand
    set -l cmd (__fish_virt_vmdkimport_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -s c -l connect -d 'libvirt connection URI (else LIBVIRT_DEFAULT_URI, else libvirt\'s default)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l target -d 'Apply the deltas to a raw image file or block device instead of a libvirt domain' -r -F
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -s d -l domain -d 'The libvirt domain to create or update' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l pool -d 'Storage pool for new volumes' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l flat -d 'Base image to upload (stage 1): a base descriptor, a flat extent, or - for standard input' -r -F
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l capacity -d 'Disk capacity when the base comes from standard input (bytes, or 40G, 1.5 GiB, 512MiB)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l vmx -d 'The VM\'s .vmx: import every disk, CPUs, memory, NICs and firmware as VMware had them. Stage 1 can read it straight from ESXi: ssh://[user@]host[:port]/vmfs/volumes/DS/VM/VM.vmx' -r -F
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l os -d 'Guest operating system family (decides the device models)' -r -f -a "linux\t''
windows\t''"
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l memory -d 'Memory in MiB' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l vcpus -d 'Virtual CPUs' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l network -d 'libvirt network for the NIC; with --vmx, VMNET=NET maps a VMware network name' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l bridge -d 'Host bridge for the NIC instead of a libvirt network' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l mac -d 'MAC address of the NIC (kept from VMware so static IP configs still match)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l cpu -d 'Guest CPU, tried alone and never replaced: host-passthrough, host-model, default (the hypervisor\'s), or a named model. Without it, stage 1 keeps the first of host-passthrough, host-model, default that starts on this host (nested KVMs refuse the first two)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l io -d 'How stage 2 (and --sync, --cutover from ESXi) writes into the volume' -r -f -a "auto\t'Direct writes where the volume is local and writable, else streams'
stream\t'Always libvirt volume upload streams (works against remote hosts)'
direct\t'Positional writes to the volume\'s path on this host, then one pool refresh'
overlay\t'The delta as a qcow2 overlay volume (one upload), the domain started on it, then merged into the volume by a live block commit'"
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l overlay-pool -d 'With --io overlay: the pool for the qcow2 overlay volume (default: the disk\'s own pool; needed when that pool cannot hold qcow2 files, as a logical pool cannot)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l commit-bandwidth -d 'With --io overlay: limit the block commit to this many bytes per second (default: no limit), to spare a busy host\'s storage: bytes, or 50M, 1.5 GiB' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l shutdown-timeout -d '--cutover: how long to wait for the VM to power off after the guest shutdown request (seconds, or 90s, 5m, 1h 30m)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l stall-timeout -d 'A transfer (base upload, delta apply, overlay upload, a read over ssh) that moves no byte for this long is ended as stalled, with an error naming the disk and the rerun command; what it left stays marked, so the rerun converges (seconds, or 90s, 5m)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l jobs -d '--sync/--cutover: deltas opened side by side (their tables read over the shared ssh connection); their grains are read --ssh-connections disks at a time' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l ssh-connections -d 'With --vmx ssh://: ssh connections each base is read over (that many ranges, each written into the volume as it arrives), and the most final deltas of several disks read at once by --sync/--cutover; 1 to 16' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l transport -d 'With --vmx ssh://: `ssh` (the default), or `nc` for trusted networks: commands stay on ssh, the bytes come unencrypted over TCP from `dd | nc` on ESXi to a port this tool opens (the ESXi firewall needs an outbound rule for that port)' -r -f -a "ssh\t'`dd` over ssh (encrypted), a connection of its own per range'
nc\t'Trusted networks only: commands stay on ssh, the bytes come unencrypted over TCP from `dd | nc` on ESXi to a port this tool opens (the ESXi firewall needs an outbound rule)'"
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l nc-port -d '--transport nc: the TCP port this tool listens on (default 9001; 0: any free port)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l nc-address -d '--transport nc: the address ESXi connects to (default: this host\'s address as ESXi\'s sshd sees it, from $SSH_CONNECTION)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l nic-names -d 'Linux guests from a .vmx: `vmware` (the default) keeps VMware\'s NIC names (`ens192`) by giving each NIC the PCI slot number the .vmx records; `kvm` leaves the NICs to libvirt\'s addressing (`enp1s0`-style names)' -r -f -a "vmware\t'As on VMware (`ens192`): each NIC behind a PCIe root port with the .vmx\'s slot number'
kvm\t'libvirt\'s default addressing: the guest names them after KVM\'s slots (`enp1s0`)'"
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l disk-bus -d 'Linux guests: `virtio-scsi` (the default: disks stay `sdX` in VMware\'s order) or `virtio-blk` (`vdX`)' -r -f -a "virtio-scsi\t'virtio-scsi: `sdX` as on VMware, in the .vmx\'s controller and unit order'
virtio-blk\t'virtio-blk: `vdX`'"
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -s q -l quiet -d 'Quiet: only warnings and errors (no progress lines, no summary)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l json -d 'One JSON document on standard output when the run ends (its phases with times, bytes, calls and write path, notes, warnings, the error, the import state after it); the human lines go to standard error. See the README\'s "--json" section'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -s v -l verbose -d 'More detail: -v adds debug lines (the commands run on ESXi, the libvirt calls), -vv more'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l hyperv-passthrough -d 'Windows guests: give them every Hyper-V enlightenment the host\'s KVM offers (`<hyperv mode=\'passthrough\'/>`) instead of the fixed list, tried alone. Without it, stage 1 keeps the first of the fixed list, passthrough, none that starts'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l no-start -d 'Do not start the domain after stage 2'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l print-xml -d 'Print the domain XML and exit without touching the host'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l dry-run -d 'Say what would be created and written, change nothing; stage 1\'s starts with the preflight (a table of what will go wrong, each with its way out) and fails on its errors'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l allow-outside-paths -d 'Let descriptors name files outside their own folder (absolute paths, `..`, symlinks)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l reupload-base -d 'Stage 1 over a disk whose base upload completed: upload the base again, destroying the deltas applied over it and everything the guest wrote since the hand-over'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l copy-independent -d 'Copy independent disks whole (they are not in any snapshot, so they cannot be delta-synced)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l driver-disk -d 'Windows guests: attach a small extra virtio disk in stage 2 so Windows installs the virtio storage driver before --switch-to-virtio'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l switch-to-virtio -d 'Rewrite a defined domain\'s disks and NICs to virtio (MACs kept); drops the driver disk'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l sync -d 'With --vmx ssh://: a pre-copy round while the VM runs on ESXi: a new migration snapshot freezes its deltas, which are applied now. Repeatable; each round leaves less for the cutover'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l cutover -d 'With --vmx ssh://: the cutover: guest shutdown on ESXi, the final deltas read over ssh and applied, the domain started, the outage printed'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l hard-off -d '--cutover: power the VM off when the guest does not shut down in time (or has no VMware Tools)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l rollback-on-failure -d '--cutover: power the VM on again at ESXi if anything fails after it was shut down'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -l remove-esx-snapshots -d '--cutover: remove the migration snapshots on ESXi once the domain runs here'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -s V -l version -d 'Print version'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -a "plan" -d 'Run a migration plan (TOML) for many VMs across KVM hosts: check, stage1, sync, cutover, status'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -a "status" -d 'Show a domain\'s import state as a table'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -a "test-boot" -d 'Boot the volumes\' current content in a throwaway copy of the domain (disks behind copy-on-write, NICs unplugged) and say whether the guest boots'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -a "probe" -d 'Read part of an ESXi VM\'s largest base by each transport and connection count (the bytes discarded; no snapshot, nothing changed on ESXi) and print the MB/s of each and the flags to use'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -l only -d 'Only these VMs of the plan (names, comma-separated)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -l until-outage -d '`plan sync`: repeat the pre-copy rounds of each VM until a cutover\'s projected outage is under this (seconds, or 30s, 2m), its final delta stops shrinking, or --max-rounds rounds ran; says which' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -l max-rounds -d 'With --until-outage: at most this many rounds per VM (each takes a migration snapshot)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -l timeout -d 'test-boot: how long to watch each VM (default 5m)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -l json -d 'Print one JSON document (every VM\'s step, result, phase, bytes, times, error) on standard output; the per-VM lines and the table go to standard error'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -s q -l quiet -d 'Quiet: only warnings and errors (no progress lines, no summary)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -s v -l verbose -d 'More detail: -v adds debug lines (the commands run on ESXi, the libvirt calls), -vv more'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand plan" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand status" -s d -l domain -d 'The domain' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand status" -s c -l connect -d 'libvirt connection URI (else LIBVIRT_DEFAULT_URI, else libvirt\'s default)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand status" -s q -l quiet -d 'Quiet: only warnings and errors (no progress lines, no summary)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand status" -s v -l verbose -d 'More detail: -v adds debug lines (the commands run on ESXi, the libvirt calls), -vv more'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand status" -s h -l help -d 'Print help'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -s d -l domain -d 'The imported domain (shut off) whose volumes are booted' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -s c -l connect -d 'libvirt connection URI (else LIBVIRT_DEFAULT_URI, else libvirt\'s default)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -l timeout -d 'How long to watch the guest before the verdict is `unknown` (seconds, or 90s, 5m)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -l report -d 'Write the screenshots (PNG), the console log and report.json into this folder' -r -F
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -l overlay-pool -d 'The pool for the qcow2 overlays of block-device disks (file disks need none)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -l cleanup -d 'Boot nothing: remove what an interrupted test boot of the domain left'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -s q -l quiet -d 'Quiet: only warnings and errors (no progress lines, no summary)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -s v -l verbose -d 'More detail: -v adds debug lines (the commands run on ESXi, the libvirt calls), -vv more'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand test-boot" -s h -l help -d 'Print help'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -l bytes -d 'Bytes each setting reads (1G, 512M; at most the base)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -l transport -d 'With --vmx ssh://: `ssh` (the default), or `nc` for trusted networks: commands stay on ssh, the bytes come unencrypted over TCP from `dd | nc` on ESXi to a port this tool opens (the ESXi firewall needs an outbound rule for that port)' -r -f -a "ssh\t'`dd` over ssh (encrypted), a connection of its own per range'
nc\t'Trusted networks only: commands stay on ssh, the bytes come unencrypted over TCP from `dd | nc` on ESXi to a port this tool opens (the ESXi firewall needs an outbound rule)'"
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -l nc-port -d '--transport nc: the TCP port this tool listens on (default 9001; 0: any free port)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -l nc-address -d '--transport nc: the address ESXi connects to (default: this host\'s address as ESXi\'s sshd sees it, from $SSH_CONNECTION)' -r
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -l json -d 'One JSON document on standard output: each setting\'s bytes, seconds and MB/s, and the recommended flags'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -s q -l quiet -d 'Quiet: only warnings and errors (no progress lines, no summary)'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -s v -l verbose -d 'More detail: -v adds debug lines (the commands run on ESXi, the libvirt calls), -vv more'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand probe" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand help; and not __fish_seen_subcommand_from plan status test-boot probe help" -f -a "plan" -d 'Run a migration plan (TOML) for many VMs across KVM hosts: check, stage1, sync, cutover, status'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand help; and not __fish_seen_subcommand_from plan status test-boot probe help" -f -a "status" -d 'Show a domain\'s import state as a table'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand help; and not __fish_seen_subcommand_from plan status test-boot probe help" -f -a "test-boot" -d 'Boot the volumes\' current content in a throwaway copy of the domain (disks behind copy-on-write, NICs unplugged) and say whether the guest boots'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand help; and not __fish_seen_subcommand_from plan status test-boot probe help" -f -a "probe" -d 'Read part of an ESXi VM\'s largest base by each transport and connection count (the bytes discarded; no snapshot, nothing changed on ESXi) and print the MB/s of each and the flags to use'
complete -c virt-vmdkimport -n "__fish_virt_vmdkimport_using_subcommand help; and not __fish_seen_subcommand_from plan status test-boot probe help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
