//! COWD ("vmfsSparse", `-delta.vmdk`) delta extents written by ESX on VMFS5.
//!
//! Grain-table entry 1 is read as a zeroed grain (it hides the parent), as Xen Orchestra
//! does. QEMU and libvmdk read it as data at sector 1, but sector 1 lies inside the
//! 2048-byte header and can never hold grain data, so in a well-formed file 1 cannot be a
//! data pointer; the only sensible meaning is the zero marker. qemu-img disagrees on such
//! files; the tests pin this decision rather than qemu-img's answer.

use std::sync::Arc;

use super::error::{self, Error};
use super::grains::{Format, GrainMap};
use super::header::{header, Header};
use super::runs::DataFile;

/// `COWD` read as a little-endian u32.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// The only COWD version known.
pub const COWD_VERSION: u32 = 1;
/// Header size in bytes.
pub const COWD_HEADER_BYTES: usize = 2048;
/// Entries in every COWD grain table: the header does not store it, the format fixes it.
pub const COWD_GT_ENTRIES: u64 = 4096;

header! {
    /// The COWD header at byte 0: the fields this tool reads (the parent name, generations,
    /// name and description are not reliable in recent files and change nothing read).
    struct CowdHeader(COWD_HEADER_BYTES, "COWD") {
        magic: u32 = 0,
        version: u32 = 4,
        /// Capacity in sectors (a u32: COWD disks stay under 2 TiB).
        num_sectors: u32 = 12,
        /// Sectors per grain; 1 in ESX files.
        grain_sectors: u32 = 16,
        /// Sector of the grain directory.
        gd_sector: u32 = 20,
        gd_entries: u32 = 24,
        /// Nonzero while the delta is open, or after it was not closed cleanly.
        unclean_shutdown: u32 = 1648,
    }
}

/// Open a COWD extent: check the header and return its grain map.
pub(crate) fn open(file: Arc<DataFile>) -> Result<GrainMap, Error> {
    let p = file.path.clone();
    let (h, file_len) = CowdHeader::read(&file)?;
    if h.magic != COWD_MAGIC {
        return Err(Error::invalid(&p, "wrong magic: not a COWD extent"));
    }
    if h.version != COWD_VERSION {
        return Err(Error::unsupported(
            &p,
            format!("COWD version {} (only {COWD_VERSION} is known)", h.version),
        ));
    }
    if h.unclean_shutdown != 0 {
        return Err(Error::invalid(
            &p,
            "COWD uncleanShutdown is set: the delta is still open or was not closed cleanly; \
             power the VM off or consolidate first",
        ));
    }
    let map = GrainMap {
        file_len,
        capacity: h.num_sectors as u64 * 512,
        grain_bytes: error::mul(&p, "grain size", h.grain_sectors as u64, 512)?,
        gt_entries: COWD_GT_ENTRIES,
        gd_offset: h.gd_sector as u64 * 512,
        gd_entries: h.gd_entries as u64,
        entry_bytes: 4,
        format: Format::Cowd,
        file,
    };
    map.check()?;
    Ok(map)
}
