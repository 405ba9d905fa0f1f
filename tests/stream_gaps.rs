//! Stage 2 through upload streams whose gap bytes are downloaded from the volume itself, with each window's upload held until its download has filled the queue and waits undrained: the interleaving that once hung a cutover on one shared connection.

mod util;

use util::fixtures::{Kind, SECTOR};
use util::import::*;
use util::interrupt::{halves_chain, stage2_args};
use util::libvirt::TestPool;
use util::{assert_same, qemu_read, Folder};

const CAP: u64 = 8 * MIB;

#[test]
fn a_streamed_stage2_whose_uploads_wait_for_a_full_download_queue_completes_with_qemu_imgs_bytes() {
    let tp = TestPool::new("heldq");
    let f = Folder::base(CAP / SECTOR);
    let im = Import::new(&tp, "heldq");
    ok(
        &im.stage1(&f.path("base.vmdk"), &["--cpu", "default"]),
        "stage 1",
    );
    let (d1, _) = halves_chain(&f);
    // Small pieces over the whole disk with small gaps between them: few long windows, each
    // longer than the download queue holds.
    let grains = f.capacity_sectors / 8;
    let spread: Vec<(u64, Kind)> = (2..grains).step_by(4).map(|g| (g, Kind::Data)).collect();
    let d2 = cowd_child(&f, "d2", 0xd2, (0xd1, "d1.vmdk"), 8, &spread);
    // Delta 1 written directly: the volume is no longer the base, so delta 2's gaps are
    // downloaded from the volume.
    ok(
        &im.stage2(&[&d1], &["--no-start", "--io", "direct"]),
        "delta 1",
    );
    let mut args = stage2_args(&im, &[&d2], "stream");
    args.push("-v".into());
    let out = run_env(&args, &[("VMDKIMPORT_TEST_HOLD_UPLOAD", "1")]);
    let text = ok(&out, "delta 2 through held streams");
    assert!(text.contains("io=stream"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the download's queue is full"),
        "the hold happened: {err}"
    );
    assert!(!text.contains("gap_bytes=0 "), "gaps were refilled: {text}");
    assert_same(&im.read(), &qemu_read(&d2), "after delta 2");
}
