//! An import as the command line asks for it ([`ImportPlan`]): every combination of options checked before any file is opened, any daemon asked or any snapshot taken.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Result};

use super::names;
use crate::cli::{Cli, IoMode, OsArg};
use crate::domain_xml::{self, NetSource};
use crate::vmdk::OpenOptions;
use crate::vmx::OsFamily;

/// Where stage 1's base comes from, as the command line names it (nothing opened yet).
pub enum BaseArg {
    /// `--flat -`, with `--capacity`.
    Stdin { capacity: u64 },
    /// `--flat PATH`, with `--capacity` when given (checked against the image once opened).
    File {
        path: PathBuf,
        capacity: Option<u64>,
    },
}

/// The `.vmx` of an import, as the command line names it (nothing read yet).
pub enum VmxArg {
    Local(PathBuf),
    /// `--vmx ssh://...` for stage 1 (a migration snapshot taken, the bases streamed).
    Esx(PathBuf),
}

/// Which run from ESXi.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Sync,
    Cutover,
}

/// The options of a run from ESXi, checked.
#[derive(Debug, Clone)]
pub struct EsxOptions {
    pub url: String,
    pub step: Step,
    pub shutdown_timeout: Duration,
    pub hard_off: bool,
    pub rollback: bool,
    pub jobs: usize,
    pub remove_snapshots: bool,
}

/// An import as the command line asks for it, every combination of options checked, before
/// any file is opened, any daemon asked or any snapshot taken ([`ImportPlan::from_cli`]).
pub struct ImportPlan {
    pub uri: Option<String>,
    pub domain: String,
    pub pool: String,
    pub open: OpenOptions,
    pub(super) base_arg: Option<BaseArg>,
    pub(crate) deltas: Vec<PathBuf>,
    pub(super) vmx_arg: Option<VmxArg>,
    pub(crate) os: Option<OsFamily>,
    pub(crate) memory_mib: Option<u64>,
    pub(crate) vcpus: Option<u32>,
    pub(crate) network: Option<String>,
    pub(crate) network_map: Vec<(String, String)>,
    pub(crate) bridge: Option<String>,
    pub(crate) mac: Option<String>,
    pub no_start: bool,
    pub print_xml: bool,
    pub dry_run: bool,
    pub io: IoMode,
    pub overlay_pool: Option<String>,
    pub commit_bandwidth: Option<u64>,
    pub(crate) copy_independent: bool,
    pub(crate) driver_disk: bool,
    pub(crate) hyperv_passthrough: bool,
    pub(crate) cpu: Option<domain_xml::CpuMode>,
    pub(crate) reupload_base: bool,
    /// `--sync` or `--cutover` from an ESXi host.
    pub(crate) esx: Option<EsxOptions>,
    /// How the bytes of files on ESXi come here.
    pub(crate) transfer: crate::esx::transfer::TransferOptions,
    pub(crate) naming: names::Naming,
}

impl ImportPlan {
    /// Check the command line's combination of options. Pure: no file, daemon or host is
    /// touched, so a refusal here changes nothing anywhere.
    pub fn from_cli(cli: &Cli) -> Result<ImportPlan> {
        let domain = cli.domain.clone().ok_or_else(|| {
            anyhow!("--domain NAME is required (or --target PATH for a raw image)")
        })?;
        let base_arg = base_arg(cli)?;
        let esx = esx_options(cli)?;
        let vmx_arg = vmx_arg(cli, esx.is_some())?;
        let transfer = transfer_options(cli)?;
        check_stages(cli, base_arg.is_some(), vmx_arg.is_some(), esx.is_some())?;
        let (network, network_map) = crate::cli::network_args(&cli.network)?;
        let mac = cli
            .mac
            .as_deref()
            .map(crate::cli::normalise_mac)
            .transpose()?;
        let os = cli.os.map(|o| match o {
            OsArg::Linux => OsFamily::Linux,
            OsArg::Windows => OsFamily::Windows,
        });
        let naming = names::Naming {
            nics: cli.nic_names,
            disk_bus: cli.disk_bus,
        };
        // The .vmx's own guest OS is checked again once it is read.
        naming.check_options(os, vmx_arg.is_some())?;
        Ok(ImportPlan {
            uri: cli.connect.clone(),
            domain,
            pool: cli.pool.clone(),
            open: OpenOptions {
                allow_outside_paths: cli.allow_outside_paths,
            },
            base_arg,
            deltas: cli.deltas.clone(),
            vmx_arg,
            os,
            memory_mib: cli.memory,
            vcpus: cli.vcpus,
            network,
            network_map,
            bridge: cli.bridge.clone(),
            mac,
            no_start: cli.no_start,
            print_xml: cli.print_xml,
            dry_run: cli.dry_run,
            io: cli.io,
            overlay_pool: cli.overlay_pool.clone(),
            commit_bandwidth: cli.commit_bandwidth,
            copy_independent: cli.copy_independent,
            driver_disk: cli.driver_disk,
            hyperv_passthrough: cli.hyperv_passthrough,
            cpu: cli.cpu.as_deref().map(cpu_mode),
            reupload_base: cli.reupload_base,
            esx,
            transfer,
            naming,
        })
    }
}

/// `--vmx`, checked without reading it: an `ssh://` URL must parse. None with `--sync` or
/// `--cutover` (`esx`), which read the VM's `.vmx` on its host themselves.
fn vmx_arg(cli: &Cli, esx: bool) -> Result<Option<VmxArg>> {
    Ok(match &cli.vmx {
        Some(_) if esx => None,
        Some(p) if crate::esx::is_ssh(p) => {
            crate::esx::ssh::SshUrl::parse(&p.to_string_lossy())?;
            Some(VmxArg::Esx(p.clone()))
        }
        Some(p) => Some(VmxArg::Local(p.clone())),
        None => None,
    })
}

/// The stages the options ask for, checked to go together: something to do, and no delta
/// files beside a `.vmx` or `--reupload-base`, no shaping options with `--sync`/`--cutover`.
fn check_stages(cli: &Cli, base: bool, vmx: bool, esx: bool) -> Result<()> {
    let shaping = cli.cpu.is_some()
        || cli.memory.is_some()
        || cli.vcpus.is_some()
        || cli.os.is_some()
        || cli.mac.is_some()
        || !cli.network.is_empty()
        || cli.bridge.is_some()
        || cli.hyperv_passthrough;
    ensure!(
        !esx || !shaping,
        "--sync and --cutover change no settings of the domain: give the options that shape it to stage 1, or to a run on the shut-off domain without them"
    );
    ensure!(
        base || !cli.deltas.is_empty() || vmx || esx || cli.print_xml || shaping,
        "nothing to do: give --flat BASE (stage 1), delta files (stage 2), --vmx, or options that shape the domain"
    );
    ensure!(
        !vmx || cli.deltas.is_empty(),
        "with --vmx the deltas come from the .vmx's disks: give no delta files"
    );
    ensure!(
        !cli.reupload_base || ((base || vmx) && cli.deltas.is_empty()),
        "--reupload-base goes with stage 1 alone (--flat BASE or --vmx), without delta files"
    );
    Ok(())
}

fn cpu_mode(c: &str) -> domain_xml::CpuMode {
    match c {
        "host-passthrough" => domain_xml::CpuMode::HostPassthrough,
        "host-model" => domain_xml::CpuMode::HostModel,
        "default" => domain_xml::CpuMode::Default,
        model => domain_xml::CpuMode::Model(model.to_string()),
    }
}

/// `--flat` and `--capacity`, checked without opening anything.
fn base_arg(cli: &Cli) -> Result<Option<BaseArg>> {
    Ok(match &cli.flat {
        Some(p) if p.as_os_str() == "-" => {
            let capacity = cli.capacity.ok_or_else(|| {
                anyhow!("--flat - reads standard input: give the disk's size with --capacity")
            })?;
            ensure!(
                capacity > 0 && capacity % 512 == 0,
                "--capacity {capacity}: must be a positive multiple of 512 bytes"
            );
            Some(BaseArg::Stdin { capacity })
        }
        Some(p) => Some(BaseArg::File {
            path: p.clone(),
            capacity: cli.capacity,
        }),
        None => None,
    })
}

/// `--ssh-connections` and `--transport`, checked: other than their defaults they go with
/// `--vmx ssh://` alone.
fn transfer_options(cli: &Cli) -> Result<crate::esx::transfer::TransferOptions> {
    use crate::esx::transfer::{TransferOptions, DEFAULT_CONNECTIONS};
    let t = &cli.transport;
    let opts = TransferOptions::check(
        cli.ssh_connections,
        t.transport == crate::cli::TransportArg::Nc,
        t.nc_port,
        t.nc_address.as_deref(),
    )?;
    let from_esx = cli.vmx.as_deref().is_some_and(crate::esx::is_ssh);
    ensure!(
        from_esx
            || opts == TransferOptions::default() && cli.ssh_connections == DEFAULT_CONNECTIONS,
        "--ssh-connections and --transport go with --vmx ssh://"
    );
    Ok(opts)
}

/// `--sync`/`--cutover` and their options, checked: they go with `--vmx ssh://` alone.
fn esx_options(cli: &Cli) -> Result<Option<EsxOptions>> {
    let cutover_only = [
        (cli.hard_off, "--hard-off"),
        (cli.rollback_on_failure, "--rollback-on-failure"),
        (cli.remove_esx_snapshots, "--remove-esx-snapshots"),
        (
            cli.shutdown_timeout != crate::cli::DEFAULT_SHUTDOWN_TIMEOUT,
            "--shutdown-timeout",
        ),
    ];
    if let Some((_, name)) = cutover_only
        .iter()
        .find(|(given, _)| *given && !cli.cutover)
    {
        bail!("{name} goes with --cutover");
    }
    if !cli.sync && !cli.cutover {
        return Ok(None);
    }
    let step = if cli.sync { "--sync" } else { "--cutover" };
    let url = match &cli.vmx {
        Some(p) if crate::esx::is_ssh(p) => p.to_string_lossy().into_owned(),
        _ => bail!("{step} drives the VM on its ESXi host: give --vmx ssh://[user@]host/vmfs/volumes/DS/VM/VM.vmx"),
    };
    ensure!(
        cli.deltas.is_empty(),
        "{step}: the deltas come from ESXi: give no delta files"
    );
    ensure!(
        !cli.reupload_base && cli.flat.is_none(),
        "{step} goes without --flat and --reupload-base"
    );
    ensure!(!cli.no_start, "--cutover starts the domain: without --no-start (a cutover that does not start it is a --sync)");
    ensure!(cli.jobs >= 1, "--jobs {}: at least 1", cli.jobs);
    crate::esx::ssh::SshUrl::parse(&url)?;
    Ok(Some(EsxOptions {
        url,
        step: if cli.sync { Step::Sync } else { Step::Cutover },
        shutdown_timeout: cli.shutdown_timeout,
        hard_off: cli.hard_off,
        rollback: cli.rollback_on_failure,
        jobs: cli.jobs,
        remove_snapshots: cli.remove_esx_snapshots,
    }))
}

impl ImportPlan {
    /// Whether any option that shapes the domain was given.
    pub(super) fn shapes_domain(&self) -> bool {
        self.cpu.is_some()
            || self.memory_mib.is_some()
            || self.vcpus.is_some()
            || self.os.is_some()
            || self.mac.is_some()
            || self.network.is_some()
            || !self.network_map.is_empty()
            || self.bridge.is_some()
            || self.hyperv_passthrough
            || self.naming.given()
    }

    /// The `.vmx` named by `--vmx` (for `--sync`/`--cutover`, their `ssh://` URL), and
    /// whether it is on an ESXi host; nothing read.
    pub fn vmx_source(&self) -> Option<(&std::path::Path, bool)> {
        match (&self.vmx_arg, &self.esx) {
            (Some(VmxArg::Local(p)), _) => Some((p, false)),
            (Some(VmxArg::Esx(p)), _) => Some((p, true)),
            (None, Some(o)) => Some((std::path::Path::new(&o.url), true)),
            (None, None) => None,
        }
    }

    /// `--flat`'s file (None for standard input) and `--capacity`, when stage 1 has a base.
    pub fn base_source(&self) -> Option<(Option<&std::path::Path>, Option<u64>)> {
        match self.base_arg.as_ref()? {
            BaseArg::Stdin { capacity } => Some((None, Some(*capacity))),
            BaseArg::File { path, capacity } => Some((Some(path), *capacity)),
        }
    }

    /// A dry run of stage 1: `--dry-run` with `--vmx` or `--flat`, not `--sync`/`--cutover`.
    pub fn is_stage_one_dry_run(&self) -> bool {
        self.dry_run && self.esx.is_none() && (self.vmx_arg.is_some() || self.base_arg.is_some())
    }

    /// `--copy-independent` was given.
    pub fn copies_independent(&self) -> bool {
        self.copy_independent
    }

    /// The network asked for the NIC on VMware network `vmware_net` (None: the plain one).
    pub(super) fn given_net(&self, vmware_net: Option<&str>) -> Option<NetSource> {
        if let Some((_, to)) =
            vmware_net.and_then(|n| self.network_map.iter().find(|(from, _)| from == n))
        {
            return Some(NetSource::Network(to.clone()));
        }
        match (&self.bridge, &self.network) {
            (Some(br), _) => Some(NetSource::Bridge(br.clone())),
            (None, Some(net)) => Some(NetSource::Network(net.clone())),
            (None, None) => None,
        }
    }

    /// The network the NIC on VMware network `vmware_net` goes on in a new domain: the one
    /// asked for ([`Self::given_net`]), else libvirt's `default`.
    pub(crate) fn net_source(&self, vmware_net: Option<&str>) -> NetSource {
        self.given_net(vmware_net)
            .unwrap_or_else(|| NetSource::Network("default".to_string()))
    }
}
