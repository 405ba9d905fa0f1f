//! Plan files (TOML): parse and check, never a panic; what an accepted plan promises.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vmdkimport::plan_file::{parse, Source, StepKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A folder that does not exist: relative paths join it, nothing of this host is read.
    let Ok(fleet) = parse(Path::new("/nonexistent-vmdkfuzz/plan.toml"), text) else {
        return;
    };
    assert!(!fleet.vms.is_empty(), "an accepted plan without VMs");
    for n in [fleet.jobs, fleet.max_per_target, fleet.max_per_source] {
        assert!(n >= 1, "a limit of {n}");
    }
    let mut names = HashSet::new();
    for vm in &fleet.vms {
        assert!(names.insert(vm.name.as_str()), "{} named twice", vm.name);
        match &vm.source {
            Source::Vmx(p) => assert!(p.is_absolute(), "{p:?} is relative"),
            Source::Flat { base, deltas } => {
                assert!(base.is_absolute(), "{base:?} is relative");
                for d in deltas {
                    assert!(d.is_absolute(), "{d:?} is relative");
                }
            }
            Source::Esx(url) => assert!(url.starts_with("ssh://"), "{url} is no ssh:// URL"),
        }
        for step in [StepKind::Stage1, StepKind::Sync, StepKind::Cutover] {
            if let Some(args) = vm.args(step, true) {
                let domain = args.iter().position(|a| a == "--domain");
                let named = domain.and_then(|i| args.get(i + 1));
                assert_eq!(
                    named.map(|a| a.to_str()),
                    Some(Some(vm.name.as_str())),
                    "{} step {}: {args:?}",
                    vm.name,
                    step.as_str()
                );
            }
        }
    }
});
