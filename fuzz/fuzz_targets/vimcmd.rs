//! ESXi's `vim-cmd` answers (getallvms, power.getstate, snapshot.get, snapshot.create and
//! .remove, hostd's passing failures): every reader on the same text, never a panic; what an
//! accepted answer promises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdkimport::esx::vimcmd::{
    check_created, parse_getallvms, parse_power, parse_snapshots, removal_started, transient,
};

const CMD: &str = "vim-cmd vmsvc/fuzz";

fuzz_target!(|data: &[u8]| {
    // ssh answers reach the readers as lossy UTF-8, as here.
    let out = String::from_utf8_lossy(data);
    match parse_getallvms(CMD, &out) {
        Ok(rows) => {
            for r in &rows {
                // The row is a line of the answer, after its Vmid.
                assert!(out.contains(&r.rest), "row {r:?} is not in the answer");
                if let Some(file) = r.file() {
                    // `[datastore] dir/file.vmx`: the form the errors list.
                    assert!(file.starts_with('[') && file.contains("] "), "row {r:?}");
                    assert!(file.ends_with(".vmx"), "row {r:?} not ending in .vmx");
                }
                // What find_vm asks of a row: the datastores holding a path it holds.
                if let Some((_, path)) = r.file().and_then(|f| f.split_once("] ")) {
                    for ds in r.datastores_of(path) {
                        assert!(r.rest.contains(&format!("[{ds}] {path}")), "row {r:?}");
                    }
                }
            }
        }
        Err(e) => assert!(e.to_string().contains(CMD), "{e} does not name the command"),
    }
    let _ = parse_power(CMD, &out);
    if let Ok(snaps) = parse_snapshots(CMD, &out) {
        for s in &snaps {
            assert!(out.contains(&s.name), "snapshot {s:?} is not in the answer");
            assert!(
                s.description.lines().all(|l| out.contains(l)),
                "snapshot {s:?}: its description is not in the answer"
            );
        }
    }
    let _ = check_created(CMD, &out);
    let _ = removal_started(&out);
    for failed in [false, true] {
        if let Some(line) = transient(&out, failed) {
            assert!(out.contains(line), "{line:?} is not in the answer");
        }
    }
});
