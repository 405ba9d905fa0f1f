//! `plan sync --until-outage`'s rule per VM: after each round, whether its rounds stop (its projected cutover under the target, its final delta no longer shrinking, `--max-rounds` reached, or the round not done) and the reason said.

use std::time::Duration;

use crate::fleet::report::sanitize;
use crate::projection::{self, Projection, Stop};
use crate::state::ImportState;

/// Where one VM's rounds stand.
#[derive(Default, Clone)]
pub struct Going {
    pub rounds: u32,
    /// Why its rounds ended (None while they go on).
    pub stopped: Option<String>,
}

impl Going {
    /// After a round of `name`: `ran` is its import state when the round was done, else why
    /// not. Its rounds stop when [`projection::stop`] says so (`target`, `max`), or when the
    /// round was not done; the reason said.
    pub fn judge(
        &mut self,
        name: &str,
        ran: Result<Option<ImportState>, String>,
        target: Duration,
        max: u32,
    ) {
        let name = sanitize(name);
        let why = match ran {
            Ok(st) => {
                self.rounds += 1;
                let (stop, now) = stop_of(st.as_ref(), target, self.rounds, max);
                match stop {
                    Some(s) => s.said(target, now.as_ref()),
                    None => {
                        let at = now.map_or("not projected".into(), |p| p.about());
                        let t = crate::units::duration_arg(target);
                        log::info!("[{name}] round {}: a cutover now: {at}; the target is {t}: another round", self.rounds);
                        return;
                    }
                }
            }
            Err(why) => why,
        };
        log::info!("[{name}] rounds stopped after {}: {why}", self.rounds);
        self.stopped = Some(why);
    }
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
