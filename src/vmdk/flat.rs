//! FLAT, VMFS and ZERO extents of a base disk: data at an offset of a raw file, or zeros.

use std::path::Path;
use std::sync::Arc;

use super::descriptor::{Descriptor, ExtentKind, ExtentLine};
use super::error::{self, Error};
use super::names;
use super::runs::DataFile;

/// Where a flat extent's bytes come from.
#[derive(Debug, Clone)]
pub(crate) enum FlatSource {
    Data { file: Arc<DataFile>, offset: u64 },
    Zeros,
}

/// Open one FLAT/VMFS/ZERO extent line of `d` (of `len` bytes), checking the file is long enough.
pub(crate) fn open(
    d: &Descriptor,
    e: &ExtentLine,
    len: u64,
    allow_outside: bool,
) -> Result<FlatSource, Error> {
    match e.kind {
        ExtentKind::Zero => Ok(FlatSource::Zeros),
        ExtentKind::Flat | ExtentKind::Vmfs => {
            let name = e.file.as_deref().unwrap_or_default();
            let path = names::resolve(&d.folder(), name, &d.path, allow_outside)?;
            let file = names::open_data(&path, !allow_outside)?;
            let offset = error::mul(&d.path, "extent offset", e.offset, 512)?;
            let need = error::add(&d.path, "extent end", offset, len)?;
            check_len(&file.path, &file, need)?;
            Ok(FlatSource::Data { file, offset })
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
