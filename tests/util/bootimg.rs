//! A bootable test disk: the boot sector of tests/fixtures/boot.asm plus the sectors it hashes.

use std::path::Path;
use std::process::Command;

/// Sectors the boot sector reads and hashes (sectors 1..=8 of the disk).
pub const PAYLOAD_SECTORS: usize = 8;
/// Bytes the boot sector hashes.
pub const PAYLOAD_LEN: usize = PAYLOAD_SECTORS * 512;
/// The line the boot sector prints to COM1, before the hash.
pub const MARKER: &str = "VMDKIMPORT-BOOT-OK ";

/// Assemble tests/fixtures/boot.asm with nasm into its 512 bytes.
pub fn boot_sector() -> Vec<u8> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/boot.asm");
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("boot.bin");
    let status = Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running nasm (scripts/setup-host.sh installs it)");
    assert!(status.success(), "nasm failed on {}", src.display());
    let bin = std::fs::read(&out).expect("reading nasm's output");
    assert_eq!(bin.len(), 512, "boot sector size");
    assert_eq!(&bin[510..], &[0x55, 0xaa], "boot signature");
    bin
}

/// A disk image of `size` bytes: the boot sector, then `payload` in sectors 1..=8, then zeros.
pub fn boot_disk(payload: &[u8], size: usize) -> Vec<u8> {
    assert_eq!(payload.len(), PAYLOAD_LEN);
    assert!(size >= 512 + PAYLOAD_LEN);
    let mut disk = boot_sector();
    disk.extend_from_slice(payload);
    disk.resize(size, 0);
    disk
}

/// The hash the boot sector prints for `payload`: h = rol16(h, 5) + byte, over every byte.
pub fn boot_hash(payload: &[u8]) -> u16 {
    payload
        .iter()
        .fold(0u16, |h, &b| h.rotate_left(5).wrapping_add(u16::from(b)))
}

/// The full console line the boot sector prints for `payload`.
pub fn expected_line(payload: &[u8]) -> String {
    format!("{MARKER}{:04x}", boot_hash(payload))
}
