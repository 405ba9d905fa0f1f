//! What the preflight finds: each finding's severity, side, text and way out, one VM's report of them, and what the VMware side hands the KVM side.

use crate::vmx::VmxConfig;

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
pub struct Source {
    pub vmx: Option<VmxConfig>,
    pub capacities: Vec<u64>,
}
