//! `plan sync --until-outage`: pre-copy rounds repeated, every VM still going at once within the plan's limits, until each VM's projected cutover is under the target, its final delta stops shrinking, or `--max-rounds` rounds ran; each VM's reason said.

use anyhow::Result;
use serde_json::{json, Value};
use std::time::Duration;

use super::{decide, report, run_jobs, summary, Hosts, Outcome, Row};
use crate::cli::{Action, PlanArgs, DEFAULT_MAX_ROUNDS};
use crate::plan_file::{Fleet, FleetVm};
use crate::projection::{self, Projection, Stop};
use crate::state::ImportState;

/// Where one VM's rounds stand.
#[derive(Default, Clone)]
struct Going {
    rounds: u32,
    /// Why its rounds ended (None while they go on).
    stopped: Option<String>,
}

/// Rounds for every VM until each stops; the summary of the last rounds, each VM's rounds
/// and reason in it.
pub(super) fn sync_until(
    fleet: &Fleet,
    vms: &[FleetVm],
    hosts: &mut Hosts,
    a: &PlanArgs,
    target: Duration,
) -> Result<()> {
    let max = a.max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS);
    let mut going = vec![Going::default(); vms.len()];
    let mut rows: Vec<Row> = Vec::new();
    for _ in 0..max {
        let (mut now, mut jobs) = decide(fleet, vms, hosts, Action::Sync, false);
        jobs.retain(|j| going[j.vm].stopped.is_none());
        run_jobs(fleet, vms, hosts, &mut now, jobs, false)?;
        for (i, vm) in vms.iter().enumerate() {
            if going[i].stopped.is_some() {
                now[i] = rows[i].clone();
                continue;
            }
            judge(hosts, vm, &now[i], &mut going[i], target, max);
        }
        rows = now;
        if crate::interrupt::received().is_some() || going.iter().all(|g| g.stopped.is_some()) {
            break;
        }
    }
    let extra: Vec<Value> = going
        .iter()
        .map(|g| json!({ "rounds": g.rounds, "stopped": g.stopped }))
        .collect();
    summary(fleet, vms, &rows, hosts, a, &extra)
}

/// After a round of `vm` (its `row`): whether its rounds stop, and why (said).
fn judge(hosts: &mut Hosts, vm: &FleetVm, row: &Row, g: &mut Going, target: Duration, max: u32) {
    let name = report::sanitize(&vm.name);
    let why = match &row.outcome {
        Outcome::Done => {
            g.rounds += 1;
            let st = hosts.state(vm).ok().and_then(|(_, s)| s);
            let (stop, now) = stop_of(st.as_ref(), target, g.rounds, max);
            match stop {
                Some(s) => s.said(target, now.as_ref()),
                None => {
                    let at = now.map_or("not projected".into(), |p| p.about());
                    log::info!(
                        "[{name}] round {}: a cutover now: {at}; the target is {}: another round",
                        g.rounds,
                        crate::units::duration_arg(target)
                    );
                    return;
                }
            }
        }
        Outcome::Skipped(why) => format!("no round: {why}"),
        Outcome::Failed(e) => format!("the round failed: {e}"),
        Outcome::Interrupted => "interrupted".to_string(),
        Outcome::NotStarted => "not started".to_string(),
    };
    log::info!("[{name}] rounds stopped after {}: {why}", g.rounds);
    g.stopped = Some(why);
}

/// Whether the rounds recorded in `st` stop after `done` of this run, and the projection now.
fn stop_of(
    st: Option<&ImportState>,
    target: Duration,
    done: u32,
    max: u32,
) -> (Option<Stop>, Option<Projection>) {
    let Some(st) = st else {
        return (Some(Stop::MaxRounds(done)), None);
    };
    let start = st.trial.as_ref().and_then(|t| t.start_ms);
    let now = projection::project(&st.syncs, start);
    (projection::stop(&st.syncs, start, target, done, max), now)
}
