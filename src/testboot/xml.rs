//! The throwaway domain's XML, made from the real domain's: its own name, no UUID or metadata, disks behind copy-on-write, NICs unplugged, a logged serial console and a copy of the UEFI variables.

use anyhow::{bail, Context, Result};

use crate::xmltree::{self, Element};

/// Where one disk of the throwaway domain reads from, so that nothing writes the real volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskLayer {
    /// The image file, behind libvirt's `<transient/>` overlay (`FILE.TRANSIENT-NAME`, made
    /// beside it and removed when the domain stops).
    Transient { file: String },
    /// A qcow2 overlay file of ours whose backing file is the block device.
    Overlay { file: String },
}

/// The copy's UEFI variables: a file of its own, which libvirt makes from `template` (the
/// real domain's file), or which we fill from `fill_from` before the start (libvirt 9.0
/// refuses a template with `firmware='efi'`), or, with neither, libvirt makes from the
/// firmware's blank variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nvram {
    pub template: Option<String>,
    pub fill_from: Option<String>,
    pub copy: String,
}

/// What the throwaway domain gets in place of the real one's.
#[derive(Debug, Clone)]
pub struct Throwaway {
    pub name: String,
    /// `(target dev, layer)` for every disk (`device='disk'`) of the real domain.
    pub disks: Vec<(String, DiskLayer)>,
    /// The file the serial console is logged to (on the host).
    pub console_log: Option<String>,
    /// The UEFI variables of the copy.
    pub nvram: Option<Nvram>,
}

/// The real domain's disks that hold data (not CD-ROMs or floppies): `(target dev, type,
/// source)` where source is the file, the device, or `pool/volume`.
pub fn data_disks(real_xml: &str) -> Result<Vec<(String, String, String)>> {
    let dom = xmltree::parse(real_xml).context("the domain's XML")?;
    let mut out = Vec::new();
    for disk in devices(&dom)?.elements().filter(|e| e.name == "disk") {
        if !matches!(disk.get_attr("device"), None | Some("disk") | Some("lun")) {
            continue;
        }
        let dev = disk
            .find("target")
            .and_then(|t| t.get_attr("dev"))
            .context("a <disk> without <target dev>")?
            .to_string();
        let kind = disk.get_attr("type").unwrap_or("file").to_string();
        let src = disk.find("source");
        let attr = |k: &str| {
            src.and_then(|s| s.get_attr(k))
                .unwrap_or_default()
                .to_string()
        };
        let source = match kind.as_str() {
            "file" => attr("file"),
            "block" => attr("dev"),
            "volume" => format!("{}/{}", attr("pool"), attr("volume")),
            other => bail!("disk {dev} is a {other:?} disk: a test boot cannot keep it unwritten"),
        };
        if source.is_empty() || source == "/" {
            bail!("disk {dev} has no source");
        }
        out.push((dev, kind, source));
    }
    Ok(out)
}

fn devices(dom: &Element) -> Result<&Element> {
    dom.find("devices")
        .context("the domain's XML has no <devices>")
}

/// The throwaway domain's XML from the real domain's persistent XML.
pub fn throwaway(real_xml: &str, t: &Throwaway) -> Result<String> {
    let mut dom = xmltree::parse(real_xml).context("the domain's XML")?;
    dom.find_or_insert("name").set_text(&t.name);
    dom.remove_children("uuid");
    dom.remove_children("metadata");
    dom.find_or_insert("title")
        .set_text(&format!("virt-vmdkimport test boot ({})", t.name));
    if let Some(os) = dom.find_mut("os") {
        set_nvram(os, t.nvram.as_ref());
    }
    let devices = dom
        .find_mut("devices")
        .context("the domain's XML has no <devices>")?;
    for disk in devices.elements_mut().filter(|e| e.name == "disk") {
        layer_disk(disk, &t.disks)?;
    }
    for nic in devices.elements_mut().filter(|e| e.name == "interface") {
        nic.remove_children("link");
        nic.children.push(xmltree::Node::Element(
            Element::new("link").attr("state", "down"),
        ));
    }
    devices.remove_children("serial");
    devices.remove_children("console");
    devices.children.push(xmltree::Node::Element(serial(t)));
    devices.children.push(xmltree::Node::Element(
        Element::new("console").attr("type", "pty").child(
            Element::new("target")
                .attr("type", "serial")
                .attr("port", "0"),
        ),
    ));
    Ok(xmltree::to_string(&dom))
}

/// `<nvram>` of the copy: its own file, never the real one's.
fn set_nvram(os: &mut Element, nvram: Option<&Nvram>) {
    os.remove_children("nvram");
    if let Some(nv) = nvram {
        let mut el = Element::new("nvram").text(&nv.copy);
        if let Some(t) = &nv.template {
            el = el.attr("template", t);
        }
        os.children.push(xmltree::Node::Element(el));
    }
}

fn serial(t: &Throwaway) -> Element {
    let mut s = Element::new("serial").attr("type", "pty");
    if let Some(log) = &t.console_log {
        s = s.child(Element::new("log").attr("file", log).attr("append", "off"));
    }
    s.child(Element::new("target").attr("port", "0"))
}

/// One `<disk>` put behind its layer; CD-ROMs and floppies stay, read-only.
fn layer_disk(disk: &mut Element, layers: &[(String, DiskLayer)]) -> Result<()> {
    if !matches!(disk.get_attr("device"), None | Some("disk") | Some("lun")) {
        if disk.find("readonly").is_none() {
            disk.children
                .push(xmltree::Node::Element(Element::new("readonly")));
        }
        return Ok(());
    }
    let dev = disk
        .find("target")
        .and_then(|t| t.get_attr("dev"))
        .unwrap_or_default()
        .to_string();
    let (_, layer) = layers
        .iter()
        .find(|(d, _)| *d == dev)
        .with_context(|| format!("disk {dev}: no copy-on-write layer chosen for it"))?;
    disk.set_attr("type", "file");
    disk.set_attr("device", "disk");
    for gone in [
        "source",
        "backingStore",
        "shareable",
        "transient",
        "readonly",
    ] {
        disk.remove_children(gone);
    }
    let file = match layer {
        DiskLayer::Transient { file } => {
            disk.children
                .push(xmltree::Node::Element(Element::new("transient")));
            file
        }
        DiskLayer::Overlay { file } => {
            disk.find_or_insert("driver").set_attr("type", "qcow2");
            file
        }
    };
    disk.children.insert(
        0,
        xmltree::Node::Element(Element::new("source").attr("file", file)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "<domain type='kvm'><name>web1</name><uuid>0b7c9f2e-1111-2222-3333-444455556666</uuid>\
        <metadata><vmdkimport:import xmlns:vmdkimport='https://virt-vmdkimport.example/ns/import/1'/></metadata>\
        <os firmware='efi'><type machine='q35'>hvm</type><nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram></os>\
        <devices>\
        <disk type='volume' device='disk'><driver name='qemu' type='raw'/><source pool='p' volume='web1-disk0'/><target dev='sda' bus='scsi'/><address type='drive' controller='0' bus='0' target='0' unit='0'/></disk>\
        <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg0/web1-disk1'/><target dev='sdb' bus='scsi'/></disk>\
        <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sdc' bus='sata'/></disk>\
        <interface type='network'><mac address='00:50:56:8a:19:20'/><source network='default'/><model type='vmxnet3'/></interface>\
        <serial type='file'><source path='/tmp/real.log'/><target port='0'/></serial>\
        </devices></domain>";

    fn copy() -> Throwaway {
        Throwaway {
            name: "web1-testboot".into(),
            disks: vec![
                (
                    "sda".into(),
                    DiskLayer::Transient {
                        file: "/pool/web1-disk0".into(),
                    },
                ),
                (
                    "sdb".into(),
                    DiskLayer::Overlay {
                        file: "/pool/web1-testboot-sdb.qcow2".into(),
                    },
                ),
            ],
            console_log: Some("/var/log/libvirt/qemu/web1-testboot-console.log".into()),
            nvram: Some(Nvram {
                template: Some("/var/lib/libvirt/qemu/nvram/web1_VARS.fd".into()),
                fill_from: None,
                copy: "/var/lib/libvirt/qemu/nvram/web1-testboot_VARS.fd".into(),
            }),
        }
    }

    #[test]
    fn the_copy_has_its_own_name_no_uuid_or_state_and_a_copy_of_the_uefi_variables() {
        let xml = throwaway(REAL, &copy()).unwrap();
        assert!(xml.contains("<name>web1-testboot</name>"), "{xml}");
        assert!(
            !xml.contains("<uuid>") && !xml.contains("metadata"),
            "{xml}"
        );
        assert!(
            xml.contains("<nvram template=\"/var/lib/libvirt/qemu/nvram/web1_VARS.fd\">/var/lib/libvirt/qemu/nvram/web1-testboot_VARS.fd</nvram>"),
            "{xml}"
        );
    }

    #[test]
    fn every_disk_is_behind_copy_on_write_and_every_nic_is_unplugged() {
        let dom = xmltree::parse(&throwaway(REAL, &copy()).unwrap()).unwrap();
        let devices = dom.find("devices").unwrap();
        let disks: Vec<&Element> = devices.elements().filter(|e| e.name == "disk").collect();
        assert_eq!(disks[0].get_attr("type"), Some("file"));
        assert_eq!(
            disks[0].find("source").unwrap().get_attr("file"),
            Some("/pool/web1-disk0")
        );
        assert!(disks[0].find("transient").is_some());
        assert!(disks[0].find("address").is_some(), "the slot is kept");
        assert_eq!(
            disks[1].find("driver").unwrap().get_attr("type"),
            Some("qcow2")
        );
        assert!(disks[1].find("transient").is_none());
        assert!(
            disks[2].find("readonly").is_some(),
            "the CD-ROM is read-only"
        );
        let nic = devices.find("interface").unwrap();
        assert_eq!(nic.find("link").unwrap().get_attr("state"), Some("down"));
        assert_eq!(
            nic.find("mac").unwrap().get_attr("address"),
            Some("00:50:56:8a:19:20")
        );
        let serials: Vec<&Element> = devices.elements().filter(|e| e.name == "serial").collect();
        assert_eq!(serials.len(), 1);
        assert_eq!(serials[0].get_attr("type"), Some("pty"));
        assert!(serials[0].find("log").is_some());
    }

    #[test]
    fn data_disks_are_listed_and_a_network_disk_is_refused() {
        let disks = data_disks(REAL).unwrap();
        assert_eq!(
            disks,
            vec![
                ("sda".into(), "volume".into(), "p/web1-disk0".into()),
                ("sdb".into(), "block".into(), "/dev/vg0/web1-disk1".into()),
            ]
        );
        let net = REAL.replace(
            "<disk type='block' device='disk'>",
            "<disk type='network' device='disk'>",
        );
        let e = data_disks(&net).unwrap_err();
        assert!(
            format!("{e:#}").contains("disk sdb is a \"network\" disk"),
            "{e:#}"
        );
    }

    #[test]
    fn a_disk_without_a_layer_is_refused() {
        let mut t = copy();
        t.disks.pop();
        let e = throwaway(REAL, &t).unwrap_err();
        assert!(format!("{e:#}").contains("disk sdb"), "{e:#}");
    }
}
