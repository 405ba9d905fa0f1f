//! SEsparse (`-sesparse.vmdk`) delta extents: VMFS6 snapshots and large VMFS5 disks.

use std::path::Path;
use std::sync::Arc;

use super::error::{self, Error};
use super::grains::{Format, GrainMap};
use super::header::{header, Field, Header};
use super::runs::DataFile;

/// Constant header magic.
pub const SESPARSE_MAGIC: u64 = 0xcafe_babe;
/// Version 2.1, the only one known.
pub const SESPARSE_VERSION: u64 = 0x0000_0002_0000_0001;
/// Volatile header magic.
pub const SESPARSE_VOLATILE_MAGIC: u64 = 0xcafe_cafe;
/// Grain size in sectors (4 KiB), the only one QEMU and ESX use.
pub const SESPARSE_GRAIN_SECTORS: u64 = 8;
/// Grain table size in sectors (4096 u64 entries).
pub const SESPARSE_GT_SECTORS: u64 = 64;
/// Constant header size in bytes.
pub const SESPARSE_HEADER_BYTES: usize = 512;
/// Bytes of the volatile header read: its fields, then padding checked to be zero.
const VOLATILE_READ_BYTES: u64 = 512;

/// An area of the file: (offset, size) in sectors, as the constant header stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Area {
    pub sector: u64,
    pub sectors: u64,
}

impl Field for Area {
    const BYTES: usize = 16;
    fn decode(b: &[u8]) -> Area {
        Area {
            sector: u64::decode(&b[..8]),
            sectors: u64::decode(&b[8..]),
        }
    }
}

header! {
    /// The constant header at sector 0: 26 u64 then zero padding. The journal, free bitmap
    /// and back map areas are not read.
    struct ConstHeader(SESPARSE_HEADER_BYTES, "SEsparse") {
        magic: u64 = 0,
        version: u64 = 8,
        /// Capacity in sectors.
        capacity: u64 = 16,
        grain_sectors: u64 = 24,
        gt_sectors: u64 = 32,
        flags: u64 = 40,
        reserved: [u8; 32] = 48,
        volatile_header: Area = 80,
        grain_directory: Area = 128,
        grain_tables: Area = 144,
        grains: Area = 192,
        padding: [u8; 304] = 208,
    }
}

header! {
    /// The volatile header, at the constant header's volatile area.
    struct VolatileHeader(32, "SEsparse volatile") {
        magic: u64 = 0,
        /// Nonzero: the journal must be replayed before the delta reads right.
        replay_journal: u64 = 24,
    }
}

/// Open an SEsparse extent: check both headers and return its grain map.
pub(crate) fn open(file: Arc<DataFile>) -> Result<GrainMap, Error> {
    let p = file.path.clone();
    let (h, file_len) = ConstHeader::read(&file)?;
    check(&h, &p)?;
    let (vol_off, vol_len) = area(&p, h.volatile_header, "volatile header", file_len)?;
    check_volatile(&file, vol_off, vol_len)?;
    let (gd_off, gd_len) = area(&p, h.grain_directory, "grain directory", file_len)?;
    let (gt_off, gt_len) = area(&p, h.grain_tables, "grain tables", file_len)?;
    let (grains_off, grains_len) = area(&p, h.grains, "grains", file_len)?;
    let capacity = error::mul(&p, "capacity", h.capacity, 512)?;
    let map = GrainMap {
        file_len,
        capacity,
        grain_bytes: SESPARSE_GRAIN_SECTORS * 512,
        gt_entries: SESPARSE_GT_SECTORS * 512 / 8,
        gd_offset: gd_off,
        gd_entries: gd_len / 8,
        entry_bytes: 8,
        format: Format::SeSparse {
            gt_area: gt_off,
            gt_area_len: gt_len,
            grain_area: grains_off,
            grain_area_len: grains_len,
        },
        file,
    };
    map.check()?;
    Ok(map)
}

/// Refuse another version, another geometry, and nonzero reserved bytes.
fn check(h: &ConstHeader, p: &Path) -> Result<(), Error> {
    if h.magic != SESPARSE_MAGIC {
        return Err(Error::invalid(p, "wrong magic: not an SEsparse extent"));
    }
    if h.version != SESPARSE_VERSION {
        return Err(Error::unsupported(
            p,
            format!("SEsparse version {:#x} (only 2.1 is known)", h.version),
        ));
    }
    let (grain, gt, flags) = (h.grain_sectors, h.gt_sectors, h.flags);
    if grain != SESPARSE_GRAIN_SECTORS || gt != SESPARSE_GT_SECTORS || flags != 0 {
        return Err(Error::unsupported(
            p,
            format!("SEsparse grain size {grain}, table size {gt}, flags {flags:#x} (expected 8, 64, 0)"),
        ));
    }
    check_zero(p, &h.reserved, "reserved header fields")?;
    check_zero(p, &h.padding, "constant header padding")
}

/// An area as a checked byte range (offset, length) inside the file.
fn area(p: &Path, a: Area, what: &str, file_len: u64) -> Result<(u64, u64), Error> {
    let off = error::mul(p, what, a.sector, 512)?;
    let len = error::mul(p, what, a.sectors, 512)?;
    let end = error::add(p, what, off, len)?;
    if end > file_len {
        return Err(Error::invalid(
            p,
            format!("truncated or corrupt: {what} ends at byte {end}, past the end of the file ({file_len} bytes)"),
        ));
    }
    Ok((off, len))
}

/// The volatile header must be there and clean: QEMU refuses a journal to replay too.
fn check_volatile(file: &DataFile, off: u64, len: u64) -> Result<(), Error> {
    let p = &file.path;
    if len < VolatileHeader::BYTES as u64 {
        return Err(Error::invalid(p, "volatile header area is too small"));
    }
    let mut vh = vec![0u8; len.min(VOLATILE_READ_BYTES) as usize];
    file.file
        .read_exact_at(&mut vh, off)
        .map_err(|e| Error::io(p, "reading SEsparse volatile header", e))?;
    let v = VolatileHeader::parse(&vh);
    if v.magic != SESPARSE_VOLATILE_MAGIC {
        return Err(Error::invalid(p, "wrong volatile header magic"));
    }
    if v.replay_journal != 0 {
        return Err(Error::invalid(
            p,
            "SEsparse volatile header asks for a journal replay (replay_journal != 0): the delta is dirty; \
             let ESXi open it once or consolidate first",
        ));
    }
    if vh.len() > VolatileHeader::BYTES {
        check_zero(p, &vh[VolatileHeader::BYTES..], "volatile header padding")?;
    }
    Ok(())
}

/// ESXi writes zeros in the reserved fields and paddings, and QEMU refuses anything else: a
/// nonzero byte there is a format revision or corruption this tool cannot read safely.
fn check_zero(p: &Path, bytes: &[u8], what: &str) -> Result<(), Error> {
    match bytes.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(Error::unsupported(
            p,
            format!("SEsparse {what} are not zero (byte {i} of them): a format revision this tool does not read"),
        )),
    }
}
