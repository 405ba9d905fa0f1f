//! Library-level behaviour: chain resolution, base images, memory bounds on huge sparse deltas.

use std::io::Read;
use std::process::Command;

use super::util::fixtures::*;
use super::util::*;
use vmdkimport::vmdk::{resolve_chain, BaseImage, Chain, OpenOptions, Source};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn resolve_chain_refuses_loops_and_foreign_parents() {
    let f = Folder::base(4096);
    let ext = "RW 4096 VMFSSPARSE \"x-delta.vmdk\"".to_string();
    f.write(
        "a.vmdk",
        &descriptor(
            1,
            Some((2, "b.vmdk")),
            "vmfsSparse",
            std::slice::from_ref(&ext),
        ),
    );
    f.write(
        "b.vmdk",
        &descriptor(
            2,
            Some((1, "a.vmdk")),
            "vmfsSparse",
            std::slice::from_ref(&ext),
        ),
    );
    let e = resolve_chain(&f.path("a.vmdk"), &OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("the chain loops back"), "{e}");
    f.write(
        "c.vmdk",
        &descriptor(
            3,
            Some((0xdead, "base.vmdk")),
            "vmfsSparse",
            std::slice::from_ref(&ext),
        ),
    );
    let e = resolve_chain(&f.path("c.vmdk"), &OpenOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("parentCID 0000dead does not match the CID 05d2667d"),
        "{e}"
    );
    f.write(
        "d.vmdk",
        &descriptor(3, Some((BASE_CID, "../base.vmdk")), "vmfsSparse", &[ext]),
    );
    let e = resolve_chain(&f.path("d.vmdk"), &OpenOptions::default()).unwrap_err();
    assert!(e.to_string().contains("contains `..`"), "{e}");
    let r = resolve_chain(&f.path("base.vmdk"), &OpenOptions::default()).unwrap();
    assert!(r.deltas.is_empty());
}

#[test]
fn base_images_read_whole() {
    let f = Folder::base(4096);
    let flat = std::fs::read(f.path("base-flat.vmdk")).unwrap();
    let read_all = |b: &BaseImage| {
        let mut v = Vec::new();
        b.reader().unwrap().read_to_end(&mut v).unwrap();
        v
    };
    let opts = OpenOptions::default();
    let b = BaseImage::open(&f.path("base.vmdk"), &opts).unwrap();
    assert_eq!((b.capacity, b.cid), (4096 * 512, Some(BASE_CID)));
    assert!(read_all(&b) == flat);
    let b = BaseImage::open(&f.path("base-flat.vmdk"), &opts).unwrap();
    assert_eq!((b.capacity, b.cid), (4096 * 512, None));
    assert!(read_all(&b) == flat);
    // FLAT then ZERO extents.
    f.write(
        "z.vmdk",
        &descriptor(
            9,
            None,
            "monolithicFlat",
            &[
                "RW 100 FLAT \"base-flat.vmdk\" 0".into(),
                "RW 50 ZERO".into(),
            ],
        ),
    );
    let b = BaseImage::open(&f.path("z.vmdk"), &opts).unwrap();
    let mut want = flat[..100 * 512].to_vec();
    want.resize(150 * 512, 0);
    assert!(read_all(&b) == want);
    // Random access gives the same bytes, across the FLAT/ZERO border too.
    for (at, len) in [
        (0usize, 512usize),
        (99 * 512 + 7, 1000),
        (120 * 512, 30 * 512),
    ] {
        let mut got = vec![0xeeu8; len];
        b.read_at(at as u64, &mut got).unwrap();
        assert!(got == want[at..at + len], "read_at({at}, {len})");
    }
    assert!(
        b.read_at(150 * 512 - 1, &mut [0u8; 2]).is_err(),
        "past the end"
    );
    // A monolithicSparse base made by qemu-img.
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk"])
        .arg(f.path("base-flat.vmdk"))
        .arg(f.path("mono.vmdk"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let b = BaseImage::open(&f.path("mono.vmdk"), &opts).unwrap();
    assert_eq!(b.create_type.as_deref(), Some("monolithicSparse"));
    assert!(read_all(&b) == flat);
    let mut got = vec![0u8; 70_000];
    b.read_at(1_000_001, &mut got).unwrap();
    assert!(
        got == flat[1_000_001..1_070_001],
        "read_at on a sparse base"
    );
    // A delta is not a base.
    write_cowd(
        &f.path("d-delta.vmdk"),
        4096,
        1,
        &[(1, Kind::Data)],
        &mut pattern(1),
        &Default::default(),
    )
    .unwrap();
    let e = BaseImage::open(&f.path("d-delta.vmdk"), &opts).unwrap_err();
    assert!(
        e.to_string().contains("a delta extent, not a base disk"),
        "{e}"
    );
}

/// A 64 TiB SEsparse delta and a 2 TiB COWD delta with a few grains are read with a few MiB.
#[test]
fn huge_sparse_deltas_are_read_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let se = dir.path().join("huge-sesparse.vmdk");
    let cap = 64u64 << 40;
    let last = cap / 4096 - 1;
    let grains = [
        (last, Kind::Data),
        (0, Kind::Data),
        (1 << 24, Kind::Zero),
        (1 << 24 | 1, Kind::Data),
    ];
    write_sesparse(
        &se,
        cap / 512,
        &grains,
        &mut pattern(1),
        &Default::default(),
    )
    .unwrap();
    let chain = Chain::open_deltas(&[se], &OpenOptions::default()).unwrap();
    assert_eq!(chain.capacity(), cap);
    let pieces: Vec<_> = chain.pieces().map(Result::unwrap).collect();
    let shape: Vec<_> = pieces
        .iter()
        .map(|p| (p.offset / 4096, p.len, matches!(p.source, Source::Zeros)))
        .collect();
    assert_eq!(
        shape,
        [
            (0, 4096, false),
            (1 << 24, 4096, true),
            (1 << 24 | 1, 4096, false),
            (last, 4096, false)
        ]
    );

    let cowd = dir.path().join("huge-delta.vmdk");
    let sectors = u32::MAX as u64;
    write_cowd(
        &cowd,
        sectors,
        1,
        &[(sectors - 1, Kind::Data), (5, Kind::Data)],
        &mut pattern(2),
        &Default::default(),
    )
    .unwrap();
    let chain = Chain::open_deltas(&[cowd], &OpenOptions::default()).unwrap();
    let pieces: Vec<_> = chain.pieces().map(Result::unwrap).collect();
    assert_eq!(pieces.len(), 2);
    assert_eq!(pieces[1].offset, (sectors - 1) * 512);
    assert!(
        peak_rss_kib() < 64 * 1024,
        "peak RSS {} KiB",
        peak_rss_kib()
    );
}
