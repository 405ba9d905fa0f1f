//! Hosted sparse (KDMV) extents: monolithicSparse disks and Workstation/Fusion snapshots,
//! uncompressed only.

use std::path::Path;
use std::sync::Arc;

use super::descriptor::{Descriptor, MAX_DESCRIPTOR_BYTES};
use super::error::{self, Error};
use super::grains::{Format, GrainMap};
use super::header::{header, Header};
use super::runs::DataFile;

/// `KDMV` read as a little-endian u32.
pub const KDMV_MAGIC: u32 = 0x564d_444b;
/// Versions QEMU reads.
pub const KDMV_VERSIONS: std::ops::RangeInclusive<u32> = 1..=3;
/// Header size in bytes.
pub const KDMV_HEADER_BYTES: usize = 512;
/// Flag: grain-table entry 1 means a zeroed grain.
const FLAG_ZEROED_GRAIN: u32 = 1 << 2;
/// Flags of the streamOptimized export format: compressed grains and markers.
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// gdOffset meaning "the directory is in a footer" (streamOptimized).
const GD_AT_END: u64 = u64::MAX;
/// Largest grain table: VMware writes 512 entries, and QEMU refuses more.
const MAX_GT_ENTRIES: u64 = 512;

header! {
    /// The KDMV header at byte 0: the fields this tool reads (the redundant directory and
    /// the newline check bytes change nothing read).
    struct KdmvHeader(KDMV_HEADER_BYTES, "hosted sparse") {
        magic: u32 = 0,
        version: u32 = 4,
        flags: u32 = 8,
        /// Capacity in sectors.
        capacity: u64 = 12,
        /// Sectors per grain, a power of two.
        grain_sectors: u64 = 20,
        /// Sector and length in sectors of the embedded descriptor (0: none).
        descriptor_sector: u64 = 28,
        descriptor_sectors: u64 = 36,
        gt_entries: u32 = 44,
        /// Sector of the grain directory, or [`GD_AT_END`].
        gd_sector: u64 = 56,
        /// Sector where the grains start.
        overhead: u64 = 64,
        unclean_shutdown: u8 = 72,
        /// 1 is deflate; QEMU then inflates every grain.
        compress_algorithm: u16 = 77,
    }
}

/// Open a KDMV extent: its grain map and, if present, its embedded descriptor.
pub(crate) fn open(file: Arc<DataFile>) -> Result<(GrainMap, Option<Descriptor>), Error> {
    let p = file.path.clone();
    let (h, file_len) = KdmvHeader::read(&file)?;
    check(&h, &p)?;
    let capacity = error::mul(&p, "capacity", h.capacity, 512)?;
    let overhead = error::mul(&p, "grain offset", h.overhead, 512)?;
    if overhead > file_len {
        return Err(Error::invalid(
            &p,
            format!(
                "truncated: {file_len} bytes, but the header says grains start at byte {overhead}"
            ),
        ));
    }
    let grain_bytes = error::mul(&p, "grain size", h.grain_sectors, 512)?;
    let gt_entries = h.gt_entries as u64;
    let span = error::mul(&p, "grain table span", grain_bytes, gt_entries)?;
    let map = GrainMap {
        file_len,
        capacity,
        grain_bytes,
        gt_entries,
        gd_offset: error::mul(&p, "grain directory offset", h.gd_sector, 512)?,
        // The header does not store the directory's length: it is what the capacity needs.
        gd_entries: capacity.div_ceil(span),
        entry_bytes: 4,
        format: Format::Hosted {
            zeroed_grain: h.flags & FLAG_ZEROED_GRAIN != 0,
        },
        file,
    };
    map.check()?;
    let descriptor = embedded_descriptor(&map, &h)?;
    Ok((map, descriptor))
}

/// Refuse what this tool does not read (other versions, compressed grains) and a dirty or
/// nonsensical header, before anything is computed from it.
fn check(h: &KdmvHeader, p: &Path) -> Result<(), Error> {
    if h.magic != KDMV_MAGIC {
        return Err(Error::invalid(
            p,
            "wrong magic: not a hosted sparse (KDMV) file",
        ));
    }
    if !KDMV_VERSIONS.contains(&h.version) {
        return Err(Error::unsupported(
            p,
            format!("hosted sparse version {}", h.version),
        ));
    }
    if h.flags & (FLAG_COMPRESSED | FLAG_MARKERS) != 0 || h.gd_sector == GD_AT_END {
        return Err(Error::unsupported(
            p,
            "compressed grains (streamOptimized): convert it with qemu-img first",
        ));
    }
    if h.compress_algorithm != 0 {
        return Err(Error::unsupported(
            p,
            format!("hosted sparse compressAlgorithm {} (compressed grains): convert it with qemu-img first", h.compress_algorithm),
        ));
    }
    if h.unclean_shutdown != 0 {
        return Err(Error::invalid(
            p,
            "hosted sparse uncleanShutdown is set: the disk is still open or was not closed cleanly",
        ));
    }
    if !h.grain_sectors.is_power_of_two() {
        return Err(Error::invalid(
            p,
            format!(
                "grain size {} sectors is not a power of two",
                h.grain_sectors
            ),
        ));
    }
    let gt_entries = h.gt_entries as u64;
    if gt_entries == 0 || gt_entries > MAX_GT_ENTRIES {
        return Err(Error::invalid(
            p,
            format!("{gt_entries} entries per grain table is outside 1..={MAX_GT_ENTRIES}"),
        ));
    }
    Ok(())
}

/// The descriptor embedded in the file, if the header places one.
fn embedded_descriptor(map: &GrainMap, h: &KdmvHeader) -> Result<Option<Descriptor>, Error> {
    let p = map.path();
    if h.descriptor_sector == 0 || h.descriptor_sectors == 0 {
        return Ok(None);
    }
    let off = error::mul(p, "descriptor offset", h.descriptor_sector, 512)?;
    let len = error::mul(p, "descriptor size", h.descriptor_sectors, 512)?;
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(Error::invalid(
            p,
            format!("embedded descriptor of {len} bytes exceeds {MAX_DESCRIPTOR_BYTES}"),
        ));
    }
    if error::add(p, "descriptor end", off, len)? > map.file_len {
        return Err(Error::invalid(
            p,
            "truncated: embedded descriptor past the end of the file",
        ));
    }
    let mut text = vec![0u8; len as usize];
    map.file
        .file
        .read_exact_at(&mut text, off)
        .map_err(|e| Error::io(p, "reading embedded descriptor", e))?;
    let d = Descriptor::parse(&text, p)?;
    check_embedded_capacity(&d, map.capacity)?;
    Ok(Some(d))
}

/// The embedded descriptor's extents must add up to the header's capacity: QEMU reads the
/// header's and ignores the lines, other readers the reverse, so a file where they differ
/// has no single meaning.
fn check_embedded_capacity(d: &Descriptor, capacity: u64) -> Result<(), Error> {
    let listed = d.capacity()?;
    if listed != capacity {
        return Err(Error::invalid(
            &d.path,
            format!(
                "hosted sparse header capacity of {capacity} bytes differs from its embedded descriptor's extents ({listed} bytes)"
            ),
        ));
    }
    Ok(())
}
