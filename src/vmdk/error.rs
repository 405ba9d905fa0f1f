//! The library's error type: every refusal names the file (and line or table) and what is wrong.

use std::io;
use std::path::{Path, PathBuf};

/// Why a disk, descriptor or chain was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed on `path` while doing `what`.
    // The I/O error is part of the message rather than a `source`, so `{:#}` prints it once.
    #[error("{}: {what}: {cause}", show(path))]
    Io {
        path: PathBuf,
        what: String,
        cause: io::Error,
    },
    /// The file is malformed, truncated, dirty, or points outside itself.
    #[error("{}: {msg}", show(path))]
    Invalid { path: PathBuf, msg: String },
    /// A text descriptor line could not be understood.
    #[error("{}: line {line}: {msg}", show(path))]
    Descriptor {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// The file is well formed but uses something this tool does not read.
    #[error("{}: unsupported: {msg}", show(path))]
    Unsupported { path: PathBuf, msg: String },
    /// The layers do not form a chain (CID mismatch, capacity mismatch, depth, cycle).
    #[error("{msg}")]
    Chain { msg: String },
}

impl Error {
    pub(crate) fn io(path: &Path, what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            what: what.into(),
            cause: source,
        }
    }

    pub(crate) fn invalid(path: &Path, msg: impl Into<String>) -> Error {
        Error::Invalid {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, msg: impl Into<String>) -> Error {
        Error::Unsupported {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn chain(msg: impl Into<String>) -> Error {
        Error::Chain { msg: msg.into() }
    }
}

/// A path as it may be printed to a terminal: control characters escaped, so a hostile file
/// name cannot rewrite the user's screen.
pub fn show(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Checked arithmetic for sizes read from files: the message names the operands.
pub(crate) fn add(path: &Path, what: &str, a: u64, b: u64) -> Result<u64, Error> {
    a.checked_add(b)
        .ok_or_else(|| Error::invalid(path, format!("{what} overflows: {a} + {b}")))
}

/// Checked multiplication, see [`add`].
pub(crate) fn mul(path: &Path, what: &str, a: u64, b: u64) -> Result<u64, Error> {
    a.checked_mul(b)
        .ok_or_else(|| Error::invalid(path, format!("{what} overflows: {a} * {b}")))
}
