//! Integration tests: fixtures built from the layouts, checked against qemu-img, and refusals.

mod util;

use std::path::Path;
use std::process::Command;

use util::fixtures::*;
use util::*;
use vmdkimport::vmdk::{resolve_chain, BaseImage, Chain, LayerKind, OpenOptions, Source};

const DATA: &[Kind] = &[Kind::Data, Kind::Data, Kind::Data];
const DATA_ZERO_UNMAPPED: &[Kind] = &[Kind::Data, Kind::Data, Kind::Zero, Kind::Unmapped];

#[test]
fn cowd_grain_1_with_partial_last_table_matches_qemu() {
    // 3 full tables of 4096 sectors and a partial fourth.
    let f = Folder::base(3 * 4096 + 123);
    let grains = scatter(&mut Rng(1), f.capacity_sectors, 400, DATA);
    let (desc, extent) = f.cowd_child("vm-000001", 0x11, (BASE_CID, "base.vmdk"), 1, &grains);
    assert_matches_qemu(&f, &desc, &[&desc]);
    // The bare extent gives the same bytes.
    assert_matches_qemu(&f, &desc, &[&extent]);
}

#[test]
fn cowd_grain_8_out_of_order_matches_qemu() {
    let f = Folder::base(40_000);
    let grains = scatter(&mut Rng(2), 40_000 / 8, 300, DATA);
    let (desc, _) = f.cowd_child("vm-000001", 0x12, (BASE_CID, "base.vmdk"), 8, &grains);
    assert_matches_qemu(&f, &desc, &[&desc]);
}

#[test]
fn crlf_nul_padded_odd_case_descriptor_reads_the_same() {
    let f = Folder::base(3 * 4096);
    let grains = scatter(&mut Rng(7), 3 * 4096, 100, DATA);
    let (desc, _) = f.cowd_child("vm-000001", 0x14, (BASE_CID, "base.vmdk"), 1, &grains);
    let want = assert_matches_qemu(&f, &desc, &[&desc]);
    let text = std::fs::read_to_string(&desc).unwrap();
    let mut odd = text
        .replace("CID=", "cid=")
        .replace("parentcid=", "PARENTCID=")
        .replace("createType", "CREATETYPE")
        .replace('\n', "\r\n")
        .into_bytes();
    odd.resize(odd.len() + 1000, 0);
    std::fs::write(&desc, odd).unwrap();
    let target = f.target();
    let out = apply(&target, &[&desc]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&target).unwrap() == want);
}

#[test]
fn cowd_entry_one_is_a_zeroed_grain_not_sector_one() {
    // Documented decision (src/vmdk/cowd.rs): entry 1 hides the parent with zeros. qemu-img
    // reads sector 1 of the delta instead, so the expectation is qemu's bytes with those
    // grains zeroed.
    let f = Folder::base(2 * 4096);
    let grains = vec![
        (5, Kind::Data),
        (9, Kind::Zero),
        (10, Kind::Zero),
        (4100, Kind::Zero),
        (11, Kind::Data),
    ];
    let (desc, _) = f.cowd_child("vm-000001", 0x13, (BASE_CID, "base.vmdk"), 1, &grains);
    let mut expected = qemu_read(&desc);
    for g in [9usize, 10, 4100] {
        expected[g * 512..(g + 1) * 512].fill(0);
    }
    let target = f.target();
    let out = apply(&target, &[&desc]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&target).unwrap() == expected);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1536 zero bytes"), "{stdout}");
}

#[test]
fn sesparse_zero_unmapped_high_clusters_partial_table_matches_qemu() {
    // A full 16 MiB table and a partial second; clusters numbered from 5000 (> 4095).
    let f = Folder::base(32768 + 1000);
    let grains = scatter(&mut Rng(3), f.capacity_sectors / 8, 500, DATA_ZERO_UNMAPPED);
    let opts = SeSparseOptions {
        cluster_base: 5000,
        ..Default::default()
    };
    let (desc, extent) =
        f.sesparse_child("vm-000001", 0x21, (BASE_CID, "base.vmdk"), &grains, &opts);
    assert_matches_qemu(&f, &desc, &[&desc]);
    assert_matches_qemu(&f, &desc, &[&extent]);
}

#[test]
fn three_level_chain_matches_qemu_at_once_and_one_by_one() {
    let f = Folder::base(40_000);
    let mut rng = Rng(4);
    let g1 = scatter(&mut rng, 40_000, 600, DATA);
    let g2 = scatter(&mut rng, 40_000 / 8, 200, DATA);
    let g3 = scatter(&mut rng, 40_000 / 8, 200, DATA_ZERO_UNMAPPED);
    let (d1, _) = f.cowd_child("vm-000001", 0x31, (BASE_CID, "base.vmdk"), 1, &g1);
    let (d2, _) = f.cowd_child("vm-000002", 0x32, (0x31, "vm-000001.vmdk"), 8, &g2);
    let (d3, _) = f.sesparse_child(
        "vm-000003",
        0x33,
        (0x32, "vm-000002.vmdk"),
        &g3,
        &Default::default(),
    );
    let all = assert_matches_qemu(&f, &d3, &[&d1, &d2, &d3]);

    let target = f.target();
    for d in [&d1, &d2, &d3] {
        assert!(apply(&target, &[d]).status.success());
    }
    assert!(
        std::fs::read(&target).unwrap() == all,
        "one by one differs from all at once"
    );

    let chain = Chain::open_deltas(
        &[d1.clone(), d2.clone(), d3.clone()],
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(chain.parent_cid(), Some(BASE_CID));
    assert_eq!(chain.cid(), Some(0x33));
    assert_eq!(chain.capacity(), 40_000 * 512);
    let kinds: Vec<_> = chain.layers().iter().map(|l| l.kind).collect();
    assert_eq!(
        kinds,
        [LayerKind::Cowd, LayerKind::Cowd, LayerKind::SeSparse]
    );

    let r = resolve_chain(&d3, &OpenOptions::default()).unwrap();
    assert_eq!(r.base, f.path("base.vmdk").canonicalize().unwrap());
    let names: Vec<_> = r
        .deltas
        .iter()
        .map(|p| p.file_name().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["vm-000001.vmdk", "vm-000002.vmdk", "vm-000003.vmdk"]
    );
}

#[test]
fn pieces_are_ascending_merged_and_disjoint() {
    let f = Folder::base(3 * 4096);
    // Grains 10..20 stored contiguously merge into one piece; 20..22 are zeros; 30 alone.
    let mut grains: Vec<_> = (10..20).map(|g| (g, Kind::Data)).collect();
    grains.extend([
        (20, Kind::Zero),
        (21, Kind::Zero),
        (30, Kind::Data),
        (8000, Kind::Data),
    ]);
    let (desc, _) = f.cowd_child("vm-000001", 0x41, (BASE_CID, "base.vmdk"), 1, &grains);
    let chain = Chain::open_deltas(&[desc], &OpenOptions::default()).unwrap();
    let pieces: Vec<_> = chain.pieces().map(Result::unwrap).collect();
    let shape: Vec<_> = pieces
        .iter()
        .map(|p| {
            (
                p.offset / 512,
                p.len / 512,
                matches!(p.source, Source::Zeros),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (10, 10, false),
            (20, 2, true),
            (30, 1, false),
            (8000, 1, false)
        ]
    );
}

#[test]
fn two_gb_split_sparse_child_over_split_flat_base_matches_qemu() {
    let f = Folder::base(4096 + 4096 + 1000);
    // Base as twoGbMaxExtentFlat: two files, the second with a one-sector prefix (FLAT offset 1).
    let flat = std::fs::read(f.path("base-flat.vmdk")).unwrap();
    std::fs::write(f.path("split-f001.vmdk"), &flat[..5000 * 512]).unwrap();
    let mut second = vec![0xeeu8; 512];
    second.extend_from_slice(&flat[5000 * 512..]);
    std::fs::write(f.path("split-f002.vmdk"), second).unwrap();
    f.write(
        "split.vmdk",
        &descriptor(
            0x77,
            None,
            "twoGbMaxExtentFlat",
            &[
                "RW 5000 FLAT \"split-f001.vmdk\" 0".into(),
                "RW 4192 FLAT \"split-f002.vmdk\" 1".into(),
            ],
        ),
    );
    let sizes = [4096u64, 4096, 1000];
    let mut lines = Vec::new();
    let mut rng = Rng(5);
    for (i, s) in sizes.iter().enumerate() {
        let name = format!("child-s00{}.vmdk", i + 1);
        let grains = scatter(&mut rng, s.div_ceil(8), 60, &[Kind::Data, Kind::Zero]);
        let opts = HostedOptions {
            grain_sectors: 8,
            zeroed_grain: true,
            descriptor: None,
            compressed_flag: false,
        };
        write_hosted(&f.path(&name), *s, &grains, &mut pattern(i as u64), &opts).unwrap();
        lines.push(format!("RW {s} SPARSE \"{name}\""));
    }
    let d = f.write(
        "child.vmdk",
        &descriptor(
            0x78,
            Some((0x77, "split.vmdk")),
            "twoGbMaxExtentSparse",
            &lines,
        ),
    );
    assert_matches_qemu(&f, &d, &[&d]);

    let base = BaseImage::open(&f.path("split.vmdk"), &OpenOptions::default()).unwrap();
    assert_eq!((base.capacity, base.cid), (9192 * 512, Some(0x77)));
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut base.reader().unwrap(), &mut read).unwrap();
    assert!(read == flat, "base reader differs from the flat bytes");
}

fn qemu(args: &[&str], dir: &Path) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn qemu_made_hosted_children_match_qemu() {
    let f = Folder::base(4 * 2048);
    let dir = f.dir.path();
    let create = |child: &str, parent: &str, zeroed: &str| {
        let o = format!("zeroed_grain={zeroed}");
        qemu(
            &[
                "qemu-img", "create", "-q", "-f", "vmdk", "-b", parent, "-F", "vmdk", "-o", &o,
                child,
            ],
            dir,
        );
    };
    // Each child is written before the next is created on top: a write changes a disk's CID.
    create("c1.vmdk", "base.vmdk", "on");
    qemu(
        &[
            "qemu-io",
            "-c",
            "write -P 0xab 1M 64k",
            "-c",
            "write -z 2M 128k",
            "-c",
            "write -P 0x5 3584k 4k",
            "c1.vmdk",
        ],
        dir,
    );
    create("c2.vmdk", "c1.vmdk", "off");
    qemu(
        &[
            "qemu-io",
            "-c",
            "write -P 0xcd 1056k 64k",
            "-c",
            "write -z 0 64k",
            "-c",
            "write -P 0x7 4000k 96k",
            "c2.vmdk",
        ],
        dir,
    );
    let c1 = f.path("c1.vmdk");
    let c2 = f.path("c2.vmdk");
    let got = assert_matches_qemu(&f, &c1, &[&c1]);
    assert_eq!(&got[1 << 20..(1 << 20) + 65536], &[0xab; 65536][..]);
    assert!(got[2 << 20..(2 << 20) + 131072].iter().all(|&b| b == 0));
    assert_matches_qemu(&f, &c2, &[&c1, &c2]);
    let chain = Chain::open_deltas(&[c1.clone(), c2.clone()], &OpenOptions::default()).unwrap();
    assert_eq!(chain.parent_cid(), Some(BASE_CID));
    assert!(chain.layers().iter().all(|l| l.kind == LayerKind::Hosted));
    let r = resolve_chain(&c2, &OpenOptions::default()).unwrap();
    assert_eq!(r.deltas.len(), 2);
}

#[test]
fn repeated_run_gives_the_same_bytes() {
    let f = Folder::base(3 * 4096);
    let grains = scatter(&mut Rng(6), 3 * 4096 / 8, 100, DATA_ZERO_UNMAPPED);
    let (desc, _) = f.sesparse_child(
        "vm-000001",
        0x51,
        (BASE_CID, "base.vmdk"),
        &grains,
        &Default::default(),
    );
    let once = assert_matches_qemu(&f, &desc, &[&desc]);
    let target = f.path("target.raw");
    let out = apply(&target, &[&desc]);
    assert!(out.status.success());
    assert!(std::fs::read(&target).unwrap() == once);
}

#[path = "chain/refusals.rs"]
mod refusals;

#[path = "chain/bad_inputs.rs"]
mod bad_inputs;

#[path = "chain/library.rs"]
mod library;

#[path = "chain/target.rs"]
mod target;
