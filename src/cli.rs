//! The command line as clap sees it.

use std::path::PathBuf;

use clap::Parser;

/// Apply VMware snapshot deltas to a raw disk that already holds the base.
#[derive(Debug, Parser)]
#[command(name = "virt-vmdkimport", version, about)]
pub struct Cli {
    /// Raw image file or block device holding the base disk; written in place.
    #[arg(long, value_name = "PATH")]
    pub target: PathBuf,
    /// Let descriptors name files outside their own folder.
    #[arg(long)]
    pub allow_outside_paths: bool,
    /// Deltas, oldest first: child descriptors, bare -delta/-sesparse extents, or KDMV files.
    #[arg(value_name = "DELTA", required = true)]
    pub deltas: Vec<PathBuf>,
}
