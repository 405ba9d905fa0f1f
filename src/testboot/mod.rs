//! `test-boot`: the volumes' current content booted in a throwaway copy of the domain (disks behind copy-on-write, NICs unplugged), watched, judged, reported, and removed again.

pub mod html;
pub mod leftovers;
pub mod plan;
pub mod report;
pub mod verdict;
pub mod watch;
pub mod xml;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use virt::storage_vol::StorageVol;

use crate::cli::TestBootArgs;
use crate::libvirt::{self, Conn, Dom, Events};
use crate::state::{lifecycle::utc_now, metadata, TestBootRecord};
use leftovers::Leftovers;
use verdict::{Finding, Verdict};
use xml::{DiskLayer, Nvram, Throwaway};

/// The longest watch: a day (a longer one is a typo).
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// One test boot (or `--cleanup`), every option checked.
#[derive(Debug, Clone)]
pub struct Request {
    pub uri: Option<String>,
    pub domain: String,
    pub timeout: Duration,
    pub report: Option<PathBuf>,
    pub cleanup_only: bool,
    pub overlay_pool: String,
}

impl Request {
    /// The request for `test-boot`'s arguments. Pure: opens nothing, connects nowhere.
    pub fn from_args(a: &TestBootArgs) -> Result<Request> {
        ensure!(!a.domain.is_empty(), "--domain: give the domain's name");
        ensure!(
            a.timeout <= MAX_TIMEOUT,
            "--timeout {} s: at most a day ({} s)",
            a.timeout.as_secs(),
            MAX_TIMEOUT.as_secs()
        );
        ensure!(
            !(a.cleanup && a.report.is_some()),
            "--cleanup boots nothing: it makes no --report"
        );
        Ok(Request {
            uri: a.connect.clone(),
            domain: a.domain.clone(),
            timeout: a.timeout,
            report: a.report.clone(),
            cleanup_only: a.cleanup,
            overlay_pool: a.overlay_pool.clone(),
        })
    }
}

/// What one test boot found.
#[derive(Debug)]
pub struct Outcome {
    pub finding: Finding,
    pub watched: Duration,
    /// The last screenshot (PNG), if any was taken.
    pub last_screen: Option<Vec<u8>>,
    /// The report's screenshot files, oldest first.
    pub shots: Vec<String>,
}

/// `virt-vmdkimport test-boot`.
pub fn run(req: &Request) -> Result<()> {
    let conn = libvirt::connect(req.uri.as_deref())?;
    if let Some(out) = test_boot(&conn, req)? {
        log::info!(
            "test boot of '{}': {} ({}: {}) after {} s",
            req.domain,
            out.finding.verdict.as_str(),
            out.finding.source,
            out.finding.evidence,
            out.watched.as_secs()
        );
        if let Some(dir) = &req.report {
            log::info!("report: {}", dir.join("report.json").display());
        }
        if out.finding.verdict != Verdict::Booted {
            return Err(NotBooted(out.finding.verdict).into());
        }
    }
    Ok(())
}

/// A test boot that ran to its end without `booted`: the run's result, not a fault of the
/// tool. Its exit code tells it apart from an error (1): 2 for `failed`, 3 for `unknown`.
#[derive(Debug)]
pub struct NotBooted(pub Verdict);

impl NotBooted {
    pub fn exit_code(&self) -> i32 {
        match self.0 {
            Verdict::Failed => 2,
            _ => 3,
        }
    }
}

impl std::fmt::Display for NotBooted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the test boot's verdict is {}", self.0.as_str())
    }
}

impl std::error::Error for NotBooted {}

/// Clean up what an earlier test boot left; then, unless `--cleanup`, one test boot.
pub fn test_boot(conn: &Conn, req: &Request) -> Result<Option<Outcome>> {
    let real = conn
        .domain(&req.domain)?
        .with_context(|| format!("domain '{}' does not exist on {}", req.domain, conn.uri()))?;
    let earlier = leftovers::read(&real)?;
    if let Some(l) = &earlier {
        for line in leftovers::clean(conn, &real, l)? {
            log::info!("left by an earlier test boot: {line}");
        }
    }
    if req.cleanup_only {
        if earlier.is_none() {
            log::info!("domain '{}': no test boot left anything", req.domain);
        }
        return Ok(None);
    }
    let real_xml = check_real(conn, &real)?;
    if let Some(dir) = &req.report {
        report::prepare(dir)?;
    }
    let began = (utc_now(), Instant::now());
    let plan = plan_layers(conn, req, &real_xml)?;
    leftovers::record(&real, &plan.leftovers)?;
    let watched = boot_and_watch(conn, req, &real_xml, &plan, &began);
    let cleaned = leftovers::clean(conn, &real, &plan.leftovers);
    if !conn.is_alive() {
        return Err(lost_daemon(conn.uri(), &req.domain));
    }
    let (seen, facts) = match (watched, cleaned) {
        (Ok(w), Ok(lines)) => {
            lines.iter().for_each(|l| log::debug!("{l}"));
            w
        }
        (Err(e), Ok(_)) => return Err(e),
        (Ok(_), Err(c)) => return Err(c.context(LEFT_FOR_CLEANUP)),
        (Err(e), Err(c)) => return Err(e.context(format!("{LEFT_FOR_CLEANUP}: {c:#}"))),
    };
    conclude(&real, req, seen, facts)
}

/// The one line of a test boot whose daemon went away: nothing is judged, the copy stays
/// recorded, and the way out.
fn lost_daemon(uri: &str, domain: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "lost the connection to libvirtd at {uri} during the test boot of '{domain}': the \
         daemon stopped or restarted; no verdict recorded, and the throwaway domain and its \
         overlays stay recorded: once `virsh -c {uri} version` answers again, run \
         `virt-vmdkimport test-boot -c {uri} --domain {domain} --cleanup` (a new test boot \
         removes them first too)"
    )
}

/// What a failed removal of the copy leaves, and the way out.
const LEFT_FOR_CLEANUP: &str =
    "removing the throwaway domain and its overlays failed; they stay recorded for `test-boot --cleanup`";

/// The one line a test boot cut short by `sig` ends with.
pub fn interrupted_line(sig: i32, err: &anyhow::Error) -> String {
    format!(
        "{}: no verdict recorded; what the test boot made is removed, or stays recorded for `test-boot --cleanup` ({err:#})",
        crate::interrupt::Interrupted { signal: sig }
    )
}

/// The verdict recorded in the import state, the report written.
fn conclude(
    real: &Dom,
    req: &Request,
    seen: watch::Observed,
    facts: report::Facts,
) -> Result<Option<Outcome>> {
    let finding = seen
        .finding
        .clone()
        .expect("the watch always ends with a finding");
    let mut st =
        metadata::read(real)?.context("the import state went away during the test boot")?;
    st.test_boot = Some(TestBootRecord {
        at: facts.began.clone(),
        verdict: finding.verdict.as_str().to_string(),
        evidence: finding.evidence.clone(),
        ms: seen.watched.as_millis() as u64,
    });
    metadata::write(real, &st)?;
    if let Some(dir) = &req.report {
        let doc = report::document(&facts, &seen, &finding);
        report::write(dir, &doc, &seen)?;
    }
    for n in &seen.notes {
        log::info!(target: crate::out::NOTE, "{n}");
    }
    Ok(Some(Outcome {
        finding,
        watched: seen.watched,
        last_screen: seen.last_screen,
        shots: seen.shots.iter().filter_map(|s| s.file.clone()).collect(),
    }))
}

/// The real domain is one this tool imported, shut off, no disk half written; its XML.
fn check_real(conn: &Conn, real: &Dom) -> Result<String> {
    let name = real.name();
    let st = metadata::read(real)?.with_context(|| {
        format!("domain '{name}' has no import state: a test boot boots the volumes of a domain this tool imported")
    })?;
    ensure!(
        !real.is_active()?,
        "domain '{name}' is running: its volumes are in use (a test boot is for before the cutover)"
    );
    if let Some(d) = st.disks.iter().find(|d| d.applying) {
        bail!(
            "domain '{name}': disk {} is being written (a stage 2 or --sync did not finish): rerun it first",
            d.target_dev
        );
    }
    let copy = throwaway_name(name);
    ensure!(
        conn.domain(&copy)?.is_none(),
        "domain '{copy}' exists on {} and is not a test boot of '{name}' recorded here: remove or rename it",
        conn.uri()
    );
    real.xml()
}

/// The throwaway domain's name.
pub fn throwaway_name(domain: &str) -> String {
    format!("{domain}-testboot")
}

/// Each disk's layer, the overlays to make, and the record of everything made.
struct Layers {
    throwaway: Throwaway,
    /// `(pool, volume XML)` of qcow2 overlays over block devices.
    overlays: Vec<(String, String)>,
    leftovers: Leftovers,
    lines: Vec<String>,
}

fn plan_layers(conn: &Conn, req: &Request, real_xml: &str) -> Result<Layers> {
    let name = throwaway_name(&req.domain);
    let mut l = Layers {
        throwaway: Throwaway {
            name: name.clone(),
            disks: Vec::new(),
            console_log: conn
                .is_local()
                .then(|| format!("/var/log/libvirt/qemu/{name}-console.log")),
            nvram: nvram_copy(conn, real_xml, &req.domain, &name)?,
        },
        overlays: Vec::new(),
        leftovers: Leftovers {
            domain: name.clone(),
            ..Default::default()
        },
        lines: Vec::new(),
    };
    l.leftovers.files.extend(l.throwaway.console_log.clone());
    l.leftovers
        .files
        .extend(l.throwaway.nvram.as_ref().map(|n| n.copy.clone()));
    if let Some(nv) = &l.throwaway.nvram {
        l.lines.push(match &nv.template {
            Some(t) => format!("UEFI variables: {} copied from {t} by libvirt", nv.copy),
            None if nv.fill_from.is_some() => format!(
                "UEFI variables: {} copied from {}",
                nv.copy,
                nv.fill_from.as_deref().unwrap_or_default()
            ),
            None => format!(
                "UEFI variables: {} from the firmware's blank ones (no file of the domain's here)",
                nv.copy
            ),
        });
    }
    for (dev, kind, source) in xml::data_disks(real_xml)? {
        let (path, block) = resolve(conn, &dev, &kind, &source)?;
        if block {
            let vol = format!("{name}-{dev}.qcow2");
            let capacity = block_capacity(conn, &path)?;
            l.overlays
                .push((req.overlay_pool.clone(), overlay_xml(&vol, capacity, &path)));
            l.leftovers
                .volumes
                .push((req.overlay_pool.clone(), vol.clone()));
            l.lines.push(format!(
                "{dev}: qcow2 overlay {}/{vol} over {path}",
                req.overlay_pool
            ));
            l.throwaway
                .disks
                .push((dev, DiskLayer::Overlay { file: vol }));
        } else {
            l.leftovers.files.push(format!("{path}.TRANSIENT-{name}"));
            l.lines
                .push(format!("{dev}: libvirt's transient overlay over {path}"));
            l.throwaway
                .disks
                .push((dev, DiskLayer::Transient { file: path }));
        }
    }
    Ok(l)
}

/// The disk's path on the host and whether it is a block device.
fn resolve(conn: &Conn, dev: &str, kind: &str, source: &str) -> Result<(String, bool)> {
    match kind {
        "file" => Ok((source.to_string(), false)),
        "block" => Ok((source.to_string(), true)),
        _ => {
            let (pool, vol) = source.split_once('/').unwrap_or((source, ""));
            let v = conn
                .pool(pool)?
                .volume(vol)
                .with_context(|| format!("disk {dev}"))?;
            Ok((v.path().to_string(), v.is_block()?))
        }
    }
}

fn block_capacity(conn: &Conn, path: &str) -> Result<u64> {
    if let Ok(v) = conn.volume_by_path(path) {
        return v.capacity();
    }
    ensure!(
        conn.is_local(),
        "{path}: not a volume of any pool on {}, so its size cannot be read there",
        conn.uri()
    );
    use std::io::Seek;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    f.seek(std::io::SeekFrom::End(0))
        .with_context(|| format!("{path}: reading its size"))
}

/// A qcow2 volume over `backing` (raw), for libvirt to make.
fn overlay_xml(name: &str, capacity: u64, backing: &str) -> String {
    let esc = crate::xmltree::escape;
    format!(
        "<volume><name>{}</name><capacity>{capacity}</capacity><target><format type='qcow2'/></target>\
         <backingStore><path>{}</path><format type='raw'/></backingStore></volume>",
        esc(name),
        esc(backing)
    )
}

/// Where libvirt keeps the UEFI variables of a domain whose XML names no file
/// (`<os firmware='efi'>`): NAME_VARS.fd in the QEMU driver's nvram folder.
const NVRAM_DIR: &str = "/var/lib/libvirt/qemu/nvram";

/// The copy's UEFI variables, from the real domain's file: named in its XML (libvirt copies
/// it, as the template), or libvirt's default for `firmware='efi'`, copied here before the
/// start when it exists on this host; None for a BIOS domain.
fn nvram_copy(conn: &Conn, real_xml: &str, real: &str, name: &str) -> Result<Option<Nvram>> {
    let dom = crate::xmltree::parse(real_xml).context("the domain's XML")?;
    let Some(os) = dom.find("os") else {
        return Ok(None);
    };
    let named = os
        .find("nvram")
        .map(|n| n.text_content().trim().to_string());
    let (template, fill_from) = match named.filter(|n| !n.is_empty()) {
        Some(path) => (Some(path), None),
        None if os.get_attr("firmware") == Some("efi") => {
            let path = format!("{NVRAM_DIR}/{real}_VARS.fd");
            (
                None,
                (conn.is_local() && Path::new(&path).exists()).then_some(path),
            )
        }
        None if os.find("loader").and_then(|l| l.get_attr("type")) == Some("pflash") => {
            (None, None)
        }
        None => return Ok(None),
    };
    let from = template.as_deref().or(fill_from.as_deref());
    let dir = from
        .and_then(|t| Path::new(t).parent())
        .unwrap_or(Path::new(NVRAM_DIR));
    let copy = dir.join(format!("{name}_VARS.fd")).display().to_string();
    Ok(Some(Nvram {
        template,
        fill_from,
        copy,
    }))
}

/// Fill the copy's variables from the real file: a new file (one that exists was not made
/// by a test boot recorded here, so it is not overwritten).
fn fill_nvram(nv: &Nvram) -> Result<()> {
    let Some(from) = &nv.fill_from else {
        return Ok(());
    };
    let mut src = std::fs::File::open(from).with_context(|| format!("opening {from}"))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&nv.copy)
        .with_context(|| format!("creating {} (the copy's UEFI variables)", nv.copy))?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("copying {from} to {}", nv.copy))?;
    Ok(())
}

/// Make the overlays, start the throwaway domain paused, watch it from its first instruction.
fn boot_and_watch(
    conn: &Conn,
    req: &Request,
    real_xml: &str,
    plan: &Layers,
    began: &(String, Instant),
) -> Result<(watch::Observed, report::Facts)> {
    let mut throwaway = plan.throwaway.clone();
    for ((pool, vol_xml), (_, layer)) in plan.overlays.iter().zip(
        throwaway
            .disks
            .iter_mut()
            .filter(|(_, l)| matches!(l, DiskLayer::Overlay { .. })),
    ) {
        let p = conn.pool(pool)?;
        StorageVol::create_xml(p.raw(), vol_xml, 0)
            .with_context(|| format!("creating an overlay volume in pool '{pool}'"))?;
        if let DiskLayer::Overlay { file } = layer {
            *file = p.volume(file)?.path().to_string();
        }
    }
    if let Some(nv) = &throwaway.nvram {
        fill_nvram(nv)?;
    }
    let domain_xml = xml::throwaway(real_xml, &throwaway)?;
    let dom = conn.create_transient_paused(&domain_xml, &throwaway.name)?;
    let events = Events::watch(conn, &dom)?;
    dom.resume()?;
    let start_ms = began.1.elapsed().as_millis() as u64;
    let w = watch::Watch {
        conn,
        dom: &dom,
        events: &events,
        console_log: throwaway.console_log.as_ref().map(PathBuf::from),
        disks: throwaway.disks.iter().map(|(d, _)| d.clone()).collect(),
        timeout: req.timeout,
        agent: real_xml.contains("org.qemu.guest_agent.0"),
        shots_dir: req.report.clone(),
    };
    let seen = w.run()?;
    let facts = report::Facts {
        domain: req.domain.clone(),
        throwaway: throwaway.name.clone(),
        uri: conn.uri().to_string(),
        began: began.0.clone(),
        timeout_s: req.timeout.as_secs(),
        start_ms,
        layers: plan.lines.clone(),
        ocr: watch::tesseract(),
    };
    Ok((seen, facts))
}
