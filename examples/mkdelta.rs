//! Write a synthetic SEsparse or COWD snapshot delta (extent + child descriptor) over a base
//! descriptor, for benchmarks and manual testing.
//!
//! ```text
//! cargo run --release --example mkdelta -- --format sesparse|cowd --capacity BYTES \
//!     --base-descriptor base.vmdk --out DIR/vm-000001.vmdk --runs N --run-size BYTES \
//!     [--seed S] [--contiguous]
//! ```
//!
//! The delta holds N runs of run-size bytes of patterned data. Runs sit at random,
//! non-overlapping, run-size-aligned offsets (or back to back from offset 0 with
//! `--contiguous`); each run's grains are stored together, runs in random order. The child
//! descriptor's parentCID is the base descriptor's CID; parentFileNameHint is the base's file
//! name when both share a folder, else its absolute path (apply then needs
//! `--allow-outside-paths`).

#[path = "../tests/util/fixtures.rs"]
mod fixtures;

use std::path::PathBuf;

use anyhow::{bail, ensure, Context};
use clap::{Parser, ValueEnum};
use fixtures::{
    descriptor, pattern, write_cowd, write_sesparse, CowdOptions, Kind, SeSparseOptions,
    XorShift as Rng,
};
use vmdkimport::vmdk::Descriptor;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Sesparse,
    Cowd,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    format: Format,
    /// Virtual size in bytes (multiple of 512; must equal the base's).
    #[arg(long)]
    capacity: u64,
    #[arg(long)]
    base_descriptor: PathBuf,
    /// Child descriptor to write; the extent goes next to it.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    runs: u64,
    /// Bytes per run (multiple of the grain: 4096 for SEsparse, 512 for COWD).
    #[arg(long)]
    run_size: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Put the runs back to back from offset 0 instead of scattering them.
    #[arg(long)]
    contiguous: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let base = Descriptor::read(&a.base_descriptor)?;
    let base_cap = base.capacity()?;
    ensure!(
        a.capacity == base_cap,
        "--capacity {} differs from the base's {base_cap} bytes",
        a.capacity
    );
    let base_cid = base.cid.context("base descriptor has no CID")?;
    let grain_bytes: u64 = match a.format {
        Format::Sesparse => 4096,
        Format::Cowd => 512,
    };
    ensure!(a.capacity % 512 == 0, "capacity must be a multiple of 512");
    ensure!(
        a.run_size > 0 && a.run_size % grain_bytes == 0,
        "--run-size must be a positive multiple of {grain_bytes}"
    );
    let slots = a.capacity / a.run_size;
    ensure!(
        a.runs <= slots,
        "{} runs of {} bytes do not fit in {} bytes",
        a.runs,
        a.run_size,
        a.capacity
    );
    if let Format::Cowd = a.format {
        ensure!(
            a.capacity / 512 <= u32::MAX as u64,
            "COWD holds at most 2 TiB"
        );
    }

    let mut rng = Rng(a.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let chosen: Vec<u64> = if a.contiguous {
        (0..a.runs).collect()
    } else {
        // Partial Fisher-Yates over all slots: distinct, uniformly random.
        let mut all: Vec<u64> = (0..slots).collect();
        for i in 0..a.runs as usize {
            let j = i + rng.below(slots - i as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(a.runs as usize);
        all
    };
    let per_run = a.run_size / grain_bytes;
    let mut grains = Vec::with_capacity((a.runs * per_run) as usize);
    for slot in &chosen {
        let first = slot * per_run;
        grains.extend((first..first + per_run).map(|g| (g, Kind::Data)));
    }

    let dir = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into());
    let stem = a
        .out
        .file_stem()
        .context("--out needs a file name")?
        .to_string_lossy()
        .into_owned();
    let cid = (a.seed as u32).wrapping_mul(0x2545_f491) | 1;
    let sectors = a.capacity / 512;
    let (extent, line, create) = match a.format {
        Format::Sesparse => {
            let name = format!("{stem}-sesparse.vmdk");
            write_sesparse(
                &dir.join(&name),
                sectors,
                &grains,
                &mut pattern(a.seed),
                &SeSparseOptions::default(),
            )?;
            (
                name.clone(),
                format!("RW {sectors} SESPARSE \"{name}\""),
                "seSparse",
            )
        }
        Format::Cowd => {
            let name = format!("{stem}-delta.vmdk");
            write_cowd(
                &dir.join(&name),
                sectors,
                1,
                &grains,
                &mut pattern(a.seed),
                &CowdOptions::default(),
            )?;
            (
                name.clone(),
                format!("RW {sectors} VMFSSPARSE \"{name}\""),
                "vmfsSparse",
            )
        }
    };
    let base_real = a.base_descriptor.canonicalize()?;
    let hint = if base_real.parent() == Some(dir.canonicalize()?.as_path()) {
        base_real
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    } else {
        base_real.to_string_lossy().into_owned()
    };
    if hint.contains('"') {
        bail!("base path contains a quote");
    }
    std::fs::write(
        &a.out,
        descriptor(cid, Some((base_cid, &hint)), create, &[line]),
    )?;
    println!(
        "wrote {} and {extent}: {} runs of {} bytes ({} bytes of data), CID {cid:08x}, parent CID {base_cid:08x}",
        a.out.display(),
        a.runs,
        a.run_size,
        a.runs * a.run_size
    );
    Ok(())
}
