//! SEsparse (`-sesparse.vmdk`) delta extents: VMFS6 snapshots and large VMFS5 disks.

use std::sync::Arc;

use super::error::{self, Error};
use super::grains::{Format, GrainMap};
use super::header::{le_u64, read_start as read_header};
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

/// Open an SEsparse extent: check both headers and return its grain map.
pub(crate) fn open(file: Arc<DataFile>) -> Result<GrainMap, Error> {
    let p = file.path.clone();
    let (h, file_len) = read_header::<SESPARSE_HEADER_BYTES>(&file, "SEsparse")?;
    if le_u64(&h, 0) != SESPARSE_MAGIC {
        return Err(Error::invalid(&p, "wrong magic: not an SEsparse extent"));
    }
    let version = le_u64(&h, 8);
    if version != SESPARSE_VERSION {
        return Err(Error::unsupported(
            &p,
            format!("SEsparse version {version:#x} (only 2.1 is known)"),
        ));
    }
    let (grain, gt, flags) = (le_u64(&h, 24), le_u64(&h, 32), le_u64(&h, 40));
    if grain != SESPARSE_GRAIN_SECTORS || gt != SESPARSE_GT_SECTORS || flags != 0 {
        return Err(Error::unsupported(
            &p,
            format!("SEsparse grain size {grain}, table size {gt}, flags {flags:#x} (expected 8, 64, 0)"),
        ));
    }
    check_zero(&p, &h[48..80], "reserved header fields")?;
    check_zero(&p, &h[208..], "constant header padding")?;
    // Areas are (offset, size) pairs in sectors; turn them into checked byte ranges.
    let area = |at: usize, what: &str| -> Result<(u64, u64), Error> {
        let off = error::mul(&p, what, le_u64(&h, at), 512)?;
        let len = error::mul(&p, what, le_u64(&h, at + 8), 512)?;
        let end = error::add(&p, what, off, len)?;
        if end > file_len {
            return Err(Error::invalid(
                &p,
                format!("truncated or corrupt: {what} ends at byte {end}, past the end of the file ({file_len} bytes)"),
            ));
        }
        Ok((off, len))
    };
    let (vol_off, vol_len) = area(80, "volatile header")?;
    if vol_len < 32 {
        return Err(Error::invalid(&p, "volatile header area is too small"));
    }
    let mut vh = vec![0u8; vol_len.min(512) as usize];
    file.file
        .read_exact_at(&mut vh, vol_off)
        .map_err(|e| Error::io(&p, "reading SEsparse volatile header", e))?;
    if le_u64(&vh, 0) != SESPARSE_VOLATILE_MAGIC {
        return Err(Error::invalid(&p, "wrong volatile header magic"));
    }
    if le_u64(&vh, 24) != 0 {
        return Err(Error::invalid(
            &p,
            "SEsparse volatile header asks for a journal replay (replay_journal != 0): the delta is dirty; \
             let ESXi open it once or consolidate first",
        ));
    }
    if vh.len() > 32 {
        check_zero(&p, &vh[32..], "volatile header padding")?;
    }
    let (gd_off, gd_len) = area(128, "grain directory")?;
    let (gt_off, gt_len) = area(144, "grain tables")?;
    let (grains_off, grains_len) = area(192, "grains")?;
    let capacity = error::mul(&p, "capacity", le_u64(&h, 16), 512)?;
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

/// ESXi writes zeros in the reserved fields and paddings, and QEMU refuses anything else: a
/// nonzero byte there is a format revision or corruption this tool cannot read safely.
fn check_zero(p: &std::path::Path, bytes: &[u8], what: &str) -> Result<(), Error> {
    match bytes.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(Error::unsupported(
            p,
            format!("SEsparse {what} are not zero (byte {i} of them): a format revision this tool does not read"),
        )),
    }
}
