//! When the trial start proves a domain ([`trial::prove`] climbs the ladder): after stage 1's uploads, or before stage 2 writes into a domain stage 1 never proved, with what the run found put back when it is refused.

use anyhow::{Context, Result};

use super::plan::ImportPlan;
use super::trial;
use crate::libvirt::{Conn, Dom};
use crate::state::{metadata, ImportState};

/// Stage 1's trial start, once every base upload is complete: the domain started paused and
/// destroyed, falling back along the ladder when this tool defined it (see [`trial::prove`]).
/// The outcome goes into the import state whether it starts or not.
pub(super) fn stage_one(
    req: &ImportPlan,
    conn: &Conn,
    dom: Option<Dom>,
    st: &mut ImportState,
) -> Result<Option<Dom>> {
    let Some(mut dom) = dom else {
        return Ok(None);
    };
    if req.dry_run || !st.every_base_uploaded() {
        return Ok(Some(dom));
    }
    let fixed = trial::Fixed {
        cpu: req.cpu.is_some(),
        hyperv: req.hyperv_passthrough,
    };
    let ours = st.defined_by_tool == Some(true);
    let span = crate::report::begin("trial start");
    let proved = trial::prove(conn, &mut dom, fixed, ours, st);
    metadata::write(&dom, st)?;
    proved?;
    span.done(None, None);
    Ok(Some(dom))
}

/// A domain's definition and import state as a run found them, before its trial start
/// redefined the domain (the ladder's steps): put back when the run is refused after all.
pub(super) struct Found {
    xml: String,
    state: ImportState,
}

impl Found {
    fn of(dom: &Dom, st: &ImportState) -> Result<Found> {
        Ok(Found {
            xml: dom.xml()?,
            state: st.clone(),
        })
    }

    /// The definition and the import state back as they were. The state goes back through
    /// the metadata call as well: a redefinition alone gives it libvirt's indentation.
    pub(super) fn put_back(self, conn: &Conn, st: &mut ImportState) -> Result<Dom> {
        let dom = conn
            .define_domain(&self.xml)
            .context("putting the domain's previous definition back")?;
        metadata::write(&dom, &self.state)?;
        *st = self.state;
        Ok(dom)
    }
}

/// Stage 2 on a domain that stage 1 never proved (its trial start failed, or the import
/// predates it): the trial start now, after every check and before anything is marked or
/// written, so a domain that cannot start is refused while the disks and the VMware side are
/// still as they were. A refusal also puts back the definition and the import state the run
/// found (the ladder may have stepped on the way): a refused command changes nothing.
/// Returns the domain to go on with and, when the trial ran, what the run found, for a caller
/// that can still be refused before it writes (`--sync`'s snapshot, the cutover's shutdown).
pub(super) fn before_stage_two(
    req: &ImportPlan,
    conn: &Conn,
    dom: Option<Dom>,
    st: &mut ImportState,
) -> Result<(Option<Dom>, Option<Found>)> {
    let Some(d) = &dom else {
        return Ok((None, None));
    };
    if req.dry_run || st.trial.as_ref().is_some_and(|t| t.started) {
        return Ok((dom, None));
    }
    log::info!(
        "domain '{}': stage 1 did not prove that it starts; trial start before anything is written",
        req.domain
    );
    let found = Found::of(d, st)?;
    match stage_one(req, conn, dom, st) {
        Ok(dom) => Ok((dom, Some(found))),
        Err(e) => {
            found.put_back(conn, st)?;
            Err(e.context(format!(
                "stage 2 refused, nothing written: domain '{}' does not start",
                req.domain
            )))
        }
    }
}
