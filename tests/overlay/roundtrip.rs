//! Stage 2 with `--io overlay` through `qemu+tcp://127.0.0.1/system`: the boot-sector guest
//! starts on the overlay and shows the delta's data; after the commit the volume equals
//! qemu-img's reading of the chain, the definition names the volume only, the overlay is gone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::bootimg;
use crate::util::fixtures::*;
use crate::util::import::*;
use crate::util::libvirt::{TestPool, REMOTE_URI};
use crate::util::*;

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

/// Stage 2 of `deltas` (top `top`) with --io overlay: booted from the overlay with the
/// delta's sectors, then committed.
fn round_trip(tag: &str, f: &Folder, payload: &[u8], top: &Path, deltas: &[&Path]) {
    let want = qemu_read(top);
    let patched = &want[512..512 + bootimg::PAYLOAD_LEN];
    assert!(patched != payload, "the delta changes the payload");
    let tp = TestPool::on(REMOTE_URI, tag);
    let (im, log) = stage1(&tp, f, tag);
    let out = im.stage2(deltas, &["--io", "overlay"]);
    let text = ok(&out, "stage 2 --io overlay");
    assert!(
        text.contains("outage_s=") && text.contains("commit_s="),
        "{text}"
    );
    assert!(im.is_active(), "stage 2 starts the domain");
    assert_eq!(
        boot_line(&log),
        bootimg::expected_line(patched),
        "the guest read the delta"
    );
    assert_committed(&im, &want);
    let live = virsh(&im.uri, &["dumpxml", &im.domain]);
    assert!(
        !live.contains("qcow2"),
        "the running domain is on the volume: {live}"
    );
}

#[test]
fn cowd_delta_boots_from_the_overlay_and_commits_into_the_volume() {
    let (f, payload) = boot_folder();
    let mut grains = vec![(2, Kind::Data), (5, Kind::Zero), (8, Kind::Data)];
    grains.extend(
        scatter(&mut Rng(21), SECTORS, 200, &[Kind::Data, Kind::Zero])
            .into_iter()
            .filter(|(g, _)| *g > 8),
    );
    let delta = cowd_child(&f, "vm-000001", 0x41, (BASE_CID, "base.vmdk"), 1, &grains);
    round_trip("ovl-cowd", &f, &payload, &delta, &[&delta]);
}

#[test]
fn two_sesparse_deltas_commit_with_the_lower_deltas_data() {
    let (f, payload) = boot_folder();
    // 4 KiB grains: grain 1 holds the payload's last sector (grain 0, the boot sector, stays).
    let g1 = [
        (1, Kind::Data),
        (100, Kind::Data),
        (500, Kind::Zero),
        (1000, Kind::Data),
    ];
    let g2 = [(100, Kind::Unmapped), (700, Kind::Data), (2047, Kind::Zero)];
    let d1 = sesparse_child(&f, "vm-000001", 0x51, (BASE_CID, "base.vmdk"), &g1);
    let d2 = sesparse_child(&f, "vm-000002", 0x52, (0x51, "vm-000001.vmdk"), &g2);
    round_trip("ovl-ses2", &f, &payload, &d2, &[&d1, &d2]);
}

#[test]
fn hosted_sparse_delta_boots_from_the_overlay_and_commits() {
    let (f, payload) = boot_folder();
    let top = qemu_child(
        &f,
        "vm-000001",
        &[
            "write -P 0x6b 1024 1024",
            "write -z 2m 64k",
            "write -P 0x11 6m 128k",
        ],
    );
    round_trip("ovl-hosted", &f, &payload, &top, &[&top]);
}
