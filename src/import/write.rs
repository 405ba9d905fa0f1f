//! Stage 2's writer: puts a chain's changed pieces into a libvirt volume, through few upload windows or direct positional writes.

use crate::apply::{self, ApplyReport};
use crate::cli::IoMode;
use crate::libvirt::{self, Conn, Download, Vol};
use crate::plan::{CostModel, Window, WindowPlanner};
use crate::vmdk::{Chain, Piece, Source};
use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
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
    /// Time spent outside moving bytes, over all calls (opening streams, waiting for the
    /// pool's lock, finishing).
    pub call_overhead: Duration,
    pub elapsed: Duration,
}

impl fmt::Display for WriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let call_ms = if self.calls == 0 {
            0.0
        } else {
            self.call_overhead.as_secs_f64() * 1e3 / self.calls as f64
        };
        write!(
            f,
            "io={} runs={} pieces={} data_bytes={} zero_bytes={} gap_bytes={} calls={} call_ms={:.3} elapsed_s={:.3}",
            self.io,
            self.changes.runs,
            self.changes.pieces,
            self.changes.data_bytes,
            self.changes.zero_bytes,
            self.gap_bytes,
            self.calls,
            call_ms,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Write `chain` into `vol` by the path `mode` asks for. `auto` writes directly only when the
/// daemon is on this host and the volume's path is a regular file or block device this
/// process can open for writing; it says which path it took, and why.
pub fn write_chain(conn: &Conn, vol: &Vol, chain: &Chain, mode: IoMode) -> Result<WriteReport> {
    let direct = match mode {
        IoMode::Stream => false,
        IoMode::Direct => {
            if let Err(why) = direct_possible(conn, vol) {
                bail!("--io direct: volume '{}': {why}", vol.describe());
            }
            true
        }
        IoMode::Auto => match direct_possible(conn, vol) {
            Ok(()) => {
                println!("io: direct writes to {} (local volume)", vol.path());
                true
            }
            Err(why) => {
                println!("io: libvirt upload streams ({why})");
                false
            }
        },
    };
    if direct {
        write_direct(vol, chain)
    } else {
        write_streamed(vol, chain, &mut CostModel::default())
    }
}

/// Why the direct path cannot be taken, if it cannot.
fn direct_possible(conn: &Conn, vol: &Vol) -> Result<(), String> {
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
fn write_direct(vol: &Vol, chain: &Chain) -> Result<WriteReport> {
    let started = Instant::now();
    let changes = apply::apply_to_target(chain, Path::new(vol.path()))?;
    vol.pool()?.refresh()?;
    Ok(WriteReport {
        io: "direct",
        changes,
        elapsed: started.elapsed(),
        ..Default::default()
    })
}

/// Upload calls over windows planned with the cost model. The caller has surveyed the chain
/// (every table read and checked) before this writes a byte.
pub fn write_streamed(vol: &Vol, chain: &Chain, cost: &mut CostModel) -> Result<WriteReport> {
    let started = Instant::now();
    let mut report = WriteReport {
        io: "stream",
        ..Default::default()
    };
    let mut planner = WindowPlanner::new(chain.pieces());
    let mut last_end = None;
    while let Some(window) = planner.next_window(cost) {
        let window = window?;
        for p in &window.pieces {
            apply::tally(&mut report.changes, p, &mut last_end);
        }
        let timing = upload_window(vol, &window).with_context(|| {
            format!(
                "writing bytes {}..{} of volume '{}'",
                window.offset,
                window.end(),
                vol.describe()
            )
        })?;
        cost.observe_call(timing.overhead, timing.moved, timing.moving);
        report.calls += 1;
        report.call_overhead += timing.overhead;
        report.gap_bytes += window.gap_bytes();
    }
    report.elapsed = started.elapsed();
    report.changes.elapsed = report.elapsed;
    Ok(report)
}

/// Where one window's time went.
struct WindowTiming {
    /// Opening the streams (this is where a call waits for the previous call's pool refresh)
    /// and finishing them.
    overhead: Duration,
    /// Bytes that went through the download-and-upload loop (0 when the window had no gap).
    moved: u64,
    moving: Duration,
}

/// One upload call for `window`. When the window has gaps, a download of the same range runs
/// beside the upload and supplies the gap bytes: read first, overlaid with the pieces, sent
/// back, so each gap byte is rewritten with exactly what the volume held.
fn upload_window(vol: &Vol, window: &Window) -> Result<WindowTiming> {
    let t0 = Instant::now();
    let mut download = if window.gap_bytes() > 0 {
        Some(Download::open(vol, window.offset, window.len)?)
    } else {
        None
    };
    let mut first_fill = None;
    let mut last_fill = t0;
    let mut next_piece = 0usize;
    libvirt::upload_at(vol, window.offset, window.len, &mut |rel, buf| {
        first_fill.get_or_insert_with(Instant::now);
        if let Some(dl) = download.as_mut() {
            dl.read_exact(buf)
                .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        }
        overlay(&window.pieces, &mut next_piece, window.offset + rel, buf)?;
        last_fill = Instant::now();
        Ok(())
    })?;
    if let Some(dl) = download {
        dl.finish()?;
    }
    let end = Instant::now();
    let first = first_fill.unwrap_or(end);
    // Everything between the first fill and the last is moving bytes; before it the streams
    // were opened, after it the last chunk was sent and the streams finished.
    let moving = last_fill.saturating_duration_since(first);
    let overhead = (end - t0).saturating_sub(moving);
    let moved = if window.gap_bytes() > 0 {
        window.len
    } else {
        0
    };
    Ok(WindowTiming {
        overhead,
        moved,
        moving,
    })
}

/// Copy into `buf` (the bytes at virtual offset `at`) every piece part that falls inside it.
/// `next` is the index of the first piece not yet wholly written; windows are filled front
/// to back, so it only moves forward.
fn overlay(pieces: &[Piece], next: &mut usize, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let end = at + buf.len() as u64;
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
        }
        if p.end() <= end {
            i += 1;
            *next = i;
        } else {
            break;
        }
    }
    Ok(())
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
        let file = Arc::new(DataFile {
            path: "d".into(),
            file: f,
        });
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
        let mut image = vec![7u8; 64];
        let mut next = 0;
        for (k, chunk) in image.chunks_mut(16).enumerate() {
            overlay(&pieces, &mut next, k as u64 * 16, chunk).unwrap();
        }
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
