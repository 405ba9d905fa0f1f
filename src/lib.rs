//! virt-vmdkimport: move VMware ESX virtual machines onto KVM/libvirt with minimal downtime.

pub mod libvirt;
pub mod vmdk;
