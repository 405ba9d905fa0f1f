//! Helpers for the `--io overlay` tests: the boot-disk import through the remote URI, the
//! checks after a commit, waiting for a step of the overlay's record.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bootimg;
use super::fixtures::*;
use super::import::*;
use super::libvirt::{TestPool, REMOTE_URI};
use super::{assert_same, Folder, BASE_CID};

pub const SECTORS: u64 = 16384;

/// QEMU's generic CPU and a small guest (see tests/import.rs).
pub const SMALL_VM: &[&str] = &["--memory", "128", "--vcpus", "1", "--cpu", "default"];

/// A folder whose base is the boot disk (payload in sectors 1..=8).
pub fn boot_folder() -> (Folder, Vec<u8>) {
    let f = Folder::base(SECTORS);
    let mut payload = vec![0u8; bootimg::PAYLOAD_LEN];
    pattern(0xb007)(0, &mut payload);
    std::fs::write(
        f.path("base-flat.vmdk"),
        bootimg::boot_disk(&payload, (SECTORS * 512) as usize),
    )
    .unwrap();
    (f, payload)
}

/// Stage 1 of the boot disk through the remote URI, with a serial log.
pub fn stage1<'a>(tp: &'a TestPool, f: &Folder, tag: &str) -> (Import<'a>, PathBuf) {
    let im = Import::with_uri(tp, REMOTE_URI, tag);
    ok(&im.stage1(&f.path("base.vmdk"), SMALL_VM), "stage 1");
    let log = tp.path("console.log");
    im.add_serial_log(&log);
    (im, log)
}

/// The guest's boot line once it booted: the hash of sectors 1..=8 as it read them.
pub fn boot_line(log: &Path) -> String {
    wait_for_line(log, bootimg::MARKER, Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "no boot marker in {} after 60 s: {:?}",
            log.display(),
            std::fs::read_to_string(log)
        )
    })
}

/// After the commit: the volume holds `want`, the persistent definition names the volume
/// (no qcow2, no overlay), the overlay volume and its records are gone.
pub fn assert_committed(im: &Import, want: &[u8]) {
    assert_same(&im.read(), want, "volume after the commit");
    let xml = im.xml();
    let disk = section(&xml, "devices").unwrap();
    assert!(
        !disk.contains("qcow2") && !disk.contains("overlay"),
        "{xml}"
    );
    assert!(disk.contains(&im.volume_name()), "{xml}");
    assert!(
        im.tp
            .pool
            .find_volume(&format!("{}-overlay", im.volume_name()))
            .unwrap()
            .is_none(),
        "the overlay volume is removed"
    );
    let records = virsh(
        &im.uri,
        &["metadata", &im.domain, vmdkimport::state::OVERLAY_NS_URI],
    );
    assert!(!records.contains("<overlay "), "{records}");
}

/// The overlay's step as recorded in the domain's metadata (`committing`...), if any.
pub fn overlay_step(im: &Import) -> Option<String> {
    let out = std::process::Command::new("virsh")
        .args([
            "-c",
            &im.uri,
            "metadata",
            &im.domain,
            vmdkimport::state::OVERLAY_NS_URI,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("step=\"")? + 6;
    Some(text[at..at + text[at..].find('"')?].to_string())
}

/// Wait (at most 60 s) until the overlay's record says `step`.
pub fn wait_for_step(im: &Import, step: &str) {
    let start = std::time::Instant::now();
    while overlay_step(im).as_deref() != Some(step) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the overlay never reached step {step}: {:?}",
            overlay_step(im)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A COWD delta over the boot disk that changes the payload (sectors 2, 5, 8) and 2 MiB in
/// one run: with --commit-bandwidth 262144 its commit lasts about 8 s, time enough to
/// interrupt it. Returns it with qemu-img's reading of it.
pub fn slow_commit_delta(f: &Folder) -> (PathBuf, Vec<u8>) {
    let mut grains = vec![(2, Kind::Data), (5, Kind::Data), (8, Kind::Data)];
    grains.extend((4096..8192).map(|g| (g, Kind::Data)));
    let delta = cowd_child(f, "vm-000001", 0x61, (BASE_CID, "base.vmdk"), 1, &grains);
    let want = super::qemu_read(&delta);
    (delta, want)
}

/// The bandwidth that makes [`slow_commit_delta`]'s commit slow.
pub const SLOW: &[&str] = &["--io", "overlay", "--commit-bandwidth", "262144"];
