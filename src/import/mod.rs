//! The migration on a libvirt host: stage 1 (volume, domain, base upload) and stage 2 (delta apply, start), each checked against the import state in the domain's metadata.

pub mod write;
