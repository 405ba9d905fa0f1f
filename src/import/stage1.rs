//! Stage 1: every check first ([`check`], nothing changed), then the volumes and the domain (created, or found when other tooling defined them), then every base uploaded through one sparse stream each ([`run`]).

use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::request::{BaseInput, DiskInput, Request};
use super::spec::{self, os_name};
use super::{guards, trial};
use crate::domain_xml::{self, DiskSource as SpecDisk};
use crate::libvirt::{self, Conn, DiskKind, Dom, Vol};
use crate::progress::Transfer;
use crate::state::lifecycle::{self, BaseStep};
use crate::state::{metadata, DiskState, ImportState};

/// What stage 1 does to the disks of a domain that exists, checked: each disk's volume, what
/// happens to its base, and the disk's state as the upload starts from it.
pub(super) struct BaseWork {
    vols: Vec<Vol>,
    steps: Vec<BaseStep>,
    disks: Vec<DiskState>,
}

/// Every check of stage 1 on a domain that exists (defined by other tooling, or by an earlier
/// run), with nothing changed: enough disks, each volume raw, the lifecycle's rule for each
/// base (a completed upload is not done again unasked), each volume large enough. It runs
/// before the shaping options are applied, so a refused stage 1 leaves the domain's XML and
/// its import state as they were. None when there is no domain yet (stage 1 defines it).
pub(super) fn check(
    req: &Request,
    conn: &Conn,
    dom: Option<&Dom>,
    state: Option<&ImportState>,
    disks: &[DiskInput],
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
    for (i, input) in disks.iter().enumerate() {
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
            (BaseStep::Keep, Some(ds)) => ds.clone(),
            _ => disk_state(&sources[i].target_dev, &vol, input, old)?,
        });
        work.steps.push(step);
        work.vols.push(vol);
    }
    Ok(Some(work))
}

/// Stage 1: volumes and domain (created, or found when other tooling defined them and checked
/// by [`check`]), then every base uploaded through one sparse stream each. The state says
/// "not uploaded" until the stream finished, so a broken upload is never taken for a complete
/// one.
pub(super) fn run(
    req: &Request,
    conn: &Conn,
    dom: Option<Dom>,
    state: Option<ImportState>,
    disks: &[DiskInput],
    checked: Option<BaseWork>,
) -> Result<(Option<Dom>, ImportState)> {
    let mut st = ImportState::default();
    trial::carry_over(&mut st, state.as_ref(), &req.domain);
    let (dom, work) = match dom {
        Some(dom) => {
            let work = checked.expect("check checked the domain that exists");
            repair_interrupted(req, &work, state.as_ref(), disks)?;
            (Some(dom), work)
        }
        None => define(req, conn, &mut st, disks)?,
    };
    let BaseWork {
        vols,
        steps,
        disks: states,
    } = work;
    st.disks = states;
    let Some(dom) = dom else {
        return Ok((None, st));
    };
    warn_reupload(req, &steps, &st.disks);
    if req.dry_run {
        say_uploads(disks, &vols);
        return Ok((Some(dom), st));
    }
    metadata::write(&dom, &st)?;
    for (i, (input, vol)) in disks.iter().zip(&vols).enumerate() {
        let Some(base) = &input.base else { continue };
        if steps[i] == BaseStep::Keep {
            log::info!(
                "disk {}: base already uploaded into '{}': kept",
                st.disks[i].target_dev,
                vol.describe()
            );
            continue;
        }
        crate::interrupt::check()?;
        let (span, bytes) = upload_base(base, vol, &st.disks[i].target_dev)?;
        st.disks[i].base_uploaded()?;
        metadata::write(&dom, &st)?;
        span.done(Some(bytes), None);
    }
    Ok((Some(dom), st))
}

/// On a domain that exists, each base upload an earlier run left unfinished: its file
/// volume's length given back before the upload starts again ([`repair_interrupted_base`]).
fn repair_interrupted(
    req: &Request,
    work: &BaseWork,
    state: Option<&ImportState>,
    disks: &[DiskInput],
) -> Result<()> {
    let old = state.map_or(&[][..], |s| &s.disks[..]);
    for (i, ds) in old.iter().enumerate().take(disks.len()) {
        if work.steps[i] != BaseStep::Keep && !req.dry_run {
            repair_interrupted_base(&work.vols[i], ds, &disks[i])?;
        }
    }
    Ok(())
}

/// A new domain: its volumes created (or reused when an earlier run left them), then its
/// definition, recorded in `st` as this tool's. With `--dry-run` both are only said, and
/// there is no domain to go on with.
fn define(
    req: &Request,
    conn: &Conn,
    st: &mut ImportState,
    disks: &[DiskInput],
) -> Result<(Option<Dom>, BaseWork)> {
    let names = spec::volume_names(req, disks.len());
    let spec = spec::new_domain(req, conn, &names)?;
    let work = create_volumes(req, conn, disks, &names, &domain_xml::disk_targets(&spec))?;
    if req.dry_run {
        log::info!(
            "would define domain '{}':\n{}",
            req.domain,
            domain_xml::render(&spec)?
        );
        for (input, name) in disks.iter().zip(&names) {
            if let (Some(b), SpecDisk::Volume { volume, .. }) = (&input.base, name) {
                log::info!(
                    "would upload {}, {}, into volume '{volume}'",
                    b.name(),
                    crate::units::human_bytes_exact(b.capacity())
                );
            }
        }
        return Ok((None, work));
    }
    let span = crate::report::begin("define");
    let dom = conn
        .define_domain(&domain_xml::render(&spec)?)
        .map_err(|e| trial::explain_define(conn, e))?;
    span.done(None, None);
    st.defined_by_tool = Some(true);
    st.os = Some(os_name(spec.os).to_lowercase());
    log::info!(
        "defined domain '{}' ({} guest, {} MiB, {} vCPUs)",
        req.domain,
        os_name(spec.os),
        spec.memory_mib,
        spec.vcpus
    );
    Ok((Some(dom), work))
}

/// The volumes `names` of a new domain, one per disk (`targets` are their devices), each as
/// large as its base; with `--dry-run` only said, and none in the work.
fn create_volumes(
    req: &Request,
    conn: &Conn,
    disks: &[DiskInput],
    names: &[SpecDisk],
    targets: &[String],
) -> Result<BaseWork> {
    let mut work = BaseWork {
        vols: Vec::new(),
        steps: Vec::new(),
        disks: Vec::new(),
    };
    for ((input, name), target) in disks.iter().zip(names).zip(targets) {
        let SpecDisk::Volume { volume, .. } = name else {
            unreachable!("volume_names gives volumes")
        };
        let capacity = input
            .base
            .as_ref()
            .map(BaseInput::capacity)
            .ok_or_else(|| anyhow!("no base image for disk {target}: give --flat"))?;
        if req.dry_run {
            log::info!(
                "would create volume '{volume}' of {} in pool '{}'",
                crate::units::human_bytes_exact(capacity),
                req.pool
            );
            continue;
        }
        let vol = ensure_volume(conn, &req.pool, volume, capacity)?;
        guards::ensure_raw_volume(&vol)?;
        work.disks.push(disk_state(target, &vol, input, None)?);
        work.steps.push(BaseStep::Upload);
        work.vols.push(vol);
    }
    Ok(work)
}

/// `--reupload-base` over disks past their upload: what uploading each again destroys.
fn warn_reupload(req: &Request, steps: &[BaseStep], disks: &[DiskState]) {
    for (step, ds) in steps.iter().zip(disks) {
        if let BaseStep::Reupload { destroys } = step {
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
}

/// `--dry-run` on a domain that exists: the uploads stage 1 would make.
fn say_uploads(disks: &[DiskInput], vols: &[Vol]) {
    for (input, vol) in disks.iter().zip(vols) {
        if let Some(b) = &input.base {
            log::info!(
                "would upload {}, {}, into volume '{}'",
                b.name(),
                crate::units::human_bytes_exact(b.capacity()),
                vol.describe()
            );
        }
    }
}

/// Upload `base` whole into `vol` (disk `dev`) through one sparse stream, checked to have
/// read the disk's whole capacity. Its span, still being timed, and the bytes read.
fn upload_base(base: &BaseInput, vol: &Vol, dev: &str) -> Result<(crate::report::Span, u64)> {
    let mut span = crate::report::begin("base upload").disk(dev);
    span.io("stream");
    let started = Instant::now();
    let bar = Transfer::new(format!("disk {dev}: base upload"), base.capacity());
    let stats = match base {
        BaseInput::Remote(r) => upload_remote(r, vol, &bar),
        _ => libvirt::upload_image(vol, &mut base.reader()?, &mut |n| bar.set(n)),
    }
    .with_context(|| format!("uploading {} into volume '{}'", base.name(), vol.describe()))?;
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
    Ok((span, stats.bytes_read))
}

/// A base on ESXi uploaded as ranges side by side, each over a connection of its own and
/// written in place as it arrives; each range's length is checked as it ends.
fn upload_remote(
    base: &crate::esx::RemoteBase,
    vol: &Vol,
    bar: &Transfer,
) -> Result<libvirt::UploadStats> {
    let ranges = base.ranges();
    let image: Vec<libvirt::ImageRange> = ranges
        .iter()
        .map(|r| libvirt::ImageRange {
            offset: r.offset(),
            len: r.len,
        })
        .collect();
    log::info!(
        "{}: read as {} range(s) side by side, each over a {} connection of its own",
        base.name(),
        ranges.len(),
        base.transfer().name()
    );
    let open = |i: usize| -> Result<Box<dyn std::io::Read + Send>> {
        Ok(Box::new(crate::image_read::ReadAhead::sharing(
            base.read(ranges[i])?,
            ranges.len(),
        )))
    };
    libvirt::upload_ranges(vol, &image, &open, &|n| bar.add(n))
}

/// What stage 1 does with the base of a disk the import state may already know.
fn base_step(
    req: &Request,
    target_dev: &str,
    old: Option<&DiskState>,
    state: Option<&ImportState>,
) -> Result<BaseStep> {
    let handed = state.and_then(|s| s.handed_over.as_ref());
    // A .vmx import reruns the same command: disks it finished are kept.
    let keep_uploaded = req.vmx.is_some();
    lifecycle::base_step(target_dev, old, handed, req.reupload_base, keep_uploaded)
        .with_context(|| format!("domain '{}'", req.domain))
}

/// A base upload that was cut off (Ctrl-C, a killed process or daemon) can leave a file
/// volume shorter than the disk; while the state says the base is incomplete, its length is
/// given back before the upload starts again.
fn repair_interrupted_base(vol: &Vol, ds: &DiskState, input: &DiskInput) -> Result<()> {
    let Some(length) = interrupted_length(ds, input) else {
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
fn interrupted_length(ds: &DiskState, input: &DiskInput) -> Option<u64> {
    let capacity = input.base.as_ref().map_or(ds.capacity, BaseInput::capacity);
    (!ds.base_done()).then_some(capacity.max(ds.capacity))
}

/// The state of a disk whose base stage 1 uploads into `vol`, checked to fit. `old` is what
/// the import state knew of the disk: a file volume its interrupted upload left short counts
/// at the length [`repair_interrupted_base`] gives back before the upload.
fn disk_state(
    target_dev: &str,
    vol: &Vol,
    input: &DiskInput,
    old: Option<&DiskState>,
) -> Result<DiskState> {
    let capacity = input
        .base
        .as_ref()
        .map(BaseInput::capacity)
        .unwrap_or(vol.capacity()?);
    let mut vol_cap = vol.capacity()?;
    if let Some(length) = old.and_then(|ds| interrupted_length(ds, input)) {
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
        input.base.as_ref().and_then(BaseInput::cid),
        input.base.as_ref().and_then(BaseInput::location),
    ))
}

/// The volume named `name` in `pool`, created at `capacity` unless an earlier run left it.
pub(super) fn ensure_volume(conn: &Conn, pool: &str, name: &str, capacity: u64) -> Result<Vol> {
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
