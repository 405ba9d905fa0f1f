//! The base disk under a chain: a descriptor with FLAT/VMFS/ZERO (or hosted sparse) extents,
//! a bare flat file, or a monolithicSparse file, read front to back.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chain::{sniff_kind, OpenOptions, Sniffed};
use super::descriptor::{Descriptor, ExtentKind};
use super::error::{show, Error};
use super::flat::{self, FlatSource};
use super::grains::{Cursor, GrainMap};
use super::hosted;
use super::names;
use super::runs::Source;
use crate::image_read::{file_extent, Extent, ImageRead};

#[derive(Debug)]
enum Segment {
    Flat(FlatSource),
    Sparse(Arc<GrainMap>),
}

/// A base disk, ready to be read whole.
#[derive(Debug)]
pub struct BaseImage {
    pub path: PathBuf,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// CID from the descriptor; None for a bare flat file.
    pub cid: Option<u32>,
    pub create_type: Option<String>,
    /// (virtual start, length, segment), in order.
    segments: Arc<Vec<(u64, u64, Segment)>>,
}

impl BaseImage {
    /// Open a base descriptor (vmfs, monolithicFlat, twoGbMaxExtentFlat/Sparse), a
    /// monolithicSparse file, or a bare flat file (capacity = its size).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<BaseImage, Error> {
        match sniff_kind(path)? {
            Sniffed::Cowd | Sniffed::SeSparse => {
                Err(Error::invalid(path, "a delta extent, not a base disk"))
            }
            Sniffed::Hosted => {
                let (map, d) = hosted::open(names::open_data(path, false)?)?;
                if let Some(pc) = d.as_ref().and_then(|d| d.parent_cid) {
                    return Err(Error::invalid(
                        path,
                        format!("a snapshot child (parentCID {pc:08x}), not a base disk"),
                    ));
                }
                Ok(BaseImage {
                    path: path.to_path_buf(),
                    capacity: map.capacity,
                    cid: d.as_ref().and_then(|d| d.cid),
                    create_type: d.and_then(|d| d.create_type),
                    segments: Arc::new(vec![(0, map.capacity, Segment::Sparse(Arc::new(map)))]),
                })
            }
            Sniffed::Descriptor => Self::from_descriptor(Descriptor::read(path)?, opts),
            Sniffed::Other => {
                let file = names::open_data(path, false)?;
                let capacity = file
                    .file
                    .metadata()
                    .map_err(|e| Error::io(path, "reading file size", e))?
                    .len();
                Ok(BaseImage {
                    path: path.to_path_buf(),
                    capacity,
                    cid: None,
                    create_type: None,
                    segments: Arc::new(vec![(
                        0,
                        capacity,
                        Segment::Flat(FlatSource::Data { file, offset: 0 }),
                    )]),
                })
            }
        }
    }

    fn from_descriptor(d: Descriptor, opts: &OpenOptions) -> Result<BaseImage, Error> {
        if let Some(pc) = d.parent_cid {
            return Err(Error::invalid(
                &d.path,
                format!("a snapshot child (parentCID {pc:08x}), not a base disk"),
            ));
        }
        if d.extents.is_empty() {
            return Err(Error::invalid(&d.path, "descriptor lists no extents"));
        }
        let mut segments = Vec::new();
        let mut start = 0u64;
        for e in &d.extents {
            let at = |msg: String| Error::Descriptor {
                path: d.path.clone(),
                line: e.line,
                msg,
            };
            let len = e
                .sectors
                .checked_mul(512)
                .ok_or_else(|| at("extent size overflows".into()))?;
            let seg = match e.kind {
                ExtentKind::Flat | ExtentKind::Vmfs | ExtentKind::Zero => {
                    Segment::Flat(flat::open(&d, e, len, opts.allow_outside_paths)?)
                }
                ExtentKind::Sparse => {
                    let name = e.file.as_deref().unwrap_or_default();
                    let p = names::resolve(&d.folder(), name, &d.path, opts.allow_outside_paths)?;
                    let (map, _) = hosted::open(names::open_data(&p, !opts.allow_outside_paths)?)?;
                    if map.capacity != len {
                        return Err(at(format!(
                            "extent {:?} holds {} bytes but the line says {len}",
                            show(Path::new(name)),
                            map.capacity
                        )));
                    }
                    Segment::Sparse(Arc::new(map))
                }
                _ => {
                    return Err(at(format!(
                        "unsupported extent type {} for a base disk",
                        e.kind.name()
                    )))
                }
            };
            segments.push((start, len, seg));
            start = start
                .checked_add(len)
                .ok_or_else(|| at("capacity overflows".into()))?;
        }
        Ok(BaseImage {
            path: d.path.clone(),
            capacity: start,
            cid: d.cid,
            create_type: d.create_type.clone(),
            segments: Arc::new(segments),
        })
    }

    /// The whole virtual disk, front to back (zeros for ZERO extents and unallocated grains).
    /// Its [`ImageRead::next_extent`] skips ZERO extents, unallocated and zero grains and the
    /// holes of flat extent files without reading them.
    pub fn reader(&self) -> io::Result<Box<dyn ImageRead + Send>> {
        Ok(Box::new(BaseReader {
            segments: self.segments.clone(),
            index: 0,
            pos: 0,
            cursor: None,
        }))
    }
}

struct BaseReader {
    segments: Arc<Vec<(u64, u64, Segment)>>,
    index: usize,
    /// Virtual position.
    pos: u64,
    /// Cursor over the current sparse segment.
    cursor: Option<Cursor>,
}

impl ImageRead for BaseReader {
    fn next_extent(&mut self, max: u64) -> io::Result<Extent> {
        let max = max.max(1);
        let segments = self.segments.clone();
        // Skip the segments behind the position, as `read` does.
        let (start, len, seg) = loop {
            let Some((start, len, seg)) = segments.get(self.index) else {
                // The end: `read` says so.
                return Ok(Extent::Data(max));
            };
            if self.pos - start < *len {
                break (*start, *len, seg);
            }
            self.index += 1;
            self.cursor = None;
        };
        let rel = self.pos - start;
        // Never past this segment: the next one answers for itself.
        let max = max.min(len - rel);
        let ext = match seg {
            Segment::Flat(FlatSource::Zeros) => Extent::Zeros(max),
            Segment::Flat(FlatSource::Data { file, offset }) => {
                file_extent(&file.file, offset + rel, max).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{}: looking for holes at byte {}: {e}",
                            show(&file.path),
                            offset + rel
                        ),
                    )
                })?
            }
            Segment::Sparse(map) => {
                let cursor = self.cursor.get_or_insert_with(|| Cursor::new(map.clone()));
                let span = cursor.lookup(rel).map_err(io::Error::other)?;
                let n = max.min(span.len);
                match span.source {
                    None | Some(Source::Zeros) => Extent::Zeros(n),
                    Some(Source::Data { .. }) => Extent::Data(n),
                }
            }
        };
        if let Extent::Zeros(n) = ext {
            self.pos += n;
        }
        Ok(ext)
    }
}

impl Read for BaseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let segments = self.segments.clone();
        loop {
            let Some((start, len, seg)) = segments.get(self.index) else {
                return Ok(0);
            };
            let rel = self.pos - start;
            if rel >= *len || buf.is_empty() {
                if buf.is_empty() {
                    return Ok(0);
                }
                self.index += 1;
                self.cursor = None;
                continue;
            }
            let max = (buf.len() as u64).min(len - rel);
            let (n, source) = match seg {
                Segment::Flat(FlatSource::Zeros) => (max, Source::Zeros),
                Segment::Flat(FlatSource::Data { file, offset }) => (
                    max,
                    Source::Data {
                        file: file.clone(),
                        offset: offset + rel,
                    },
                ),
                Segment::Sparse(map) => {
                    let cursor = self.cursor.get_or_insert_with(|| Cursor::new(map.clone()));
                    let span = cursor.lookup(rel).map_err(io::Error::other)?;
                    (max.min(span.len), span.source.unwrap_or(Source::Zeros))
                }
            };
            let out = &mut buf[..n as usize];
            match source {
                Source::Zeros => out.fill(0),
                Source::Data { file, offset } => {
                    file.file.read_exact_at(out, offset).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("{}: reading at byte {offset}: {e}", show(&file.path)),
                        )
                    })?
                }
            }
            self.pos += n;
            return Ok(n as usize);
        }
    }
}
