//! Nothing waits forever: a transfer that stops moving, or a signal the run does not answer in time, ends the libvirt calls it is blocked in by shutting its connections' sockets down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `--stall-timeout` when not given.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the copy loops get to notice a signal (they check it between two pieces of work)
/// before the connections are shut down under whatever call is still waiting.
const SIGNAL_GRACE: Duration = Duration::from_secs(2);
/// How long the run gets, once its connections are shut down, to go through its ordinary
/// error path; after that the process ends here (a blocked local write, say), leaving the
/// state as any interruption does.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(200);

/// A transfer that made no progress for the stall timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// What was moving: `disk sda: delta apply`.
    pub what: String,
    pub secs: u64,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: no progress for {} s (--stall-timeout)",
            self.what, self.secs
        )
    }
}

impl Stall {
    /// The one line a stalled run ends with: what stood still, the error it ended with, what
    /// that leaves, and the command to rerun.
    pub fn line(&self, err: &anyhow::Error, raw_target: bool) -> String {
        format!(
            "{self}: ended while {err:#}; {}",
            crate::interrupt::what_is_left(raw_target)
        )
    }
}

/// A watched transfer: `probe` counts what it moved so far; dropped, it is watched no more.
pub struct Watch {
    entry: Arc<Entry>,
}

struct Entry {
    what: String,
    probe: Box<dyn Fn() -> u64 + Send + Sync>,
}

struct Dog {
    stall_timeout: AtomicU64,
    watched: Mutex<Vec<Arc<Entry>>>,
    stall: Mutex<Option<Stall>>,
    raw_target: AtomicBool,
}

static DOG: OnceLock<&'static Dog> = OnceLock::new();

fn dog() -> &'static Dog {
    DOG.get_or_init(|| {
        let d: &'static Dog = Box::leak(Box::new(Dog {
            stall_timeout: AtomicU64::new(DEFAULT_STALL_TIMEOUT.as_millis() as u64),
            watched: Mutex::new(Vec::new()),
            stall: Mutex::new(None),
            raw_target: AtomicBool::new(false),
        }));
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || d.run())
            .expect("starting the watchdog thread");
        d
    })
}

/// Start watching, with transfers that stand still for `stall_timeout` ended as stalled;
/// `raw_target`: a `--target` run, which has no import state to leave marked.
pub fn start(stall_timeout: Duration, raw_target: bool) {
    let d = dog();
    d.stall_timeout
        .store(stall_timeout.as_millis() as u64, Ordering::SeqCst);
    d.raw_target.store(raw_target, Ordering::SeqCst);
}

/// Watch the transfer `what`, whose progress `probe` reads (any count that grows as it moves).
pub fn watch(what: &str, probe: impl Fn() -> u64 + Send + Sync + 'static) -> Watch {
    let entry = Arc::new(Entry {
        what: what.to_string(),
        probe: Box::new(probe),
    });
    dog()
        .watched
        .lock()
        .expect("no panic watching")
        .push(entry.clone());
    Watch { entry }
}

impl Drop for Watch {
    fn drop(&mut self) {
        dog()
            .watched
            .lock()
            .expect("no panic watching")
            .retain(|e| !Arc::ptr_eq(e, &self.entry));
    }
}

/// The stall that ended this run, if one did.
pub fn stalled() -> Option<Stall> {
    DOG.get()
        .and_then(|d| d.stall.lock().expect("no panic watching").clone())
}

/// Per watched transfer: the last count seen and when it last changed.
struct Seen {
    entry: Arc<Entry>,
    count: u64,
    at: Instant,
}

impl Dog {
    fn run(&self) {
        let mut seen: Vec<Seen> = Vec::new();
        let mut signalled: Option<Instant> = None;
        let mut severed_at: Option<Instant> = None;
        loop {
            std::thread::sleep(TICK);
            let now = Instant::now();
            if signalled.is_none() && crate::interrupt::received().is_some() {
                signalled = Some(now);
            }
            if let Some(t) = signalled {
                if now.duration_since(t) >= SIGNAL_GRACE && severed_at.is_none() {
                    log::debug!("the run did not stop within {SIGNAL_GRACE:?} of the signal: shutting its libvirt connections down");
                    severed_at = Some(self.sever());
                }
            }
            if severed_at.is_none() {
                if let Some(stall) = self.look(&mut seen, now) {
                    log::debug!("{stall}: shutting the run's libvirt connections down");
                    *self.stall.lock().expect("no panic watching") = Some(stall);
                    severed_at = Some(self.sever());
                }
            }
            if severed_at.is_some_and(|t| now.duration_since(t) >= EXIT_GRACE) {
                self.give_up();
            }
        }
    }

    /// One look at every watched transfer; the first that stood still too long.
    fn look(&self, seen: &mut Vec<Seen>, now: Instant) -> Option<Stall> {
        let limit = Duration::from_millis(self.stall_timeout.load(Ordering::SeqCst));
        let watched = self.watched.lock().expect("no panic watching").clone();
        seen.retain(|s| watched.iter().any(|e| Arc::ptr_eq(e, &s.entry)));
        for entry in watched {
            let count = (entry.probe)();
            match seen.iter_mut().find(|s| Arc::ptr_eq(&s.entry, &entry)) {
                Some(s) if s.count != count => {
                    s.count = count;
                    s.at = now;
                }
                Some(s) if now.duration_since(s.at) >= limit => {
                    return Some(Stall {
                        what: entry.what.clone(),
                        secs: now.duration_since(s.at).as_secs(),
                    })
                }
                Some(_) => {}
                None => seen.push(Seen {
                    entry,
                    count,
                    at: now,
                }),
            }
        }
        None
    }

    fn sever(&self) -> Instant {
        crate::libvirt::sever_all();
        Instant::now()
    }

    /// The run is still blocked after its connections went: end the process with the line the
    /// main thread would have printed, leaving the state as for any interruption.
    fn give_up(&self) -> ! {
        let cause = match crate::interrupt::received() {
            Some(sig) => crate::interrupt::Interrupted { signal: sig }.to_string(),
            None => stalled().map_or_else(|| "stalled".to_string(), |s| s.to_string()),
        };
        let line = format!(
            "{cause}, and still blocked {} s after its connections were shut down: {}",
            EXIT_GRACE.as_secs(),
            crate::interrupt::what_is_left(self.raw_target.load(Ordering::SeqCst))
        );
        // The logger escapes control characters in every line it writes.
        log::error!("{line}");
        std::process::exit(match crate::interrupt::received() {
            Some(sig) => 128 + sig,
            None => 1,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn dog_with(limit: Duration, entries: &[Arc<Entry>]) -> Dog {
        Dog {
            stall_timeout: AtomicU64::new(limit.as_millis() as u64),
            watched: Mutex::new(entries.to_vec()),
            stall: Mutex::new(None),
            raw_target: AtomicBool::new(false),
        }
    }

    fn entry(what: &str, count: Arc<AtomicU64>) -> Arc<Entry> {
        Arc::new(Entry {
            what: what.into(),
            probe: Box::new(move || count.load(Ordering::SeqCst)),
        })
    }

    #[test]
    fn a_transfer_that_stands_still_for_the_limit_is_a_stall_and_one_that_moves_is_not() {
        let (still, moving) = (Arc::new(AtomicU64::new(7)), Arc::new(AtomicU64::new(0)));
        let a = entry("disk sda: delta apply", still);
        let b = entry("disk sdb: delta apply", moving.clone());
        let dog = dog_with(Duration::from_secs(120), std::slice::from_ref(&b));
        let mut seen = Vec::new();
        let t0 = Instant::now();
        for s in 0..=300 {
            moving.fetch_add(1, Ordering::SeqCst);
            assert_eq!(dog.look(&mut seen, t0 + Duration::from_secs(s)), None);
        }
        dog.watched.lock().unwrap().push(a);
        let t1 = t0 + Duration::from_secs(301);
        assert_eq!(dog.look(&mut seen, t1), None, "first seen now");
        moving.fetch_add(1, Ordering::SeqCst);
        assert_eq!(dog.look(&mut seen, t1 + Duration::from_secs(119)), None);
        moving.fetch_add(1, Ordering::SeqCst);
        let stall = dog.look(&mut seen, t1 + Duration::from_secs(120)).unwrap();
        assert_eq!(stall.what, "disk sda: delta apply");
        assert_eq!(stall.secs, 120);
        assert_eq!(
            stall.to_string(),
            "disk sda: delta apply: no progress for 120 s (--stall-timeout)"
        );
    }

    #[test]
    fn a_transfer_no_longer_watched_is_forgotten() {
        let a = entry("disk sda: base upload", Arc::new(AtomicU64::new(0)));
        let dog = dog_with(Duration::from_secs(1), &[a]);
        let mut seen = Vec::new();
        let t0 = Instant::now();
        assert_eq!(dog.look(&mut seen, t0), None);
        dog.watched.lock().unwrap().clear();
        assert_eq!(dog.look(&mut seen, t0 + Duration::from_secs(5)), None);
        assert!(seen.is_empty());
    }
}
