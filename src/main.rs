//! The virt-vmdkimport command: parse the command line, run the library, report errors on one line.

use clap::Parser;
use vmdkimport::apply::apply_to_target;
use vmdkimport::cli::Cli;
use vmdkimport::vmdk::{Chain, OpenOptions};

fn run(cli: &Cli) -> anyhow::Result<()> {
    let opts = OpenOptions {
        allow_outside_paths: cli.allow_outside_paths,
    };
    let chain = Chain::open_deltas(&cli.deltas, &opts)?;
    let report = apply_to_target(&chain, &cli.target)?;
    println!("{report}");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("virt-vmdkimport: {e:#}");
        std::process::exit(1);
    }
}
