//! The bad-input table: every refusal names the problem, and the target is left untouched.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::util::fixtures::*;
use super::util::*;

/// Run the binary on `args`; it must fail with exit 1, one line naming `expect`, and leave the
/// target's bytes and size as they were.
pub(super) fn refuse(f: &Folder, args: &[&Path], expect: &str) {
    let target = f.target();
    let before = std::fs::read(&target).unwrap();
    let out = apply(&target, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a refusal naming {expect:?}, got: {err}"
    );
    assert!(err.starts_with("virt-vmdkimport: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(std::fs::read(&target).unwrap() == before, "target changed");
}

pub(super) fn patch(path: &Path, at: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

const CAP: u64 = 3 * 4096;

/// Base plus a COWD child with data grains in tables 0 and 2 (grain 1 sector).
fn cowd(unclean: bool) -> (Folder, PathBuf, PathBuf) {
    let f = Folder::base(CAP);
    let grains = [(3, Kind::Data), (4, Kind::Data), (9000, Kind::Data)];
    let ep = f.path("vm-000001-delta.vmdk");
    write_cowd(
        &ep,
        CAP,
        1,
        &grains,
        &mut pattern(1),
        &CowdOptions {
            unclean_shutdown: unclean,
        },
    )
    .unwrap();
    let d = descriptor(
        0x31,
        Some((BASE_CID, "base.vmdk")),
        "vmfsSparse",
        &[format!("RW {CAP} VMFSSPARSE \"vm-000001-delta.vmdk\"")],
    );
    let dp = f.write("vm-000001.vmdk", &d);
    (f, dp, ep)
}

/// Layout of [`cowd`]'s extent: GD at sector 4 (one sector), tables 0 and 2 at sectors 5 and 37.
const COWD_GT0: u64 = 5 * 512;
const COWD_GT2: u64 = 37 * 512;

fn sesparse(opts: SeSparseOptions) -> (Folder, PathBuf, PathBuf) {
    let f = Folder::base(CAP);
    let grains = [(1, Kind::Data), (2, Kind::Zero), (1500, Kind::Data)];
    let (d, e) = f.sesparse_child("vm-000001", 0x41, (BASE_CID, "base.vmdk"), &grains, &opts);
    (f, d, e)
}

/// Sector of the first SEsparse grain table in [`sesparse`]'s extent (GD is one sector).
const SES_GT0: u64 = (SESPARSE_GD_SECTOR + 1) * 512;

#[test]
fn cowd_unclean_shutdown() {
    let (f, d, _) = cowd(true);
    refuse(&f, &[&d], "uncleanShutdown is set");
}

#[test]
fn sesparse_journal_replay() {
    let (f, d, _) = sesparse(SeSparseOptions {
        replay_journal: true,
        ..Default::default()
    });
    refuse(&f, &[&d], "journal replay");
}

#[test]
fn wrong_magic_and_version() {
    let (f, d, e) = cowd(false);
    patch(&e, 4, &2u32.to_le_bytes());
    refuse(&f, &[&d], "COWD version 2");
    patch(&e, 0, b"XOWD");
    refuse(&f, &[&d], "wrong magic: not a COWD extent");
    refuse(&f, &[&e], "not a VMware delta");
    let (f, d, e) = sesparse(Default::default());
    patch(&e, 8, &3u64.to_le_bytes());
    refuse(&f, &[&d], "SEsparse version 0x3");
}

#[test]
fn grain_table_outside_the_file() {
    let (f, d, e) = cowd(false);
    patch(&e, 4 * 512 + 2 * 4, &0x00ff_ffffu32.to_le_bytes());
    refuse(
        &f,
        &[&d],
        "grain directory entry 2 points past the end of the file",
    );
}

#[test]
fn grain_outside_the_file_in_a_late_table_writes_nothing() {
    // Table 0 is fine and would be written first; the bad pointer is in table 2.
    let (f, d, e) = cowd(false);
    patch(
        &e,
        COWD_GT2 + (9000 - 8192) * 4,
        &0x00ff_ffffu32.to_le_bytes(),
    );
    refuse(
        &f,
        &[&d],
        "grain table 2 entry 808 points past the end of the file",
    );
}

#[test]
fn gd_entries_do_not_fit_the_capacity() {
    let (f, d, e) = cowd(false);
    patch(&e, 24, &1u32.to_le_bytes());
    refuse(
        &f,
        &[&d],
        "grain directory has 1 entries but the capacity of 6291456 bytes needs 3",
    );
}

#[test]
fn capacity_differs_between_child_and_parent() {
    let (f, d1, _) = cowd(false);
    let small = CAP - 8;
    write_cowd(
        &f.path("x-delta.vmdk"),
        small,
        1,
        &[(1, Kind::Data)],
        &mut pattern(2),
        &Default::default(),
    )
    .unwrap();
    let d2 = f.write(
        "vm-000002.vmdk",
        &descriptor(
            0x32,
            Some((0x31, "vm-000001.vmdk")),
            "vmfsSparse",
            &[format!("RW {small} VMFSSPARSE \"x-delta.vmdk\"")],
        ),
    );
    refuse(
        &f,
        &[&d1, &d2],
        "capacity 6287360 bytes differs from its parent",
    );
    // An extent whose header disagrees with its descriptor line.
    let d3 = f.write(
        "vm-000003.vmdk",
        &descriptor(
            0x33,
            Some((0x31, "vm-000001.vmdk")),
            "vmfsSparse",
            &[format!("RW {CAP} VMFSSPARSE \"x-delta.vmdk\"")],
        ),
    );
    refuse(&f, &[&d3], "holds 6287360 bytes but the line says 6291456");
}

#[test]
fn truncated_files() {
    let (f, d, e) = cowd(false);
    let len = std::fs::metadata(&e).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&e)
        .unwrap()
        .set_len(len - 512)
        .unwrap();
    refuse(&f, &[&d], "points past the end of the file");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&e)
        .unwrap()
        .set_len(1000)
        .unwrap();
    refuse(&f, &[&d], "truncated: 1000 bytes");
    let (f, d, e) = sesparse(Default::default());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&e)
        .unwrap()
        .set_len(4096)
        .unwrap();
    refuse(&f, &[&d], "past the end of the file");
}

#[test]
fn unsupported_extents_are_named() {
    let f = Folder::base(CAP);
    for (kind, create) in [
        ("VMFSRDM", "vmfsRDM"),
        ("VMFSRAW", "vmfsRaw"),
        ("VSANSPARSE", "vsanSparse"),
    ] {
        let d = f.write(
            "odd.vmdk",
            &descriptor(
                1,
                Some((BASE_CID, "base.vmdk")),
                create,
                &[format!("RW {CAP} {kind} \"base-flat.vmdk\"")],
            ),
        );
        refuse(&f, &[&d], &format!("unsupported extent type {kind}"));
    }
    let d = f.write(
        "so.vmdk",
        &descriptor(
            1,
            None,
            "streamOptimized",
            &[format!("RW {CAP} SPARSE \"base-flat.vmdk\"")],
        ),
    );
    refuse(&f, &[&d], "streamOptimized");
    let d = f.write(
        "flat.vmdk",
        &descriptor(
            1,
            None,
            "vmfs",
            &[format!("RW {CAP} VMFS \"base-flat.vmdk\"")],
        ),
    );
    refuse(&f, &[&d], "VMFS extent in a delta");
    let k = f.path("compressed.vmdk");
    let opts = HostedOptions {
        grain_sectors: 128,
        zeroed_grain: false,
        descriptor: None,
        compressed_flag: true,
    };
    write_hosted(&k, CAP, &[(1, Kind::Data)], &mut pattern(3), &opts).unwrap();
    refuse(&f, &[&k], "compressed grains (streamOptimized)");
}

#[test]
fn parent_cid_mismatch() {
    let (f, d1, _) = cowd(false);
    let (d2, _) = f.cowd_child(
        "vm-000002",
        0x32,
        (0x99, "vm-000001.vmdk"),
        8,
        &[(7, Kind::Data)],
    );
    refuse(
        &f,
        &[&d1, &d2],
        "parentCID 00000099 does not match the CID 00000031",
    );
}

#[test]
fn names_may_not_leave_the_folder() {
    let (f, _, _) = cowd(false);
    for (name, expect) in [
        ("../../etc/passwd", "contains `..`"),
        ("/etc/passwd", "is absolute"),
        ("sub/../../x", "contains `..`"),
    ] {
        let d = f.write(
            "evil.vmdk",
            &descriptor(
                1,
                Some((BASE_CID, "base.vmdk")),
                "vmfsSparse",
                &[format!("RW {CAP} VMFSSPARSE \"{name}\"")],
            ),
        );
        refuse(&f, &[&d], expect);
    }
    // A symlink inside the folder that leads out of it.
    let outside = tempfile::tempdir().unwrap();
    let real = outside.path().join("real-delta.vmdk");
    std::fs::copy(f.path("vm-000001-delta.vmdk"), &real).unwrap();
    std::os::unix::fs::symlink(&real, f.path("link-delta.vmdk")).unwrap();
    let d = f.write(
        "link.vmdk",
        &descriptor(
            1,
            Some((BASE_CID, "base.vmdk")),
            "vmfsSparse",
            &[format!("RW {CAP} VMFSSPARSE \"link-delta.vmdk\"")],
        ),
    );
    refuse(&f, &[&d], "leads outside the folder through a symlink");
    // The explicit flag allows it.
    let target = f.target();
    let out = std::process::Command::new(BIN)
        .arg("--allow-outside-paths")
        .arg("--target")
        .arg(&target)
        .arg(&d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hostile_header_sizes_are_refused_before_allocating() {
    let (f, d, e) = cowd(false);
    patch(&e, 12, &u32::MAX.to_le_bytes());
    patch(&e, 24, &u32::MAX.to_le_bytes());
    patch(&e, 16, &1u32.to_le_bytes());
    refuse(&f, &[&e], "past the end of the file");
    patch(&e, 16, &u32::MAX.to_le_bytes());
    refuse(&f, &[&e], "grain size");
    let _ = d;

    let (f, _, e) = sesparse(Default::default());
    patch(&e, 136, &(1u64 << 40).to_le_bytes());
    refuse(&f, &[&e], "grain directory ends at byte");
    patch(&e, 136, &u64::MAX.to_le_bytes());
    refuse(&f, &[&e], "grain directory overflows");

    let k = f.path("k.vmdk");
    let opts = HostedOptions {
        grain_sectors: 8,
        zeroed_grain: false,
        descriptor: None,
        compressed_flag: false,
    };
    write_hosted(&k, CAP, &[(1, Kind::Data)], &mut pattern(3), &opts).unwrap();
    patch(&k, 44, &u32::MAX.to_le_bytes());
    refuse(&f, &[&k], "entries per grain table");
    patch(&k, 44, &512u32.to_le_bytes());
    patch(&k, 12, &(1u64 << 60).to_le_bytes());
    refuse(&f, &[&k], "capacity overflows");
    patch(&k, 12, &(1u64 << 50).to_le_bytes());
    refuse(&f, &[&k], "exceeds the maximum of 1125899906842624");
    patch(&k, 12, &(1u64 << 40).to_le_bytes());
    refuse(&f, &[&k], "past the end of the file");
}

#[test]
fn corrupt_sesparse_entries() {
    let (f, d, e) = sesparse(Default::default());
    patch(&e, SES_GT0 + 1500 * 8, &(5u64 << 60).to_le_bytes());
    refuse(&f, &[&d], "grain table 0 entry 1500 is corrupt");
    patch(
        &e,
        SES_GT0 + 1500 * 8,
        &((3u64 << 60) | 0x0000_0fff_ffff_ffff).to_le_bytes(),
    );
    refuse(&f, &[&d], "outside the grain area");
    patch(
        &e,
        SESPARSE_GD_SECTOR * 512,
        &0x2000_0000_0000_0000u64.to_le_bytes(),
    );
    refuse(&f, &[&d], "grain directory entry 0 is corrupt");
}

#[test]
fn target_smaller_than_the_disk() {
    let (f, d, _) = cowd(false);
    let target = f.target();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap()
        .set_len(CAP * 512 - 512)
        .unwrap();
    let before = std::fs::read(&target).unwrap();
    let out = apply(&target, &[&d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("smaller than the disk's 6291456 bytes"));
    assert!(std::fs::read(&target).unwrap() == before);
}

#[test]
fn chain_shape_errors() {
    let (f, d, _) = cowd(false);
    refuse(&f, &[&d, &d], "given twice");
    let many: Vec<&Path> = std::iter::repeat_n(d.as_path(), 65).collect();
    refuse(&f, &many, "maximum chain depth of 64");
    let bad = f.write(
        "bad.vmdk",
        "# Disk DescriptorFile\nCID=1\ncreateType=\"vmfsSparse\"\nRW 10 VMFSSPARSE x-delta.vmdk\n",
    );
    refuse(
        &f,
        &[&bad],
        "bad.vmdk: line 4: extent file name must be quoted",
    );
    let _ = COWD_GT0;
}

#[test]
fn oversized_descriptor() {
    let f = Folder::base(CAP);
    let mut text = b"# Disk DescriptorFile\nCID=1\n".to_vec();
    text.resize(2 << 20, b'#');
    let d = f.path("big.vmdk");
    std::fs::write(&d, text).unwrap();
    refuse(
        &f,
        &[&d],
        "larger than 1048576 bytes: not a VMware descriptor",
    );
}
