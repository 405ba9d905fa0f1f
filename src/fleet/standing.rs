//! Where a VM of the plan stands (its domain's phase, as the lifecycle reads it from the import state), and whether a step runs for it.

use crate::plan_file::StepKind;
use crate::state::lifecycle::DomainPhase;
use crate::state::ImportState;

/// Where a VM stands on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// No domain of that name on the host.
    Absent,
    /// A domain without import state (defined by other tooling): stage 1 writes into its disks.
    Foreign,
    /// A domain with an import state, in this phase.
    Import(DomainPhase),
}

impl Standing {
    pub fn of(state: Option<&ImportState>, exists: bool) -> Standing {
        match state {
            Some(st) => Standing::Import(st.phase()),
            None if exists => Standing::Foreign,
            None => Standing::Absent,
        }
    }

    /// Whether stage 1 completed (every base uploaded).
    fn staged(&self) -> bool {
        matches!(self, Standing::Import(p) if p.staged())
    }

    fn is(&self, phase: DomainPhase) -> bool {
        *self == Standing::Import(phase)
    }
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Standing::Absent => write!(f, "not started"),
            Standing::Foreign => write!(f, "domain without import state"),
            Standing::Import(p) => write!(f, "{p}"),
        }
    }
}

/// What a step does for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run,
    /// Nothing to do (already done, or not for this source): not a failure.
    Skip(&'static str),
    /// Cannot run yet: a failure of this VM in this run.
    Refuse(&'static str),
}

/// Whether `step` runs for a VM standing at `at` (`esx`: its source is an ESXi host).
pub fn decide(step: StepKind, at: &Standing, esx: bool) -> Decision {
    match step {
        StepKind::Stage1 if at.staged() => Decision::Skip("stage 1 done already"),
        StepKind::Stage1 => Decision::Run,
        _ if at.is(DomainPhase::HandedOver) => Decision::Skip("cut over already"),
        StepKind::Sync if !esx => Decision::Skip("pre-copy rounds need an ssh:// source"),
        _ if !at.staged() => Decision::Refuse("stage 1 is not done: run `plan stage1` first"),
        StepKind::Sync if at.is(DomainPhase::Applying) => {
            Decision::Refuse("a cutover is unfinished: run `plan cutover` again")
        }
        StepKind::Sync | StepKind::Cutover => Decision::Run,
    }
}

/// The step `plan check` tries (with --dry-run) for a VM standing at `at`: the next one.
pub fn next_step(at: &Standing) -> Option<StepKind> {
    match at {
        s if s.is(DomainPhase::HandedOver) => None,
        s if s.staged() => Some(StepKind::Cutover),
        _ => Some(StepKind::Stage1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::DiskState;

    #[test]
    fn a_vm_stands_where_its_domain_and_import_state_say() {
        let st = ImportState {
            disks: vec![DiskState::default()],
            ..Default::default()
        };
        assert_eq!(Standing::of(None, false), Standing::Absent);
        assert_eq!(Standing::of(None, true), Standing::Foreign);
        assert_eq!(
            Standing::of(Some(&st), true),
            Standing::Import(DomainPhase::Uploading)
        );
        assert_eq!(
            Standing::of(Some(&st), true).to_string(),
            "stage 1 unfinished"
        );
        assert_eq!(
            Standing::of(None, true).to_string(),
            "domain without import state"
        );
    }

    #[test]
    fn steps_run_only_where_they_apply() {
        use Decision::*;
        use StepKind::*;
        let at = Standing::Import;
        let staged = at(DomainPhase::Staged { trial_ok: true });
        let (uploading, applying) = (at(DomainPhase::Uploading), at(DomainPhase::Applying));
        let cut_over = at(DomainPhase::HandedOver);
        assert_eq!(decide(Stage1, &uploading, false), Run);
        assert!(matches!(decide(Stage1, &staged, false), Skip(_)));
        assert!(matches!(
            decide(Cutover, &Standing::Absent, false),
            Refuse(_)
        ));
        assert_eq!(decide(Cutover, &applying, false), Run);
        assert!(matches!(decide(Cutover, &cut_over, true), Skip(_)));
        assert!(matches!(decide(Sync, &staged, false), Skip(_)));
        assert_eq!(decide(Sync, &at(DomainPhase::Synced(2)), true), Run);
        assert!(matches!(decide(Sync, &applying, true), Refuse(_)));
        assert_eq!(next_step(&uploading), Some(Stage1));
        assert_eq!(next_step(&staged), Some(Cutover));
        assert_eq!(next_step(&cut_over), None);
    }
}
