//! The bad-input table, continued: one malformed input per row, each refused with a message
//! naming the file and the problem, the target left byte-identical (see `refusals`).

use std::path::PathBuf;

use super::refusals::{patch, refuse};
use super::util::fixtures::*;
use super::util::*;

/// Small disks: every row builds its own folder.
const CAP: u64 = 4096;

/// A bare hosted sparse delta (`name`) over the folder's base, optionally with an embedded
/// descriptor whose one extent line says `listed` sectors.
fn hosted(f: &Folder, name: &str, listed: Option<u64>) -> PathBuf {
    let p = f.path(name);
    let text = listed.map(|s| {
        descriptor(
            0x51,
            Some((BASE_CID, "base.vmdk")),
            "monolithicSparse",
            &[format!("RW {s} SPARSE \"{name}\"")],
        )
    });
    let opts = HostedOptions {
        grain_sectors: 8,
        zeroed_grain: false,
        descriptor: text,
        compressed_flag: false,
    };
    write_hosted(&p, CAP, &[(1, Kind::Data)], &mut pattern(5), &opts).unwrap();
    p
}

/// An SEsparse child; returns (descriptor, extent).
fn sesparse(f: &Folder) -> (PathBuf, PathBuf) {
    let grains = [(1, Kind::Data), (2, Kind::Zero)];
    f.sesparse_child(
        "vm-000001",
        0x41,
        (BASE_CID, "base.vmdk"),
        &grains,
        &Default::default(),
    )
}

/// A COWD child; returns (descriptor, extent).
fn cowd(f: &Folder) -> (PathBuf, PathBuf) {
    f.cowd_child(
        "vm-000001",
        0x31,
        (BASE_CID, "base.vmdk"),
        8,
        &[(3, Kind::Data)],
    )
}

/// A child descriptor whose text is the fixture's with `from` replaced by `to`, over a COWD
/// extent that is fine.
fn edited(f: &Folder, from: &str, to: &str) -> PathBuf {
    let (d, _) = cowd(f);
    let text = std::fs::read_to_string(&d).unwrap();
    assert!(text.contains(from), "{from:?} not in the fixture");
    f.write("vm-000001.vmdk", &text.replacen(from, to, 1))
}

/// One row: what to build (returns the paths given to the binary) and what the message says.
type Build = fn(&Folder) -> Vec<PathBuf>;

const TABLE: &[(&str, &str, Build)] = &[
    ("hosted-sparse.vmdk", "compressAlgorithm 1", |f| {
        let p = hosted(f, "hosted-sparse.vmdk", None);
        patch(&p, 77, &1u16.to_le_bytes());
        vec![p]
    }),
    (
        "hosted-sparse.vmdk",
        "differs from its embedded descriptor's extents",
        |f| vec![hosted(f, "hosted-sparse.vmdk", Some(CAP - 8))],
    ),
    (
        "hosted-sparse.vmdk",
        "compressed grains (streamOptimized)",
        |f| {
            let p = hosted(f, "hosted-sparse.vmdk", None);
            patch(&p, 8, &(1u32 | 1 << 17).to_le_bytes());
            vec![p]
        },
    ),
    ("hosted-sparse.vmdk", "hosted sparse version 4", |f| {
        let p = hosted(f, "hosted-sparse.vmdk", None);
        patch(&p, 4, &4u32.to_le_bytes());
        vec![p]
    }),
    ("hosted-sparse.vmdk", "uncleanShutdown is set", |f| {
        let p = hosted(f, "hosted-sparse.vmdk", None);
        patch(&p, 72, &[1]);
        vec![p]
    }),
    (
        "hosted-sparse.vmdk",
        "grain size 3 sectors is not a power of two",
        |f| {
            let p = hosted(f, "hosted-sparse.vmdk", None);
            patch(&p, 20, &3u64.to_le_bytes());
            vec![p]
        },
    ),
    (
        "hosted-sparse.vmdk",
        "grain size 2097152 bytes is outside",
        |f| {
            let p = hosted(f, "hosted-sparse.vmdk", None);
            patch(&p, 20, &4096u64.to_le_bytes());
            vec![p]
        },
    ),
    (
        "hosted-sparse.vmdk",
        "embedded descriptor past the end of the file",
        |f| {
            let p = hosted(f, "hosted-sparse.vmdk", Some(CAP));
            patch(&p, 28, &100_000u64.to_le_bytes());
            vec![p]
        },
    ),
    (
        "hosted-sparse.vmdk",
        "capacity of 0 bytes: not a disk",
        |f| {
            let p = hosted(f, "hosted-sparse.vmdk", None);
            patch(&p, 12, &0u64.to_le_bytes());
            vec![p]
        },
    ),
    (
        "hosted-sparse.vmdk",
        "1024 entries per grain table is outside 1..=512",
        |f| {
            let p = hosted(f, "hosted-sparse.vmdk", None);
            patch(&p, 44, &1024u32.to_le_bytes());
            vec![p]
        },
    ),
    (
        "hosted-sparse.vmdk",
        "but the header says grains start at byte",
        |f| {
            let p = hosted(f, "hosted-sparse.vmdk", None);
            patch(&p, 64, &(1u64 << 30).to_le_bytes());
            vec![p]
        },
    ),
    (
        "vm-000001-sesparse.vmdk",
        "SEsparse reserved header fields are not zero",
        |f| {
            let (d, e) = sesparse(f);
            patch(&e, 64, &[1]);
            vec![d]
        },
    ),
    (
        "vm-000001-sesparse.vmdk",
        "SEsparse constant header padding are not zero",
        |f| {
            let (d, e) = sesparse(f);
            patch(&e, 511, &[0x80]);
            vec![d]
        },
    ),
    (
        "vm-000001-sesparse.vmdk",
        "SEsparse volatile header padding are not zero",
        |f| {
            let (d, e) = sesparse(f);
            patch(&e, 512 + 100, &[7]);
            vec![d]
        },
    ),
    (
        "vm-000001-sesparse.vmdk",
        "wrong volatile header magic",
        |f| {
            let (d, e) = sesparse(f);
            patch(&e, 512, &0xcafe_f00du64.to_le_bytes());
            vec![d]
        },
    ),
    (
        "vm-000001-sesparse.vmdk",
        "volatile header area is too small",
        |f| {
            let (d, e) = sesparse(f);
            patch(&e, 88, &0u64.to_le_bytes());
            vec![d]
        },
    ),
    ("vm-000001-sesparse.vmdk", "SEsparse grain size 16", |f| {
        let (d, e) = sesparse(f);
        patch(&e, 24, &16u64.to_le_bytes());
        vec![d]
    }),
    ("vm-000001-sesparse.vmdk", "flags 0x1", |f| {
        let (d, e) = sesparse(f);
        patch(&e, 40, &1u64.to_le_bytes());
        vec![d]
    }),
    (
        "vm-000001-delta.vmdk",
        "grain size 0 bytes is outside",
        |f| {
            let (d, e) = cowd(f);
            patch(&e, 16, &0u32.to_le_bytes());
            vec![d]
        },
    ),
    ("vm-000001.vmdk", "descriptor has no CID line", |f| {
        vec![edited(f, "CID=00000031\n", "")]
    }),
    ("vm-000001.vmdk", "descriptor has no createType line", |f| {
        vec![edited(f, "createType=\"vmfsSparse\"\n", "")]
    }),
    ("vm-000001.vmdk", "not UTF-8 text", |f| {
        // Past the first 4 KiB, where sniffing has already seen descriptor text.
        let p = edited(f, "#DDB", "#DDB");
        let mut b = std::fs::read(&p).unwrap();
        b.extend_from_slice(format!("# {}\n", "x".repeat(5000)).as_bytes());
        b.extend_from_slice(b"ddb.comment = \"caf\xe9\"\n");
        std::fs::write(&p, b).unwrap();
        vec![p]
    }),
    ("vm-000001.vmdk", "bad CID \"xyz\"", |f| {
        vec![edited(f, "CID=00000031", "CID=xyz")]
    }),
    ("vm-000001.vmdk", "bad version \"one\"", |f| {
        vec![edited(f, "version=1", "version=one")]
    }),
    (
        "vm-000001.vmdk",
        "unknown extent type \"VMFSSPARSER\"",
        |f| vec![edited(f, "VMFSSPARSE ", "VMFSSPARSER ")],
    ),
    (
        "vm-000001.vmdk",
        "extent size \"-4096\" is not a sector count",
        |f| vec![edited(f, "RW 4096", "RW -4096")],
    ),
    (
        "vm-000001.vmdk",
        "extent file name has no closing quote",
        |f| vec![edited(f, "-delta.vmdk\"", "-delta.vmdk")],
    ),
    ("vm-000001.vmdk", "file name \"\" is empty", |f| {
        vec![edited(f, "\"vm-000001-delta.vmdk\"", "\"\"")]
    }),
    (
        "vm-000001.vmdk",
        "opening \"gone-delta.vmdk\" named by it",
        |f| vec![edited(f, "vm-000001-delta.vmdk", "gone-delta.vmdk")],
    ),
    ("vm-000001.vmdk", "descriptor lists no extents", |f| {
        vec![edited(f, "RW 4096 VMFSSPARSE \"vm-000001-delta.vmdk\"", "")]
    }),
    ("vm-000001.vmdk", "ZERO extent in a delta", |f| {
        vec![edited(f, "VMFSSPARSE \"vm-000001-delta.vmdk\"", "ZERO")]
    }),
    ("empty.vmdk", "not a VMware delta", |f| {
        vec![f.write("empty.vmdk", "")]
    }),
    ("zeros.vmdk", "not a VMware delta", |f| {
        let p = f.path("zeros.vmdk");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        vec![p]
    }),
];

/// Every row of [`TABLE`] is refused, names its file, and leaves the target alone.
#[test]
fn every_malformed_input_in_the_table_is_refused_naming_file_and_problem() {
    for (file, problem, build) in TABLE {
        let f = Folder::base(CAP);
        let args = build(&f);
        let args: Vec<&std::path::Path> = args.iter().map(|p| p.as_path()).collect();
        refuse(&f, &args, problem);
        refuse(&f, &args, file);
    }
    let rows: std::collections::HashSet<_> = TABLE.iter().map(|(_, p, _)| p).collect();
    assert_eq!(
        rows.len(),
        TABLE.len() - 1,
        "rows differ (two share \"not a VMware delta\")"
    );
}
