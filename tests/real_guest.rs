//! A real Debian bookworm guest moved from a VMware-style folder keeps its NIC name (`ens192`) and its disk name (`/dev/sda1`) with no edit inside the guest, and loses the NIC with `--nic-names kvm`; a test boot of it after stage 1 is `booted`, and `failed` with a root device that is not there, the volume unchanged.
//!
//! The guest comes from `scripts/debian-guest.sh` (built once, cached in
//! /var/tmp/vmdkimport-debian-guest). Each test makes a VM folder from it: the cached disk as
//! the flat base, and a SEsparse snapshot delta carrying the guest's network configuration (a
//! static address on `ens192`) and an fstab naming `/dev/sda1`, written with `debugfs` into a
//! copy of the disk and diffed against the base. Stage 1 and stage 2 run as a user would; in
//! between, the test switches the domain to TCG (`type='qemu'`: this host's nested KVM cannot
//! run a stock kernel) and a direct kernel boot of the guest's own kernel and initrd with
//! `root=/dev/sda1`. The guest prints a report on its serial console and powers off.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::fixtures::{descriptor, write_sesparse, Kind, SeSparseOptions, SECTOR};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{dumpxml, import, tool, virsh, wait_for_line, TestNet};

/// Where `scripts/debian-guest.sh` caches the guest (unless VMDKIMPORT_GUEST_CACHE says).
const CACHE: &str = "/var/tmp/vmdkimport-debian-guest";
/// The guest's static address on `ens192`.
const ADDRESS: &str = "192.0.2.10/24";
/// SEsparse grains are 4 KiB.
const GRAIN: usize = 4096;
/// The partition's offset in the cached disk (sector 2048).
const FS_OFFSET: u64 = 1 << 20;

/// The cached guest, made first if absent. A guest that cannot be made fails the test.
fn guest() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/debian-guest.sh");
    let out = Command::new(&script)
        .output()
        .expect("running scripts/debian-guest.sh");
    assert!(
        out.status.success(),
        "the Debian guest the real-guest tests boot could not be made (scripts/debian-guest.sh: {}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(std::env::var("VMDKIMPORT_GUEST_CACHE").unwrap_or(CACHE.into()));
    for f in ["disk.raw", "vmlinuz", "initrd.img"] {
        let p = dir.join(f);
        assert!(
            p.exists(),
            "{} is missing after scripts/debian-guest.sh",
            p.display()
        );
    }
    dir
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Write `files` (path in the guest, content) into the ext4 partition of the disk `image`.
fn inject(image: &Path, files: &[(&str, &str)], scratch: &Path) {
    let mut cmds = String::new();
    for (i, (path, content)) in files.iter().enumerate() {
        let src = scratch.join(format!("inject-{i}"));
        std::fs::write(&src, content).unwrap();
        cmds += &format!("rm {path}\nwrite {} {path}\n", src.display());
    }
    let script = scratch.join("inject.debugfs");
    std::fs::write(&script, cmds).unwrap();
    let fs = format!("{}?offset={FS_OFFSET}", image.display());
    run("debugfs", &["-w", "-f", script.to_str().unwrap(), &fs]);
    for (path, content) in files {
        let got = run("debugfs", &["-R", &format!("cat {path}"), &fs]);
        assert_eq!(&got, content, "debugfs did not write {path}");
    }
}

/// The disk's size in sectors, and the grains of `new` that differ from `old` (same size).
fn changed_grains(old: &Path, new: &Path) -> (u64, std::collections::BTreeMap<u64, Vec<u8>>) {
    use std::io::Read;
    let len = std::fs::metadata(old).unwrap().len();
    assert_eq!(len, std::fs::metadata(new).unwrap().len());
    let (mut a, mut b) = (
        std::fs::File::open(old).unwrap(),
        std::fs::File::open(new).unwrap(),
    );
    let mut changes = std::collections::BTreeMap::new();
    let (mut ca, mut cb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(ca.len() as u64) as usize;
        a.read_exact(&mut ca[..n]).unwrap();
        b.read_exact(&mut cb[..n]).unwrap();
        for (i, (x, y)) in ca[..n].chunks(GRAIN).zip(cb[..n].chunks(GRAIN)).enumerate() {
            if x != y {
                changes.insert(at / GRAIN as u64 + i as u64, y.to_vec());
            }
        }
        at += n as u64;
    }
    (len / SECTOR, changes)
}

/// The VM folder: `deb.vmdk` over the cached disk, `deb-000001.vmdk` (SEsparse) holding what
/// `files` change, and `deb.vmx` (Debian, 512 MiB, pvscsi disk, vmxnet3 NIC at slot 192).
fn vm_folder(tp: &TestPool, guest: &Path, files: &[(&str, &str)]) -> PathBuf {
    let dir = tp.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("deb-flat.vmdk");
    run(
        "cp",
        &[
            "--sparse=always",
            guest.join("disk.raw").to_str().unwrap(),
            base.to_str().unwrap(),
        ],
    );
    let changed = tp.path("changed.raw");
    run(
        "cp",
        &[
            "--sparse=always",
            base.to_str().unwrap(),
            changed.to_str().unwrap(),
        ],
    );
    inject(&changed, files, &tp.dir);

    let (sectors, changes) = changed_grains(&base, &changed);
    std::fs::remove_file(&changed).unwrap();
    assert!(!changes.is_empty(), "the injected files changed nothing");
    let grains: Vec<(u64, Kind)> = changes.keys().map(|&g| (g, Kind::Data)).collect();
    let (base_cid, child_cid) = (0x1111_0001, 0x1111_0002);
    std::fs::write(
        dir.join("deb.vmdk"),
        descriptor(
            base_cid,
            None,
            "vmfs",
            &[format!("RW {sectors} VMFS \"deb-flat.vmdk\"")],
        ),
    )
    .unwrap();
    let mut fill = |g: u64, buf: &mut [u8]| buf.copy_from_slice(&changes[&g]);
    write_sesparse(
        &dir.join("deb-000001-sesparse.vmdk"),
        sectors,
        &grains,
        &mut fill,
        &SeSparseOptions::default(),
    )
    .unwrap();
    std::fs::write(
        dir.join("deb-000001.vmdk"),
        descriptor(
            child_cid,
            Some((base_cid, "deb.vmdk")),
            "seSparse",
            &[format!(
                "RW {sectors} SESPARSE \"deb-000001-sesparse.vmdk\""
            )],
        ),
    )
    .unwrap();
    let vmx = dir.join("deb.vmx");
    std::fs::write(
        &vmx,
        r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "deb01"
guestOS = "debian12-64"
memsize = "512"
numvcpus = "1"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0.pciSlotNumber = "160"
scsi0:0.present = "TRUE"
scsi0:0.deviceType = "scsi-hardDisk"
scsi0:0.fileName = "deb-000001.vmdk"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "generated"
ethernet0.generatedAddress = "00:50:56:8a:19:20"
ethernet0.pciSlotNumber = "192"
"#,
    )
    .unwrap();
    vmx
}

/// Between the stages: TCG, no CPU mode, the guest's kernel booted directly with
/// `root=/dev/sda1` (what its boot loader would say), the console logged to `log`.
fn boot_directly_under_tcg(domain: &str, guest: &Path, log: &Path) {
    boot_directly_with(domain, guest, log, "root=/dev/sda1 ro console=ttyS0 quiet");
}

/// [`boot_directly_under_tcg`] with the kernel command line `cmdline`.
fn boot_directly_with(domain: &str, guest: &Path, log: &Path, cmdline: &str) {
    let xml = dumpxml(domain);
    let kernel = format!(
        "<kernel>{}</kernel><initrd>{}</initrd><cmdline>{cmdline}</cmdline></os>",
        guest.join("vmlinuz").display(),
        guest.join("initrd.img").display()
    );
    assert!(xml.starts_with("<domain type='kvm'"), "{xml}");
    let mut new = xml.replacen("<domain type='kvm'", "<domain type='qemu'", 1);
    new = new.replacen("</os>", &kernel, 1);
    let open = "<serial type='pty'>";
    new = new.replacen(
        open,
        &format!("{open}\n      <log file='{}' append='off'/>", log.display()),
        1,
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &new).unwrap();
    virsh(&["define", f.path().to_str().unwrap()]).ok();
}

/// The guest's report: its console's lines that start with `REPORT: `, once REPORT-END is there.
fn report(log: &Path) -> Vec<String> {
    let end = wait_for_line(log, "REPORT-END", Duration::from_secs(300));
    let console = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    assert!(
        end.is_some(),
        "no report from the guest within 300 s; console:\n{console}"
    );
    let lines: Vec<String> = console
        .lines()
        .filter_map(|l| l.split_once("REPORT: "))
        .map(|(_, r)| r.trim_end_matches('\r').to_string())
        .collect();
    println!("guest report:\n{}", lines.join("\n"));
    lines
}

/// Import the guest (stage 1, then stage 2 which starts it) with `extra` options and return
/// its report.
fn import_and_boot(tag: &str, extra: &[&str]) -> Vec<String> {
    let guest = guest();
    let tp = TestPool::new(tag);
    let net = TestNet::isolated(tag);
    let interfaces = "auto lo\niface lo inet loopback\n\nauto ens192\niface ens192 inet static\n    address 192.0.2.10/24\n";
    let fstab = "/dev/sda1 / ext4 errors=remount-ro 0 1\n";
    let vmx = vm_folder(
        &tp,
        &guest,
        &[
            ("/etc/network/interfaces", interfaces),
            ("/etc/fstab", fstab),
        ],
    );
    let name = unique_name(tag);
    tp.track_domain(&name);
    let map = format!("VM Network={}", net.name);
    let mut args = vec!["--network", map.as_str(), "--cpu", "default"];
    args.extend_from_slice(extra);
    let s1 = import(&tp, &name, &vmx, &args).ok();
    println!("{s1}");
    assert!(s1.stdout().contains("stage 1 done"), "{s1}");
    let log = tp.path("console.log");
    boot_directly_under_tcg(&name, &guest, &log);
    let s2 = import(&tp, &name, &vmx, &args).ok();
    println!("{s2}");
    assert!(
        s2.stdout().contains(&format!("domain '{name}' started")),
        "{s2}"
    );
    report(&log)
}

/// Lines of the report: (`ip -br addr` line of `nic`, the `findmnt /` line, failed units).
fn nic_line<'a>(report: &'a [String], nic: &str) -> Option<&'a String> {
    report
        .iter()
        .find(|l| l.split_whitespace().next() == Some(nic))
}

fn root_line(report: &[String]) -> &String {
    report
        .iter()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap_or_else(|| panic!("no findmnt line in the report: {report:?}"))
}

/// The failed units: the report's lines after the findmnt line.
fn failed_units(report: &[String]) -> Vec<&String> {
    let at = report
        .iter()
        .position(|l| l.split_whitespace().nth(1) == Some("/"))
        .unwrap();
    report[at + 1..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn debian_guest_keeps_ens192_with_its_static_address_and_root_on_sda1() {
    let report = import_and_boot("real-vmware", &[]);
    let nic =
        nic_line(&report, "ens192").unwrap_or_else(|| panic!("no ens192 in the guest: {report:?}"));
    let words: Vec<&str> = nic.split_whitespace().collect();
    assert_eq!(words[1], "UP", "{nic}");
    assert!(words.contains(&ADDRESS), "{nic}");
    assert_eq!(
        root_line(&report).split_whitespace().next(),
        Some("/dev/sda1")
    );
    assert!(failed_units(&report).is_empty(), "failed units: {report:?}");
    assert!(
        report.contains(&"system: running".to_string()),
        "{report:?}"
    );
}

#[test]
fn with_kvm_nic_names_the_same_guest_loses_its_network() {
    let report = import_and_boot("real-kvm", &["--nic-names", "kvm"]);
    assert!(nic_line(&report, "ens192").is_none(), "{report:?}");
    let nics: Vec<&String> = report.iter().filter(|l| l.starts_with("en")).collect();
    assert_eq!(nics.len(), 1, "one NIC, named by KVM's slot: {report:?}");
    assert!(!nics[0].contains("192.0.2.10"), "{report:?}");
    assert_eq!(
        root_line(&report).split_whitespace().next(),
        Some("/dev/sda1")
    );
    let failed = failed_units(&report);
    assert!(
        failed.iter().any(|l| l.starts_with("networking.service")),
        "ifupdown fails on the missing ens192: {report:?}"
    );
}

/// The volume's SHA-256, read from its file.
fn sha256(path: &Path) -> String {
    run("sha256sum", &[path.to_str().unwrap()])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A test boot after stage 1 of the guest whose base has a serial login prompt (its getty on
/// ttyS0 unmasked, its report-and-power-off unit gone), booted with `cmdline`: the report's
/// JSON, its last screenshot, and the time it took. The volume's hash is the same before and
/// after. With VMDKIMPORT_TEST_KEEP_REPORTS=DIR the report folder is copied to DIR/TAG.
fn test_boot_after_stage1(tag: &str, cmdline: &str) -> (serde_json::Value, Vec<u8>, f64) {
    let guest = guest();
    let tp = TestPool::new(tag);
    let net = TestNet::isolated(tag);
    let vmx = vm_folder(
        &tp,
        &guest,
        &[("/etc/fstab", "/dev/sda1 / ext4 errors=remount-ro 0 1\n")],
    );
    let base = vmx.parent().unwrap().join("deb-flat.vmdk");
    inject(
        &base,
        &[("/etc/fstab", "/dev/sda1 / ext4 errors=remount-ro 0 1\n")],
        &tp.dir,
    );
    let fs = format!("{}?offset={FS_OFFSET}", base.display());
    for gone in [
        "/etc/systemd/system/serial-getty@ttyS0.service",
        "/etc/systemd/system/multi-user.target.wants/vmdkimport-report.service",
    ] {
        run("debugfs", &["-w", "-R", &format!("rm {gone}"), &fs]);
    }
    let name = unique_name(tag);
    tp.track_domain(&name);
    let map = format!("VM Network={}", net.name);
    let s1 = import(
        &tp,
        &name,
        &vmx,
        &["--network", map.as_str(), "--cpu", "default"],
    )
    .ok();
    assert!(s1.stdout().contains("stage 1 done"), "{s1}");
    boot_directly_with(&name, &guest, &tp.path("real-console.log"), cmdline);
    let volume = tp.pool_dir().join(format!("{name}-disk0"));
    let before = sha256(&volume);
    let report = tp.path("report");
    let t = std::time::Instant::now();
    let out = tool(&[
        "test-boot",
        "--domain",
        &name,
        "--timeout",
        "240s",
        "--report",
        report.to_str().unwrap(),
    ]);
    let secs = t.elapsed().as_secs_f64();
    println!("{out}({secs:.1} s)");
    assert_eq!(sha256(&volume), before, "the volume is unchanged");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    util::testboot::assert_exit_by_verdict(&out.out, &doc);
    if let Ok(keep) = std::env::var("VMDKIMPORT_TEST_KEEP_REPORTS") {
        run(
            "cp",
            &["-r", report.to_str().unwrap(), &format!("{keep}/{tag}")],
        );
    }
    let last = doc["screenshots"]
        .as_array()
        .and_then(|s| s.last())
        .map(|s| std::fs::read(report.join(s["file"].as_str().unwrap())).unwrap())
        .unwrap_or_default();
    (doc, last, secs)
}

#[test]
fn a_test_boot_of_the_good_copy_is_booted_with_a_screenshot() {
    let (doc, png, secs) =
        test_boot_after_stage1("real-tb-good", "root=/dev/sda1 ro console=ttyS0 quiet");
    println!("verdict {} in {secs:.1} s: {doc:#}", doc["verdict"]);
    assert_eq!(doc["verdict"], "booted", "{doc:#}");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "a PNG screenshot: {doc:#}"
    );
}

#[test]
fn a_test_boot_with_a_root_device_that_is_not_there_fails_with_the_text() {
    let (doc, _, secs) = test_boot_after_stage1(
        "real-tb-noroot",
        "root=/dev/sdz1 rootdelay=5 ro console=ttyS0",
    );
    println!("verdict {} in {secs:.1} s: {doc:#}", doc["verdict"]);
    assert_eq!(doc["verdict"], "failed", "{doc:#}");
    let text = doc["evidence"]["text"].as_str().unwrap();
    assert!(
        text.contains("root") || text.contains("initramfs"),
        "the text says why: {doc:#}"
    );
}
