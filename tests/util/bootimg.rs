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

/// What a [`saying`] boot sector does once it has printed its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Halt for good.
    Halt,
    /// Reset the machine through the keyboard controller (a reboot, as a guest asks for one).
    Reboot,
}

/// A 512-byte boot sector that prints `text` to COM1 and to the screen (BIOS teletype), then
/// halts or reboots. An empty `text` prints nothing.
pub fn saying(text: &str, then: Then) -> Vec<u8> {
    let bytes: Vec<String> = text.bytes().map(|b| b.to_string()).collect();
    let data = if bytes.is_empty() {
        String::new()
    } else {
        format!("db {}", bytes.join(","))
    };
    let end = match then {
        Then::Halt => ".halt:\n hlt\n jmp .halt\n",
        Then::Reboot => " mov al, 0xfe\n out 0x64, al\n.wait:\n hlt\n jmp .wait\n",
    };
    let src = format!(
        "bits 16\norg 0x7c00\n cli\n xor ax, ax\n mov ds, ax\n mov ss, ax\n mov sp, 0x7c00\n sti\n\
         mov dx, 0x3fb\n mov al, 0x03\n out dx, al\n\
         mov si, text\n mov cx, {len}\n jcxz .done\n.next:\n lodsb\n mov dx, 0x3f8\n out dx, al\n\
         mov ah, 0x0e\n mov bx, 0x0007\n push si\n push cx\n int 0x10\n pop cx\n pop si\n loop .next\n\
         .done:\n{end}text: {data}\n times 510-($-$$) db 0\n dw 0xaa55\n",
        len = text.len()
    );
    assemble(&src)
}

fn assemble(src: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (asm, out) = (dir.path().join("s.asm"), dir.path().join("s.bin"));
    std::fs::write(&asm, src).unwrap();
    let status = Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(&out)
        .arg(&asm)
        .status()
        .expect("running nasm (scripts/setup-host.sh installs it)");
    assert!(status.success(), "nasm failed on:\n{src}");
    let bin = std::fs::read(&out).expect("reading nasm's output");
    assert_eq!(bin.len(), 512, "boot sector size");
    bin
}
