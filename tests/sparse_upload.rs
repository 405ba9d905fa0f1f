//! Base uploads that skip known zeros unread (holes of sparse files, ZERO extents, unallocated
//! grains) still write every byte of the volume: nothing a previous user left survives.

mod util;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use util::assert_same;
use util::fixtures::{descriptor, pattern, write_hosted, HostedOptions, Kind};
use util::libvirt::TestPool;
use util::libvirt::{fill_volume, read_volume};
use vmdkimport::libvirt::upload_image;
use vmdkimport::vmdk::{BaseImage, OpenOptions};

const MIB: u64 = 1 << 20;

/// Bytes that are never zero.
fn data(seed: u8, len: u64) -> Vec<u8> {
    (0..len as usize)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 | 1)
        .collect()
}

/// Whether `path` starts with a hole (the file system keeps holes).
fn has_leading_hole(path: &Path) -> bool {
    let f = File::open(path).unwrap();
    matches!(
        nix::unistd::lseek(f.as_fd(), 0, nix::unistd::Whence::SeekData),
        Ok(d) if d > 0
    ) || nix::unistd::lseek(f.as_fd(), 0, nix::unistd::Whence::SeekData)
        == Err(nix::errno::Errno::ENXIO)
}

/// A sparse file of `len` bytes with `pieces` (offset, bytes) written and holes elsewhere;
/// returns the bytes it reads as.
fn sparse_file(path: &Path, len: u64, pieces: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let f = File::create(path).unwrap();
    f.set_len(len).unwrap();
    let mut want = vec![0u8; len as usize];
    for (at, bytes) in pieces {
        f.write_all_at(bytes, *at).unwrap();
        want[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
    }
    want
}

/// Upload `base` into a fresh volume of `cap` bytes that first held a 0x5A pattern, check
/// the volume reads as `want` then zeros, and return the bytes skipped unread.
fn upload_over_stale(tp: &TestPool, tag: &str, base: &BaseImage, want: &[u8], cap: u64) -> u64 {
    let vol = tp.volume(tag, cap);
    fill_volume(&vol, 0x5a);
    let mut seen = 0;
    let stats = upload_image(&vol, &mut base.reader().unwrap(), &mut |n| seen = n)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stats.bytes_read, base.capacity, "{tag}: covered the base");
    assert_eq!(seen, base.capacity, "{tag}: progress reached the end");
    assert_eq!(stats.data_bytes + stats.hole_bytes, cap, "{tag}: {stats:?}");
    assert!(stats.bytes_skipped <= stats.hole_bytes, "{tag}: {stats:?}");
    assert_eq!(
        vol.capacity().unwrap(),
        cap,
        "{tag}: the volume keeps its size"
    );
    let got = read_volume(&vol);
    let mut expected = want.to_vec();
    expected.resize(cap as usize, 0);
    assert_same(&got, &expected, tag);
    assert!(
        !got.contains(&0x5a) || want.contains(&0x5a),
        "{tag}: stale bytes"
    );
    stats.bytes_skipped
}

#[test]
fn a_sparse_flat_file_skips_its_holes_and_leaves_no_stale_byte() {
    let tp = TestPool::new("sparse");
    let path = tp.path("base-flat.raw");
    // A hole at the start (the first 4 KiB still go as data), a 4 KiB island, data with an
    // odd end, zeros written out (allocated: found by the zero check, not by SEEK_DATA), a
    // data run, and a hole up to an odd-sized end.
    let len = 20 * MIB + 3 * 4096 + 100;
    let want = sparse_file(
        &path,
        len,
        &[
            (3 * MIB, data(1, 4096)),
            (5 * MIB + 65536, data(2, 2 * MIB - 65536 + 1000)),
            (9 * MIB, vec![0u8; MIB as usize]),
            (12 * MIB, data(3, MIB / 2)),
        ],
    );
    let holes = has_leading_hole(&path);
    let base = BaseImage::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(base.capacity, len);
    // A volume larger than the image: the tail past it must read zeros as well.
    let skipped = upload_over_stale(&tp, "flat", &base, &want, 24 * MIB);
    if holes {
        assert!(skipped >= 14 * MIB, "only {skipped} bytes skipped");
    } else {
        eprintln!("no holes on this file system: nothing skipped ({skipped})");
    }

    // The same file as a plain `File` (what a test or a caller with a raw image passes).
    let vol = tp.volume("file", 24 * MIB);
    fill_volume(&vol, 0x5a);
    let stats = upload_image(&vol, &mut File::open(&path).unwrap(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stats.bytes_read, len);
    if holes {
        assert!(stats.bytes_skipped >= 14 * MIB, "{stats:?}");
    }
    let mut expected = want.clone();
    expected.resize(24 * MIB as usize, 0);
    assert_same(&read_volume(&vol), &expected, "plain file");
}

#[test]
fn an_all_hole_base_sends_data_only_for_its_first_block() {
    let tp = TestPool::new("allhole");
    let path = tp.path("empty-flat.raw");
    let want = sparse_file(&path, 16 * MIB, &[]);
    let holes = has_leading_hole(&path);
    let base = BaseImage::open(&path, &OpenOptions::default()).unwrap();
    let vol = tp.volume("disk", 16 * MIB);
    fill_volume(&vol, 0x5a);
    let stats = upload_image(&vol, &mut base.reader().unwrap(), &mut |_| {})
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stats.bytes_read, 16 * MIB);
    // Only the forced first 4 KiB of a file volume go as data.
    assert_eq!(stats.data_bytes, 4096, "{stats:?}");
    if holes {
        assert_eq!(stats.bytes_skipped, 16 * MIB, "{stats:?}");
    }
    assert_same(&read_volume(&vol), &want, "all-hole base");
}

#[test]
fn zero_extents_and_unallocated_grains_are_skipped_and_read_as_zeros() {
    let tp = TestPool::new("zeroext");
    let dir = &tp.dir;
    // FLAT 2 MiB (data then a hole) | ZERO 3 MiB | hosted SPARSE 2 MiB (data, zero and
    // unallocated grains) | FLAT 1 MiB at 1 MiB of its file (a hole, data at the very end).
    let a = sparse_file(&dir.join("a-flat.vmdk"), 2 * MIB, &[(0, data(4, MIB))]);
    let c = sparse_file(
        &dir.join("c-flat.vmdk"),
        2 * MIB + 4096,
        &[(2 * MIB - 512, data(5, 4096 + 512))],
    );
    let grain_sectors = 128u64; // 64 KiB grains
    let grains = [
        (0, Kind::Data),
        (5, Kind::Zero),
        (6, Kind::Data),
        (31, Kind::Data),
    ];
    write_hosted(
        &dir.join("b-s001.vmdk"),
        2 * MIB / 512,
        &grains,
        &mut pattern(9),
        &HostedOptions {
            grain_sectors,
            zeroed_grain: true,
            descriptor: None,
            compressed_flag: false,
        },
    )
    .unwrap();
    let mut b = vec![0u8; 2 * MIB as usize];
    let mut fill = pattern(9);
    for (g, kind) in grains {
        if kind == Kind::Data {
            let at = (g * grain_sectors * 512) as usize;
            fill(g, &mut b[at..at + (grain_sectors * 512) as usize]);
        }
    }
    let d = descriptor(
        0x1234,
        None,
        "monolithicFlat",
        &[
            "RW 4096 FLAT \"a-flat.vmdk\" 0".into(),
            "RW 6144 ZERO".into(),
            "RW 4096 SPARSE \"b-s001.vmdk\"".into(),
            "RW 2048 FLAT \"c-flat.vmdk\" 2048".into(),
        ],
    );
    std::fs::write(dir.join("base.vmdk"), d).unwrap();
    let mut want = a;
    want.extend(vec![0u8; 3 * MIB as usize]);
    want.extend(&b);
    want.extend(&c[MIB as usize..2 * MIB as usize]);

    let base = BaseImage::open(&dir.join("base.vmdk"), &OpenOptions::default()).unwrap();
    assert_eq!(base.capacity, 8 * MIB);
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut base.reader().unwrap(), &mut plain).unwrap();
    assert_same(&plain, &want, "the base read plainly");
    let skipped = upload_over_stale(&tp, "disk", &base, &want, 9 * MIB);
    // The ZERO extent and the hosted extent's 29 empty grains at least, whatever the file
    // system does with holes.
    assert!(
        skipped >= 3 * MIB + 29 * 65536,
        "only {skipped} bytes skipped"
    );
}
