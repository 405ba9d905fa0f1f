//! The qcow2 overlay of a chain: `qemu-img check` finds it clean, and read over its raw base it
//! gives what `qemu-img convert` reads from the VMware chain.

use std::path::Path;
use std::process::Command;

use crate::util::fixtures::*;
use crate::util::import::qemu_child;
use crate::util::*;
use vmdkimport::qcow2;
use vmdkimport::vmdk::{Chain, OpenOptions};

const MIXED: &[Kind] = &[Kind::Data, Kind::Data, Kind::Zero, Kind::Unmapped];

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Build the overlay of `deltas` over the folder's raw base, check it, and compare its
/// reading with qemu-img's reading of `top`; returns the layout.
fn assert_overlay_matches_qemu(f: &Folder, top: &Path, deltas: &[&Path]) -> qcow2::Layout {
    let paths: Vec<_> = deltas.iter().map(|p| p.to_path_buf()).collect();
    let chain = Chain::open_deltas(&paths, &OpenOptions::default()).unwrap();
    let base = f.path("base-flat.vmdk");
    let img = f.path("overlay.qcow2");
    let layout = qcow2::write_file(&chain, base.to_str().unwrap(), &img).unwrap();
    let img_s = img.to_str().unwrap();
    qemu_img(&["check", "-f", "qcow2", img_s]);
    let info = qemu_img(&["info", "--output=json", "-f", "qcow2", img_s]);
    let ext = format!("\"extended-l2\": {}", layout.geometry.extended);
    assert!(info.contains(&ext), "{ext} in {info}");
    let cs = format!("\"cluster-size\": {}", layout.geometry.cluster());
    assert!(info.contains(&cs), "{cs} in {info}");
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    let raw = f.path("overlay-read.raw");
    qemu_img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        img_s,
        raw.to_str().unwrap(),
    ]);
    let want = qemu_read(top);
    assert!(
        want != std::fs::read(&base).unwrap(),
        "the chain changes nothing: the test would prove nothing"
    );
    assert_same(
        &std::fs::read(&raw).unwrap(),
        &want,
        "overlay over the base",
    );
    // Exactly the changed bytes are in the overlay: what it maps itself (data and zeros)
    // is what the chain changed.
    let survey = vmdkimport::apply::survey(&chain).unwrap();
    let map = qemu_img(&["map", "--output=json", "-f", "qcow2", img_s]);
    let own: u64 = map
        .lines()
        .filter(|l| l.contains("\"depth\": 0"))
        .map(|l| {
            let len = l.split("\"length\": ").nth(1).unwrap();
            len[..len.find(',').unwrap()].parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(own, survey.data_bytes + survey.zero_bytes, "{map}");
    layout
}

#[test]
fn cowd_512_byte_grains_become_subclusters_over_the_raw_base() {
    let f = Folder::base(16384);
    let grains = scatter(&mut Rng(11), 16384, 900, MIXED);
    let (desc, _) = f.cowd_child("vm-000001", 0x21, (BASE_CID, "base.vmdk"), 1, &grains);
    let l = assert_overlay_matches_qemu(&f, &desc, &[&desc]);
    assert!(l.geometry.extended && l.geometry.sub() == 512, "{l:?}");
    let file = std::fs::metadata(f.path("overlay.qcow2")).unwrap().len();
    assert_eq!(file, l.len());
}

#[test]
fn a_two_delta_sesparse_chain_keeps_the_lower_deltas_data_in_4k_clusters() {
    let f = Folder::base(16384);
    let g1 = scatter(&mut Rng(12), 2048, 300, MIXED);
    let g2 = scatter(&mut Rng(13), 2048, 200, MIXED);
    let (d1, _) = f.sesparse_child(
        "vm-000001",
        0x31,
        (BASE_CID, "base.vmdk"),
        &g1,
        &Default::default(),
    );
    let (d2, _) = f.sesparse_child(
        "vm-000002",
        0x32,
        (0x31, "vm-000001.vmdk"),
        &g2,
        &Default::default(),
    );
    let l = assert_overlay_matches_qemu(&f, &d2, &[&d1, &d2]);
    assert!(
        !l.geometry.extended && l.geometry.cluster() == 4096,
        "{l:?}"
    );
}

#[test]
fn a_hosted_sparse_child_with_zeroed_grains_hides_the_base() {
    let f = Folder::base(16384);
    let top = qemu_child(
        &f,
        "vm-000001",
        &[
            "write -P 0x5a 0 64k",
            "write -z 1m 128k",
            "write -P 0x33 8000k 192k",
        ],
    );
    let l = assert_overlay_matches_qemu(&f, &top, &[&top]);
    assert!(!l.geometry.extended, "{l:?}");
}
