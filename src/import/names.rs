//! Linux guests keep their device names across the move: NICs on PCIe slots numbered as on VMware (`ens192`), disks on virtio-scsi (`sdX`), and the options that choose otherwise.

use anyhow::{ensure, Result};

use crate::cli::{DiskBusArg, NicNames};
use crate::domain_xml::{self, DiskBus, DomainSpec};
use crate::libvirt::Conn;
use crate::vmx::{OsFamily, VmxConfig};
use crate::xmltree::Element;

/// `<qemu:override>`, which sets the root ports' slot numbers, came with libvirt 8.2.0.
const QEMU_OVERRIDE_SINCE: u32 = 8_002_000;

/// `--nic-names` and `--disk-bus` as given (None: the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct Naming {
    pub nics: Option<NicNames>,
    pub disk_bus: Option<DiskBusArg>,
}

impl Naming {
    /// Check the options against the guest: they shape Linux guests only, and
    /// `--nic-names vmware` needs the .vmx, which records the slot numbers.
    pub fn check(self, os: Option<OsFamily>, vmx: Option<&VmxConfig>) -> Result<Naming> {
        self.check_options(os.or(vmx.map(|v| v.os)), vmx.is_some())?;
        Ok(self)
    }

    /// [`Naming::check`] from the command line alone: the guest OS if `--os` gave it, and
    /// whether a .vmx is given (its own OS is checked once it is read).
    pub fn check_options(self, os: Option<OsFamily>, vmx_given: bool) -> Result<()> {
        if os.unwrap_or(OsFamily::Linux) == OsFamily::Windows {
            for (given, opt) in [
                (self.nics.is_some(), "--nic-names"),
                (self.disk_bus.is_some(), "--disk-bus"),
            ] {
                ensure!(
                    !given,
                    "{opt} shapes Linux guests; this is a Windows guest, which gets SATA disks and an e1000e NIC (virtio later with --switch-to-virtio): leave {opt} out"
                );
            }
        }
        ensure!(
            self.nics != Some(NicNames::Vmware) || vmx_given,
            "--nic-names vmware takes each NIC's PCI slot number from the VM's .vmx: give --vmx"
        );
        Ok(())
    }

    /// Set the new domain's NIC slots and disk bus. NICs that do not get VMware's slot
    /// number are named in a note.
    pub fn apply(self, conn: &Conn, spec: &mut DomainSpec, from_vmx: bool) -> Result<()> {
        spec.nic_slots = from_vmx && self.nics != Some(NicNames::Kvm);
        spec.linux_disk_bus = match self.disk_bus {
            Some(DiskBusArg::VirtioBlk) => DiskBus::Virtio,
            Some(DiskBusArg::VirtioScsi) | None => DiskBus::Scsi,
        };
        let slotted = spec.nics.iter().any(|n| n.pci_slot.is_some());
        if spec.nic_slots && spec.os == OsFamily::Linux && slotted {
            let v = conn.lib_version()?;
            if v < QEMU_OVERRIDE_SINCE {
                crate::note!(
                    "libvirt {} has no <qemu:override> (8.2.0 and later): the NICs get libvirt's default PCI addresses, and the guest names them after those (enp1s0 style), not as on VMware",
                    version_text(v)
                );
                spec.nic_slots = false;
            }
        }
        for n in domain_xml::nic_slot_notes(spec) {
            crate::note!("{n}");
        }
        Ok(())
    }

    /// For a domain that exists: the options given must match how it is defined, since this
    /// tool does not move its devices in place.
    pub fn check_existing(
        self,
        domain: &str,
        xml: &Element,
        vmx: Option<&VmxConfig>,
    ) -> Result<()> {
        let again = format!(
            "this tool does not move a defined domain's devices: leave the option out, or undefine the domain (virsh undefine {domain}; its volumes stay) and run stage 1 again"
        );
        let devices = xml.find("devices");
        let all = || devices.into_iter().flat_map(|d| d.elements());
        if let Some(bus) = self.disk_bus {
            let (want, name) = match bus {
                DiskBusArg::VirtioScsi => ("scsi", "virtio-scsi"),
                DiskBusArg::VirtioBlk => ("virtio", "virtio-blk"),
            };
            let other = all()
                .filter(|e| e.name == "disk" && e.get_attr("device").unwrap_or("disk") == "disk")
                .filter_map(|d| d.find("target").and_then(|t| t.get_attr("bus")))
                .find(|b| *b != want);
            if let Some(b) = other {
                anyhow::bail!(
                    "--disk-bus {name}: domain '{domain}' has a disk on bus {b}; {again}"
                );
            }
        }
        let has_ports = all().any(|e| {
            e.name == "controller"
                && e.find("alias")
                    .and_then(|a| a.get_attr("name"))
                    .is_some_and(|n| n.starts_with(domain_xml::NIC_PORT_ALIAS_PREFIX))
        });
        let slots_known = vmx.is_some_and(|v| v.nics.iter().any(|n| n.pci_slot.is_some()));
        match self.nics {
            Some(NicNames::Kvm) => ensure!(
                !has_ports,
                "--nic-names kvm: domain '{domain}' has its NICs on VMware's slot numbers; {again}"
            ),
            Some(NicNames::Vmware) => ensure!(
                has_ports || !slots_known,
                "--nic-names vmware: domain '{domain}' has its NICs on libvirt's default addresses; {again}"
            ),
            None => {}
        }
        Ok(())
    }

    /// Whether either option was given.
    pub fn given(self) -> bool {
        self.nics.is_some() || self.disk_bus.is_some()
    }
}

/// libvirt's version number (major * 1,000,000 + minor * 1,000 + release) as `9.0.0`.
fn version_text(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_as_libvirt_writes_them() {
        assert_eq!(version_text(9_000_000), "9.0.0");
        assert_eq!(version_text(8_002_001), "8.2.1");
    }
}
