//! The preflight: what will go wrong with a VM's migration, found before anything is made, a finding per problem (its severity, what it is, the way out) from the VMware side ([`vmware`]) and the KVM side ([`kvm`]), shown as one table or JSON ([`table`]).

mod finding;
mod kvm;
pub mod table;
mod vmware;

pub use finding::{Finding, Report, Severity, Side};

use crate::import::ImportPlan;

/// Set by `plan check` for its children's dry runs: the plan showed their preflight already.
pub const SHOWN_ENV: &str = "VMDKIMPORT_PREFLIGHT_SHOWN";

/// Whether an import run starts with the preflight: a dry run of stage 1, unless `plan
/// check` showed it already ([`SHOWN_ENV`]).
pub fn wanted(plan: &ImportPlan) -> bool {
    plan.is_stage_one_dry_run() && std::env::var_os(SHOWN_ENV).is_none()
}

/// The preflight of `plan`'s import: every check of both sides, reading only (the `.vmx` and
/// descriptors, `vim-cmd` queries on ESXi, lookups in libvirt); nothing is made or changed
/// anywhere. Whatever cannot be read is itself a finding.
pub fn check(plan: &ImportPlan) -> Report {
    let mut findings = Vec::new();
    let source = vmware::check(plan, &mut findings);
    kvm::check(plan, &source, &mut findings);
    findings.sort_by_key(|f| (f.side, f.severity));
    Report {
        domain: plan.domain.clone(),
        findings,
    }
}

/// The preflight of a dry run of stage 1: the table said (and kept for `--json`); an error
/// when a finding blocks the migration.
pub fn dry_run(plan: &ImportPlan) -> anyhow::Result<()> {
    let report = check(plan);
    log::info!(
        "preflight of '{}':\n{}",
        crate::escape::sanitize(&plan.domain),
        table::render(&[&report])
    );
    table::keep(&report);
    anyhow::ensure!(
        report.errors() == 0,
        "preflight of '{}': {} error(s) block the migration (the table above says each one's way out); nothing was made",
        crate::escape::sanitize(&plan.domain),
        report.errors()
    );
    Ok(())
}
