//! .vmx text: parse and never panic; an accepted file's disks have names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdkimport::vmx::parse_vmx_str;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = parse_vmx_str(data, "fuzz.vmx") {
        for d in &cfg.disks {
            assert!(
                !d.file_name.as_os_str().is_empty(),
                "a disk without a file name"
            );
            let _ = d.slot();
        }
    }
});
