//! The trial start's CPU ladder (host-passthrough, host-model, QEMU's default) in tests: which
//! rung starts first is chosen, by a test or for the whole run, not left to the host's KVM.
//!
//! The binary reads `VMDKIMPORT_TEST_CPU_STARTS=RUNG` (see `trial::TEST_CPU_ENV`): the rungs
//! above RUNG get a CPU feature no host has, which libvirt really refuses, and the host rungs
//! from RUNG down start. Set for `cargo nextest run`, every binary the tests run inherits it,
//! so the whole suite runs as on a host where that rung is the first that starts
//! (doc/testing.md); [`super::import::Import::cpu_starts`] forces it for one import.

pub use vmdkimport::import::trial::TEST_CPU_ENV as ENV;

/// The ladder's rungs, first to last, as the import state records them (`<trial cpu=...>`).
pub const RUNGS: [&str; 3] = ["host-passthrough", "host-model", "default"];

/// The rungs before `first`: those that fail when `first` is the first that starts.
pub fn failing_before(first: &str) -> &'static [&'static str] {
    let i = RUNGS
        .iter()
        .position(|r| *r == first)
        .unwrap_or_else(|| panic!("no rung {first}"));
    &RUNGS[..i]
}
