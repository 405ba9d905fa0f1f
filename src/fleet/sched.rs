//! Running the plan's steps as child runs of this binary, bounded by the plan's limits (in all, per KVM host, per source), each child's output in its VM's log.

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// How many children run at once: in all, per target URI, per source group.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub jobs: usize,
    pub per_target: usize,
    pub per_source: usize,
}

/// One child run to make.
pub struct Job {
    /// The VM's index in the caller's list.
    pub vm: usize,
    pub target: String,
    pub source: String,
    pub args: Vec<OsString>,
    pub log: PathBuf,
    /// What the log's header line calls this run.
    pub what: String,
    /// Environment variables set for the child.
    pub env: Vec<(String, String)>,
}

/// A child run that ended (or could not start).
pub struct Finished {
    pub began: SystemTime,
    pub ended: SystemTime,
    pub status: std::io::Result<ExitStatus>,
    /// Where this run's output starts in the log.
    pub log_from: u64,
}

/// What the caller hears of the jobs, on the scheduling thread: a job started, a job ended,
/// and every `every` (when set) for each job still running, how long it has run.
pub struct Events<S, E, T> {
    pub started: S,
    pub ended: E,
    pub every: Option<Duration>,
    pub running: T,
}

/// Run `jobs` in order, each as soon as the limits allow (a job held back by its host or
/// source lets later ones pass), telling `ev` as they go. After SIGINT or SIGTERM no job
/// starts, the running ones get the signal, and their ends are awaited; the jobs never
/// started are returned.
pub fn run<S, E, T>(jobs: Vec<Job>, limits: Limits, mut ev: Events<S, E, T>) -> Vec<Job>
where
    S: FnMut(&Job),
    E: FnMut(&Job, Finished),
    T: FnMut(&Job, Duration),
{
    let (tx, rx) = mpsc::channel();
    let mut pending: VecDeque<Job> = jobs.into();
    let mut running: HashMap<usize, (Job, Option<Pid>)> = HashMap::new();
    let mut clocks: HashMap<usize, (Instant, u32)> = HashMap::new();
    let mut forwarded = false;
    loop {
        if crate::interrupt::received().is_none() {
            while let Some(i) = next_fitting(&pending, &running, limits) {
                let job = pending.remove(i).expect("index from the queue");
                (ev.started)(&job);
                let pid = spawn(&job, tx.clone());
                clocks.insert(job.vm, (Instant::now(), 0));
                running.insert(job.vm, (job, pid));
            }
        }
        if running.is_empty() {
            return pending.into();
        }
        if let Ok((vm, fin)) = rx.recv_timeout(Duration::from_millis(100)) {
            let (job, _) = running.remove(&vm).expect("a running job ended");
            (ev.ended)(&job, fin);
        }
        for (vm, (job, _)) in &running {
            let (t0, told) = clocks.get_mut(vm).expect("a clock per running job");
            if let Some(n) = ev.every.and_then(|e| due(t0.elapsed(), *told, e)) {
                *told = n;
                (ev.running)(job, t0.elapsed());
            }
        }
        if let (Some(sig), false) = (crate::interrupt::received(), forwarded) {
            forwarded = true;
            forward(sig, running.values().filter_map(|(_, pid)| *pid));
        }
    }
}

/// Whether a job that has run `elapsed`, and was reported `told` times, is due for another
/// report every `every`: the count to record then.
fn due(elapsed: Duration, told: u32, every: Duration) -> Option<u32> {
    let n = (elapsed.as_millis() / every.as_millis().max(1)) as u32;
    (n > told).then_some(n)
}

/// The first pending job that the limits let start now.
fn next_fitting(
    pending: &VecDeque<Job>,
    running: &HashMap<usize, (Job, Option<Pid>)>,
    l: Limits,
) -> Option<usize> {
    if running.len() >= l.jobs {
        return None;
    }
    let count = |f: &dyn Fn(&Job) -> bool| running.values().filter(|(j, _)| f(j)).count();
    pending.iter().position(|j| {
        count(&|r| r.target == j.target) < l.per_target
            && count(&|r| r.source == j.source) < l.per_source
    })
}

/// Start the child (in a process group of its own, so a Ctrl-C reaches it once, through
/// [`forward`]) and a thread that waits for it; its pid, or None when it did not start (the
/// failure is sent as its end).
fn spawn(job: &Job, tx: mpsc::Sender<(usize, Finished)>) -> Option<Pid> {
    let began = SystemTime::now();
    let vm = job.vm;
    let fail = |e: std::io::Error, log_from| {
        let _ = tx.send((
            vm,
            Finished {
                began,
                ended: SystemTime::now(),
                status: Err(e),
                log_from,
            },
        ));
        None
    };
    let (log, log_from) = match open_log(job, began) {
        Ok(l) => l,
        Err(e) => return fail(e, 0),
    };
    let child = std::env::current_exe().and_then(|exe| {
        // `-v` given to the plan puts the debug lines into each VM's log too.
        let verbose = (0..crate::out::verbosity().max(0)).map(|_| "-v");
        Command::new(exe)
            .args(verbose)
            .args(&job.args)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(e, log_from),
    };
    let pid = Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        let status = child.wait();
        let ended = SystemTime::now();
        let _ = tx.send((
            vm,
            Finished {
                began,
                ended,
                status,
                log_from,
            },
        ));
    });
    Some(pid)
}

/// The VM's log opened for appending, with a header line for this run; where the run's
/// output will start.
fn open_log(job: &Job, began: SystemTime) -> std::io::Result<(std::fs::File, u64)> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&job.log)?;
    let args: Vec<_> = job.args.iter().map(|a| a.to_string_lossy()).collect();
    writeln!(
        log,
        "=== {} {}: virt-vmdkimport {}",
        crate::units::utc_ms(began),
        job.what,
        args.join(" ")
    )?;
    let from = log.metadata()?.len();
    Ok((log, from))
}

/// Pass the signal on to each running child, once.
fn forward(sig: i32, pids: impl Iterator<Item = Pid>) {
    let Ok(sig) = Signal::try_from(sig) else {
        return;
    };
    for pid in pids {
        let _ = kill(pid, sig);
    }
}

/// The error a failed run ended with: its last `virt-vmdkimport: ` line in the log (else its
/// last line), or how it exited.
pub fn error_of(job: &Job, fin: &Finished) -> String {
    let status = match &fin.status {
        Err(e) => return format!("could not run: {e}"),
        Ok(s) => s,
    };
    let text = read_from(&job.log, fin.log_from).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("virt-vmdkimport: "))
        .or(lines.last().copied())
        .map(str::to_string)
        .unwrap_or_else(|| format!("exited with {status}"))
}

/// The last non-empty line the running job wrote to its log so far (none before its first),
/// cut at 120 characters.
pub fn last_line(job: &Job) -> Option<String> {
    let text = read_from(&job.log, 0).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    (!line.starts_with("=== ")).then(|| line.chars().take(120).collect())
}

/// The log from `from` on.
pub fn read_from(log: &std::path::Path, from: u64) -> Result<String> {
    let bytes = std::fs::read(log).with_context(|| format!("{}: reading", log.display()))?;
    let from = (from as usize).min(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[from..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(vm: usize, target: &str, source: &str) -> Job {
        Job {
            vm,
            target: target.into(),
            source: source.into(),
            args: vec![],
            log: PathBuf::new(),
            what: String::new(),
            env: Vec::new(),
        }
    }

    #[test]
    fn a_running_job_is_reported_once_per_period() {
        let s = Duration::from_secs;
        assert_eq!(due(s(29), 0, s(30)), None);
        assert_eq!(due(s(30), 0, s(30)), Some(1));
        assert_eq!(due(s(59), 1, s(30)), None);
        assert_eq!(due(s(95), 1, s(30)), Some(3), "a late look reports once");
    }

    #[test]
    fn the_progress_line_shows_the_last_line_of_this_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = job(0, "a", "s");
        j.log = dir.path().join("vm.log");
        std::fs::write(&j.log, "=== 2026-11-27T12:00:00.000Z stage1: ...\n").unwrap();
        assert_eq!(last_line(&j), None, "nothing written yet");
        let long = "x".repeat(200);
        std::fs::write(&j.log, format!("=== header\nuploaded 3 MiB\n{long}\n\n")).unwrap();
        assert_eq!(last_line(&j).unwrap().len(), 120);
    }

    #[test]
    fn a_job_held_back_by_its_host_lets_the_next_one_pass() {
        let l = Limits {
            jobs: 3,
            per_target: 1,
            per_source: 2,
        };
        let mut running = HashMap::new();
        running.insert(9, (job(9, "a", "s1"), None));
        let pending: VecDeque<_> =
            vec![job(0, "a", "s1"), job(1, "b", "s1"), job(2, "c", "s1")].into();
        assert_eq!(next_fitting(&pending, &running, l), Some(1));
        running.insert(1, (job(1, "b", "s1"), None));
        // s1 has two in flight now.
        assert_eq!(next_fitting(&pending, &running, l), None);
        let l = Limits { per_source: 9, ..l };
        running.insert(7, (job(7, "d", "s2"), None));
        assert_eq!(next_fitting(&pending, &running, l), None, "three in all");
    }
}
