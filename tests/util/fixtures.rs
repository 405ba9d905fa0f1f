//! Writers for COWD, SEsparse and hosted sparse (KDMV) files and descriptors, built from the
//! layouts in FORMATS.md; shared by the tests and `examples/mkdelta.rs`. Std only.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const SECTOR: u64 = 512;

/// What a grain of a delta holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Data, filled by the caller's fill function.
    Data,
    /// Zero grain (COWD entry 1, SEsparse type 2, KDMV zeroed grain).
    Zero,
    /// SEsparse unmapped grain (type 1); written as Zero elsewhere.
    Unmapped,
}

/// Grains in the order they are stored in the file: (grain index, kind).
pub type Grains = [(u64, Kind)];

/// Deterministic grain contents: every 8-byte word names the seed, grain and word.
pub fn pattern(seed: u64) -> impl FnMut(u64, &mut [u8]) {
    move |grain, buf| {
        for (i, chunk) in buf.chunks_mut(8).enumerate() {
            let v = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(grain.wrapping_mul(0x1000_0001))
                .wrapping_add(i as u64)
                | 1;
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Patterned data with zero stretches (every 5th 64 KiB block), never a whole zero disk.
pub fn patterned(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut fill = pattern(seed);
    for (i, block) in data.chunks_mut(64 * 1024).enumerate() {
        if i % 5 != 2 {
            fill(i as u64, block);
        }
    }
    data
}

fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Grain data written in order at rising offsets, gathered into chunks of up to 1 MiB so a
/// file of small grains costs few writes.
struct Gather<'a> {
    f: &'a File,
    at: u64,
    buf: Vec<u8>,
}

impl<'a> Gather<'a> {
    fn new(f: &'a File) -> Self {
        Gather {
            f,
            at: 0,
            buf: Vec::new(),
        }
    }
    fn write(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if offset != self.at + self.buf.len() as u64 || self.buf.len() >= 1 << 20 {
            self.flush()?;
            self.at = offset;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.f.write_all_at(&self.buf, self.at)?;
        self.at += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Tables touched by `grains`, numbered in order of first appearance.
fn tables(grains: &Grains, span: u64) -> (HashMap<u64, u64>, Vec<u64>) {
    let mut index = HashMap::new();
    let mut order = Vec::new();
    for (g, _) in grains {
        let t = g / span;
        if let std::collections::hash_map::Entry::Vacant(v) = index.entry(t) {
            v.insert(order.len() as u64);
            order.push(t);
        }
    }
    (index, order)
}

/// Options for corrupting COWD headers in tests.
#[derive(Debug, Clone, Default)]
pub struct CowdOptions {
    pub unclean_shutdown: bool,
}

/// Write a COWD extent of `capacity_sectors` with `grain_sectors`-sector grains.
/// Grain data is stored in the order of `grains`; tables in order of first use.
pub fn write_cowd(
    path: &Path,
    capacity_sectors: u64,
    grain_sectors: u64,
    grains: &Grains,
    fill: &mut dyn FnMut(u64, &mut [u8]),
    opts: &CowdOptions,
) -> io::Result<()> {
    const GT_ENTRIES: u64 = 4096;
    let f = create(path)?;
    let gd_entries = capacity_sectors.div_ceil(GT_ENTRIES * grain_sectors);
    let gd_sector = 4;
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let (tindex, order) = tables(grains, GT_ENTRIES);
    let gt_first = gd_sector + gd_sectors;
    let gt_sectors = GT_ENTRIES * 4 / SECTOR;
    let mut next = gt_first + order.len() as u64 * gt_sectors;
    // Directory entries are written one by one: a 2 TiB directory stays a sparse hole.
    for (t, i) in &tindex {
        let v = (gt_first + i * gt_sectors) as u32;
        f.write_all_at(&v.to_le_bytes(), gd_sector * SECTOR + t * 4)?;
    }
    let mut gts = vec![0u8; (order.len() as u64 * GT_ENTRIES * 4) as usize];
    let mut buf = vec![0u8; (grain_sectors * SECTOR) as usize];
    let mut out = Gather::new(&f);
    for &(g, kind) in grains {
        let slot = (tindex[&(g / GT_ENTRIES)] * GT_ENTRIES + g % GT_ENTRIES) as usize;
        let v = match kind {
            Kind::Data => {
                fill(g, &mut buf);
                out.write(&buf, next * SECTOR)?;
                next += grain_sectors;
                next - grain_sectors
            }
            Kind::Zero | Kind::Unmapped => 1,
        };
        put32(&mut gts, slot * 4, v as u32);
    }
    out.flush()?;
    f.write_all_at(&gts, gt_first * SECTOR)?;
    let mut h = vec![0u8; 2048];
    h[0..4].copy_from_slice(b"COWD");
    put32(&mut h, 4, 1);
    put32(&mut h, 8, 3);
    put32(&mut h, 12, capacity_sectors as u32);
    put32(&mut h, 16, grain_sectors as u32);
    put32(&mut h, 20, gd_sector as u32);
    put32(&mut h, 24, gd_entries as u32);
    put32(&mut h, 28, next as u32);
    put32(&mut h, 1648, opts.unclean_shutdown as u32);
    f.write_all_at(&h, 0)?;
    f.set_len(next * SECTOR)?;
    Ok(())
}

/// Options for SEsparse fixtures.
#[derive(Debug, Clone, Default)]
pub struct SeSparseOptions {
    /// Clusters left unused before the first data cluster (pushes indices above 4095).
    pub cluster_base: u64,
    pub replay_journal: bool,
}

/// Sector of the SEsparse grain directory in files from [`write_sesparse`].
pub const SESPARSE_GD_SECTOR: u64 = 4;

/// Write an SEsparse extent (4 KiB grains, 4096-entry tables).
pub fn write_sesparse(
    path: &Path,
    capacity_sectors: u64,
    grains: &Grains,
    fill: &mut dyn FnMut(u64, &mut [u8]),
    opts: &SeSparseOptions,
) -> io::Result<()> {
    const GT_ENTRIES: u64 = 4096;
    const GRAIN: u64 = 8;
    let f = create(path)?;
    let capacity_grains = capacity_sectors.div_ceil(GRAIN);
    let gd_entries = capacity_grains.div_ceil(GT_ENTRIES);
    let gd_sectors = (gd_entries * 8).div_ceil(SECTOR).max(1);
    let (tindex, order) = tables(grains, GT_ENTRIES);
    let gt_off = SESPARSE_GD_SECTOR + gd_sectors;
    let gt_sectors = GT_ENTRIES * 8 / SECTOR;
    let gt_size = (order.len() as u64 * gt_sectors).max(gt_sectors);
    let bitmap_off = gt_off + gt_size;
    let backmap_off = bitmap_off + 1;
    let grains_off = backmap_off + 1;
    for (t, i) in &tindex {
        let v = 0x1000_0000_0000_0000u64 | i;
        f.write_all_at(&v.to_le_bytes(), SESPARSE_GD_SECTOR * SECTOR + t * 8)?;
    }
    let mut gts = vec![0u8; (gt_size * SECTOR) as usize];
    let mut buf = vec![0u8; (GRAIN * SECTOR) as usize];
    let mut cluster = opts.cluster_base;
    let mut out = Gather::new(&f);
    for &(g, kind) in grains {
        let slot = (tindex[&(g / GT_ENTRIES)] * GT_ENTRIES + g % GT_ENTRIES) as usize;
        let v = match kind {
            Kind::Data => {
                fill(g, &mut buf);
                out.write(&buf, (grains_off + cluster * GRAIN) * SECTOR)?;
                let v = (3u64 << 60) | ((cluster & 0xfff) << 48) | (cluster >> 12);
                cluster += 1;
                v
            }
            Kind::Zero => 2u64 << 60,
            Kind::Unmapped => 1u64 << 60,
        };
        put64(&mut gts, slot * 8, v);
    }
    out.flush()?;
    let grains_size = cluster.max(1) * GRAIN;
    f.write_all_at(&gts, gt_off * SECTOR)?;
    let mut h = vec![0u8; 512];
    let fields: [u64; 26] = [
        0xcafe_babe,
        0x0000_0002_0000_0001,
        capacity_sectors,
        GRAIN,
        64,
        0,
        0,
        0,
        0,
        0,
        1, // volatile header
        1,
        2, // journal header
        1,
        3, // journal
        1,
        SESPARSE_GD_SECTOR,
        gd_sectors,
        gt_off,
        gt_size,
        bitmap_off,
        1,
        backmap_off,
        1,
        grains_off,
        grains_size,
    ];
    for (i, v) in fields.iter().enumerate() {
        put64(&mut h, i * 8, *v);
    }
    f.write_all_at(&h, 0)?;
    let mut vh = vec![0u8; 512];
    put64(&mut vh, 0, 0xcafe_cafe);
    put64(&mut vh, 8, order.len() as u64);
    put64(&mut vh, 16, 1);
    put64(&mut vh, 24, opts.replay_journal as u64);
    f.write_all_at(&vh, SECTOR)?;
    f.set_len((grains_off + grains_size) * SECTOR)?;
    Ok(())
}

/// Options for hosted sparse fixtures.
#[derive(Debug, Clone)]
pub struct HostedOptions {
    pub grain_sectors: u64,
    pub zeroed_grain: bool,
    /// Embedded descriptor text (None: no descriptor, as in twoGbMaxExtentSparse extents).
    pub descriptor: Option<String>,
    pub compressed_flag: bool,
}

/// Write a hosted sparse (KDMV) extent with 512-entry tables.
pub fn write_hosted(
    path: &Path,
    capacity_sectors: u64,
    grains: &Grains,
    fill: &mut dyn FnMut(u64, &mut [u8]),
    opts: &HostedOptions,
) -> io::Result<()> {
    const GT_ENTRIES: u64 = 512;
    const DESC_SECTORS: u64 = 20;
    let f = create(path)?;
    let g = opts.grain_sectors;
    let gd_entries = capacity_sectors.div_ceil(GT_ENTRIES * g);
    let gd_off = 1 + DESC_SECTORS;
    let gd_sectors = (gd_entries * 4).div_ceil(SECTOR);
    let (tindex, order) = tables(grains, GT_ENTRIES);
    let gt_first = gd_off + gd_sectors;
    let gt_sectors = GT_ENTRIES * 4 / SECTOR;
    let overhead = gt_first + order.len() as u64 * gt_sectors;
    let mut next = overhead;
    let mut gd = vec![0u8; (gd_sectors * SECTOR) as usize];
    for (t, i) in &tindex {
        put32(&mut gd, *t as usize * 4, (gt_first + i * gt_sectors) as u32);
    }
    let mut gts = vec![0u8; (order.len() as u64 * GT_ENTRIES * 4) as usize];
    let mut buf = vec![0u8; (g * SECTOR) as usize];
    for &(gi, kind) in grains {
        let slot = (tindex[&(gi / GT_ENTRIES)] * GT_ENTRIES + gi % GT_ENTRIES) as usize;
        let v = match kind {
            Kind::Data => {
                fill(gi, &mut buf);
                f.write_all_at(&buf, next * SECTOR)?;
                next += g;
                next - g
            }
            Kind::Zero | Kind::Unmapped => {
                assert!(opts.zeroed_grain, "zero grains need zeroed_grain");
                1
            }
        };
        put32(&mut gts, slot * 4, v as u32);
    }
    f.write_all_at(&gd, gd_off * SECTOR)?;
    f.write_all_at(&gts, gt_first * SECTOR)?;
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    put32(&mut h, 4, if opts.zeroed_grain { 2 } else { 1 });
    let flags =
        1 | if opts.zeroed_grain { 4 } else { 0 } | if opts.compressed_flag { 1 << 16 } else { 0 };
    put32(&mut h, 8, flags);
    put64(&mut h, 12, capacity_sectors);
    put64(&mut h, 20, g);
    if let Some(d) = &opts.descriptor {
        assert!(d.len() as u64 <= DESC_SECTORS * SECTOR);
        put64(&mut h, 28, 1);
        put64(&mut h, 36, DESC_SECTORS);
        f.write_all_at(d.as_bytes(), SECTOR)?;
    }
    put32(&mut h, 44, GT_ENTRIES as u32);
    put64(&mut h, 56, gd_off);
    put64(&mut h, 64, overhead);
    h[73..77].copy_from_slice(b"\n \r\n");
    f.write_all_at(&h, 0)?;
    f.set_len(next * SECTOR)?;
    Ok(())
}

/// A text descriptor. `parent` is (parentCID, parentFileNameHint); `extents` are whole lines.
pub fn descriptor(
    cid: u32,
    parent: Option<(u32, &str)>,
    create_type: &str,
    extents: &[String],
) -> String {
    let mut s = String::from("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\n");
    s += &format!("CID={cid:08x}\n");
    match parent {
        Some((pcid, hint)) => {
            s += &format!("parentCID={pcid:08x}\nisNativeSnapshot=\"no\"\ncreateType=\"{create_type}\"\nparentFileNameHint=\"{hint}\"\n")
        }
        None => s += &format!("parentCID=ffffffff\nisNativeSnapshot=\"no\"\ncreateType=\"{create_type}\"\n"),
    }
    s += "\n# Extent description\n";
    for e in extents {
        s += e;
        s += "\n";
    }
    s += "\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"14\"\nddb.adapterType = \"lsilogic\"\n";
    s
}

/// Read the CID of a descriptor written by [`descriptor`] (or any descriptor: first `CID=` line).
pub fn read_cid(path: &Path) -> io::Result<u32> {
    let text = std::fs::read(path)?;
    let text = String::from_utf8_lossy(&text[..text.len().min(64 * 1024)]);
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("CID=").or_else(|| l.strip_prefix("cid=")) {
            return u32::from_str_radix(v.trim().trim_matches('"'), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no CID line"))
}

/// xorshift64*: deterministic for a seed, no extra crates (the examples' random offsets).
pub struct XorShift(pub u64);

impl XorShift {
    /// A number below `n`.
    #[allow(dead_code)]
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
