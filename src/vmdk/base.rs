//! The base disk under a chain: a descriptor with FLAT/VMFS/ZERO (or hosted sparse) extents,
//! a bare flat file, or a monolithicSparse file, read front to back.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::descriptor::Descriptor;
use super::error::{show, Error};
use super::extents::{self, Extents, Role, Walk};
use super::hosted;
use super::links::DiskId;
use super::names::{self, OpenOptions};
use super::runs::Source;
use super::sniff::{sniff_kind, Sniffed};
use crate::image_read::{file_extent, Extent, ImageRead};

/// A base disk, ready to be read whole.
#[derive(Debug)]
pub struct BaseImage {
    pub path: PathBuf,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// CID from the descriptor; None for a bare flat file.
    pub cid: Option<u32>,
    pub create_type: Option<String>,
    extents: Extents,
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
                    return Err(not_a_base(path, pc));
                }
                Ok(BaseImage {
                    path: path.to_path_buf(),
                    capacity: map.capacity,
                    cid: d.as_ref().and_then(|d| d.cid),
                    create_type: d.and_then(|d| d.create_type),
                    extents: Extents::one(map.capacity, extents::Extent::Sparse(Arc::new(map))),
                })
            }
            Sniffed::Descriptor => Self::from_descriptor(Descriptor::read(path)?, opts),
            Sniffed::Other => {
                let file = names::open_data(path, false)?;
                let capacity = file
                    .file
                    .size()
                    .map_err(|e| Error::io(path, "reading file size", e))?;
                let whole = Source::Data { file, offset: 0 };
                Ok(BaseImage {
                    path: path.to_path_buf(),
                    capacity,
                    cid: None,
                    create_type: None,
                    extents: Extents::one(capacity, extents::Extent::Flat(whole)),
                })
            }
        }
    }

    fn from_descriptor(d: Descriptor, opts: &OpenOptions) -> Result<BaseImage, Error> {
        if let Some(pc) = d.parent_cid {
            return Err(not_a_base(&d.path, pc));
        }
        let outside = opts.allow_outside_paths;
        let (extents, _) = Extents::open(&d, Role::Base, &mut |d: &Descriptor, name: &str| {
            names::open_named(d, name, outside)
        })?;
        Ok(BaseImage {
            path: d.path.clone(),
            capacity: extents.capacity(),
            cid: d.cid,
            create_type: d.create_type.clone(),
            extents,
        })
    }

    /// What the base is known by: its CID and capacity.
    pub fn id(&self) -> DiskId {
        DiskId {
            cid: self.cid,
            capacity: self.capacity,
        }
    }

    /// Fill `buf` with the virtual disk's bytes at `offset`: random access, for refilling the
    /// gaps between a delta's runs in stage 2.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.capacity) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: reading {} bytes at {offset}, past the disk's end",
                    show(&self.path),
                    buf.len()
                ),
            ));
        }
        let mut reader = BaseReader::new(self, offset);
        reader.read_exact(buf)
    }

    /// The whole virtual disk, front to back (zeros for ZERO extents and unallocated grains).
    /// Its [`ImageRead::next_extent`] skips ZERO extents, unallocated and zero grains and the
    /// holes of flat extent files without reading them.
    pub fn reader(&self) -> io::Result<Box<dyn ImageRead + Send>> {
        Ok(Box::new(BaseReader::new(self, 0)))
    }
}

fn not_a_base(path: &Path, parent_cid: u32) -> Error {
    Error::invalid(
        path,
        format!("a snapshot child (parentCID {parent_cid:08x}), not a base disk"),
    )
}

struct BaseReader {
    walk: Walk,
    capacity: u64,
    /// Virtual position.
    pos: u64,
}

impl BaseReader {
    fn new(base: &BaseImage, pos: u64) -> BaseReader {
        BaseReader {
            walk: base.extents.walk(),
            capacity: base.extents.capacity(),
            pos,
        }
    }
}

impl ImageRead for BaseReader {
    fn next_extent(&mut self, max: u64) -> io::Result<Extent> {
        let max = max.max(1);
        if self.pos >= self.capacity {
            // The end: `read` says so.
            return Ok(Extent::Data(max));
        }
        let span = self.walk.lookup(self.pos).map_err(io::Error::other)?;
        // Never past this extent: the next one answers for itself.
        let n = max.min(span.len);
        let ext = match span.source {
            // Under a base, "the parent" of an unallocated grain is zeros.
            None | Some(Source::Zeros) => Extent::Zeros(n),
            Some(Source::Data { file, offset }) => match file.file.local() {
                Some(local) if self.walk.in_flat() => {
                    file_extent(local, offset, n).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "{}: looking for holes at byte {offset}: {e}",
                                show(&file.path)
                            ),
                        )
                    })?
                }
                _ => Extent::Data(n),
            },
        };
        if let Extent::Zeros(n) = ext {
            self.pos += n;
        }
        Ok(ext)
    }
}

impl Read for BaseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.capacity {
            return Ok(0);
        }
        let span = self.walk.lookup(self.pos).map_err(io::Error::other)?;
        let n = (buf.len() as u64).min(span.len);
        let source = span.source.unwrap_or(Source::Zeros);
        source.read_at(0, &mut buf[..n as usize])?;
        self.pos += n;
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    const MIB: u64 = 1 << 20;

    fn sparse_file(path: &Path, len: u64, data: &[(u64, u64)]) {
        let f = File::create(path).unwrap();
        f.set_len(len).unwrap();
        for &(at, n) in data {
            f.write_all_at(&vec![0xa7u8; n as usize], at).unwrap();
        }
    }

    /// Whether this file system keeps holes (else only the generic checks apply).
    fn holes_here(dir: &Path) -> bool {
        let p = dir.join("probe");
        sparse_file(&p, 2 * MIB, &[(MIB, 4096)]);
        let f = File::open(&p).unwrap();
        let data = nix::unistd::lseek(f.as_fd(), 0, nix::unistd::Whence::SeekData);
        matches!(data, Ok(d) if d > 0)
    }

    /// Answers of `next_extent` at their virtual offsets.
    type Seen = Vec<(u64, Extent)>;

    /// Walk `r` as `upload_image` does: (the answers, the bytes).
    fn walk(r: &mut dyn ImageRead, max: u64) -> io::Result<(Seen, Vec<u8>)> {
        let mut seen = Vec::new();
        let mut bytes = Vec::new();
        loop {
            let at = bytes.len() as u64;
            let ext = r.next_extent(max)?;
            seen.push((at, ext));
            match ext {
                Extent::Zeros(n) => bytes.resize((at + n) as usize, 0),
                Extent::Data(n) => {
                    let mut buf = vec![0u8; n.min(8 * MIB) as usize];
                    let k = r.read(&mut buf)?;
                    if k == 0 {
                        return Ok((seen, bytes));
                    }
                    bytes.extend_from_slice(&buf[..k]);
                }
            }
        }
    }

    /// FLAT a (4 MiB, data crossing the segment's end in the file) | ZERO 2 MiB | FLAT b at
    /// 1 MiB of its file (2 MiB: hole, data, a hole to the file's end) | FLAT c (1 MiB, all
    /// hole).
    fn image(dir: &Path) -> BaseImage {
        sparse_file(
            &dir.join("a.raw"),
            5 * MIB,
            &[(MIB, 8192), (7 * MIB / 2, MIB)],
        );
        sparse_file(&dir.join("b.raw"), 3 * MIB, &[(3 * MIB / 2, MIB / 2)]);
        sparse_file(&dir.join("c.raw"), MIB, &[]);
        let desc = "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\n\
                    createType=\"monolithicFlat\"\n\
                    RW 8192 FLAT \"a.raw\" 0\nRW 4096 ZERO\nRW 4096 FLAT \"b.raw\" 2048\n\
                    RW 2048 FLAT \"c.raw\" 0\n";
        std::fs::write(dir.join("d.vmdk"), desc).unwrap();
        BaseImage::open(&dir.join("d.vmdk"), &OpenOptions::default()).unwrap()
    }

    #[test]
    fn known_zeros_stop_at_segment_boundaries_and_match_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let base = image(dir.path());
        assert_eq!(base.capacity, 9 * MIB);
        let mut plain = Vec::new();
        base.reader().unwrap().read_to_end(&mut plain).unwrap();
        let (seen, bytes) = walk(&mut base.reader().unwrap(), u64::MAX).unwrap();
        assert!(bytes == plain, "skipping changed the bytes");
        // No answer crosses a segment boundary.
        let bounds = [4 * MIB, 6 * MIB, 8 * MIB];
        for &(at, ext) in &seen {
            let (Extent::Zeros(n) | Extent::Data(n)) = ext;
            if at < base.capacity {
                for b in bounds {
                    assert!(!(at < b && at + n > b), "{ext:?} at {at} crosses {b}");
                }
            }
        }
        // Known zeros never cover data.
        for &(at, ext) in &seen {
            if let Extent::Zeros(n) = ext {
                assert!(plain[at as usize..(at + n) as usize]
                    .iter()
                    .all(|&b| b == 0));
            }
        }
        let zeros_at = |at: u64| {
            seen.iter()
                .find(|&&(a, _)| a == at)
                .map(|&(_, e)| e)
                .unwrap_or_else(|| panic!("no answer at {at}: {seen:?}"))
        };
        // The ZERO extent, whole, whatever the file systems.
        assert_eq!(zeros_at(4 * MIB), Extent::Zeros(2 * MIB));
        if !holes_here(dir.path()) {
            eprintln!("no holes on this file system: file hole checks skipped");
            return;
        }
        assert_eq!(zeros_at(0), Extent::Zeros(MIB));
        // a's data runs on past the segment: the answer stops at its end.
        let (at, ext) = *seen
            .iter()
            .find(|&&(a, e)| a >= 2 * MIB && matches!(e, Extent::Data(_)))
            .unwrap();
        assert_eq!(at, 7 * MIB / 2);
        assert_eq!(ext, Extent::Data(MIB / 2));
        // b: its hole, its data, then a hole to the end of its file (SEEK_DATA says ENXIO).
        assert_eq!(zeros_at(6 * MIB), Extent::Zeros(MIB / 2));
        assert_eq!(zeros_at(13 * MIB / 2), Extent::Data(MIB / 2));
        assert_eq!(zeros_at(7 * MIB), Extent::Zeros(MIB));
        // c: all hole.
        assert_eq!(zeros_at(8 * MIB), Extent::Zeros(MIB));
        let skipped: u64 = seen
            .iter()
            .map(|&(_, e)| match e {
                Extent::Zeros(n) => n,
                Extent::Data(_) => 0,
            })
            .sum();
        assert!(skipped >= 7 * MIB, "skipped {skipped}");
        // `max` bounds the answer.
        let mut r = base.reader().unwrap();
        assert_eq!(r.next_extent(100).unwrap(), Extent::Zeros(100));
        let mut b = [1u8; 10];
        r.read_exact(&mut b).unwrap();
        assert_eq!(b, [0; 10]);
    }

    #[test]
    fn a_flat_file_cut_short_after_opening_still_fails_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let base = image(dir.path());
        // c.raw (the last MiB) loses its second half after the base was opened.
        File::options()
            .write(true)
            .open(dir.path().join("c.raw"))
            .unwrap()
            .set_len(MIB / 2)
            .unwrap();
        let err = walk(&mut base.reader().unwrap(), u64::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        // Plain reading fails the same way.
        let mut plain = Vec::new();
        let err = base.reader().unwrap().read_to_end(&mut plain).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
