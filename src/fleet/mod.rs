//! Many VMs from one plan file: each VM's step run as a child run of this binary, bounded per KVM host and per source, the state read from and recorded in each domain's metadata, and a summary table at the end.

mod check;
pub mod report;
mod rounds;
mod sched;
pub mod standing;

use crate::cli::{Action, Command, PlanArgs, StatusArgs};
use crate::libvirt::{self, Conn, Dom};
use crate::plan_file::{self, Fleet, FleetVm, StepKind};
use crate::progress;
use crate::state::{metadata, ImportState, StepRecord};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use standing::{Decision, Standing};
use std::collections::HashMap;

/// Run a subcommand.
pub fn run(cmd: &Command) -> Result<()> {
    match cmd {
        Command::Plan(a) => run_plan(a),
        Command::Status(a) => show_domain(a),
        Command::TestBoot(_) => {
            unreachable!("Plan::from_cli routes test-boot to the testboot module")
        }
        Command::Probe(_) => bail!("probe runs from its own plan (Plan::Probe), not a fleet's"),
    }
}

/// `virt-vmdkimport status --domain NAME`.
fn show_domain(a: &StatusArgs) -> Result<()> {
    let conn = libvirt::connect(a.connect.as_deref())?;
    let dom = conn
        .domain(&a.domain)?
        .with_context(|| format!("domain '{}' does not exist on {}", a.domain, conn.uri()))?;
    let st = metadata::read(&dom)?.with_context(|| {
        format!(
            "domain '{}' on {} has no import state",
            a.domain,
            conn.uri()
        )
    })?;
    log::info!("{}", report::domain_table(&a.domain, conn.uri(), &st));
    Ok(())
}

/// The connections of one run, one per URI; a URI that fails is tried once.
#[derive(Default)]
struct Hosts {
    conns: HashMap<String, std::result::Result<Conn, String>>,
}

impl Hosts {
    fn get(&mut self, uri: &str) -> Result<&Conn> {
        let c = self
            .conns
            .entry(uri.to_string())
            .or_insert_with(|| libvirt::connect(Some(uri)).map_err(|e| format!("{e:#}")));
        c.as_ref().map_err(|e| anyhow!("{e}"))
    }

    /// The VM's domain and its import state. A failure forgets the connection, so the next
    /// call connects again (the daemon may have restarted since).
    fn state(&mut self, vm: &FleetVm) -> Result<(Option<Dom>, Option<ImportState>)> {
        let got = self.get(&vm.uri).and_then(|c| {
            let dom = c.domain(&vm.name)?;
            let st = dom.as_ref().map(metadata::read).transpose()?.flatten();
            Ok((dom, st))
        });
        if got.is_err() {
            self.conns.remove(&vm.uri);
        }
        got
    }
}

/// How one VM's step ended in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done,
    Skipped(&'static str),
    Failed(String),
    Interrupted,
    NotStarted,
}

/// One VM's line of the summary.
#[derive(Clone)]
struct Row {
    step: Option<StepKind>,
    outcome: Outcome,
    ms: Option<u64>,
}

fn run_plan(a: &PlanArgs) -> Result<()> {
    let fleet = plan_file::load(&a.plan)?;
    let vms = plan_file::select(&fleet, &a.only)?;
    let mut hosts = Hosts::default();
    if a.action == Action::Status {
        return status(&vms, &mut hosts, a.json);
    }
    if let Some(target) = a.until_outage {
        return sync_until(&fleet, &vms, &mut hosts, a, target);
    }
    let check = a.action == Action::Check;
    let (mut rows, mut jobs) = decide(&fleet, &vms, &mut hosts, a.action, check);
    let pre = if check {
        blocked_by_preflight(&vms, &mut rows, &mut jobs)
    } else {
        Vec::new()
    };
    run_jobs(&fleet, &vms, &mut hosts, &mut rows, jobs, check)?;
    summary(&fleet, &vms, &rows, &mut hosts, a, &pre)
}

/// Run `jobs` within the plan's limits, each VM's row set as its job ends; what is said while
/// they run.
fn run_jobs(
    fleet: &Fleet,
    vms: &[FleetVm],
    hosts: &mut Hosts,
    rows: &mut [Row],
    jobs: Vec<sched::Job>,
    check: bool,
) -> Result<()> {
    std::fs::create_dir_all(&fleet.log_dir)
        .with_context(|| format!("{}: creating the log folder", fleet.log_dir.display()))?;
    let limits = sched::Limits {
        jobs: fleet.jobs,
        per_target: fleet.max_per_target,
        per_source: fleet.max_per_source,
    };
    // On a terminal, a line per running VM, refreshed every second; else a line every
    // `progress_every` seconds per running VM.
    let bars = progress::show() == progress::Show::Bars;
    let lines = std::cell::RefCell::new(HashMap::new());
    let started = |j: &sched::Job| {
        if bars {
            let name = report::sanitize(&vms[j.vm].name);
            let line = progress::Line::new(format!("[{name}] {} starting", j.what));
            lines.borrow_mut().insert(j.vm, line);
        }
        log::info!(
            "[{}] {} started on {} (log: {})",
            report::sanitize(&vms[j.vm].name),
            j.what,
            report::sanitize(&j.target),
            j.log.display()
        );
    };
    let ended = |j: &sched::Job, fin: sched::Finished| {
        lines.borrow_mut().remove(&j.vm);
        rows[j.vm] = finish(hosts, &vms[j.vm], j, &fin, check);
    };
    let running = |j: &sched::Job, took: std::time::Duration| {
        let last = sched::last_line(j).unwrap_or_else(|| "no output yet".into());
        let name = report::sanitize(&vms[j.vm].name);
        let took = crate::units::human_duration(took);
        let text = format!(
            "[{name}] {} running for {took}: {}",
            j.what,
            report::sanitize(&last)
        );
        match lines.borrow().get(&j.vm) {
            Some(line) => line.set(&text),
            None => log::info!("{text}"),
        }
    };
    let every = match (bars, fleet.progress_every) {
        (true, _) => Some(std::time::Duration::from_secs(1)),
        (false, d) if d.is_zero() => None,
        (false, d) => Some(d),
    };
    let events = sched::Events {
        started,
        ended,
        every,
        running,
    };
    sched::run(jobs, limits, events);
    Ok(())
}

/// `plan sync --until-outage`: rounds for every VM still going, at once within the plan's
/// limits, until each stops ([`rounds::Going::judge`]); the summary of the last rounds, with
/// each VM's rounds and reason.
fn sync_until(
    fleet: &Fleet,
    vms: &[FleetVm],
    hosts: &mut Hosts,
    a: &PlanArgs,
    target: std::time::Duration,
) -> Result<()> {
    let max = a.max_rounds.unwrap_or(crate::cli::DEFAULT_MAX_ROUNDS);
    let mut going = vec![rounds::Going::default(); vms.len()];
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
            let ran = match &now[i].outcome {
                Outcome::Done => Ok(hosts.state(vm).ok().and_then(|(_, s)| s)),
                Outcome::Skipped(why) => Err(format!("no round: {why}")),
                Outcome::Failed(e) => Err(format!("the round failed: {e}")),
                Outcome::Interrupted => Err("interrupted".into()),
                Outcome::NotStarted => Err("not started".into()),
            };
            going[i].judge(&vm.name, ran, target, max);
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

/// `plan check`'s preflight of every VM (one table); a VM with an error finding fails here
/// and runs no dry run. Each VM's preflight as JSON.
fn blocked_by_preflight(
    vms: &[FleetVm],
    rows: &mut [Row],
    jobs: &mut Vec<sched::Job>,
) -> Vec<Value> {
    let reports = check::preflights(vms);
    for (i, r) in reports.iter().enumerate() {
        if r.errors() > 0 && rows[i].outcome == Outcome::NotStarted {
            rows[i].outcome = Outcome::Failed(crate::preflight::table::blocked(r));
            jobs.retain(|j| j.vm != i);
        }
    }
    reports
        .iter()
        .map(|r| json!({ "preflight": crate::preflight::table::to_json(r) }))
        .collect()
}

/// Each VM's step and whether it runs: a row for the summary each, a job for each that runs.
fn decide(
    fleet: &Fleet,
    vms: &[FleetVm],
    hosts: &mut Hosts,
    action: Action,
    check: bool,
) -> (Vec<Row>, Vec<sched::Job>) {
    let mut rows: Vec<Row> = Vec::new();
    let mut jobs = Vec::new();
    for (i, vm) in vms.iter().enumerate() {
        let (step, outcome) = match plan_step(hosts, vm, action) {
            Ok((Some(step), Decision::Run)) => {
                jobs.push(job(fleet, vm, i, step, check));
                (Some(step), Outcome::NotStarted)
            }
            Ok((step, Decision::Skip(why))) => (step, Outcome::Skipped(why)),
            Ok((step, Decision::Refuse(why))) => (step, Outcome::Failed(why.into())),
            Ok((None, Decision::Run)) => unreachable!("a step runs"),
            Err(e) => (None, Outcome::Failed(format!("{e:#}"))),
        };
        rows.push(Row {
            step,
            outcome,
            ms: None,
        });
    }
    (rows, jobs)
}

/// The step this action makes for `vm`, and whether it runs, from its state on its host.
fn plan_step(
    hosts: &mut Hosts,
    vm: &FleetVm,
    action: Action,
) -> Result<(Option<StepKind>, Decision)> {
    let (dom, st) = hosts.state(vm)?;
    let at = Standing::of(st.as_ref(), dom.is_some());
    let step = match action {
        Action::Stage1 => StepKind::Stage1,
        Action::Sync => StepKind::Sync,
        Action::Cutover => StepKind::Cutover,
        Action::Status | Action::TestBoot => unreachable!("status and test-boot run no step"),
        Action::Check => {
            // The target pool must be there before anything can be made in it.
            hosts.get(&vm.uri)?.pool(&vm.pool)?;
            match standing::next_step(&at) {
                Some(s) => return Ok((Some(s), Decision::Run)),
                None => return Ok((None, Decision::Skip("cut over already"))),
            }
        }
    };
    Ok((Some(step), standing::decide(step, &at, vm.is_esx())))
}

fn job(fleet: &Fleet, vm: &FleetVm, i: usize, step: StepKind, check: bool) -> sched::Job {
    sched::Job {
        vm: i,
        target: vm.uri.clone(),
        source: vm.source_group.clone(),
        args: vm
            .args(step, check)
            .expect("decide runs only steps that apply"),
        log: fleet.log_dir.join(format!("{}.log", vm.name)),
        what: format!("{}{}", step.as_str(), if check { " --dry-run" } else { "" }),
        env: child_env(fleet, check),
    }
}

/// `d` in whole seconds, rounded up (the children's period is whole seconds; 0 is none).
fn whole_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The progress period of the children (their transfers' plain lines, in their logs): the
/// plan's, unless this run was given one of its own; for `plan check` (`check`), that the
/// plan showed their preflight.
fn child_env(fleet: &Fleet, check: bool) -> Vec<(String, String)> {
    let mut env = match std::env::var_os(progress::EVERY_ENV) {
        Some(_) => Vec::new(),
        None => vec![(
            progress::EVERY_ENV.to_string(),
            progress::child_every(whole_secs(fleet.progress_every)).to_string(),
        )],
    };
    if check {
        env.push((crate::preflight::SHOWN_ENV.to_string(), "1".to_string()));
    }
    env
}

/// A child run ended: its outcome, said on one line, and (unless it was a check) recorded in
/// the domain's import state with its times.
fn finish(
    hosts: &mut Hosts,
    vm: &FleetVm,
    job: &sched::Job,
    fin: &sched::Finished,
    check: bool,
) -> Row {
    let ms = fin
        .ended
        .duration_since(fin.began)
        .map_or(0, |d| d.as_millis() as u64);
    let code = fin.status.as_ref().ok().and_then(|s| s.code());
    let outcome = match code {
        Some(0) => Outcome::Done,
        Some(c) if c == 128 + nix::libc::SIGINT || c == 128 + nix::libc::SIGTERM => {
            Outcome::Interrupted
        }
        _ => Outcome::Failed(sched::error_of(job, fin)),
    };
    let name = report::sanitize(&vm.name);
    let took = crate::units::human_ms(ms);
    match &outcome {
        Outcome::Done => log::info!("[{name}] {} done in {took}", job.what),
        Outcome::Interrupted => log::info!("[{name}] {} interrupted after {took}", job.what),
        Outcome::Failed(e) => {
            log::info!(
                "[{name}] {} FAILED after {took}: {}",
                job.what,
                report::sanitize(e)
            )
        }
        _ => {}
    }
    if check {
        let out = sched::read_from(&job.log, fin.log_from).unwrap_or_default();
        for l in out.lines() {
            log::info!("[{name}]   {}", report::sanitize(l));
        }
    } else if let Err(e) = record(hosts, vm, job, fin, &outcome) {
        log::info!("[{name}] could not record the step in the import state: {e:#}");
    }
    let step = job.what.split(' ').next().and_then(step_kind);
    Row {
        step,
        outcome,
        ms: Some(ms),
    }
}

fn step_kind(s: &str) -> Option<StepKind> {
    [StepKind::Stage1, StepKind::Sync, StepKind::Cutover]
        .into_iter()
        .find(|k| k.as_str() == s)
}

/// Add the step's record to the domain's import state (a domain without one is left alone:
/// the step did not get as far as making it).
fn record(
    hosts: &mut Hosts,
    vm: &FleetVm,
    job: &sched::Job,
    fin: &sched::Finished,
    outcome: &Outcome,
) -> Result<()> {
    let (Some(dom), Some(mut st)) = hosts.state(vm)? else {
        return Ok(());
    };
    let (outcome, error) = match outcome {
        Outcome::Done => ("done", None),
        Outcome::Interrupted => ("interrupted", None),
        Outcome::Failed(e) => ("failed", Some(e.clone())),
        _ => return Ok(()),
    };
    st.steps.push(StepRecord {
        name: job.what.clone(),
        began: crate::units::utc_ms(fin.began),
        ended: crate::units::utc_ms(fin.ended),
        outcome: outcome.into(),
        error,
    });
    metadata::write(&dom, &st)
}

const SUMMARY_HEAD: [&str; 8] = [
    "VM",
    "HOST",
    "STEP",
    "RESULT",
    "PHASE",
    "BYTES",
    "TIME",
    "OUTAGE  ERROR",
];

/// The summary table (phases read again from the hosts), and the JSON document under
/// `--json`; an error when any VM failed, or the interruption when the run was interrupted.
fn summary(
    fleet: &Fleet,
    vms: &[FleetVm],
    rows: &[Row],
    hosts: &mut Hosts,
    a: &PlanArgs,
    extra: &[Value],
) -> Result<()> {
    let mut table = Vec::new();
    let mut docs = Vec::new();
    for (i, (vm, row)) in vms.iter().zip(rows).enumerate() {
        let st = hosts.state(vm).ok();
        let phase = st.as_ref().map_or("?".into(), |(d, s)| {
            Standing::of(s.as_ref(), d.is_some()).to_string()
        });
        let st = st.and_then(|(_, s)| s);
        let bytes = st.as_ref().and_then(|s| step_bytes(s, row.step));
        let outage = st.as_ref().and_then(report::outage_ms);
        let (result, error) = match &row.outcome {
            Outcome::Done => ("done", String::new()),
            Outcome::Skipped(why) => ("skipped", why.to_string()),
            Outcome::Failed(e) => ("FAILED", e.clone()),
            Outcome::Interrupted => ("interrupted", String::new()),
            Outcome::NotStarted => ("not started", String::new()),
        };
        let step = row.step.map(StepKind::as_str);
        docs.push(json!({
            "name": vm.name, "host": vm.uri, "step": step, "result": result.to_lowercase(),
            "phase": phase, "bytes": bytes, "ms": row.ms, "outage_ms": outage,
            "error": (!error.is_empty()).then_some(&error),
            "log": fleet.log_dir.join(format!("{}.log", vm.name)),
            "projection": st.as_ref().and_then(report::projection_json),
        }));
        if let (Some(Value::Object(doc)), Some(Value::Object(more))) =
            (docs.last_mut(), extra.get(i))
        {
            doc.extend(more.clone());
        }
        table.push(vec![
            vm.name.clone(),
            vm.uri.clone(),
            step.unwrap_or("-").to_string(),
            result.to_string(),
            phase,
            report::opt_bytes(bytes),
            report::opt_ms(row.ms),
            format!("{:<6}  {error}", report::opt_ms(outage)),
        ]);
    }
    log::info!("\n{}", report::table(&SUMMARY_HEAD, &table));
    let failed: Vec<&str> = vms
        .iter()
        .zip(rows)
        .filter(|(_, r)| matches!(r.outcome, Outcome::Failed(_)))
        .map(|(v, _)| v.name.as_str())
        .collect();
    let word = format!("{:?}", a.action).to_lowercase();
    let interrupted = crate::interrupt::received();
    if a.json {
        print_json(&json!({
            "action": word, "plan": fleet.path, "vms": docs,
            "failed": failed.len(), "interrupted": interrupted.is_some(),
        }));
    }
    if let Some(signal) = interrupted {
        let done = rows.iter().filter(|r| r.outcome == Outcome::Done).count();
        return Err(anyhow::Error::new(crate::interrupt::Interrupted { signal })
            .context(format!("plan {word}: {done} of {} VMs done", vms.len())));
    }
    if !failed.is_empty() {
        bail!(
            "plan {word}: {} of {} VMs failed: {}",
            failed.len(),
            vms.len(),
            report::sanitize(&failed.join(", "))
        );
    }
    Ok(())
}

/// One JSON document and a newline on standard output.
fn print_json(doc: &Value) {
    crate::say_raw!("{doc}\n");
}

/// What the step moved, as the state records it: the bases for stage 1, the round's or the
/// cutover's bytes from ESXi, the last local stage 2's bytes.
fn step_bytes(st: &ImportState, step: Option<StepKind>) -> Option<u64> {
    match step? {
        StepKind::Stage1 => report::uploaded_bytes(st),
        StepKind::Sync => st.syncs.last().map(|s| s.bytes),
        StepKind::Cutover => st
            .cutover
            .as_ref()
            .map(|c| c.bytes)
            .or_else(|| st.local_applies.last().map(|a| a.bytes)),
    }
}

/// `plan status`: one line per VM from its state on its host (or one JSON document).
fn status(vms: &[FleetVm], hosts: &mut Hosts, json: bool) -> Result<()> {
    let mut table = Vec::new();
    let mut docs = Vec::new();
    let mut unreadable = 0;
    for vm in vms {
        let (row, doc) = match hosts.state(vm) {
            Ok((dom, st)) => status_row(vm, dom.is_some(), st.as_ref()),
            Err(e) => {
                unreadable += 1;
                let mut r = vec![vm.name.clone(), vm.uri.clone(), "?".into()];
                r.extend(["-", "-", "-", "-"].map(String::from));
                r.push(format!("-       {e:#}"));
                let doc = json!({"name": vm.name, "host": vm.uri, "error": format!("{e:#}")});
                (r, doc)
            }
        };
        table.push(row);
        docs.push(doc);
    }
    let head = [
        "VM",
        "HOST",
        "PHASE",
        "BYTES",
        "LAST STEP",
        "TIME",
        "CUTOVER NOW",
        "OUTAGE  ERROR",
    ];
    if json {
        print_json(&json!({ "action": "status", "vms": docs }));
    } else {
        log::info!("{}", report::table(&head, &table));
    }
    if unreadable > 0 {
        bail!("{unreadable} of {} VMs could not be read", vms.len());
    }
    Ok(())
}

/// One VM's `plan status` row, and its JSON.
fn status_row(vm: &FleetVm, exists: bool, st: Option<&ImportState>) -> (Vec<String>, Value) {
    let phase = Standing::of(st, exists).to_string();
    let last = st.and_then(|s| s.steps.last());
    let bytes = st.and_then(report::uploaded_bytes);
    let outage = st.and_then(report::outage_ms);
    let error = last.and_then(|s| s.error.clone()).unwrap_or_default();
    let doc = json!({
        "name": vm.name, "host": vm.uri, "phase": phase, "bytes": bytes, "outage_ms": outage,
        "projection": st.and_then(report::projection_json),
        "last_step": last.map(|s| json!({
            "name": s.name, "outcome": s.outcome, "began": s.began, "ended": s.ended,
            "ms": report::step_ms(s), "error": s.error,
        })),
    });
    let row = vec![
        vm.name.clone(),
        vm.uri.clone(),
        phase,
        report::opt_bytes(bytes),
        last.map_or("-".into(), |s| {
            format!("{} {} {}", s.name, s.outcome, s.ended)
        }),
        report::opt_ms(last.and_then(report::step_ms)),
        report::opt_projection(st),
        format!("{:<6}  {error}", report::opt_ms(outage)),
    ];
    (row, doc)
}
