//! `--io overlay`: stage 2 as one upload of a qcow2 overlay, the domain started on it, then a live block commit into the volume; every step recorded, every interruption resumed.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::handover;
use super::plan::ImportPlan;
use crate::cli::IoMode;
use crate::libvirt::{self, parse_disk_sources, Conn, DiskKind, Dom, Pool, Vol};
use crate::progress::Transfer;
use crate::qcow2;
use crate::state::{self, metadata, DiskState, ImportState, OverlayRecord, OverlayStep};
use crate::vmdk::Chain;
use crate::xmltree::{self, Element, Node};

/// When this command started: the outage is measured from here to the domain running.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Note the command's start (the first call wins).
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

fn since_start() -> Duration {
    STARTED.get_or_init(Instant::now).elapsed()
}

/// How often a running commit is looked at.
const POLL: Duration = Duration::from_millis(50);

/// Pool types whose volumes are files, so they can hold a qcow2 image.
const FILE_POOLS: &[&str] = &["dir", "fs", "netfs"];

/// Put `rec` in the records (replacing the one for its disk) and write them.
fn record(dom: &Dom, rec: &OverlayRecord) -> Result<()> {
    let mut all = metadata::read_overlays(dom)?;
    all.retain(|r| r.target_dev != rec.target_dev);
    all.push(rec.clone());
    metadata::write_overlays(dom, &all)
}

fn forget(dom: &Dom, dev: &str) -> Result<()> {
    let mut all = metadata::read_overlays(dom)?;
    all.retain(|r| r.target_dev != dev);
    metadata::write_overlays(dom, &all)
}

/// The pool the overlay of disk `ds` goes into, checked before anything is written: it must
/// keep its volumes as files (a logical pool cannot hold a qcow2 image).
pub fn check(req: &ImportPlan, conn: &Conn, ds: &DiskState) -> Result<Pool> {
    ensure!(
        !req.no_start,
        "--io overlay starts the domain (the overlay is merged by a live block commit): it cannot go with --no-start; use --io stream or direct"
    );
    let name = req.overlay_pool.as_deref().unwrap_or(&ds.pool);
    let pool = conn.pool(name)?;
    let xml = pool
        .raw()
        .xml_desc(0)
        .with_context(|| format!("reading the XML of storage pool '{name}'"))?;
    let kind = xmltree::parse(&xml)?
        .get_attr("type")
        .unwrap_or("")
        .to_string();
    ensure!(
        FILE_POOLS.contains(&kind.as_str()),
        "--io overlay: storage pool '{name}' is of type '{kind}', which cannot hold a qcow2 overlay; name a dir pool with --overlay-pool"
    );
    Ok(pool)
}

/// Whether stage 2 writes disk `ds` through an overlay, and into which pool: always with
/// `--io overlay` (refused when it cannot be), and with `--io auto` on a remote connection
/// when the domain is to be started and the pool can hold the overlay (the benchmark in
/// scripts/bench.sh, case 6: one upload and a start cost less than upload calls there).
pub fn choose(req: &ImportPlan, conn: &Conn, ds: &DiskState) -> Result<Option<Pool>> {
    Ok(match req.io {
        IoMode::Overlay => Some(check(req, conn, ds)?),
        IoMode::Auto if !conn.is_local() && !req.no_start => check(req, conn, ds).ok(),
        _ => None,
    })
}

fn overlay_name(ds: &DiskState) -> String {
    format!("{}-overlay", ds.volume)
}

/// The `<disk>` element of `dev` in `dom_xml`'s tree.
fn disk_mut<'a>(root: &'a mut Element, dev: &str) -> Result<&'a mut Element> {
    let devices = root
        .find_mut("devices")
        .context("domain XML without <devices>")?;
    devices
        .elements_mut()
        .find(|d| {
            d.local_name() == "disk"
                && d.find("target").and_then(|t| t.get_attr("dev")) == Some(dev)
        })
        .with_context(|| format!("the domain has no disk {dev}"))
}

/// Stage 2's write for one disk: the chain as a qcow2 overlay volume over `vol`, uploaded in
/// one stream. Each step is recorded before it is taken, so a rerun knows what exists. The
/// disks are switched to their overlays only once every upload is complete ([`switch_all`]):
/// a run cut off before that leaves the definition untouched, and its rerun uploads again.
pub fn write_disk(
    dom: &Dom,
    pool: &Pool,
    ds: &DiskState,
    vol: &Vol,
    chain: &Chain,
) -> Result<String> {
    let name = overlay_name(ds);
    let original = disk_mut(&mut xmltree::parse(&dom.xml()?)?, &ds.target_dev)?.clone();
    let mut rec = OverlayRecord {
        target_dev: ds.target_dev.clone(),
        pool: pool.name().to_string(),
        volume: name.clone(),
        path: String::new(),
        step: OverlayStep::Uploading,
        offline: false,
        original_disk: xmltree::to_string(&original),
    };
    if let Some(old) = leftover(dom, pool, ds)? {
        old.delete()?;
    }
    record(dom, &rec)?;
    let started = Instant::now();
    let layout = qcow2::layout(chain)?;
    let ovl = pool.create_volume(&name, layout.len())?;
    rec.path = ovl.path().to_string();
    record(dom, &rec)?;
    let mut image = qcow2::Overlay::new(chain, layout.clone(), vol.path())?;
    let bar = Transfer::new(
        format!("disk {}: overlay upload", ds.target_dev),
        layout.len(),
    );
    let stats = libvirt::upload_image_fresh(&ovl, &mut image, &mut |n| bar.set(n))
        .with_context(|| format!("uploading the overlay into volume '{}'", ovl.describe()))?;
    bar.finish();
    rec.step = OverlayStep::Uploaded;
    record(dom, &rec)?;
    Ok(format!(
        "io=overlay volume={} image_bytes={} table_bytes={} data_clusters={} data_bytes={} hole_bytes={} elapsed_s={:.3}",
        ovl.describe(),
        layout.len(),
        layout.table_bytes(),
        layout.data_clusters,
        stats.data_bytes,
        stats.hole_bytes,
        started.elapsed().as_secs_f64()
    ))
}

/// The overlay volume of disk `ds` an earlier upload left in `pool`, if any; a volume of
/// that name this tool did not record (or one the domain may use) is refused, naming it.
pub fn leftover(dom: &Dom, pool: &Pool, ds: &DiskState) -> Result<Option<Vol>> {
    let Some(old) = pool.find_volume(&overlay_name(ds))? else {
        return Ok(None);
    };
    let earlier = metadata::read_overlays(dom)?
        .into_iter()
        .find(|r| r.target_dev == ds.target_dev);
    // Only a leftover of an upload this tool recorded (the domain never used it) goes.
    ensure!(
        earlier
            .as_ref()
            .is_some_and(|r| r.step <= OverlayStep::Uploaded),
        "volume '{}' exists and is no overlay this tool left: remove or rename it",
        old.describe()
    );
    Ok(Some(old))
}

/// Switch every disk whose overlay is uploaded to it in the persistent definition (each
/// switch recorded once made).
pub fn switch_all(conn: &Conn, dom: &Dom) -> Result<()> {
    for mut rec in metadata::read_overlays(dom)? {
        if rec.step != OverlayStep::Uploaded {
            continue;
        }
        // The definition as it is now (the records just written in it), the disk switched.
        let mut xml = xmltree::parse(&dom.xml()?)?;
        let original = xmltree::parse(&rec.original_disk)?;
        *disk_mut(&mut xml, &rec.target_dev)? = on_overlay(&original, &rec.path);
        conn.define_domain(&xmltree::to_string(&xml))?;
        rec.step = OverlayStep::OnOverlay;
        record(dom, &rec)?;
    }
    Ok(())
}

/// `original` (a `<disk>`) reading the qcow2 file `path` instead: file type, qcow2 driver,
/// no backing store given (libvirt reads it from the image: the volume, format raw).
fn on_overlay(original: &Element, path: &str) -> Element {
    let mut d = original.clone();
    d.set_attr("type", "file");
    d.children.retain(|n| match n {
        Node::Element(e) => !matches!(e.local_name(), "source" | "backingStore"),
        Node::Text(_) => true,
    });
    if let Some(driver) = d.find_mut("driver") {
        driver.set_attr("type", "qcow2");
    } else {
        d.children.push(Node::Element(
            Element::new("driver")
                .attr("name", "qemu")
                .attr("type", "qcow2"),
        ));
    }
    d.children
        .push(Node::Element(Element::new("source").attr("file", path)));
    d
}

/// The source file of disk `dev` in a domain XML, when it is a file.
fn disk_file(xml: &str, dev: &str) -> Result<Option<String>> {
    Ok(parse_disk_sources(xml)?
        .into_iter()
        .find(|d| d.target_dev == dev)
        .and_then(|d| match d.kind {
            DiskKind::File(f) => Some(f),
            _ => None,
        }))
}

/// Records whose overlay the domain uses (or may use): those past the upload, and any whose
/// file the persistent definition names.
fn in_use(dom: &Dom) -> Result<Vec<OverlayRecord>> {
    let xml = dom.xml()?;
    let mut out = Vec::new();
    for r in metadata::read_overlays(dom)? {
        let named =
            !r.path.is_empty() && disk_file(&xml, &r.target_dev)?.as_deref() == Some(&r.path);
        if r.step >= OverlayStep::OnOverlay || named {
            out.push(r);
        }
    }
    Ok(out)
}

/// A rerun of any command on a domain with an overlay in use finishes that overlay first (the
/// commit, the pivot, the check, the volume's removal) and stops there. Returns whether it did.
pub fn resume(
    req: &ImportPlan,
    conn: &Conn,
    dom: &Dom,
    st: Option<&mut ImportState>,
) -> Result<bool> {
    let pending = in_use(dom)?;
    if pending.is_empty() {
        return Ok(false);
    }
    let devs: Vec<_> = pending.iter().map(|r| r.target_dev.as_str()).collect();
    log::info!(
        "domain '{}': disk(s) {} still on a qcow2 overlay from an earlier run: finishing that first",
        dom.name(),
        devs.join(", ")
    );
    if req.dry_run {
        log::info!("would commit the overlay(s) into the volume(s) and remove them");
        return Ok(true);
    }
    let st = st.with_context(|| format!("domain '{}' has no import state", dom.name()))?;
    let started = st
        .handed_over
        .as_ref()
        .is_some_and(|h| h.how == state::HandOverHow::Started);
    if dom.is_active()? {
        commit_all(req, conn, dom, st)?;
    } else if started && !needs_commit(dom, &pending)? {
        // Pivoted, but not yet checked and cleaned up.
        commit_all(req, conn, dom, st)?;
    } else if started {
        // Shut down (or destroyed) before the commit finished: commit with no guest running.
        for mut rec in pending {
            rec.offline = true;
            record(dom, &rec)?;
        }
        log::info!(
            "domain '{}' is shut off: starting it paused (no guest code runs) to commit, then destroying it",
            dom.name()
        );
        dom.start_paused().map_err(|e| {
            anyhow::anyhow!(
                "domain '{}': starting it paused for the commit: {}",
                dom.name(),
                e.message()
            )
        })?;
        commit_all(req, conn, dom, st)?;
    } else {
        // Switched but never started: every overlay was uploaded before the first switch, so
        // the disks are complete; switch the rest and start now.
        let uploaded = metadata::read_overlays(dom)?;
        for d in &mut st.disks {
            let on_overlay = uploaded
                .iter()
                .any(|r| r.target_dev == d.target_dev && r.step >= OverlayStep::Uploaded);
            if on_overlay && d.being_written() {
                d.apply_done()?;
            }
        }
        ensure!(
            st.every_disk_complete(),
            "domain '{}': disk(s) {} are on their overlays but another disk is not completely written; not starting it",
            dom.name(),
            devs.join(", ")
        );
        switch_all(conn, dom)?;
        metadata::write(dom, st)?;
        handover::start(conn, dom, st)?;
        log::info!(
            "domain '{}' started (outage_s={:.3})",
            dom.name(),
            since_start().as_secs_f64()
        );
        commit_all(req, conn, dom, st)?;
    }
    Ok(true)
}

/// Whether the persistent definition still reads any of `records`' overlays.
fn needs_commit(dom: &Dom, records: &[OverlayRecord]) -> Result<bool> {
    let xml = dom.xml()?;
    for r in records {
        if disk_file(&xml, &r.target_dev)?.as_deref() == Some(r.path.as_str()) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Stage 2's last part, once the domain runs on its overlays: say the outage, commit each
/// overlay into its volume, pivot, check the definition, remove the overlay.
pub fn after_start(req: &ImportPlan, conn: &Conn, dom: &Dom, st: &ImportState) -> Result<()> {
    if in_use(dom)?.is_empty() {
        return Ok(());
    }
    log::info!(
        "domain '{}' running on its overlay(s): outage_s={:.3} (from the command's start)",
        dom.name(),
        since_start().as_secs_f64()
    );
    commit_all(req, conn, dom, st)
}

/// The cutover from ESXi's last part, once the domain runs on its overlays: commit each into
/// its volume (the outage was measured and said by the cutover itself).
pub fn commit(req: &ImportPlan, conn: &Conn, dom: &Dom, st: &ImportState) -> Result<()> {
    commit_all(req, conn, dom, st)
}

/// Every overlay of a domain that never ran on them, undone: a disk switched to its overlay
/// gets its recorded element back, the overlay volume goes, and its record with it. For a
/// cutover from ESXi that failed before the start (the VM may run on ESXi again, so the
/// overlays are stale). Refused while the domain runs.
pub fn discard(conn: &Conn, dom: &Dom) -> Result<()> {
    let records = metadata::read_overlays(dom)?;
    if records.is_empty() {
        return Ok(());
    }
    ensure!(
        !dom.is_active()?,
        "domain '{}' runs: its overlays are not discarded",
        dom.name()
    );
    for rec in records {
        if disk_file(&dom.xml()?, &rec.target_dev)?.as_deref() == Some(rec.path.as_str()) {
            let mut xml = xmltree::parse(&dom.xml()?)?;
            *disk_mut(&mut xml, &rec.target_dev)? = xmltree::parse(&rec.original_disk)?;
            conn.define_domain(&xmltree::to_string(&xml))?;
        }
        if let Some(v) = conn.pool(&rec.pool)?.find_volume(&rec.volume)? {
            v.delete()?;
        }
        forget(dom, &rec.target_dev)?;
        log::info!(
            "disk {}: its overlay '{}' from a cutover that did not start the domain is removed",
            rec.target_dev,
            rec.volume
        );
    }
    metadata::remove_overlays(dom)
}

/// Commit every overlay in use; the domain is running (or paused for an offline commit).
fn commit_all(req: &ImportPlan, conn: &Conn, dom: &Dom, st: &ImportState) -> Result<()> {
    for mut rec in in_use(dom)? {
        let ds = st
            .disks
            .iter()
            .find(|d| d.target_dev == rec.target_dev)
            .with_context(|| format!("the import state has no disk {}", rec.target_dev))?;
        let raw = conn.pool(&ds.pool)?.volume(&ds.volume)?;
        let started = Instant::now();
        commit_live(req, dom, &mut rec)?;
        finish(conn, dom, &mut rec, &raw)?;
        log::info!(
            "disk {}: committed into volume '{}' and overlay removed: commit_s={:.3}",
            rec.target_dev,
            raw.describe(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Run (or find) the active block commit of `rec`'s disk and pivot once it is ready. A job
/// already running (a rerun after the tool or the daemon went away) is taken over; one that
/// vanished while the disk is still on the overlay is started again. A domain that stops
/// meanwhile leaves the disk on its overlay, for a rerun to commit.
fn commit_live(req: &ImportPlan, dom: &Dom, rec: &mut OverlayRecord) -> Result<()> {
    if let Ok(Some(j)) = dom.block_job(&rec.target_dev) {
        log::info!(
            "disk {}: a block commit is already running ({} of {}): taking it over",
            rec.target_dev,
            j.cur,
            j.end
        );
    } else if rec.step >= OverlayStep::Committing {
        log::info!(
            "disk {}: no block commit running; starting it again",
            rec.target_dev
        );
    }
    loop {
        crate::interrupt::check()?;
        match commit_step(req, dom, rec) {
            Ok(true) => return Ok(()),
            Ok(false) => std::thread::sleep(POLL),
            Err(e) if stopping(dom) => {
                return Err(e.context(format!(
                    "domain '{}' stopped before the commit of disk {} finished: the disk stays on its overlay '{}' and nothing is lost; rerun the same command to commit it (the domain is started paused for that, no guest code runs, and is left shut off)",
                    dom.name(),
                    rec.target_dev,
                    rec.path
                )))
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the domain stopped (or is stopping: a call that fails as QEMU exits can return
/// before libvirt marks the domain shut off, so look again for up to 2 s).
fn stopping(dom: &Dom) -> bool {
    for _ in 0..20 {
        if !dom.is_active().unwrap_or(true) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// One look at the commit: started when there is none, pivoted when ready; true once the
/// disk is back on the volume.
fn commit_step(req: &ImportPlan, dom: &Dom, rec: &mut OverlayRecord) -> Result<bool> {
    let dev = rec.target_dev.clone();
    if disk_file(&dom.live_xml()?, &dev)?.as_deref() != Some(rec.path.as_str()) {
        return Ok(true); // pivoted already
    }
    ensure!(dom.is_active()?, "domain '{}' is not running", dom.name());
    match dom.block_job(&dev)? {
        None => {
            if rec.step < OverlayStep::Committing {
                rec.step = OverlayStep::Committing;
                record(dom, rec)?;
            }
            dom.block_commit_active(&dev, req.commit_bandwidth.unwrap_or(0))?;
        }
        Some(j) if !j.active_commit => bail!(
            "disk {dev} of domain '{}' has another block job running; wait for it or abort it (virsh blockjob {} {dev} --abort) and rerun",
            dom.name(),
            dom.name()
        ),
        Some(j) if j.cur == j.end => match dom.block_job_pivot(&dev) {
            Ok(()) => return Ok(true),
            Err(e) if e.code().is(virt::error::ErrorNumber::BlockCopyActive) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("pivoting disk {dev} of domain '{}'", dom.name())))
            }
        },
        Some(_) => {}
    }
    Ok(false)
}

/// After the pivot: the persistent definition gets the disk element it had before the
/// overlay, and must name the raw volume; a domain started paused for the commit is destroyed
/// again; then the overlay volume goes and its record with it.
fn finish(conn: &Conn, dom: &Dom, rec: &mut OverlayRecord, raw: &Vol) -> Result<()> {
    let mut xml = xmltree::parse(&dom.xml()?)?;
    let original = xmltree::parse(&rec.original_disk)
        .with_context(|| format!("the recorded disk element of {}", rec.target_dev))?;
    *disk_mut(&mut xml, &rec.target_dev)? = original;
    conn.define_domain(&xmltree::to_string(&xml))?;
    let disk = dom
        .disk_sources()?
        .into_iter()
        .find(|d| d.target_dev == rec.target_dev)
        .with_context(|| format!("the domain lost disk {}", rec.target_dev))?;
    let on_raw = match &disk.kind {
        DiskKind::Volume { pool, volume } => *pool == raw.pool_name() && *volume == raw.name(),
        DiskKind::File(p) | DiskKind::Block(p) => p == raw.path(),
        DiskKind::Other(_) => false,
    };
    ensure!(
        on_raw,
        "domain '{}': after the commit, the definition of disk {} does not name volume '{}' ({:?}); the overlay '{}' is kept",
        dom.name(),
        rec.target_dev,
        raw.describe(),
        disk.kind,
        rec.path
    );
    rec.step = OverlayStep::Committed;
    record(dom, rec)?;
    if rec.offline && dom.is_active()? {
        dom.destroy()?;
    }
    if let Some(v) = conn.pool(&rec.pool)?.find_volume(&rec.volume)? {
        v.delete()?;
    }
    forget(dom, &rec.target_dev)
}
