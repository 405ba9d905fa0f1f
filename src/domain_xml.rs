//! libvirt domain XML: filled from `xml-templates/` for Linux and Windows guests, and rewritten to virtio once Windows has the drivers.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::vmx::{Firmware, OsFamily, VmxConfig, VmxNic};
use crate::xmltree::{self, Element, Node};

const LINUX_TEMPLATE: &str = include_str!("../xml-templates/linux.xml");
const WINDOWS_TEMPLATE: &str = include_str!("../xml-templates/windows.xml");

/// User alias (libvirt keeps `ua-` aliases in the persistent definition) that marks the small
/// extra virtio disk which makes Windows install its storage driver; [`switch_to_virtio`]
/// removes the disk carrying it.
pub const DRIVER_DISK_ALIAS: &str = "ua-vmdkimport-driverdisk";

/// The `pc` machine's IDE has two buses of two units: hda-hdd.
const MAX_IDE_DISKS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A volume in a libvirt storage pool (what the import creates).
    Volume {
        pool: String,
        volume: String,
    },
    File(PathBuf),
    Block(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Sata,
    Ide,
    /// virtio-scsi: a controller is added.
    Scsi,
}

impl DiskBus {
    fn name(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Sata => "sata",
            DiskBus::Ide => "ide",
            DiskBus::Scsi => "scsi",
        }
    }

    fn dev_prefix(self) -> &'static str {
        match self {
            DiskBus::Virtio => "vd",
            DiskBus::Sata | DiskBus::Scsi => "sd",
            DiskBus::Ide => "hd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub source: DiskSource,
    /// None: the OS's default ([`DomainSpec::linux_disk_bus`] for Linux, SATA for Windows, IDE
    /// for legacy Windows).
    pub bus_override: Option<DiskBus>,
    /// The disk's SCSI controller and unit in the .vmx (`scsi1:2` is (1, 2)): on virtio-scsi it
    /// keeps that place (controller, SCSI target), so the guest's `sdX` names keep VMware's order.
    pub scsi_slot: Option<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetSource {
    Network(String),
    Bridge(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    pub net: NetSource,
    /// Lowercase `aa:bb:cc:dd:ee:ff`; None lets libvirt generate one.
    pub mac: Option<String>,
    /// A libvirt model (`virtio`, `e1000e`, `e1000`, `rtl8139`, ...); None: the OS's default.
    pub model_override: Option<String>,
    /// The PCI slot number VMware gave the NIC (`ethernetN.pciSlotNumber`); see
    /// [`DomainSpec::nic_slots`].
    pub pci_slot: Option<u32>,
}

/// The guest CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuMode {
    /// The host's CPU as is: fastest, and what modern guests (Windows 11 24H2 needs SSE4.2 and
    /// POPCNT) expect. Needs KVM: under TCG (`type='qemu'`) it fails.
    HostPassthrough,
    /// libvirt's closest named model plus features; migratable between similar hosts.
    HostModel,
    /// A named model (`EPYC-Milan`, `Skylake-Server`, ...) for clusters of mixed hosts.
    Model(String),
    /// No mode: QEMU's default (`qemu64`). Works with KVM and TCG alike; only the topology is set.
    Default,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    pub uuid: Option<String>,
    pub title: Option<String>,
    /// `kvm` or `qemu`.
    pub domain_type: String,
    pub os: OsFamily,
    /// Windows only: `pc` machine, IDE disks, e1000 NIC.
    pub legacy_machine: bool,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub cores_per_socket: Option<u32>,
    pub cpu: CpuMode,
    /// CPU features to turn off (`<feature policy='disable'>`), e.g. `arch-capabilities` on
    /// nested hosts whose KVM cannot set that MSR ("failed to set MSR 0x10a").
    pub cpu_disable_features: Vec<String>,
    /// Windows: `<hyperv mode='passthrough'/>`, every enlightenment the host's KVM offers,
    /// instead of the template's fixed list (relaxed, vapic, spinlocks, vpindex, runtime, synic,
    /// stimer, reset, frequencies) and hypervclock timer. For hosts whose KVM lacks some of them
    /// (QEMU then stops with "kernel doesn't allow setting HyperV VP_INDEX"); KVM only.
    pub hyperv_passthrough: bool,
    pub firmware: Firmware,
    /// The first disk boots.
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    /// The COM1 console is also logged to this file (tests read it to see a guest boot).
    pub serial_log: Option<PathBuf>,
    /// Windows: a small extra virtio disk so Windows installs the virtio storage driver
    /// before [`switch_to_virtio`] moves the boot disk to virtio.
    pub extra_virtio_disk: Option<DiskSource>,
    /// Linux guests: each NIC with a `pci_slot` sits alone behind a pcie-root-port whose PCIe
    /// slot number is that one, so the guest names it as VMware's did (`ens192`); see
    /// [`nic_slot_notes`].
    pub nic_slots: bool,
    /// The bus of a Linux guest's disks: [`DiskBus::Scsi`] (virtio-scsi, `sdX` as on VMware)
    /// or [`DiskBus::Virtio`] (virtio-blk, `vdX`).
    pub linux_disk_bus: DiskBus,
}

/// libvirt's namespace for QEMU pass-through elements (`<qemu:commandline>`, `<qemu:override>`).
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// QEMU's switch from ACPI hotplug to native PCIe hotplug on q35's bridges and root ports:
/// with ACPI hotplug (QEMU's default since 6.1) Linux names a slot by acpiphp (`enp1s0`), with
/// native hotplug by the root port's slot number (pciehp, `ens192`).
pub const NATIVE_HOTPLUG_GLOBAL: &str = "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off";

/// The user alias of the root port that carries the domain's NIC number `i` (from 0): libvirt
/// keeps `ua-` aliases in the persistent definition, and `<qemu:override>` finds the device by it.
pub fn nic_port_alias(i: usize) -> String {
    format!("{NIC_PORT_ALIAS_PREFIX}{i}-port")
}

/// What every [`nic_port_alias`] starts with.
pub const NIC_PORT_ALIAS_PREFIX: &str = "ua-vmdkimport-nic";

/// The DomainSpec for a parsed .vmx. `disk_sources` gives one source per `vmx.disks` entry, in
/// the same order; `net_for` maps each NIC (by its VMware network name) to a libvirt network or
/// bridge. Memory defaults to 1024 MiB and CPUs to 1 when the .vmx does not say. The CPU is
/// host-passthrough under KVM and QEMU's default under TCG.
pub fn spec_from_vmx(
    vmx: &VmxConfig,
    name: &str,
    domain_type: &str,
    disk_sources: Vec<DiskSource>,
    net_for: &dyn Fn(&VmxNic) -> NetSource,
) -> Result<DomainSpec> {
    ensure!(
        disk_sources.len() == vmx.disks.len(),
        "the .vmx has {} disks but {} disk sources were given",
        vmx.disks.len(),
        disk_sources.len()
    );
    Ok(DomainSpec {
        name: name.to_string(),
        uuid: vmx.uuid_bios.clone(),
        title: vmx.display_name.clone(),
        domain_type: domain_type.to_string(),
        os: vmx.os,
        legacy_machine: vmx.legacy_machine,
        memory_mib: vmx.memory_mib.unwrap_or(1024),
        vcpus: vmx.vcpus.unwrap_or(1),
        cores_per_socket: vmx.cores_per_socket,
        cpu: if domain_type == "kvm" {
            CpuMode::HostPassthrough
        } else {
            CpuMode::Default
        },
        cpu_disable_features: Vec::new(),
        hyperv_passthrough: false,
        firmware: vmx.firmware,
        disks: disk_sources
            .into_iter()
            .zip(&vmx.disks)
            .map(|(source, d)| DiskSpec {
                source,
                bus_override: None,
                scsi_slot: (d.bus == crate::vmx::VmxBus::Scsi).then_some((d.controller, d.unit)),
            })
            .collect(),
        nics: vmx
            .nics
            .iter()
            .map(|n| NicSpec {
                net: net_for(n),
                mac: n.mac.clone(),
                model_override: None,
                pci_slot: n.pci_slot,
            })
            .collect(),
        serial_log: None,
        extra_virtio_disk: None,
        nic_slots: true,
        linux_disk_bus: DiskBus::Scsi,
    })
}

/// `vda`, ..., `vdz`, `vdaa`, ... as libvirt counts targets.
pub fn target_dev(prefix: &str, index: usize) -> String {
    let mut n = index + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("{prefix}{}", String::from_utf8(letters).expect("ASCII"))
}

/// (sockets, cores, threads) for `vcpus` with VMware's cores per socket; a value that does not
/// divide the vCPU count falls back to one core per socket, as libvirt needs the product to match.
pub fn topology(vcpus: u32, cores_per_socket: Option<u32>) -> (u32, u32, u32) {
    match cores_per_socket {
        Some(c) if c > 0 && vcpus.is_multiple_of(c) => (vcpus / c, c, 1),
        _ => (vcpus, 1, 1),
    }
}

/// Names, paths and networks go into XML and libvirt: refuse characters neither can carry.
fn check_value(what: &str, v: &str) -> Result<()> {
    ensure!(!v.is_empty(), "{what} is empty");
    if let Some(c) = v
        .chars()
        .find(|&c| c.is_control() || !xmltree::is_xml_char(c))
    {
        bail!("{what} {v:?} contains the control character {c:?}");
    }
    Ok(())
}

fn check_path(what: &str, p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{what} {} is not UTF-8", p.display()))?;
    check_value(what, s)?;
    ensure!(p.is_absolute(), "{what} {s:?} is not an absolute path");
    Ok(s.to_string())
}

/// Render the domain XML for `spec` from the matching template.
pub fn render(spec: &DomainSpec) -> Result<String> {
    check_spec(spec)?;
    let windows = spec.os == OsFamily::Windows;
    let legacy = windows && spec.legacy_machine;
    if legacy && matches!(spec.firmware, Firmware::Efi { secure_boot: true }) {
        bail!("secure boot needs the q35 machine (SMM), but this legacy Windows guest gets pc");
    }

    let template = if windows {
        WINDOWS_TEMPLATE
    } else {
        LINUX_TEMPLATE
    };
    let mut dom = xmltree::parse(template).context("parsing the domain template")?;
    dom.set_attr("type", &spec.domain_type);
    set_name_and_size(&mut dom, spec)?;
    set_os(&mut dom, spec, legacy)?;

    let cpu = cpu_element(spec)?;
    set_hyperv(&mut dom, spec, windows)?;
    let features_pos = dom
        .children
        .iter()
        .position(|n| matches!(n, Node::Element(e) if e.name == "features"))
        .context("template: <features>")?;
    dom.children.insert(features_pos + 1, Node::Element(cpu));

    // Devices: disks, then NICs, ahead of the template's own devices.
    let mut new_devices = disk_devices(spec, legacy)?;
    let port_aliases = nic_devices(spec, windows, legacy, &mut new_devices)?;
    let devices = dom.find_mut("devices").context("template: <devices>")?;
    if let Some(log) = &spec.serial_log {
        add_serial_log(devices, log)?;
    }
    for (i, d) in new_devices.into_iter().enumerate() {
        devices.children.insert(i, Node::Element(d));
    }
    if !port_aliases.is_empty() {
        add_slot_overrides(&mut dom, &port_aliases);
    }

    Ok(xmltree::to_string(&dom))
}

/// The checks of [`render`] that need nothing but the spec: name, domain type, sizes, a disk.
fn check_spec(spec: &DomainSpec) -> Result<()> {
    check_value("domain name", &spec.name)?;
    ensure!(
        !spec.name.contains('/'),
        "domain name {:?} contains '/'",
        spec.name
    );
    ensure!(
        spec.domain_type == "kvm" || spec.domain_type == "qemu",
        "domain type {:?}: expected kvm or qemu",
        spec.domain_type
    );
    ensure!(spec.memory_mib > 0, "memory must be more than 0 MiB");
    ensure!(spec.vcpus > 0, "vCPU count must be more than 0");
    ensure!(!spec.disks.is_empty(), "a domain needs at least one disk");
    Ok(())
}

/// `<name>`, then `<uuid>` and `<title>` after it, `<memory>`, `<currentMemory>` and `<vcpu>`.
fn set_name_and_size(dom: &mut Element, spec: &DomainSpec) -> Result<()> {
    dom.find_mut("name")
        .context("template has no <name>")?
        .set_text(&spec.name);
    let mut head = 1; // after <name>
    if let Some(uuid) = &spec.uuid {
        let u = crate::vmx::canonical_uuid(uuid)
            .with_context(|| format!("uuid {uuid:?} is not a UUID"))?;
        dom.children
            .insert(head, Node::Element(Element::new("uuid").text(&u)));
        head += 1;
    }
    if let Some(title) = &spec.title {
        // libvirt refuses a title with a newline; control characters have no place in it either.
        let t: String = title
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        dom.children
            .insert(head, Node::Element(Element::new("title").text(&t)));
    }
    let mem = spec.memory_mib.to_string();
    dom.find_mut("memory")
        .context("template: <memory>")?
        .set_text(&mem);
    dom.find_mut("currentMemory")
        .context("template: <currentMemory>")?
        .set_text(&mem);
    dom.find_mut("vcpu")
        .context("template: <vcpu>")?
        .set_text(&spec.vcpus.to_string());
    Ok(())
}

/// `<os>`: machine and firmware (and SMM in `<features>` for secure boot).
fn set_os(dom: &mut Element, spec: &DomainSpec, legacy: bool) -> Result<()> {
    let os = dom.find_mut("os").context("template: <os>")?;
    let machine = if legacy { "pc" } else { "q35" };
    os.find_mut("type")
        .context("template: <os><type>")?
        .set_attr("machine", machine);
    if let Firmware::Efi { secure_boot } = spec.firmware {
        os.set_attr("firmware", "efi");
        // Firmware feature requests let libvirt pick the matching OVMF build from its
        // descriptors; enrolled keys give the Microsoft keys a secure-boot Windows expects.
        let mut fw = Element::new("firmware").child(
            Element::new("feature")
                .attr("enabled", if secure_boot { "yes" } else { "no" })
                .attr("name", "secure-boot"),
        );
        if secure_boot {
            fw = fw.child(
                Element::new("feature")
                    .attr("enabled", "yes")
                    .attr("name", "enrolled-keys"),
            );
        }
        os.children.push(Node::Element(fw));
        if secure_boot {
            os.children
                .push(Node::Element(Element::new("loader").attr("secure", "yes")));
        }
    }
    if matches!(spec.firmware, Firmware::Efi { secure_boot: true }) {
        let features = dom.find_mut("features").context("template: <features>")?;
        features
            .children
            .push(Node::Element(Element::new("smm").attr("state", "on")));
    }
    Ok(())
}

/// `<cpu>`: the mode asked for, and the topology VMware had.
fn cpu_element(spec: &DomainSpec) -> Result<Element> {
    let (sockets, cores, threads) = topology(spec.vcpus, spec.cores_per_socket);
    let mut cpu = Element::new("cpu");
    match &spec.cpu {
        CpuMode::HostPassthrough | CpuMode::HostModel if spec.domain_type != "kvm" => {
            bail!("CPU mode {:?} needs domain type kvm", spec.cpu)
        }
        CpuMode::HostPassthrough => {
            cpu = cpu.attr("mode", "host-passthrough").attr("check", "none")
        }
        CpuMode::HostModel => cpu = cpu.attr("mode", "host-model").attr("check", "partial"),
        CpuMode::Model(m) => {
            check_value("CPU model", m)?;
            cpu = cpu
                .attr("mode", "custom")
                .attr("match", "exact")
                .attr("check", "partial")
                .child(Element::new("model").attr("fallback", "forbid").text(m));
        }
        CpuMode::Default => {}
    }
    cpu = cpu.child(
        Element::new("topology")
            .attr("sockets", &sockets.to_string())
            .attr("dies", "1")
            .attr("cores", &cores.to_string())
            .attr("threads", &threads.to_string()),
    );
    for f in &spec.cpu_disable_features {
        check_value("CPU feature", f)?;
        cpu = cpu.child(
            Element::new("feature")
                .attr("policy", "disable")
                .attr("name", f),
        );
    }
    Ok(cpu)
}

/// Windows: the template's Hyper-V enlightenments removed under TCG, or replaced by
/// `<hyperv mode='passthrough'/>` when the spec asks.
fn set_hyperv(dom: &mut Element, spec: &DomainSpec, windows: bool) -> Result<()> {
    if windows && spec.domain_type != "kvm" {
        // TCG has no Hyper-V enlightenments: QEMU refuses to start with them ("kernel doesn't
        // allow setting HyperV VP_INDEX"), and the hypervclock timer is one of them.
        ensure!(
            !spec.hyperv_passthrough,
            "Hyper-V passthrough needs domain type kvm"
        );
        if let Some(f) = dom.find_mut("features") {
            f.remove_children("hyperv");
        }
        remove_hypervclock(dom);
    }
    if spec.hyperv_passthrough && windows {
        ensure!(
            spec.domain_type == "kvm",
            "Hyper-V passthrough needs domain type kvm"
        );
        let hv = dom
            .find_mut("features")
            .and_then(|f| f.find_mut("hyperv"))
            .context("template: <features><hyperv>")?;
        *hv = Element::new("hyperv").attr("mode", "passthrough");
        // An explicit hypervclock timer forces the reference TSC page even where KVM lacks
        // it; passthrough turns it on by itself where it is there.
        remove_hypervclock(dom);
    }
    Ok(())
}

/// The disks in the spec's order (the first boots), the driver-install disk, and the
/// virtio-scsi controllers the disks sit on.
fn disk_devices(spec: &DomainSpec, legacy: bool) -> Result<Vec<Element>> {
    let placed = place_disks(spec);
    let ide = placed.iter().filter(|p| p.bus == DiskBus::Ide).count();
    ensure!(
        ide == 0 || legacy,
        "IDE disks need the pc machine (q35 has no IDE); this domain gets q35"
    );
    ensure!(
        ide <= MAX_IDE_DISKS,
        "the pc machine's IDE holds at most {MAX_IDE_DISKS} disks; this domain has {ide}"
    );
    let mut new_devices: Vec<Element> = Vec::new();
    for (i, (d, p)) in spec.disks.iter().zip(&placed).enumerate() {
        let mut disk = disk_element(&d.source, &p.dev, p.bus.name(), &format!("disk {}", i + 1))?;
        if let Some((controller, target)) = p.scsi {
            disk.children.push(Node::Element(
                Element::new("address")
                    .attr("type", "drive")
                    .attr("controller", &controller.to_string())
                    .attr("bus", "0")
                    .attr("target", &target.to_string())
                    .attr("unit", "0"),
            ));
        }
        if i == 0 {
            disk.children
                .push(Node::Element(Element::new("boot").attr("order", "1")));
        }
        new_devices.push(disk);
    }
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for p in &placed {
        *counts.entry(p.bus.dev_prefix()).or_default() += 1;
    }
    if let Some(extra) = &spec.extra_virtio_disk {
        let n = counts.entry("vd").or_default();
        let dev = target_dev("vd", *n);
        *n += 1;
        let mut disk = disk_element(extra, &dev, "virtio", "driver-install disk")?;
        disk.children.push(Node::Element(
            Element::new("alias").attr("name", DRIVER_DISK_ALIAS),
        ));
        new_devices.push(disk);
    }
    let scsi_controllers = placed
        .iter()
        .filter_map(|p| p.scsi)
        .map(|(c, _)| c + 1)
        .max();
    for index in 0..scsi_controllers.unwrap_or(0) {
        new_devices.push(
            Element::new("controller")
                .attr("type", "scsi")
                .attr("index", &index.to_string())
                .attr("model", "virtio-scsi"),
        );
    }
    Ok(new_devices)
}

/// Appends each NIC to `new_devices`, a slotted one after its own root port; returns the
/// (root port alias, slot number) pairs for [`add_slot_overrides`].
fn nic_devices(
    spec: &DomainSpec,
    windows: bool,
    legacy: bool,
    new_devices: &mut Vec<Element>,
) -> Result<Vec<(String, u32)>> {
    let default_nic = match (windows, legacy) {
        (false, _) => "virtio",
        (true, false) => "e1000e",
        (true, true) => "e1000",
    };
    let ports = nic_ports(spec);
    let mut port_aliases = Vec::new();
    for (i, nic) in spec.nics.iter().enumerate() {
        let what = format!("NIC {}", i + 1);
        let (kind, key, value) = match &nic.net {
            NetSource::Network(n) => ("network", "network", n),
            NetSource::Bridge(b) => ("bridge", "bridge", b),
        };
        check_value(&format!("{what} {kind} name"), value)?;
        let mut iface = Element::new("interface").attr("type", kind);
        if let Some(mac) = &nic.mac {
            let m = crate::vmx::normalize_mac(mac)
                .with_context(|| format!("{what}: MAC {mac:?} is not a MAC address"))?;
            iface = iface.child(Element::new("mac").attr("address", &m));
        }
        let model = nic.model_override.as_deref().unwrap_or(default_nic);
        check_value(&format!("{what} model"), model)?;
        iface = iface
            .child(Element::new("source").attr(key, value))
            .child(Element::new("model").attr("type", model));
        if let Some(slot) = ports[i] {
            // Bus numbers 1, 2, ...: the root ports libvirt adds for other devices come after.
            let bus = port_aliases.len() + 1;
            let alias = nic_port_alias(i);
            new_devices.push(root_port(bus, &alias));
            iface = iface.child(
                Element::new("address")
                    .attr("type", "pci")
                    .attr("domain", "0x0000")
                    .attr("bus", &format!("{bus:#04x}"))
                    .attr("slot", "0x00")
                    .attr("function", "0x0"),
            );
            port_aliases.push((alias, slot));
        }
        new_devices.push(iface);
    }
    Ok(port_aliases)
}

/// The pty console on COM1 also writes everything to `log` (virtlogd), so the console stays
/// usable and a test can read what the guest printed.
fn add_serial_log(devices: &mut Element, log: &Path) -> Result<()> {
    let path = check_path("serial log", log)?;
    let serial = devices
        .elements_mut()
        .find(|e| e.name == "serial")
        .context("template: <serial>")?;
    serial.children.insert(
        0,
        Node::Element(
            Element::new("log")
                .attr("file", &path)
                .attr("append", "off"),
        ),
    );
    Ok(())
}

/// A pcie-root-port on bus `index` with a user alias for `<qemu:override>`.
fn root_port(index: usize, alias: &str) -> Element {
    Element::new("controller")
        .attr("type", "pci")
        .attr("index", &index.to_string())
        .attr("model", "pcie-root-port")
        .child(Element::new("alias").attr("name", alias))
}

/// The QEMU namespace part of the NIC slots: each root port's `slot` property (libvirt has no
/// attribute for it) and native PCIe hotplug (libvirt has no element for it), without which
/// the guest reads the slot's ACPI name instead of its number.
fn add_slot_overrides(dom: &mut Element, ports: &[(String, u32)]) {
    dom.set_attr("xmlns:qemu", QEMU_NS);
    let cmdline = Element::new("qemu:commandline")
        .child(Element::new("qemu:arg").attr("value", "-global"))
        .child(Element::new("qemu:arg").attr("value", NATIVE_HOTPLUG_GLOBAL));
    let mut ov = Element::new("qemu:override");
    for (alias, slot) in ports {
        ov = ov.child(
            Element::new("qemu:device").attr("alias", alias).child(
                Element::new("qemu:frontend").child(
                    Element::new("qemu:property")
                        .attr("name", "slot")
                        .attr("type", "unsigned")
                        .attr("value", &slot.to_string()),
                ),
            ),
        );
    }
    dom.children.push(Node::Element(cmdline));
    dom.children.push(Node::Element(ov));
}

/// Whether the spec's NICs get VMware's slot numbers at all: Linux guests on q35 that ask.
fn slots_wanted(spec: &DomainSpec) -> bool {
    spec.nic_slots && spec.os == OsFamily::Linux && !spec.legacy_machine
}

/// Per NIC, the slot number its root port gets; None: libvirt's default addressing (no
/// recorded slot, a slot number out of range, or one an earlier NIC has).
fn nic_ports(spec: &DomainSpec) -> Vec<Option<u32>> {
    let mut seen = std::collections::HashSet::new();
    spec.nics
        .iter()
        .map(|n| {
            n.pci_slot
                .filter(|&s| slots_wanted(spec) && s <= crate::vmx::MAX_PCI_SLOT && seen.insert(s))
        })
        .collect()
}

/// Notes for the NICs that do not get VMware's slot number although the spec asks for it.
pub fn nic_slot_notes(spec: &DomainSpec) -> Vec<String> {
    if !slots_wanted(spec) {
        return Vec::new();
    }
    let why = "it gets libvirt's default PCI address, and the guest names it after that (enp1s0 style), not as on VMware";
    spec.nics
        .iter()
        .zip(nic_ports(spec))
        .enumerate()
        .filter(|(_, (_, port))| port.is_none())
        .map(|(i, (nic, _))| {
            let mac = nic.mac.as_deref().unwrap_or("no MAC");
            match nic.pci_slot {
                None => format!(
                    "NIC {} ({mac}) has no pciSlotNumber in the .vmx: {why}",
                    i + 1
                ),
                Some(s) => format!(
                    "NIC {} ({mac}): PCI slot {s} is unusable or another NIC's: {why}",
                    i + 1
                ),
            }
        })
        .collect()
}

fn remove_hypervclock(dom: &mut Element) {
    if let Some(clock) = dom.find_mut("clock") {
        clock.children.retain(|n| {
            !matches!(n, Node::Element(e) if e.name == "timer" && e.get_attr("name") == Some("hypervclock"))
        });
    }
}

/// Each disk's `<target dev>`, in `spec.disks` order, as [`render`] writes them: the
/// names the import state records (see [`crate::state::DiskState::target_dev`]).
pub fn disk_targets(spec: &DomainSpec) -> Vec<String> {
    place_disks(spec).into_iter().map(|p| p.dev).collect()
}

/// Where [`render`] puts a disk.
struct Placed {
    bus: DiskBus,
    dev: String,
    /// On SCSI: (controller, target).
    scsi: Option<(u32, u32)>,
}

fn place_disks(spec: &DomainSpec) -> Vec<Placed> {
    let default_bus = match (spec.os, spec.legacy_machine) {
        (OsFamily::Linux, _) => spec.linux_disk_bus,
        (OsFamily::Windows, false) => DiskBus::Sata,
        (OsFamily::Windows, true) => DiskBus::Ide,
    };
    let buses: Vec<DiskBus> = spec
        .disks
        .iter()
        .map(|d| d.bus_override.unwrap_or(default_bus))
        .collect();
    let scsi = scsi_addresses(spec, &buses);
    // Names: SCSI disks in address order (the order the guest finds them), then each other
    // bus in the spec's order.
    let mut order: Vec<usize> = (0..buses.len()).collect();
    order.sort_by_key(|&i| (buses[i] != DiskBus::Scsi, scsi[i], i));
    let mut devs = vec![String::new(); buses.len()];
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for i in order {
        let n = counts.entry(buses[i].dev_prefix()).or_default();
        devs[i] = target_dev(buses[i].dev_prefix(), *n);
        *n += 1;
    }
    buses
        .into_iter()
        .zip(devs)
        .zip(scsi)
        .map(|((bus, dev), scsi)| Placed { bus, dev, scsi })
        .collect()
}

/// (controller, target) of each SCSI disk: the .vmx's controller (renumbered from 0 in order)
/// and unit where known and free, else the next free target on controller 0.
fn scsi_addresses(spec: &DomainSpec, buses: &[DiskBus]) -> Vec<Option<(u32, u32)>> {
    let on_scsi = |i: usize| buses[i] == DiskBus::Scsi;
    let mut controllers: Vec<u32> = (0..buses.len())
        .filter(|&i| on_scsi(i))
        .filter_map(|i| spec.disks[i].scsi_slot.map(|(c, _)| c))
        .collect();
    controllers.sort_unstable();
    controllers.dedup();
    let mut used = std::collections::HashSet::new();
    let mut out = vec![None; buses.len()];
    for (i, slot) in out.iter_mut().enumerate() {
        if let Some((c, unit)) = spec.disks[i].scsi_slot.filter(|_| on_scsi(i)) {
            let ctl = controllers.binary_search(&c).expect("listed above") as u32;
            if used.insert((ctl, unit)) {
                *slot = Some((ctl, unit));
            }
        }
    }
    for (i, slot) in out.iter_mut().enumerate() {
        if on_scsi(i) && slot.is_none() {
            let target = (0..)
                .find(|t| !used.contains(&(0, *t)))
                .expect("a free target");
            used.insert((0, target));
            *slot = Some((0, target));
        }
    }
    out
}

fn disk_element(source: &DiskSource, dev: &str, bus: &str, what: &str) -> Result<Element> {
    let (kind, src) = match source {
        DiskSource::Volume { pool, volume } => {
            check_value(&format!("{what} pool"), pool)?;
            check_value(&format!("{what} volume"), volume)?;
            (
                "volume",
                Element::new("source")
                    .attr("pool", pool)
                    .attr("volume", volume),
            )
        }
        DiskSource::File(p) => (
            "file",
            Element::new("source").attr("file", &check_path(what, p)?),
        ),
        DiskSource::Block(p) => (
            "block",
            Element::new("source").attr("dev", &check_path(what, p)?),
        ),
    };
    // The import writes raw images into every kind of target.
    Ok(Element::new("disk")
        .attr("type", kind)
        .attr("device", "disk")
        .child(
            Element::new("driver")
                .attr("name", "qemu")
                .attr("type", "raw")
                .attr("discard", "unmap"),
        )
        .child(src)
        .child(Element::new("target").attr("dev", dev).attr("bus", bus)))
}

/// Rewrite a domain's disks and NICs to virtio, once the guest has the drivers: disk buses
/// become virtio with targets vda, vdb, ... in document order (drive addresses dropped so
/// libvirt assigns PCI slots), NIC models become virtio with their MACs and PCI addresses
/// dropped, and the driver-install disk ([`DRIVER_DISK_ALIAS`]) is removed (its volume or file
/// is left for the caller to delete). CD-ROMs, floppies and LUN passthrough stay as they are.
/// The import state in `<metadata>` follows the renamed targets. Feed it the persistent
/// definition (`virsh dumpxml --inactive`, VIR_DOMAIN_XML_INACTIVE) and define the result.
pub fn switch_to_virtio(domain_xml: &str) -> Result<String> {
    let mut dom = xmltree::parse(domain_xml).context("parsing the domain XML")?;
    ensure!(
        dom.name == "domain",
        "root element is <{}>, not <domain>",
        dom.name
    );
    let devices = dom.find_mut("devices").context("domain has no <devices>")?;

    devices.children.retain(|n| match n {
        Node::Element(e) if e.name == "disk" => !is_driver_disk(e),
        _ => true,
    });
    let mut renames: Vec<(String, String)> = Vec::new();
    let mut n = 0;
    for disk in devices.elements_mut().filter(|e| e.name == "disk") {
        if disk.get_attr("device").unwrap_or("disk") != "disk" {
            continue;
        }
        let new_dev = target_dev("vd", n);
        n += 1;
        let target = disk
            .find_mut("target")
            .context("a <disk> has no <target>")?;
        if let Some(old) = target.get_attr("dev") {
            renames.push((old.to_string(), new_dev.clone()));
        }
        target.set_attr("dev", &new_dev);
        target.set_attr("bus", "virtio");
        // Options of other buses (e.g. `rotation_rate` of SATA) mean nothing on virtio.
        target.attrs.retain(|(k, _)| k == "dev" || k == "bus");
        disk.remove_children("address");
    }
    for iface in devices.elements_mut().filter(|e| e.name == "interface") {
        iface.find_or_insert("model").set_attr("type", "virtio");
        iface.remove_children("address");
    }

    // Keep recorded target names in step.
    if let Some(meta) = dom.find_mut("metadata") {
        for st in meta.elements_mut() {
            if st.get_attr(&format!(
                "xmlns:{}",
                st.name.split(':').next().unwrap_or("")
            )) == Some(crate::state::NS_URI)
            {
                for d in st.elements_mut().filter(|e| e.local_name() == "disk") {
                    if let Some(old) = d.get_attr("target-dev") {
                        if let Some((_, new)) = renames.iter().find(|(o, _)| o == old) {
                            let new = new.clone();
                            d.set_attr("target-dev", &new);
                        }
                    }
                }
            }
        }
    }
    Ok(xmltree::to_string(&dom))
}

/// Attach the driver-install disk (a small virtio disk that makes Windows install the virtio
/// storage driver while it still boots from SATA or IDE) to a defined domain's XML. A domain
/// that already has it is returned unchanged, so stage 2 can be rerun.
pub fn add_driver_disk(domain_xml: &str, source: &DiskSource) -> Result<String> {
    let mut dom = xmltree::parse(domain_xml).context("parsing the domain XML")?;
    let devices = dom.find_mut("devices").context("domain has no <devices>")?;
    if devices
        .elements()
        .any(|e| e.name == "disk" && is_driver_disk(e))
    {
        return Ok(domain_xml.to_string());
    }
    let used: Vec<String> = devices
        .elements()
        .filter(|e| e.name == "disk")
        .filter_map(|d| {
            d.find("target")
                .and_then(|t| t.get_attr("dev"))
                .map(str::to_string)
        })
        .collect();
    let dev = (0..)
        .map(|i| target_dev("vd", i))
        .find(|d| !used.contains(d))
        .expect("an unused target name");
    let mut disk = disk_element(source, &dev, "virtio", "driver-install disk")?;
    disk.children.push(Node::Element(
        Element::new("alias").attr("name", DRIVER_DISK_ALIAS),
    ));
    let pos = devices
        .children
        .iter()
        .rposition(|n| matches!(n, Node::Element(e) if e.name == "disk"))
        .map_or(0, |i| i + 1);
    devices.children.insert(pos, Node::Element(disk));
    Ok(xmltree::to_string(&dom))
}

fn is_driver_disk(disk: &Element) -> bool {
    disk.find("alias")
        .and_then(|a| a.get_attr("name"))
        .is_some_and(|n| n == DRIVER_DISK_ALIAS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(os: OsFamily, legacy: bool, disks: usize) -> DomainSpec {
        DomainSpec {
            name: "t".into(),
            uuid: None,
            title: None,
            domain_type: "kvm".into(),
            os,
            legacy_machine: legacy,
            memory_mib: 512,
            vcpus: 1,
            cores_per_socket: None,
            cpu: CpuMode::HostPassthrough,
            cpu_disable_features: vec![],
            hyperv_passthrough: false,
            firmware: Firmware::Bios,
            disks: (0..disks)
                .map(|i| DiskSpec {
                    source: DiskSource::File(PathBuf::from(format!("/d{i}"))),
                    bus_override: None,
                    scsi_slot: None,
                })
                .collect(),
            nics: vec![],
            serial_log: None,
            extra_virtio_disk: None,
            nic_slots: true,
            linux_disk_bus: DiskBus::Scsi,
        }
    }

    #[test]
    fn driver_disk_is_added_once_and_removed_by_the_switch() {
        let xml = render(&spec(OsFamily::Windows, false, 2)).unwrap();
        let src = DiskSource::Volume {
            pool: "p".into(),
            volume: "t-driverdisk".into(),
        };
        let once = add_driver_disk(&xml, &src).unwrap();
        assert_eq!(
            add_driver_disk(&once, &src).unwrap(),
            once,
            "a second call changes nothing"
        );
        let dom = xmltree::parse(&once).unwrap();
        let disks: Vec<_> = dom
            .find("devices")
            .unwrap()
            .elements()
            .filter(|e| e.name == "disk")
            .collect();
        assert_eq!(disks.len(), 3);
        let driver = disks
            .iter()
            .find(|d| is_driver_disk(d))
            .expect("driver disk");
        let target = driver.find("target").unwrap();
        assert_eq!(
            (target.get_attr("dev"), target.get_attr("bus")),
            (Some("vda"), Some("virtio"))
        );
        let switched = switch_to_virtio(&once).unwrap();
        let dom = xmltree::parse(&switched).unwrap();
        let disks: Vec<_> = dom
            .find("devices")
            .unwrap()
            .elements()
            .filter(|e| e.name == "disk")
            .collect();
        assert_eq!(disks.len(), 2);
        assert!(disks.iter().all(|d| !is_driver_disk(d)));
    }

    #[test]
    fn disk_targets_follow_the_os() {
        assert_eq!(
            disk_targets(&spec(OsFamily::Windows, false, 2)),
            ["sda", "sdb"]
        );
        assert_eq!(
            disk_targets(&spec(OsFamily::Windows, true, 2)),
            ["hda", "hdb"]
        );
        let mut s = spec(OsFamily::Linux, false, 2);
        s.linux_disk_bus = DiskBus::Virtio;
        s.disks[1].bus_override = Some(DiskBus::Sata);
        assert_eq!(disk_targets(&s), ["vda", "sda"]);
    }

    #[test]
    fn scsi_disks_keep_the_vmx_controller_and_unit_and_are_named_in_that_order() {
        let mut s = spec(OsFamily::Linux, false, 4);
        // The boot disk first (bios.hddOrder), then scsi0:0, a SCSI disk without a slot
        // (a SATA disk of the .vmx), and scsi2:3.
        s.disks[0].scsi_slot = Some((0, 1));
        s.disks[1].scsi_slot = Some((0, 0));
        s.disks[3].scsi_slot = Some((2, 3));
        assert_eq!(disk_targets(&s), ["sdb", "sda", "sdc", "sdd"]);
        let placed: Vec<_> = place_disks(&s).into_iter().map(|p| p.scsi).collect();
        assert_eq!(
            placed,
            [Some((0, 1)), Some((0, 0)), Some((0, 2)), Some((1, 3))]
        );
        let xml = render(&s).unwrap();
        assert_eq!(xml.matches("model=\"virtio-scsi\"").count(), 2, "{xml}");
    }

    #[test]
    fn slotted_nics_get_a_root_port_each_and_the_others_a_note() {
        let mut s = spec(OsFamily::Linux, false, 1);
        let nic = |slot| NicSpec {
            net: NetSource::Network("n".into()),
            mac: Some("00:50:56:00:00:01".into()),
            model_override: None,
            pci_slot: slot,
        };
        s.nics = vec![nic(Some(192)), nic(None), nic(Some(192)), nic(Some(1184))];
        assert_eq!(nic_ports(&s), [Some(192), None, None, Some(1184)]);
        let notes = nic_slot_notes(&s);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].starts_with("NIC 2 ") && notes[0].contains("no pciSlotNumber"));
        assert!(notes[1].starts_with("NIC 3 ") && notes[1].contains("another NIC's"));
        let xml = render(&s).unwrap();
        assert_eq!(xml.matches("pcie-root-port").count(), 2, "{xml}");
        assert_eq!(xml.matches(NATIVE_HOTPLUG_GLOBAL).count(), 1, "{xml}");
        s.os = OsFamily::Windows;
        assert!(nic_slot_notes(&s).is_empty());
        let xml = render(&s).unwrap();
        assert!(!xml.contains("qemu:"), "Windows guests get no slots: {xml}");
    }

    #[test]
    fn refusals_name_the_problem() {
        let e = render(&spec(OsFamily::Windows, true, 5)).unwrap_err();
        assert!(e.to_string().contains("at most 4"), "{e}");
        let mut s = spec(OsFamily::Linux, false, 1);
        s.disks[0].bus_override = Some(DiskBus::Ide);
        let e = render(&s).unwrap_err();
        assert!(e.to_string().contains("q35 has no IDE"), "{e}");
        let mut s = spec(OsFamily::Linux, false, 1);
        s.name = "a/b".into();
        assert!(render(&s).is_err());
        let mut s = spec(OsFamily::Linux, false, 1);
        s.domain_type = "qemu".into();
        let e = render(&s).unwrap_err();
        assert!(e.to_string().contains("needs domain type kvm"), "{e}");
        let mut s = spec(OsFamily::Linux, false, 1);
        s.disks[0].source = DiskSource::File("relative.raw".into());
        assert!(render(&s).is_err());
    }

    #[test]
    fn title_loses_its_newlines() {
        let mut s = spec(OsFamily::Linux, false, 1);
        s.title = Some("a\nb\u{1}c".into());
        let dom = xmltree::parse(&render(&s).unwrap()).unwrap();
        assert_eq!(dom.find("title").unwrap().text_content(), "a b c");
    }

    #[test]
    fn targets_count_like_libvirt() {
        assert_eq!(target_dev("vd", 0), "vda");
        assert_eq!(target_dev("vd", 25), "vdz");
        assert_eq!(target_dev("vd", 26), "vdaa");
        assert_eq!(target_dev("sd", 27), "sdab");
    }

    #[test]
    fn topology_falls_back_when_cores_do_not_divide() {
        assert_eq!(topology(8, Some(4)), (2, 4, 1));
        assert_eq!(topology(6, Some(4)), (6, 1, 1));
        assert_eq!(topology(4, None), (4, 1, 1));
    }
}
