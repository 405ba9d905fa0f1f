//! Delta files on the ESXi host: their tables read through a page cache of ranged `dd` reads, their grains in one sequential pass written straight into the volume.

use anyhow::{anyhow, ensure, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::ssh::{quote, Ssh};
use super::transfer::{self, Range};
use crate::progress::Transfer;
use crate::vmdk::{DataFile, Piece, Source};

/// Bytes of one cached page of a remote file (and the `bs` of the `dd` reading it).
const PAGE: u64 = 256 << 10;
/// Pages one `dd` reads at a miss: the tables of a delta lie together, so reading ahead
/// turns a table walk into a few commands.
const READ_AHEAD_PAGES: u64 = 16;
/// Pages kept; past this the cache starts over (tables are read front to back once).
const MAX_PAGES: usize = 256;
/// Bytes per chunk of the sequential pass, and chunks queued between reader and writer.
const CHUNK: usize = 1 << 20;
const QUEUE: usize = 8;

/// A file on the ESXi host, read at any offset through ranged `dd` commands.
pub struct RemoteFile {
    ssh: Arc<Ssh>,
    path: String,
    len: u64,
    pages: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl std::fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteFile({}:{})", self.ssh.url().host, self.path)
    }
}

impl RemoteFile {
    /// The file `path`: its length (`stat`) and its first pages (where every format keeps
    /// its header and tables) in one command.
    pub fn open(ssh: Arc<Ssh>, path: &str) -> Result<RemoteFile> {
        let what = format!("{}:{path}", ssh.url().host);
        let q = quote(path);
        let cmd = format!("stat -c %s {q} && dd if={q} bs={PAGE} count={READ_AHEAD_PAGES}");
        let out = ssh.read_bytes(&cmd, &what)?;
        let nl = out
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("{what}: `{cmd}` gave no size line"))?;
        let text = String::from_utf8_lossy(&out[..nl]);
        let len: u64 = text
            .trim()
            .parse()
            .map_err(|_| anyhow!("{what}: `stat -c %s` answered {text:?}, not a size"))?;
        let head = &out[nl + 1..];
        ensure!(
            head.len() as u64 == len.min(READ_AHEAD_PAGES * PAGE),
            "{what}: `{cmd}` gave {} bytes of a {len}-byte file: the file changed while it was read",
            head.len()
        );
        let pages = head
            .chunks(PAGE as usize)
            .enumerate()
            .map(|(i, c)| (i as u64, Arc::new(c.to_vec())))
            .collect();
        Ok(RemoteFile {
            ssh,
            path: path.to_string(),
            len,
            pages: Mutex::new(pages),
        })
    }

    /// The file as grain data for the chain reader; `shown` names it in messages.
    pub fn into_data_file(self, shown: &str) -> Arc<DataFile> {
        Arc::new(DataFile {
            path: shown.into(),
            file: Box::new(self),
        })
    }

    /// Pages `first..first + n` from the host, each `PAGE` bytes but the file's last.
    fn fetch(&self, first: u64, n: u64) -> io::Result<Vec<Arc<Vec<u8>>>> {
        let what = format!("{}:{}", self.ssh.url().host, self.path);
        let cmd = format!(
            "dd if={} bs={PAGE} skip={first} count={n}",
            quote(&self.path)
        );
        let bytes = self
            .ssh
            .read_bytes(&cmd, &what)
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        let want = (self.len - first * PAGE).min(n * PAGE);
        if bytes.len() as u64 != want {
            return Err(io::Error::other(format!(
                "{what}: `{cmd}` gave {} bytes, expected {want}: the file changed while it was read",
                bytes.len()
            )));
        }
        Ok(bytes
            .chunks(PAGE as usize)
            .map(|c| Arc::new(c.to_vec()))
            .collect())
    }

    /// Page `index`, from the cache or read with the ones after it.
    fn page(&self, index: u64) -> io::Result<Arc<Vec<u8>>> {
        if let Some(p) = self
            .pages
            .lock()
            .expect("no panic holding pages")
            .get(&index)
        {
            return Ok(p.clone());
        }
        let last = self.len.div_ceil(PAGE);
        let n = READ_AHEAD_PAGES.min(last - index);
        let fetched = self.fetch(index, n)?;
        let mut pages = self.pages.lock().expect("no panic holding pages");
        if pages.len() + fetched.len() > MAX_PAGES {
            pages.clear();
        }
        for (i, p) in fetched.iter().enumerate() {
            pages.insert(index + i as u64, p.clone());
        }
        Ok(fetched[0].clone())
    }
}

impl crate::vmdk::ReadAt for RemoteFile {
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("reading past the end of {} ({} bytes)", self.path, self.len),
            ));
        }
        while !buf.is_empty() {
            let page = self.page(offset / PAGE)?;
            let at = (offset % PAGE) as usize;
            let n = buf.len().min(page.len() - at);
            buf[..n].copy_from_slice(&page[at..at + n]);
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len)
    }
}

/// What one sequential pass moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassReport {
    /// Bytes read over ssh (the grains, and what lies between them).
    pub read: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub secs: f64,
}

/// One delta's pieces, ready for [`write_in_file_order`]: the zero pieces, and the data
/// pieces sorted by where their bytes lie in the delta file.
#[derive(Debug, Default)]
pub struct FileOrder {
    zeros: Vec<Piece>,
    data: Vec<Piece>,
}

impl FileOrder {
    pub fn new(pieces: Vec<Piece>) -> FileOrder {
        let (zeros, mut data): (Vec<Piece>, Vec<Piece>) = pieces
            .into_iter()
            .partition(|p| matches!(p.source, Source::Zeros));
        data.sort_by_key(source_offset);
        FileOrder { zeros, data }
    }

    /// Where the last grain ends in the delta file (0 without grains).
    pub fn end(&self) -> u64 {
        self.data.last().map_or(0, |p| source_offset(p) + p.len)
    }
}

/// Write one delta's pieces into `target` at their virtual offsets, its grains read in one
/// `dd` from `path` in file order (the first grain's block to the last grain's end), while a
/// second thread keeps the transfer going. Zero pieces are written without a read. The
/// read's progress is shown as `label`.
pub fn write_in_file_order(
    via: &transfer::Transfer,
    path: &str,
    order: &FileOrder,
    target: &File,
    shown_target: &str,
    label: &str,
) -> Result<PassReport> {
    let started = Instant::now();
    let mut report = PassReport::default();
    let zeros = vec![0u8; CHUNK];
    for p in &order.zeros {
        write_zeros(target, p, &zeros, shown_target)?;
        report.zero_bytes += p.len;
    }
    let pieces = &order.data;
    let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
        report.secs = started.elapsed().as_secs_f64();
        return Ok(report);
    };
    let (range, end) = grain_range(first, last)?;
    let (bs, skip) = (range.bs, range.skip);
    let mut stream = via.read(path, range)?;
    let bar = Transfer::new(label, end - skip * bs);
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(QUEUE);
        let bar = &bar;
        let reader = scope.spawn(move || -> io::Result<()> {
            let mut left = range.len;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                let r = stream.read_exact(&mut buf).map(|_| buf);
                bar.add(CHUNK.min(left as usize) as u64);
                let failed = r.is_err();
                left -= if failed {
                    left
                } else {
                    CHUNK.min(left as usize) as u64
                };
                if tx.send(r).is_err() || failed {
                    return Ok(());
                }
            }
            // The range's end: nothing more, and the read succeeded.
            stream.read(&mut [0u8; 1]).map(drop)
        });
        let mut feed = Feed {
            rx,
            chunk: Vec::new(),
            at: 0,
            pos: skip * bs,
        };
        let written = write_pieces(&mut feed, pieces, target, shown_target);
        drop(feed);
        let ended = reader
            .join()
            .map_err(|_| anyhow!("the reading thread panicked"))?;
        report.data_bytes = written?;
        ended?;
        report.read = end - skip * bs;
        Ok(())
    })
    .with_context(|| {
        format!(
            "{}:{path}: reading the delta's grains",
            via.ssh().url().host
        )
    })?;
    bar.finish();
    report.secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The whole blocks of the delta file from `first`'s grain to `last`'s, and where the last
/// grain ends. dd reads whole blocks: the last one stops at the file's end, which may lie
/// past the last grain's.
fn grain_range(first: &Piece, last: &Piece) -> Result<(Range, u64)> {
    let bs = CHUNK as u64;
    let skip = source_offset(first) / bs;
    let end = source_offset(last) + last.len;
    let count = end.div_ceil(bs) - skip;
    let file_len = match &last.source {
        Source::Data { file, .. } => file.file.size()?,
        Source::Zeros => end,
    };
    let len = (count * bs).min(file_len.max(end) - skip * bs);
    Ok((
        Range {
            bs,
            skip,
            count,
            len,
        },
        end,
    ))
}

fn source_offset(p: &Piece) -> u64 {
    match p.source {
        Source::Data { offset, .. } => offset,
        Source::Zeros => 0,
    }
}

fn write_zeros(target: &File, p: &Piece, zeros: &[u8], shown: &str) -> Result<()> {
    let mut done = 0u64;
    while done < p.len {
        let n = (p.len - done).min(zeros.len() as u64) as usize;
        target
            .write_all_at(&zeros[..n], p.offset + done)
            .with_context(|| format!("{shown}: writing {n} bytes at byte {}", p.offset + done))?;
        done += n as u64;
    }
    Ok(())
}

/// The pieces, in file order, each written once its bytes came through `feed`.
fn write_pieces(feed: &mut Feed, pieces: &[Piece], target: &File, shown: &str) -> Result<u64> {
    let mut bytes = 0u64;
    for p in pieces {
        crate::interrupt::check()?;
        feed.skip_to(source_offset(p))?;
        let mut done = 0u64;
        while done < p.len {
            let data = feed.take((p.len - done) as usize)?;
            target
                .write_all_at(data, p.offset + done)
                .with_context(|| format!("{shown}: writing at byte {}", p.offset + done))?;
            done += data.len() as u64;
        }
        bytes += p.len;
    }
    Ok(bytes)
}

/// The reading thread's chunks, consumed front to back.
struct Feed {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
    /// File offset of `chunk[at]`.
    pos: u64,
}

impl Feed {
    fn refill(&mut self) -> Result<()> {
        if self.at == self.chunk.len() {
            self.chunk = self
                .rx
                .recv()
                .map_err(|_| anyhow!("the transfer ended early"))??;
            self.at = 0;
        }
        Ok(())
    }

    /// Discard bytes up to file offset `to` (pieces come in file order, so it only moves on).
    fn skip_to(&mut self, to: u64) -> Result<()> {
        while self.pos < to {
            self.refill()?;
            let n = ((to - self.pos) as usize).min(self.chunk.len() - self.at);
            self.at += n;
            self.pos += n as u64;
        }
        Ok(())
    }

    /// Up to `max` bytes at the current offset.
    fn take(&mut self, max: usize) -> Result<&[u8]> {
        self.refill()?;
        let n = max.min(self.chunk.len() - self.at);
        let s = &self.chunk[self.at..self.at + n];
        self.at += n;
        self.pos += n as u64;
        Ok(s)
    }
}
