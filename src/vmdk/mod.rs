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
mod sniff;

pub use base::BaseImage;
pub use chain::{Chain, Parent, Pieces};
pub use descriptor::Descriptor;
pub use error::{show, Error};
pub use extents::LayerKind;
pub use links::{resolve_chain, DiskId, LayerInfo, ParentLink, ResolvedChain, MAX_CHAIN_DEPTH};
pub use names::OpenOptions;
pub use runs::{DataFile, Piece, ReadAt, Source};
