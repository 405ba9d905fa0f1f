//! Domains: define, look up, start, read their disks, and keep the import's state in their metadata.

use anyhow::{Context, Result};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use super::Conn;

/// A libvirt domain.
pub struct Dom {
    dom: Domain,
    name: String,
}

/// Where a domain's disk keeps its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKind {
    /// `<disk type='file'>`: a file on the host.
    File(String),
    /// `<disk type='block'>`: a block device on the host.
    Block(String),
    /// `<disk type='volume'>`: a volume of a libvirt storage pool.
    Volume { pool: String, volume: String },
    /// Any other disk type (network, nvme...) or a disk with no source (an empty CD-ROM): the
    /// string is the `type` attribute.
    Other(String),
}

/// One `<disk>` of a domain's XML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSource {
    /// `<target dev=...>`: vda, sda, hda...
    pub target_dev: String,
    /// `<target bus=...>`: virtio, sata, ide, scsi... (empty when the XML names none).
    pub bus: String,
    /// `<disk device=...>`: disk, cdrom, floppy, lun (libvirt's default is disk).
    pub device: String,
    pub kind: DiskKind,
}

impl Conn {
    /// Define (persistently, shut off) the domain described by `xml`.
    pub fn define_domain(&self, xml: &str) -> Result<Dom> {
        let dom = self
            .raw()
            .define_domain_xml(xml)
            .with_context(|| format!("defining a domain on {}", self.uri()))?;
        Dom::new(dom)
    }

    /// Domain `name`, or `None` when no domain has that name.
    pub fn domain(&self, name: &str) -> Result<Option<Dom>> {
        match self.raw().lookup_domain_by_name(name) {
            Ok(dom) => Ok(Some(Dom::new(dom)?)),
            Err(e) if e.code().is(ErrorNumber::NoDomain) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("looking up domain '{name}' on {}", self.uri()))),
        }
    }
}

impl Dom {
    fn new(dom: Domain) -> Result<Dom> {
        let name = dom.name().context("reading a domain's name")?;
        Ok(Dom { dom, name })
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the domain is running (or paused: anything but shut off).
    pub fn is_active(&self) -> Result<bool> {
        self.dom
            .is_active()
            .with_context(|| format!("asking whether domain '{}' is running", self.name))
    }

    /// Start the defined domain.
    pub fn start(&self) -> Result<()> {
        self.dom
            .create()
            .with_context(|| format!("starting domain '{}'", self.name))?;
        Ok(())
    }

    /// Start the defined domain paused (`VIR_DOMAIN_START_PAUSED`): QEMU is set up with every
    /// device, firmware and CPU setting, and no guest code runs. On failure the error is the
    /// daemon's own (its text says why), without context added.
    pub fn start_paused(&self) -> std::result::Result<(), virt::error::Error> {
        self.dom.create_with_flags(sys::VIR_DOMAIN_START_PAUSED)
    }

    /// Stop the domain at once (pulling the plug).
    pub fn destroy(&self) -> Result<()> {
        self.dom
            .destroy()
            .with_context(|| format!("destroying domain '{}'", self.name))
    }

    /// Remove the domain's definition, with its NVRAM file, managed save image and snapshot
    /// metadata (without those flags libvirt refuses to undefine a UEFI domain).
    pub fn undefine(&self) -> Result<()> {
        let flags = sys::VIR_DOMAIN_UNDEFINE_NVRAM
            | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
        self.dom
            .undefine_flags(flags)
            .with_context(|| format!("undefining domain '{}'", self.name))
    }

    /// The domain's persistent (inactive) XML: what the next start will use.
    pub fn xml(&self) -> Result<String> {
        self.dom
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .with_context(|| format!("reading the XML of domain '{}'", self.name))
    }

    /// The disks of the domain's persistent XML.
    pub fn disk_sources(&self) -> Result<Vec<DiskSource>> {
        let xml = self.xml()?;
        parse_disk_sources(&xml)
            .with_context(|| format!("reading the disks of domain '{}'", self.name))
    }

    /// Where metadata changes go: the persistent config, and the live one when running.
    fn metadata_flags(&self) -> Result<u32> {
        let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
        if self.is_active()? {
            flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
        }
        Ok(flags)
    }

    /// Store `xml_fragment` (one element) as the domain's metadata in namespace `ns_uri`,
    /// written with prefix `ns_prefix`; replaces what that namespace held. It goes into the
    /// persistent config (and the live one when running), so `virsh metadata DOM ns_uri`
    /// shows it on a shut-off domain too.
    pub fn set_metadata(&self, ns_uri: &str, ns_prefix: &str, xml_fragment: &str) -> Result<()> {
        let flags = self.metadata_flags()?;
        self.dom
            .set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(xml_fragment),
                Some(ns_prefix),
                Some(ns_uri),
                flags,
            )
            .with_context(|| format!("setting metadata {ns_uri} of domain '{}'", self.name))
    }

    /// Remove the domain's metadata in namespace `ns_uri` (nothing when it has none), from
    /// the persistent config and the live one when running.
    pub fn remove_metadata(&self, ns_uri: &str) -> Result<()> {
        let flags = self.metadata_flags()?;
        self.dom
            .set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                None,
                None,
                Some(ns_uri),
                flags,
            )
            .with_context(|| format!("removing metadata {ns_uri} of domain '{}'", self.name))
    }

    /// The domain's persistent metadata in namespace `ns_uri`, or `None` when it has none.
    pub fn metadata(&self, ns_uri: &str) -> Result<Option<String>> {
        match self.dom.metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(ns_uri),
            sys::VIR_DOMAIN_AFFECT_CONFIG,
        ) {
            Ok(xml) => Ok(Some(xml)),
            Err(e) if e.code().is(ErrorNumber::NoDomainMetadata) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!(
                "reading metadata {ns_uri} of domain '{}'",
                self.name
            ))),
        }
    }

    /// The underlying `virt` domain.
    pub fn raw(&self) -> &Domain {
        &self.dom
    }
}

/// A disk's block job, as `virDomainGetBlockJobInfo` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJob {
    /// The job is an active block commit (`VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT`).
    pub active_commit: bool,
    /// Progress: `cur` of `end` (units libvirt chooses); equal once the job is ready.
    pub cur: u64,
    pub end: u64,
}

impl Dom {
    /// Start an active block commit of disk `dev` (its top image merged into its backing
    /// file), at most `bandwidth` bytes per second (0: no limit).
    pub fn block_commit_active(&self, dev: &str, bandwidth: u64) -> Result<()> {
        super::ffi::block_commit_active(&self.dom, dev, bandwidth).with_context(|| {
            format!(
                "starting a block commit of disk {dev} of domain '{}'",
                self.name
            )
        })
    }

    /// The block job running on disk `dev`, if any.
    pub fn block_job(&self, dev: &str) -> Result<Option<BlockJob>> {
        let info = super::ffi::block_job_info(&self.dom, dev).with_context(|| {
            format!(
                "reading the block job of disk {dev} of domain '{}'",
                self.name
            )
        })?;
        Ok(info.map(|i| BlockJob {
            active_commit: i.kind == sys::VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT as i32,
            cur: i.cur,
            end: i.end,
        }))
    }

    /// Pivot disk `dev` to its block job's target (the commit's base): the daemon's error
    /// as is, so a caller can tell "not ready yet" from a failure.
    pub fn block_job_pivot(&self, dev: &str) -> std::result::Result<(), virt::error::Error> {
        super::ffi::block_job_abort(&self.dom, dev, true)
    }

    /// The running domain's live XML (what QEMU uses now).
    pub fn live_xml(&self) -> Result<String> {
        self.dom
            .xml_desc(0)
            .with_context(|| format!("reading the live XML of domain '{}'", self.name))
    }
}

impl std::fmt::Debug for Dom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dom").field("name", &self.name).finish()
    }
}

/// The `<disk>` elements under `<domain><devices>` of a domain XML.
pub fn parse_disk_sources(xml: &str) -> Result<Vec<DiskSource>> {
    let mut reader = Reader::from_str(xml);
    // Local names of the open elements, outermost first.
    let mut path: Vec<String> = Vec::new();
    let mut disks = Vec::new();
    // The disk being read: its type attribute, what its children said so far, its <source>.
    let mut cur: Option<(String, DiskSource, Attrs)> = None;
    loop {
        let pos = reader.buffer_position();
        let event = reader
            .read_event()
            .with_context(|| format!("domain XML: parse error near byte {pos}"))?;
        let (e, empty) = match &event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                if path.len() == 3 && path[2] == "disk" {
                    if let Some(d) = cur.take() {
                        disks.push(finish_disk(d));
                    }
                }
                path.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
        let in_devices = path.len() == 2 && path[0] == "domain" && path[1] == "devices";
        if in_devices && name == "disk" {
            let a = attrs(e, pos)?;
            let disk = DiskSource {
                target_dev: String::new(),
                bus: String::new(),
                device: get(&a, "device").unwrap_or("disk").to_owned(),
                kind: DiskKind::Other(String::new()),
            };
            let kind = get(&a, "type").unwrap_or("file").to_owned();
            if empty {
                disks.push(finish_disk((kind, disk, Vec::new())));
            } else {
                cur = Some((kind, disk, Vec::new()));
            }
        } else if path.len() == 3 && path[2] == "disk" {
            if let Some((_, disk, source)) = cur.as_mut() {
                match name.as_str() {
                    "source" => *source = attrs(e, pos)?,
                    "target" => {
                        let a = attrs(e, pos)?;
                        disk.target_dev = get(&a, "dev").unwrap_or("").to_owned();
                        disk.bus = get(&a, "bus").unwrap_or("").to_owned();
                    }
                    _ => {}
                }
            }
        }
        if !empty {
            path.push(name);
        }
    }
    Ok(disks)
}

/// An element's attributes: (local name, unescaped value).
type Attrs = Vec<(String, String)>;

fn finish_disk((kind, mut disk, source): (String, DiskSource, Attrs)) -> DiskSource {
    let s = |k: &str| get(&source, k).map(str::to_owned);
    disk.kind = match (kind.as_str(), s("file"), s("dev"), s("pool"), s("volume")) {
        ("file", Some(f), _, _, _) => DiskKind::File(f),
        ("block", _, Some(d), _, _) => DiskKind::Block(d),
        ("volume", _, _, Some(pool), Some(volume)) => DiskKind::Volume { pool, volume },
        _ => DiskKind::Other(kind),
    };
    disk
}

fn attrs(e: &BytesStart<'_>, pos: u64) -> Result<Attrs> {
    let mut out = Vec::new();
    for a in e.attributes() {
        let a = a.with_context(|| format!("domain XML: bad attribute near byte {pos}"))?;
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let value = a
            .unescape_value()
            .with_context(|| format!("domain XML: bad value of attribute {key} near byte {pos}"))?
            .into_owned();
        out.push((key, value));
    }
    Ok(out)
}

fn get<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::{parse_disk_sources, DiskKind};

    #[test]
    fn disks_of_every_kind_are_read_and_other_elements_ignored() {
        let xml = r#"<domain type='kvm'>
  <name>web1</name>
  <metadata><x:disk xmlns:x="urn:x"><source file="/not/a/disk"/></x:disk></metadata>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/a&amp;b.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type="block" device="disk"><source dev="/dev/vg0/web1"/><target dev="sda" bus="sata"/></disk>
    <disk type='volume'><source pool='default' volume='web1-disk0'/><target dev='hda' bus='ide'/></disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/img'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>"#;
        let disks = parse_disk_sources(xml).unwrap();
        let got: Vec<_> = disks
            .iter()
            .map(|d| {
                (
                    d.target_dev.as_str(),
                    d.bus.as_str(),
                    d.device.as_str(),
                    d.kind.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "vda",
                    "virtio",
                    "disk",
                    DiskKind::File("/var/lib/libvirt/images/a&b.img".into())
                ),
                (
                    "sda",
                    "sata",
                    "disk",
                    DiskKind::Block("/dev/vg0/web1".into())
                ),
                (
                    "hda",
                    "ide",
                    "disk",
                    DiskKind::Volume {
                        pool: "default".into(),
                        volume: "web1-disk0".into()
                    }
                ),
                ("hdc", "ide", "cdrom", DiskKind::Other("file".into())),
                ("vdb", "virtio", "disk", DiskKind::Other("network".into())),
            ]
        );
    }
}
