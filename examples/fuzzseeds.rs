//! Write the seed corpus of the fuzz targets in `fuzz/` with the test fixture writers.
//!
//! ```text
//! cargo run --example fuzzseeds -- fuzz/corpus
//! ```
//!
//! Writes `DIR/<target>/seed-*` for the targets descriptor, cowd, sesparse, hosted, vmx,
//! chain, vimcmd and plan. Seeds are small (capacities of a few MiB at most, few tables) so
//! the fuzzer runs fast.

#[path = "../tests/util/fixtures.rs"]
mod fixtures;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fixtures::{
    descriptor, pattern, write_cowd, write_hosted, write_sesparse, CowdOptions, HostedOptions,
    Kind, SeSparseOptions,
};

/// Must match `PART_SEPARATOR` in fuzz/src/lib.rs.
const PART_SEPARATOR: &[u8] = b"\n@@VMDKFUZZ-NEXT-FILE@@\n";

/// Grain lists that reach each decoding branch: data, zero, unmapped, a second table.
fn grain_sets(second_table: u64) -> Vec<Vec<(u64, Kind)>> {
    vec![
        vec![],
        vec![(0, Kind::Data)],
        vec![
            (3, Kind::Data),
            (1, Kind::Zero),
            (2, Kind::Data),
            (5, Kind::Unmapped),
        ],
        vec![
            (0, Kind::Data),
            (second_table, Kind::Data),
            (second_table + 1, Kind::Zero),
        ],
    ]
}

fn save(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(format!("seed-{name}")), bytes)
        .with_context(|| format!("{target}/{name}"))
}

/// Write a file with `write` into a scratch path and return its bytes.
fn bytes_of(scratch: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<Vec<u8>> {
    let p = scratch.join("extent");
    write(&p)?;
    Ok(std::fs::read(&p)?)
}

fn hosted_opts(grain_sectors: u64, descriptor: Option<String>) -> HostedOptions {
    HostedOptions {
        grain_sectors,
        zeroed_grain: true,
        descriptor,
        compressed_flag: false,
    }
}

fn extents(scratch: &Path, out: &Path) -> Result<()> {
    for (i, grains) in grain_sets(4096).iter().enumerate() {
        // Second table at grain 4096 with 1-sector grains: 4097 grains needed.
        let b = bytes_of(scratch, |p| {
            write_cowd(
                p,
                8192,
                1,
                grains,
                &mut pattern(i as u64),
                &CowdOptions::default(),
            )
        })?;
        save(out, "cowd", &format!("g1-{i}"), &b)?;
        let b = bytes_of(scratch, |p| {
            write_sesparse(
                p,
                65536,
                grains,
                &mut pattern(i as u64),
                &SeSparseOptions::default(),
            )
        })?;
        save(out, "sesparse", &format!("{i}"), &b)?;
    }
    for (i, grains) in grain_sets(512).iter().enumerate() {
        let b = bytes_of(scratch, |p| {
            write_hosted(
                p,
                1024,
                grains,
                &mut pattern(i as u64),
                &hosted_opts(1, None),
            )
        })?;
        save(out, "hosted", &format!("bare-{i}"), &b)?;
    }
    let b = bytes_of(scratch, |p| {
        write_cowd(
            p,
            100,
            8,
            &[(2, Kind::Data), (4, Kind::Zero)],
            &mut pattern(9),
            &CowdOptions::default(),
        )
    })?;
    save(out, "cowd", "g8-odd-capacity", &b)?;
    let text = descriptor(
        0x1234,
        None,
        "monolithicSparse",
        &["RW 2048 SPARSE \"fuzz-hosted.vmdk\"".into()],
    );
    let b = bytes_of(scratch, |p| {
        write_hosted(
            p,
            2048,
            &[(1, Kind::Data), (2, Kind::Zero)],
            &mut pattern(3),
            &hosted_opts(8, Some(text)),
        )
    })?;
    save(out, "hosted", "embedded-descriptor", &b)?;
    Ok(())
}

fn descriptors(out: &Path) -> Result<()> {
    let texts = [
        descriptor(
            0x5d2667d,
            None,
            "vmfs",
            &["RW 16384 VMFS \"base-flat.vmdk\"".into()],
        ),
        descriptor(
            0xabc,
            Some((0x5d2667d, "base.vmdk")),
            "vmfsSparse",
            &["RW 16384 VMFSSPARSE \"vm-000001-delta.vmdk\"".into()],
        ),
        descriptor(
            0xdef,
            Some((0xabc, "vm-000001.vmdk")),
            "seSparse",
            &["RW 16384 SESPARSE \"vm-000002-sesparse.vmdk\"".into()],
        ),
        descriptor(
            1,
            None,
            "monolithicFlat",
            &[
                "RW 100 FLAT \"a b-f001.vmdk\" 7".into(),
                "RDONLY 5 ZERO".into(),
                "NOACCESS 9 FLAT \"x.vmdk\"".into(),
            ],
        ),
        descriptor(
            2,
            None,
            "twoGbMaxExtentSparse",
            &[
                "RW 4192256 SPARSE \"vm-s001.vmdk\"".into(),
                "RW 8192 SPARSE \"vm-s002.vmdk\"".into(),
            ],
        ),
        descriptor(
            3,
            None,
            "vmfsRaw",
            &[
                "RW 10 VMFSRAW \"r.vmdk\"".into(),
                "RW 10 VMFSRDM \"m.vmdk\"".into(),
                "RW 10 VSANSPARSE \"v.vmdk\"".into(),
            ],
        ),
        descriptor(
            4,
            None,
            "streamOptimized",
            &["RW 10 SPARSE \"s.vmdk\"".into()],
        ),
    ];
    for (i, t) in texts.iter().enumerate() {
        save(out, "descriptor", &format!("{i}"), t.as_bytes())?;
    }
    let crlf = texts[1].replace('\n', "\r\n") + "\0\0\0\0";
    save(out, "descriptor", "crlf-nul-padded", crlf.as_bytes())?;
    Ok(())
}

fn vmx_text(guest: &str, bus: &str, dev: &str, firmware: &str) -> String {
    format!(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\ndisplayName = \"vm \\\"one\\\" |22\"\n\
         guestOS = \"{guest}\"\nmemsize = \"2048\"\nnumvcpus = \"4\"\ncpuid.coresPerSocket = \"2\"\nfirmware = \"{firmware}\"\n\
         uefi.secureBoot.enabled = \"TRUE\"\nuuid.bios = \"56 4d 11 22 33 44 55 66-77 88 99 aa bb cc dd ee\"\n\
         {bus}0.present = \"TRUE\"\n{bus}0.virtualDev = \"{dev}\"\n\
         {bus}0:0.present = \"TRUE\"\n{bus}0:0.deviceType = \"scsi-hardDisk\"\n{bus}0:0.fileName = \"vm-000001.vmdk\"\n\
         {bus}0:1.present = \"TRUE\"\n{bus}0:1.fileName = \"vm_1.vmdk\"\n{bus}0:1.mode = \"independent-persistent\"\n\
         sata0.present = \"TRUE\"\nsata0:0.present = \"TRUE\"\nsata0:0.deviceType = \"cdrom-image\"\nsata0:0.fileName = \"/iso/x.iso\"\n\
         bios.hddOrder = \"{bus}0:1\"\n\
         ethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vmxnet3\"\nethernet0.networkName = \"VM Network\"\n\
         ethernet0.addressType = \"generated\"\nethernet0.generatedAddress = \"00:0c:29:3a:5b:7c\"\n\
         ethernet1.present = \"TRUE\"\nethernet1.virtualDev = \"e1000e\"\nethernet1.addressType = \"static\"\nethernet1.address = \"00:50:56:01:02:03\"\n"
    )
}

fn vmx(out: &Path) -> Result<()> {
    let texts = [
        vmx_text("ubuntu-64", "scsi", "pvscsi", "bios"),
        vmx_text("windows2019srv-64", "sata", "ahci", "efi"),
        vmx_text("winXPPro", "ide", "", "bios"),
        vmx_text("rhel9-64", "nvme", "", "efi"),
        vmx_text("windows7srv-64", "scsi", "lsisas1068", "bios"),
    ];
    for (i, t) in texts.iter().enumerate() {
        save(out, "vmx", &format!("{i}"), t.as_bytes())?;
    }
    // Windows-1252 bytes in a value, as old Workstation files have them.
    let latin = texts[0].replace(".encoding = \"UTF-8\"", ".encoding = \"windows-1252\"");
    let mut b = latin.into_bytes();
    b.extend_from_slice(b"annotation = \"caf\xe9 |0A\"\n");
    save(out, "vmx", "windows-1252", &b)?;
    Ok(())
}

/// `vim-cmd` answers as ESX.md and ESX-REAL.md document them, and near misses, for the
/// vimcmd target.
fn vimcmd(out: &Path) -> Result<()> {
    let answers = [
        ("getallvms", "Vmid     Name                    File                     Guest OS       Version         Annotation\n\
            2      xx         [datastore1] xx/xx.vmx               rhel8_64Guest     vmx-14\n\
            3      make make   [datastore1] make make/m m.vmx   centos8_64Guest   vmx-14    Rocky linux 8\n\
            autostart\n\
            12 notes without a path\n"),
        ("getallvms-hostile", "Vmid Name\n1 web1 datastore1 web1.vmx\n"),
        ("power-on", "Retrieved runtime info\nPowered on\n"),
        ("power-suspended", "Retrieved runtime info\nSuspended\n"),
        ("power-sideways", "Retrieved runtime info\nPowered sideways\n"),
        ("snapshot-none", "Get Snapshot:\n"),
        ("snapshot-tree", "Get Snapshot:\n|-ROOT\n--Snapshot Name        : snap01\n--Snapshot Id        : 1\n\
            --Snapshot Desciption  : snap01 description\n--Snapshot Created On  : 2/23/2015 18:12:50\n\
            --Snapshot State       : powered on\n--|-CHILD\n----Snapshot Name        : snap02\n\
            ----Snapshot Id          : 2\n----Snapshot Desciption  : \n"),
        ("created", "Create Snapshot:\n"),
        ("removed", "Remove Snapshot:\n"),
        ("fault", "(vim.fault.NotFound) {\n   faultCause = (vmodl.MethodFault) null, \n   faultMessage = <unset>, \n   msg = \"Unable to find a VM corresponding to \\\"9\\\"\"\n}\n"),

        // ESX-REAL.md's answers of real hosts: an invalid VM and a vCLS row in getallvms,
        // a description's later lines raw, the tree after a removal, the unchanged-state
        // refusal, hostd's passing failures.
        ("getallvms-invalid", "Skipping invalid VM '6'\n\
            Vmid          Name                               File                             Guest OS       Version   Annotation\n\
            1698   vCLS-6b72   [] /var/run/crx/infra/vCLS-6b72/vCLS-6b72.vmx   crxSys1Guest   vmx-21              \n\
            48     web [1] x   [datastore2 (1)] web [1] x/web [1] x.vmx   ubuntu64Guest   vmx-14    [prod] web.vmx\n"),
        ("snapshot-multiline", "Get Snapshot:\n|-ROOT\n--Snapshot Name        : prepared for install\n\
            --Snapshot Id        : 3\n--Snapshot Desciption  : clush configured\n\
            tmp and all traces of mapr removed\n--Snapshot Created On  : 8/21/2014 22:0:23\n\
            --Snapshot State       : powered off\n"),
        ("removed-tree", "Remove Snapshot:\n|-ROOT\n--Snapshot Name        : snap01\n--Snapshot Id        : 1\n\
            --Snapshot Desciption  : snap01 description\n--Snapshot Created On  : 2/23/2015 18:12:50\n\
            --Snapshot State       : powered off\n"),
        ("created-unchanged", "Create Snapshot:\nSnapshot not taken since the state of the virtual machine has not changed since the last snapshot operation.\n"),
        ("hostd-login", "Failed to login: Connection reset by peer\n"),
        ("hostd-not-created", "(vmodl.fault.ManagedObjectNotFound) {\n\t dynamicType = <unset>,\n\t faultCause = (vmodl.MethodFault) null,\n\t obj = 'vim.VirtualMachine:672',\n\t msg = \"The object has already been deleted or has not been completely created\",\n}\n"),
    ];
    for (name, text) in answers {
        save(out, "vimcmd", name, text.as_bytes())?;
    }
    Ok(())
}

/// Plan files: doc/plans.md's example, every VM key, and defaults, for the plan target.
fn plans(out: &Path) -> Result<()> {
    let readme = "jobs = 4\nmax_per_target = 2\nmax_per_source = 4\n# log_dir = \"migration.logs\"\n\
        progress_every = \"30s\"\n\n[defaults]\nconnect = \"qemu+ssh://kvm1/system\"\npool = \"vg0\"\n\
        network = [\"VM Network=default\"]\n\n[[vm]]\nname = \"web1\"\n\
        vmx = \"ssh://root@esx1/vmfs/volumes/datastore1/web1/web1.vmx\"\n\n[[vm]]\nname = \"web2\"\n\
        vmx = \"/mnt/datastore1/web2/web2.vmx\"\nconnect = \"qemu+ssh://kvm2/system\"\n\n[[vm]]\n\
        name = \"db1\"\nflat = \"db1/db1.vmdk\"\ndeltas = [\"db1/db1-000001.vmdk\"]\nmemory = 8192\nvcpus = 4\n";
    let every_key = "jobs = 1\nlog_dir = \"logs\"\nprogress_every = 0\n[[vm]]\nname = \"a\"\n\
        vmx = \"ssh://root@esx1:2222/vmfs/volumes/ds/a/a.vmx\"\npool = \"default\"\nsource_group = \"g\"\n\
        bridge = \"br0\"\nmac = \"52:54:00:12:34:56\"\nos = \"windows\"\nmemory = 512\nvcpus = 2\n\
        cpu = \"host-passthrough\"\nhyperv_passthrough = true\nio = \"stream\"\nallow_outside_paths = false\n\
        copy_independent = true\ndriver_disk = true\nno_start = true\ndisk_jobs = 2\n\
        shutdown_timeout = \"1h 30m\"\nhard_off = true\nrollback_on_failure = true\nremove_esx_snapshots = true\n";
    let refused = "jobs = 2\n[[vm]]\nname = \"a\"\nvmx = \"/a.vmx\"\nmemroy = 512\n";
    for (name, text) in [
        ("readme", readme),
        ("every-key", every_key),
        ("refused", refused),
    ] {
        save(out, "plan", name, text.as_bytes())?;
    }
    Ok(())
}

/// Base (VMFS descriptor + 32 KiB flat), an SEsparse middle, a COWD top; the parts are the
/// files named in `CHAIN_FILES` of fuzz/src/lib.rs, in that order.
fn chains(scratch: &Path, out: &Path) -> Result<()> {
    const CAP: u64 = 64;
    let mut flat = vec![0u8; (CAP * 512) as usize];
    let mut fill = pattern(0xba5e);
    fill(0, &mut flat[512..4096]);
    let base = descriptor(
        0xb,
        None,
        "vmfs",
        &[format!("RW {CAP} VMFS \"base-flat.vmdk\"")],
    );
    let mid = descriptor(
        0xc,
        Some((0xb, "base.vmdk")),
        "seSparse",
        &[format!("RW {CAP} SESPARSE \"mid-sesparse.vmdk\"")],
    );
    let mid_extent = bytes_of(scratch, |p| {
        write_sesparse(
            p,
            CAP,
            &[(1, Kind::Data), (3, Kind::Zero), (5, Kind::Unmapped)],
            &mut pattern(0xc),
            &SeSparseOptions::default(),
        )
    })?;
    let top_extent = bytes_of(scratch, |p| {
        write_cowd(
            p,
            CAP,
            1,
            &[(2, Kind::Data), (9, Kind::Zero), (10, Kind::Data)],
            &mut pattern(0xd),
            &CowdOptions::default(),
        )
    })?;
    let top_on_mid = descriptor(
        0xd,
        Some((0xc, "mid.vmdk")),
        "vmfsSparse",
        &[format!("RW {CAP} VMFSSPARSE \"top-delta.vmdk\"")],
    );
    let top_on_base = descriptor(
        0xd,
        Some((0xb, "base.vmdk")),
        "vmfsSparse",
        &[format!("RW {CAP} VMFSSPARSE \"top-delta.vmdk\"")],
    );
    let pack = |parts: [&[u8]; 6]| parts.join(PART_SEPARATOR);
    save(
        out,
        "chain",
        "three-layers",
        &pack([
            top_on_mid.as_bytes(),
            &top_extent,
            mid.as_bytes(),
            &mid_extent,
            base.as_bytes(),
            &flat,
        ]),
    )?;
    save(
        out,
        "chain",
        "one-delta",
        &pack([
            top_on_base.as_bytes(),
            &top_extent,
            b"",
            b"",
            base.as_bytes(),
            &flat,
        ]),
    )?;
    // A hosted sparse top (embedded descriptor) over a monolithicSparse base.
    let top_text = descriptor(
        0xe,
        Some((0xf, "base.vmdk")),
        "monolithicSparse",
        &[format!("RW {CAP} SPARSE \"top.vmdk\"")],
    );
    let top = bytes_of(scratch, |p| {
        write_hosted(
            p,
            CAP,
            &[(4, Kind::Data), (6, Kind::Zero)],
            &mut pattern(0xe),
            &hosted_opts(1, Some(top_text)),
        )
    })?;
    let base_text = descriptor(
        0xf,
        None,
        "monolithicSparse",
        &[format!("RW {CAP} SPARSE \"base.vmdk\"")],
    );
    let base_sparse = bytes_of(scratch, |p| {
        write_hosted(
            p,
            CAP,
            &[(0, Kind::Data), (7, Kind::Data)],
            &mut pattern(0xf),
            &hosted_opts(1, Some(base_text)),
        )
    })?;
    save(
        out,
        "chain",
        "hosted",
        &pack([&top, b"", b"", b"", &base_sparse, b""]),
    )?;
    Ok(())
}

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: fuzzseeds OUT_DIR")?,
    );
    let scratch = tempfile_dir()?;
    extents(&scratch, &out)?;
    descriptors(&out)?;
    vmx(&out)?;
    chains(&scratch, &out)?;
    vimcmd(&out)?;
    plans(&out)?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// A private scratch folder (std only: no tempfile in the example's dependencies).
fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("fuzzseeds-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
