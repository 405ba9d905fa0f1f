//! A whole-volume upload from ranges read side by side: each range through a stream of its own at its offset, on a connection of its own, its zeros kept as holes.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};

use super::stream::{
    is_zero, reset_file_volume, restore_file_length, start_upload, OwnedStream, SparseSender,
    UploadStats, FORCED_DATA, READ_BLOCK, ZEROS, ZERO_CHUNK,
};
use super::Vol;

/// In a file volume, a run of zeros is left out (a hole: the stream ends before it and a new
/// one starts after it) when writing it would take longer than a stream's close, which costs
/// the daemon a pool refresh (1-3 ms on a small pool, 600 ms on one of 2,000 volumes:
/// doc/measured.md); shorter runs are written. The close is timed on the volume's own pool
/// (the stream that gives the cleared file its length back), the zeros reckoned at
/// `ZERO_RATE` bytes a second, the run at least `MIN_SPLIT` bytes and at most `MAX_SPLIT`.
const ZERO_RATE: f64 = 256.0 * (1 << 20) as f64;
const MIN_SPLIT: u64 = 1 << 20;
const MAX_SPLIT: u64 = 1 << 30;

/// The shortest zero run left out of a file volume when a stream's open and close take `call`.
fn split_for(call: Duration) -> u64 {
    ((call.as_secs_f64() * ZERO_RATE) as u64).clamp(MIN_SPLIT, MAX_SPLIT)
}

/// One range of the image: `len` bytes at `offset`.
#[derive(Debug, Clone, Copy)]
pub struct ImageRange {
    pub offset: u64,
    pub len: u64,
}

/// A reader of one range's bytes, opened by its index.
pub type OpenRange<'a> = dyn Fn(usize) -> Result<Box<dyn Read + Send>> + Sync + 'a;

/// Upload an image of `ranges` (front to back, together covering its bytes from 0) into
/// `vol`, every range at once, each read by `open(index)` and written as it arrives through
/// a stream of its own on a connection of its own (`Vol::reopen`). Every byte of the volume
/// ends up written: a block device gets sparse streams (libvirt writes their holes as
/// zeros), the tail past the image included; a file volume is first cleared to holes
/// (truncated, then given its length back), then gets the ranges' data only, in streams that
/// stop at long zero runs, since a hole sent into a file truncates it. `progress(n)` gets the
/// bytes each range covered, as they come. Range 0's first block is read before the volume
/// is touched: a source that fails at once leaves it as it was. On failure the first error
/// is returned and the other ranges stop.
pub fn upload_ranges(
    vol: &Vol,
    ranges: &[ImageRange],
    open: &OpenRange,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<UploadStats> {
    let started = Instant::now();
    let what = vol.describe();
    let image_len = check_ranges(ranges)?;
    let info = vol
        .vol
        .info()
        .with_context(|| format!("reading the size of volume '{what}'"))?;
    let (capacity, is_file) = (info.capacity, info.kind == virt::sys::VIR_STORAGE_VOL_FILE);
    ensure!(
        image_len <= capacity,
        "the image holds {image_len} bytes, more than volume '{what}' ({capacity} bytes)"
    );
    let mut first = open(0)?;
    let mut head = vec![0u8; READ_BLOCK.min(ranges[0].len as usize)];
    read_full(&mut first, &mut head).context("reading the image at byte 0")?;
    let mut split = MIN_SPLIT;
    if is_file {
        reset_file_volume(vol)?;
        let call = Instant::now();
        restore_file_length(vol, capacity)?;
        split = split_for(call.elapsed());
        log::debug!("{what}: zero runs of {split} bytes or more are left as holes");
    }
    let job = Job {
        split,
        vol,
        open,
        progress,
        stop: AtomicBool::new(false),
        is_file,
    };
    let tail = if is_file { 0 } else { capacity - image_len };
    let results = job.all(ranges, (first, head), tail);
    let mut stats = UploadStats {
        bytes_read: image_len,
        bytes_skipped: 0,
        data_bytes: 0,
        hole_bytes: 0,
        elapsed: started.elapsed(),
    };
    if let Some(err) = first_error(results, &mut stats) {
        return Err(err);
    }
    if is_file {
        stats.hole_bytes += capacity - image_len;
    }
    Ok(stats)
}

/// The ranges' total length, checked to follow one another from 0.
fn check_ranges(ranges: &[ImageRange]) -> Result<u64> {
    ensure!(!ranges.is_empty(), "an upload of no range");
    let mut end = 0;
    for r in ranges {
        ensure!(
            r.offset == end && r.len > 0,
            "ranges must follow one another: {} bytes at {} after byte {end}",
            r.len,
            r.offset
        );
        end += r.len;
    }
    Ok(end)
}

/// The first real error of the ranges (not a range stopped because another failed); the
/// data and hole bytes of all added to `stats` when none failed.
fn first_error(results: Vec<Result<(u64, u64)>>, stats: &mut UploadStats) -> Option<anyhow::Error> {
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((data, holes)) => {
                stats.data_bytes += data;
                stats.hole_bytes += holes;
            }
            Err(e) => errors.push(e),
        }
    }
    let real = errors
        .iter()
        .position(|e| e.downcast_ref::<Stopped>().is_none())
        .unwrap_or(0);
    (!errors.is_empty()).then(|| errors.swap_remove(real))
}

/// A range stopped because another one failed.
#[derive(Debug)]
struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped: another range failed")
    }
}

impl std::error::Error for Stopped {}

/// What every range's thread shares.
struct Job<'a> {
    vol: &'a Vol,
    open: &'a OpenRange<'a>,
    progress: &'a (dyn Fn(u64) + Sync),
    /// Set when a range failed: the others stop.
    stop: AtomicBool,
    is_file: bool,
    /// The shortest zero run left a hole in a file volume ([`split_for`]).
    split: u64,
}

/// A range's first reader and the bytes already read from it.
type Started = (Box<dyn Read + Send>, Vec<u8>);

impl Job<'_> {
    /// Every range at once, range 0 from `first`, the last followed by `tail` zeros; their
    /// results in order.
    fn all(&self, ranges: &[ImageRange], first: Started, tail: u64) -> Vec<Result<(u64, u64)>> {
        let first = std::sync::Mutex::new(Some(first));
        std::thread::scope(|scope| {
            let workers: Vec<_> = ranges
                .iter()
                .enumerate()
                .map(|(i, &r)| {
                    let first = &first;
                    let tail = if i + 1 == ranges.len() { tail } else { 0 };
                    scope.spawn(move || {
                        let started = if i == 0 {
                            first.lock().expect("no panic holding it").take()
                        } else {
                            None
                        };
                        let res = self.range(i, r, tail, started);
                        if res.is_err() {
                            self.stop.store(true, Ordering::Relaxed);
                        }
                        res
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow!("a range's thread panicked")))
                })
                .collect()
        })
    }

    /// Range `i`, read and written front to back on a connection of its own (then `tail`
    /// zeros past it, on a block device); its data and hole bytes.
    fn range(
        &self,
        i: usize,
        r: ImageRange,
        tail: u64,
        started: Option<Started>,
    ) -> Result<(u64, u64)> {
        let (mut reader, head) = match started {
            Some(s) => s,
            None => ((self.open)(i)?, Vec::new()),
        };
        let vol = self.vol.reopen()?;
        let what = vol.describe();
        let sent = if self.is_file {
            let mut runs = DataRuns::new(&vol, r.offset, self.split);
            self.pump(&mut reader, head, r, &mut |b| runs.block(b))?;
            runs.finish()
        } else {
            let stream = OwnedStream::new(&vol.conn)?;
            let flags = virt::sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM;
            start_upload(&vol, &stream, r.offset, r.len + tail, flags)?;
            let mut s = SparseSender::new(&stream, &what);
            self.pump(&mut reader, head, r, &mut |b| s.block(b))?;
            s.zeros(tail)?;
            s.flush_hole()?;
            let sent = (s.data_bytes, s.hole_bytes);
            stream.finish().map(|()| sent)
        };
        sent.with_context(|| {
            format!(
                "finishing the upload of {} bytes at {} to volume '{what}'",
                r.len, r.offset
            )
        })
    }

    /// Range `r`'s bytes from `reader` (`head` read already) into `write`, block by block,
    /// each counted as progress; then the range's end checked.
    fn pump(
        &self,
        reader: &mut Box<dyn Read + Send>,
        head: Vec<u8>,
        r: ImageRange,
        write: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut buf = head;
        let mut done = 0u64;
        loop {
            if !buf.is_empty() {
                write(&buf)?;
                done += buf.len() as u64;
                (self.progress)(buf.len() as u64);
            }
            if done == r.len {
                break;
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(Stopped.into());
            }
            crate::interrupt::check()?;
            buf.resize(READ_BLOCK.min((r.len - done) as usize), 0);
            read_full(reader, &mut buf)
                .with_context(|| format!("reading the image at byte {}", r.offset + done))?;
        }
        // The range must end where it said: nothing more may come (its reader checks the rest).
        ensure!(
            reader.read(&mut [0u8; 1])? == 0,
            "the image's range at byte {} holds more than {} bytes",
            r.offset,
            r.len
        );
        Ok(())
    }
}

/// Fill `buf` whole from `r`; an end before that is an error.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => io::Error::other("the image ended early"),
        _ => e,
    })
}

/// A range's data written into a file volume that reads zeros throughout: each run of data
/// through a non-sparse stream at its offset, a stream ending at a zero run of `split` bytes
/// or more (left a hole), shorter zero runs written as data.
struct DataRuns<'a> {
    vol: &'a Vol,
    stream: Option<OwnedStream>,
    /// Volume offset of the next byte of the range.
    at: u64,
    /// Zeros at `at` not written yet.
    zeros: u64,
    /// The shortest zero run left a hole.
    split: u64,
    data: u64,
    holes: u64,
}

impl<'a> DataRuns<'a> {
    fn new(vol: &'a Vol, offset: u64, split: u64) -> DataRuns<'a> {
        DataRuns {
            vol,
            stream: None,
            at: offset,
            zeros: 0,
            split,
            data: 0,
            holes: 0,
        }
    }

    fn block(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(ZERO_CHUNK) {
            // The volume's first bytes are written whatever they hold: clearing the file
            // kept its first byte (`reset_file_volume`).
            let forced = self.at + self.zeros < FORCED_DATA;
            if is_zero(chunk) && !forced {
                self.zeros += chunk.len() as u64;
            } else {
                self.data(chunk)?;
            }
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<()> {
        if self.zeros >= self.split {
            self.close()?;
            self.at += self.zeros;
            self.holes += self.zeros;
        } else {
            while self.zeros > 0 {
                let n = self.zeros.min(FORCED_DATA);
                self.send(&ZEROS[..n as usize])?;
                self.zeros -= n;
            }
        }
        self.zeros = 0;
        self.send(bytes)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        if self.stream.is_none() {
            let stream = OwnedStream::new(&self.vol.conn)?;
            // Length 0: up to the volume's end; the stream is finished where the data ends.
            start_upload(self.vol, &stream, self.at, 0, 0)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_ref().expect("opened above");
        stream.send_all(bytes).with_context(|| {
            format!(
                "sending {} bytes at byte {} to volume '{}'",
                bytes.len(),
                self.at,
                self.vol.describe()
            )
        })?;
        self.at += bytes.len() as u64;
        self.data += bytes.len() as u64;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        match self.stream.take() {
            Some(s) => s.finish(),
            None => Ok(()),
        }
    }

    fn finish(mut self) -> Result<(u64, u64)> {
        self.close()?;
        if self.zeros > 0 {
            self.holes += self.zeros;
        }
        Ok((self.data, self.holes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_run_is_left_out_when_writing_it_costs_more_than_a_stream() {
        let ms = |m| split_for(Duration::from_millis(m));
        assert_eq!(ms(0), MIN_SPLIT);
        assert_eq!(ms(2), MIN_SPLIT);
        // A refresh of half a second (a pool of some 2,000 volumes): runs under 128 MiB are
        // written.
        assert_eq!(ms(500), 128 << 20);
        assert_eq!(ms(60_000), MAX_SPLIT);
    }

    #[test]
    fn ranges_must_follow_one_another_from_zero() {
        let r = |offset, len| ImageRange { offset, len };
        assert_eq!(check_ranges(&[r(0, 10), r(10, 5)]).unwrap(), 15);
        assert!(check_ranges(&[]).is_err());
        assert!(check_ranges(&[r(0, 10), r(11, 5)]).is_err());
        assert!(check_ranges(&[r(1, 10)]).is_err());
        assert!(check_ranges(&[r(0, 0)]).is_err());
    }
}
