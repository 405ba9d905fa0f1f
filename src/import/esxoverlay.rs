//! `--sync` and `--cutover` from ESXi into volumes this host cannot write (a remote libvirt URI): each delta fetched whole over ssh into a scratch folder here, then sent through libvirt, as upload windows or as a qcow2 overlay the domain starts on and commits live.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use super::esxdeltas::{extent_of, side_by_side, DiskWork, Moved, Opened};
use super::plan::{ImportPlan, Step};
use super::{overlay, write};
use crate::cli::IoMode;
use crate::esx::ssh::quote;
use crate::esx::vm::Vm;
use crate::esx::RemoteChain;
use crate::libvirt::{Conn, Dom, Pool, Vol};
use crate::progress::Transfer;
use crate::state::{metadata, ImportState};
use crate::vmdk::{self, Chain, DataFile, Descriptor};

/// Room kept free beside the deltas fetched: the active delta can grow a little between its
/// size read before the shutdown and the VM off.
const ROOM_MARGIN: u64 = 64 << 20;

/// The scratch folder's name before the run's pid.
const SCRATCH_PREFIX: &str = "virt-vmdkimport-deltas.";

/// The volumes the deltas go into, and how they get there.
pub(super) struct Targets {
    pub(super) vols: Vec<Vol>,
    pub(super) writer: Writer,
}

/// How the deltas reach the volumes.
pub(super) enum Writer {
    /// Written into the local volumes where they arrive, in the delta's file order.
    Direct,
    /// Fetched, then upload windows (`write::write_disk`, gaps read back from the volume).
    Streams(Scratch),
    /// Fetched, then each disk's deltas as one qcow2 overlay in its pool (the cutover only).
    Overlay(Vec<Pool>, Scratch),
}

impl Writer {
    /// How a delta reaches its volume, for `--dry-run`.
    pub(super) fn how(&self) -> &'static str {
        match self {
            Writer::Direct => "written into its volume where its grains arrive",
            Writer::Streams(_) => "fetched whole here, then through libvirt upload streams",
            Writer::Overlay(..) => {
                "fetched whole here, then uploaded as a qcow2 overlay the domain starts on, committed live"
            }
        }
    }

    fn scratch(&self) -> Option<&Scratch> {
        match self {
            Writer::Direct => None,
            Writer::Streams(s) | Writer::Overlay(_, s) => Some(s),
        }
    }
}

/// How `step` writes: directly when this host can write every volume (`--io auto` or
/// `direct`); otherwise through libvirt: the cutover by an overlay (`--io overlay`, or `auto`
/// when every pool can hold one), a pre-copy round and `--io stream` by upload windows.
/// Refused here, before anything changes: `--io direct` on volumes this host cannot write, an
/// overlay pool that cannot hold one or a volume in the overlay's place.
pub(super) fn choose(
    req: &ImportPlan,
    conn: &Conn,
    dom: &Dom,
    st: &ImportState,
    vols: &[Vol],
    step: Step,
) -> Result<Writer> {
    let local = vols.iter().zip(&st.disks).try_for_each(|(v, ds)| {
        write::direct_possible(conn, v)
            .map_err(|why| format!("volume '{}' (disk {}): {why}", v.describe(), ds.target_dev))
    });
    let overlays = || -> Result<Vec<Pool>> {
        st.disks
            .iter()
            .map(|ds| {
                let pool = overlay::check(req, conn, ds)?;
                overlay::leftover(dom, &pool, ds)?;
                Ok(pool)
            })
            .collect()
    };
    Ok(match way(req.io, step, local, overlays)? {
        Way::Direct => Writer::Direct,
        Way::Streams => Writer::Streams(Scratch::new()?),
        Way::Overlay(pools) => Writer::Overlay(pools, Scratch::new()?),
    })
}

/// Which way the deltas go, without the scratch folder.
#[derive(Debug, PartialEq, Eq)]
enum Way<P> {
    Direct,
    Streams,
    Overlay(P),
}

/// [`choose`]'s decision from `--io`, the step, whether this host can write every volume
/// (`local`: why not) and, asked only when it matters, whether every pool takes an overlay.
fn way<P>(
    io: IoMode,
    step: Step,
    local: Result<(), String>,
    overlays: impl FnOnce() -> Result<P>,
) -> Result<Way<P>> {
    let cutover = step == Step::Cutover;
    Ok(match (io, local) {
        (IoMode::Direct, Err(why)) => bail!(
            "--io direct: {why}; the deltas from ESXi go through libvirt with --io auto, stream or overlay"
        ),
        (IoMode::Auto | IoMode::Direct, Ok(())) => Way::Direct,
        (IoMode::Overlay, _) if cutover => Way::Overlay(overlays()?),
        (IoMode::Auto, Err(why)) if cutover => match overlays() {
            Ok(pools) => {
                log::info!("io: the final deltas as qcow2 overlays, then a live block commit ({why})");
                Way::Overlay(pools)
            }
            Err(e) => {
                log::info!("io: the final deltas through libvirt upload streams ({why}; no overlay: {e:#})");
                Way::Streams
            }
        },
        (io, _) => {
            if io == IoMode::Overlay {
                log::info!("io: --sync writes the frozen deltas through upload streams (the overlay is for the cutover, which starts the domain)");
            }
            Way::Streams
        }
    })
}

/// The folder here the deltas are fetched into, removed with everything in it at the end.
pub(super) struct Scratch {
    dir: PathBuf,
    /// Each delta fetched (its descriptor's path on the host), and its extent's copy here.
    got: Mutex<HashMap<String, PathBuf>>,
    /// The number the next copy's name begins with (extents of two folders may share a name).
    next: AtomicUsize,
}

impl Scratch {
    /// A folder of this run's own under `$TMPDIR` (or /tmp); those of runs that are gone
    /// (killed before they could remove theirs) are removed.
    fn new() -> Result<Scratch> {
        let tmp = std::env::temp_dir();
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(SCRATCH_PREFIX) {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("{}: creating the folder for the deltas", dir.display()))?;
        Ok(Scratch {
            dir,
            got: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        })
    }

    fn copy_of(&self, delta: &str) -> Option<PathBuf> {
        self.got
            .lock()
            .expect("no panic holding got")
            .get(delta)
            .cloned()
    }

    /// Refused unless the folder's filesystem has `bytes` free, and a margin.
    fn ensure_room(&self, bytes: u64) -> Result<()> {
        let s = nix::sys::statvfs::statvfs(&self.dir)
            .with_context(|| format!("{}: reading its free space", self.dir.display()))?;
        let free = s.blocks_available() as u64 * s.fragment_size() as u64;
        let need = bytes + ROOM_MARGIN;
        anyhow::ensure!(
            free >= need,
            "{}: {} free, and the deltas to fetch there take {} (with a margin of {}): make room, or set TMPDIR to a folder with more; nothing was changed",
            self.dir.display(),
            crate::units::human_bytes(free),
            crate::units::human_bytes(bytes),
            crate::units::human_bytes(ROOM_MARGIN)
        );
        Ok(())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cutover's part before the shutdown when the deltas go through libvirt: room here for
/// every delta still to apply (sizes read with one `stat` on the host), then the frozen ones
/// (`work`) fetched while the VM still runs.
pub(super) fn before_shutdown(
    vm: &Vm,
    t: &Targets,
    chains: &[RemoteChain],
    work: &[DiskWork],
    cache: &HashMap<String, Opened>,
    jobs: usize,
) -> Result<()> {
    let Some(scratch) = t.writer.scratch() else {
        return Ok(());
    };
    // The frozen deltas to apply, and each disk's top (the active delta of a running VM).
    let mut extents: Vec<String> = work
        .iter()
        .flat_map(|w| &w.deltas)
        .map(|d| cache[d.as_str()].extent.clone())
        .collect();
    for top in chains.iter().filter_map(|c| c.deltas.last()) {
        let e = extent_of(top)?;
        if !extents.contains(&e) {
            extents.push(e);
        }
    }
    scratch.ensure_room(sizes(vm, &extents)?)?;
    let started = Instant::now();
    let n = fetch_all(vm, scratch, work, cache, jobs)?;
    if n > 0 {
        log::info!(
            "fetched the frozen deltas before the shutdown: {} in {:.2} s",
            crate::units::human_bytes(n),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The total size of `extents` on the host, in one `stat`.
fn sizes(vm: &Vm, extents: &[String]) -> Result<u64> {
    if extents.is_empty() {
        return Ok(0);
    }
    let quoted: Vec<String> = extents.iter().map(|e| quote(e)).collect();
    let cmd = format!("stat -c %s {}", quoted.join(" "));
    let out = vm.ssh.read(&cmd)?;
    let sizes = out
        .lines()
        .map(|l| {
            l.trim()
                .parse::<u64>()
                .map_err(|_| anyhow!("{}: `{cmd}` answered {l:?}, not a size", vm.host_name()))
        })
        .collect::<Result<Vec<u64>>>()?;
    anyhow::ensure!(
        sizes.len() == extents.len(),
        "{}: `{cmd}` gave {} sizes for {} files",
        vm.host_name(),
        sizes.len(),
        extents.len()
    );
    Ok(sizes.iter().sum())
}

/// Fetch every delta of `work` not fetched yet, `jobs` at a time: the bytes read.
fn fetch_all(
    vm: &Vm,
    scratch: &Scratch,
    work: &[DiskWork],
    cache: &HashMap<String, Opened>,
    jobs: usize,
) -> Result<u64> {
    let todo: Vec<&String> = work
        .iter()
        .flat_map(|w| &w.deltas)
        .filter(|d| scratch.copy_of(d).is_none())
        .collect();
    let fetched = side_by_side(&todo, jobs, |d| fetch(vm, scratch, d, &cache[d.as_str()]));
    let mut bytes = 0;
    for r in fetched {
        bytes += r?;
    }
    anyhow::ensure!(
        todo.iter().all(|d| scratch.copy_of(d).is_some()),
        "a thread fetching the deltas panicked"
    );
    Ok(bytes)
}

/// One delta's extent, whole, as one range of the run's transport (`--transport`: over a
/// connection of its own, or nc), its length read first (the VM may have grown it since it
/// was opened); its bytes.
fn fetch(vm: &Vm, scratch: &Scratch, delta: &str, o: &Opened) -> Result<u64> {
    crate::interrupt::check()?;
    let name = o.extent.rsplit('/').next().unwrap_or("extent");
    let n = scratch.next.fetch_add(1, Ordering::Relaxed);
    let local = scratch.dir.join(format!("{n}-{name}"));
    let shown = vm.url().with_path(&o.extent);
    let started = Instant::now();
    let bar = Transfer::new(format!("fetching {name}"), o.pieces.end());
    let len = sizes(vm, std::slice::from_ref(&o.extent))?;
    let whole = crate::esx::transfer::split_to_end(len, FETCH_BS, 1);
    let mut from = Counted {
        inner: match whole.first() {
            Some(r) => Box::new(vm.transfer.read(&o.extent, *r)?) as Box<dyn std::io::Read>,
            None => Box::new(std::io::empty()),
        },
        bar: &bar,
    };
    let mut to =
        File::create(&local).with_context(|| format!("{}: creating it", local.display()))?;
    let bytes = std::io::copy(&mut from, &mut to)
        .with_context(|| format!("fetching {shown} into {}", local.display()))?;
    bar.finish();
    // Not flushed: a copy lost with this host is fetched again by the rerun.
    log::debug!(
        "fetched {shown}: {bytes} bytes in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    scratch
        .got
        .lock()
        .expect("no panic holding got")
        .insert(delta.to_string(), local);
    Ok(bytes)
}

/// A reader whose bytes are counted on a progress bar (watched for stalls).
/// Block size of a fetch's `dd` (as a base's: whole 4 MiB blocks).
const FETCH_BS: u64 = 4 << 20;

struct Counted<'a, R> {
    inner: R,
    bar: &'a Transfer,
}

impl<R: std::io::Read> std::io::Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        crate::interrupt::check().map_err(|e| std::io::Error::other(e.to_string()))?;
        let n = self.inner.read(buf)?;
        self.bar.add(n as u64);
        Ok(n)
    }
}

/// The deltas `paths` (oldest first) as one chain read from their copies here; messages name
/// the files on the host.
fn local_chain(
    vm: &Vm,
    scratch: &Scratch,
    paths: &[String],
    cache: &HashMap<String, Opened>,
) -> Result<Chain> {
    let descriptors: Vec<Descriptor> = paths
        .iter()
        .map(|p| cache[p.as_str()].descriptor.clone())
        .collect();
    let mut copies = paths.iter().map(|p| {
        let local = scratch.copy_of(p).expect("fetched");
        (local, vm.url().with_path(&cache[p.as_str()].extent))
    });
    // Every delta has one extent (fromesx::open refuses others): the copies in order.
    let mut open = |d: &Descriptor, _: &str| -> Result<Arc<DataFile>, vmdk::Error> {
        let (local, shown) = copies.next().ok_or_else(|| {
            vmdk::Error::chain(format!("{}: an extent more than fetched", d.path.display()))
        })?;
        let file = File::open(&local)
            .map_err(|e| vmdk::Error::io(Path::new(&shown), "opening its copy", e))?;
        Ok(Arc::new(DataFile::local(PathBuf::from(shown), file)))
    };
    Ok(Chain::from_descriptors(descriptors, &mut open)?)
}

/// Fetch what `work` needs, mark the disks, write each disk's deltas through the writer, and
/// unmark each once written.
pub(super) fn fetch_and_apply(
    vm: &Vm,
    dom: &Dom,
    st: &mut ImportState,
    t: &Targets,
    work: &[DiskWork],
    cache: &HashMap<String, Opened>,
    jobs: usize,
) -> Result<Moved> {
    let started = Instant::now();
    let scratch = t.writer.scratch().expect("a writer through libvirt");
    let mut moved = Moved {
        read: fetch_all(vm, scratch, work, cache, jobs)?,
        deltas: work.iter().map(|w| w.deltas.len()).sum(),
        over: vm.transfer.name(),
        ..Moved::default()
    };
    let mut chains = Vec::new();
    for w in work {
        let chain = local_chain(vm, scratch, &w.deltas, cache)?;
        let survey = crate::apply::survey(&chain)?;
        chains.push((chain, survey));
    }
    for w in work {
        st.disks[w.disk].begin_apply(w.lineage.clone(), Some(w.start))?;
    }
    metadata::write(dom, st)?;
    for (w, (chain, survey)) in work.iter().zip(&chains) {
        crate::interrupt::check()?;
        let ds = st.disks[w.disk].clone();
        let vol = &t.vols[w.disk];
        let report = match &t.writer {
            Writer::Overlay(pools, _) => overlay::write_disk(dom, &pools[w.disk], &ds, vol, chain)?,
            _ => write::write_disk(
                vol,
                &ds.target_dev,
                chain,
                survey,
                false,
                write::Gaps::Volume,
            )?
            .to_string(),
        };
        log::info!("disk {}: {report}", ds.target_dev);
        st.disks[w.disk].apply_done()?;
        metadata::write(dom, st)?;
        moved.data += survey.data_bytes;
        moved.zero += survey.zero_bytes;
    }
    moved.secs = started.elapsed().as_secs_f64();
    Ok(moved)
}

/// After a cutover through overlays failed before the domain started: the overlays undone
/// and the import state as it was before the deltas (the volumes were not written), so the
/// domain is as the cutover found it. Other writers wrote the volumes: their marks stay.
pub(super) fn unstarted(
    conn: &Conn,
    dom: &Dom,
    st: &mut ImportState,
    before: ImportState,
    writer: &Writer,
    e: anyhow::Error,
) -> anyhow::Error {
    if !matches!(writer, Writer::Overlay(..)) {
        return e;
    }
    *st = before;
    let back = overlay::discard(conn, dom).and_then(|()| metadata::write(dom, st));
    match back {
        Ok(()) => e.context("the domain's definition and its volumes are as before the cutover (the overlays removed)"),
        Err(b) => e.context(format!("removing the overlays failed too ({b:#}): a rerun of --cutover removes them first")),
    }
}

/// Before any run from ESXi: a domain that still has overlays from a cutover finishes them.
/// Started on them: the commit is finished (the cutover is then done: true). Never started
/// on them (a cutover cut off before the start): they are undone, and the run goes on.
pub(super) fn settle(req: &ImportPlan, conn: &Conn) -> Result<bool> {
    let Some(dom) = conn.domain(&req.domain)? else {
        return Ok(false);
    };
    if metadata::read_overlays(&dom)?.is_empty() {
        return Ok(false);
    }
    let mut st = metadata::read(&dom)?;
    if st.as_ref().is_some_and(|s| s.handed_over.is_some()) {
        let done = overlay::resume(req, conn, &dom, st.as_mut())?;
        if done {
            log::info!("domain '{}': the cutover is done", req.domain);
        }
        return Ok(done);
    }
    if dom.is_active()? || req.dry_run {
        return Ok(false);
    }
    overlay::discard(conn, &dom)?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> Result<(), String> {
        Err("qemu+tcp://kvm1/system is not a local connection".into())
    }

    fn pools_ok() -> Result<&'static str> {
        Ok("pools")
    }

    fn no_pool() -> Result<&'static str> {
        anyhow::bail!("storage pool 'vg0' is of type 'logical'")
    }

    fn untouched() -> Result<&'static str> {
        panic!("the pools are not asked about")
    }

    #[test]
    fn volumes_this_host_writes_are_written_directly_unless_another_way_is_asked() {
        for step in [Step::Sync, Step::Cutover] {
            for io in [IoMode::Auto, IoMode::Direct] {
                assert_eq!(way(io, step, Ok(()), untouched).unwrap(), Way::Direct);
            }
            assert_eq!(
                way(IoMode::Stream, step, Ok(()), untouched).unwrap(),
                Way::Streams
            );
        }
    }

    #[test]
    fn the_cutover_to_a_remote_uri_takes_the_overlay_where_every_pool_holds_one() {
        let cut = Step::Cutover;
        assert_eq!(
            way(IoMode::Auto, cut, remote(), pools_ok).unwrap(),
            Way::Overlay("pools")
        );
        assert_eq!(
            way(IoMode::Auto, cut, remote(), no_pool).unwrap(),
            Way::Streams
        );
        assert_eq!(
            way(IoMode::Overlay, cut, Ok(()), pools_ok).unwrap(),
            Way::Overlay("pools")
        );
        let e = way(IoMode::Overlay, cut, remote(), no_pool).unwrap_err();
        assert!(e.to_string().contains("type 'logical'"), "{e}");
        assert_eq!(
            way(IoMode::Stream, cut, remote(), untouched).unwrap(),
            Way::Streams
        );
    }

    #[test]
    fn a_sync_to_a_remote_uri_goes_through_upload_streams() {
        for io in [IoMode::Auto, IoMode::Stream, IoMode::Overlay] {
            assert_eq!(
                way(io, Step::Sync, remote(), untouched).unwrap(),
                Way::Streams
            );
        }
    }

    #[test]
    fn io_direct_on_volumes_this_host_cannot_write_is_refused_naming_why() {
        for step in [Step::Sync, Step::Cutover] {
            let e = way(IoMode::Direct, step, remote(), untouched)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--io direct: qemu+tcp://kvm1/system is not a local"),
                "{e}"
            );
            assert!(e.contains("--io auto, stream or overlay"), "{e}");
        }
    }
}
