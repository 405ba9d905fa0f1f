//! Pre-copy rounds and the cutover straight from an ESXi host (`--sync`, `--cutover` with
//! `--vmx ssh://`), end to end: the real binary, the real libvirtd (qemu:///system), the
//! stand-in ESXi host of tests/util/esx.rs. Every volume is checked against qemu-img's
//! reading of the VM's chain on the host, and the boot-sector guest shows what it booted.

mod util;

use std::path::Path;
use std::time::Duration;

use util::bootimg;
use util::esx::StandIn;
use util::fixtures::{pattern, patterned, Kind, SECTOR};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{
    add_console_log, cowd_child, domstate, flat_base, virsh, volume_bytes, wait_for_line, Run,
};
use util::{assert_same, qemu_read};
use vmdkimport::state::NS_URI;

const MIB: usize = 1 << 20;
const CPU: [&str; 2] = ["--cpu", "default"];

/// A .vmx with no NIC, a serial console and the given disk file names on scsi0.
fn vmx_text(name: &str, disks: &[&str]) -> String {
    let mut s = format!(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n\
         displayName = \"{name}\"\nguestOS = \"ubuntu-64\"\nmemsize = \"128\"\nnumvcpus = \"1\"\n\
         scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n"
    );
    for (i, d) in disks.iter().enumerate() {
        s += &format!(
            "scsi0:{i}.present = \"TRUE\"\nscsi0:{i}.deviceType = \"scsi-hardDisk\"\nscsi0:{i}.fileName = \"{d}\"\n"
        );
    }
    s
}

/// `virt-vmdkimport -c qemu:///system --domain D --pool P --vmx URL EXTRA...`
fn tool(esx: &StandIn, tp: &TestPool, domain: &str, vmx: &str, extra: &[&str]) -> Run {
    let url = esx.url(vmx);
    let mut args = vec![
        "-c",
        "qemu:///system",
        "--domain",
        domain,
        "--pool",
        &tp.name,
        "--vmx",
        &url,
    ];
    args.extend_from_slice(extra);
    esx.tool(&args)
}

fn metadata(domain: &str) -> String {
    virsh(&["metadata", domain, NS_URI]).ok().stdout()
}

/// The boot line the guest prints for the disk `top` (a descriptor on the stand-in).
fn boot_line_of(top: &Path) -> String {
    let disk = qemu_read(top);
    bootimg::expected_line(&disk[512..512 + bootimg::PAYLOAD_LEN])
}

/// Wait for the guest's boot line in `log`.
fn booted_line(log: &Path) -> String {
    let line = wait_for_line(log, bootimg::MARKER, Duration::from_secs(90));
    let console = std::fs::read_to_string(log).unwrap_or_default();
    line.unwrap_or_else(|| panic!("no boot marker within 90 s; console: {console:?}"))
}

#[test]
fn a_powered_off_vm_with_snapshots_of_its_own_is_cut_over_without_a_shutdown() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-off");
    let dir = esx.vm_dir("app");
    let base = flat_base(
        &dir,
        "app",
        &bootimg::boot_disk(&patterned(0xb01, bootimg::PAYLOAD_LEN), 8 * MIB),
        0x3333cccc,
    );
    // Its own snapshot (VMFS5-style COWD) with data over the boot payload.
    let sectors = (8 * MIB) as u64 / SECTOR;
    cowd_child(
        &dir,
        "app-000001",
        "app.vmdk",
        0x3333cccc,
        0x4444dddd,
        sectors,
        &[(2, Kind::Data), (9000, Kind::Data)],
        &mut pattern(0xc0),
    );
    std::fs::write(dir.join("app.vmx"), vmx_text("app", &["app-000001.vmdk"])).unwrap();
    esx.register(12, "app", "app/app.vmx", false, "cowd", "");
    esx.add_snapshot_record(12, 1, "nightly");
    let name = unique_name("esx-off");
    tp.track_domain(&name);

    tool(&esx, &tp, &name, "app/app.vmx", &CPU).ok();
    // What the VM wrote into the migration snapshot's delta before it was powered off.
    cowd_child(
        &dir,
        "app-000002",
        "app-000001.vmdk",
        0x4444dddd,
        0x0badcafe,
        sectors,
        &[(5, Kind::Data), (7, Kind::Zero), (12000, Kind::Data)],
        &mut pattern(0xc1),
    );
    let top = dir.join("app-000002.vmdk");
    let want = qemu_read(&top);
    assert_ne!(want, qemu_read(&base), "the snapshots hold data");
    let log = tp.path("console.log");
    add_console_log(&name, &log);

    let run = tool(&esx, &tp, &name, "app/app.vmx", &["--cutover"]).ok();
    println!("{run}");
    let out = run.stdout();
    assert!(
        out.contains("the VM is powered off already: no shutdown"),
        "{run}"
    );
    assert!(
        out.contains("cutover of '") && out.contains("total"),
        "{run}"
    );
    assert_eq!(booted_line(&log), boot_line_of(&top));
    assert_eq!(domstate(&name), "running");
    virsh(&["destroy", &name]).ok();
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &want,
        "volume",
    );
    let meta = metadata(&name);
    assert!(
        meta.contains("<cutover ") && meta.contains("handed-over"),
        "{meta}"
    );

    // Once handed over, nothing from ESXi is written again.
    let again = tool(&esx, &tp, &name, "app/app.vmx", &["--cutover"]);
    assert_eq!(again.code(), Some(1), "{again}");
    assert!(
        again.stderr().contains("was already handed over"),
        "{again}"
    );
}
