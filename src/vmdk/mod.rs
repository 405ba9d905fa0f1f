//! VMware disks and snapshot chains, reduced to one view: the runs of a virtual disk that changed.

pub mod base;
pub mod chain;
pub mod cowd;
pub mod descriptor;
mod error;
mod extents;
mod flat;
mod grains;
mod header;
pub mod hosted;
mod links;
mod names;
mod runs;
pub mod sesparse;

pub use base::BaseImage;
pub use chain::{Chain, LayerInfo, LayerKind, OpenOptions, Pieces, MAX_CHAIN_DEPTH};
pub use descriptor::Descriptor;
pub use error::{show, Error};
pub use links::{resolve_chain, DiskId, Parent, ParentLink, ResolvedChain};
pub use runs::{DataFile, Piece, ReadAt, Source};
