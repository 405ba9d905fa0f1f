//! VMware disks and snapshot chains, reduced to one view: the runs of a virtual disk that changed.

mod runs;

pub use runs::{DataFile, Piece, Source};
