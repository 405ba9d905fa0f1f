//! A bare COWD (vmfsSparse) extent opened as a one-delta chain, then walked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmdkfuzz::one_extent("fuzz-delta.vmdk", b"COWD", data);
});
