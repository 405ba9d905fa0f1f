//! Stage 2: every check first ([`check`]: the base uploads complete, each chain opened and continuing what the volume holds, the lifecycle's rules), then each disk's deltas applied above the base stage 1 recorded ([`run`]), the lineage recorded before the first byte goes out.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use super::plan::ImportPlan;
use super::request::{BaseInput, DiskInput};
use super::{guards, overlay, stage1, write};
use crate::domain_xml::{self, DiskSource as SpecDisk};
use crate::libvirt::{self, Conn, Dom, Vol};
use crate::progress::Transfer;
use crate::state::{self, lifecycle, metadata, AppliedDelta, DiskState, HandOver, ImportState};
use crate::vmdk::{BaseImage, Chain, DiskId, LayerInfo, OpenOptions, Parent};

/// One disk's delta chain, checked: what stage 2 writes into its volume.
pub(super) struct DeltaWork {
    chain: Chain,
    /// The deltas the volume holds once the chain is applied.
    lineage: Vec<AppliedDelta>,
    vol: Vol,
    survey: crate::apply::ApplyReport,
    direct: bool,
}

/// Stage 2 once every check passed.
pub(super) enum StageTwo {
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
pub(super) fn check(
    req: &ImportPlan,
    conn: &Conn,
    dom: Option<&Dom>,
    st: &ImportState,
    disks: &[DiskInput],
) -> Result<StageTwo> {
    if req.dry_run && st.disks.len() < disks.len() {
        // Stage 1 was only described: check the chains and say what they would write.
        for input in disks.iter().filter(|p| !p.deltas.is_empty()) {
            let chain = Chain::open_deltas(&input.deltas, &req.open)?;
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
    let handed = st.handed_over.as_ref();
    let mut work = Vec::new();
    for (input, ds) in disks.iter().zip(&st.disks) {
        work.push(check_disk(
            req,
            conn,
            dom_xml.as_deref(),
            handed,
            ds,
            input,
        )?);
    }
    Ok(StageTwo::Checked(work))
}

/// [`check`] for one disk (`ds` in the import state, whose latest hand-over is `handed`):
/// its chain checked, or None when it has no deltas or is an independent disk copied whole.
fn check_disk(
    req: &ImportPlan,
    conn: &Conn,
    dom_xml: Option<&str>,
    handed: Option<&HandOver>,
    ds: &DiskState,
    input: &DiskInput,
) -> Result<Option<DeltaWork>> {
    ensure!(
        ds.base_done(),
        "domain '{}' disk {}: the base upload is not complete; rerun stage 1 (--flat) first",
        req.domain,
        ds.target_dev
    );
    if !input.copy_whole && input.deltas.is_empty() {
        return Ok(None);
    }
    let vol = conn.pool(&ds.pool)?.volume(&ds.volume)?;
    if let Some(xml) = dom_xml {
        guards::ensure_raw(&req.domain, xml, &ds.target_dev, &vol)?;
    }
    let what = || format!("domain '{}'", req.domain);
    if input.copy_whole {
        lifecycle::may_copy_whole(&ds.target_dev, ds, handed).with_context(what)?;
        return Ok(None);
    }
    let chain = Chain::open_deltas(&input.deltas, &req.open)?;
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
    Ok(Some(DeltaWork {
        chain,
        lineage,
        vol,
        survey,
        direct,
    }))
}

/// Stage 2: every disk's deltas, checked by [`check`], applied above the base
/// recorded in stage 1. The state marks a disk as being written before the first byte goes
/// out and clears the mark only once all its bytes landed: a failed run leaves the domain
/// unstartable by this tool until a rerun completes.
pub(super) fn run(
    req: &ImportPlan,
    conn: &Conn,
    dom: Option<&Dom>,
    st: &mut ImportState,
    disks: &[DiskInput],
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
        let bytes = if disks[i].copy_whole {
            // Independent disk: the whole image again, now that the VM is off.
            copy_whole(conn, dom, st, i, &disks[i])?
        } else if let Some(w) = w {
            apply_chain(req, conn, dom, st, i, &disks[i], w)?
        } else {
            continue;
        };
        *written.get_or_insert(0) += bytes;
    }
    if let Some(bytes) = written {
        record_local_apply(dom, st, bytes, started.elapsed())?;
    }
    overlay::switch_all(conn, dom)?;
    Ok(())
}

/// Independent disk `i` copied whole into its volume, marked as being written meanwhile.
/// The bytes copied.
fn copy_whole(
    conn: &Conn,
    dom: &Dom,
    st: &mut ImportState,
    i: usize,
    input: &DiskInput,
) -> Result<u64> {
    st.disks[i].begin_whole_copy()?;
    metadata::write(dom, st)?;
    let base = input.base.as_ref().expect("independent disks have a base");
    let ds = &st.disks[i];
    let vol = conn.pool(&ds.pool)?.volume(&ds.volume)?;
    // An earlier copy cut off outright can have left the file short.
    libvirt::repair_file_length(&vol, ds.capacity)?;
    let bar = Transfer::new(
        format!("disk {}: whole copy", ds.target_dev),
        base.capacity(),
    );
    let stats = libvirt::upload_image(&vol, &mut base.reader()?, &mut |n| bar.set(n))?;
    bar.finish();
    log::info!(
        "copied independent disk {} whole: {} bytes",
        base.name(),
        stats.bytes_read
    );
    st.disks[i].apply_done()?;
    metadata::write(dom, st)?;
    Ok(stats.bytes_read)
}

/// Disk `i`'s checked chain written into its volume (through an overlay, or by the write
/// path [`check`] chose), its lineage recorded as being applied first. The bytes written.
fn apply_chain(
    req: &ImportPlan,
    conn: &Conn,
    dom: &Dom,
    st: &mut ImportState,
    i: usize,
    input: &DiskInput,
    work: DeltaWork,
) -> Result<u64> {
    let DeltaWork {
        chain,
        lineage,
        vol,
        survey,
        direct,
    } = work;
    let base = base_for_gaps(&st.disks[i], input, &chain, &req.open);
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
    let mut span = crate::report::begin("delta apply").disk(&ds.target_dev);
    let report = if let Some(pool) = overlay::choose(req, conn, &ds)? {
        span.io("overlay");
        let r = overlay::write_disk(dom, &pool, &ds, &vol, &chain)?;
        span.done(Some(survey.data_bytes + survey.zero_bytes), Some(1));
        r
    } else {
        let r = write::write_disk(&vol, &ds.target_dev, &chain, &survey, direct, gaps)?;
        span.io(r.io);
        let calls = (r.io == "stream").then_some(r.calls);
        span.done(Some(r.changes.data_bytes + r.changes.zero_bytes), calls);
        r.to_string()
    };
    log::info!("disk {}: {report}", ds.target_dev);
    st.disks[i].apply_done()?;
    metadata::write(dom, st)?;
    Ok(survey.data_bytes + survey.zero_bytes)
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
    input: &DiskInput,
    chain: &Chain,
    open: &OpenOptions,
) -> Option<BaseImage> {
    let recorded = DiskId {
        cid: Some(ds.base_cid?),
        capacity: ds.capacity,
    };
    let path = match &input.base {
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

/// Size of the driver-install disk: Windows only needs to see a virtio disk, not use it.
const DRIVER_DISK_BYTES: u64 = 64 << 20;

/// Create the driver-install volume and attach it as a virtio disk (once), so a Windows guest
/// installs its virtio storage driver before `--switch-to-virtio` moves its boot disk.
pub(super) fn attach_driver_disk(req: &ImportPlan, conn: &Conn, dom: &Dom) -> Result<()> {
    let volume = format!("{}-driverdisk", req.domain);
    stage1::ensure_volume(conn, &req.pool, &volume, DRIVER_DISK_BYTES)?;
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
