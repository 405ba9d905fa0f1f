//! The migration on a libvirt host, read top to bottom in [`run`]: the plan's inputs opened ([`request`]), then stage 1 (volumes, domain, base upload: [`stage1`]) and its trial start ([`prove`]), stage 2 (delta apply: [`stage2`]), the hand-over and start ([`handover`]); or a pre-copy round or the cutover from ESXi ([`fromesx`]). Each stage is checked against the import state in the domain's metadata before anything is written.

mod esxdeltas;
pub(crate) mod esxone;
mod esxoverlay;
pub mod fromesx;
mod guards;
mod handover;
mod names;
pub mod overlay;
mod plan;
mod prove;
mod request;
mod reshape;
pub mod shape;
mod spec;
mod stage1;
mod stage2;
pub mod trial;
pub mod write;

pub use plan::ImportPlan;
pub use request::Request;

use anyhow::{anyhow, ensure, Result};

use crate::domain_xml;
use crate::libvirt::{self, Conn, Dom};
use crate::state::{self, metadata, ImportState};

/// Run the import the plan describes: its inputs opened ([`Request::open`]), then the stages.
pub fn run(plan: ImportPlan) -> Result<()> {
    let req = Request::open(plan)?;
    overlay::mark_start();
    let conn = libvirt::connect(req.uri.as_deref())?;
    if let Some(o) = &req.esx {
        return fromesx::run(&req, &conn, o).map_err(|e| libvirt::explain(&conn, e));
    }
    // A clone shares the connection: asked afterwards whether the daemon is still there.
    run_on(conn.clone(), req).map_err(|e| libvirt::explain(&conn, e))
}

/// Which stages a run does.
#[derive(Debug, Clone, Copy)]
struct Stages {
    one: bool,
    two: bool,
}

impl Stages {
    /// A `.vmx` import does stage 1 until every base is uploaded (or again with
    /// `--reupload-base`), then stage 2; otherwise `--flat` asks for stage 1 and delta files
    /// for stage 2.
    fn of(req: &Request, state: Option<&ImportState>) -> Stages {
        let base_done = state.is_some_and(ImportState::every_base_uploaded);
        match &req.vmx {
            Some(_) => Stages {
                one: !base_done || req.reupload_base,
                two: base_done && !req.reupload_base,
            },
            None => Stages {
                one: req.has_base(),
                two: !req.deltas.is_empty(),
            },
        }
    }

    /// Stage 2 alone, on a domain an earlier run's stage 1 made.
    fn two_only(self) -> bool {
        self.two && !self.one
    }
}

fn run_on(conn: Conn, mut req: Request) -> Result<()> {
    let dom = conn.domain(&req.domain)?;
    let mut state = match &dom {
        Some(d) => metadata::read(d)?,
        None => None,
    };
    let stages = Stages::of(&req, state.as_ref());
    let disks = request::take_disks(&mut req)?;
    if req.print_xml {
        let spec = spec::new_domain(&req, &conn, &spec::volume_names(&req, disks.len()))?;
        crate::say_raw!("{}", domain_xml::render(&spec)?);
        return Ok(());
    }
    if let Some(d) = &dom {
        // A disk left on a qcow2 overlay (--io overlay) is committed before anything else.
        if overlay::resume(&req, &conn, d, state.as_mut())? {
            return Ok(());
        }
        refuse_running(&req, d, stages)?;
    }
    // Each stage is checked whole before the shaping options are applied: a refused stage 1
    // or stage 2 changes nothing, neither the volumes nor the domain's XML nor its import state.
    let checked_one = if stages.one {
        stage1::check(&req, &conn, dom.as_ref(), state.as_ref(), &disks)?
    } else {
        None
    };
    let checked_two = if stages.two_only() {
        let (Some(d), Some(st)) = (&dom, &state) else {
            return Err(missing_stage_one(&req, &conn, dom.is_none()));
        };
        Some(stage2::check(&req, &conn, Some(d), st, &disks)?)
    } else {
        None
    };
    let dom = reshape::existing(&req, &conn, dom, state.as_mut(), stages.one)?;
    let (dom, mut state) = if stages.one {
        let (dom, mut st) = stage1::run(&req, &conn, dom, state, &disks, checked_one)?;
        (prove::stage_one(&req, &conn, dom, &mut st)?, st)
    } else {
        let dom = dom.ok_or_else(|| missing_stage_one(&req, &conn, true))?;
        let state = state.ok_or_else(|| missing_stage_one(&req, &conn, false))?;
        (Some(dom), state)
    };
    let dom = if stages.two_only() {
        prove::before_stage_two(&req, &conn, dom, &mut state)?.0
    } else {
        dom
    };
    if stages.two {
        let checked = match checked_two {
            Some(c) => c,
            None => stage2::check(&req, &conn, dom.as_ref(), &state, &disks)?,
        };
        stage2::run(&req, &conn, dom.as_ref(), &mut state, &disks, checked)?;
    }
    if req.dry_run {
        return Ok(());
    }
    let dom = dom.expect("a domain exists after stage 1");
    finish(&req, &conn, &dom, &mut state, stages)
}

/// Refuse a running domain: nothing is written under a live guest, and it is not reshaped.
fn refuse_running(req: &ImportPlan, dom: &Dom, stages: Stages) -> Result<()> {
    ensure!(
        !dom.is_active()?,
        "domain '{}' is running: {}; shut it down first",
        req.domain,
        if stages.one || stages.two {
            "writing under a live guest corrupts it"
        } else {
            "the options that shape it apply to a shut-off domain only"
        }
    );
    Ok(())
}

/// After the stages: with stage 2, the driver disk, the hand-over and the start; then how to
/// follow the domain up.
fn finish(
    req: &ImportPlan,
    conn: &Conn,
    dom: &Dom,
    state: &mut ImportState,
    stages: Stages,
) -> Result<()> {
    if stages.two && req.driver_disk {
        stage2::attach_driver_disk(req, conn, dom)?;
    }
    if stages.two && req.no_start {
        handover::no_start(conn, dom, state)?;
    }
    if stages.two && !req.no_start {
        ensure!(
            state.every_disk_complete(),
            "domain '{}': a disk is not completely written; not starting it",
            req.domain
        );
        crate::interrupt::check()?;
        handover::start(conn, dom, state)?;
        log::info!("domain '{}' started", req.domain);
        overlay::after_start(req, conn, dom, state)?;
    } else if stages.one && !stages.two {
        log::info!(
            "stage 1 done: after the VM is shut down on VMware, copy its delta(s) and run stage 2"
        );
    }
    let uri = conn.uri();
    log::info!("follow up with:\n  virsh -c {uri} console {}\n  virsh -c {uri} domstate {}\n  virsh -c {uri} metadata {} {}", req.domain, req.domain, req.domain, state::NS_URI);
    Ok(())
}

/// The error for a run that needs stage 1 first: the domain does not exist, or has no import
/// state.
fn missing_stage_one(req: &ImportPlan, conn: &Conn, no_domain: bool) -> anyhow::Error {
    if no_domain {
        anyhow!(
            "domain '{}' does not exist on {}: run stage 1 (--flat BASE) first",
            req.domain,
            conn.uri()
        )
    } else {
        anyhow!("domain '{}' has no import state: its base was not uploaded by virt-vmdkimport (run stage 1 with --flat)", req.domain)
    }
}
