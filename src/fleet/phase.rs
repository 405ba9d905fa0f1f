//! Where a VM of the plan stands, read from its import state, and whether a step runs for it.

use crate::plan_file::StepKind;
use crate::state::ImportState;

/// A VM's phase, from its domain's import state on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No domain of that name on the host.
    Absent,
    /// A domain without import state (defined by other tooling): stage 1 writes into its disks.
    Foreign,
    /// Stage 1 began and some base upload is not complete.
    Uploading,
    /// Every base uploaded; `trial_ok` when the trial start passed (or the state predates it).
    Staged { trial_ok: bool },
    /// Pre-copy rounds from ESXi applied.
    Synced(usize),
    /// A disk is being written by stage 2 or a cutover that has not finished.
    Applying,
    /// Handed over to its guest (started, or stage 2 with --no-start).
    CutOver,
}

impl Phase {
    pub fn of(state: Option<&ImportState>, exists: bool) -> Phase {
        let Some(st) = state else {
            return if exists {
                Phase::Foreign
            } else {
                Phase::Absent
            };
        };
        if st.handed_over.is_some() {
            Phase::CutOver
        } else if st.disks.iter().any(|d| d.applying) {
            Phase::Applying
        } else if st.disks.is_empty() || st.disks.iter().any(|d| !d.base_uploaded) {
            Phase::Uploading
        } else if !st.syncs.is_empty() {
            Phase::Synced(st.syncs.len())
        } else {
            Phase::Staged {
                trial_ok: st.trial.as_ref().is_none_or(|t| t.started),
            }
        }
    }

    /// Whether stage 1 completed (every base uploaded).
    fn staged(&self) -> bool {
        !matches!(self, Phase::Absent | Phase::Foreign | Phase::Uploading)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Absent => write!(f, "not started"),
            Phase::Foreign => write!(f, "domain without import state"),
            Phase::Uploading => write!(f, "stage 1 unfinished"),
            Phase::Staged { trial_ok: true } => write!(f, "stage 1 done"),
            Phase::Staged { trial_ok: false } => write!(f, "stage 1 done, trial start failed"),
            Phase::Synced(n) => write!(f, "synced x{n}"),
            Phase::Applying => write!(f, "cutover unfinished"),
            Phase::CutOver => write!(f, "cut over"),
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

/// Whether `step` runs for a VM in `phase` (`esx`: its source is an ESXi host).
pub fn decide(step: StepKind, phase: &Phase, esx: bool) -> Decision {
    match step {
        StepKind::Stage1 if phase.staged() => Decision::Skip("stage 1 done already"),
        StepKind::Stage1 => Decision::Run,
        _ if *phase == Phase::CutOver => Decision::Skip("cut over already"),
        StepKind::Sync if !esx => Decision::Skip("pre-copy rounds need an ssh:// source"),
        _ if !phase.staged() => Decision::Refuse("stage 1 is not done: run `plan stage1` first"),
        StepKind::Sync if *phase == Phase::Applying => {
            Decision::Refuse("a cutover is unfinished: run `plan cutover` again")
        }
        StepKind::Sync | StepKind::Cutover => Decision::Run,
    }
}

/// The step `plan check` tries (with --dry-run) for a VM in `phase`: the next one.
pub fn next_step(phase: &Phase) -> Option<StepKind> {
    match phase {
        Phase::CutOver => None,
        p if p.staged() => Some(StepKind::Cutover),
        _ => Some(StepKind::Stage1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{DiskState, HandOver, HandOverHow};

    fn disk(uploaded: bool, applying: bool) -> DiskState {
        DiskState {
            base_uploaded: uploaded,
            applying,
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_the_import_state() {
        let mut st = ImportState {
            disks: vec![disk(true, false), disk(false, false)],
            ..Default::default()
        };
        assert_eq!(Phase::of(None, false), Phase::Absent);
        assert_eq!(Phase::of(None, true), Phase::Foreign);
        assert_eq!(Phase::of(Some(&st), true), Phase::Uploading);
        st.disks[1].base_uploaded = true;
        assert_eq!(Phase::of(Some(&st), true), Phase::Staged { trial_ok: true });
        st.disks[0].applying = true;
        assert_eq!(Phase::of(Some(&st), true), Phase::Applying);
        st.handed_over = Some(HandOver {
            at: None,
            how: HandOverHow::Started,
        });
        assert_eq!(Phase::of(Some(&st), true), Phase::CutOver);
    }

    #[test]
    fn steps_run_only_where_they_apply() {
        use Decision::*;
        use StepKind::*;
        let staged = Phase::Staged { trial_ok: true };
        assert_eq!(decide(Stage1, &Phase::Uploading, false), Run);
        assert!(matches!(decide(Stage1, &staged, false), Skip(_)));
        assert!(matches!(decide(Cutover, &Phase::Absent, false), Refuse(_)));
        assert_eq!(decide(Cutover, &Phase::Applying, false), Run);
        assert!(matches!(decide(Cutover, &Phase::CutOver, true), Skip(_)));
        assert!(matches!(decide(Sync, &staged, false), Skip(_)));
        assert_eq!(decide(Sync, &Phase::Synced(2), true), Run);
        assert!(matches!(decide(Sync, &Phase::Applying, true), Refuse(_)));
        assert_eq!(next_step(&Phase::Uploading), Some(Stage1));
        assert_eq!(next_step(&staged), Some(Cutover));
        assert_eq!(next_step(&Phase::CutOver), None);
    }
}
