//! FLAT, VMFS and ZERO extents of a base disk: data at an offset of a raw file, or zeros.

use std::path::Path;

use super::descriptor::{Descriptor, ExtentKind, ExtentLine};
use super::error::{self, Error};
use super::names::ExtentOpener;
use super::runs::{DataFile, Source};

/// Open one FLAT/VMFS/ZERO extent line of `d` (of `len` bytes) through `open_file`, checking
/// the file is long enough.
pub(crate) fn open(
    d: &Descriptor,
    e: &ExtentLine,
    len: u64,
    open_file: &mut ExtentOpener,
) -> Result<Source, Error> {
    match e.kind {
        ExtentKind::Zero => Ok(Source::Zeros),
        ExtentKind::Flat | ExtentKind::Vmfs => {
            let file = open_file(d, e.file.as_deref().unwrap_or_default())?;
            let offset = error::mul(&d.path, "extent offset", e.offset, 512)?;
            let need = error::add(&d.path, "extent end", offset, len)?;
            check_len(&file.path, &file, need)?;
            Ok(Source::Data { file, offset })
        }
        _ => unreachable!("caller passes flat kinds only"),
    }
}

fn check_len(path: &Path, file: &DataFile, need: u64) -> Result<(), Error> {
    let have = file
        .file
        .size()
        .map_err(|e| Error::io(path, "reading file size", e))?;
    if have < need {
        return Err(Error::invalid(
            path,
            format!("truncated: {have} bytes, the descriptor needs {need}"),
        ));
    }
    Ok(())
}
