//! virt-vmdkimport: move VMware ESX virtual machines onto KVM/libvirt with minimal downtime.

pub mod domain_xml;
pub mod state;
pub mod vmdk;
pub mod vmx;
mod xmltree;
