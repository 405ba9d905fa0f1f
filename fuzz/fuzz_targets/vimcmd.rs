//! ESXi's `vim-cmd` answers (getallvms, power.getstate, snapshot.get, snapshot.create and
//! .remove): every reader on the same text, never a panic; what an accepted answer promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdkimport::esx::vimcmd::{
    check_created, check_removed, parse_getallvms, parse_power, parse_snapshots,
};

const CMD: &str = "vim-cmd vmsvc/fuzz";

fuzz_target!(|data: &[u8]| {
    // ssh answers reach the readers as lossy UTF-8, as here.
    let out = String::from_utf8_lossy(data);
    match parse_getallvms(CMD, &out) {
        Ok(rows) => {
            for r in &rows {
                // `[datastore] dir/file.vmx`: the form find_vm compares with the .vmx's path.
                assert!(r.file.starts_with('['), "row {r:?} without its datastore");
                assert!(r.file.contains("] "), "row {r:?} without `] `");
                assert!(r.file.ends_with(".vmx"), "row {r:?} not ending in .vmx");
                assert!(out.contains(&r.file), "row {r:?} is not in the answer");
            }
        }
        Err(e) => assert!(e.to_string().contains(CMD), "{e} does not name the command"),
    }
    let _ = parse_power(CMD, &out);
    if let Ok(snaps) = parse_snapshots(CMD, &out) {
        for s in &snaps {
            assert!(out.contains(&s.name), "snapshot {s:?} is not in the answer");
        }
    }
    let _ = check_created(CMD, &out);
    let _ = check_removed(CMD, &out);
});
