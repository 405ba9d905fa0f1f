//! Stage 2's writer: puts a chain's changed pieces into a libvirt volume, through few upload windows or direct positional writes.

use crate::apply::{self, ApplyReport};
use crate::cli::IoMode;
use crate::libvirt::{self, Conn, Download, Vol};
use crate::progress::Transfer;
use crate::vmdk::{BaseImage, Chain, Piece, Pieces, Source};
use crate::window::{CostModel, Window, WindowPlanner};
use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What stage 2 did to one volume, printed for the operator and parsed by the benchmark.
#[derive(Debug, Default, Clone)]
pub struct WriteReport {
    /// `stream` or `direct`.
    pub io: &'static str,
    pub changes: ApplyReport,
    /// Bytes outside the chain's pieces rewritten with the volume's own bytes.
    pub gap_bytes: u64,
    /// libvirt upload calls made.
    pub calls: u64,
    /// The fixed cost of one upload call and the cost of one byte of a window, as fitted
    /// over this run's calls (what one call per run would have cost, for comparison).
    pub call_cost: Duration,
    pub byte_secs: f64,
    pub elapsed: Duration,
}

impl fmt::Display for WriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io={} runs={} pieces={} data_bytes={} zero_bytes={} gap_bytes={} calls={} call_ms={:.3} byte_ns={:.2} elapsed_s={:.3}",
            self.io,
            self.changes.runs,
            self.changes.pieces,
            self.changes.data_bytes,
            self.changes.zero_bytes,
            self.gap_bytes,
            self.calls,
            self.call_cost.as_secs_f64() * 1e3,
            self.byte_secs * 1e9,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Where the bytes between a window's pieces come from.
pub enum Gaps<'a> {
    /// Downloaded from the volume itself: always right.
    Volume,
    /// Read from the base image, which the caller has checked is exactly what the volume
    /// holds outside the chain's pieces (the base was uploaded and no delta applied since).
    /// A local read instead of a download.
    Base(&'a BaseImage),
}

/// Whether stage 2 writes `vol` directly, by the path `mode` asks for; decided with the other
/// checks, before anything is marked or written. `auto` writes directly only when the daemon
/// is on this host and the volume's path is a regular file or block device this process can
/// open for writing; it says which path it took, and why.
pub fn use_direct(conn: &Conn, vol: &Vol, mode: IoMode) -> Result<bool> {
    Ok(match mode {
        IoMode::Stream | IoMode::Overlay => false,
        IoMode::Direct => {
            if let Err(why) = direct_possible(conn, vol) {
                bail!("--io direct: volume '{}': {why}", vol.describe());
            }
            true
        }
        IoMode::Auto => match direct_possible(conn, vol) {
            Ok(()) => {
                log::info!("io: direct writes to {} (local volume)", vol.path());
                true
            }
            Err(why) => {
                log::info!("io: libvirt upload streams ({why})");
                false
            }
        },
    })
}

/// Write `chain` into `vol`: positional writes to its path when `direct`, else upload calls
/// with the gaps between runs refilled from `gaps`. `surveyed` is the chain's survey (every
/// table already read and checked); `bar` counts the pieces' bytes as they are written.
pub fn write_chain(
    vol: &Vol,
    chain: &Chain,
    surveyed: &ApplyReport,
    direct: bool,
    gaps: Gaps,
    bar: &Transfer,
) -> Result<WriteReport> {
    if direct {
        write_direct(vol, chain, surveyed, bar)
    } else {
        if let Gaps::Base(b) = gaps {
            log::info!("io: gaps between runs refilled from {}", b.path.display());
        }
        write_streamed(vol, chain, &mut CostModel::default(), &gaps, bar)
    }
}

/// [`write_chain`] for disk `dev` of an import, once the state marks it as being applied:
/// says which volume is written and names it in any error (a full pool, a lost daemon).
pub fn write_disk(
    vol: &Vol,
    dev: &str,
    chain: &Chain,
    surveyed: &ApplyReport,
    direct: bool,
    gaps: Gaps,
) -> Result<WriteReport> {
    let what = format!(
        "applying the delta(s) to volume '{}' (disk {dev})",
        vol.describe()
    );
    log::info!("{what}...");
    let bar = Transfer::with_extra(
        format!("disk {dev}: delta apply"),
        surveyed.data_bytes + surveyed.zero_bytes,
        "of gaps refilled",
    );
    let report = write_chain(vol, chain, surveyed, direct, gaps, &bar).with_context(|| what)?;
    bar.finish();
    Ok(report)
}

/// Why the direct path cannot be taken, if it cannot.
pub(super) fn direct_possible(conn: &Conn, vol: &Vol) -> Result<(), String> {
    if !conn.is_local() {
        return Err(format!("{} is not a local connection", conn.uri()));
    }
    let path = Path::new(vol.path());
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let kind = meta.file_type();
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(format!(
            "{} is neither a regular file nor a block device",
            path.display()
        ));
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| format!("{} cannot be opened for writing: {e}", path.display()))
}

/// Positional writes to the volume's path (as `--target` does), fsync, then one pool refresh
/// so libvirt's view of the volume (allocation) catches up.
fn write_direct(
    vol: &Vol,
    chain: &Chain,
    surveyed: &ApplyReport,
    bar: &Transfer,
) -> Result<WriteReport> {
    let started = Instant::now();
    let changes = apply::write_surveyed(chain, Path::new(vol.path()), surveyed, bar)?;
    vol.pool()?.refresh()?;
    Ok(WriteReport {
        io: "direct",
        changes,
        elapsed: started.elapsed(),
        ..Default::default()
    })
}

/// Upload calls in flight at once. A call's fixed cost is mostly waiting (the daemon starts
/// a helper process per stream, syncs the data when it closes, refreshes the pool), so a
/// second call in flight hides much of it; windows never overlap, so the order in which
/// they land does not matter.
const CALLS_IN_FLIGHT: usize = 2;

/// The planner and what the calls taught it, shared by the uploading threads.
struct Shared<'c, I: Iterator> {
    planner: WindowPlanner<I>,
    cost: &'c mut CostModel,
    report: WriteReport,
    last_end: Option<u64>,
    /// Set by the first thread that fails: the others stop taking windows.
    failed: bool,
}

/// Upload calls over windows planned with the cost model, `CALLS_IN_FLIGHT` at a time. The
/// caller has surveyed the chain (every table read and checked) before this writes a byte.
pub fn write_streamed(
    vol: &Vol,
    chain: &Chain,
    cost: &mut CostModel,
    gaps: &Gaps,
    bar: &Transfer,
) -> Result<WriteReport> {
    let started = Instant::now();
    let capacity = vol.capacity()?;
    let shared = Mutex::new(Shared {
        planner: WindowPlanner::new(chain.pieces()),
        cost,
        report: WriteReport {
            io: "stream",
            ..Default::default()
        },
        last_end: None,
        failed: false,
    });
    let worker = || upload_windows(&shared, vol, capacity, gaps, bar);
    std::thread::scope(|scope| -> Result<()> {
        let others: Vec<_> = (1..CALLS_IN_FLIGHT).map(|_| scope.spawn(worker)).collect();
        let mut result = worker();
        for t in others {
            let r = t
                .join()
                .map_err(|_| anyhow::anyhow!("an upload thread panicked"))?;
            result = result.and(r);
        }
        result
    })?;
    let sh = shared.into_inner().expect("no thread panicked");
    let mut report = sh.report;
    if report.calls > 0 {
        report.call_cost = sh.cost.call_cost();
        report.byte_secs = sh.cost.byte_secs();
    }
    report.elapsed = started.elapsed();
    report.changes.elapsed = report.elapsed;
    Ok(report)
}

/// The planner shared by the uploading threads of [`write_streamed`].
type Planned<'a, 'c> = Mutex<Shared<'c, Pieces<'a>>>;

/// One uploading thread: a window from the planner, its upload call, what the call taught the
/// cost model; until no window is left or a thread failed.
fn upload_windows(
    shared: &Planned,
    vol: &Vol,
    capacity: u64,
    gaps: &Gaps,
    bar: &Transfer,
) -> Result<()> {
    // This thread's connection for the gaps' downloads, opened at its first window that
    // needs one (see `read_ahead`).
    let mut downloads: Option<Vol> = None;
    while let Some(window) = take_window(shared)? {
        let call_started = Instant::now();
        let done =
            upload_window(vol, capacity, &window, gaps, &mut downloads, bar).with_context(|| {
                format!(
                    "writing bytes {}..{} of volume '{}'",
                    window.offset,
                    window.end(),
                    vol.describe()
                )
            });
        let mut sh = shared.lock().expect("no thread panics holding the planner");
        if let Err(e) = done {
            sh.failed = true;
            return Err(e);
        }
        sh.cost.observe_call(window.len, call_started.elapsed());
        sh.report.calls += 1;
        sh.report.gap_bytes += window.gap_bytes();
    }
    Ok(())
}

/// The next window to upload, its pieces counted into the report; None when none is left or
/// another thread failed. A chain that cannot be read stops every thread.
fn take_window(shared: &Planned) -> Result<Option<Window>> {
    let mut sh = shared.lock().expect("no thread panics holding the planner");
    if sh.failed {
        return Ok(None);
    }
    let Shared { planner, cost, .. } = &mut *sh;
    match planner.next_window(cost) {
        None => Ok(None),
        Some(Err(e)) => {
            sh.failed = true;
            Err(e.into())
        }
        Some(Ok(w)) => {
            let Shared {
                report, last_end, ..
            } = &mut *sh;
            for p in &w.pieces {
                apply::tally(&mut report.changes, p, last_end);
            }
            Ok(Some(w))
        }
    }
}

/// Chunks of a window's download in flight between the reading thread and the upload: enough
/// to keep both streams busy, few enough to keep memory small.
const DOWNLOAD_QUEUE: usize = 4;
const DOWNLOAD_CHUNK: usize = 1 << 20;

/// One upload call for `window`. Gap bytes come from `gaps`: from the base image, or from a
/// download of the same range that a second thread reads ahead while this one uploads, so
/// each gap byte is rewritten with exactly what the volume held. `bar` counts the pieces'
/// bytes, and the gap bytes beside them.
fn upload_window(
    vol: &Vol,
    capacity: u64,
    window: &Window,
    gaps: &Gaps,
    downloads: &mut Option<Vol>,
    bar: &Transfer,
) -> Result<()> {
    let mut fill = Fill {
        window,
        has_gaps: window.gap_bytes() > 0,
        next_piece: 0,
        bar,
    };
    let (offset, len) = (window.offset, window.len);
    match gaps {
        Gaps::Base(base) if fill.has_gaps => {
            libvirt::upload_within(vol, capacity, offset, len, &mut |rel, buf| {
                fill.fill(rel, buf, &mut |at, b| base.read_at(at, b))
            })?;
        }
        Gaps::Volume if fill.has_gaps => {
            if downloads.is_none() {
                *downloads =
                    Some(vol.reopen().context(
                        "opening a second libvirt connection for the volume's downloads",
                    )?);
            }
            let source = downloads.as_ref().expect("opened above");
            upload_over_download(vol, capacity, source, &mut fill)?;
        }
        _ => libvirt::upload_within(vol, capacity, offset, len, &mut |rel, buf| {
            fill.fill(rel, buf, &mut |_, _| Ok(()))
        })?,
    }
    Ok(())
}

/// What one upload call sends: the window's pieces over its gap bytes, counted on the bar.
struct Fill<'w> {
    window: &'w Window,
    has_gaps: bool,
    /// The first piece that may still overlap what is asked for next.
    next_piece: usize,
    bar: &'w Transfer,
}

impl Fill<'_> {
    /// `buf`, at `rel` in the window: the gap bytes from `gap` (when the window has any), then
    /// the pieces over them.
    fn fill(
        &mut self,
        rel: u64,
        buf: &mut [u8],
        gap: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let at = self.window.offset + rel;
        if self.has_gaps {
            gap(at, buf)?;
        }
        let n = overlay(&self.window.pieces, &mut self.next_piece, at, buf)?;
        self.bar.add(n);
        if self.has_gaps {
            self.bar.add_extra(buf.len() as u64 - n);
        }
        Ok(())
    }
}

/// The upload of `fill`'s window with its gap bytes from a download of the same range from
/// `source` (a connection of its own), read ahead by a second thread.
fn upload_over_download(vol: &Vol, capacity: u64, source: &Vol, fill: &mut Fill) -> Result<()> {
    let (offset, len) = (fill.window.offset, fill.window.len);
    std::thread::scope(|scope| -> Result<()> {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>>>(DOWNLOAD_QUEUE);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let queue_full = std::sync::Arc::new(std::sync::Barrier::new(2));
        let held = hold_until_queue_full();
        let hold = held.then(|| queue_full.clone());
        let reader = scope.spawn(move || {
            let mut hold = hold;
            let read = read_ahead(source, offset, len, full_tx, empty_rx, &mut hold);
            if let Some(b) = hold {
                b.wait(); // the queue never filled: let the upload go anyway
            }
            read
        });
        if held {
            queue_full.wait();
        }
        let mut queue = ChunkQueue {
            rx: full_rx,
            recycle: empty_tx,
            current: Vec::new(),
            pos: 0,
        };
        let uploaded = libvirt::upload_within(vol, capacity, offset, len, &mut |rel, buf| {
            fill.fill(rel, buf, &mut |_, b| queue.read_exact(b))
        });
        drop(queue);
        let read = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the download thread panicked"))?;
        uploaded?;
        read
    })
}

/// Test hook (`VMDKIMPORT_TEST_HOLD_UPLOAD=1`): each window's upload starts only once its
/// download has filled the queue and waits, undrained, for the upload side.
fn hold_until_queue_full() -> bool {
    std::env::var_os("VMDKIMPORT_TEST_HOLD_UPLOAD").is_some_and(|v| v == "1")
}

/// Bytes one download stream covers. libvirt's client queues a download's data as fast as the
/// daemon sends it, whether or not it is read yet, so one stream over a long window would
/// hold much of the window in memory; a window is read through a series of these instead
/// (downloads start no pool refresh, so the extra calls are cheap).
const DOWNLOAD_SPAN: u64 = 8 << 20;

/// The download side of a window: read `len` bytes at `offset` of `vol`, a span at a time,
/// on a connection of its own (the uploading thread's `downloads`, never the upload's).
///
/// Why its own: this thread stops reading its download whenever the queue to the upload side
/// is full, so the stream's data stays undrained on its connection until the upload side
/// takes a chunk. A call on that same connection in the meantime (the upload's start, a
/// `GetInfo`) was seen to wait forever on libvirt 9.0 while the upload side waited for it: a
/// cutover hung during the outage. On a connection of its own the download can wait for as
/// long as it likes without holding any other call back.
/// and pass them on in chunks, reusing the buffers the upload side hands back. An error goes
/// to the upload side (which fails with it) and is returned; when the upload side has gone
/// (it failed, and reports why), this stops without one.
fn read_ahead(
    vol: &Vol,
    offset: u64,
    len: u64,
    full: std::sync::mpsc::SyncSender<Result<Vec<u8>>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    hold: &mut Option<std::sync::Arc<std::sync::Barrier>>,
) -> Result<()> {
    let mut done = 0u64;
    while done < len {
        let span = DOWNLOAD_SPAN.min(len - done);
        let mut download = match Download::open(vol, offset + done, span) {
            Ok(d) => d,
            Err(e) => {
                let _ = full.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
        };
        let mut got = 0u64;
        while got < span {
            let n = DOWNLOAD_CHUNK.min((span - got) as usize);
            let mut buf = empty.try_recv().unwrap_or_default();
            buf.resize(n, 0);
            if let Err(e) = download.read_exact(&mut buf) {
                let _ = full.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
            let sent = match full.try_send(Ok(buf)) {
                Err(std::sync::mpsc::TrySendError::Full(item)) => {
                    if let Some(b) = hold.take() {
                        log::debug!("test hook: the download's queue is full at byte {}: the upload starts now", offset + done + got);
                        b.wait();
                    }
                    full.send(item).is_ok()
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => false,
                Ok(()) => true,
            };
            if !sent {
                return Ok(());
            }
            got += n as u64;
        }
        download.finish()?;
        done += span;
    }
    Ok(())
}

/// The upload side's view of the download: chunks as they arrive, read in any sizes.
struct ChunkQueue {
    rx: std::sync::mpsc::Receiver<Result<Vec<u8>>>,
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChunkQueue {
    fn read_exact(&mut self, mut buf: &mut [u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            if self.pos == self.current.len() {
                let next = self
                    .rx
                    .recv()
                    .map_err(|_| std::io::Error::other("the volume's download ended early"))?
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
                let old = std::mem::replace(&mut self.current, next);
                let _ = self.recycle.send(old);
                self.pos = 0;
            }
            let n = buf.len().min(self.current.len() - self.pos);
            buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
            self.pos += n;
            buf = &mut buf[n..];
        }
        Ok(())
    }
}

/// Copy into `buf` (the bytes at virtual offset `at`) every piece part that falls inside it;
/// the bytes copied. `next` is the index of the first piece not yet wholly written; windows
/// are filled front to back, so it only moves forward.
fn overlay(pieces: &[Piece], next: &mut usize, at: u64, buf: &mut [u8]) -> std::io::Result<u64> {
    let end = at + buf.len() as u64;
    let mut copied = 0u64;
    let mut i = *next;
    while i < pieces.len() && pieces[i].offset < end {
        let p = &pieces[i];
        let from = p.offset.max(at);
        let to = p.end().min(end);
        if from < to {
            let dst = &mut buf[(from - at) as usize..(to - at) as usize];
            match p.source {
                Source::Zeros => dst.fill(0),
                Source::Data { .. } => p.read_at(from - p.offset, dst)?,
            }
            copied += to - from;
        }
        if p.end() <= end {
            i += 1;
            *next = i;
        } else {
            break;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::DataFile;
    use std::io::Write;
    use std::sync::Arc;

    #[test]
    fn overlay_writes_piece_parts_across_chunk_borders() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&(0..=255u8).cycle().take(8192).collect::<Vec<_>>())
            .unwrap();
        let file = Arc::new(DataFile::local("d".into(), f));
        let pieces = vec![
            Piece {
                offset: 10,
                len: 20,
                source: Source::Data {
                    file: file.clone(),
                    offset: 100,
                },
            },
            Piece {
                offset: 40,
                len: 5,
                source: Source::Zeros,
            },
        ];
        let mut image = [7u8; 64];
        let mut next = 0;
        let mut copied = 0;
        for (k, chunk) in image.chunks_mut(16).enumerate() {
            copied += overlay(&pieces, &mut next, k as u64 * 16, chunk).unwrap();
        }
        assert_eq!(copied, 25, "the pieces' bytes, each once");
        for (i, b) in image.iter().enumerate() {
            let want = match i {
                10..=29 => (100 + i - 10) as u8,
                40..=44 => 0,
                _ => 7,
            };
            assert_eq!(*b, want, "byte {i}");
        }
        assert_eq!(next, 2);
    }
}
