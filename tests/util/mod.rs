//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod bootimg;
pub mod libvirt;
