//! The migration on a libvirt host: stage 1 (volume, domain, base upload) and stage 2 (delta apply, start), each checked against the import state in the domain's metadata.

mod esxone;
pub mod fromesx;
mod guards;
mod names;
pub mod overlay;
mod reshape;
pub mod shape;
pub mod trial;
pub mod write;

use crate::cli::{Cli, IoMode, OsArg};
use crate::domain_xml::{self, DiskSource as SpecDisk, DomainSpec, NetSource, NicSpec};
use crate::image_read::ImageRead;
use crate::libvirt::{self, Conn, DiskKind, Dom, Vol};
use crate::progress::Transfer;
use crate::state::{self, AppliedDelta, DiskState, ImportState};
use crate::state::{lifecycle, metadata};
use crate::vmdk::{self, BaseImage, Chain, DiskId, LayerInfo, OpenOptions, Parent};
use crate::vmx::{self, Firmware, OsFamily, VmxConfig};
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::PathBuf;
use std::time::Instant;

/// Memory and CPUs of a new domain when neither the .vmx nor the command line says.
const DEFAULT_MEMORY_MIB: u64 = 1024;
const DEFAULT_VCPUS: u32 = 1;

/// Where stage 1 reads the base image from.
enum BaseInput {
    Image(BaseImage),
    Stdin {
        capacity: u64,
    },
    /// On an ESXi host, streamed over ssh.
    Remote(crate::esx::RemoteBase),
}

impl BaseInput {
    fn capacity(&self) -> u64 {
        match self {
            BaseInput::Image(b) => b.capacity,
            BaseInput::Stdin { capacity } => *capacity,
            BaseInput::Remote(r) => r.capacity,
        }
    }

    fn cid(&self) -> Option<u32> {
        match self {
            BaseInput::Image(b) => b.cid,
            BaseInput::Stdin { .. } => None,
            BaseInput::Remote(r) => r.cid,
        }
    }

    fn name(&self) -> String {
        match self {
            BaseInput::Image(b) => b.path.display().to_string(),
            BaseInput::Stdin { .. } => "standard input".to_string(),
            BaseInput::Remote(r) => r.name(),
        }
    }

    /// Where a later run can find the base again: its absolute path (none for a pipe).
    fn location(&self) -> Option<String> {
        match self {
            BaseInput::Image(b) => Some(
                std::fs::canonicalize(&b.path)
                    .unwrap_or_else(|_| b.path.clone())
                    .display()
                    .to_string(),
            ),
            BaseInput::Stdin { .. } => None,
            BaseInput::Remote(r) => Some(r.name()),
        }
    }

    fn reader(&self) -> Result<Box<dyn ImageRead + Send>> {
        match self {
            BaseInput::Image(b) => b
                .reader()
                .with_context(|| format!("{}: opening for reading", b.path.display())),
            BaseInput::Stdin { .. } => Ok(Box::new(std::io::stdin())),
            BaseInput::Remote(r) => r.reader(),
        }
    }
}

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

/// An import as the command line asks for it, every combination of options checked, before
/// any file is opened, any daemon asked or any snapshot taken ([`ImportPlan::from_cli`]).
pub struct ImportPlan {
    pub uri: Option<String>,
    pub domain: String,
    pub pool: String,
    pub open: OpenOptions,
    base_arg: Option<BaseArg>,
    pub(crate) deltas: Vec<PathBuf>,
    vmx_arg: Option<VmxArg>,
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
    pub(crate) esx: Option<fromesx::EsxOptions>,
    pub(crate) naming: names::Naming,
}

/// The import with its inputs open: the base image, the parsed `.vmx`, the bases on ESXi.
/// Reads the plan's fields through `Deref`.
pub struct Request {
    plan: ImportPlan,
    base: Option<BaseInput>,
    vmx: Option<(PathBuf, VmxConfig)>,
    /// With `--vmx ssh://...`: every disk's base on the ESXi host.
    remote: Option<Vec<crate::esx::RemoteBase>>,
}

impl std::ops::Deref for Request {
    type Target = ImportPlan;
    fn deref(&self) -> &ImportPlan {
        &self.plan
    }
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
        let vmx_arg = match &cli.vmx {
            Some(_) if esx.is_some() => None,
            Some(p) if crate::esx::is_ssh(p) => {
                crate::esx::ssh::SshUrl::parse(&p.to_string_lossy())?;
                Some(VmxArg::Esx(p.clone()))
            }
            Some(p) => Some(VmxArg::Local(p.clone())),
            None => None,
        };
        let shaping = cli.cpu.is_some()
            || cli.memory.is_some()
            || cli.vcpus.is_some()
            || cli.os.is_some()
            || cli.mac.is_some()
            || !cli.network.is_empty()
            || cli.bridge.is_some()
            || cli.hyperv_passthrough;
        ensure!(
            esx.is_none() || !shaping,
            "--sync and --cutover change no settings of the domain: give the options that shape it to stage 1, or to a run on the shut-off domain without them"
        );
        ensure!(
            base_arg.is_some() || !cli.deltas.is_empty() || vmx_arg.is_some() || esx.is_some() || cli.print_xml || shaping,
            "nothing to do: give --flat BASE (stage 1), delta files (stage 2), --vmx, or options that shape the domain"
        );
        ensure!(
            vmx_arg.is_none() || cli.deltas.is_empty(),
            "with --vmx the deltas come from the .vmx's disks: give no delta files"
        );
        ensure!(
            !cli.reupload_base
                || ((base_arg.is_some() || vmx_arg.is_some()) && cli.deltas.is_empty()),
            "--reupload-base goes with stage 1 alone (--flat BASE or --vmx), without delta files"
        );
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
            naming,
        })
    }
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

impl Request {
    /// Open the plan's inputs, in an order that leaves nothing behind when one is refused: local
    /// files first; for `--vmx ssh://`, every check of the libvirt side and of the VM's `.vmx`
    /// before the migration snapshot is taken.
    pub fn open(plan: ImportPlan) -> Result<Request> {
        let base = match &plan.base_arg {
            Some(BaseArg::Stdin { capacity }) => Some(BaseInput::Stdin {
                capacity: *capacity,
            }),
            Some(BaseArg::File { path, capacity }) => {
                let b = BaseImage::open(path, &plan.open)?;
                if let Some(c) = capacity {
                    ensure!(
                        *c == b.capacity,
                        "--capacity {c} differs from {}'s capacity {}",
                        path.display(),
                        b.capacity
                    );
                }
                Some(BaseInput::Image(b))
            }
            None => None,
        };
        let (vmx, remote) = match &plan.vmx_arg {
            Some(VmxArg::Local(p)) => {
                let vmx = vmx::parse_vmx(p)?;
                // What the domain will not get (CD-ROMs, ignored devices) is said, not dropped silently.
                for note in &vmx.notes {
                    crate::note!("{}: {note}", p.display());
                }
                plan.naming.check(plan.os, Some(&vmx))?;
                (Some((p.clone(), vmx)), None)
            }
            Some(VmxArg::Esx(p)) => {
                let (vmx, bases) = esxone::open_stage_one(&plan, p)?;
                (Some((p.clone(), vmx)), Some(bases))
            }
            None => (None, None),
        };
        Ok(Request {
            plan,
            base,
            vmx,
            remote,
        })
    }
}

/// `--sync`/`--cutover` and their options, checked: they go with `--vmx ssh://` alone.
fn esx_options(cli: &Cli) -> Result<Option<fromesx::EsxOptions>> {
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
    Ok(Some(fromesx::EsxOptions {
        url,
        step: if cli.sync {
            fromesx::Step::Sync
        } else {
            fromesx::Step::Cutover
        },
        shutdown_timeout: cli.shutdown_timeout,
        hard_off: cli.hard_off,
        rollback: cli.rollback_on_failure,
        jobs: cli.jobs,
        remove_snapshots: cli.remove_esx_snapshots,
    }))
}

/// One disk of the import: where its base comes from (stage 1) and its deltas (stage 2).
struct DiskPlan {
    base: Option<BaseInput>,
    deltas: Vec<PathBuf>,
    /// An independent disk copied whole (it is in no snapshot).
    copy_whole: bool,
}

/// Run the import the plan describes: its inputs opened ([`Request::open`]), then the stages.
pub fn run(plan: ImportPlan) -> Result<()> {
    let req = Request::open(plan)?;
    overlay::mark_start();
    let conn = libvirt::connect(req.uri.as_deref())?;
    if let Some(o) = &req.esx {
        return fromesx::run(&req, &conn, o).map_err(|e| libvirt::explain(&conn, e));
    }
    // A clone shares the connection: asked afterwards whether the daemon is still there.
    run_on(conn.clone(), req).map_err(|e| libvirt::explain(&conn, e))
}

fn run_on(conn: Conn, mut req: Request) -> Result<()> {
    let dom = conn.domain(&req.domain)?;
    let mut state = match &dom {
        Some(d) => metadata::read(d)?,
        None => None,
    };
    let base_done = state.as_ref().is_some_and(ImportState::every_base_uploaded);
    let (stage1, stage2) = match &req.vmx {
        // The same command does stage 1 until every base is uploaded, then stage 2.
        Some(_) => (
            !base_done || req.reupload_base,
            base_done && !req.reupload_base,
        ),
        None => (req.base.is_some(), !req.deltas.is_empty()),
    };
    let disks = plan_disks(&mut req)?;

    if req.print_xml {
        let spec = new_domain_spec(&req, &conn, &volume_names(&req, disks.len()))?;
        crate::say_raw!("{}", domain_xml::render(&spec)?);
        return Ok(());
    }
    if let Some(d) = &dom {
        // A disk left on a qcow2 overlay (--io overlay) is committed before anything else.
        if overlay::resume(&req, &conn, d, state.as_mut())? {
            return Ok(());
        }
        ensure!(
            !d.is_active()?,
            "domain '{}' is running: {}; shut it down first",
            req.domain,
            if stage1 || stage2 {
                "writing under a live guest corrupts it"
            } else {
                "the options that shape it apply to a shut-off domain only"
            }
        );
    }
    // Each stage is checked whole before the shaping options are applied: a refused stage 1
    // or stage 2 changes nothing, neither the volumes nor the domain's XML nor its import state.
    let checked_one = if stage1 {
        check_stage_one(&req, &conn, dom.as_ref(), state.as_ref(), &disks)?
    } else {
        None
    };
    let checked = if stage2 && !stage1 {
        let (Some(d), Some(st)) = (&dom, &state) else {
            return Err(missing_stage_one(&req, &conn, dom.is_none()));
        };
        Some(check_stage_two(&req, &conn, Some(d), st, &disks)?)
    } else {
        None
    };
    // Options that shape the domain, given for one that exists: applied or refused, never ignored.
    let dom = match (dom, state.as_mut()) {
        (Some(d), Some(st)) if !stage1 => Some(reshape::apply_and_prove(&req, &conn, d, st)?),
        (Some(d), st) => match reshape::apply(&req, &conn, &d, st.as_deref())? {
            // Stage 1's trial start, after the upload, proves the new definition.
            Some((new, _)) => Some(new),
            None => Some(d),
        },
        (None, _) => None,
    };
    let (dom, mut state) = if stage1 {
        let (dom, mut st) = stage_one(&req, &conn, dom, state, &disks, checked_one)?;
        (prove_stage_one(&req, &conn, dom, &mut st)?, st)
    } else {
        let dom = dom.ok_or_else(|| missing_stage_one(&req, &conn, true))?;
        let state = state.ok_or_else(|| missing_stage_one(&req, &conn, false))?;
        (Some(dom), state)
    };
    let dom = if stage2 && !stage1 {
        prove_before_stage_two(&req, &conn, dom, &mut state)?.0
    } else {
        dom
    };
    if stage2 {
        let checked = match checked {
            Some(c) => c,
            None => check_stage_two(&req, &conn, dom.as_ref(), &state, &disks)?,
        };
        stage_two(&req, &conn, dom.as_ref(), &mut state, &disks, checked)?;
    }
    if req.dry_run {
        return Ok(());
    }
    let dom = dom.expect("a domain exists after stage 1");
    if stage2 && req.driver_disk {
        attach_driver_disk(&req, &conn, &dom)?;
    }
    if stage2 && req.no_start {
        hand_over_without_start(&conn, &dom, &mut state)?;
    }
    if stage2 && !req.no_start {
        ensure!(
            state.every_disk_complete(),
            "domain '{}': a disk is not completely written; not starting it",
            req.domain
        );
        crate::interrupt::check()?;
        hand_over_and_start(&conn, &dom, &mut state)?;
        log::info!("domain '{}' started", req.domain);
        overlay::after_start(&req, &conn, &dom, &state)?;
    } else if stage1 && !stage2 {
        log::info!(
            "stage 1 done: after the VM is shut down on VMware, copy its delta(s) and run stage 2"
        );
    }
    let uri = conn.uri();
    log::info!("follow up with:\n  virsh -c {uri} console {}\n  virsh -c {uri} domstate {}\n  virsh -c {uri} metadata {} {}", req.domain, req.domain, req.domain, state::NS_URI);
    Ok(())
}

/// The error for a run that needs stage 1 first: the domain does not exist, or has no import
/// state.
fn missing_stage_one(req: &Request, conn: &Conn, no_domain: bool) -> anyhow::Error {
    if no_domain {
        anyhow!(
            "domain '{}' does not exist on {}: run stage 1 (--flat BASE) first",
            req.domain,
            conn.uri()
        )
    } else {
        anyhow!("domain '{}' has no import state: its base was not uploaded by virt-vmdkimport (run stage 1 with --flat)", req.domain)
    }
}

/// Record that stage 2 finished with `--no-start`: the deltas in the volumes are not written
/// again, since whoever starts the domain next hands the disk to its guest.
fn hand_over_without_start(conn: &Conn, dom: &Dom, st: &mut ImportState) -> Result<()> {
    let mtimes = volume_mtimes(conn, st)?;
    lifecycle::hand_over(
        st,
        state::HandOverHow::NoStart,
        lifecycle::utc_now(),
        mtimes,
    );
    metadata::write(dom, st)?;
    log::info!(
        "handed over (--no-start): the deltas applied are final; only newer deltas can follow"
    );
    Ok(())
}

/// Record the hand-over, then start: recorded first, so a guest never runs on a disk the
/// state would let stage 2 write again. A start that fails puts the record back.
fn hand_over_and_start(conn: &Conn, dom: &Dom, st: &mut ImportState) -> Result<()> {
    let phase = crate::report::begin("start");
    let before = st.clone();
    let mtimes = volume_mtimes(conn, st)?;
    lifecycle::hand_over(
        st,
        state::HandOverHow::Started,
        lifecycle::utc_now(),
        mtimes,
    );
    metadata::write(dom, st)?;
    if let Err(e) = trial::start_after_stage_two(conn, dom) {
        *st = before;
        metadata::write(dom, st)?;
        return Err(e);
    }
    phase.done(None, None);
    Ok(())
}

/// Every disk's volume modification time now, for the hand-over record.
fn volume_mtimes(conn: &Conn, st: &ImportState) -> Result<Vec<Option<String>>> {
    st.disks
        .iter()
        .map(|d| guards::volume_mtime(&conn.pool(&d.pool)?.volume(&d.volume)?))
        .collect()
}

/// Stage 1's trial start, once every base upload is complete: the domain started paused and
/// destroyed, falling back along the ladder when this tool defined it (see [`trial::prove`]).
/// The outcome goes into the import state whether it starts or not.
fn prove_stage_one(
    req: &Request,
    conn: &Conn,
    dom: Option<Dom>,
    st: &mut ImportState,
) -> Result<Option<Dom>> {
    let Some(mut dom) = dom else {
        return Ok(None);
    };
    if req.dry_run || !st.every_base_uploaded() {
        return Ok(Some(dom));
    }
    let fixed = trial::Fixed {
        cpu: req.cpu.is_some(),
        hyperv: req.hyperv_passthrough,
    };
    let ours = st.defined_by_tool == Some(true);
    let phase = crate::report::begin("trial start");
    let proved = trial::prove(conn, &mut dom, fixed, ours, st);
    metadata::write(&dom, st)?;
    proved?;
    phase.done(None, None);
    Ok(Some(dom))
}

/// A domain's definition and import state as a run found them, before its trial start
/// redefined the domain (the ladder's steps): put back when the run is refused after all.
pub(super) struct Found {
    xml: String,
    state: ImportState,
}

impl Found {
    fn of(dom: &Dom, st: &ImportState) -> Result<Found> {
        Ok(Found {
            xml: dom.xml()?,
            state: st.clone(),
        })
    }

    /// The definition and the import state back as they were. The state goes back through
    /// the metadata call as well: a redefinition alone gives it libvirt's indentation.
    pub(super) fn put_back(self, conn: &Conn, st: &mut ImportState) -> Result<Dom> {
        let dom = conn
            .define_domain(&self.xml)
            .context("putting the domain's previous definition back")?;
        metadata::write(&dom, &self.state)?;
        *st = self.state;
        Ok(dom)
    }
}

/// Stage 2 on a domain that stage 1 never proved (its trial start failed, or the import
/// predates it): the trial start now, after every check and before anything is marked or
/// written, so a domain that cannot start is refused while the disks and the VMware side are
/// still as they were. A refusal also puts back the definition and the import state the run
/// found (the ladder may have stepped on the way): a refused command changes nothing.
/// Returns the domain to go on with and, when the trial ran, what the run found, for a caller
/// that can still be refused before it writes (`--sync`'s snapshot, the cutover's shutdown).
fn prove_before_stage_two(
    req: &Request,
    conn: &Conn,
    dom: Option<Dom>,
    st: &mut ImportState,
) -> Result<(Option<Dom>, Option<Found>)> {
    let Some(d) = &dom else {
        return Ok((None, None));
    };
    if req.dry_run || st.trial.as_ref().is_some_and(|t| t.started) {
        return Ok((dom, None));
    }
    log::info!(
        "domain '{}': stage 1 did not prove that it starts; trial start before anything is written",
        req.domain
    );
    let found = Found::of(d, st)?;
    match prove_stage_one(req, conn, dom, st) {
        Ok(dom) => Ok((dom, Some(found))),
        Err(e) => {
            found.put_back(conn, st)?;
            Err(e.context(format!(
                "stage 2 refused, nothing written: domain '{}' does not start",
                req.domain
            )))
        }
    }
}

/// Size of the driver-install disk: Windows only needs to see a virtio disk, not use it.
const DRIVER_DISK_BYTES: u64 = 64 << 20;

/// Create the driver-install volume and attach it as a virtio disk (once), so a Windows guest
/// installs its virtio storage driver before `--switch-to-virtio` moves its boot disk.
fn attach_driver_disk(req: &Request, conn: &Conn, dom: &Dom) -> Result<()> {
    let volume = format!("{}-driverdisk", req.domain);
    ensure_volume(conn, &req.pool, &volume, DRIVER_DISK_BYTES)?;
    let source = SpecDisk::Volume {
        pool: req.pool.clone(),
        volume,
    };
    let xml = dom.xml()?;
    let with_disk = domain_xml::add_driver_disk(&xml, &source)?;
    if with_disk != xml {
        conn.define_domain(&with_disk)?;
        log::info!("attached the driver-install virtio disk; after the virtio-win drivers are installed, run --switch-to-virtio");
    }
    Ok(())
}

fn plan_disks(req: &mut Request) -> Result<Vec<DiskPlan>> {
    if let Some(bases) = req.remote.take() {
        return Ok(bases
            .into_iter()
            .map(|b| DiskPlan {
                base: Some(BaseInput::Remote(b)),
                deltas: Vec::new(),
                copy_whole: false,
            })
            .collect());
    }
    let Some((vmx_path, vmx)) = &req.vmx else {
        return Ok(vec![DiskPlan {
            base: req.base.take(),
            deltas: req.deltas.clone(),
            copy_whole: false,
        }]);
    };
    ensure!(
        !vmx.disks.is_empty(),
        "{}: the VM has no disks",
        vmx_path.display()
    );
    let mut plans = Vec::new();
    for disk in &vmx.disks {
        if disk.independent && !req.copy_independent {
            bail!(
                "{}: disk {} ({}) is independent: it is in no snapshot, so no delta can bring it up to date; \
                 give --copy-independent to copy it whole after the VM is shut down",
                vmx_path.display(),
                disk.slot(),
                disk.file_name.display()
            );
        }
        guards::vmx_disk_inside(vmx_path, disk, req.open.allow_outside_paths)?;
        let slot = || format!("{}: disk {}", vmx_path.display(), disk.slot());
        let resolved = vmdk::resolve_chain(&disk.file_name, &req.open).with_context(slot)?;
        let base = BaseImage::open(&resolved.base, &req.open).with_context(slot)?;
        plans.push(DiskPlan {
            base: Some(BaseInput::Image(base)),
            deltas: resolved.deltas,
            copy_whole: disk.independent,
        });
    }
    Ok(plans)
}

fn volume_names(req: &Request, n: usize) -> Vec<SpecDisk> {
    (0..n)
        .map(|i| SpecDisk::Volume {
            pool: req.pool.clone(),
            volume: format!("{}-disk{i}", req.domain),
        })
        .collect()
}

/// What stage 1 does to the disks of a domain that exists, checked: each disk's volume, what
/// happens to its base, and the disk's state as the upload starts from it.
struct BaseWork {
    vols: Vec<Vol>,
    steps: Vec<lifecycle::BaseStep>,
    disks: Vec<DiskState>,
}

/// Every check of stage 1 on a domain that exists (defined by other tooling, or by an earlier
/// run), with nothing changed: enough disks, each volume raw, the lifecycle's rule for each
/// base (a completed upload is not done again unasked), each volume large enough. It runs
/// before the shaping options are applied, so a refused stage 1 leaves the domain's XML and
/// its import state as they were. None when there is no domain yet (stage 1 defines it).
fn check_stage_one(
    req: &Request,
    conn: &Conn,
    dom: Option<&Dom>,
    state: Option<&ImportState>,
    disks: &[DiskPlan],
) -> Result<Option<BaseWork>> {
    let Some(dom) = dom else { return Ok(None) };
    // Defined by someone else (or an earlier run): write into its disks, keep its XML.
    let sources: Vec<_> = dom
        .disk_sources()?
        .into_iter()
        .filter(|d| d.device == "disk")
        .collect();
    ensure!(
        sources.len() >= disks.len(),
        "domain '{}' has {} disks; the import needs {}",
        req.domain,
        sources.len(),
        disks.len()
    );
    let xml = dom.xml()?;
    let mut work = BaseWork {
        vols: Vec::new(),
        steps: Vec::new(),
        disks: Vec::new(),
    };
    for (i, plan) in disks.iter().enumerate() {
        let old = state.and_then(|s| s.disks.get(i));
        let vol = match old {
            Some(ds) => conn.pool(&ds.pool)?.volume(&ds.volume)?,
            None => volume_of(conn, &sources[i].kind).with_context(|| {
                format!("domain '{}' disk {}", req.domain, sources[i].target_dev)
            })?,
        };
        guards::ensure_raw(&req.domain, &xml, &sources[i].target_dev, &vol)?;
        let step = base_step(req, &sources[i].target_dev, old, state)?;
        work.disks.push(match (&step, old) {
            (lifecycle::BaseStep::Keep, Some(ds)) => ds.clone(),
            _ => disk_state(&sources[i].target_dev, &vol, plan, old)?,
        });
        work.steps.push(step);
        work.vols.push(vol);
    }
    Ok(Some(work))
}

/// Stage 1: volumes and domain (created, or found when other tooling defined them and checked
/// by [`check_stage_one`]), then every base uploaded through one sparse stream each. The
/// state says "not uploaded" until the stream finished, so a broken upload is never taken for
/// a complete one.
fn stage_one(
    req: &Request,
    conn: &Conn,
    dom: Option<Dom>,
    state: Option<ImportState>,
    disks: &[DiskPlan],
    checked: Option<BaseWork>,
) -> Result<(Option<Dom>, ImportState)> {
    let mut vols = Vec::new();
    let mut steps = Vec::new();
    let mut st = ImportState::default();
    trial::carry_over(&mut st, state.as_ref(), &req.domain);
    let dom = match dom {
        Some(dom) => {
            let work = checked.expect("check_stage_one checked the domain that exists");
            let old = state.as_ref().map_or(&[][..], |s| &s.disks[..]);
            for (i, ds) in old.iter().enumerate().take(disks.len()) {
                if work.steps[i] != lifecycle::BaseStep::Keep && !req.dry_run {
                    repair_interrupted_base(&work.vols[i], ds, &disks[i])?;
                }
            }
            (vols, steps, st.disks) = (work.vols, work.steps, work.disks);
            Some(dom)
        }
        None => {
            let names = volume_names(req, disks.len());
            let spec = new_domain_spec(req, conn, &names)?;
            let targets = domain_xml::disk_targets(&spec);
            for ((plan, name), target) in disks.iter().zip(&names).zip(&targets) {
                let SpecDisk::Volume { volume, .. } = name else {
                    unreachable!("volume_names gives volumes")
                };
                let capacity = plan
                    .base
                    .as_ref()
                    .map(BaseInput::capacity)
                    .ok_or_else(|| anyhow!("no base image for disk {target}: give --flat"))?;
                let vol = if req.dry_run {
                    log::info!(
                        "would create volume '{volume}' of {} in pool '{}'",
                        crate::units::human_bytes_exact(capacity),
                        req.pool
                    );
                    None
                } else {
                    let vol = ensure_volume(conn, &req.pool, volume, capacity)?;
                    guards::ensure_raw_volume(&vol)?;
                    Some(vol)
                };
                if let Some(vol) = vol {
                    st.disks.push(disk_state(target, &vol, plan, None)?);
                    steps.push(lifecycle::BaseStep::Upload);
                    vols.push(vol);
                }
            }
            if req.dry_run {
                log::info!(
                    "would define domain '{}':\n{}",
                    req.domain,
                    domain_xml::render(&spec)?
                );
                for (plan, name) in disks.iter().zip(&names) {
                    if let (Some(b), SpecDisk::Volume { volume, .. }) = (&plan.base, name) {
                        log::info!(
                            "would upload {}, {}, into volume '{volume}'",
                            b.name(),
                            crate::units::human_bytes_exact(b.capacity())
                        );
                    }
                }
                None
            } else {
                let phase = crate::report::begin("define");
                let dom = conn
                    .define_domain(&domain_xml::render(&spec)?)
                    .map_err(|e| trial::explain_define(conn, e))?;
                phase.done(None, None);
                st.defined_by_tool = Some(true);
                st.os = Some(os_name(spec.os).to_lowercase());
                log::info!(
                    "defined domain '{}' ({} guest, {} MiB, {} vCPUs)",
                    req.domain,
                    os_name(spec.os),
                    spec.memory_mib,
                    spec.vcpus
                );
                Some(dom)
            }
        }
    };
    let Some(dom) = dom else {
        return Ok((None, st));
    };
    for (step, ds) in steps.iter().zip(&st.disks) {
        if let lifecycle::BaseStep::Reupload { destroys } = step {
            let verb = if req.dry_run {
                "would destroy"
            } else {
                "destroys"
            };
            log::warn!(
                "--reupload-base: uploading the base of disk {} again {verb} {destroys}",
                ds.target_dev
            );
        }
    }
    if req.dry_run {
        for (plan, vol) in disks.iter().zip(&vols) {
            if let Some(b) = &plan.base {
                log::info!(
                    "would upload {}, {}, into volume '{}'",
                    b.name(),
                    crate::units::human_bytes_exact(b.capacity()),
                    vol.describe()
                );
            }
        }
        return Ok((Some(dom), st));
    }
    metadata::write(&dom, &st)?;
    for (i, (plan, vol)) in disks.iter().zip(&vols).enumerate() {
        let Some(base) = &plan.base else { continue };
        if steps[i] == lifecycle::BaseStep::Keep {
            log::info!(
                "disk {}: base already uploaded into '{}': kept",
                st.disks[i].target_dev,
                vol.describe()
            );
            continue;
        }
        crate::interrupt::check()?;
        let mut phase = crate::report::begin("base upload").disk(&st.disks[i].target_dev);
        phase.io("stream");
        let started = Instant::now();
        let mut reader = base.reader()?;
        let bar = Transfer::new(
            format!("disk {}: base upload", st.disks[i].target_dev),
            base.capacity(),
        );
        let stats =
            libvirt::upload_image(vol, &mut reader, &mut |n| bar.set(n)).with_context(|| {
                format!("uploading {} into volume '{}'", base.name(), vol.describe())
            })?;
        bar.finish();
        ensure!(
            stats.bytes_read == base.capacity(),
            "{} ended after {} bytes, but the disk's capacity is {} bytes: the base is incomplete",
            base.name(),
            stats.bytes_read,
            base.capacity()
        );
        let secs = started.elapsed().as_secs_f64();
        log::info!(
            "uploaded {} into '{}': {}: {} data, {} as holes, {} skipped unread, in {} ({:.0} MB/s)",
            base.name(),
            vol.describe(),
            crate::units::human_bytes_exact(stats.bytes_read),
            crate::units::human_bytes(stats.data_bytes),
            crate::units::human_bytes(stats.hole_bytes),
            crate::units::human_bytes(stats.bytes_skipped),
            crate::units::human_duration(started.elapsed()),
            stats.bytes_read as f64 / secs.max(1e-9) / 1e6
        );
        st.disks[i].base_uploaded()?;
        metadata::write(&dom, &st)?;
        phase.done(Some(stats.bytes_read), None);
    }
    Ok((Some(dom), st))
}

/// What stage 1 does with the base of a disk the import state may already know.
fn base_step(
    req: &Request,
    target_dev: &str,
    old: Option<&DiskState>,
    state: Option<&ImportState>,
) -> Result<lifecycle::BaseStep> {
    let handed = state.and_then(|s| s.handed_over.as_ref());
    // A .vmx import reruns the same command: disks it finished are kept.
    let keep_uploaded = req.vmx.is_some();
    lifecycle::base_step(target_dev, old, handed, req.reupload_base, keep_uploaded)
        .with_context(|| format!("domain '{}'", req.domain))
}

/// A base upload that was cut off (Ctrl-C, a killed process or daemon) can leave a file
/// volume shorter than the disk; while the state says the base is incomplete, its length is
/// given back before the upload starts again.
fn repair_interrupted_base(vol: &Vol, ds: &DiskState, plan: &DiskPlan) -> Result<()> {
    let Some(length) = interrupted_length(ds, plan) else {
        return Ok(());
    };
    if let Some(had) = libvirt::repair_file_length(vol, length)? {
        log::info!(
            "volume '{}' held {had} bytes after an interrupted upload: its length is restored to {length} bytes",
            vol.describe()
        );
    }
    Ok(())
}

/// The length [`repair_interrupted_base`] gives a file volume whose base upload `ds` says
/// did not complete; None when it completed.
fn interrupted_length(ds: &DiskState, plan: &DiskPlan) -> Option<u64> {
    let capacity = plan.base.as_ref().map_or(ds.capacity, BaseInput::capacity);
    (!ds.base_done()).then_some(capacity.max(ds.capacity))
}

/// The state of a disk whose base stage 1 uploads into `vol`, checked to fit. `old` is what
/// the import state knew of the disk: a file volume its interrupted upload left short counts
/// at the length [`repair_interrupted_base`] gives back before the upload.
fn disk_state(
    target_dev: &str,
    vol: &Vol,
    plan: &DiskPlan,
    old: Option<&DiskState>,
) -> Result<DiskState> {
    let capacity = plan
        .base
        .as_ref()
        .map(BaseInput::capacity)
        .unwrap_or(vol.capacity()?);
    let mut vol_cap = vol.capacity()?;
    if let Some(length) = old.and_then(|ds| interrupted_length(ds, plan)) {
        if is_file_volume(vol)? {
            vol_cap = vol_cap.max(length);
        }
    }
    ensure!(
        capacity <= vol_cap,
        "volume '{}' holds {vol_cap} bytes, smaller than the disk's {capacity} bytes",
        vol.describe()
    );
    Ok(DiskState::begin_base_upload(
        target_dev,
        (vol.pool_name(), vol.name()),
        capacity,
        plan.base.as_ref().and_then(BaseInput::cid),
        plan.base.as_ref().and_then(BaseInput::location),
    ))
}

/// The volume named `name` in `pool`, created at `capacity` unless an earlier run left it.
fn ensure_volume(conn: &Conn, pool: &str, name: &str, capacity: u64) -> Result<Vol> {
    let pool = conn.pool(pool)?;
    match pool.find_volume(name)? {
        Some(vol) => {
            let have = vol.capacity()?;
            ensure!(
                have >= capacity,
                "volume '{}' exists with {have} bytes, smaller than the disk's {capacity} bytes",
                vol.describe()
            );
            log::info!(
                "reusing volume '{}' of {}",
                vol.describe(),
                crate::units::human_bytes_exact(have)
            );
            Ok(vol)
        }
        None => {
            let vol = pool.create_volume(name, capacity)?;
            log::info!(
                "created volume '{}' of {}",
                vol.describe(),
                crate::units::human_bytes_exact(capacity)
            );
            Ok(vol)
        }
    }
}

/// Whether libvirt reports `vol` as a file: the kind whose length
/// [`libvirt::repair_file_length`] gives back.
fn is_file_volume(vol: &Vol) -> Result<bool> {
    let info = vol
        .raw()
        .info()
        .with_context(|| format!("reading the type of volume '{}'", vol.describe()))?;
    Ok(info.kind == virt::sys::VIR_STORAGE_VOL_FILE)
}

fn volume_of(conn: &Conn, kind: &DiskKind) -> Result<Vol> {
    match kind {
        DiskKind::Volume { pool, volume } => conn.pool(pool)?.volume(volume),
        DiskKind::File(p) | DiskKind::Block(p) => conn.volume_by_path(p),
        DiskKind::Other(t) => {
            bail!("a disk of type '{t}' is not a storage volume this tool can write")
        }
    }
}

fn os_name(os: OsFamily) -> &'static str {
    match os {
        OsFamily::Linux => "Linux",
        OsFamily::Windows => "Windows",
    }
}

/// One disk's delta chain, checked: what stage 2 writes into its volume.
struct DeltaWork {
    chain: Chain,
    /// The deltas the volume holds once the chain is applied.
    lineage: Vec<AppliedDelta>,
    vol: Vol,
    survey: crate::apply::ApplyReport,
    direct: bool,
}

/// Stage 2 once every check passed.
enum StageTwo {
    /// A dry run whose stage 1 was only described: the chains were checked and described.
    Described,
    /// Per disk: its checked chain, or None (no deltas, or an independent disk copied whole).
    Checked(Vec<Option<DeltaWork>>),
}

/// Every check of stage 2, with nothing changed: the base uploads complete, each disk raw,
/// each chain opened, its parentCIDs continuing what the volume holds, the lifecycle's rules
/// (nothing handed over written again), capacities, the way it will be written. It runs
/// before the shaping options are applied, so a refused stage 2 leaves the domain's XML
/// and its import state as they were.
fn check_stage_two(
    req: &Request,
    conn: &Conn,
    dom: Option<&Dom>,
    st: &ImportState,
    disks: &[DiskPlan],
) -> Result<StageTwo> {
    if req.dry_run && st.disks.len() < disks.len() {
        // Stage 1 was only described: check the chains and say what they would write.
        for plan in disks.iter().filter(|p| !p.deltas.is_empty()) {
            let chain = Chain::open_deltas(&plan.deltas, &req.open)?;
            log::info!(
                "would then apply {} delta(s): {}",
                chain.layers().len(),
                crate::apply::survey(&chain)?
            );
        }
        return Ok(StageTwo::Described);
    }
    ensure!(
        st.disks.len() >= disks.len(),
        "domain '{}': the import state knows {} disks, the import has {}",
        req.domain,
        st.disks.len(),
        disks.len()
    );
    // Open and check every chain before anything is written.
    let dom_xml = dom.map(Dom::xml).transpose()?;
    let mut work = Vec::new();
    for (i, plan) in disks.iter().enumerate() {
        let ds = &st.disks[i];
        ensure!(
            ds.base_done(),
            "domain '{}' disk {}: the base upload is not complete; rerun stage 1 (--flat) first",
            req.domain,
            ds.target_dev
        );
        if !plan.copy_whole && plan.deltas.is_empty() {
            work.push(None);
            continue;
        }
        let vol = conn.pool(&ds.pool)?.volume(&ds.volume)?;
        if let Some(xml) = &dom_xml {
            guards::ensure_raw(&req.domain, xml, &ds.target_dev, &vol)?;
        }
        let handed = st.handed_over.as_ref();
        let what = || format!("domain '{}'", req.domain);
        if plan.copy_whole {
            lifecycle::may_copy_whole(&ds.target_dev, ds, handed).with_context(what)?;
            work.push(None);
            continue;
        }
        let chain = Chain::open_deltas(&plan.deltas, &req.open)?;
        let given: Vec<_> = chain.layers().iter().map(as_applied).collect();
        lifecycle::may_apply(&ds.target_dev, ds, handed, &given).with_context(what)?;
        let mtime = guards::volume_mtime(&vol)?;
        lifecycle::unchanged_since_hand_over(&ds.target_dev, ds, handed, mtime.as_deref())
            .with_context(what)?;
        chain.check_parent(Parent::Volume {
            capacity: ds.capacity,
            disk: &ds.target_dev,
        })?;
        let lineage = new_lineage(ds, chain.layers())?;
        let vol_cap = vol.capacity()?;
        ensure!(
            chain.capacity() <= vol_cap,
            "volume '{}' holds {vol_cap} bytes, less than the delta's capacity {}",
            vol.describe(),
            chain.capacity()
        );
        let survey = crate::apply::survey(&chain)?;
        let direct = match overlay::choose(req, conn, ds)? {
            Some(pool) => {
                log::info!(
                    "io: a qcow2 overlay in pool '{}', then a live block commit",
                    pool.name()
                );
                false
            }
            None => write::use_direct(conn, &vol, req.io)?,
        };
        work.push(Some(DeltaWork {
            chain,
            lineage,
            vol,
            survey,
            direct,
        }));
    }
    Ok(StageTwo::Checked(work))
}

/// Stage 2: every disk's deltas, checked by [`check_stage_two`], applied above the base
/// recorded in stage 1. The state marks a disk as being written before the first byte goes
/// out and clears the mark only once all its bytes landed: a failed run leaves the domain
/// unstartable by this tool until a rerun completes.
fn stage_two(
    req: &Request,
    conn: &Conn,
    dom: Option<&Dom>,
    st: &mut ImportState,
    disks: &[DiskPlan],
    checked: StageTwo,
) -> Result<()> {
    let StageTwo::Checked(work) = checked else {
        return Ok(());
    };
    if req.dry_run {
        for (ds, w) in st.disks.iter().zip(&work) {
            if let Some(DeltaWork {
                chain, vol, survey, ..
            }) = w
            {
                log::info!(
                    "would apply {} delta(s) to volume '{}' (disk {}): {survey}",
                    chain.layers().len(),
                    vol.describe(),
                    ds.target_dev
                );
            }
        }
        return Ok(());
    }
    let dom = dom.expect("a domain exists unless dry-run");
    let started = std::time::Instant::now();
    let mut written = None;
    for (i, w) in work.into_iter().enumerate() {
        crate::interrupt::check()?;
        if disks[i].copy_whole {
            // Independent disk: the whole image again, now that the VM is off.
            st.disks[i].begin_whole_copy()?;
            metadata::write(dom, st)?;
            let base = disks[i]
                .base
                .as_ref()
                .expect("independent disks have a base");
            let vol = conn.pool(&st.disks[i].pool)?.volume(&st.disks[i].volume)?;
            // An earlier copy cut off outright can have left the file short.
            libvirt::repair_file_length(&vol, st.disks[i].capacity)?;
            let bar = Transfer::new(
                format!("disk {}: whole copy", st.disks[i].target_dev),
                base.capacity(),
            );
            let stats = libvirt::upload_image(&vol, &mut base.reader()?, &mut |n| bar.set(n))?;
            bar.finish();
            log::info!(
                "copied independent disk {} whole: {} bytes",
                base.name(),
                stats.bytes_read
            );
            *written.get_or_insert(0) += stats.bytes_read;
            st.disks[i].apply_done()?;
            metadata::write(dom, st)?;
            continue;
        }
        let Some(DeltaWork {
            chain,
            lineage,
            vol,
            survey,
            direct,
        }) = w
        else {
            continue;
        };
        let base = base_for_gaps(&st.disks[i], &disks[i], &chain, &req.open);
        let gaps = match &base {
            Some(b) => write::Gaps::Base(b),
            None => write::Gaps::Volume,
        };
        // The lineage is recorded before the first byte goes out, marked as being applied: a
        // rerun after a failure must then give the whole chain again (a shorter one would
        // leave stray grains of the longer one in the volume).
        st.disks[i].begin_apply(lineage, None)?;
        metadata::write(dom, st)?;
        let ds = st.disks[i].clone();
        let mut phase = crate::report::begin("delta apply").disk(&ds.target_dev);
        let report = if let Some(pool) = overlay::choose(req, conn, &ds)? {
            phase.io("overlay");
            let r = overlay::write_disk(dom, &pool, &ds, &vol, &chain)?;
            phase.done(Some(survey.data_bytes + survey.zero_bytes), Some(1));
            r
        } else {
            let r = write::write_disk(&vol, &ds.target_dev, &chain, &survey, direct, gaps)?;
            phase.io(r.io);
            let calls = (r.io == "stream").then_some(r.calls);
            phase.done(Some(r.changes.data_bytes + r.changes.zero_bytes), calls);
            r.to_string()
        };
        log::info!("disk {}: {report}", st.disks[i].target_dev);
        st.disks[i].apply_done()?;
        *written.get_or_insert(0) += survey.data_bytes + survey.zero_bytes;
        metadata::write(dom, st)?;
    }
    if let Some(bytes) = written {
        record_local_apply(dom, st, bytes, started.elapsed())?;
    }
    overlay::switch_all(conn, dom)?;
    Ok(())
}

/// Record what this stage 2 wrote (the plan's BYTES, `status --domain`).
fn record_local_apply(
    dom: &Dom,
    st: &mut ImportState,
    bytes: u64,
    took: std::time::Duration,
) -> Result<()> {
    st.local_applies.push(state::LocalApply {
        at: lifecycle::utc_now(),
        bytes,
        ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
    });
    metadata::write(dom, st)
}

/// The base image, when it can stand in for the volume's own bytes between the chain's runs:
/// the chain starts at the base (so every delta applied before is part of it again, and
/// outside its runs the volume holds the base), and the base found on this host (the one the
/// .vmx names, or the file stage 1 read) has the recorded CID and capacity. VMware changes a
/// disk's CID whenever it writes to it, so a base consolidated or changed since stage 1 is
/// not taken. Anything else reads the gaps back from the volume.
fn base_for_gaps(
    ds: &DiskState,
    plan: &DiskPlan,
    chain: &Chain,
    open: &OpenOptions,
) -> Option<BaseImage> {
    let recorded = DiskId {
        cid: Some(ds.base_cid?),
        capacity: ds.capacity,
    };
    let path = match &plan.base {
        Some(BaseInput::Image(b)) => b.path.clone(),
        _ => PathBuf::from(ds.source.as_ref()?),
    };
    let base = BaseImage::open(&path, open).ok()?;
    let continues = chain.check_parent(Parent::Base(&base)).is_ok();
    (continues && recorded.admits(base.id())).then_some(base)
}

/// How a layer is recorded once applied.
fn as_applied(l: &LayerInfo) -> AppliedDelta {
    AppliedDelta {
        file: l
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        cid: l.cid,
        parent_cid: l.parent_cid,
        handed_over: false,
        active: false,
    }
}

/// The deltas the volume holds after applying `layers`. The first layer must sit on the base
/// or on a delta already applied; deltas applied after that point must be given again, in
/// order, or applying `layers` would put older grains over newer ones.
fn new_lineage(ds: &DiskState, layers: &[LayerInfo]) -> Result<Vec<AppliedDelta>> {
    let first = &layers[0];
    let Some(pc) = first.parent_cid else {
        log::warn!(
            "{} has no descriptor, so its parent cannot be checked; give the child descriptor (vm-000001.vmdk) to have it checked",
            first.path.display()
        );
        let mut v = ds.applied.clone();
        v.extend(layers.iter().map(as_applied));
        return Ok(v);
    };
    let k = if Some(pc) == ds.base_cid || (ds.base_cid.is_none() && ds.applied.is_empty()) {
        if ds.base_cid.is_none() {
            log::warn!("the base's CID was not recorded (raw image or standard input); parentCID {pc:08x} of {} is not checked", first.path.display());
        }
        0
    } else if let Some(i) = ds.applied.iter().rposition(|a| a.cid == Some(pc)) {
        i + 1
    } else {
        bail!(
            "{}: parentCID {pc:08x} matches neither the base uploaded to disk {} (CID {}) nor any delta applied since: this delta belongs to another disk or snapshot chain",
            first.path.display(),
            ds.target_dev,
            ds.base_cid.map(|c| format!("{c:08x}")).unwrap_or_else(|| "unknown".into())
        );
    };
    for (j, a) in ds.applied[k..].iter().enumerate() {
        let again = layers.get(j).map(|l| l.cid);
        ensure!(
            again == Some(a.cid),
            "{}: {} (CID {}) was already applied on top of it; give the whole chain from {} to the newest delta, oldest first",
            first.path.display(),
            a.file,
            a.cid.map(|c| format!("{c:08x}")).unwrap_or_else(|| "?".into()),
            first.path.display()
        );
    }
    let mut v = ds.applied[..k].to_vec();
    v.extend(layers.iter().map(as_applied));
    Ok(v)
}

/// The domain a new import defines, from the .vmx when given, else from the options.
fn new_domain_spec(req: &Request, conn: &Conn, disks: &[SpecDisk]) -> Result<DomainSpec> {
    let domain_type = conn.domain_type();
    let mut spec = match &req.vmx {
        Some((_, vmx)) => {
            let net_for = |nic: &vmx::VmxNic| net_source(req, nic.network_name.as_deref());
            domain_xml::spec_from_vmx(vmx, &req.domain, domain_type, disks.to_vec(), &net_for)?
        }
        None => {
            let os = req.os.unwrap_or(OsFamily::Linux);
            let nics = if req.network.is_some() || req.bridge.is_some() || req.mac.is_some() {
                vec![NicSpec {
                    net: net_source(req, None),
                    mac: req.mac.clone(),
                    model_override: None,
                    pci_slot: None,
                }]
            } else {
                Vec::new()
            };
            DomainSpec {
                name: req.domain.clone(),
                uuid: None,
                title: None,
                domain_type: domain_type.to_string(),
                os,
                legacy_machine: false,
                memory_mib: DEFAULT_MEMORY_MIB,
                vcpus: DEFAULT_VCPUS,
                cores_per_socket: None,
                cpu: if domain_type == "kvm" {
                    domain_xml::CpuMode::HostPassthrough
                } else {
                    domain_xml::CpuMode::Default
                },
                cpu_disable_features: Vec::new(),
                hyperv_passthrough: false,
                firmware: Firmware::Bios,
                disks: disks
                    .iter()
                    .map(|s| domain_xml::DiskSpec {
                        source: s.clone(),
                        bus_override: None,
                        scsi_slot: None,
                    })
                    .collect(),
                nics,
                serial_log: None,
                extra_virtio_disk: None,
                nic_slots: false,
                linux_disk_bus: domain_xml::DiskBus::Scsi,
            }
        }
    };
    // The command line wins over the .vmx.
    if let Some(m) = req.memory_mib {
        spec.memory_mib = m;
    }
    if let Some(v) = req.vcpus {
        spec.vcpus = v;
    }
    if let Some(os) = req.os {
        spec.os = os;
    }
    if let (Some(mac), Some(nic)) = (&req.mac, spec.nics.first_mut()) {
        nic.mac = Some(mac.clone());
    }
    if let Some(cpu) = &req.cpu {
        spec.cpu = cpu.clone();
    }
    spec.hyperv_passthrough |= req.hyperv_passthrough;
    req.naming.apply(conn, &mut spec, req.vmx.is_some())?;
    Ok(spec)
}

fn net_source(req: &ImportPlan, vmware_net: Option<&str>) -> NetSource {
    if let Some(to) = vmware_net.and_then(|n| req.network_map.iter().find(|(from, _)| from == n)) {
        return NetSource::Network(to.1.clone());
    }
    match (&req.bridge, &req.network) {
        (Some(br), _) => NetSource::Bridge(br.clone()),
        (None, Some(net)) => NetSource::Network(net.clone()),
        (None, None) => NetSource::Network("default".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::LayerKind;

    fn layer(name: &str, cid: u32, parent: u32) -> LayerInfo {
        LayerInfo {
            path: PathBuf::from(format!("/d/{name}")),
            kind: LayerKind::SeSparse,
            cid: Some(cid),
            parent_cid: Some(parent),
            parent_hint: None,
            capacity: 1 << 20,
        }
    }

    fn disk(applied: &[(&str, u32, u32)]) -> DiskState {
        DiskState {
            base_cid: Some(0xb0),
            base_uploaded: true,
            applied: applied
                .iter()
                .map(|(f, c, p)| AppliedDelta {
                    file: f.to_string(),
                    cid: Some(*c),
                    parent_cid: Some(*p),
                    handed_over: false,
                    active: false,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn cids(v: &[AppliedDelta]) -> Vec<u32> {
        v.iter().map(|a| a.cid.unwrap()).collect()
    }

    #[test]
    fn a_first_delta_sits_on_the_recorded_base() {
        let l = new_lineage(
            &disk(&[]),
            &[layer("d1", 0xd1, 0xb0), layer("d2", 0xd2, 0xd1)],
        )
        .unwrap();
        assert_eq!(cids(&l), [0xd1, 0xd2]);
    }

    #[test]
    fn a_delta_from_another_base_is_refused() {
        let e = new_lineage(&disk(&[]), &[layer("x", 0xd1, 0xbad)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("parentCID 00000bad") && e.contains("/d/x"),
            "{e}"
        );
    }

    #[test]
    fn the_next_delta_continues_from_the_last_applied() {
        let l = new_lineage(&disk(&[("d1", 0xd1, 0xb0)]), &[layer("d2", 0xd2, 0xd1)]).unwrap();
        assert_eq!(cids(&l), [0xd1, 0xd2]);
    }

    #[test]
    fn rerunning_the_same_chain_is_allowed() {
        let ds = disk(&[("d1", 0xd1, 0xb0), ("d2", 0xd2, 0xd1)]);
        let l = new_lineage(&ds, &[layer("d1", 0xd1, 0xb0), layer("d2", 0xd2, 0xd1)]).unwrap();
        assert_eq!(cids(&l), [0xd1, 0xd2]);
    }

    #[test]
    fn an_older_delta_after_a_newer_one_is_refused() {
        let ds = disk(&[("d1", 0xd1, 0xb0), ("d2", 0xd2, 0xd1)]);
        let e = new_lineage(&ds, &[layer("d1", 0xd1, 0xb0)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("d2") && e.contains("already applied"), "{e}");
    }
}
