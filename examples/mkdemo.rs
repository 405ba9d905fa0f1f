//! Write the VMware-style folder of `scripts/demo.sh`: a bootable base disk and one snapshot
//! that changes what the guest prints.
//!
//! ```text
//! cargo run --release --example mkdemo -- --dir DIR --boot demo-boot.bin [--capacity BYTES] \
//!     [--base-text TEXT] [--delta-text TEXT]
//! ```
//!
//! Writes, as ESX lays out a VM with one snapshot:
//! - `demo.vmdk` + `demo-flat.vmdk`: the base (a "vmfs" descriptor and its flat extent). The
//!   flat extent holds the boot sector at sector 0 and `--base-text` at sector 8; the rest is a
//!   hole (zeros).
//! - `demo-000001.vmdk` + `demo-000001-sesparse.vmdk`: the snapshot, an SEsparse delta whose
//!   parentCID is the base's CID. It holds one 4 KiB grain, sectors 8..16, with `--delta-text` at
//!   sector 8. The boot sector (tests/fixtures/demo-boot.asm) prints "Hello from " and the text
//!   at sector 8, so the console shows whether the delta was applied.

#[path = "../tests/util/fixtures.rs"]
mod fixtures;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{ensure, Context};
use clap::Parser;
use fixtures::{descriptor, write_sesparse, Kind, SeSparseOptions, SECTOR};

/// The sector that holds the text the guest prints.
const TEXT_SECTOR: u64 = 8;
/// SEsparse grains are 4 KiB: the text sector is the first sector of grain 1.
const GRAIN: u64 = 4096;
const BASE_CID: u32 = 0x5e3d_0001;
const DELTA_CID: u32 = 0x5e3d_0002;

#[derive(Debug, Parser)]
struct Args {
    /// Folder to write the four files into (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// The 512-byte boot sector (nasm output of tests/fixtures/demo-boot.asm).
    #[arg(long)]
    boot: PathBuf,
    /// Virtual disk size in bytes (a multiple of 4096, at least 8 KiB).
    #[arg(long, default_value_t = 64 << 20)]
    capacity: u64,
    #[arg(long, default_value = "the base disk (VMware, before the snapshot)")]
    base_text: String,
    #[arg(long, default_value = "the snapshot delta: stage 2 applied it")]
    delta_text: String,
}

/// One sector holding `text` and a NUL (the boot sector prints up to the NUL).
fn text_sector(text: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(
        text.len() < SECTOR as usize && !text.contains('\0'),
        "the text must fit in one sector without NULs: {text:?}"
    );
    let mut s = text.as_bytes().to_vec();
    s.resize(SECTOR as usize, 0);
    Ok(s)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    ensure!(
        a.capacity % GRAIN == 0 && a.capacity >= 2 * GRAIN,
        "--capacity must be a multiple of 4096 and at least 8192"
    );
    let boot = std::fs::read(&a.boot).with_context(|| format!("reading {}", a.boot.display()))?;
    ensure!(
        boot.len() == 512 && boot[510..] == [0x55, 0xaa],
        "{}: not a 512-byte boot sector",
        a.boot.display()
    );
    std::fs::create_dir_all(&a.dir)?;
    let sectors = a.capacity / SECTOR;

    // The base: descriptor plus a sparse flat extent.
    let flat = a.dir.join("demo-flat.vmdk");
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&flat)?;
    f.set_len(a.capacity)?;
    f.write_all_at(&boot, 0)?;
    f.write_all_at(&text_sector(&a.base_text)?, TEXT_SECTOR * SECTOR)?;
    f.sync_all()?;
    std::fs::write(
        a.dir.join("demo.vmdk"),
        descriptor(
            BASE_CID,
            None,
            "vmfs",
            &[format!("RW {sectors} VMFS \"demo-flat.vmdk\"")],
        ),
    )?;

    // The snapshot: grain 1 (sectors 8..16) with the new text, the rest of the grain zeros.
    let new_text = text_sector(&a.delta_text)?;
    let mut fill = |grain: u64, buf: &mut [u8]| {
        assert_eq!(grain, TEXT_SECTOR * SECTOR / GRAIN);
        buf.fill(0);
        buf[..new_text.len()].copy_from_slice(&new_text);
    };
    write_sesparse(
        &a.dir.join("demo-000001-sesparse.vmdk"),
        sectors,
        &[(TEXT_SECTOR * SECTOR / GRAIN, Kind::Data)],
        &mut fill,
        &SeSparseOptions::default(),
    )?;
    std::fs::write(
        a.dir.join("demo-000001.vmdk"),
        descriptor(
            DELTA_CID,
            Some((BASE_CID, "demo.vmdk")),
            "seSparse",
            &[format!(
                "RW {sectors} SESPARSE \"demo-000001-sesparse.vmdk\""
            )],
        ),
    )?;
    println!(
        "wrote {}: demo.vmdk + demo-flat.vmdk ({} bytes, says {:?}), demo-000001.vmdk + \
         demo-000001-sesparse.vmdk (one 4 KiB grain, says {:?})",
        a.dir.display(),
        a.capacity,
        a.base_text,
        a.delta_text
    );
    Ok(())
}
