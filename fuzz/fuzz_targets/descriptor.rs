//! Descriptor text: parse, sum the extents, and never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmdkimport::vmdk::descriptor::looks_like_descriptor;
use vmdkimport::vmdk::Descriptor;

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_descriptor(data);
    if let Ok(d) = Descriptor::parse(data, Path::new("fuzz/disk.vmdk")) {
        if let Ok(capacity) = d.capacity() {
            let sum: u128 = d.extents.iter().map(|e| e.sectors as u128 * 512).sum();
            assert_eq!(capacity as u128, sum, "capacity is the sum of the extents");
        }
        for e in &d.extents {
            assert!(e.line >= 1, "extent lines are numbered from 1");
        }
        let _ = d.ddb("adapterType");
    }
});
