//! The virt-vmdkimport command: parse the command line, run the library, report errors on one line.

use anyhow::ensure;
use clap::Parser;
use vmdkimport::apply::apply_to_target;
use vmdkimport::cli::Cli;
use vmdkimport::vmdk::{Chain, OpenOptions};

fn run(cli: &Cli) -> anyhow::Result<()> {
    let opts = OpenOptions {
        allow_outside_paths: cli.allow_outside_paths,
    };
    let Some(target) = &cli.target else {
        anyhow::bail!("give --target PATH (the libvirt import is not wired up yet)");
    };
    ensure!(
        !cli.deltas.is_empty(),
        "--target needs at least one delta to apply"
    );
    let chain = Chain::open_deltas(&cli.deltas, &opts)?;
    let report = apply_to_target(&chain, target)?;
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
