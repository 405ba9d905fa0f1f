//! A hosted sparse (KDMV) file opened as a one-delta chain and as a base disk, then walked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdkimport::vmdk::{BaseImage, OpenOptions};

fuzz_target!(|data: &[u8]| {
    vmdkfuzz::one_extent("fuzz-hosted.vmdk", b"KDMV", data);
    // The same bytes as a monolithicSparse base (one_extent left them with the magic).
    let path = vmdkfuzz::scratch().join("fuzz-hosted.vmdk");
    if let Ok(base) = BaseImage::open(&path, &OpenOptions::default()) {
        vmdkfuzz::check_base(&base);
    }
});
