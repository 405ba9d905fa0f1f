//! Hosted sparse (KDMV) extents: monolithicSparse disks and Workstation/Fusion snapshots,
//! uncompressed only.

use std::sync::Arc;

use super::descriptor::{Descriptor, MAX_DESCRIPTOR_BYTES};
use super::error::{self, Error};
use super::grains::{Format, GrainMap};
use super::header::{le_u32, le_u64, read_start as read_header};
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
/// Offset of the u16 compressAlgorithm field (1 is deflate; QEMU then inflates every grain).
const COMPRESS_ALGORITHM_AT: usize = 77;

/// Open a KDMV extent: its grain map and, if present, its embedded descriptor.
pub(crate) fn open(file: Arc<DataFile>) -> Result<(GrainMap, Option<Descriptor>), Error> {
    let p = file.path.clone();
    let (h, file_len) = read_header::<KDMV_HEADER_BYTES>(&file, "hosted sparse")?;
    if le_u32(&h, 0) != KDMV_MAGIC {
        return Err(Error::invalid(
            &p,
            "wrong magic: not a hosted sparse (KDMV) file",
        ));
    }
    let version = le_u32(&h, 4);
    if !KDMV_VERSIONS.contains(&version) {
        return Err(Error::unsupported(
            &p,
            format!("hosted sparse version {version}"),
        ));
    }
    let flags = le_u32(&h, 8);
    let gd_offset = le_u64(&h, 56);
    if flags & (FLAG_COMPRESSED | FLAG_MARKERS) != 0 || gd_offset == GD_AT_END {
        return Err(Error::unsupported(
            &p,
            "compressed grains (streamOptimized): convert it with qemu-img first",
        ));
    }
    let algorithm = u16::from_le_bytes([h[COMPRESS_ALGORITHM_AT], h[COMPRESS_ALGORITHM_AT + 1]]);
    if algorithm != 0 {
        return Err(Error::unsupported(
            &p,
            format!("hosted sparse compressAlgorithm {algorithm} (compressed grains): convert it with qemu-img first"),
        ));
    }
    if h[72] != 0 {
        return Err(Error::invalid(
            &p,
            "hosted sparse uncleanShutdown is set: the disk is still open or was not closed cleanly",
        ));
    }
    let grain_sectors = le_u64(&h, 20);
    if !grain_sectors.is_power_of_two() {
        return Err(Error::invalid(
            &p,
            format!("grain size {grain_sectors} sectors is not a power of two"),
        ));
    }
    let gt_entries = le_u32(&h, 44) as u64;
    if gt_entries == 0 || gt_entries > MAX_GT_ENTRIES {
        return Err(Error::invalid(
            &p,
            format!("{gt_entries} entries per grain table is outside 1..={MAX_GT_ENTRIES}"),
        ));
    }
    let capacity = error::mul(&p, "capacity", le_u64(&h, 12), 512)?;
    let overhead = error::mul(&p, "grain offset", le_u64(&h, 64), 512)?;
    if overhead > file_len {
        return Err(Error::invalid(
            &p,
            format!(
                "truncated: {file_len} bytes, but the header says grains start at byte {overhead}"
            ),
        ));
    }
    let grain_bytes = error::mul(&p, "grain size", grain_sectors, 512)?;
    let span = error::mul(&p, "grain table span", grain_bytes, gt_entries)?;
    let map = GrainMap {
        file_len,
        capacity,
        grain_bytes,
        gt_entries,
        gd_offset: error::mul(&p, "grain directory offset", gd_offset, 512)?,
        // The header does not store the directory's length: it is what the capacity needs.
        gd_entries: capacity.div_ceil(span),
        entry_bytes: 4,
        format: Format::Hosted {
            zeroed_grain: flags & FLAG_ZEROED_GRAIN != 0,
        },
        file,
    };
    map.check()?;

    let (desc_off, desc_len) = (le_u64(&h, 28), le_u64(&h, 36));
    let descriptor = if desc_off == 0 || desc_len == 0 {
        None
    } else {
        let off = error::mul(&p, "descriptor offset", desc_off, 512)?;
        let len = error::mul(&p, "descriptor size", desc_len, 512)?;
        if len > MAX_DESCRIPTOR_BYTES {
            return Err(Error::invalid(
                &p,
                format!("embedded descriptor of {len} bytes exceeds {MAX_DESCRIPTOR_BYTES}"),
            ));
        }
        if error::add(&p, "descriptor end", off, len)? > file_len {
            return Err(Error::invalid(
                &p,
                "truncated: embedded descriptor past the end of the file",
            ));
        }
        let mut text = vec![0u8; len as usize];
        map.file
            .file
            .read_exact_at(&mut text, off)
            .map_err(|e| Error::io(&p, "reading embedded descriptor", e))?;
        let d = Descriptor::parse(&text, &p)?;
        check_embedded_capacity(&d, capacity)?;
        Some(d)
    };
    Ok((map, descriptor))
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
