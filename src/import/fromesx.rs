//! Pre-copy rounds (`--sync`) and the cutover (`--cutover`) from an ESXi host: frozen deltas applied while the VM runs, then guest shutdown, the final deltas read over ssh into the volumes (through libvirt, by `esxoverlay`, when this host cannot write them), the domain started and the outage measured.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::time::{Duration, Instant};

use super::esxdeltas::{open_all, side_by_side, DiskWork, Moved, Opened};
use super::esxoverlay::{self, Targets, Writer};
use super::plan::{EsxOptions, ImportPlan, Step};
use super::prove::{self, Found};
use super::{guards, handover, overlay};
use crate::esx::remote::{self, PassReport};
use crate::esx::vimcmd::Power;
use crate::esx::vm::{ShutdownRefused, Vm};
use crate::esx::{RemoteChain, RemoteDelta, SNAPSHOT_NAME};
use crate::libvirt::{Conn, Dom, Vol};
use crate::state::{lifecycle, metadata};
use crate::state::{AppliedDelta, DiskState, ImportState, Outage, SyncRound};
use crate::vmdk::{DiskId, Parent};

/// What `--sync` froze: the snapshot's name, the work, and the extents the VM writes into now
/// (None when one cannot be named: the final size is then unknown).
type Frozen = (String, Vec<DiskWork>, Option<Vec<String>>);

/// Run `--sync` or `--cutover` for the domain of `req`. Every check that can refuse comes
/// before the trial start of a domain stage 1 never proved, whose ladder may redefine it:
/// the domain, its volumes, then the ESXi side (in `sync` and `cutover`).
pub fn run(req: &ImportPlan, conn: &Conn, o: &EsxOptions) -> Result<()> {
    if esxoverlay::settle(req, conn)? {
        return Ok(());
    }
    let (dom, mut st) = checked_domain(req, conn)?;
    let targets = targets(req, conn, &dom, &st, o.step)?;
    let vm = Vm::find(
        &o.url,
        req.dry_run,
        req.dry_run,
        req.open.allow_outside_paths,
        req.transfer.clone(),
    )?;
    match o.step {
        Step::Sync => sync(req, conn, dom, &mut st, &targets, &vm, o),
        Step::Cutover => cutover(req, conn, dom, &mut st, &targets, &vm, o),
    }
}

/// The trial start of a domain stage 1 never proved ([`prove::before_stage_two`]), once every
/// check that needs nothing changed has passed. Returns the domain to go on with and, when
/// the trial ran, the definition and import state the run found: [`undo`] puts them back for
/// a refusal that still comes before anything is written.
fn prove(
    req: &ImportPlan,
    conn: &Conn,
    dom: Dom,
    st: &mut ImportState,
) -> Result<(Dom, Option<Found>)> {
    let (dom, found) = prove::before_stage_two(req, conn, Some(dom), st)?;
    Ok((dom.expect("a domain"), found))
}

/// `e`, a refusal after the trial start: the domain's definition and import state put back
/// as the run found them (`found`, when the trial ran).
fn undo(
    conn: &Conn,
    found: Option<Found>,
    st: &mut ImportState,
    e: anyhow::Error,
) -> anyhow::Error {
    let Some(found) = found else { return e };
    match found.put_back(conn, st) {
        Ok(_) => {
            log::info!("the domain's definition and import state are back as this run found them");
            e
        }
        Err(back) => e.context(format!(
            "putting the domain's definition and import state back failed too: {back:#}"
        )),
    }
}

/// The VM's chains now, checked before anything changes on either side: its disks are the
/// ones stage 1 uploaded, and the deltas already applied are still in them.
fn checked_chains(vm: &Vm, st: &ImportState) -> Result<Vec<RemoteChain>> {
    let chains = chains(vm, st)?;
    for (ds, c) in st.disks.iter().zip(&chains) {
        pending(ds, &c.deltas, c.deltas.len(), false)?;
    }
    Ok(chains)
}

/// The domain and its import state, when a run from ESXi may write into it: every base
/// uploaded, never handed over to its guest, not running.
fn checked_domain(req: &ImportPlan, conn: &Conn) -> Result<(Dom, ImportState)> {
    let name = &req.domain;
    let dom = conn.domain(name)?.ok_or_else(|| {
        anyhow!(
            "domain '{name}' does not exist on {}: run stage 1 (the same command without --sync or --cutover) first",
            conn.uri()
        )
    })?;
    let st = metadata::read(&dom)?.ok_or_else(|| {
        anyhow!(
            "domain '{name}' has no import state: it was not made by stage 1 of virt-vmdkimport"
        )
    })?;
    ensure!(
        st.every_base_uploaded(),
        "domain '{name}': not every base is uploaded; run stage 1 (the same command without --sync or --cutover) to finish it"
    );
    if let Some(h) = &st.handed_over {
        bail!("domain '{name}' was already handed over to its guest ({h}): the cutover is done; nothing from ESXi may be written into it any more");
    }
    ensure!(
        !dom.is_active()?,
        "domain '{name}' is running: writing under a live guest corrupts it; shut it down first"
    );
    Ok((dom, st))
}

/// Every disk's volume, checked raw, and how the deltas reach them ([`esxoverlay::choose`]):
/// written where they arrive when this host can write them, else through libvirt.
fn targets(
    req: &ImportPlan,
    conn: &Conn,
    dom: &Dom,
    st: &ImportState,
    step: Step,
) -> Result<Targets> {
    let xml = dom.xml()?;
    let vols = st
        .disks
        .iter()
        .map(|ds| {
            let vol = conn.pool(&ds.pool)?.volume(&ds.volume)?;
            guards::ensure_raw(&req.domain, &xml, &ds.target_dev, &vol)?;
            Ok(vol)
        })
        .collect::<Result<Vec<_>>>()?;
    let writer = esxoverlay::choose(req, conn, dom, st, &vols, step)?;
    Ok(Targets { vols, writer })
}

/// The host's chains now, matched with the disks stage 1 uploaded.
fn chains(vm: &Vm, st: &ImportState) -> Result<Vec<RemoteChain>> {
    let cfg = vm.config()?;
    let chains = vm.chains(&cfg)?;
    ensure!(
        chains.len() == st.disks.len(),
        "{}: the VM has {} disks on ESXi, stage 1 uploaded {}",
        vm.ds_path,
        chains.len(),
        st.disks.len()
    );
    for (c, ds) in chains.iter().zip(&st.disks) {
        let recorded = DiskId {
            cid: ds.base_cid,
            capacity: ds.capacity,
        };
        let found = DiskId {
            cid: c.base.cid,
            capacity: c.base.capacity,
        };
        ensure!(
            recorded.admits(found),
            "{}: its base (CID {}, {} bytes) is not the one stage 1 uploaded to disk {} (CID {}, {} bytes): the VM's disks changed on ESXi; rerun stage 1 with --reupload-base",
            c.base.name(),
            c.base.cid.map_or("none".into(), |c| format!("{c:08x}")),
            c.base.capacity,
            ds.target_dev,
            ds.base_cid.map_or("none".into(), |c| format!("{c:08x}")),
            ds.capacity
        );
    }
    Ok(chains)
}

/// Where the deltas of `chain` up to `eligible` start to need writing, and the lineage after.
/// Deltas recorded as applied must be the chain's first ones, in order; one applied while it
/// was the VM's active delta counts as not applied (the VM may have written into it since).
/// After an interrupted run, its deltas are written again from where it started.
fn pending(
    ds: &DiskState,
    deltas: &[RemoteDelta],
    eligible: usize,
    top_active: bool,
) -> Result<(usize, Vec<AppliedDelta>)> {
    let cid = |i: usize| deltas[i].descriptor.cid;
    let mut k = 0;
    while k < ds.applied.len()
        && k < eligible
        && ds.applied[k].cid == cid(k)
        && !ds.applied[k].active
    {
        k += 1;
    }
    for (j, a) in ds.applied.iter().enumerate().skip(k) {
        ensure!(
            j < deltas.len() && a.cid == cid(j),
            "disk {}: {} (applied earlier) is no longer in the VM's chain on ESXi ({}): its snapshots were reverted or consolidated since, so the volume holds data the VM no longer has; rerun stage 1 with --reupload-base",
            ds.target_dev,
            a.file,
            deltas.iter().map(|d| d.shown.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let start = ds.unfinished_from().map_or(k, |from| k.min(from));
    let mut lineage = ds.applied[..start].to_vec();
    for (i, d) in deltas.iter().enumerate().take(eligible).skip(start) {
        lineage.push(AppliedDelta {
            file: d.path.rsplit('/').next().unwrap_or_default().to_string(),
            cid: d.descriptor.cid,
            parent_cid: d.descriptor.parent_cid,
            handed_over: false,
            active: top_active && i + 1 == deltas.len(),
        });
    }
    Ok((start, lineage))
}

/// For every disk, the deltas up to `eligible(chain)` not yet in its volume, opened and
/// checked (capacity, tables) before anything is marked or written.
fn prepare(
    vm: &Vm,
    st: &ImportState,
    chains: &[RemoteChain],
    eligible: &dyn Fn(&RemoteChain) -> usize,
    top_active: bool,
    cache: &mut HashMap<String, Opened>,
    jobs: usize,
) -> Result<Vec<DiskWork>> {
    let mut plans = Vec::new();
    for (ds, chain) in st.disks.iter().zip(chains) {
        let upto = eligible(chain);
        let (start, lineage) = pending(ds, &chain.deltas, upto, top_active)?;
        plans.push((start, lineage, &chain.deltas[start..upto]));
    }
    let wanted: Vec<&RemoteDelta> = plans.iter().flat_map(|p| p.2.iter()).collect();
    open_all(vm, &wanted, cache, jobs)?;
    let mut work = Vec::new();
    for (i, (start, lineage, deltas)) in plans.into_iter().enumerate() {
        let ds = &st.disks[i];
        for d in deltas {
            cache[&d.path].chain.check_parent(Parent::Volume {
                capacity: ds.capacity,
                disk: &ds.target_dev,
            })?;
        }
        if !deltas.is_empty() {
            work.push(DiskWork {
                disk: i,
                start,
                lineage,
                deltas: deltas.iter().map(|d| d.path.clone()).collect(),
            });
        }
    }
    Ok(work)
}

/// Mark the disks, write their deltas (as many disks at a time as --ssh-connections), unmark
/// the ones finished.
fn apply(
    vm: &Vm,
    dom: &Dom,
    st: &mut ImportState,
    targets: &[Vol],
    work: &[DiskWork],
    cache: &HashMap<String, Opened>,
) -> Result<Moved> {
    let started = Instant::now();
    for w in work {
        st.disks[w.disk].begin_apply(w.lineage.clone(), Some(w.start))?;
    }
    metadata::write(dom, st)?;
    // Each disk's grains come over a connection of their own: at most --ssh-connections.
    let results = side_by_side(work, vm.transfer.connections(), |w| {
        let dev = &st.disks[w.disk].target_dev;
        (w.disk, write_disk(vm, &targets[w.disk], w, cache, dev))
    });
    let mut moved = Moved::default();
    let mut first_err = None;
    for (disk, r) in results {
        match r {
            Ok(p) => {
                st.disks[disk].apply_done()?;
                moved.read += p.read;
                moved.data += p.data_bytes;
                moved.zero += p.zero_bytes;
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    moved.deltas = work.iter().map(|w| w.deltas.len()).sum();
    moved.over = vm.transfer.name();
    metadata::write(dom, st)?;
    if let Some(e) = first_err {
        return Err(e);
    }
    ensure!(
        work.iter().all(|w| !st.disks[w.disk].being_written()),
        "a disk is not completely written (a writing thread stopped); it stays marked"
    );
    // One refresh per pool written into, so libvirt's view of the volumes catches up: on a
    // pool of many volumes each refresh is costly, and this is in the outage.
    let mut refreshed = std::collections::HashSet::new();
    for w in work {
        if refreshed.insert(&st.disks[w.disk].pool) {
            targets[w.disk].pool()?.refresh()?;
        }
    }
    moved.secs = started.elapsed().as_secs_f64();
    Ok(moved)
}

/// One disk's deltas, oldest first, each in one pass over ssh, then flushed.
fn write_disk(
    vm: &Vm,
    vol: &Vol,
    w: &DiskWork,
    cache: &HashMap<String, Opened>,
    dev: &str,
) -> Result<PassReport> {
    let path = vol.path();
    let file: File = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("{path}: opening volume '{}' for writing", vol.describe()))?;
    let mut span = crate::report::begin("delta apply").disk(dev);
    span.io("direct");
    let mut total = PassReport::default();
    for d in &w.deltas {
        let o = &cache[d];
        let how = vm.transfer.name();
        log::info!(
            "disk {dev}: applying {} over {how}...",
            vm.ssh.url().with_path(d)
        );
        let name = o.extent.rsplit('/').next().unwrap_or(&o.extent);
        let label = format!("disk {dev}: {how} read of {name}");
        let p =
            remote::write_in_file_order(&vm.transfer, &o.extent, &o.pieces, &file, path, &label)
                .with_context(|| format!("disk {dev}: applying {}", vm.ssh.url().with_path(d)))?;
        total.read += p.read;
        total.data_bytes += p.data_bytes;
        total.zero_bytes += p.zero_bytes;
    }
    file.sync_all()
        .with_context(|| format!("{path}: flushing to stable storage"))?;
    span.done(Some(total.data_bytes + total.zero_bytes), None);
    Ok(total)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// The VM's power state, unless it is suspended (its memory holds state its disks do not).
fn usable_power(vm: &Vm) -> Result<Power> {
    let power = vm.power()?;
    ensure!(
        power != Power::Suspended,
        "{}: the VM is suspended on {}: resume it or power it off first",
        vm.ds_path,
        vm.host_name()
    );
    Ok(power)
}

/// `--sync`: a new migration snapshot freezes the VM's deltas, which are applied now.
fn sync(
    req: &ImportPlan,
    conn: &Conn,
    dom: Dom,
    st: &mut ImportState,
    targets: &Targets,
    vm: &Vm,
    o: &EsxOptions,
) -> Result<()> {
    usable_power(vm)?;
    checked_chains(vm, st)?;
    // The trial start before the snapshot: a domain that does not start leaves nothing on
    // ESXi either. What only the snapshot shows (the deltas it froze, opened) is checked
    // after it, and a refusal there puts the domain back as the trial found it.
    let (dom, found) = prove(req, conn, dom, st)?;
    let mut cache = HashMap::new();
    let (snap, work, tops) = match freeze(req, vm, st, &mut cache, o.jobs) {
        Ok(Some(frozen)) => frozen,
        Ok(None) => return Ok(()),
        Err(e) => return Err(undo(conn, found, st, e)),
    };
    let moved = match &targets.writer {
        Writer::Direct => apply(vm, &dom, st, &targets.vols, &work, &cache)?,
        _ => esxoverlay::fetch_and_apply(vm, &dom, st, targets, &work, &cache, o.jobs)?,
    };
    let round = sync_round(vm, st, &moved, tops.as_deref());
    st.syncs.push(round);
    metadata::write(&dom, st)?;
    log::info!(
        "sync round {}: applied {} delta(s): {:.1} MiB of data, {:.1} MiB of zeros ({:.1} MiB read over {}) in {}; the VM now writes into the deltas of '{snap}', which the next --sync or the --cutover applies",
        st.syncs.len(),
        moved.deltas,
        mib(moved.data),
        mib(moved.zero),
        mib(moved.read),
        moved.over,
        crate::units::human_ms((moved.secs * 1e3) as u64)
    );
    let start_ms = st.trial.as_ref().and_then(|t| t.start_ms);
    match crate::projection::project(&st.syncs, start_ms) {
        Some(p) => log::info!("{}", p.line()),
        None => log::info!(
            "a cutover now: not projected (the final deltas' size or a read rate is not known)"
        ),
    }
    Ok(())
}

/// The record of a round that applied `moved`: its figures, the final deltas' size now (the
/// extents of `tops`, which the VM writes into; None when they or their sizes are unknown), the time
/// since the previous round.
fn sync_round(vm: &Vm, st: &ImportState, moved: &Moved, tops: Option<&[String]>) -> SyncRound {
    let final_bytes = match tops.map(|t| vm.total_size(t)).transpose() {
        Ok(b) => b,
        Err(e) => {
            log::debug!("the final deltas' size: {e:#}");
            None
        }
    };
    let at = lifecycle::utc_now();
    let since_ms = st.syncs.last().and_then(|prev| {
        let (then, now) = (
            crate::units::parse_utc_ms(&prev.at)?,
            crate::units::parse_utc_ms(&at)?,
        );
        u64::try_from(now - then).ok()
    });
    SyncRound {
        at,
        bytes: moved.data + moved.zero,
        ms: (moved.secs * 1e3) as u64,
        read: Some(moved.read),
        final_bytes,
        since_ms,
    }
}

/// `--sync`'s steps from the migration snapshot until just before the first write: the
/// snapshot, then every frozen delta not applied yet opened and checked. The snapshot's name,
/// the work, and the extents the VM writes into now (each disk's top); None for a dry run,
/// which says what it would apply.
fn freeze(
    req: &ImportPlan,
    vm: &Vm,
    st: &ImportState,
    cache: &mut HashMap<String, Opened>,
    jobs: usize,
) -> Result<Option<Frozen>> {
    let span = crate::report::begin("snapshot");
    let snap = vm.take_snapshot()?;
    span.done(None, None);
    let chains = chains(vm, st)?;
    if req.dry_run {
        for (ds, c) in st.disks.iter().zip(&chains) {
            let (start, _) = pending(ds, &c.deltas, c.deltas.len(), false)?;
            for d in &c.deltas[start..] {
                log::info!(
                    "disk {}: would apply {} (frozen by '{snap}') over ssh",
                    ds.target_dev,
                    d.shown
                );
            }
        }
        return Ok(None);
    }
    let frozen = |c: &RemoteChain| c.deltas.len().saturating_sub(1);
    let work = prepare(vm, st, &chains, &frozen, false, cache, jobs)?;
    // Only for the projection: a top it cannot name leaves the final size unknown.
    let tops = chains
        .iter()
        .filter_map(|c| c.deltas.last())
        .map(super::esxdeltas::extent_of)
        .collect::<Result<Vec<_>>>()
        .ok();
    Ok(Some((snap, work, tops)))
}

/// `--cutover`: everything checked, then guest shutdown, the final deltas, the start.
fn cutover(
    req: &ImportPlan,
    conn: &Conn,
    dom: Dom,
    st: &mut ImportState,
    targets: &Targets,
    vm: &Vm,
    o: &EsxOptions,
) -> Result<()> {
    let power = usable_power(vm)?;
    // Before the VM is touched: the lineage of every delta, and the frozen ones opened.
    let chains = checked_chains(vm, st)?;
    let running = power == Power::On;
    let frozen = |c: &RemoteChain| c.deltas.len() - usize::from(running && !c.deltas.is_empty());
    let mut cache = HashMap::new();
    if req.dry_run {
        return say_cutover_plan(vm, st, &chains, (running, &targets.writer), o);
    }
    let work = prepare(vm, st, &chains, &frozen, false, &mut cache, o.jobs)?;
    // Through libvirt: room for the deltas here, and the frozen ones fetched, VM running.
    esxoverlay::before_shutdown(vm, targets, &chains, &work, &cache, o.jobs)?;
    // Last before the VM is touched, so that a domain that does not start leaves it running.
    let (dom, found) = prove(req, conn, dom, st)?;
    let t0 = Instant::now();
    if running {
        // Refused with the VM still running on ESXi: nothing changed here either.
        if let Err(e) = stop_vm(vm, o) {
            return Err(undo(conn, found, st, e));
        }
    } else {
        log::info!("{}: the VM is powered off already: no shutdown", vm.ds_path);
    }
    let shutdown = t0.elapsed();
    let before = st.clone();
    let outcome = finish(conn, &dom, st, targets, vm, &chains, &mut cache, o);
    let (moved, start) = match outcome {
        Ok(v) => v,
        Err(e) => {
            let e = esxoverlay::unstarted(conn, &dom, st, before, &targets.writer, e);
            return Err(roll_back(vm, running && o.rollback, e));
        }
    };
    let outage = Outage {
        at: lifecycle::utc_now(),
        shutdown_ms: shutdown.as_millis() as u64,
        apply_ms: (moved.secs * 1e3) as u64,
        bytes: moved.data + moved.zero,
        start_ms: start.as_millis() as u64,
        total_ms: t0.elapsed().as_millis() as u64,
    };
    say_outage(&req.domain, &outage, &moved, running);
    st.cutover = Some(outage);
    metadata::write(&dom, st)?;
    if let Writer::Overlay(..) = targets.writer {
        overlay::commit(req, conn, &dom, st).context("the domain runs on its overlay(s) and the VM is off on ESXi: rerun --cutover to finish the commit")?;
    }
    if o.remove_snapshots {
        remove_snapshots(vm);
    } else {
        log::info!(
            "the migration snapshots stay on {} (powering the VM on there is the way back); --remove-esx-snapshots removes them after a cutover",
            vm.host_name()
        );
    }
    Ok(())
}

/// Guest shutdown, waited for; `--hard-off` powers off when it cannot be had.
fn stop_vm(vm: &Vm, o: &EsxOptions) -> Result<()> {
    let span = crate::report::begin("guest shutdown");
    stop_vm_timed(vm, o)?;
    span.done(None, None);
    Ok(())
}

fn stop_vm_timed(vm: &Vm, o: &EsxOptions) -> Result<()> {
    log::info!(
        "{}: asking for a guest shutdown (vim-cmd vmsvc/power.shutdown {})",
        vm.ds_path,
        vm.id
    );
    let unchanged = "the VM still runs on ESXi and nothing was changed here";
    match vm.shutdown() {
        Ok(()) => {
            if vm.wait_for(Power::Off, o.shutdown_timeout)? {
                return Ok(());
            }
            ensure!(
                o.hard_off,
                "{}: not powered off {} after the shutdown request: {unchanged}; retry, give a longer --shutdown-timeout, or --hard-off to power it off",
                vm.ds_path,
                crate::units::duration_arg(o.shutdown_timeout)
            );
            log::info!(
                "{}: not off after {}: powering it off (--hard-off)",
                vm.ds_path,
                crate::units::duration_arg(o.shutdown_timeout)
            );
        }
        Err(ShutdownRefused::NoTools(why)) => {
            ensure!(
                o.hard_off,
                "{why}: VMware Tools do not run in the guest, so it cannot be shut down cleanly: {unchanged}; shut the guest down from inside, or give --hard-off"
            );
            log::info!(
                "{}: no VMware Tools: powering it off (--hard-off)",
                vm.ds_path
            );
        }
        Err(ShutdownRefused::Other(e)) => {
            return Err(e.context(format!(
                "{}: the shutdown request failed: {unchanged}",
                vm.ds_path
            )))
        }
    }
    vm.power_off()
}

/// After the VM is off: the final deltas opened and applied, the domain started.
#[allow(clippy::too_many_arguments)]
fn finish(
    conn: &Conn,
    dom: &Dom,
    st: &mut ImportState,
    targets: &Targets,
    vm: &Vm,
    chains: &[RemoteChain],
    cache: &mut HashMap<String, Opened>,
    o: &EsxOptions,
) -> Result<(Moved, Duration)> {
    let opened = Instant::now();
    let all = |c: &RemoteChain| c.deltas.len();
    let work = prepare(vm, st, chains, &all, true, cache, o.jobs)?;
    let mut moved = match &targets.writer {
        Writer::Direct => apply(vm, dom, st, &targets.vols, &work, cache)?,
        _ => esxoverlay::fetch_and_apply(vm, dom, st, targets, &work, cache, o.jobs)?,
    };
    // The final deltas' time counts from the VM off: opening them is part of it.
    moved.secs = opened.elapsed().as_secs_f64();
    crate::interrupt::check()?;
    let t = Instant::now();
    if let Writer::Overlay(..) = targets.writer {
        overlay::switch_all(conn, dom)?;
    }
    handover::start(conn, dom, st)?;
    Ok((moved, t.elapsed()))
}

/// After a failure with the VM off: power it on again at ESXi when asked (`--rollback-on-failure`).
fn roll_back(vm: &Vm, rollback: bool, e: anyhow::Error) -> anyhow::Error {
    if !rollback {
        return e.context(format!(
            "the cutover stopped; the VM is powered off on ESXi: rerun --cutover to finish, or power it on there (vim-cmd vmsvc/power.on {}) to go back",
            vm.id
        ));
    }
    match vm.power_on() {
        Ok(()) => e.context(format!(
            "the cutover failed; rolled back: the VM runs on ESXi again ({}, its snapshot chain unchanged); the domain was not started",
            vm.ds_path
        )),
        Err(on) => e.context(format!(
            "the cutover failed, and powering the VM on again at ESXi failed too ({on:#}): power it on there (vim-cmd vmsvc/power.on {})",
            vm.id
        )),
    }
}

fn say_cutover_plan(
    vm: &Vm,
    st: &ImportState,
    chains: &[RemoteChain],
    (running, writer): (bool, &Writer),
    o: &EsxOptions,
) -> Result<()> {
    let host = vm.host_name();
    if running {
        log::info!("{host}: would run vim-cmd vmsvc/power.shutdown {} and wait up to {} for it to power off{}", vm.id, crate::units::duration_arg(o.shutdown_timeout),
            if o.hard_off { ", then vim-cmd vmsvc/power.off" } else { "" });
    }
    for (ds, c) in st.disks.iter().zip(chains) {
        let (start, _) = pending(ds, &c.deltas, c.deltas.len(), true)?;
        for d in &c.deltas[start..] {
            log::info!(
                "disk {}: would read {} over ssh and apply it ({})",
                ds.target_dev,
                d.shown,
                writer.how()
            );
        }
    }
    log::info!("would then start the domain");
    Ok(())
}

fn say_outage(domain: &str, o: &Outage, m: &Moved, was_running: bool) {
    let s = |ms: u64| ms as f64 / 1e3;
    let rate = if m.secs > 0.0 {
        mib(m.read) / m.secs
    } else {
        0.0
    };
    log::info!(
        "cutover of '{domain}': the outage\n  \
         guest shutdown     {:>8.2} s  {}\n  \
         final deltas       {:>8.2} s  {} delta(s), {} bytes read over {} ({:.1} MiB/s), {} data + {} zero bytes applied\n  \
         domain start       {:>8.2} s\n  \
         total              {:>8.2} s  from the shutdown command to the domain running",
        s(o.shutdown_ms),
        if was_running { "power.shutdown to powered off" } else { "(was off already)" },
        s(o.apply_ms),
        m.deltas,
        m.read,
        m.over,
        rate,
        m.data,
        m.zero,
        s(o.start_ms),
        s(o.total_ms)
    );
}

/// `--remove-esx-snapshots`: the migration snapshots, once the domain runs here; a failure
/// is said, not fatal (the cutover is done).
fn remove_snapshots(vm: &Vm) {
    let snaps = match vm.snapshots() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("listing the snapshots to remove them: {e:#}");
            return;
        }
    };
    for s in snaps.iter().filter(|s| s.name.starts_with(SNAPSHOT_NAME)) {
        let Some(id) = s.id else { continue };
        match vm.remove_snapshot(id) {
            Ok(()) => log::info!("{}: removed snapshot '{}'", vm.ds_path, s.name),
            Err(e) => log::warn!("{}: removing snapshot '{}': {e:#}", vm.ds_path, s.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::Descriptor;

    fn delta(name: &str, cid: u32, parent: u32) -> RemoteDelta {
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID={parent:08x}\ncreateType=\"vmfsSparse\"\nparentFileNameHint=\"p.vmdk\"\nRW 16 VMFSSPARSE \"{name}-delta.vmdk\"\n"
        );
        RemoteDelta {
            path: format!("/vmfs/volumes/ds/vm/{name}.vmdk"),
            shown: format!("ssh://esx/{name}.vmdk"),
            descriptor: Descriptor::parse(text.as_bytes(), std::path::Path::new(name)).unwrap(),
        }
    }

    fn chain() -> Vec<RemoteDelta> {
        vec![delta("d1", 1, 0xb), delta("d2", 2, 1), delta("d3", 3, 2)]
    }

    fn disk(applied: &[(u32, bool)], applying: Option<Option<usize>>) -> DiskState {
        DiskState {
            target_dev: "sda".into(),
            base_cid: Some(0xb),
            base_uploaded: true,
            applying: applying.is_some(),
            applying_from: applying.flatten(),
            applied: applied
                .iter()
                .map(|&(cid, active)| AppliedDelta {
                    file: format!("d{cid}.vmdk"),
                    cid: Some(cid),
                    parent_cid: None,
                    handed_over: false,
                    active,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn cids(v: &[AppliedDelta]) -> Vec<(u32, bool)> {
        v.iter().map(|a| (a.cid.unwrap(), a.active)).collect()
    }

    #[test]
    fn a_sync_applies_the_frozen_deltas_not_yet_applied() {
        let (start, lineage) = pending(&disk(&[(1, false)], None), &chain(), 2, false).unwrap();
        assert_eq!(start, 1);
        assert_eq!(cids(&lineage), [(1, false), (2, false)]);
    }

    #[test]
    fn the_cutover_marks_the_top_it_applies_as_active() {
        let (start, lineage) =
            pending(&disk(&[(1, false), (2, false)], None), &chain(), 3, true).unwrap();
        assert_eq!(start, 2);
        assert_eq!(cids(&lineage), [(1, false), (2, false), (3, true)]);
    }

    #[test]
    fn a_delta_applied_while_active_is_applied_again() {
        // A cutover applied d2 as the active top, then the VM ran again on ESXi (rollback)
        // and a later snapshot froze d2 with more in it.
        let (start, lineage) =
            pending(&disk(&[(1, false), (2, true)], None), &chain(), 2, false).unwrap();
        assert_eq!(start, 1);
        assert_eq!(cids(&lineage), [(1, false), (2, false)]);
    }

    #[test]
    fn an_interrupted_run_is_written_again_from_where_it_started() {
        let d = disk(&[(1, false), (2, false), (3, true)], Some(Some(1)));
        assert_eq!(pending(&d, &chain(), 3, true).unwrap().0, 1);
        // Marked by a run that did not say where it started (a local stage 2): from the base.
        let d = disk(&[(1, false), (2, false)], Some(None));
        assert_eq!(pending(&d, &chain(), 3, true).unwrap().0, 0);
    }

    #[test]
    fn an_applied_delta_gone_from_the_chain_is_refused() {
        let d = disk(&[(1, false), (9, false)], None);
        let e = pending(&d, &chain(), 3, true).unwrap_err().to_string();
        assert!(
            e.contains("d9.vmdk (applied earlier) is no longer in the VM's chain"),
            "{e}"
        );
        let d = disk(&[(1, false), (2, false), (3, false), (4, false)], None);
        assert!(pending(&d, &chain(), 3, true).is_err());
    }
}
