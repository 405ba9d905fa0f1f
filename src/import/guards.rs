//! Checks made before anything is marked or written: a volume is raw, a .vmx's disk files stay in its folder.

use crate::libvirt::Vol;
use crate::vmx::VmxDisk;
use crate::xmltree::{self, Element};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Image formats libvirt reports for a volume whose bytes are not the disk's bytes: raw data
/// written into one of these is garbage to QEMU ("Image is not in qcow2 format"). Block
/// volumes report partition-table types (`dos`, `gpt`, `none`), which are raw to us.
const IMAGE_FORMATS: &[&str] = &[
    "qcow2",
    "qcow",
    "qed",
    "vmdk",
    "vdi",
    "vpc",
    "vhd",
    "vhdx",
    "cow",
    "bochs",
    "cloop",
    "dmg",
    "ploop",
    "luks",
    "parallels",
];

/// Refuse a disk whose domain XML `<driver type>` is not raw, or whose volume libvirt reports
/// in an image format: this tool writes raw bytes.
pub fn ensure_raw(domain: &str, domain_xml: &str, target_dev: &str, vol: &Vol) -> Result<()> {
    if let Some(t) = driver_type(domain_xml, target_dev)? {
        if t != "raw" {
            bail!(
                "domain '{domain}' disk {target_dev}: its driver type is '{t}', not raw: this tool writes raw disk bytes, \
                 which would leave a {t} volume unreadable; nothing was written (define the disk with <driver type='raw'/> on a raw volume)"
            );
        }
    }
    ensure_raw_volume(vol)
}

/// Refuse a volume libvirt reports in an image format (qcow2...).
pub fn ensure_raw_volume(vol: &Vol) -> Result<()> {
    let xml = vol
        .raw()
        .xml_desc(0)
        .with_context(|| format!("reading the XML of volume '{}'", vol.describe()))?;
    if let Some(f) = volume_format(&xml)? {
        if IMAGE_FORMATS.contains(&f.as_str()) {
            bail!(
                "volume '{}' is in {f} format, not raw: this tool writes raw disk bytes, which would leave it unreadable; nothing was written (use a raw volume)",
                vol.describe()
            );
        }
    }
    Ok(())
}

/// The volume's modification time as libvirt reports it (`<timestamps><mtime>`, seconds with
/// nanoseconds); None for volumes without one (block devices, some pool types).
pub fn volume_mtime(vol: &Vol) -> Result<Option<String>> {
    let xml = vol
        .raw()
        .xml_desc(0)
        .with_context(|| format!("reading the XML of volume '{}'", vol.describe()))?;
    let doc = xmltree::parse(&xml).context("volume XML")?;
    Ok(child(&doc, "target")
        .and_then(|t| child(t, "timestamps"))
        .and_then(|t| child(t, "mtime"))
        .map(|m| m.text_content().trim().to_string())
        .filter(|m| !m.is_empty()))
}

/// `<driver type>` of the domain's disk whose target is `target_dev` (None when not said).
fn driver_type(domain_xml: &str, target_dev: &str) -> Result<Option<String>> {
    let dom = xmltree::parse(domain_xml).context("domain XML")?;
    let Some(devices) = dom.find("devices") else {
        return Ok(None);
    };
    let disk = devices
        .elements()
        .filter(|e| e.local_name() == "disk")
        .find(|d| child(d, "target").and_then(|t| t.get_attr("dev")) == Some(target_dev));
    Ok(disk
        .and_then(|d| child(d, "driver"))
        .and_then(|d| d.get_attr("type"))
        .map(str::to_string))
}

/// `<volume><target><format type>`.
fn volume_format(volume_xml: &str) -> Result<Option<String>> {
    let vol = xmltree::parse(volume_xml).context("volume XML")?;
    Ok(child(&vol, "target")
        .and_then(|t| child(t, "format"))
        .and_then(|f| f.get_attr("type"))
        .map(str::to_string))
}

fn child<'e>(e: &'e Element, name: &str) -> Option<&'e Element> {
    e.elements().find(|c| c.local_name() == name)
}

/// Refuse a .vmx disk whose file name is absolute or leads out of the .vmx's folder (by `..`
/// or a symlink), unless `allow_outside`: the same rule as names inside descriptors.
pub fn vmx_disk_inside(vmx_path: &Path, disk: &VmxDisk, allow_outside: bool) -> Result<()> {
    if allow_outside {
        return Ok(());
    }
    let refuse = |why: &str| {
        anyhow::anyhow!(
            "{}: disk {} fileName {:?} {why}; it must stay inside the .vmx's folder (copy the disk there, or give --allow-outside-paths)",
            vmx_path.display(),
            disk.slot(),
            crate::vmdk::show(&disk.file_name).to_string()
        )
    };
    if disk.outside_folder {
        return Err(refuse("is absolute or contains `..`"));
    }
    let folder = vmx_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let (Ok(real_folder), Ok(real)) = (folder.canonicalize(), disk.file_name.canonicalize()) {
        if !real.starts_with(&real_folder) {
            return Err(refuse("leads outside the folder through a symlink"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_driver_type_of_the_disk_at_a_target_is_read() {
        let xml = "<domain><devices><disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sdb'/></disk>\
                   <disk type='volume'><driver name='qemu' type='qcow2'/><source pool='p' volume='v'/><target dev='vda' bus='virtio'/></disk>\
                   <disk type='file'><target dev='vdb'/></disk></devices></domain>";
        assert_eq!(driver_type(xml, "vda").unwrap().as_deref(), Some("qcow2"));
        assert_eq!(driver_type(xml, "sdb").unwrap().as_deref(), Some("raw"));
        assert_eq!(driver_type(xml, "vdb").unwrap(), None);
    }

    #[test]
    fn the_volume_format_is_read() {
        let xml = "<volume type='file'><name>v</name><target><path>/p/v</path><format type='qcow2'/></target></volume>";
        assert_eq!(volume_format(xml).unwrap().as_deref(), Some("qcow2"));
        assert_eq!(volume_format("<volume><target/></volume>").unwrap(), None);
    }
}
