//! The preflight: what will go wrong with a VM's migration, found before anything is made, a finding per problem (its severity, what it is, the way out) from the VMware side ([`vmware`]) and the KVM side ([`kvm`]), shown as one table or JSON ([`table`]).

mod kvm;
pub mod table;
mod vmware;

pub use vmware::{from_vmx, snapshot_room, tools_finding, unreadable_disk};

use crate::import::ImportPlan;
use crate::vmx::VmxConfig;

/// Set by `plan check` for its children's dry runs: the plan showed their preflight already.
pub const SHOWN_ENV: &str = "VMDKIMPORT_PREFLIGHT_SHOWN";

/// How much a finding matters: an error blocks the migration, a warning needs a decision, an
/// info is worth knowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// Where a finding comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Vmware,
    Kvm,
}

/// One thing the preflight found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub side: Side,
    /// What it is, naming the file, disk, device or host thing.
    pub what: String,
    /// What to do about it (for an info: what follows from it).
    pub way_out: String,
}

impl Finding {
    pub fn new(severity: Severity, side: Side, what: String, way_out: impl Into<String>) -> Self {
        Finding {
            severity,
            side,
            what,
            way_out: way_out.into(),
        }
    }
}

/// Every finding for one VM's migration into `domain`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub domain: String,
    pub findings: Vec<Finding>,
}

impl Report {
    /// How many findings block the migration.
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn count(&self, s: Severity) -> usize {
        self.findings.iter().filter(|f| f.severity == s).count()
    }
}

/// What the VMware side gives the KVM side to check: the `.vmx` (when the import has one) and
/// every disk's capacity that could be read.
#[derive(Default)]
pub(crate) struct Source {
    pub vmx: Option<VmxConfig>,
    pub capacities: Vec<u64>,
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
        plan.domain,
        table::render(&[&report])
    );
    table::keep(&report);
    anyhow::ensure!(
        report.errors() == 0,
        "preflight of '{}': {} error(s) block the migration (the table above says each one's way out); nothing was made",
        plan.domain,
        report.errors()
    );
    Ok(())
}
