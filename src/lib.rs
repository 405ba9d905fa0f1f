//! virt-vmdkimport: move VMware ESX virtual machines onto KVM/libvirt with minimal downtime.

pub mod apply;
pub mod cli;
pub mod import;
pub mod libvirt;
pub mod plan;
pub mod vmdk;
