//! Reader for VMware `.vmx` files: the VM's memory, CPUs, firmware, disks and NICs as ESX describes them.
//!
//! Keys read: `.encoding`, `displayName`, `memsize`, `numvcpus`, `cpuid.coresPerSocket`,
//! `guestOS`, `firmware`, `uefi.secureBoot.enabled`, `uuid.bios`, `bios.hddOrder` (first entry),
//! `{scsi,sata,nvme,ide}N.present`, `scsiN.virtualDev`, `{bus}N:M.{present,fileName,deviceType,mode}`,
//! `ethernetN.{present,virtualDev,networkName,addressType,generatedAddress,address,pciSlotNumber}`.
//! Knowingly ignored (no libvirt equivalent the migration needs, or decided elsewhere):
//! `uuid.location`, `vc.uuid`, `virtualHW.version`, `nvram` (the VMware NVRAM file: boot
//! entries are rebuilt by OVMF), `bios.bootOrder`, `sched.*`, `mem.hotadd`, `vcpu.hotadd`,
//! `tools.*`, `ethernetN.connectionType`/`dvs.*`/`wakeOnPcktRcv`/`uptCompatibility`,
//! `scsiN.sharedBus`, `{bus}N:M.writeThrough`, `pciSlotNumber` of all but NICs, `svga.*`, `extendedConfigFile`,
//! `annotation`, `guestinfo.*`, `migrate.*`, `floppyN.*`, `serialN.*`, `parallelN.*`,
//! `sound.*`, `usb*`, `pciPassthruN.*` (present floppies, ports, sound, USB and passthrough
//! devices get a note).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A .vmx is a few KiB; cap it so a wrong file (a disk image) is refused before it is read whole.
pub const MAX_VMX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsFamily {
    Linux,
    Windows,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Efi { secure_boot: bool },
}

/// Controller kinds, in the order their disks are listed (see [`VmxConfig::disks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VmxBus {
    Scsi,
    Sata,
    Nvme,
    Ide,
}

impl VmxBus {
    pub fn prefix(self) -> &'static str {
        match self {
            VmxBus::Scsi => "scsi",
            VmxBus::Sata => "sata",
            VmxBus::Nvme => "nvme",
            VmxBus::Ide => "ide",
        }
    }
}

impl fmt::Display for VmxBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxDisk {
    pub bus: VmxBus,
    pub controller: u32,
    pub unit: u32,
    /// `scsiN.virtualDev` (`lsilogic`, `lsisas1068`, `pvscsi`, `buslogic`); None for other buses.
    pub controller_model: Option<String>,
    /// As written in the .vmx; [`parse_vmx`] joins a relative name to the .vmx's folder.
    /// After a snapshot this is the newest child descriptor, not the base.
    pub file_name: PathBuf,
    /// `mode = "independent-persistent"` / `"independent-nonpersistent"`: not in any snapshot.
    pub independent: bool,
    /// The name as written is absolute or contains `..`: not among the VM's own files.
    pub outside_folder: bool,
}

impl VmxDisk {
    /// `scsi0:1`, as the .vmx names the slot.
    pub fn slot(&self) -> String {
        format!("{}{}:{}", self.bus, self.controller, self.unit)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxNic {
    /// N of `ethernetN`.
    pub index: u32,
    /// `ethernetN.virtualDev` (`e1000`, `e1000e`, `vmxnet3`, `vlance`, ...); None when absent.
    pub model: Option<String>,
    /// `ethernetN.networkName` (the port group); None on NICs without one (e.g. a dvSwitch port).
    pub network_name: Option<String>,
    /// Lowercase `aa:bb:cc:dd:ee:ff`, chosen by the addressType rules.
    pub mac: Option<String>,
    /// `ethernetN.pciSlotNumber`: the PCI slot number VMware gave the NIC (160, 192, 224, 256,
    /// 1184, ...), from which a Linux guest names it (`ens192`). None when absent, `-1` (not
    /// yet placed) or not a slot number (above 8191, the PCIe slot number's 13 bits).
    pub pci_slot: Option<u32>,
}

/// The largest PCIe physical slot number (13 bits).
pub const MAX_PCI_SLOT: u32 = 8191;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxConfig {
    pub display_name: Option<String>,
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    pub cores_per_socket: Option<u32>,
    /// `guestOS` as written (lowercased), empty when absent.
    pub guest_os: String,
    pub os: OsFamily,
    /// Old Windows guests that should get the `pc` machine, IDE disks and an e1000 NIC: see
    /// [`is_legacy_guest`].
    pub legacy_machine: bool,
    pub firmware: Firmware,
    /// `uuid.bios` as a canonical lowercase UUID string.
    pub uuid_bios: Option<String>,
    /// Hard disks: `bios.hddOrder`'s disk first when set, then bus order scsi, sata, nvme, ide,
    /// then controller, then unit. The first disk is the boot disk.
    pub disks: Vec<VmxDisk>,
    /// CD-ROMs found (as `slot: file`); they are not migrated.
    pub cdroms: Vec<String>,
    pub nics: Vec<VmxNic>,
    /// Everything dropped or ignored, one line each, for the user to read.
    pub notes: Vec<String>,
}

/// Windows guests that want the `pc` (i440fx) machine with IDE disks and an e1000 NIC rather
/// than q35 with SATA and e1000e.
///
/// - Windows 2000, XP and Server 2003 (`win2000*`, `winXP*`, `winNet*`) have no AHCI and no
///   e1000e driver at all.
/// - Vista, Server 2008, Windows 7 and Server 2008 R2 (`winVista*`, `longhorn*`, `windows7*`,
///   including `windows7srv-64`) ship an AHCI driver, but it is not boot-start on a system
///   installed on an LSI/PVSCSI controller, so moving the boot disk to SATA ends in
///   INACCESSIBLE_BOOT_DEVICE; the IDE driver is always boot-start. They have no inbox e1000e
///   driver either (VMware itself offers e1000e from Windows 8 / Server 2012 on).
/// - Windows 8 / Server 2012 and later get q35, SATA and e1000e.
pub fn is_legacy_guest(guest_os: &str) -> bool {
    const LEGACY_PREFIXES: &[&str] = &[
        "win31", "win95", "win98", "winme", "winnt", "win2000", "winxp", "winnet", "winvista",
        "longhorn", "windows7",
    ];
    let g = guest_os.to_ascii_lowercase();
    LEGACY_PREFIXES.iter().any(|p| g.starts_with(p))
}

/// Windows by guestOS: every VMware Windows identifier starts with `win` or is `longhorn*`.
pub fn os_family(guest_os: &str) -> OsFamily {
    let g = guest_os.to_ascii_lowercase();
    if g.starts_with("win") || g.starts_with("longhorn") {
        OsFamily::Windows
    } else {
        OsFamily::Linux
    }
}

/// Read and parse a .vmx; relative disk file names are joined to the .vmx's folder.
pub fn parse_vmx(path: &Path) -> Result<VmxConfig> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).with_context(|| format!("{name}: cannot stat"))?;
    if meta.len() > MAX_VMX_BYTES {
        bail!(
            "{name}: {} bytes is too large for a .vmx (limit {MAX_VMX_BYTES})",
            meta.len()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("{name}: cannot read"))?;
    let mut cfg = parse_vmx_str(&bytes, &name)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    for d in &mut cfg.disks {
        if d.file_name.is_relative() {
            d.file_name = dir.join(&d.file_name);
        }
    }
    Ok(cfg)
}

#[derive(Clone, Copy)]
enum Encoding {
    Utf8,
    Windows1252,
}

/// Parse .vmx text. Disk file names are kept as written (relative names stay relative).
pub fn parse_vmx_str(text: &[u8], name_for_errors: &str) -> Result<VmxConfig> {
    let (keys, notes) = vmx_keys(text, name_for_errors)?;
    build(&keys, notes, name_for_errors)
}

/// Every key of .vmx text, lowercased, with its value decoded (the last of a repeated key, as
/// VMware reads it), and the notes decoding left.
pub fn vmx_keys(
    text: &[u8],
    name_for_errors: &str,
) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut notes = Vec::new();

    // First pass on raw bytes: key = raw value bytes (escapes decoded, charset not yet).
    let mut raw: BTreeMap<String, (usize, Vec<u8>)> = BTreeMap::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let lineno = i + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = trim_bytes(line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let Some(eq) = line.iter().position(|&b| b == b'=') else {
            bail!("{name_for_errors}: line {lineno}: no '=' in a non-comment line");
        };
        let key = std::str::from_utf8(trim_bytes(&line[..eq]))
            .ok()
            .filter(|k| !k.is_empty() && k.is_ascii())
            .with_context(|| format!("{name_for_errors}: line {lineno}: bad key"))?
            .to_ascii_lowercase();
        let value = parse_value(trim_bytes(&line[eq + 1..]))
            .with_context(|| format!("{name_for_errors}: line {lineno}: key {key}"))?;
        // A repeated key: the last one wins, as VMware reads it.
        raw.insert(key, (lineno, value));
    }

    let encoding = match raw.get(".encoding") {
        None => Encoding::Utf8,
        Some((_, v)) => {
            let e = String::from_utf8_lossy(v);
            match e.to_ascii_lowercase().as_str() {
                "utf-8" | "utf8" => Encoding::Utf8,
                "windows-1252" | "cp1252" | "iso-8859-1" | "us-ascii" => Encoding::Windows1252,
                _ => {
                    notes.push(format!(
                        ".encoding {e:?} is not supported: non-ASCII text read as UTF-8 with replacement characters"
                    ));
                    Encoding::Utf8
                }
            }
        }
    };
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for (k, (lineno, v)) in raw {
        let s = match encoding {
            Encoding::Utf8 => match String::from_utf8(v) {
                Ok(s) => s,
                Err(e) => {
                    notes.push(format!(
                        "line {lineno}: {k} is not valid UTF-8: read with replacement characters"
                    ));
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                }
            },
            Encoding::Windows1252 => decode_windows_1252(&v),
        };
        keys.insert(k, s);
    }
    Ok((keys, notes))
}

fn trim_bytes(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// A value: `"..."` (anything after the closing quote, like a `# comment`, is ignored) or a bare
/// word. `|XX` (two hex digits) is the byte XX: VMware writes `"` as `|22`, `|` as `|7C`.
fn parse_value(v: &[u8]) -> Result<Vec<u8>> {
    let body = if let Some(rest) = v.strip_prefix(b"\"") {
        match rest.iter().position(|&b| b == b'"') {
            Some(end) => &rest[..end],
            None => bail!("value has no closing quote"),
        }
    } else {
        v
    };
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'|' && i + 2 < body.len() {
            if let (Some(h), Some(l)) = (hex(body[i + 1]), hex(body[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(body[i]);
        i += 1;
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// windows-1252: 0x80-0x9F are the table below (the five unassigned bytes map to the C1
/// control of the same number, as the WHATWG encoding standard does); every other byte is the
/// Unicode code point of the same number.
pub fn decode_windows_1252(bytes: &[u8]) -> String {
    const HIGH: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{0192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{02C6}', '\u{2030}', '\u{0160}', '\u{2039}', '\u{0152}', '\u{8D}',
        '\u{017D}', '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}',
        '\u{2013}', '\u{2014}', '\u{02DC}', '\u{2122}', '\u{0161}', '\u{203A}', '\u{0153}',
        '\u{9D}', '\u{017E}', '\u{0178}',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => HIGH[(b - 0x80) as usize],
            _ => b as char,
        })
        .collect()
}

pub fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1" | "on"
    )
}

fn is_false(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "false" | "no" | "0" | "off"
    )
}

fn num<T: std::str::FromStr>(
    keys: &BTreeMap<String, String>,
    key: &str,
    name: &str,
) -> Result<Option<T>> {
    match keys.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}: {key} = {v:?} is not a number")),
    }
}

/// `56 4d 12 34 56 78 9a bc-de f0 12 34 56 78 9a bc` to `564d1234-5678-9abc-def0-123456789abc`.
/// The bytes keep VMware's order: QEMU writes libvirt's UUID into SMBIOS so that the guest's
/// dmidecode prints the same string as VMware's guest did.
pub fn canonical_uuid(v: &str) -> Option<String> {
    let hexes: String = v
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if hexes.len() != 32 || !hexes.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hexes[0..8],
        &hexes[8..12],
        &hexes[12..16],
        &hexes[16..20],
        &hexes[20..32]
    ))
}

/// `00:50:56:AB:cd:0E` or `00-50-56-ab-cd-0e` to lowercase colon form; None unless six hex octets.
pub fn normalize_mac(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.trim().split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// Splits `scsi0:1.filename` into (bus, 0, Some(1), "filename") and `scsi0.virtualdev` into
/// (bus, 0, None, "virtualdev").
fn split_device_key(key: &str) -> Option<(VmxBus, u32, Option<u32>, &str)> {
    let (bus, rest) = [VmxBus::Scsi, VmxBus::Sata, VmxBus::Nvme, VmxBus::Ide]
        .into_iter()
        .find_map(|b| key.strip_prefix(b.prefix()).map(|r| (b, r)))?;
    let (dev, field) = rest.split_once('.')?;
    let (ctl, unit) = match dev.split_once(':') {
        Some((c, u)) => (c.parse().ok()?, Some(u.parse().ok()?)),
        None => (dev.parse().ok()?, None),
    };
    Some((bus, ctl, unit, field))
}

/// `ethernetN.pciSlotNumber` as a slot number; a value that is not one gets a note.
fn pci_slot(value: Option<&str>, index: u32, notes: &mut Vec<String>) -> Option<u32> {
    let v = value?.trim();
    match v.parse::<i64>() {
        Ok(-1) => None,
        Ok(n) if (0..=MAX_PCI_SLOT as i64).contains(&n) => Some(n as u32),
        _ => {
            notes.push(format!(
                "ethernet{index}.pciSlotNumber {v:?} is not a PCI slot number (0-{MAX_PCI_SLOT}): ignored"
            ));
            None
        }
    }
}

/// The .vmx's keys (lowercased) as a [`VmxConfig`], with a note for everything dropped.
fn build(keys: &BTreeMap<String, String>, mut notes: Vec<String>, name: &str) -> Result<VmxConfig> {
    let guest_os = get(keys, "guestos")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (os, legacy_machine) = guest_kind(&guest_os, &mut notes);
    let firmware = firmware(keys, name)?;
    let uuid_bios = match get(keys, "uuid.bios") {
        None => None,
        Some(v) => {
            let u = canonical_uuid(v);
            if u.is_none() {
                notes.push(format!("uuid.bios {v:?} is not a UUID: ignored"));
            }
            u
        }
    };
    let (disks, cdroms) = disks_and_cdroms(keys, &mut notes);
    let nics = nics(keys, &mut notes);
    note_devices_left_behind(keys, &mut notes);
    for (key, what) in [("memsize", "memory"), ("numvcpus", "vCPU count")] {
        if get(keys, key).is_none() {
            notes.push(format!("no {key}: the {what} has to come from elsewhere"));
        }
    }
    let display_name = get(keys, "displayname").map(str::to_string);
    Ok(VmxConfig {
        display_name,
        memory_mib: num(keys, "memsize", name)?,
        vcpus: num(keys, "numvcpus", name)?,
        cores_per_socket: num(keys, "cpuid.corespersocket", name)?,
        guest_os,
        os,
        legacy_machine,
        firmware,
        uuid_bios,
        disks,
        cdroms,
        nics,
        notes,
    })
}

fn get<'k>(keys: &'k BTreeMap<String, String>, key: &str) -> Option<&'k str> {
    keys.get(key).map(|s| s.as_str())
}

/// The OS family of a (lowercased) `guestOS`, and whether it is a legacy Windows guest (see
/// [`is_legacy_guest`]), with a note when the guest is unknown or may predate virtio.
fn guest_kind(guest_os: &str, notes: &mut Vec<String>) -> (OsFamily, bool) {
    if guest_os.is_empty() {
        notes.push("no guestOS: treated as a Linux guest".into());
    }
    let os = os_family(guest_os);
    if os == OsFamily::Linux && !guest_os.is_empty() && !known_linux(guest_os) {
        notes.push(format!(
            "guestOS {guest_os:?} is neither Windows nor a known Linux: given the Linux (virtio) template"
        ));
    }
    let legacy_machine = os == OsFamily::Windows && is_legacy_guest(guest_os);
    // Linux before 2.6.25 has no virtio; these guestOS values name such distributions.
    const OLD_LINUX: &[&str] = &[
        "rhel2",
        "rhel3",
        "rhel4",
        "sles-",
        "sles8",
        "sles9",
        "other24xlinux",
        "redhat",
        "turbolinux",
        "mandrake",
    ];
    if os == OsFamily::Linux
        && (guest_os == "sles" || OLD_LINUX.iter().any(|p| guest_os.starts_with(p)))
    {
        notes.push(format!(
            "guestOS {guest_os:?} may predate virtio: override the disk bus (sata) and NIC model (e1000) if it does not boot"
        ));
    }
    (os, legacy_machine)
}

/// Whether a (lowercased) `guestOS` names a Linux distribution this tool knows.
pub fn known_linux(guest_os: &str) -> bool {
    guest_os.contains("linux")
        || [
            "rhel",
            "centos",
            "ubuntu",
            "debian",
            "sles",
            "suse",
            "oracle",
            "fedora",
            "coreos",
            "asianux",
            "mandr",
            "turbo",
            "redhat",
            "photon",
            "almalinux",
            "rocky",
            "amazonlinux",
        ]
        .iter()
        .any(|p| guest_os.starts_with(p))
}

/// `firmware` and `uefi.secureBoot.enabled`.
fn firmware(keys: &BTreeMap<String, String>, name: &str) -> Result<Firmware> {
    Ok(
        match get(keys, "firmware").map(|s| s.trim().to_ascii_lowercase()) {
            Some(f) if f == "efi" => Firmware::Efi {
                secure_boot: get(keys, "uefi.secureboot.enabled").is_some_and(is_true),
            },
            Some(f) if f == "bios" || f.is_empty() => Firmware::Bios,
            Some(f) => bail!("{name}: firmware = {f:?}: expected \"efi\" or \"bios\""),
            None => Firmware::Bios,
        },
    )
}

/// Disks and CD-ROMs: the hard disks in [`VmxConfig::disks`] order, and the CD-ROMs as
/// `slot: file`.
fn disks_and_cdroms(
    keys: &BTreeMap<String, String>,
    notes: &mut Vec<String>,
) -> (Vec<VmxDisk>, Vec<String>) {
    let mut controllers_off: Vec<(VmxBus, u32)> = Vec::new();
    let mut slots: BTreeSet<(VmxBus, u32, u32)> = BTreeSet::new();
    for k in keys.keys() {
        if let Some((bus, ctl, unit, field)) = split_device_key(k) {
            match unit {
                None if field == "present" && is_false(&keys[k]) => {
                    controllers_off.push((bus, ctl))
                }
                Some(u) => {
                    slots.insert((bus, ctl, u));
                }
                None => {}
            }
        }
    }
    let mut disks = Vec::new();
    let mut cdroms = Vec::new();
    for &(bus, ctl, unit) in &slots {
        let controller_off = controllers_off.contains(&(bus, ctl));
        if let Some(d) = disk(keys, (bus, ctl, unit), controller_off, notes, &mut cdroms) {
            disks.push(d);
        }
    }
    // slots is ordered by (bus, controller, unit): disks are already in bus order.
    // bios.hddOrder names the boot disk first ("scsi0:1,scsi0:0"): honour its first entry.
    if let Some(order) = get(keys, "bios.hddorder") {
        if let Some(first) = order
            .split(',')
            .next()
            .map(|s| s.trim().to_ascii_lowercase())
        {
            if let Some(pos) = disks.iter().position(|d| d.slot() == first) {
                let d = disks.remove(pos);
                disks.insert(0, d);
            }
        }
    }
    if disks.is_empty() {
        notes.push("no hard disks found".into());
    }
    (disks, cdroms)
}

/// The hard disk in one device slot; None (with a note unless the slot has no file) for
/// anything else, a CD-ROM also added to `cdroms`.
fn disk(
    keys: &BTreeMap<String, String>,
    (bus, ctl, unit): (VmxBus, u32, u32),
    controller_off: bool,
    notes: &mut Vec<String>,
    cdroms: &mut Vec<String>,
) -> Option<VmxDisk> {
    let slot = format!("{bus}{ctl}:{unit}");
    let field = |f: &str| get(keys, &format!("{slot}.{f}"));
    let file = field("filename")?;
    if field("present").is_some_and(is_false) {
        notes.push(format!("{slot} ({file}) has present = FALSE: ignored"));
        return None;
    }
    if controller_off {
        notes.push(format!(
            "{slot} ({file}) is on controller {bus}{ctl} with present = FALSE: ignored"
        ));
        return None;
    }
    let device_type = field("devicetype").unwrap_or("").to_ascii_lowercase();
    let is_cdrom = device_type.contains("cdrom")
        || (device_type.is_empty() && file.to_ascii_lowercase().ends_with(".iso"));
    if is_cdrom {
        notes.push(format!("CD-ROM {slot} ({file}) is not migrated"));
        cdroms.push(format!("{slot}: {file}"));
        return None;
    }
    let is_disk = matches!(
        device_type.as_str(),
        "" | "disk" | "scsi-harddisk" | "ata-harddisk" | "plaindisk" | "rawdisk"
    );
    if !is_disk {
        notes.push(format!(
            "{slot} has deviceType {device_type:?} (not a hard disk): ignored"
        ));
        return None;
    }
    if file.trim().is_empty() {
        notes.push(format!("{slot} has an empty fileName: ignored"));
        return None;
    }
    let path = Path::new(file);
    let outside_folder = path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if outside_folder {
        // Legal (a disk on another datastore), but not among the VM's own files.
        notes.push(format!(
            "{slot} ({file}) is outside the VM's folder: refused unless --allow-outside-paths (or copy it over)"
        ));
    }
    let mode = field("mode").unwrap_or("").to_ascii_lowercase();
    let controller_model = match bus {
        VmxBus::Scsi => get(keys, &format!("scsi{ctl}.virtualdev")).map(|s| s.to_ascii_lowercase()),
        _ => None,
    };
    Some(VmxDisk {
        bus,
        controller: ctl,
        unit,
        controller_model,
        file_name: PathBuf::from(file),
        independent: mode.starts_with("independent"),
        outside_folder,
    })
}

/// NICs: every `ethernetN` with present = TRUE, in the order of N.
fn nics(keys: &BTreeMap<String, String>, notes: &mut Vec<String>) -> Vec<VmxNic> {
    let mut nic_indexes: Vec<u32> = keys
        .keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("ethernet")?;
            let (n, _) = rest.split_once('.')?;
            n.parse().ok()
        })
        .collect();
    nic_indexes.sort_unstable();
    nic_indexes.dedup();
    nic_indexes
        .into_iter()
        .filter_map(|index| nic(keys, index, notes))
        .collect()
}

/// `ethernet{index}`, None when it is not present.
fn nic(keys: &BTreeMap<String, String>, index: u32, notes: &mut Vec<String>) -> Option<VmxNic> {
    let field = |f: &str| get(keys, &format!("ethernet{index}.{f}"));
    if !field("present").is_some_and(is_true) {
        // VMware treats a NIC without present = TRUE as absent.
        if field("present").is_some() {
            notes.push(format!("ethernet{index} has present = FALSE: ignored"));
        }
        return None;
    }
    let address_type = field("addresstype")
        .unwrap_or("generated")
        .to_ascii_lowercase();
    let mac_raw = match address_type.as_str() {
        "static" => field("address"),
        _ => field("generatedaddress").or(field("address")),
    };
    let mac = match mac_raw {
        None => {
            notes.push(format!(
                "ethernet{index} has no MAC address: libvirt will generate one"
            ));
            None
        }
        Some(m) => {
            let n = normalize_mac(m);
            if n.is_none() {
                notes.push(format!(
                    "ethernet{index} MAC {m:?} is not a MAC address: libvirt will generate one"
                ));
            }
            n
        }
    };
    let network_name = field("networkname").map(str::to_string);
    if network_name.is_none() {
        notes.push(format!(
            "ethernet{index} names no network (networkName): map it explicitly"
        ));
    }
    let pci_slot = pci_slot(field("pcislotnumber"), index, notes);
    Some(VmxNic {
        index,
        model: field("virtualdev").map(|s| s.to_ascii_lowercase()),
        network_name,
        mac,
        pci_slot,
    })
}

/// A note for each present device a libvirt domain gets no equivalent of.
fn note_devices_left_behind(keys: &BTreeMap<String, String>, notes: &mut Vec<String>) {
    for prefix in [
        "floppy",
        "serial",
        "parallel",
        "sound",
        "usb",
        "pcipassthru",
    ] {
        let present: Vec<&str> = keys
            .iter()
            .filter(|(k, v)| {
                k.starts_with(prefix)
                    && k.ends_with(".present")
                    && k.matches('.').count() == 1
                    && is_true(v)
            })
            .map(|(k, _)| k.trim_end_matches(".present"))
            .collect();
        for dev in present {
            notes.push(format!("{dev} is not migrated"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_comments() {
        let v = parse_vmx_str(
            b"# comment\n.encoding = \"UTF-8\"\nDisplayName = \"a|22b|7Cc|zz\" # trailing\n",
            "t.vmx",
        )
        .unwrap();
        assert_eq!(v.display_name.as_deref(), Some("a\"b|c|zz"));
    }

    #[test]
    fn escape_at_end_of_value() {
        let v = parse_vmx_str(b"displayName = \"x|2\"\n", "t").unwrap();
        assert_eq!(v.display_name.as_deref(), Some("x|2"));
        let v = parse_vmx_str(b"displayName = \"x|22\"\n", "t").unwrap();
        assert_eq!(v.display_name.as_deref(), Some("x\""));
    }

    #[test]
    fn uuid_and_mac_forms() {
        assert_eq!(
            canonical_uuid("56 4d 12 34 56 78 9a bc-de f0 12 34 56 78 9A BC").as_deref(),
            Some("564d1234-5678-9abc-def0-123456789abc")
        );
        assert_eq!(canonical_uuid("56 4d"), None);
        assert_eq!(
            normalize_mac("00:50:56:AB:cd:0E").as_deref(),
            Some("00:50:56:ab:cd:0e")
        );
        assert_eq!(normalize_mac("00:50:56:AB:cd"), None);
    }

    #[test]
    fn windows_1252_table() {
        assert_eq!(decode_windows_1252(b"\x80\xe9\x9f\x81"), "€éŸ\u{81}");
    }

    #[test]
    fn bare_values_unknown_encoding_and_hdd_order() {
        let v = parse_vmx_str(
            b".encoding = \"Shift_JIS\"\nmemsize = 2048\nnumvcpus=\"2\"\nbios.hddOrder = \"scsi0:1\"\nscsi0:0.fileName = \"a.vmdk\"\nscsi0:1.fileName = \"b.vmdk\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(v.memory_mib, Some(2048));
        assert_eq!(v.vcpus, Some(2));
        let slots: Vec<String> = v.disks.iter().map(|d| d.slot()).collect();
        assert_eq!(slots, vec!["scsi0:1", "scsi0:0"]);
        assert!(
            v.notes.iter().any(|n| n.contains("Shift_JIS")),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn legacy_list() {
        assert!(is_legacy_guest("windows7srv-64"));
        assert!(is_legacy_guest("winNetStandard"));
        assert!(is_legacy_guest("winXPPro"));
        assert!(!is_legacy_guest("windows8srv-64"));
        assert!(!is_legacy_guest("windows9-64"));
        assert!(!is_legacy_guest("windows2019srv-64"));
        assert_eq!(os_family("longhorn-64"), OsFamily::Windows);
        assert_eq!(os_family("rhel9-64"), OsFamily::Linux);
    }

    /// A cheap fuzzer: vmx-like fragments glued at random must give Ok or Err, never a panic.
    #[test]
    fn random_fragments_never_panic() {
        const BITS: &[&[u8]] = &[
            b"scsi0:0.fileName = \"",
            b"sata1:15.present = \"FALSE\"\n",
            b"|",
            b"|2",
            b"|22",
            b"\"",
            b"=",
            b"\n",
            b"#",
            b"\r\n",
            b"ethernet0.",
            b"address = \"00:50:56:",
            b"nvme0:0.",
            b"mode = \"independent",
            b".encoding = \"windows-1252\"\n",
            b"\x80\xff",
            b"uuid.bios = \"56 4d",
            b"firmware = \"efi\"\n",
            b"memsize = \"99999999999999999999\"\n",
            b"ide4294967296:0.fileName = \"x\"\n",
            b"deviceType = \"cdrom-image\"\n",
            b" ",
        ];
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..3000 {
            let mut text = Vec::new();
            for _ in 0..(seed % 24) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.extend_from_slice(BITS[(seed >> 33) as usize % BITS.len()]);
            }
            let _ = parse_vmx_str(&text, "fuzz.vmx");
        }
    }

    #[test]
    fn nic_slot_numbers_are_read_and_bad_ones_noted() {
        let v = parse_vmx_str(
            b"ethernet0.present = \"TRUE\"\nethernet0.pciSlotNumber = \"192\"\nethernet1.present = \"TRUE\"\nethernet1.pciSlotNumber = \"-1\"\nethernet2.present = \"TRUE\"\nethernet2.pciSlotNumber = \"9000\"\nethernet3.present = \"TRUE\"\n",
            "t",
        )
        .unwrap();
        let slots: Vec<Option<u32>> = v.nics.iter().map(|n| n.pci_slot).collect();
        assert_eq!(slots, [Some(192), None, None, None]);
        let bad: Vec<&String> = v
            .notes
            .iter()
            .filter(|n| n.contains("pciSlotNumber"))
            .collect();
        assert_eq!(bad.len(), 1, "{:?}", v.notes);
        assert!(
            bad[0].starts_with("ethernet2.pciSlotNumber \"9000\""),
            "{bad:?}"
        );
    }

    #[test]
    fn missing_equals_names_the_line() {
        let e = parse_vmx_str(b"a = \"1\"\nbroken\n", "x.vmx").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "x.vmx: line 2: no '=' in a non-comment line"
        );
    }
}
