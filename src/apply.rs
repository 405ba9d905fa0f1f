//! Apply a chain's changed pieces to a raw target (image file or block device) in place.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::progress::Transfer;
use crate::vmdk::OpenOptions as OpenChain;
use crate::vmdk::{show, Chain, Parent, ParentLink, Piece, Source};

/// Largest single write: large enough to stream, small enough to stay cheap in memory.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Maximal virtually-contiguous groups of pieces.
    pub runs: u64,
    pub pieces: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub elapsed: Duration,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "applied {} runs ({} pieces): {} data bytes, {} zero bytes in {}",
            self.runs,
            self.pieces,
            self.data_bytes,
            self.zero_bytes,
            crate::units::human_duration(self.elapsed)
        )
    }
}

/// Count pieces, runs and bytes without touching anything; reading every table on the way
/// means a corrupt chain is refused here, before the target is opened for writing.
pub fn survey(chain: &Chain) -> anyhow::Result<ApplyReport> {
    let mut r = ApplyReport::default();
    let mut last_end = None;
    for piece in chain.pieces() {
        crate::interrupt::check()?;
        let piece = piece?;
        tally(&mut r, &piece, &mut last_end);
    }
    Ok(r)
}

pub fn tally(r: &mut ApplyReport, piece: &Piece, last_end: &mut Option<u64>) {
    r.pieces += 1;
    if *last_end != Some(piece.offset) {
        r.runs += 1;
    }
    *last_end = Some(piece.end());
    match piece.source {
        Source::Zeros => r.zero_bytes += piece.len,
        Source::Data { .. } => r.data_bytes += piece.len,
    }
}

/// `--target`: check the oldest delta's link to its parent where the parent is here, then
/// apply the chain; with `dry_run`, say what would be written and open nothing for writing.
pub fn run_target(
    chain: &Chain,
    target: &Path,
    opts: &OpenChain,
    dry_run: bool,
) -> anyhow::Result<()> {
    let first = &chain.layers()[0];
    match chain.check_parent(Parent::Hinted(opts))? {
        ParentLink::Checked(parent) => log::info!(
            "{}: parentCID matches the CID of {}",
            show(&first.path),
            show(&parent)
        ),
        ParentLink::NotChecked(why) => crate::note!(
            "{}: the link to its parent was not checked: {why}; make sure {} holds that parent's bytes",
            show(&first.path),
            show(target)
        ),
    }
    if !dry_run {
        let mut span = crate::report::begin("delta apply");
        span.io("direct");
        let r = apply_to_target(chain, target)?;
        log::info!("{r}");
        span.done(Some(r.data_bytes + r.zero_bytes), None);
        return Ok(());
    }
    let planned = survey(chain)?;
    let size = target_size(target)?;
    if size < chain.capacity() {
        bail!(
            "{}: target holds {size} bytes, smaller than the disk's {} bytes",
            show(target),
            chain.capacity()
        );
    }
    log::info!(
        "would apply {} runs ({} pieces) to {}: {} data bytes, {} zero bytes (--dry-run: nothing written)",
        planned.runs,
        planned.pieces,
        show(target),
        planned.data_bytes,
        planned.zero_bytes
    );
    Ok(())
}

/// The size of a regular file or block device, opened read-only.
fn target_size(target: &Path) -> anyhow::Result<u64> {
    let file = std::fs::File::open(target)
        .with_context(|| format!("{}: opening target for reading", show(target)))?;
    (&file)
        .seek(SeekFrom::End(0))
        .with_context(|| format!("{}: finding the target's size", show(target)))
}

/// Write every changed piece of `chain` into `target` at its virtual offset, then fsync.
pub fn apply_to_target(chain: &Chain, target: &Path) -> anyhow::Result<ApplyReport> {
    let planned = survey(chain)?;
    let bar = Transfer::new(
        format!("{}: delta apply", show(target)),
        planned.data_bytes + planned.zero_bytes,
    );
    let r = write_surveyed(chain, target, &planned, &bar)?;
    bar.finish();
    Ok(r)
}

/// The writing half of [`apply_to_target`], for a caller that has already surveyed `chain`
/// (stage 2 surveys every disk's chain before it writes any): `planned` is that survey. `bar`
/// counts the bytes written.
pub fn write_surveyed(
    chain: &Chain,
    target: &Path,
    planned: &ApplyReport,
    bar: &Transfer,
) -> anyhow::Result<ApplyReport> {
    let started = Instant::now();
    let file = OpenOptions::new()
        .write(true)
        .open(target)
        .with_context(|| format!("{}: opening target for writing", show(target)))?;
    // Seeking to the end gives the size of regular files and block devices alike.
    let size = (&file)
        .seek(SeekFrom::End(0))
        .with_context(|| format!("{}: finding the target's size", show(target)))?;
    if size < chain.capacity() {
        bail!(
            "{}: target holds {size} bytes, smaller than the disk's {} bytes; nothing was written",
            show(target),
            chain.capacity()
        );
    }
    let mut r = ApplyReport::default();
    let mut last_end = None;
    let mut buf = vec![0u8; WRITE_BUFFER_BYTES];
    let zeros = vec![0u8; WRITE_BUFFER_BYTES];
    for piece in chain.pieces() {
        let piece = piece?;
        let mut done = 0u64;
        while done < piece.len {
            crate::interrupt::check()?;
            let n = (piece.len - done).min(WRITE_BUFFER_BYTES as u64) as usize;
            let data = match piece.source {
                Source::Zeros => &zeros[..n],
                Source::Data { .. } => {
                    piece.read_at(done, &mut buf[..n])?;
                    &buf[..n]
                }
            };
            file.write_all_at(data, piece.offset + done)
                .with_context(|| {
                    format!(
                        "{}: writing {n} bytes at byte {}",
                        show(target),
                        piece.offset + done
                    )
                })?;
            done += n as u64;
            bar.add(n as u64);
        }
        tally(&mut r, &piece, &mut last_end);
    }
    file.sync_all()
        .with_context(|| format!("{}: flushing to stable storage", show(target)))?;
    debug_assert_eq!(
        (r.pieces, r.data_bytes),
        (planned.pieces, planned.data_bytes)
    );
    r.elapsed = started.elapsed();
    Ok(r)
}
