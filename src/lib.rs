//! virt-vmdkimport: move VMware ESX virtual machines onto KVM/libvirt with minimal downtime.

pub mod apply;
pub mod cli;
pub mod domain_xml;
pub mod escape;
pub mod esx;
pub mod fleet;
pub mod image_read;
pub mod import;
pub mod interrupt;
pub mod libvirt;
pub mod out;
pub mod plan;
pub mod plan_file;
pub mod preflight;
pub mod progress;
pub mod projection;
pub mod qcow2;
pub mod report;
pub mod state;
pub mod testboot;
pub mod units;
pub mod vmdk;
pub mod vmx;
pub mod watchdog;
pub mod window;
mod xmltree;
