//! `--io overlay`: the qcow2 overlay writer checked by qemu-img, and stage 2 through a remote URI with a live block commit.

mod util;

#[path = "overlay/writer.rs"]
mod writer;

#[path = "overlay/roundtrip.rs"]
mod roundtrip;

#[path = "overlay/interrupt.rs"]
mod interrupt;
