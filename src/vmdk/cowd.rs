//! COWD ("vmfsSparse", `-delta.vmdk`) delta extents written by ESX on VMFS5.
//!
//! Grain-table entry 1 is read as a zeroed grain (it hides the parent), as Xen Orchestra
//! does. QEMU and libvmdk read it as data at sector 1, but sector 1 lies inside the
//! 2048-byte header and can never hold grain data, so in a well-formed file 1 cannot be a
//! data pointer; the only sensible meaning is the zero marker. qemu-img disagrees on such
//! files; the tests pin this decision rather than qemu-img's answer.

use std::sync::Arc;

use super::error::{self, Error};
use super::grains::{le_u32, read_header, Format, GrainMap};
use super::runs::DataFile;

/// `COWD` read as a little-endian u32.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// The only COWD version known.
pub const COWD_VERSION: u32 = 1;
/// Header size in bytes.
pub const COWD_HEADER_BYTES: usize = 2048;
/// Entries in every COWD grain table.
pub const COWD_GT_ENTRIES: u64 = 4096;
/// Offset of the uncleanShutdown field.
const UNCLEAN_SHUTDOWN_AT: usize = 1648;

/// Open a COWD extent: check the header and return its grain map.
pub(crate) fn open(file: Arc<DataFile>) -> Result<GrainMap, Error> {
    let p = file.path.clone();
    let (h, file_len) = read_header::<COWD_HEADER_BYTES>(&file, "COWD")?;
    if le_u32(&h, 0) != COWD_MAGIC {
        return Err(Error::invalid(&p, "wrong magic: not a COWD extent"));
    }
    let version = le_u32(&h, 4);
    if version != COWD_VERSION {
        return Err(Error::unsupported(
            &p,
            format!("COWD version {version} (only {COWD_VERSION} is known)"),
        ));
    }
    if le_u32(&h, UNCLEAN_SHUTDOWN_AT) != 0 {
        return Err(Error::invalid(
            &p,
            "COWD uncleanShutdown is set: the delta is still open or was not closed cleanly; \
             power the VM off or consolidate first",
        ));
    }
    let sectors = le_u32(&h, 12) as u64;
    let grain_sectors = le_u32(&h, 16) as u64;
    let map = GrainMap {
        file_len,
        capacity: sectors * 512,
        grain_bytes: error::mul(&p, "grain size", grain_sectors, 512)?,
        gt_entries: COWD_GT_ENTRIES,
        gd_offset: le_u32(&h, 20) as u64 * 512,
        gd_entries: le_u32(&h, 24) as u64,
        entry_bytes: 4,
        format: Format::Cowd,
        file,
    };
    map.check()?;
    Ok(map)
}
