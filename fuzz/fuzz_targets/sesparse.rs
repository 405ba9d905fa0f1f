//! A bare SEsparse extent opened as a one-delta chain, then walked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdkimport::vmdk::sesparse::SESPARSE_MAGIC;

fuzz_target!(|data: &[u8]| {
    vmdkfuzz::one_extent("fuzz-sesparse.vmdk", &SESPARSE_MAGIC.to_le_bytes(), data);
});
