//! A qcow2 image holding a chain's changed pieces over a raw backing file, produced front to back as one stream (clusters or extended-L2 subclusters the size of the grains).
//!
//! Why this geometry: every byte outside the changed runs must stay in the backing file, so
//! the image's allocation unit must divide the runs' offsets and lengths (VMware grains: 512
//! bytes for COWD, 4 KiB for SEsparse, 64 KiB for hosted sparse, merged into runs). When
//! that unit is 4 KiB or more, clusters of that size (up to 64 KiB) with plain L2 entries:
//! the data clusters are the runs' bytes back to back, nothing else. Below 4 KiB (COWD's
//! 512-byte grains), extended L2 entries: a 16 KiB cluster has 32 subclusters of 512 bytes,
//! each data, zero (a zero grain hides the base) or unallocated (read from the backing file);
//! the unallocated subclusters of a data cluster are holes in the stream. 512-byte clusters
//! would map the same, but their L1 table grows by 1 MiB per 4 GiB of disk and QEMU's 32 MiB
//! L1 limit caps them at 128 GiB; 16 KiB clusters map 1 TiB with a 512 KiB L1 table. Either
//! way the stream carries the changed data plus its tables.
//!
//! Layout: header cluster (header, backing-format extension, backing file name), L1 table,
//! refcount table, refcount blocks, L2 tables, data clusters in virtual order; every cluster
//! has refcount 1, every table entry the COPIED flag.

use std::collections::VecDeque;
use std::io::{self, Read};

use crate::image_read::{Extent, ImageRead};
use crate::vmdk::{Chain, Piece, Source};

const COPIED: u64 = 1 << 63;
/// An L2 entry's "reads as zeros" flag (standard L2 entries).
const ZERO_FLAG: u64 = 1;
/// The largest cluster used: more would only add bytes around small runs.
const MAX_CLUSTER: u64 = 64 << 10;
const SECTOR: u64 = 512;

/// Cluster size and L2 entry kind of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub cluster_bits: u32,
    /// Extended L2 entries: 32 subclusters per cluster.
    pub extended: bool,
}

impl Geometry {
    /// The geometry for changed runs whose offsets and lengths are multiples of `align`
    /// (a power of two, at least 512): clusters of `align` bytes (at most 64 KiB) with plain
    /// entries when it is 4 KiB or more, so the data clusters are the runs' bytes back to
    /// back; below that, extended L2 entries with `align`-byte subclusters (clusters of 32
    /// times that: 16 KiB for 512-byte grains), since smaller clusters limit the disk size.
    pub fn for_alignment(align: u64) -> Geometry {
        let align = align.clamp(SECTOR, MAX_CLUSTER);
        if align >= 4096 {
            Geometry {
                cluster_bits: align.trailing_zeros(),
                extended: false,
            }
        } else {
            Geometry {
                cluster_bits: (align * 32).trailing_zeros(),
                extended: true,
            }
        }
    }

    pub fn cluster(self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per allocation unit (subcluster, or the whole cluster).
    pub fn sub(self) -> u64 {
        self.cluster() / u64::from(self.subs())
    }

    fn subs(self) -> u32 {
        if self.extended {
            32
        } else {
            1
        }
    }

    fn l2_entry_bytes(self) -> u64 {
        if self.extended {
            16
        } else {
            8
        }
    }

    fn l2_entries(self) -> u64 {
        self.cluster() / self.l2_entry_bytes()
    }

    fn refcounts_per_block(self) -> u64 {
        self.cluster() / 2
    }
}
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const HEADER_BYTES: usize = 104;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// QEMU refuses backing file names longer than this.
const MAX_BACKING_NAME: usize = 1023;
/// QEMU refuses an L1 table larger than this.
const MAX_L1_BYTES: u64 = 32 << 20;

/// One cluster of the virtual disk that the chain touches.
#[derive(Debug)]
struct Cluster {
    geo: Geometry,
    index: u64,
    /// Subclusters holding data (bit n: bytes n*512..(n+1)*512 of the cluster).
    alloc: u32,
    /// Subclusters that read as zeros.
    zero: u32,
    /// The data pieces inside the cluster.
    parts: Vec<Piece>,
}

impl Cluster {
    fn add(&mut self, p: Piece) {
        let first = (p.offset - self.index * self.geo.cluster()) / self.geo.sub();
        let n = p.len / self.geo.sub();
        let mask = (((1u64 << n) - 1) << first) as u32;
        match p.source {
            Source::Zeros => self.zero |= mask,
            Source::Data { .. } => {
                self.alloc |= mask;
                self.parts.push(p);
            }
        }
    }
}

/// The chain's pieces regrouped by cluster, in virtual order.
struct ClusterWalk<I> {
    geo: Geometry,
    pieces: I,
    pending: Option<Piece>,
}

fn misaligned(p: &Piece, unit: u64) -> io::Error {
    io::Error::other(format!(
        "a changed run at byte {} of {} bytes is not a whole number of {unit}-byte units",
        p.offset, p.len
    ))
}

impl<I: Iterator<Item = Result<Piece, crate::vmdk::Error>>> ClusterWalk<I> {
    fn pull(&mut self) -> Option<io::Result<Piece>> {
        if let Some(p) = self.pending.take() {
            return Some(Ok(p));
        }
        let p = self.pieces.next()?;
        let sub = self.geo.sub();
        Some(
            p.map_err(|e| io::Error::other(format!("{e:#}")))
                .and_then(|p| {
                    if p.offset % sub != 0 || p.len % sub != 0 {
                        Err(misaligned(&p, sub))
                    } else {
                        Ok(p)
                    }
                }),
        )
    }
}

impl<I: Iterator<Item = Result<Piece, crate::vmdk::Error>>> Iterator for ClusterWalk<I> {
    type Item = io::Result<Cluster>;

    fn next(&mut self) -> Option<io::Result<Cluster>> {
        let mut p = match self.pull()? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let index = p.offset / self.geo.cluster();
        let end = (index + 1) * self.geo.cluster();
        let mut c = Cluster {
            geo: self.geo,
            index,
            alloc: 0,
            zero: 0,
            parts: Vec::new(),
        };
        loop {
            if p.end() > end {
                let rel = end - p.offset;
                let (head, tail) = p.split_at(rel);
                c.add(head);
                self.pending = Some(tail);
                break;
            }
            c.add(p);
            match self.pull() {
                None => break,
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(n)) if n.offset >= end => {
                    self.pending = Some(n);
                    break;
                }
                Some(Ok(n)) => p = n,
            }
        }
        Some(Ok(c))
    }
}

fn walk(chain: &Chain, geo: Geometry) -> ClusterWalk<crate::vmdk::Pieces<'_>> {
    ClusterWalk {
        geo,
        pieces: chain.pieces(),
        pending: None,
    }
}

/// Where everything goes in the image (offsets in bytes, counts in clusters).
#[derive(Debug, Clone)]
pub struct Layout {
    pub geometry: Geometry,
    pub capacity: u64,
    l1_entries: u64,
    l1_offset: u64,
    rt_offset: u64,
    rt_clusters: u64,
    rb_offset: u64,
    rb_count: u64,
    l2_offset: u64,
    /// The L2 tables present, by index (virtual offset / 16 MiB), ascending.
    l2_tables: Vec<u64>,
    data_offset: u64,
    pub data_clusters: u64,
    total_clusters: u64,
}

impl Layout {
    /// The image's length in bytes.
    pub fn len(&self) -> u64 {
        self.total_clusters * self.geometry.cluster()
    }

    /// Bytes of tables (everything but the data clusters).
    pub fn table_bytes(&self) -> u64 {
        self.data_offset
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The largest power of two (at most 64 KiB) dividing every changed run's offset and length.
fn alignment(chain: &Chain) -> io::Result<u64> {
    let mut bits = MAX_CLUSTER;
    for p in chain.pieces() {
        crate::interrupt::check().map_err(|e| io::Error::other(format!("{e:#}")))?;
        let p = p.map_err(|e| io::Error::other(format!("{e:#}")))?;
        bits |= p.offset | p.len;
    }
    Ok(1 << bits.trailing_zeros())
}

/// Read the chain's pieces (twice: their alignment, then their clusters) and place the
/// image's parts.
pub fn layout(chain: &Chain) -> io::Result<Layout> {
    let geo = Geometry::for_alignment(alignment(chain)?);
    let capacity = chain.capacity();
    let cluster = geo.cluster();
    let l1_entries = capacity.div_ceil(geo.l2_entries() * cluster);
    if l1_entries * 8 > MAX_L1_BYTES {
        return Err(io::Error::other(format!(
            "a disk of {capacity} bytes is too large for a qcow2 overlay with {cluster}-byte clusters"
        )));
    }
    let mut l2_tables: Vec<u64> = Vec::new();
    let mut data_clusters = 0u64;
    for c in walk(chain, geo) {
        crate::interrupt::check().map_err(|e| io::Error::other(format!("{e:#}")))?;
        let c = c?;
        if c.alloc != 0 {
            data_clusters += 1;
        }
        let l2 = c.index / geo.l2_entries();
        if l2_tables.last() != Some(&l2) {
            l2_tables.push(l2);
        }
    }
    let l1_clusters = (l1_entries * 8).div_ceil(cluster).max(1);
    let fixed = 1 + l1_clusters + l2_tables.len() as u64 + data_clusters;
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let total = fixed + rt + rb;
        let nrb = total.div_ceil(geo.refcounts_per_block());
        let nrt = (nrb * 8).div_ceil(cluster);
        if (nrt, nrb) == (rt, rb) {
            break;
        }
        (rt, rb) = (nrt, nrb);
    }
    let l1_offset = cluster;
    let rt_offset = l1_offset + l1_clusters * cluster;
    let rb_offset = rt_offset + rt * cluster;
    let l2_offset = rb_offset + rb * cluster;
    let data_offset = l2_offset + l2_tables.len() as u64 * cluster;
    Ok(Layout {
        geometry: geo,
        capacity,
        l1_entries,
        l1_offset,
        rt_offset,
        rt_clusters: rt,
        rb_offset,
        rb_count: rb,
        l2_offset,
        l2_tables,
        data_offset,
        data_clusters,
        total_clusters: fixed + rt + rb,
    })
}

/// The header cluster: qcow2 version 3 header, the backing format extension ("raw"), the
/// end of extensions, then the backing file's name.
fn header(l: &Layout, backing: &str) -> io::Result<Vec<u8>> {
    if backing.is_empty() || backing.len() > MAX_BACKING_NAME {
        return Err(io::Error::other(format!(
            "backing file name '{backing}': must be 1 to {MAX_BACKING_NAME} bytes"
        )));
    }
    let cluster = l.geometry.cluster();
    if (HEADER_BYTES + 24 + backing.len()) as u64 > cluster {
        return Err(io::Error::other(format!(
            "backing file name '{backing}' does not fit in a {cluster}-byte header cluster"
        )));
    }
    let mut h = Vec::with_capacity(cluster as usize);
    let backing_offset = (HEADER_BYTES + 16 + 8) as u64;
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(&backing_offset.to_be_bytes());
    h.extend_from_slice(&(backing.len() as u32).to_be_bytes());
    h.extend_from_slice(&l.geometry.cluster_bits.to_be_bytes());
    h.extend_from_slice(&l.capacity.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l.l1_entries as u32).to_be_bytes());
    h.extend_from_slice(&l.l1_offset.to_be_bytes());
    h.extend_from_slice(&l.rt_offset.to_be_bytes());
    h.extend_from_slice(&(l.rt_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes());
    let incompat = if l.geometry.extended {
        INCOMPAT_EXTENDED_L2
    } else {
        0
    };
    h.extend_from_slice(&incompat.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit refcounts
    h.extend_from_slice(&(HEADER_BYTES as u32).to_be_bytes());
    debug_assert_eq!(h.len(), HEADER_BYTES);
    h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(b"raw\0\0\0\0\0");
    h.extend_from_slice(&[0u8; 8]); // end of extensions
    h.extend_from_slice(backing.as_bytes());
    h.resize(cluster as usize, 0);
    Ok(h)
}

fn put(buf: &mut [u8], index: u64, value: u64) {
    let at = index as usize * 8;
    buf[at..at + 8].copy_from_slice(&value.to_be_bytes());
}

/// What the stream holds next.
enum Chunk {
    Bytes(Vec<u8>, usize),
    Zeros(u64),
}

/// Where the producer stands.
enum Part {
    Header,
    L1,
    RefcountTable,
    RefcountBlock(u64),
    L2Table(usize),
    Data,
    Done,
}

/// The image as an [`ImageRead`]: read front to back, its unallocated subclusters and
/// unused table space reported as zeros (holes in a sparse upload).
pub struct Overlay<'c> {
    chain: &'c Chain,
    layout: Layout,
    backing: String,
    phase: Part,
    queue: VecDeque<Chunk>,
    clusters: ClusterWalk<crate::vmdk::Pieces<'c>>,
    /// The next cluster of the walk, read ahead while L2 tables are made.
    ahead: Option<Cluster>,
    data_rank: u64,
    produced: u64,
}

impl<'c> Overlay<'c> {
    /// The image of `chain`'s changed pieces whose backing file is `backing` (raw), with the
    /// layout [`layout`] found for the same chain.
    pub fn new(chain: &'c Chain, layout: Layout, backing: &str) -> io::Result<Overlay<'c>> {
        header(&layout, backing)?;
        let geo = layout.geometry;
        Ok(Overlay {
            chain,
            layout,
            backing: backing.to_string(),
            phase: Part::Header,
            queue: VecDeque::new(),
            clusters: walk(chain, geo),
            ahead: None,
            data_rank: 0,
            produced: 0,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Queue the next part of the image; false at the end.
    fn produce(&mut self) -> io::Result<bool> {
        let l = &self.layout;
        let cluster = l.geometry.cluster();
        match self.phase {
            Part::Header => {
                self.queue
                    .push_back(Chunk::Bytes(header(l, &self.backing)?, 0));
                self.phase = Part::L1;
            }
            Part::L1 => {
                let mut t = vec![0u8; (l.rt_offset - l.l1_offset) as usize];
                for (k, i) in l.l2_tables.iter().enumerate() {
                    put(&mut t, *i, (l.l2_offset + k as u64 * cluster) | COPIED);
                }
                self.queue.push_back(Chunk::Bytes(t, 0));
                self.phase = Part::RefcountTable;
            }
            Part::RefcountTable => {
                let mut t = vec![0u8; (l.rt_clusters * cluster) as usize];
                for b in 0..l.rb_count {
                    put(&mut t, b, l.rb_offset + b * cluster);
                }
                self.queue.push_back(Chunk::Bytes(t, 0));
                self.phase = Part::RefcountBlock(0);
            }
            Part::RefcountBlock(b) => {
                let per_block = l.geometry.refcounts_per_block();
                let used = l
                    .total_clusters
                    .saturating_sub(b * per_block)
                    .min(per_block);
                let mut t = vec![0u8; cluster as usize];
                for k in 0..used as usize {
                    t[2 * k + 1] = 1;
                }
                self.queue.push_back(Chunk::Bytes(t, 0));
                self.phase = if b + 1 < l.rb_count {
                    Part::RefcountBlock(b + 1)
                } else {
                    Part::L2Table(0)
                };
            }
            Part::L2Table(k) if k < l.l2_tables.len() => {
                let t = self.l2_table(l.l2_tables[k])?;
                self.queue.push_back(Chunk::Bytes(t, 0));
                self.phase = Part::L2Table(k + 1);
            }
            Part::L2Table(_) => {
                // The data pass walks the pieces again from the start.
                self.ahead = None;
                let geo = l.geometry;
                self.clusters = walk(self.chain, geo);
                self.phase = Part::Data;
                return Ok(true);
            }
            Part::Data => return self.data_cluster(),
            Part::Done => return Ok(false),
        }
        Ok(true)
    }

    /// L2 table `index` (of the virtual bytes from index x cluster x entries per table on):
    /// every cluster the walk gives there.
    fn l2_table(&mut self, index: u64) -> io::Result<Vec<u8>> {
        let geo = self.layout.geometry;
        let mut t = vec![0u8; geo.cluster() as usize];
        loop {
            let c = match self.ahead.take() {
                Some(c) => c,
                None => match self.clusters.next() {
                    Some(c) => c?,
                    None => break,
                },
            };
            if c.index / geo.l2_entries() != index {
                self.ahead = Some(c);
                break;
            }
            let slot = c.index % geo.l2_entries();
            let word0 = if c.alloc != 0 {
                let host = self.layout.data_offset + self.data_rank * geo.cluster();
                self.data_rank += 1;
                host | COPIED
            } else if geo.extended {
                0
            } else {
                ZERO_FLAG
            };
            if geo.extended {
                put(&mut t, 2 * slot, word0);
                let bitmap = (u64::from(c.zero) << 32) | u64::from(c.alloc);
                put(&mut t, 2 * slot + 1, bitmap);
            } else {
                put(&mut t, slot, word0);
            }
        }
        Ok(t)
    }

    /// Queue the next data cluster: its allocated subclusters as bytes, the rest as zeros.
    fn data_cluster(&mut self) -> io::Result<bool> {
        let c = loop {
            match self.clusters.next() {
                None => {
                    self.phase = Part::Done;
                    return Ok(false);
                }
                Some(c) => {
                    let c = c?;
                    if c.alloc != 0 {
                        break c;
                    }
                }
            }
        };
        let geo = self.layout.geometry;
        let base = c.index * geo.cluster();
        let mut buf = vec![0u8; geo.cluster() as usize];
        for p in &c.parts {
            let at = (p.offset - base) as usize;
            p.read_at(0, &mut buf[at..at + p.len as usize])?;
        }
        let mut sc = 0u32;
        let subs = geo.subs();
        while sc < subs {
            let on = c.alloc >> sc & 1 == 1;
            let mut end = sc + 1;
            while end < subs && (c.alloc >> end & 1 == 1) == on {
                end += 1;
            }
            let (a, b) = (
                (u64::from(sc) * geo.sub()) as usize,
                (u64::from(end) * geo.sub()) as usize,
            );
            self.queue.push_back(if on {
                Chunk::Bytes(buf[a..b].to_vec(), 0)
            } else {
                Chunk::Zeros((b - a) as u64)
            });
            sc = end;
        }
        Ok(true)
    }

    /// Make sure a chunk is queued; false at the end of the image.
    fn fill(&mut self) -> io::Result<bool> {
        while self.queue.is_empty() {
            if !self.produce()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }
}

impl Read for Overlay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || !self.fill()? {
            return Ok(0);
        }
        let n = match self.queue.front_mut().expect("filled") {
            Chunk::Bytes(b, pos) => {
                let n = buf.len().min(b.len() - *pos);
                buf[..n].copy_from_slice(&b[*pos..*pos + n]);
                *pos += n;
                if *pos == b.len() {
                    self.queue.pop_front();
                }
                n
            }
            Chunk::Zeros(z) => {
                let n = (buf.len() as u64).min(*z) as usize;
                buf[..n].fill(0);
                *z -= n as u64;
                if *z == 0 {
                    self.queue.pop_front();
                }
                n
            }
        };
        self.produced += n as u64;
        Ok(n)
    }
}

impl ImageRead for Overlay<'_> {
    fn next_extent(&mut self, max: u64) -> io::Result<Extent> {
        let max = max.max(1);
        if !self.fill()? {
            return Ok(Extent::Data(max));
        }
        Ok(match self.queue.front_mut().expect("filled") {
            Chunk::Bytes(b, pos) => Extent::Data(((b.len() - *pos) as u64).min(max)),
            Chunk::Zeros(z) => {
                let n = (*z).min(max);
                *z -= n;
                if *z == 0 {
                    self.queue.pop_front();
                }
                self.produced += n;
                Extent::Zeros(n)
            }
        })
    }
}

/// Write the overlay image of `chain` (backing file `backing`, raw) to `path`, zeros as holes;
/// returns its layout. For tests and for looking at an overlay with `qemu-img`.
pub fn write_file(chain: &Chain, backing: &str, path: &std::path::Path) -> io::Result<Layout> {
    use std::io::{Seek, SeekFrom, Write};
    let l = layout(chain)?;
    let mut img = Overlay::new(chain, l.clone(), backing)?;
    let mut out = std::fs::File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match img.next_extent(1 << 30)? {
            Extent::Zeros(n) => {
                out.seek(SeekFrom::Current(n as i64))?;
            }
            Extent::Data(n) => {
                let want = (n as usize).min(buf.len());
                let got = img.read(&mut buf[..want])?;
                if got == 0 {
                    break;
                }
                out.write_all(&buf[..got])?;
            }
        }
    }
    out.set_len(l.len())?;
    out.sync_all()?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros(offset: u64, len: u64) -> Piece {
        Piece {
            offset,
            len,
            source: Source::Zeros,
        }
    }

    const EXT16K: Geometry = Geometry {
        cluster_bits: 14,
        extended: true,
    };

    #[test]
    fn the_geometry_follows_the_runs_alignment() {
        assert_eq!(Geometry::for_alignment(512), EXT16K);
        assert_eq!(Geometry::for_alignment(2048).cluster(), 64 << 10);
        let plain4k = Geometry::for_alignment(4096);
        assert_eq!((plain4k.cluster(), plain4k.extended), (4096, false));
        assert_eq!(Geometry::for_alignment(1 << 20).cluster(), 64 << 10);
    }

    #[test]
    fn a_piece_across_clusters_is_split_into_subcluster_masks() {
        const CLUSTER: u64 = 1 << 14;
        let pieces: Vec<Result<Piece, crate::vmdk::Error>> =
            vec![Ok(zeros(CLUSTER - 1024, 2048)), Ok(zeros(3 * CLUSTER, 512))];
        let w = ClusterWalk {
            geo: EXT16K,
            pieces: pieces.into_iter(),
            pending: None,
        };
        let got: Vec<_> = w.map(|c| c.unwrap()).map(|c| (c.index, c.zero)).collect();
        assert_eq!(got, [(0, 0b11 << 30), (1, 0b11), (3, 1)]);
    }

    #[test]
    fn a_piece_not_in_whole_sectors_is_refused() {
        let pieces: Vec<Result<Piece, crate::vmdk::Error>> = vec![Ok(zeros(100, 512))];
        let mut w = ClusterWalk {
            geo: EXT16K,
            pieces: pieces.into_iter(),
            pending: None,
        };
        let e = w.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("byte 100"), "{e}");
    }
}
