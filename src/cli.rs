//! The command line: clap's raw arguments, checked into one validated plan before anything is touched.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OsArg {
    Linux,
    Windows,
}

/// How stage 2 writes the changed runs into the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum IoMode {
    /// Direct writes where the volume is local and writable, else streams.
    #[default]
    Auto,
    /// Always libvirt volume upload streams (works against remote hosts).
    Stream,
    /// Positional writes to the volume's path on this host, then one pool refresh.
    Direct,
    /// The delta as a qcow2 overlay volume (one upload), the domain started on it, then
    /// merged into the volume by a live block commit.
    Overlay,
}

/// How the bytes of files on ESXi travel (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum TransportArg {
    /// `dd` over ssh (encrypted), a connection of its own per range.
    #[default]
    Ssh,
    /// Trusted networks only: commands stay on ssh, the bytes come unencrypted over TCP from
    /// `dd | nc` on ESXi to a port this tool opens (the ESXi firewall needs an outbound rule).
    Nc,
}

/// How a Linux guest's NICs are placed, and so named by the guest (`--nic-names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NicNames {
    /// As on VMware (`ens192`): each NIC behind a PCIe root port with the .vmx's slot number.
    Vmware,
    /// libvirt's default addressing: the guest names them after KVM's slots (`enp1s0`).
    Kvm,
}

/// The bus of a Linux guest's disks (`--disk-bus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskBusArg {
    /// virtio-scsi: `sdX` as on VMware, in the .vmx's controller and unit order.
    VirtioScsi,
    /// virtio-blk: `vdX`.
    VirtioBlk,
}

// The subcommands (`plan`, `status`), beside the import's flat command line.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a migration plan (TOML) for many VMs across KVM hosts: check, stage1, sync, cutover, status.
    Plan(PlanArgs),
    /// Show a domain's import state as a table.
    Status(StatusArgs),
    /// Boot the volumes' current content in a throwaway copy of the domain (disks behind
    /// copy-on-write, NICs unplugged) and say whether the guest boots.
    TestBoot(TestBootArgs),
    /// Read part of an ESXi VM's largest base by each transport and connection count (the
    /// bytes discarded; no snapshot, nothing changed on ESXi) and print the MB/s of each and
    /// the flags to use.
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The VM's .vmx on ESXi.
    #[arg(value_name = "ssh://[user@]host[:port]/vmfs/volumes/DS/VM/VM.vmx")]
    pub vmx: String,
    /// Bytes each setting reads (1G, 512M; at most the base).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = crate::units::parse_size)]
    pub bytes: u64,
    /// One JSON document on standard output: each setting's bytes, seconds and MB/s, and the
    /// recommended flags.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub transport: TransportArgs,
}

/// What `plan` does for each VM of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// The preflight of every VM (one table: each finding's severity and way out), then each
    /// VM's next step with --dry-run; change nothing.
    Check,
    /// Stage 1 of every VM whose stage 1 is not done: volumes, domain, base upload, trial start.
    Stage1,
    /// A pre-copy round for every VM from ESXi (--sync).
    Sync,
    /// The cutover of every VM: final deltas applied, domain started.
    Cutover,
    /// One line per VM from the import state on its host: phase, bytes, outage, errors.
    Status,
    /// A test boot of every VM, one after the other, and one HTML page of the verdicts.
    TestBoot,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: Action,
    /// The plan file (TOML; see the README's "Many VMs").
    #[arg(value_name = "PLAN.toml")]
    pub plan: PathBuf,
    /// Only these VMs of the plan (names, comma-separated).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print one JSON document (every VM's step, result, phase, bytes, times, error) on
    /// standard output; the per-VM lines and the table go to standard error.
    #[arg(long)]
    pub json: bool,
    /// `plan sync`: repeat the pre-copy rounds of each VM until a cutover's projected outage
    /// is under this (seconds, or 30s, 2m), its final delta stops shrinking, or --max-rounds
    /// rounds ran; says which.
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_timeout)]
    pub until_outage: Option<std::time::Duration>,
    /// With --until-outage: at most this many rounds per VM (each takes a migration snapshot).
    #[arg(long, value_name = "N", requires = "until_outage")]
    pub max_rounds: Option<u32>,
    /// test-boot: how long to watch each VM (default 5m).
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_timeout)]
    pub timeout: Option<std::time::Duration>,
}

/// `--max-rounds` when not given: five rounds usually bring the delta down to what the VM
/// writes in one round's time; each takes a snapshot, and the chain's room is limited.
pub const DEFAULT_MAX_ROUNDS: u32 = 5;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The domain.
    #[arg(short = 'd', long, value_name = "NAME")]
    pub domain: String,
    /// libvirt connection URI (else LIBVIRT_DEFAULT_URI, else libvirt's default).
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    pub connect: Option<String>,
}

#[derive(Debug, Args)]
pub struct TestBootArgs {
    /// The imported domain (shut off) whose volumes are booted.
    #[arg(short = 'd', long, value_name = "NAME")]
    pub domain: String,
    /// libvirt connection URI (else LIBVIRT_DEFAULT_URI, else libvirt's default).
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    pub connect: Option<String>,
    /// How long to watch the guest before the verdict is `unknown` (seconds, or 90s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_timeout)]
    pub timeout: std::time::Duration,
    /// Write the screenshots (PNG), the console log and report.json into this folder.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Boot nothing: remove what an interrupted test boot of the domain left.
    #[arg(long)]
    pub cleanup: bool,
    /// The pool for the qcow2 overlays of block-device disks (file disks need none).
    #[arg(long, value_name = "POOL", default_value = "default")]
    pub overlay_pool: String,
}

#[derive(Debug, Parser)]
#[command(
    name = "virt-vmdkimport",
    version,
    about = "Move a VMware ESX virtual machine onto KVM/libvirt with about a reboot's downtime",
    long_about = "Stage 1, while the VM still runs on VMware (after a snapshot): \n  \
        virt-vmdkimport --domain web1 --flat vm.vmdk\n\
        Stage 2, after the VM is shut down on VMware and its delta(s) copied:\n  \
        virt-vmdkimport --domain web1 vm-000001.vmdk\n\
        Raw target (no libvirt):\n  \
        virt-vmdkimport --target /dev/vg/web1 vm-000001.vmdk\n\
        Many VMs from a plan file:\n  \
        virt-vmdkimport plan check|stage1|sync|cutover|status|test-boot migration.toml\n\
        A test boot of the volumes' current content:\n  \
        virt-vmdkimport test-boot --domain web1",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// `plan` (many VMs from a plan file), `status` (one domain's import state) or
    /// `test-boot` (boot a copy of one domain's volumes).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Quiet: only warnings and errors (no progress lines, no summary).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// One JSON document on standard output when the run ends (its phases with times, bytes,
    /// calls and write path, notes, warnings, the error, the import state after it); the
    /// human lines go to standard error. See the README's "--json" section.
    #[arg(long, conflicts_with = "print_xml")]
    pub json: bool,

    /// More detail: -v adds debug lines (the commands run on ESXi, the libvirt calls), -vv more.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Snapshot deltas to apply, oldest first: child descriptors (vm-000001.vmdk), bare
    /// COWD/SEsparse extents or hosted sparse files.
    pub deltas: Vec<PathBuf>,

    /// libvirt connection URI (else LIBVIRT_DEFAULT_URI, else libvirt's default).
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    pub connect: Option<String>,

    /// Apply the deltas to a raw image file or block device instead of a libvirt domain.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["domain", "flat", "vmx"])]
    pub target: Option<PathBuf>,

    /// The libvirt domain to create or update.
    #[arg(short = 'd', long, value_name = "NAME")]
    pub domain: Option<String>,

    /// Storage pool for new volumes.
    #[arg(long, value_name = "POOL", default_value = "default")]
    pub pool: String,

    /// Base image to upload (stage 1): a base descriptor, a flat extent, or - for standard input.
    #[arg(long, value_name = "FILE|-")]
    pub flat: Option<PathBuf>,

    /// Disk capacity when the base comes from standard input (bytes, or 40G, 1.5 GiB, 512MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub capacity: Option<u64>,

    /// The VM's .vmx: import every disk, CPUs, memory, NICs and firmware as VMware had them.
    /// Stage 1 can read it straight from ESXi: ssh://[user@]host[:port]/vmfs/volumes/DS/VM/VM.vmx.
    #[arg(long, value_name = "FILE|URL", conflicts_with = "flat")]
    pub vmx: Option<PathBuf>,

    /// Guest operating system family (decides the device models).
    #[arg(long, value_enum)]
    pub os: Option<OsArg>,

    /// Memory in MiB.
    #[arg(long, value_name = "MiB")]
    pub memory: Option<u64>,

    /// Virtual CPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,

    /// libvirt network for the NIC; with --vmx, VMNET=NET maps a VMware network name.
    #[arg(long, value_name = "NET|VMNET=NET")]
    pub network: Vec<String>,

    /// Host bridge for the NIC instead of a libvirt network.
    #[arg(long, value_name = "BR", conflicts_with = "network")]
    pub bridge: Option<String>,

    /// MAC address of the NIC (kept from VMware so static IP configs still match).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,

    /// Guest CPU, tried alone and never replaced: host-passthrough, host-model, default (the
    /// hypervisor's), or a named model. Without it, stage 1 keeps the first of host-passthrough,
    /// host-model, default that starts on this host (nested KVMs refuse the first two).
    #[arg(long, value_name = "MODE")]
    pub cpu: Option<String>,

    /// Windows guests: give them every Hyper-V enlightenment the host's KVM offers
    /// (`<hyperv mode='passthrough'/>`) instead of the fixed list, tried alone. Without it,
    /// stage 1 keeps the first of the fixed list, passthrough, none that starts.
    #[arg(long)]
    pub hyperv_passthrough: bool,

    /// Do not start the domain after stage 2.
    #[arg(long)]
    pub no_start: bool,

    /// Print the domain XML and exit without touching the host.
    #[arg(long)]
    pub print_xml: bool,

    /// Say what would be created and written, change nothing; stage 1's starts with the
    /// preflight (a table of what will go wrong, each with its way out) and fails on its errors.
    #[arg(long)]
    pub dry_run: bool,

    /// How stage 2 (and --sync, --cutover from ESXi) writes into the volume.
    #[arg(long, value_enum, default_value_t = IoMode::Auto)]
    pub io: IoMode,

    /// With --io overlay: the pool for the qcow2 overlay volume (default: the disk's own pool;
    /// needed when that pool cannot hold qcow2 files, as a logical pool cannot).
    #[arg(long, value_name = "POOL")]
    pub overlay_pool: Option<String>,

    /// With --io overlay: limit the block commit to this many bytes per second (default: no
    /// limit), to spare a busy host's storage: bytes, or 50M, 1.5 GiB.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub commit_bandwidth: Option<u64>,

    /// Let descriptors name files outside their own folder (absolute paths, `..`, symlinks).
    #[arg(long)]
    pub allow_outside_paths: bool,

    /// Stage 1 over a disk whose base upload completed: upload the base again, destroying the
    /// deltas applied over it and everything the guest wrote since the hand-over.
    #[arg(long)]
    pub reupload_base: bool,

    /// Copy independent disks whole (they are not in any snapshot, so they cannot be delta-synced).
    #[arg(long)]
    pub copy_independent: bool,

    /// Windows guests: attach a small extra virtio disk in stage 2 so Windows installs the
    /// virtio storage driver before --switch-to-virtio.
    #[arg(long)]
    pub driver_disk: bool,

    /// Rewrite a defined domain's disks and NICs to virtio (MACs kept); drops the driver disk.
    #[arg(long, requires = "domain")]
    pub switch_to_virtio: bool,

    /// With --vmx ssh://: a pre-copy round while the VM runs on ESXi: a new migration snapshot
    /// freezes its deltas, which are applied now. Repeatable; each round leaves less for the cutover.
    #[arg(long, conflicts_with = "cutover")]
    pub sync: bool,

    /// With --vmx ssh://: the cutover: guest shutdown on ESXi, the final deltas read over ssh
    /// and applied, the domain started, the outage printed.
    #[arg(long)]
    pub cutover: bool,

    /// --cutover: how long to wait for the VM to power off after the guest shutdown request
    /// (seconds, or 90s, 5m, 1h 30m).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = crate::units::parse_timeout)]
    pub shutdown_timeout: std::time::Duration,

    /// A transfer (base upload, delta apply, overlay upload, a read over ssh) that moves no byte
    /// for this long is ended as stalled, with an error naming the disk and the rerun command;
    /// what it left stays marked, so the rerun converges (seconds, or 90s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = crate::units::parse_timeout)]
    pub stall_timeout: std::time::Duration,

    /// --cutover: power the VM off when the guest does not shut down in time (or has no VMware Tools).
    #[arg(long)]
    pub hard_off: bool,

    /// --cutover: power the VM on again at ESXi if anything fails after it was shut down.
    #[arg(long)]
    pub rollback_on_failure: bool,

    /// --sync/--cutover: deltas opened side by side (their tables read over the shared ssh
    /// connection); their grains are read --ssh-connections disks at a time.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub jobs: usize,

    /// With --vmx ssh://: ssh connections each base is read over (that many ranges, each written
    /// into the volume as it arrives), and the most final deltas of several disks read at once
    /// by --sync/--cutover; 1 to 16.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub ssh_connections: usize,

    #[command(flatten)]
    pub transport: TransportArgs,

    /// --cutover: remove the migration snapshots on ESXi once the domain runs here.
    #[arg(long)]
    pub remove_esx_snapshots: bool,

    /// Linux guests from a .vmx: `vmware` (the default) keeps VMware's NIC names (`ens192`)
    /// by giving each NIC the PCI slot number the .vmx records; `kvm` leaves the NICs to
    /// libvirt's addressing (`enp1s0`-style names).
    #[arg(long, value_enum, value_name = "vmware|kvm")]
    pub nic_names: Option<NicNames>,

    /// Linux guests: `virtio-scsi` (the default: disks stay `sdX` in VMware's order) or
    /// `virtio-blk` (`vdX`).
    #[arg(long, value_enum, value_name = "virtio-scsi|virtio-blk")]
    pub disk_bus: Option<DiskBusArg>,
}

/// `--transport`, `--nc-port`, `--nc-address`: how the bytes of files on ESXi travel.
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// With --vmx ssh://: `ssh` (the default), or `nc` for trusted networks: commands stay on
    /// ssh, the bytes come unencrypted over TCP from `dd | nc` on ESXi to a port this tool
    /// opens (the ESXi firewall needs an outbound rule for that port).
    #[arg(long, value_enum, value_name = "ssh|nc", default_value = "ssh")]
    pub transport: TransportArg,

    /// --transport nc: the TCP port this tool listens on (default 9001; 0: any free port).
    #[arg(long, value_name = "PORT")]
    pub nc_port: Option<u16>,

    /// --transport nc: the address ESXi connects to (default: this host's address as ESXi's
    /// sshd sees it, from $SSH_CONNECTION).
    #[arg(long, value_name = "ADDRESS")]
    pub nc_address: Option<String>,
}

/// The command line with `-q`/`-v` (and for `status`, `-c URI`) given before a subcommand
/// moved after its name: clap takes any argument before `plan` or `status` to mean an import,
/// and `status` would be read as a delta's file name.
pub fn hoist_before_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let mut lead = Vec::new();
    let mut i = 1;
    while let Some(a) = args.get(i).and_then(|a| a.to_str()) {
        let takes_value = matches!(a, "-c" | "--connect");
        let flag = matches!(a, "-q" | "--quiet" | "--verbose")
            || (a.len() > 1 && a.starts_with('-') && a[1..].chars().all(|c| c == 'v'))
            || a.starts_with("--connect=")
            || takes_value;
        if !flag {
            break;
        }
        let n = if takes_value { 2 } else { 1 };
        lead.extend(args.iter().skip(i).take(n).cloned());
        i += n;
    }
    let sub = args.get(i).and_then(|a| a.to_str());
    let connects = lead.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a.starts_with("-c") || a.starts_with("--connect"))
    });
    let movable =
        matches!(sub, Some("status" | "test-boot")) || (matches!(sub, Some("plan")) && !connects);
    if lead.is_empty() || !movable {
        return args;
    }
    let mut out = vec![args[0].clone(), args[i].clone()];
    out.extend(lead);
    out.extend(args[i + 1..].iter().cloned());
    out
}

impl Cli {
    /// -1 for `-q`, else the number of `-v`.
    pub fn verbosity(&self) -> i8 {
        if self.quiet {
            -1
        } else {
            self.verbose.min(10) as i8
        }
    }

    /// `--json` was asked for: standard output holds one JSON document.
    pub fn wants_json(&self) -> bool {
        self.json
            || matches!(&self.command, Some(Command::Plan(p)) if p.json)
            || matches!(&self.command, Some(Command::Probe(p)) if p.json)
    }

    /// What the run does, as `--json` names it.
    pub fn command_name(&self) -> &'static str {
        if matches!(self.command, Some(Command::TestBoot(_))) {
            "test-boot"
        } else if self.command.is_some() {
            "plan"
        } else if self.target.is_some() {
            "target"
        } else if self.switch_to_virtio {
            "switch-to-virtio"
        } else if self.sync {
            "sync"
        } else if self.cutover {
            "cutover"
        } else {
            "import"
        }
    }
}

pub use crate::units::parse_size;

/// `--shutdown-timeout` when not given (its `default_value`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// `--network` values: at most one plain libvirt network, and VMware-name mappings.
pub type NetworkArgs = (Option<String>, Vec<(String, String)>);

/// Split `--network` values into a plain network and VMware-name mappings.
pub fn network_args(values: &[String]) -> Result<NetworkArgs> {
    let mut plain = None;
    let mut map = Vec::new();
    for v in values {
        match v.split_once('=') {
            Some((from, to)) if !from.is_empty() && !to.is_empty() => {
                map.push((from.to_string(), to.to_string()))
            }
            Some(_) => bail!("--network {v:?}: expected VMNET=LIBVIRTNET"),
            None => {
                if plain.replace(v.clone()).is_some() {
                    bail!("--network given twice without a VMware network name; use VMNET=NET for several NICs");
                }
            }
        }
    }
    Ok((plain, map))
}

/// Check a MAC address's shape (six hex octets, as the .vmx reader accepts them) and that it
/// is a unicast address; returned lowercase.
pub fn normalise_mac(mac: &str) -> Result<String> {
    let Some(norm) = crate::vmx::normalize_mac(mac) else {
        bail!("--mac {mac:?}: expected six hex octets like 00:50:56:aa:bb:cc");
    };
    let first = u8::from_str_radix(&norm[..2], 16).context("mac")?;
    if first & 1 != 0 {
        bail!("--mac {norm}: a multicast address cannot be a NIC's address");
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hoisted(args: &[&str]) -> Vec<String> {
        let v = args.iter().map(OsString::from).collect();
        hoist_before_subcommand(v)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn flags_before_a_subcommand_move_after_its_name_and_imports_are_left_alone() {
        assert_eq!(
            hoisted(&["t", "-v", "-c", "qemu:///x", "status", "--domain", "d"]),
            ["t", "status", "-v", "-c", "qemu:///x", "--domain", "d"]
        );
        assert_eq!(
            hoisted(&["t", "-q", "plan", "check", "p.toml"]),
            ["t", "plan", "-q", "check", "p.toml"]
        );
        assert_eq!(hoisted(&["t", "-vv", "status"]), ["t", "status", "-vv"]);
        // An import, and `-c` before `plan` (which has no -c): as given, for clap to judge.
        for args in [
            &["t", "-v", "--domain", "d", "status"][..],
            &["t", "-c", "u", "plan", "check", "p.toml"],
            &["t", "-q", "./status"],
        ] {
            assert_eq!(hoisted(args), args);
        }
    }

    #[test]
    fn network_values_split_into_plain_and_mapped() {
        let (plain, map) = network_args(&["default".into(), "VM Network=br-lan".into()]).unwrap();
        assert_eq!(plain.as_deref(), Some("default"));
        assert_eq!(map, vec![("VM Network".to_string(), "br-lan".to_string())]);
        assert!(network_args(&["a".into(), "b".into()]).is_err());
    }

    #[test]
    fn macs_are_checked_and_lowercased() {
        assert_eq!(
            normalise_mac("00:50:56:AA:bb:0C").unwrap(),
            "00:50:56:aa:bb:0c"
        );
        assert!(normalise_mac("00:50:56:aa:bb").is_err());
        assert!(normalise_mac("01:50:56:aa:bb:cc").is_err());
    }
}
