//! What a file's first bytes say it is: a COWD, SEsparse or KDMV file, a text descriptor, or something else.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::cowd::COWD_MAGIC;
use super::descriptor::looks_like_descriptor;
use super::error::Error;
use super::hosted::KDMV_MAGIC;
use super::sesparse::SESPARSE_MAGIC;

/// The first bytes of a file, to tell formats apart.
fn sniff(path: &Path) -> Result<Vec<u8>, Error> {
    let f = File::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let mut head = Vec::new();
    f.take(4096)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, "reading", e))?;
    Ok(head)
}

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Cowd,
    SeSparse,
    Hosted,
    Descriptor,
    Other,
}

pub(crate) fn sniff_kind(path: &Path) -> Result<Sniffed, Error> {
    let head = sniff(path)?;
    if head.len() >= 8 && u64::from_le_bytes(head[..8].try_into().unwrap()) == SESPARSE_MAGIC {
        return Ok(Sniffed::SeSparse);
    }
    if head.len() >= 4 {
        match u32::from_le_bytes(head[..4].try_into().unwrap()) {
            COWD_MAGIC => return Ok(Sniffed::Cowd),
            KDMV_MAGIC => return Ok(Sniffed::Hosted),
            _ => {}
        }
    }
    if looks_like_descriptor(&head) {
        return Ok(Sniffed::Descriptor);
    }
    Ok(Sniffed::Other)
}
