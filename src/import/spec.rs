//! The domain a new import defines ([`new_domain`]): from the `.vmx` when given, else from the options, the command line winning over the `.vmx`; and the names of its volumes.

use anyhow::Result;

use super::plan::ImportPlan;
use super::request::Request;
use crate::domain_xml::{self, DiskSource as SpecDisk, DomainSpec, NicSpec};
use crate::libvirt::Conn;
use crate::vmx::{self, Firmware, OsFamily};

/// Memory and CPUs of a new domain when neither the .vmx nor the command line says.
const DEFAULT_MEMORY_MIB: u64 = 1024;
const DEFAULT_VCPUS: u32 = 1;

/// The domain a new import defines, from the .vmx when given, else from the options.
pub(super) fn new_domain(req: &Request, conn: &Conn, disks: &[SpecDisk]) -> Result<DomainSpec> {
    let domain_type = conn.domain_type();
    let mut spec = match &req.vmx {
        Some((_, vmx)) => {
            let net_for = |nic: &vmx::VmxNic| req.net_source(nic.network_name.as_deref());
            domain_xml::spec_from_vmx(vmx, &req.domain, domain_type, disks.to_vec(), &net_for)?
        }
        None => from_options(req, domain_type, disks),
    };
    // The command line wins over the .vmx.
    if let Some(m) = req.memory_mib {
        spec.memory_mib = m;
    }
    if let Some(v) = req.vcpus {
        spec.vcpus = v;
    }
    if let Some(os) = req.os {
        spec.os = os;
    }
    if let (Some(mac), Some(nic)) = (&req.mac, spec.nics.first_mut()) {
        nic.mac = Some(mac.clone());
    }
    if let Some(cpu) = &req.cpu {
        spec.cpu = cpu.clone();
    }
    spec.hyperv_passthrough |= req.hyperv_passthrough;
    req.naming.apply(conn, &mut spec, req.vmx.is_some())?;
    Ok(spec)
}

/// The domain of an import without a `.vmx`: a BIOS guest with the default memory and CPUs,
/// its disks, and a NIC when a network, bridge or MAC was given.
fn from_options(plan: &ImportPlan, domain_type: &str, disks: &[SpecDisk]) -> DomainSpec {
    let nics = if plan.network.is_some() || plan.bridge.is_some() || plan.mac.is_some() {
        vec![NicSpec {
            net: plan.net_source(None),
            mac: plan.mac.clone(),
            model_override: None,
            pci_slot: None,
        }]
    } else {
        Vec::new()
    };
    DomainSpec {
        name: plan.domain.clone(),
        uuid: None,
        title: None,
        domain_type: domain_type.to_string(),
        os: plan.os.unwrap_or(OsFamily::Linux),
        legacy_machine: false,
        memory_mib: DEFAULT_MEMORY_MIB,
        vcpus: DEFAULT_VCPUS,
        cores_per_socket: None,
        cpu: if domain_type == "kvm" {
            domain_xml::CpuMode::HostPassthrough
        } else {
            domain_xml::CpuMode::Default
        },
        cpu_disable_features: Vec::new(),
        hyperv_passthrough: false,
        firmware: Firmware::Bios,
        disks: disks
            .iter()
            .map(|s| domain_xml::DiskSpec {
                source: s.clone(),
                bus_override: None,
                scsi_slot: None,
            })
            .collect(),
        nics,
        serial_log: None,
        extra_virtio_disk: None,
        nic_slots: false,
        linux_disk_bus: domain_xml::DiskBus::Scsi,
    }
}

/// The guest family as messages name it.
pub(super) fn os_name(os: OsFamily) -> &'static str {
    match os {
        OsFamily::Linux => "Linux",
        OsFamily::Windows => "Windows",
    }
}

/// The volumes of a new domain's `n` disks: `DOMAIN-disk0`, `DOMAIN-disk1`, ... in the pool.
pub(super) fn volume_names(plan: &ImportPlan, n: usize) -> Vec<SpecDisk> {
    (0..n)
        .map(|i| SpecDisk::Volume {
            pool: plan.pool.clone(),
            volume: format!("{}-disk{i}", plan.domain),
        })
        .collect()
}
