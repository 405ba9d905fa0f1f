//! COWD ("vmfsSparse", `-delta.vmdk`) delta extents written by ESX on VMFS5.
//!
//! Grain-table entry 1 is read as a zeroed grain (it hides the parent), as Xen Orchestra
//! does. QEMU and libvmdk read it as data at sector 1, but sector 1 lies inside the
//! 2048-byte header and can never hold grain data, so in a well-formed file 1 cannot be a
//! data pointer; the only sensible meaning is the zero marker. qemu-img disagrees on such
//! files; the tests pin this decision rather than qemu-img's answer.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::error::{self, Error};
use super::grains::{Format, GrainMap};
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Open a COWD extent: check the header and return its grain map.
pub(crate) fn open(file: Arc<DataFile>) -> Result<GrainMap, Error> {
    let p = file.path.clone();
    let file_len = file
        .file
        .metadata()
        .map_err(|e| Error::io(&p, "reading file size", e))?
        .len();
    let mut h = [0u8; COWD_HEADER_BYTES];
    if file_len < COWD_HEADER_BYTES as u64 {
        return Err(Error::invalid(
            &p,
            format!("truncated: {file_len} bytes, shorter than the {COWD_HEADER_BYTES}-byte COWD header"),
        ));
    }
    file.file
        .read_exact_at(&mut h, 0)
        .map_err(|e| Error::io(&p, "reading COWD header", e))?;
    if u32_at(&h, 0) != COWD_MAGIC {
        return Err(Error::invalid(&p, "wrong magic: not a COWD extent"));
    }
    let version = u32_at(&h, 4);
    if version != COWD_VERSION {
        return Err(Error::unsupported(
            &p,
            format!("COWD version {version} (only {COWD_VERSION} is known)"),
        ));
    }
    if u32_at(&h, UNCLEAN_SHUTDOWN_AT) != 0 {
        return Err(Error::invalid(
            &p,
            "COWD uncleanShutdown is set: the delta is still open or was not closed cleanly; \
             power the VM off or consolidate first",
        ));
    }
    let sectors = u32_at(&h, 12) as u64;
    let grain_sectors = u32_at(&h, 16) as u64;
    let map = GrainMap {
        file_len,
        capacity: sectors * 512,
        grain_bytes: error::mul(&p, "grain size", grain_sectors, 512)?,
        gt_entries: COWD_GT_ENTRIES,
        gd_offset: u32_at(&h, 20) as u64 * 512,
        gd_entries: u32_at(&h, 24) as u64,
        entry_bytes: 4,
        format: Format::Cowd,
        file,
    };
    map.check()?;
    Ok(map)
}
