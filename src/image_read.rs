//! Sequential image readers that can say where their holes are, so a base upload skips known
//! zeros without reading them (a hole in a sparse file, a ZERO extent, an unallocated grain).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

/// What lies at a reader's current position, as far as the reader knows without reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// The next `n` bytes (`n > 0`) read as zeros; the reader has already moved past them.
    Zeros(u64),
    /// Read the next bytes normally, at most `n` of them (`n > 0`) before asking again: after
    /// them come known zeros, or the reader knows nothing more. They can hold zeros too.
    Data(u64),
}

/// A sequential image source for `upload_image`.
pub trait ImageRead: Read {
    /// What lies at the current position, looking at most `max` (> 0) bytes ahead. The
    /// default knows nothing: `Data(max)`. An implementation must never answer `Zeros` for
    /// bytes that would not read as zeros, nor past its end (where `read` returns 0 or fails,
    /// as it does today: skipping must not hide a short or failing source).
    fn next_extent(&mut self, max: u64) -> io::Result<Extent> {
        Ok(Extent::Data(max.max(1)))
    }
}

impl ImageRead for &[u8] {}
impl ImageRead for io::Stdin {}
impl ImageRead for io::StdinLock<'_> {}
impl ImageRead for std::process::ChildStdout {}

impl<R: ImageRead + ?Sized> ImageRead for Box<R> {
    fn next_extent(&mut self, max: u64) -> io::Result<Extent> {
        (**self).next_extent(max)
    }
}

impl<R: ImageRead + ?Sized> ImageRead for &mut R {
    fn next_extent(&mut self, max: u64) -> io::Result<Extent> {
        (**self).next_extent(max)
    }
}

/// A reader read ahead by a thread of its own, a few chunks at a time, so the source (a
/// transfer over the network) keeps going while the consumer writes what came before.
pub struct ReadAhead {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    done: bool,
}

/// Bytes per chunk, and chunks queued.
const AHEAD_CHUNK: usize = 4 << 20;
const AHEAD_QUEUE: usize = 4;
/// The smallest chunk of a read-ahead that shares its memory with others.
const MIN_SHARED_CHUNK: usize = 1 << 20;

impl ReadAhead {
    pub fn new<R: Read + Send + 'static>(inner: R) -> ReadAhead {
        ReadAhead::sharing(inner, 1)
    }

    /// One of `ways` read-aheads that run side by side (the ranges of one base): each holds
    /// a `ways`-th of the bytes one alone would (chunks of at least 1 MiB), so that the
    /// memory of the whole stays about that of one.
    pub fn sharing<R: Read + Send + 'static>(mut inner: R, ways: usize) -> ReadAhead {
        let chunk = (AHEAD_CHUNK / ways.max(1)).max(MIN_SHARED_CHUNK);
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD_QUEUE);
        std::thread::spawn(move || loop {
            let mut buf = vec![0u8; chunk];
            let mut n = 0;
            let r = loop {
                match inner.read(&mut buf[n..]) {
                    Ok(0) => break Ok(()),
                    Ok(k) => {
                        n += k;
                        if n == buf.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            buf.truncate(n);
            let end = n == 0 || r.is_err();
            let sent = match r {
                Ok(()) => tx.send(Ok(buf)),
                Err(e) => tx.send(Err(e)),
            };
            if end || sent.is_err() {
                return;
            }
        });
        ReadAhead {
            rx,
            chunk: Vec::new(),
            at: 0,
            done: false,
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    self.done = c.is_empty();
                    self.chunk = c;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the reading thread stopped")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl ImageRead for ReadAhead {}

/// A regular file read from its current offset: its holes (SEEK_DATA/SEEK_HOLE) are zeros.
impl ImageRead for File {
    fn next_extent(&mut self, max: u64) -> io::Result<Extent> {
        let max = max.max(1);
        // A pipe or a socket opened as a file has no offset: nothing known, read it.
        let Ok(pos) = lseek(self.as_fd(), 0, Whence::SeekCur) else {
            return Ok(Extent::Data(max));
        };
        let pos = u64::try_from(pos).map_err(io::Error::other)?;
        let ext = file_extent(self, pos, max)?;
        // SEEK_DATA/SEEK_HOLE moved the offset: put it where the caller reads next.
        let next = match ext {
            Extent::Zeros(n) => pos + n,
            Extent::Data(_) => pos,
        };
        lseek(self.as_fd(), next as i64, Whence::SeekSet)?;
        Ok(ext)
    }
}

/// What lies at byte `pos` of `file`, at most `max` (> 0) bytes ahead, from the file system's
/// map of its holes. Moves the file's offset (callers that read with `pread` do not mind).
///
/// Only a regular file's holes before its end count as zeros: at or past the end, or on a
/// device, a pipe or a file system without SEEK_DATA, the answer is `Data(max)`, so the caller
/// reads and sees the end or the error as it would have without asking.
pub fn file_extent(file: &File, pos: u64, max: u64) -> io::Result<Extent> {
    let unknown = Ok(Extent::Data(max));
    let meta = file.metadata()?;
    if !meta.is_file() || pos >= meta.len() {
        return unknown;
    }
    let size = meta.len();
    let Ok(at) = i64::try_from(pos) else {
        return unknown;
    };
    match lseek(file.as_fd(), at, Whence::SeekData) {
        Ok(data) if (data as u64) > pos => {
            // A hole up to `data` (the file may have grown past `size` meanwhile: the hole
            // still reads as zeros).
            Ok(Extent::Zeros((data as u64 - pos).min(max)))
        }
        Ok(_) => match lseek(file.as_fd(), at, Whence::SeekHole) {
            // Data up to the next hole (the end of the file counts as one).
            Ok(hole) if (hole as u64) > pos => Ok(Extent::Data((hole as u64 - pos).min(max))),
            _ => unknown,
        },
        // No data from `pos` to the end: a hole up to the size seen above. (If the file was
        // cut shorter meanwhile, the reads past its new end would have failed; these bytes
        // were zeros when looked at, which is as good as a read that raced with the cut.)
        Err(Errno::ENXIO) => Ok(Extent::Zeros((size - pos).min(max))),
        // EINVAL, EOPNOTSUPP...: no hole map here; read everything.
        Err(_) => unknown,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_ahead_gives_every_byte_in_order_and_passes_errors_on() {
        let data: Vec<u8> = (0..(9 << 20) + 123).map(|i| (i % 251) as u8).collect();
        for ways in [1, 4, 16] {
            let mut got = Vec::new();
            ReadAhead::sharing(std::io::Cursor::new(data.clone()), ways)
                .read_to_end(&mut got)
                .unwrap();
            assert!(got == data, "{ways} ways");
        }
        struct Failing(u32);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0 += 1;
                if self.0 > 3 {
                    return Err(io::Error::other("cut off"));
                }
                buf[..1000].fill(7);
                Ok(1000)
            }
        }
        let e = ReadAhead::new(Failing(0))
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(e.to_string(), "cut off");
    }

    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::FileExt;

    /// A file with a hole, 1 MiB of data at 4 MiB, a hole up to its end at 8 MiB. `None`
    /// where the file system here keeps no holes (then there is nothing to test).
    fn holey() -> Option<(tempfile::NamedTempFile, u64)> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 << 20).unwrap();
        f.as_file().write_all_at(&[7u8; 1 << 20], 4 << 20).unwrap();
        f.flush().unwrap();
        let data = lseek(f.as_file().as_fd(), 0, Whence::SeekData).ok()? as u64;
        (data > 0).then_some((f, data))
    }

    #[test]
    fn a_file_reports_its_holes_and_data_and_keeps_its_offset_right() {
        let Some((f, first_data)) = holey() else {
            eprintln!("no holes on this file system: skipped");
            return;
        };
        assert!(first_data <= 4 << 20);
        let mut file = f.reopen().unwrap();
        let big = 1 << 40;
        assert_eq!(file.next_extent(big).unwrap(), Extent::Zeros(first_data));
        assert_eq!(file.stream_position().unwrap(), first_data);
        let Extent::Data(d) = file.next_extent(big).unwrap() else {
            panic!("data expected")
        };
        assert!(first_data + d >= 5 << 20, "data covers the written MiB");
        assert_eq!(
            file.stream_position().unwrap(),
            first_data,
            "data: offset kept"
        );
        file.seek(SeekFrom::Start(first_data + d)).unwrap();
        // The hole to the end of the file, and no further.
        assert_eq!(
            file.next_extent(big).unwrap(),
            Extent::Zeros((8 << 20) - first_data - d)
        );
        assert_eq!(file.stream_position().unwrap(), 8 << 20);
        // At the end: nothing known, the read says it is the end.
        assert_eq!(file.next_extent(big).unwrap(), Extent::Data(big));
        // `max` bounds both answers.
        file.seek(SeekFrom::Start(0)).unwrap();
        assert_eq!(file.next_extent(100).unwrap(), Extent::Zeros(100));
        assert_eq!(file.stream_position().unwrap(), 100);
    }

    #[test]
    fn a_pipe_opened_as_a_file_knows_nothing() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut r = File::from(r);
        let mut w = File::from(w);
        w.write_all(&[0u8; 10]).unwrap();
        assert_eq!(r.next_extent(1 << 30).unwrap(), Extent::Data(1 << 30));
        let mut b = [1u8; 10];
        r.read_exact(&mut b).unwrap();
        assert_eq!(b, [0; 10]);
    }

    #[test]
    fn a_slice_knows_nothing() {
        let mut s: &[u8] = &[0u8; 10];
        assert_eq!(s.next_extent(5).unwrap(), Extent::Data(5));
    }
}
