//! Stage 2 with `--io overlay` through `qemu+tcp://127.0.0.1/system`: the boot-sector guest
//! starts on the overlay and shows the delta's data; after the commit the volume equals
//! qemu-img's reading of the chain, the definition names the volume only, the overlay is gone.

use std::path::Path;

use crate::util::bootimg;
use crate::util::fixtures::*;
use crate::util::import::*;
use crate::util::libvirt::{TestPool, REMOTE_URI};
use crate::util::overlay::*;
use crate::util::*;

/// Stage 2 of `deltas` (top `top`) with `--io io` (overlay, or auto, which picks the overlay
/// on a remote URI when the domain is started): booted from the overlay with the delta's
/// sectors, then committed.
fn round_trip(
    tag: &str,
    io: &[&str],
    f: &Folder,
    payload: &[u8],
    top: &Path,
    deltas: &[&Path],
) -> String {
    let want = qemu_read(top);
    let patched = &want[512..512 + bootimg::PAYLOAD_LEN];
    assert!(patched != payload, "the delta changes the payload");
    let tp = TestPool::on(REMOTE_URI, tag);
    let (im, log) = stage1(&tp, f, tag);
    let out = im.stage2(deltas, io);
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
    text
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
    // The overlay in a pool of its own (--overlay-pool, as for a logical pool).
    let other = TestPool::on(REMOTE_URI, "ovl-cowd-pool");
    let io = ["--io", "overlay", "--overlay-pool", other.name.as_str()];
    let text = round_trip("ovl-cowd", &io, &f, &payload, &delta, &[&delta]);
    assert!(text.contains(&format!("volume={}/", other.name)), "{text}");
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
    round_trip(
        "ovl-ses2",
        &["--io", "overlay"],
        &f,
        &payload,
        &d2,
        &[&d1, &d2],
    );
}

#[test]
fn hosted_sparse_delta_through_io_auto_on_a_remote_uri_goes_by_the_overlay() {
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
    round_trip("ovl-hosted", &["--io", "auto"], &f, &payload, &top, &[&top]);
}

#[test]
fn io_overlay_with_no_start_is_refused_before_anything_is_written() {
    let (f, _) = boot_folder();
    let (delta, _) = slow_commit_delta(&f);
    let tp = TestPool::on(REMOTE_URI, "ovl-nostart");
    let (im, _) = stage1(&tp, &f, "ovl-nostart");
    let before = im.read();
    let out = im.stage2(&[&delta], &["--io", "overlay", "--no-start"]);
    refused(&out, &["--no-start"]);
    assert_same(&im.read(), &before, "volume after the refusal");
    assert!(!im.state().contains("applying"), "{}", im.state());
    let out = im.stage2(
        &[&delta],
        &["--io", "overlay", "--overlay-pool", "no-such-pool-here"],
    );
    refused(&out, &["no-such-pool-here"]);
    assert_same(&im.read(), &before, "volume after the refusal");
}
