//! Volume streams: the sparse whole-volume base upload, positioned non-sparse uploads, downloads.

use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use virt::stream::Stream;

use super::{ffi, Conn, Vol};
use crate::image_read::{Extent, ImageRead};

/// Bytes read from the source per block in `upload_image`: one `SEND_MAX` piece, so the bytes
/// are still in the CPU's cache when they are checked for zeros and sent.
/// Measured against 1 and 4 MiB: doc/measured.md (the base upload's sizes).
pub(super) const READ_BLOCK: usize = 256 << 10;
/// Zero detection granularity: a run of zeros shorter than this is sent as data. 64 KiB keeps
/// the number of hole messages small while still finding the empty areas of a disk image.
pub(super) const ZERO_CHUNK: usize = 64 << 10;
/// Largest piece handed to one `virStreamSend`.
/// Measured against 1 MiB: doc/measured.md (the base upload's sizes).
const SEND_MAX: usize = 256 << 10;
/// Buffer size for `upload_at` fills and downloads.
const IO_CHUNK: usize = 1 << 20;

/// A blocking stream that never panics on drop and is aborted unless it finished.
pub(super) struct OwnedStream {
    inner: ManuallyDrop<Stream>,
    done: bool,
}

impl OwnedStream {
    pub(super) fn new(conn: &Conn) -> Result<OwnedStream> {
        // Flags 0: a blocking stream, so send() blocks instead of returning -2.
        let inner = Stream::new(conn.raw(), 0).context("creating a libvirt stream")?;
        Ok(OwnedStream {
            inner: ManuallyDrop::new(inner),
            done: false,
        })
    }

    fn stream(&self) -> &Stream {
        &self.inner
    }

    /// Send all of `data`, looping over short writes.
    pub(super) fn send_all(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let piece = &data[..data.len().min(SEND_MAX)];
            let n = self.inner.send(piece)?;
            ensure!(n > 0, "stream send returned {n}");
            data = &data[n as usize..];
        }
        Ok(())
    }

    fn send_hole(&self, len: u64) -> Result<()> {
        let len = i64::try_from(len).with_context(|| format!("hole of {len} bytes is too long"))?;
        ffi::stream_send_hole(&self.inner, len)?;
        Ok(())
    }

    /// Finish the stream: only when this succeeds did the daemon write everything.
    /// After a failed finish, Drop still aborts (harmless if the daemon already closed it).
    pub(super) fn finish(mut self) -> Result<()> {
        ffi::stream_finish(&self.inner)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for OwnedStream {
    fn drop(&mut self) {
        if !self.done {
            // An error path: tell the daemon to drop the transfer. Its own error, if any, is
            // less interesting than the one that brought us here.
            let _ = ffi::stream_abort(&self.inner);
        }
        ffi::stream_free(&mut self.inner);
    }
}

/// What `upload_image` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStats {
    /// Bytes of the image covered: read, or skipped as known zeros (`bytes_skipped`). A
    /// whole image covers its capacity.
    pub bytes_read: u64,
    /// Of `bytes_read`, the bytes the reader knew to be zeros and that were never read (holes
    /// of a sparse file, ZERO extents, unallocated grains).
    pub bytes_skipped: u64,
    /// Bytes sent as data.
    pub data_bytes: u64,
    /// Bytes sent as holes, the tail past the image's end included.
    pub hole_bytes: u64,
    /// Wall time from opening the stream to its successful finish.
    pub elapsed: Duration,
}

/// Bytes at the start of the volume always sent as data, never as a hole (see
/// `reset_file_volume`).
pub(super) const FORCED_DATA: u64 = 4096;
pub(super) static ZEROS: [u8; FORCED_DATA as usize] = [0; FORCED_DATA as usize];

/// Upload a whole disk image into `vol` through ONE sparse stream that covers the volume
/// front to back: zero runs go as holes, and a tail past the image's end up to the volume's
/// capacity goes as a final hole, so every byte of the volume ends up written (a block device
/// gets real zeros; a file gets holes and keeps its length) and nothing a previous user left
/// in the volume can be read through the image's empty areas. (A file volume gets one tiny
/// stream before that one: see `reset_file_volume`.)
///
/// `reader` is read sequentially (standard input works); before each read it is asked what
/// lies ahead ([`ImageRead::next_extent`]): zeros it knows of (the holes of a sparse file, a
/// ZERO extent) become holes without being read, and reads stop where they begin. Data is
/// still read and checked for zero runs. An image longer than the volume is refused.
/// `progress` gets the number of bytes covered so far after every block. On failure the
/// volume's content is undefined (a base upload is redone from the start), but a file volume
/// keeps its length, so a second attempt sees the same capacity.
pub fn upload_image(
    vol: &Vol,
    reader: &mut dyn ImageRead,
    progress: &mut dyn FnMut(u64),
) -> Result<UploadStats> {
    upload(vol, reader, progress, true)
}

/// [`upload_image`] into a volume this run has just created (a new file reads zeros
/// throughout, so its holes need no clearing first): one stream, one pool refresh, where a
/// file volume otherwise costs two.
pub fn upload_image_fresh(
    vol: &Vol,
    reader: &mut dyn ImageRead,
    progress: &mut dyn FnMut(u64),
) -> Result<UploadStats> {
    upload(vol, reader, progress, false)
}

fn upload(
    vol: &Vol,
    reader: &mut dyn ImageRead,
    progress: &mut dyn FnMut(u64),
    reset: bool,
) -> Result<UploadStats> {
    let what = vol.describe();
    log::debug!("{what}: upload stream of the whole volume (sparse)");
    let info = vol
        .vol
        .info()
        .with_context(|| format!("reading the size of volume '{what}'"))?;
    let capacity = info.capacity;
    let is_file = info.kind == virt::sys::VIR_STORAGE_VOL_FILE;
    let start = Instant::now();
    let mut block = PageAligned::new(READ_BLOCK);
    let buf = block.get();
    // Read the first block before touching the volume: a source that fails at once (a wrong
    // path at the far end of ssh, say) leaves the volume as it was.
    let mut source = ImageSource {
        reader,
        data_left: 0,
    };
    let first = source
        .fill(buf, 0, capacity)
        .context("reading the image at byte 0")?;
    let sent = send_image(
        vol,
        capacity,
        is_file && reset,
        &mut source,
        buf,
        first,
        progress,
    );
    let sent = match sent {
        Err(err) if is_file => {
            // The failed stream truncated the file where it stopped; give it its length back.
            match restore_file_length(vol, capacity) {
                Ok(()) => Err(err),
                Err(e) => Err(err.context(format!("{e:#}"))),
            }
        }
        other => other,
    };
    let (bytes_read, bytes_skipped, data_bytes, hole_bytes) = sent?;
    Ok(UploadStats {
        bytes_read,
        bytes_skipped,
        data_bytes,
        hole_bytes,
        elapsed: start.elapsed(),
    })
}

/// A buffer that starts on a page boundary: the kernel copies a read into it several times
/// faster than into one that does not.
/// Measured: doc/measured.md (the base upload's sizes).
struct PageAligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl PageAligned {
    const ALIGN: usize = 4096;

    fn new(len: usize) -> PageAligned {
        let raw = vec![0u8; len + Self::ALIGN];
        // `align_offset` may in theory give up (usize::MAX): then the buffer stays unaligned,
        // which is slower but correct.
        let start = match raw.as_ptr().align_offset(Self::ALIGN) {
            off if off < Self::ALIGN => off,
            _ => 0,
        };
        PageAligned { raw, start, len }
    }

    fn get(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// One step of `upload_image`'s reading: `read` bytes read into the front of the buffer,
/// then `zeros` known zeros skipped without reading. Both 0: the end of the image.
#[derive(Debug, Clone, Copy)]
struct Block {
    read: usize,
    zeros: u64,
}

/// The reading side of `upload_image`: the reader and what it said of the bytes ahead.
struct ImageSource<'a> {
    reader: &'a mut dyn ImageRead,
    /// Bytes the reader said hold data and that were not read yet: no need to ask again
    /// before reading them (a dense image is asked once, not once a block).
    data_left: u64,
}

impl ImageSource<'_> {
    /// Fill `buf` from the reader, whose position is `covered`, until it is full, the reader
    /// ends, or the reader knows that zeros come next (those are skipped, not read, and end
    /// the block). Reads stop where the reader said its data ends, so they never read a hole's
    /// pages. Past `capacity` nothing is skipped: the reads show whether the image is longer
    /// than the volume.
    fn fill(&mut self, buf: &mut [u8], covered: u64, capacity: u64) -> io::Result<Block> {
        let mut n = 0;
        while n < buf.len() {
            if self.data_left == 0 {
                let max = capacity.saturating_sub(covered + n as u64);
                self.data_left = if max == 0 {
                    u64::MAX
                } else {
                    match self.reader.next_extent(max)? {
                        // Not a valid answer; read on.
                        Extent::Zeros(0) => max,
                        Extent::Zeros(z) => {
                            if z > max {
                                return Err(io::Error::other(format!(
                                    "the image reader skipped {z} bytes where at most {max} were asked"
                                )));
                            }
                            return Ok(Block { read: n, zeros: z });
                        }
                        Extent::Data(d) => d.max(1),
                    }
                };
            }
            let want = (buf.len() - n).min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
            match self.reader.read(&mut buf[n..n + want]) {
                Ok(0) => break,
                Ok(k) => {
                    n += k;
                    self.data_left = self.data_left.saturating_sub(k as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Block { read: n, zeros: 0 })
    }
}

/// The body of `upload_image`, from the first block read on: (bytes covered, bytes skipped,
/// data, holes).
fn send_image(
    vol: &Vol,
    capacity: u64,
    is_file: bool,
    source: &mut ImageSource,
    buf: &mut [u8],
    first: Block,
    progress: &mut dyn FnMut(u64),
) -> Result<(u64, u64, u64, u64)> {
    let what = vol.describe();
    if is_file {
        reset_file_volume(vol)?;
    }
    let stream = OwnedStream::new(&vol.conn)?;
    vol.vol
        .upload(
            stream.stream(),
            0,
            capacity,
            virt::sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM,
        )
        .with_context(|| format!("starting a sparse upload to volume '{what}'"))?;
    let mut out = SparseSender::new(&stream, &what);
    let mut covered: u64 = 0;
    let mut skipped: u64 = 0;
    let mut block = first;
    while block.read > 0 || block.zeros > 0 {
        crate::interrupt::check()?;
        let n = block.read;
        covered += n as u64;
        if covered > capacity {
            // Dropping the stream aborts it.
            bail!(
                "the image is longer than volume '{what}' ({capacity} bytes): \
                 read {covered} bytes so far"
            );
        }
        out.block(&buf[..n])?;
        // Known zeros after the data: a hole (merged with its neighbours), never read.
        // `fill` skips nothing past the capacity.
        out.zeros(block.zeros)?;
        covered += block.zeros;
        skipped += block.zeros;
        progress(covered);
        block = source
            .fill(buf, covered, capacity)
            .with_context(|| format!("reading the image at byte {covered}"))?;
    }
    // A signal that came while the source ended (Ctrl-C stops the whole pipeline) aborts
    // the stream rather than finishing a short image.
    crate::interrupt::check()?;
    // The tail past the image (LVM rounds volumes up) must read zeros too.
    out.zeros(capacity - covered)?;
    out.flush_hole()?;
    let (data_bytes, hole_bytes) = (out.data_bytes, out.hole_bytes);
    ensure!(
        data_bytes + hole_bytes == capacity,
        "sent {data_bytes} data and {hole_bytes} hole bytes to volume '{what}' of {capacity} bytes"
    );
    stream
        .finish()
        .with_context(|| format!("finishing the upload to volume '{what}'"))?;
    Ok((covered, skipped, data_bytes, hole_bytes))
}

/// Cut a file volume down to one byte before a sparse upload rewrites it.
///
/// libvirt writes a hole into a file as lseek + ftruncate at the hole's END, so whatever the
/// file held inside the first hole before its old end survives (seen here: a 0x5A pattern
/// read back through a 4 MiB hole). A hole of one byte at offset 0 truncates the file to one
/// byte; the main upload then sends its first `FORCED_DATA` bytes as data, so every later
/// hole lies past the end of the file and reads as zeros. Block devices need none of this:
/// libvirt writes their holes as zeros (there this stream writes one zero byte).
pub(super) fn reset_file_volume(vol: &Vol) -> Result<()> {
    sparse_hole_stream(vol, 1).with_context(|| format!("clearing file volume '{}'", vol.describe()))
}

/// Give a file volume its length back after a failed upload cut it short: a hole from 0 to
/// `capacity` (lseek + ftruncate) extends the file and changes none of its bytes.
pub(super) fn restore_file_length(vol: &Vol, capacity: u64) -> Result<()> {
    sparse_hole_stream(vol, capacity).with_context(|| {
        format!(
            "restoring the length of file volume '{}' to {capacity} bytes",
            vol.describe()
        )
    })
}

/// Give a file volume that an interrupted upload left short (a killed process or daemon
/// cannot restore it) its length `capacity` back. Returns the length it had, or `None` when
/// nothing was needed (a block device, or a file at least that long).
pub fn repair_file_length(vol: &Vol, capacity: u64) -> Result<Option<u64>> {
    let info = vol
        .vol
        .info()
        .with_context(|| format!("reading the size of volume '{}'", vol.describe()))?;
    if info.kind != virt::sys::VIR_STORAGE_VOL_FILE || info.capacity >= capacity {
        return Ok(None);
    }
    restore_file_length(vol, capacity)?;
    Ok(Some(info.capacity))
}

/// One sparse upload stream at offset 0 that sends a single hole of `len` bytes.
fn sparse_hole_stream(vol: &Vol, len: u64) -> Result<()> {
    let stream = OwnedStream::new(&vol.conn)?;
    // Length 0: no limit; the hole decides.
    start_upload(
        vol,
        &stream,
        0,
        0,
        virt::sys::VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM,
    )?;
    stream.send_hole(len)?;
    stream.finish()
}

/// The sending side of `upload_image`: data as data, zeros as holes, holes merged.
pub(super) struct SparseSender<'a> {
    pub(super) stream: &'a OwnedStream,
    pub(super) what: &'a str,
    /// Volume offset up to which data or holes were sent.
    pub(super) pos: u64,
    /// Zeros after `pos` not sent yet: adjacent zero runs become one hole.
    pub(super) pending_hole: u64,
    pub(super) data_bytes: u64,
    pub(super) hole_bytes: u64,
}

impl<'a> SparseSender<'a> {
    /// A sender on `stream` (an upload to the volume `what`) that has sent nothing yet.
    pub(super) fn new(stream: &'a OwnedStream, what: &'a str) -> SparseSender<'a> {
        SparseSender {
            stream,
            what,
            pos: 0,
            pending_hole: 0,
            data_bytes: 0,
            hole_bytes: 0,
        }
    }

    /// A block read from the image: its zero chunks as zeros, the rest as data.
    pub(super) fn block(&mut self, data: &[u8]) -> Result<()> {
        let n = data.len();
        let mut pos = 0;
        while pos < n {
            // One run: consecutive chunks that are all zero, or all not.
            let zero = is_zero(&data[pos..(pos + ZERO_CHUNK).min(n)]);
            let mut end = (pos + ZERO_CHUNK).min(n);
            while end < n && is_zero(&data[end..(end + ZERO_CHUNK).min(n)]) == zero {
                end = (end + ZERO_CHUNK).min(n);
            }
            if zero {
                self.zeros((end - pos) as u64)?;
            } else {
                self.data(&data[pos..end])?;
            }
            pos = end;
        }
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<()> {
        self.flush_hole()?;
        self.stream.send_all(bytes).with_context(|| {
            format!(
                "sending {} bytes at byte {} to volume '{}'",
                bytes.len(),
                self.pos,
                self.what
            )
        })?;
        self.pos += bytes.len() as u64;
        self.data_bytes += bytes.len() as u64;
        Ok(())
    }

    pub(super) fn zeros(&mut self, mut len: u64) -> Result<()> {
        let at = self.pos + self.pending_hole;
        if at < FORCED_DATA {
            let n = len.min(FORCED_DATA - at);
            self.data(&ZEROS[..n as usize])?;
            len -= n;
        }
        self.pending_hole += len;
        Ok(())
    }

    pub(super) fn flush_hole(&mut self) -> Result<()> {
        if self.pending_hole == 0 {
            return Ok(());
        }
        let len = self.pending_hole;
        self.stream.send_hole(len).with_context(|| {
            format!(
                "sending a hole of {len} bytes at byte {} to volume '{}'",
                self.pos, self.what
            )
        })?;
        self.pos += len;
        self.hole_bytes += len;
        self.pending_hole = 0;
        Ok(())
    }
}

/// Write `len` bytes at `offset` of `vol` through one non-sparse upload stream; `fill(rel,
/// buf)` produces the bytes starting `rel` bytes past `offset`. No holes: on a file volume a
/// hole would truncate, on a block device it would write zeros over what `fill` meant.
///
/// Each call costs a pool refresh in the daemon when the stream closes: callers should merge
/// small writes into few calls.
pub fn upload_at(
    vol: &Vol,
    offset: u64,
    len: u64,
    fill: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<()> {
    upload_within(vol, vol.capacity()?, offset, len, fill)
}

/// [`upload_at`] for a caller that read the volume's `capacity` once: no call on the
/// connection but the stream's own.
pub fn upload_within(
    vol: &Vol,
    capacity: u64,
    offset: u64,
    len: u64,
    fill: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let what = vol.describe();
    log::trace!("{what}: upload stream of {len} bytes at {offset}");
    let end = offset
        .checked_add(len)
        .with_context(|| format!("upload range overflows: {offset} + {len}"))?;
    ensure!(
        end <= capacity,
        "upload of {len} bytes at {offset} ends past the end of volume '{what}' ({capacity} bytes)"
    );
    let stream = OwnedStream::new(&vol.conn)?;
    start_upload(vol, &stream, offset, len, 0)?;
    let mut buf = vec![0u8; IO_CHUNK.min(len as usize)];
    let mut sent: u64 = 0;
    while sent < len {
        crate::interrupt::check()?;
        let n = IO_CHUNK.min((len - sent) as usize);
        fill(sent, &mut buf[..n]).with_context(|| {
            format!(
                "producing {n} bytes for volume '{what}' at byte {}",
                offset + sent
            )
        })?;
        stream.send_all(&buf[..n]).with_context(|| {
            format!(
                "sending {n} bytes to volume '{what}' at byte {}",
                offset + sent
            )
        })?;
        sent += n as u64;
    }
    ensure!(
        sent == len,
        "sent {sent} bytes instead of {len} to volume '{what}'"
    );
    stream.finish().with_context(|| {
        format!("finishing the upload of {len} bytes at {offset} to volume '{what}'")
    })
}

/// Start a non-sparse upload, retrying briefly while libvirt reports the volume busy (the
/// previous stream on it can still be closing).
pub(super) fn start_upload(
    vol: &Vol,
    stream: &OwnedStream,
    offset: u64,
    len: u64,
    flags: u32,
) -> Result<()> {
    let mut tries = 0;
    loop {
        match vol.vol.upload(stream.stream(), offset, len, flags) {
            Ok(()) => return Ok(()),
            Err(e) if tries < 100 && e.message().contains("in use") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "starting an upload of {len} bytes at {offset} to volume '{}'",
                    vol.describe()
                )))
            }
        }
    }
}

/// An open download of `len` bytes at `offset` of a volume, read front to back in pieces of
/// the caller's choosing. Stage 2 keeps one open beside an upload of the same range, so gap
/// bytes flow from the volume back into it without a buffer the size of the window.
pub struct Download {
    stream: OwnedStream,
    what: String,
    offset: u64,
    len: u64,
    got: u64,
    /// Bytes received but not yet handed out (a message can straddle two reads).
    pending: Vec<u8>,
    pending_pos: usize,
}

impl Download {
    /// Start the download (downloads start no pool refresh).
    pub fn open(vol: &Vol, offset: u64, len: u64) -> Result<Download> {
        let what = vol.describe();
        log::trace!("{what}: download stream of {len} bytes at {offset}");
        let stream = OwnedStream::new(&vol.conn)?;
        vol.vol
            .download(stream.stream(), offset, len, 0)
            .with_context(|| {
                format!("starting a download of {len} bytes at {offset} from volume '{what}'")
            })?;
        Ok(Download {
            stream,
            what,
            offset,
            len,
            got: 0,
            pending: vec![0u8; IO_CHUNK],
            pending_pos: IO_CHUNK,
        })
    }

    /// Fill `buf` with the next bytes of the range.
    pub fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            if self.pending_pos == self.pending.len() {
                self.refill()?;
            }
            let n = buf.len().min(self.pending.len() - self.pending_pos);
            buf[..n].copy_from_slice(&self.pending[self.pending_pos..self.pending_pos + n]);
            self.pending_pos += n;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn refill(&mut self) -> Result<()> {
        let (what, offset, len) = (&self.what, self.offset, self.len);
        ensure!(
            self.got < len,
            "reading past the {len} bytes downloaded at {offset} from volume '{what}'"
        );
        self.pending.resize(IO_CHUNK, 0);
        let n = self
            .stream
            .stream()
            .recv(&mut self.pending)
            .with_context(|| {
                format!(
                    "downloading from volume '{what}' at byte {}",
                    offset + self.got
                )
            })?;
        ensure!(
            n > 0,
            "download of {len} bytes at {offset} from volume '{what}' ended after {} bytes",
            self.got
        );
        let n = n as usize;
        ensure!(
            self.got + n as u64 <= len,
            "volume '{what}' sent more than the {len} bytes asked for at {offset}"
        );
        self.pending.truncate(n);
        self.pending_pos = 0;
        self.got += n as u64;
        Ok(())
    }

    /// Check that the whole range arrived and close the stream.
    pub fn finish(self) -> Result<u64> {
        // The end of the stream is a zero-length message after the last data.
        let mut probe = [0u8; 1];
        let n = self
            .stream
            .stream()
            .recv(&mut probe)
            .with_context(|| format!("finishing the download from volume '{}'", self.what))?;
        ensure!(
            n == 0 && self.got == self.len && self.pending_pos == self.pending.len(),
            "download of {} bytes at {} from volume '{}' did not end where expected",
            self.len,
            self.offset,
            self.what
        );
        let what = self.what.clone();
        self.stream
            .finish()
            .with_context(|| format!("finishing the download from volume '{what}'"))?;
        Ok(self.got)
    }
}

/// Read `len` bytes at `offset` of `vol` into `sink` through one download stream (downloads
/// start no pool refresh). Returns the number of bytes written, which is always `len`.
pub fn download(vol: &Vol, offset: u64, len: u64, sink: &mut dyn Write) -> Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let mut dl = Download::open(vol, offset, len)?;
    let mut buf = vec![0u8; IO_CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = buf.len().min((len - done) as usize);
        dl.read_exact(&mut buf[..n])?;
        sink.write_all(&buf[..n]).with_context(|| {
            format!("writing bytes downloaded from volume '{}'", vol.describe())
        })?;
        done += n as u64;
    }
    dl.finish()
}

/// Fill `buf` with the bytes at `offset` of `vol`.
pub fn download_into(vol: &Vol, offset: u64, buf: &mut [u8]) -> Result<()> {
    let mut cursor = io::Cursor::new(buf);
    let len = cursor.get_ref().len() as u64;
    download(vol, offset, len, &mut cursor)?;
    Ok(())
}

/// Whether `data` is all zero bytes. ORs 256-byte pieces together without a branch inside a
/// piece, which the compiler vectorises.
/// Measured against an early-exit compare: doc/measured.md (the base upload's sizes).
pub fn is_zero(data: &[u8]) -> bool {
    let mut pieces = data.chunks_exact(256);
    for piece in pieces.by_ref() {
        let acc = piece.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
        });
        if acc != 0 {
            return false;
        }
    }
    pieces.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::{is_zero, PageAligned};

    #[test]
    fn the_read_buffer_starts_on_a_page() {
        for len in [1, 4096, 256 << 10] {
            let mut b = PageAligned::new(len);
            let buf = b.get();
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % 4096, 0);
        }
    }

    #[test]
    fn is_zero_sees_a_single_set_byte_anywhere() {
        let mut v = vec![0u8; 4096 + 7];
        assert!(is_zero(&v));
        for i in [0, 7, 8, 15, 16, 255, 256, 4095, 4096, 4102] {
            v[i] = 1;
            assert!(!is_zero(&v), "byte {i}");
            v[i] = 0;
        }
        assert!(is_zero(&[]));
    }
}
