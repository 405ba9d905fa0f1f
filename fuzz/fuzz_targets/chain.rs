//! A whole chain: up to six files (see CHAIN_FILES) walked from the top descriptor to the
//! base, the base and the deltas opened as stage 1 and stage 2 do, then read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdkfuzz::{CHAIN_FILES, PART_SEPARATOR};
use vmdkimport::vmdk::{resolve_chain, BaseImage, Chain, OpenOptions};

fn parts(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < CHAIN_FILES.len() {
        let Some(at) = rest
            .windows(PART_SEPARATOR.len())
            .position(|w| w == PART_SEPARATOR)
        else {
            break;
        };
        out.push(&rest[..at]);
        rest = &rest[at + PART_SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let dir = vmdkfuzz::scratch();
    for name in CHAIN_FILES {
        let _ = std::fs::remove_file(dir.join(name));
    }
    for (name, part) in CHAIN_FILES.iter().zip(parts(data)) {
        vmdkfuzz::put(name, part);
    }
    let opts = OpenOptions::default();
    let Ok(resolved) = resolve_chain(&dir.join(CHAIN_FILES[0]), &opts) else {
        return;
    };
    assert!(resolved.deltas.len() <= vmdkimport::vmdk::MAX_CHAIN_DEPTH);
    if let Ok(base) = BaseImage::open(&resolved.base, &opts) {
        vmdkfuzz::check_base(&base);
    }
    if resolved.deltas.is_empty() {
        return;
    }
    if let Ok(chain) = Chain::open_deltas(&resolved.deltas, &opts) {
        assert_eq!(chain.layers().len(), resolved.deltas.len());
        vmdkfuzz::check_pieces(&chain);
    }
});
