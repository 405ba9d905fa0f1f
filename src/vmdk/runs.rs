//! The format-independent view of a snapshot chain: changed pieces of the virtual disk and where their bytes come from.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::error::show;

/// Positional reads of a file's bytes: a file on this host, or one read over ssh.
pub trait ReadAt: Send + Sync + std::fmt::Debug {
    /// Fill `buf` with the bytes at `offset`; fewer bytes than asked is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// The file of this host, when it is one (to look for its holes).
    fn local(&self) -> Option<&File> {
        None
    }
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn local(&self) -> Option<&File> {
        Some(self)
    }
}

/// An open file that holds grain data, with the path it was opened from (for messages).
#[derive(Debug)]
pub struct DataFile {
    pub path: PathBuf,
    pub file: Box<dyn ReadAt>,
}

impl DataFile {
    /// A file of this host.
    pub fn local(path: PathBuf, file: File) -> DataFile {
        DataFile {
            path,
            file: Box::new(file),
        }
    }
}

/// Where bytes of the virtual disk come from: the one answer every format gives (with
/// `Option<Source>`, `None` meaning "the parent's bytes", where a layer has a parent).
#[derive(Debug, Clone)]
pub enum Source {
    /// The piece reads as zeros (zero grain, unmapped grain, ZERO extent): it hides the parent.
    Zeros,
    /// The piece's bytes are `len` bytes at `offset` in `file`.
    Data { file: Arc<DataFile>, offset: u64 },
}

/// A changed piece of the virtual disk: `len` bytes at virtual byte `offset`, with one source.
///
/// Pieces come in ascending offset order and never overlap. Adjacent pieces whose sources are
/// contiguous (or both zeros) are merged into one.
#[derive(Debug, Clone)]
pub struct Piece {
    pub offset: u64,
    pub len: u64,
    pub source: Source,
}

impl Piece {
    /// The virtual byte just past this piece.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// This piece cut `rel` bytes in (`0 < rel < len`): the part before and the part from
    /// there on.
    pub fn split_at(self, rel: u64) -> (Piece, Piece) {
        debug_assert!(0 < rel && rel < self.len);
        let tail = Piece {
            offset: self.offset + rel,
            len: self.len - rel,
            source: self.source.skip(rel),
        };
        (Piece { len: rel, ..self }, tail)
    }

    /// Fill `buf` with this piece's bytes starting `rel` bytes into the piece.
    /// `rel + buf.len()` must not exceed `len`.
    pub fn read_at(&self, rel: u64, buf: &mut [u8]) -> io::Result<()> {
        debug_assert!(rel + buf.len() as u64 <= self.len);
        self.source.read_at(rel, buf)
    }
}

impl Source {
    /// The same source `n` bytes further on.
    pub fn skip(&self, n: u64) -> Source {
        match self {
            Source::Zeros => Source::Zeros,
            Source::Data { file, offset } => Source::Data {
                file: file.clone(),
                offset: offset + n,
            },
        }
    }

    /// Fill `buf` with the bytes `rel` bytes into this source.
    pub fn read_at(&self, rel: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Zeros => {
                buf.fill(0);
                Ok(())
            }
            Source::Data { file, offset } => {
                file.file.read_exact_at(buf, offset + rel).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{}: reading {} bytes at {}: {e}",
                            show(&file.path),
                            buf.len(),
                            offset + rel
                        ),
                    )
                })
            }
        }
    }
}
