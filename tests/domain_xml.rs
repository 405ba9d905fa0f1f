//! .vmx files as ESX writes them, through the parser and the domain XML renderer, checked against libvirt's schema and a real libvirtd.

use std::path::{Path, PathBuf};
use std::process::Command;

use vmdkimport::domain_xml::{
    render, spec_from_vmx, switch_to_virtio, CpuMode, DiskSource, DomainSpec, NetSource,
    DRIVER_DISK_ALIAS,
};
use vmdkimport::state::{AppliedDelta, DiskState, ImportState, NS_PREFIX, NS_URI};
use vmdkimport::vmx::{parse_vmx, Firmware, OsFamily, VmxBus, VmxConfig};

mod util;

use util::xml::El;

const URI: &str = "qemu:///system";

fn write_vmx(dir: &Path, text: &[u8]) -> PathBuf {
    let p = dir.join("vm.vmx");
    std::fs::write(&p, text).unwrap();
    p
}

fn validate(xml: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), xml).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(f.path())
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients, needs xmllint from libxml2-utils)");
    assert!(
        out.status.success(),
        "virt-xml-validate failed:\n{}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(URI)
        .args(args)
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A domain defined on the real libvirtd, undefined (with its NVRAM) when dropped.
struct Defined(String);

impl Defined {
    fn new(xml: &str, name: &str) -> Defined {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), xml).unwrap();
        // A leftover from an interrupted run would make define replace it silently; remove it.
        let _ = Command::new("virsh")
            .args(["-q", "-c", URI, "undefine", "--nvram", name])
            .output();
        virsh(&["define", f.path().to_str().unwrap()]);
        Defined(name.to_string())
    }

    fn inactive_xml(&self) -> String {
        virsh(&["dumpxml", "--inactive", &self.0])
    }
}

impl Drop for Defined {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", URI, "undefine", "--nvram", &self.0])
            .output();
    }
}

fn unique(name: &str) -> String {
    format!("vmdkimport-test-{}-{name}", std::process::id())
}

fn file_sources(name: &str, n: usize) -> Vec<DiskSource> {
    (0..n)
        .map(|i| DiskSource::File(PathBuf::from(format!("/var/tmp/{name}-disk{i}.raw"))))
        .collect()
}

fn spec_for(vmx: &VmxConfig, name: &str) -> DomainSpec {
    spec_from_vmx(
        vmx,
        name,
        "kvm",
        file_sources(name, vmx.disks.len()),
        &|n| NetSource::Network(format!("lv-{}", n.network_name.clone().unwrap_or_default())),
    )
    .unwrap()
}

/// What a rendered domain holds, in a form tests compare whole.
#[derive(Debug, PartialEq)]
struct Summary {
    domain_type: String,
    machine: String,
    firmware: Option<String>,
    secure_loader: bool,
    smm: bool,
    memory_mib: String,
    vcpus: String,
    cpu_mode: Option<String>,
    /// sockets, cores, threads
    topology: (String, String, String),
    clock: String,
    hyperv: bool,
    /// (target dev, bus, source)
    disks: Vec<(String, String, String)>,
    /// (model, mac, network)
    nics: Vec<(String, Option<String>, String)>,
}

/// libvirt reads back memory in KiB; the renderer writes MiB.
fn mib(m: &El) -> String {
    let n: u64 = m.text.trim().parse().unwrap();
    match m.at("unit") {
        Some("MiB") => n.to_string(),
        Some("KiB") | None => (n / 1024).to_string(),
        other => panic!("memory unit {other:?}"),
    }
}

fn summarize(xml: &str) -> Summary {
    let d = El::parse(xml);
    assert_eq!(d.name, "domain");
    let os = d.one("os");
    let cpu = d.one("cpu");
    let topo = cpu.one("topology");
    let devices = d.one("devices");
    Summary {
        domain_type: d.at("type").unwrap().into(),
        machine: os.one("type").at("machine").unwrap().into(),
        firmware: os.at("firmware").map(Into::into),
        secure_loader: os.opt("loader").and_then(|l| l.at("secure")) == Some("yes"),
        smm: d
            .one("features")
            .opt("smm")
            .is_some_and(|s| s.at("state") == Some("on")),
        memory_mib: mib(d.one("memory")),
        vcpus: d.one("vcpu").text.clone(),
        cpu_mode: cpu.at("mode").map(Into::into),
        topology: (
            topo.at("sockets").unwrap().into(),
            topo.at("cores").unwrap().into(),
            topo.at("threads").unwrap().into(),
        ),
        clock: d.one("clock").at("offset").unwrap().into(),
        hyperv: d.one("features").opt("hyperv").is_some(),
        disks: devices
            .all("disk")
            .into_iter()
            .map(|k| {
                let t = k.one("target");
                let s = k.one("source");
                (
                    t.at("dev").unwrap().into(),
                    t.at("bus").unwrap().into(),
                    s.at("file")
                        .or(s.at("dev"))
                        .or(s.at("volume"))
                        .unwrap()
                        .into(),
                )
            })
            .collect(),
        nics: devices
            .all("interface")
            .into_iter()
            .map(|i| {
                (
                    i.one("model").at("type").unwrap().into(),
                    i.opt("mac").map(|m| m.at("address").unwrap().into()),
                    i.one("source").at("network").unwrap().into(),
                )
            })
            .collect(),
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Parse, render, validate, define on libvirtd and read back; returns (vmx, rendered, libvirt's).
fn through_everything(vmx_text: &[u8], case: &str) -> (VmxConfig, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), vmx_text)).unwrap();
    let name = unique(case);
    let xml = render(&spec_for(&vmx, &name)).unwrap();
    validate(&xml);
    let dom = Defined::new(&xml, &name);
    let back = dom.inactive_xml();
    validate(&back);
    (vmx, xml, back)
}

fn disk_path(name: &str, i: usize) -> String {
    format!("/var/tmp/{name}-disk{i}.raw")
}

// ---- the matrix ----

const WIN2019_EFI: &str = r#".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "14"
displayName = "win2019-dc01"
guestOS = "windows2019srv-64"
firmware = "efi"
uefi.secureBoot.enabled = "TRUE"
memSize = "8192"
numvcpus = "4"
cpuid.coresPerSocket = "2"
uuid.bios = "42 16 3b 5e 0c 8f 1a 2b-9d 4e 5f 60 71 82 93 a4"
scsi0.virtualDev = "lsisas1068"
scsi0.present = "TRUE"
scsi0:0.deviceType = "scsi-hardDisk"
scsi0:0.fileName = "win2019-dc01-000001.vmdk"
scsi0:0.present = "TRUE"
ethernet0.virtualDev = "e1000e"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "00:50:56:9A:1B:2C"
ethernet0.present = "TRUE"
"#;

#[test]
fn windows_2019_efi_secure_boot_gets_q35_sata_e1000e_and_secure_ovmf() {
    let (vmx, xml, back) = through_everything(WIN2019_EFI.as_bytes(), "win2019");
    assert_eq!(vmx.os, OsFamily::Windows);
    assert!(!vmx.legacy_machine);
    assert_eq!(vmx.firmware, Firmware::Efi { secure_boot: true });
    assert_eq!(vmx.disks.len(), 1);
    assert_eq!(vmx.disks[0].bus, VmxBus::Scsi);
    assert_eq!(vmx.disks[0].controller_model.as_deref(), Some("lsisas1068"));
    let name = El::parse(&xml).one("name").text.clone();
    assert_eq!(
        summarize(&xml),
        Summary {
            domain_type: s("kvm"),
            machine: s("q35"),
            firmware: Some(s("efi")),
            secure_loader: true,
            smm: true,
            memory_mib: s("8192"),
            vcpus: s("4"),
            cpu_mode: Some(s("host-passthrough")),
            topology: (s("2"), s("2"), s("1")),
            clock: s("localtime"),
            hyperv: true,
            disks: vec![(s("sda"), s("sata"), disk_path(&name, 0))],
            nics: vec![(
                s("e1000e"),
                Some(s("00:50:56:9a:1b:2c")),
                s("lv-VM Network")
            )],
        }
    );
    let d = El::parse(&xml);
    assert_eq!(d.one("uuid").text, "42163b5e-0c8f-1a2b-9d4e-5f60718293a4");
    let hv = d.one("features").one("hyperv");
    assert_eq!(hv.one("spinlocks").at("retries"), Some("8191"));
    assert!(d
        .one("clock")
        .all("timer")
        .iter()
        .any(|t| t.at("name") == Some("hypervclock") && t.at("present") == Some("yes")));
    // libvirt kept what matters.
    let b = El::parse(&back);
    assert_eq!(b.one("uuid").text, "42163b5e-0c8f-1a2b-9d4e-5f60718293a4");
    let bs = summarize(&back);
    assert!(bs.machine.starts_with("pc-q35"), "{}", bs.machine);
    assert_eq!(bs.nics[0].1.as_deref(), Some("00:50:56:9a:1b:2c"));
    assert_eq!(bs.firmware.as_deref(), Some("efi"));
}

const WIN2008R2_BIOS: &str = r#".encoding = "UTF-8"
displayName = "legacy-app"
guestOS = "windows7srv-64"
memsize = "4096"
numvcpus = "2"
scsi0.virtualDev = "lsilogic"
scsi0.present = "TRUE"
scsi0:0.fileName = "legacy-app.vmdk"
scsi0:0.present = "TRUE"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "e1000"
ethernet0.networkName = "Prod"
ethernet0.addressType = "static"
ethernet0.address = "00:50:56:3F:00:10"
ethernet0.generatedAddress = "00:0c:29:aa:bb:cc"
"#;

#[test]
fn windows_2008r2_bios_gets_pc_ide_e1000_and_its_static_mac() {
    let (vmx, xml, back) = through_everything(WIN2008R2_BIOS.as_bytes(), "win2008r2");
    assert!(vmx.legacy_machine);
    assert_eq!(vmx.firmware, Firmware::Bios);
    let name = El::parse(&xml).one("name").text.clone();
    assert_eq!(
        summarize(&xml),
        Summary {
            domain_type: s("kvm"),
            machine: s("pc"),
            firmware: None,
            secure_loader: false,
            smm: false,
            memory_mib: s("4096"),
            vcpus: s("2"),
            cpu_mode: Some(s("host-passthrough")),
            topology: (s("2"), s("1"), s("1")),
            clock: s("localtime"),
            hyperv: true,
            disks: vec![(s("hda"), s("ide"), disk_path(&name, 0))],
            nics: vec![(s("e1000"), Some(s("00:50:56:3f:00:10")), s("lv-Prod"))],
        }
    );
    assert!(summarize(&back).machine.starts_with("pc-i440fx"));
}

const UBUNTU: &str = r#".encoding = "UTF-8"
displayName = "ubuntu-web"
guestOS = "ubuntu-64"
memsize = "2048"
numvcpus = "2"
cpuid.coresPerSocket = "2"
scsi0.virtualDev = "pvscsi"
scsi0.present = "TRUE"
scsi0:0.fileName = "ubuntu-web.vmdk"
scsi0:0.present = "TRUE"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "DMZ"
ethernet0.addressType = "generated"
ethernet0.generatedAddress = "00:0c:29:12:34:56"
ethernet0.pciSlotNumber = "192"
"#;

/// The NIC's root port as libvirt keeps it: (its alias, the slot number the QEMU override
/// gives it, the bus the NIC sits on).
fn nic_port(xml: &str) -> Option<(String, String, String)> {
    let d = El::parse(xml);
    let dev = d.one("devices");
    let port = dev
        .all("controller")
        .into_iter()
        .find(|c| c.at("model") == Some("pcie-root-port") && c.opt("alias").is_some())?;
    let alias = port.one("alias").at("name").unwrap().to_string();
    let ov = d
        .one("qemu:override")
        .all("qemu:device")
        .into_iter()
        .find(|x| x.at("alias") == Some(alias.as_str()))
        .expect("an override for the port");
    let prop = ov.one("qemu:frontend").one("qemu:property");
    assert_eq!(
        (prop.at("name"), prop.at("type")),
        (Some("slot"), Some("unsigned"))
    );
    let args: Vec<&str> = d
        .one("qemu:commandline")
        .all("qemu:arg")
        .iter()
        .map(|a| a.at("value").unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "-global",
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"
        ]
    );
    let nic_bus = dev.one("interface").one("address").at("bus").unwrap();
    assert_eq!(
        u32::from_str_radix(nic_bus.trim_start_matches("0x"), 16)
            .unwrap()
            .to_string(),
        port.at("index").unwrap(),
        "the NIC sits behind its port"
    );
    Some((alias, prop.at("value").unwrap().into(), nic_bus.into()))
}

#[test]
fn ubuntu_pvscsi_vmxnet3_gets_virtio_scsi_disk_and_a_nic_on_vmwares_slot() {
    let (vmx, xml, back) = through_everything(UBUNTU.as_bytes(), "ubuntu");
    assert_eq!(vmx.os, OsFamily::Linux);
    assert_eq!(vmx.nics[0].model.as_deref(), Some("vmxnet3"));
    assert_eq!(vmx.disks[0].controller_model.as_deref(), Some("pvscsi"));
    let name = El::parse(&xml).one("name").text.clone();
    assert_eq!(
        summarize(&xml),
        Summary {
            domain_type: s("kvm"),
            machine: s("q35"),
            firmware: None,
            secure_loader: false,
            smm: false,
            memory_mib: s("2048"),
            vcpus: s("2"),
            cpu_mode: Some(s("host-passthrough")),
            topology: (s("1"), s("2"), s("1")),
            clock: s("utc"),
            hyperv: false,
            disks: vec![(s("sda"), s("scsi"), disk_path(&name, 0))],
            nics: vec![(s("virtio"), Some(s("00:0c:29:12:34:56")), s("lv-DMZ"))],
        }
    );
    let d = El::parse(&xml);
    let dev = d.one("devices");
    assert_eq!(dev.one("serial").at("type"), Some("pty"));
    assert_eq!(dev.one("console").at("type"), Some("pty"));
    assert_eq!(summarize(&back).disks[0].1, "scsi");
    let want = Some((s("ua-vmdkimport-nic0-port"), s("192"), s("0x01")));
    assert_eq!(nic_port(&xml), want);
    assert_eq!(
        nic_port(&back),
        want,
        "libvirt keeps the port, its alias and the override"
    );
    let scsi = El::parse(&back)
        .one("devices")
        .all("controller")
        .into_iter()
        .filter(|c| c.at("type") == Some("scsi"))
        .map(|c| c.at("model").unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(scsi, ["virtio-scsi"]);
}

#[test]
fn kvm_nic_names_and_virtio_blk_give_the_plain_domain() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), UBUNTU.as_bytes())).unwrap();
    let name = unique("ubuntu-kvm");
    let mut spec = spec_for(&vmx, &name);
    spec.nic_slots = false;
    spec.linux_disk_bus = vmdkimport::domain_xml::DiskBus::Virtio;
    let xml = render(&spec).unwrap();
    validate(&xml);
    assert!(
        !xml.contains("qemu:") && !xml.contains("pcie-root-port"),
        "{xml}"
    );
    let back = Defined::new(&xml, &name).inactive_xml();
    assert_eq!(nic_port(&back), None);
    assert_eq!(summarize(&back).disks[0].0, "vda");
}

const RHEL_THREE_DISKS: &str = r#".encoding = "UTF-8"
displayName = "rhel-db"
guestOS = "rhel8-64"
memsize = "16384"
numvcpus = "8"
cpuid.coresPerSocket = "4"
scsi0.virtualDev = "lsilogic"
scsi0.present = "TRUE"
scsi1.virtualDev = "pvscsi"
scsi1.present = "TRUE"
scsi1:0.fileName = "rhel-db_1.vmdk"
scsi1:0.present = "TRUE"
scsi0:0.fileName = "rhel-db.vmdk"
scsi0:0.present = "TRUE"
scsi0:1.fileName = "/vmfs/volumes/datastore2/rhel-db/rhel-db_2.vmdk"
scsi0:1.mode = "independent-persistent"
scsi0:1.present = "TRUE"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "Backend"
ethernet0.addressType = "vpx"
ethernet0.generatedAddress = "00:50:56:aa:00:01"
ethernet1.present = "TRUE"
ethernet1.virtualDev = "vmxnet3"
ethernet1.networkName = "Backup"
ethernet1.addressType = "vpx"
ethernet1.generatedAddress = "00:50:56:aa:00:02"
"#;

#[test]
fn rhel_disks_come_in_controller_order_and_the_independent_one_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), RHEL_THREE_DISKS.as_bytes())).unwrap();
    let got: Vec<(String, Option<&str>, PathBuf, bool)> = vmx
        .disks
        .iter()
        .map(|d| {
            (
                d.slot(),
                d.controller_model.as_deref(),
                d.file_name.clone(),
                d.independent,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                s("scsi0:0"),
                Some("lsilogic"),
                dir.path().join("rhel-db.vmdk"),
                false
            ),
            (
                s("scsi0:1"),
                Some("lsilogic"),
                PathBuf::from("/vmfs/volumes/datastore2/rhel-db/rhel-db_2.vmdk"),
                true
            ),
            (
                s("scsi1:0"),
                Some("pvscsi"),
                dir.path().join("rhel-db_1.vmdk"),
                false
            ),
        ]
    );
    assert!(vmx
        .notes
        .iter()
        .any(|n| n.contains("scsi0:1") && n.contains("outside")));
    let (_, xml, _) = through_everything(RHEL_THREE_DISKS.as_bytes(), "rhel");
    let name = El::parse(&xml).one("name").text.clone();
    let sm = summarize(&xml);
    assert_eq!(sm.topology, (s("2"), s("4"), s("1")));
    assert_eq!(sm.memory_mib, "16384");
    assert_eq!(
        sm.disks,
        vec![
            (s("sda"), s("scsi"), disk_path(&name, 0)),
            (s("sdb"), s("scsi"), disk_path(&name, 1)),
            (s("sdc"), s("scsi"), disk_path(&name, 2)),
        ]
    );
    // VMware's controller and unit: scsi0:0, scsi0:1, scsi1:0.
    let parsed = El::parse(&xml);
    let places: Vec<(Option<&str>, Option<&str>)> = parsed
        .one("devices")
        .all("disk")
        .iter()
        .map(|k| {
            (
                k.one("address").at("controller"),
                k.one("address").at("target"),
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            (Some("0"), Some("0")),
            (Some("0"), Some("1")),
            (Some("1"), Some("0"))
        ]
    );
    assert_eq!(
        sm.nics,
        vec![
            (s("virtio"), Some(s("00:50:56:aa:00:01")), s("lv-Backend")),
            (s("virtio"), Some(s("00:50:56:aa:00:02")), s("lv-Backup")),
        ]
    );
    // Only the first disk boots.
    let d = El::parse(&xml);
    let boots: Vec<Option<&str>> = d
        .one("devices")
        .all("disk")
        .iter()
        .map(|k| k.opt("boot").and_then(|b| b.at("order")))
        .collect();
    assert_eq!(boots, vec![Some("1"), None, None]);
}

#[test]
fn hostile_display_name_is_escaped_into_the_title() {
    let text = b"displayName = \"|22quoted|22 <b>&amp; 'x' |7C|23 ]]>\"\nguestOS = \"other3xlinux-64\"\nmemsize = \"512\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"a.vmdk\"\n";
    let (vmx, xml, back) = through_everything(text, "hostile");
    let want = "\"quoted\" <b>&amp; 'x' |# ]]>";
    assert_eq!(vmx.display_name.as_deref(), Some(want));
    assert_eq!(El::parse(&xml).one("title").text, want);
    assert_eq!(El::parse(&back).one("title").text, want);
}

#[test]
fn hostile_values_in_paths_and_networks_stay_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), UBUNTU.as_bytes())).unwrap();
    let name = unique("hostile-paths");
    let weird = "/var/tmp/a'b\"c<d>&e.raw";
    let spec = spec_from_vmx(
        &vmx,
        &name,
        "kvm",
        vec![DiskSource::File(PathBuf::from(weird))],
        &|_| NetSource::Network("net'\"<&>".into()),
    )
    .unwrap();
    let xml = render(&spec).unwrap();
    validate(&xml);
    let sm = summarize(&xml);
    assert_eq!(sm.disks[0].2, weird);
    assert_eq!(sm.nics[0].2, "net'\"<&>");
    let back = Defined::new(&xml, &name).inactive_xml();
    assert_eq!(summarize(&back).disks[0].2, weird);
}

#[test]
fn windows_1252_display_name_is_decoded() {
    let mut text = b".encoding = \"windows-1252\"\ndisplayName = \"Caf\xe9 \x80 M\xfcller \x93x\x94\"\nguestOS = \"windows9srv-64\"\nmemsize = \"2048\"\nsata0.present = \"TRUE\"\nsata0:0.present = \"TRUE\"\nsata0:0.fileName = \"d.vmdk\"\n".to_vec();
    text.extend_from_slice(b"# trailing comment \xff\n");
    let (vmx, xml, back) = through_everything(&text, "cp1252");
    let want = "Café € Müller \u{201c}x\u{201d}";
    assert_eq!(vmx.display_name.as_deref(), Some(want));
    assert_eq!(vmx.disks[0].bus, VmxBus::Sata);
    assert_eq!(El::parse(&xml).one("title").text, want);
    assert_eq!(El::parse(&back).one("title").text, want);
}

const PRESENT_FALSE_AND_CDROM: &str = r#"displayName = "mixed"
guestOS = "centos7-64"
memsize = "1024"
numvcpus = "1"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsilogic"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "mixed.vmdk"
scsi0:1.present = "FALSE"
scsi0:1.fileName = "old.vmdk"
sata0.present = "FALSE"
sata0:0.present = "TRUE"
sata0:0.fileName = "orphan.vmdk"
ide1:0.present = "TRUE"
ide1:0.deviceType = "cdrom-image"
ide1:0.fileName = "/vmfs/volumes/iso/CentOS-7.iso"
sata0:1.present = "TRUE"
sata0:1.deviceType = "atapi-cdrom"
sata0:1.fileName = "auto detect"
nvme0.present = "TRUE"
nvme0:0.present = "TRUE"
nvme0:0.fileName = "fast.vmdk"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "e1000"
ethernet0.networkName = "LAN"
ethernet0.generatedAddress = "00:0c:29:00:00:01"
ethernet1.present = "FALSE"
ethernet1.networkName = "Gone"
ethernet1.generatedAddress = "00:0c:29:00:00:02"
floppy0.present = "TRUE"
"#;

#[test]
fn present_false_devices_and_cdroms_are_dropped_with_notes() {
    let (vmx, xml, _) = through_everything(PRESENT_FALSE_AND_CDROM.as_bytes(), "mixed");
    let slots: Vec<String> = vmx.disks.iter().map(|d| d.slot()).collect();
    assert_eq!(slots, vec!["scsi0:0", "nvme0:0"]);
    assert_eq!(vmx.cdroms.len(), 1, "{:?}", vmx.cdroms);
    assert!(vmx.cdroms[0].contains("CentOS-7.iso"));
    assert_eq!(vmx.nics.len(), 1);
    assert_eq!(vmx.nics[0].mac.as_deref(), Some("00:0c:29:00:00:01"));
    for needle in ["scsi0:1", "sata0:0", "ide1:0", "ethernet1", "floppy0"] {
        assert!(
            vmx.notes.iter().any(|n| n.contains(needle)),
            "no note mentions {needle}: {:#?}",
            vmx.notes
        );
    }
    let sm = summarize(&xml);
    assert_eq!(sm.disks.len(), 2);
    assert_eq!(sm.nics.len(), 1);
}

#[test]
fn tcg_windows_domain_gets_topology_without_host_cpu_mode_or_hyperv() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), WIN2008R2_BIOS.as_bytes())).unwrap();
    let name = unique("tcg");
    let spec = spec_from_vmx(&vmx, &name, "qemu", file_sources(&name, 1), &|_| {
        NetSource::Bridge("br0".into())
    })
    .unwrap();
    let xml = render(&spec).unwrap();
    validate(&xml);
    let d = El::parse(&xml);
    assert_eq!(d.at("type"), Some("qemu"));
    assert_eq!(d.one("cpu").at("mode"), None);
    assert!(d.one("features").opt("hyperv").is_none());
    assert!(d
        .one("clock")
        .all("timer")
        .iter()
        .all(|t| t.at("name") != Some("hypervclock")));
    assert_eq!(d.one("clock").at("offset"), Some("localtime"));
    assert_eq!(spec.cpu, CpuMode::Default);
    assert_eq!(
        d.one("devices").all("interface")[0].at("type"),
        Some("bridge")
    );
    Defined::new(&xml, &name);
}

#[test]
fn spec_from_vmx_wants_one_source_per_disk() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), RHEL_THREE_DISKS.as_bytes())).unwrap();
    let e = spec_from_vmx(&vmx, "x", "kvm", file_sources("x", 1), &|_| {
        NetSource::Network("default".into())
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the .vmx has 3 disks but 1 disk sources were given"
    );
}

// ---- switch to virtio ----

#[test]
fn switch_to_virtio_keeps_macs_drops_driver_disk_and_follows_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = WIN2019_EFI.to_string();
    text.push_str(
        "scsi0:1.fileName = \"data.vmdk\"\nscsi0:1.present = \"TRUE\"\nethernet1.present = \"TRUE\"\nethernet1.virtualDev = \"e1000e\"\nethernet1.networkName = \"Backup\"\nethernet1.addressType = \"static\"\nethernet1.address = \"00:50:56:00:00:99\"\n",
    );
    let vmx = parse_vmx(&write_vmx(dir.path(), text.as_bytes())).unwrap();
    let name = unique("switch");
    let mut spec = spec_for(&vmx, &name);
    // Another test defines a domain with this .vmx's uuid.bios at the same time.
    spec.uuid = None;
    spec.extra_virtio_disk = Some(DiskSource::File(PathBuf::from(format!(
        "/var/tmp/{name}-drivers.raw"
    ))));
    let xml = render(&spec).unwrap();
    validate(&xml);
    let before = summarize(&xml);
    assert_eq!(
        before
            .disks
            .iter()
            .map(|d| (d.0.as_str(), d.1.as_str()))
            .collect::<Vec<_>>(),
        vec![("sda", "sata"), ("sdb", "sata"), ("vda", "virtio")]
    );

    // Defined on libvirtd with import state in its metadata, then switched from libvirt's XML.
    let dom = Defined::new(&xml, &name);
    let state = ImportState {
        disks: vec![
            DiskState {
                target_dev: "sda".into(),
                pool: "default".into(),
                volume: format!("{name}-disk0"),
                capacity: 1 << 30,
                base_cid: Some(0x1234abcd),
                base_uploaded: true,
                applying: false,
                applying_from: None,
                source: Some("win2019-dc01.vmdk".into()),
                applied: vec![],
                volume_mtime: None,
            },
            DiskState {
                target_dev: "sdb".into(),
                pool: "default".into(),
                volume: format!("{name}-disk1"),
                capacity: 2 << 30,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    virsh(&[
        "metadata",
        &name,
        NS_URI,
        "--key",
        NS_PREFIX,
        "--set",
        &state.to_xml(),
        "--config",
    ]);
    let defined = dom.inactive_xml();
    assert_eq!(
        El::parse(&defined)
            .one("devices")
            .all("disk")
            .iter()
            .filter(|d| d.opt("alias").and_then(|a| a.at("name")) == Some(DRIVER_DISK_ALIAS))
            .count(),
        1,
        "libvirt keeps the driver disk's user alias"
    );
    let switched = switch_to_virtio(&defined).unwrap();
    validate(&switched);
    let after = summarize(&switched);
    assert_eq!(
        after
            .disks
            .iter()
            .map(|d| (d.0.as_str(), d.1.as_str(), d.2.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("vda", "virtio", before.disks[0].2.as_str()),
            ("vdb", "virtio", before.disks[1].2.as_str())
        ]
    );
    let macs = |s: &Summary| s.nics.iter().map(|n| n.1.clone()).collect::<Vec<_>>();
    assert_eq!(macs(&after), macs(&before));
    assert!(after.nics.iter().all(|n| n.0 == "virtio"));
    let d = El::parse(&switched);
    for k in d.one("devices").all("disk") {
        assert!(k.opt("address").is_none(), "disk address left: {k:?}");
    }

    // libvirt takes the switched definition, and the recorded targets moved with the disks.
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &switched).unwrap();
    virsh(&["define", f.path().to_str().unwrap()]);
    let redefined = dom.inactive_xml();
    let rs = summarize(&redefined);
    assert_eq!(macs(&rs), macs(&before));
    assert_eq!(rs.disks.len(), 2);
    assert!(rs.disks.iter().all(|d| d.1 == "virtio"));
    let meta = virsh(&["metadata", &name, NS_URI, "--config"]);
    let got = ImportState::from_xml(&meta).unwrap();
    let targets: Vec<&str> = got.disks.iter().map(|d| d.target_dev.as_str()).collect();
    assert_eq!(targets, vec!["vda", "vdb"]);
    assert_eq!(got.disks[0].base_cid, Some(0x1234abcd));
    assert_eq!(
        vmdkimport::state::from_domain_xml(&redefined).unwrap(),
        Some(got)
    );
}

#[test]
fn switch_to_virtio_on_a_legacy_ide_domain_is_accepted_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = WIN2008R2_BIOS.to_string();
    text.push_str("scsi0:1.fileName = \"data.vmdk\"\nscsi0:1.present = \"TRUE\"\n");
    let vmx = parse_vmx(&write_vmx(dir.path(), text.as_bytes())).unwrap();
    let name = unique("switch-legacy");
    let xml = render(&spec_for(&vmx, &name)).unwrap();
    let dom = Defined::new(&xml, &name);
    let switched = switch_to_virtio(&dom.inactive_xml()).unwrap();
    validate(&switched);
    assert_eq!(switch_to_virtio(&switched).unwrap(), switched);
    let sm = summarize(&switched);
    let buses: Vec<(&str, &str)> = sm
        .disks
        .iter()
        .map(|d| (d.0.as_str(), d.1.as_str()))
        .collect();
    assert_eq!(buses, vec![("vda", "virtio"), ("vdb", "virtio")]);
    assert_eq!(
        sm.nics,
        vec![(s("virtio"), Some(s("00:50:56:3f:00:10")), s("lv-Prod"))]
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &switched).unwrap();
    virsh(&["define", f.path().to_str().unwrap()]);
    assert_eq!(summarize(&dom.inactive_xml()).disks.len(), 2);
}

// ---- import state through libvirtd ----

#[test]
fn import_state_with_hostile_strings_round_trips_through_libvirt_metadata() {
    let nasty = "q\"a'<b>&c;\t\n\r ]]> <!-- --> é 日本";
    let state = ImportState {
        disks: vec![DiskState {
            target_dev: "vda".into(),
            pool: nasty.into(),
            volume: format!("vol {nasty}"),
            capacity: u64::MAX,
            base_cid: Some(u32::MAX),
            base_uploaded: true,
            applying: true,
            applying_from: None,
            source: Some(nasty.into()),
            applied: vec![
                AppliedDelta {
                    file: nasty.into(),
                    cid: Some(0),
                    parent_cid: Some(u32::MAX),
                    handed_over: true,
                    active: false,
                },
                AppliedDelta {
                    file: "b-000002.vmdk".into(),
                    cid: None,
                    parent_cid: Some(0),
                    handed_over: false,
                    active: false,
                },
            ],
            volume_mtime: None,
        }],
        ..Default::default()
    };
    assert_eq!(ImportState::from_xml(&state.to_xml()).unwrap(), state);

    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), UBUNTU.as_bytes())).unwrap();
    let name = unique("state");
    let xml = render(&spec_for(&vmx, &name)).unwrap();
    let _dom = Defined::new(&xml, &name);
    virsh(&[
        "metadata",
        &name,
        NS_URI,
        "--key",
        NS_PREFIX,
        "--set",
        &state.to_xml(),
        "--config",
    ]);
    let meta = virsh(&["metadata", &name, NS_URI, "--config"]);
    assert_eq!(ImportState::from_xml(&meta).unwrap(), state, "{meta}");
}

// ---- rendered domains start ----

/// A running domain, destroyed (then undefined by its [`Defined`]) when dropped.
struct Running<'a>(&'a Defined);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", URI, "destroy", &self.0 .0])
            .output();
    }
}

fn starts(vmx_text: &str, case: &str, adjust: impl Fn(&mut DomainSpec)) {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), vmx_text.as_bytes())).unwrap();
    let name = unique(case);
    // QEMU runs as root here (see LIBVIRT.md), so a file in a private temp dir is readable.
    let work = tempfile::Builder::new()
        .prefix("vmdkimport-start")
        .tempdir_in("/var/tmp")
        .unwrap();
    let disks: Vec<DiskSource> = (0..vmx.disks.len())
        .map(|i| {
            let p = work.path().join(format!("disk{i}.raw"));
            std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
            DiskSource::File(p)
        })
        .collect();
    let mut spec = spec_from_vmx(&vmx, &name, "kvm", disks, &|_| {
        NetSource::Network("default".into())
    })
    .unwrap();
    // No libvirt network may exist here: NICs are covered by the define tests.
    spec.nics.clear();
    // This machine's (nested) KVM cannot set the arch-capabilities MSR nor the Hyper-V
    // VP_INDEX/VAPIC MSRs: the spec's knobs for such hosts.
    spec.cpu_disable_features = vec!["arch-capabilities".into()];
    spec.hyperv_passthrough = true;
    // Another test defines a domain with this .vmx's uuid.bios at the same time.
    spec.uuid = None;
    adjust(&mut spec);
    let log = work.path().join("console.log");
    spec.serial_log = Some(log.clone());
    let xml = render(&spec).unwrap();
    validate(&xml);
    let dom = Defined::new(&xml, &name);
    virsh(&["start", &name]);
    let _running = Running(&dom);
    assert_eq!(virsh(&["domstate", &name]).trim(), "running");
    assert!(log.exists(), "virtlogd did not create the console log");
}

/// This machine's KVM offers no SMM ("System Management Mode not supported by this
/// hypervisor"), which secure boot needs, and OVMF stops there with a KVM emulation failure
/// (the domain pauses). So the secure-boot domain is only defined (above), and this starts the
/// same Windows domain with OVMF without secure boot under TCG (`type='qemu'`), where the
/// renderer leaves out the Hyper-V enlightenments TCG refuses.
#[test]
fn windows_efi_domain_starts_under_tcg() {
    starts(WIN2019_EFI, "start-win2019", |s| {
        s.firmware = Firmware::Efi { secure_boot: false };
        s.domain_type = "qemu".into();
        s.cpu = CpuMode::Default;
        s.cpu_disable_features.clear();
        s.hyperv_passthrough = false;
    });
}

#[test]
fn legacy_windows_domain_starts() {
    starts(WIN2008R2_BIOS, "start-win2008r2", |_| {});
}

#[test]
fn linux_domain_with_three_disks_starts() {
    starts(RHEL_THREE_DISKS, "start-rhel", |_| {});
}

#[test]
#[ignore = "prints a rendered Windows domain and its virtio switch, for reading"]
fn print_windows_example() {
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), WIN2019_EFI.as_bytes())).unwrap();
    let mut spec = spec_for(&vmx, "web1");
    spec.extra_virtio_disk = Some(DiskSource::Volume {
        pool: "default".into(),
        volume: "web1-drivers".into(),
    });
    spec.serial_log = Some("/var/log/web1.log".into());
    let xml = render(&spec).unwrap();
    println!("{xml}\n----\n{}", switch_to_virtio(&xml).unwrap());
}

/// A boot sector (nasm, `org 0x7c00`): print the marker on COM1, then power off through the
/// q35 ACPI PM1a control port (0x604, SLP_EN | S5) so the test can wait for the stop event
/// instead of sleeping.
fn boot_sector(marker: &[u8]) -> Vec<u8> {
    const CODE: [u8; 24] = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xbe, 0x18, 0x7c, // mov si, 0x7c18 (the message, right after the code)
        0xac, // .l: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz .h
        0xee, // out dx, al
        0xeb, 0xf8, // jmp .l
        0xba, 0x04, 0x06, // .h: mov dx, 0x604
        0xb8, 0x00, 0x20, // mov ax, 0x2000
        0xef, // out dx, ax
        0xf4, // .s: hlt
        0xeb, 0xfd, // jmp .s
    ];
    let mut s = vec![0u8; 512];
    s[..CODE.len()].copy_from_slice(&CODE);
    s[CODE.len()..CODE.len() + marker.len()].copy_from_slice(marker);
    assert!(CODE.len() + marker.len() < 510, "marker too long");
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

#[test]
fn linux_domain_boots_from_its_disk_and_the_serial_log_shows_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let vmx = parse_vmx(&write_vmx(dir.path(), UBUNTU.as_bytes())).unwrap();
    let name = unique("boot");
    let work = tempfile::Builder::new()
        .prefix("vmdkimport-boot")
        .tempdir_in("/var/tmp")
        .unwrap();
    let disk = work.path().join("disk0.raw");
    let marker = format!("VMDKIMPORT-BOOT-{}", std::process::id());
    let mut image = boot_sector(format!("{marker}\r\n\0").as_bytes());
    image.resize(1 << 20, 0);
    std::fs::write(&disk, &image).unwrap();
    let mut spec = spec_from_vmx(&vmx, &name, "kvm", vec![DiskSource::File(disk)], &|_| {
        NetSource::Network("default".into())
    })
    .unwrap();
    spec.nics.clear();
    spec.uuid = None;
    spec.cpu_disable_features = vec!["arch-capabilities".into()];
    let log = work.path().join("console.log");
    spec.serial_log = Some(log.clone());
    let xml = render(&spec).unwrap();
    let dom = Defined::new(&xml, &name);

    // Listen before starting: the guest needs seconds to reach the boot sector, virsh event
    // milliseconds to register. Its own timeout keeps a guest that never stops from hanging.
    let mut events = Command::new("virsh")
        .args(["-q", "-c", URI, "event", &name, "--event", "lifecycle"])
        .args(["--loop", "--timeout", "120"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    virsh(&["start", &name]);
    let _running = Running(&dom);
    let mut stopped = false;
    for line in BufReader::new(events.stdout.take().unwrap()).lines() {
        if line.unwrap().contains("Stopped") {
            stopped = true;
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(stopped, "the guest never powered off; console: {console:?}");
    assert!(console.contains(&marker), "console: {console:?}");
}
