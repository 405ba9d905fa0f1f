//! Progress of long transfers: indicatif bars on a terminal, plain periodic lines otherwise, held in one place so that log lines are drawn above the bars.

use crate::units::{human_bytes, human_time_left};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// The bars of this run, drawn on standard error.
pub fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(MultiProgress::new)
}

/// Run `f` (which writes a line) with the bars cleared, and draw them again after it.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    match MULTI.get() {
        Some(m) => m.suspend(f),
        None => f(),
    }
}

/// Seconds between two plain progress lines of one transfer when standard error is no
/// terminal: often enough to see a transfer move in a log, rare enough not to flood it.
pub const EVERY: Duration = Duration::from_secs(10);
/// Overrides [`EVERY`] (whole seconds; 0: no progress lines). A plan sets it for its children.
pub const EVERY_ENV: &str = "VMDKIMPORT_PROGRESS_EVERY";

/// How this run shows its transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Standard error is a terminal: one bar per transfer.
    Bars,
    /// A plain line per transfer this often (logs, CI, pipes).
    Lines(Duration),
    /// Nothing (quiet).
    Nothing,
}

/// The one decision of how transfers are shown, made once per run.
pub fn show() -> Show {
    static SHOW: OnceLock<Show> = OnceLock::new();
    *SHOW.get_or_init(|| decide(quiet(), std::io::stderr().is_terminal(), every()))
}

/// Set by the logger's setup ([`crate::out::init`]) when the operator asked for quiet output.
static QUIET: AtomicBool = AtomicBool::new(false);

/// The operator asked for quiet output (`-q`): no progress. Called before the first transfer.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Relaxed);
}

fn quiet() -> bool {
    QUIET.load(Relaxed)
}

fn decide(quiet: bool, tty: bool, every: Option<Duration>) -> Show {
    match (quiet, tty, every) {
        (true, _, _) => Show::Nothing,
        (false, true, _) => Show::Bars,
        (false, false, Some(e)) => Show::Lines(e),
        (false, false, None) => Show::Nothing,
    }
}

/// The period of plain lines: [`EVERY_ENV`] if set (0 or junk there: none), else [`EVERY`].
fn every() -> Option<Duration> {
    match std::env::var(EVERY_ENV) {
        Err(_) => Some(EVERY),
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if n > 0 => Some(Duration::from_secs(n)),
            _ => None,
        },
    }
}

/// What a transfer shares with the ticker that draws it.
struct Shared {
    label: String,
    total: u64,
    pos: AtomicU64,
    /// Bytes moved beside the counted ones (gaps refilled), shown when not 0.
    extra: AtomicU64,
    extra_label: &'static str,
    started: Instant,
    bar: Option<ProgressBar>,
    /// Plain lines printed so far.
    told: AtomicU64,
}

/// One long transfer's progress: counted with [`Transfer::add`] or [`Transfer::set`] (one
/// atomic operation each, cheap enough per write), drawn by a ticker thread. Dropped without
/// [`Transfer::finish`] (an error path), its bar goes away without showing it complete.
pub struct Transfer {
    shared: Arc<Shared>,
    /// The stall watch on it, for as long as it runs.
    _watch: crate::watchdog::Watch,
}

impl Transfer {
    /// A transfer of `total` bytes, named `label` (`disk sda: base upload`).
    pub fn new(label: impl Into<String>, total: u64) -> Transfer {
        Transfer::with_extra(label, total, "")
    }

    /// [`Transfer::new`] that also shows the bytes given to [`Transfer::add_extra`], as
    /// "`N` `extra_label`" (`gaps refilled`).
    pub fn with_extra(label: impl Into<String>, total: u64, extra_label: &'static str) -> Transfer {
        let label = crate::escape::sanitize(&label.into());
        let bar = (show() == Show::Bars).then(|| new_bar(&label, total));
        let shared = Arc::new(Shared {
            label,
            total,
            pos: AtomicU64::new(0),
            extra: AtomicU64::new(0),
            extra_label,
            started: Instant::now(),
            bar,
            told: AtomicU64::new(0),
        });
        if show() != Show::Nothing {
            ticker().register(shared.clone());
        }
        let moved = shared.clone();
        let _watch = crate::watchdog::watch(&shared.label, move || {
            moved
                .pos
                .load(Relaxed)
                .wrapping_add(moved.extra.load(Relaxed))
        });
        Transfer { shared, _watch }
    }

    /// `n` more bytes done.
    pub fn add(&self, n: u64) {
        self.shared.pos.fetch_add(n, Relaxed);
    }

    /// `pos` bytes done in all.
    pub fn set(&self, pos: u64) {
        self.shared.pos.store(pos, Relaxed);
    }

    /// `n` more bytes moved beside the counted ones.
    pub fn add_extra(&self, n: u64) {
        self.shared.extra.fetch_add(n, Relaxed);
    }

    /// The transfer completed: its bar goes (the caller says what it did).
    pub fn finish(self) {
        if let Some(bar) = &self.shared.bar {
            bar.set_position(self.shared.pos.load(Relaxed));
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if show() != Show::Nothing {
            ticker().unregister(&self.shared);
        }
        if let Some(bar) = &self.shared.bar {
            bar.finish_and_clear();
            multi().remove(bar);
        }
    }
}

fn new_bar(label: &str, total: u64) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:16}] {binary_bytes} of {binary_total_bytes} ({percent}%), {binary_bytes_per_sec}, ETA {eta}{msg}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    let bar = ProgressBar::new(total)
        .with_style(style)
        .with_prefix(label.to_string());
    multi().add(bar)
}

/// A running VM of a plan, on a terminal: a spinner line whose text the caller keeps fresh.
/// Dropped, it goes.
pub struct Line {
    bar: ProgressBar,
}

impl Line {
    pub fn new(text: impl Into<String>) -> Line {
        let style = ProgressStyle::with_template("{spinner} {wide_msg}").expect("a valid template");
        let bar = multi().add(ProgressBar::new_spinner().with_style(style));
        bar.set_message(crate::escape::sanitize(&text.into()));
        bar.enable_steady_tick(Duration::from_millis(200));
        Line { bar }
    }

    pub fn set(&self, text: &str) {
        self.bar.set_message(crate::escape::sanitize(text));
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        multi().remove(&self.bar);
    }
}

/// How often a plan's child prints its progress lines (into its VM's log), from the plan's
/// `every` (0: never): on a terminal at least every 5 s, so each VM's line stays fresh.
pub fn child_every(every: u64) -> u64 {
    match show() {
        Show::Bars if every > 0 => every.min(5),
        _ => every,
    }
}

/// The thread that draws every live transfer: bars ten times a second, plain lines when due.
struct Ticker {
    live: Mutex<Vec<Arc<Shared>>>,
}

fn ticker() -> &'static Ticker {
    static TICKER: OnceLock<&'static Ticker> = OnceLock::new();
    TICKER.get_or_init(|| {
        let t: &'static Ticker = Box::leak(Box::new(Ticker {
            live: Mutex::new(Vec::new()),
        }));
        std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || t.run())
            .expect("starting the progress thread");
        t
    })
}

/// How often the ticker looks at the transfers.
const TICK: Duration = Duration::from_millis(100);

impl Ticker {
    fn register(&self, s: Arc<Shared>) {
        self.live.lock().expect("no panic drawing").push(s);
    }

    fn unregister(&self, s: &Arc<Shared>) {
        self.live
            .lock()
            .expect("no panic drawing")
            .retain(|x| !Arc::ptr_eq(x, s));
    }

    fn run(&self) {
        loop {
            std::thread::sleep(TICK);
            // Drawn under the lock, so a transfer that ended (unregistered) is drawn no more.
            let live = self.live.lock().expect("no panic drawing");
            for s in live.iter() {
                draw(s);
            }
        }
    }
}

/// One look at a transfer: its bar moved, or its plain line printed when one is due.
fn draw(s: &Shared) {
    let pos = s.pos.load(Relaxed);
    let extra = s.extra.load(Relaxed);
    if let Some(bar) = &s.bar {
        if extra > 0 {
            bar.set_message(format!(", {} {}", human_bytes(extra), s.extra_label));
        }
        bar.set_position(pos);
        return;
    }
    let Show::Lines(every) = show() else { return };
    let due = s.started.elapsed().as_millis() / every.as_millis().max(1);
    if due as u64 > s.told.load(Relaxed) {
        s.told.store(due as u64, Relaxed);
        let mut text = line(&s.label, pos, s.total, s.started.elapsed());
        if extra > 0 {
            text.push_str(&format!("; {} {}", human_bytes(extra), s.extra_label));
        }
        emit(&text);
    }
}

/// A plain progress line: through the run's logger when it takes information lines, else
/// straight to standard error.
fn emit(text: &str) {
    if log::log_enabled!(log::Level::Info) {
        log::info!("{text}");
    } else {
        suspend(|| eprintln!("{text}"));
    }
}

/// `disk sda: base upload: 1.2 GiB of 40.0 GiB (3%), 110 MiB/s, about 6 min left`.
pub fn line(label: &str, pos: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { pos as f64 / secs } else { 0.0 };
    let pct = if total > 0 {
        (pos as f64 * 100.0 / total as f64).floor() as u64
    } else {
        0
    };
    let left = if pos >= total {
        "done".to_string()
    } else if rate < 1.0 {
        "time left unknown".to_string()
    } else {
        let eta = Duration::from_secs_f64((total - pos) as f64 / rate);
        format!("about {} left", human_time_left(eta))
    };
    format!(
        "{label}: {} of {} ({pct}%), {}/s, {left}",
        human_bytes(pos),
        human_bytes(total),
        human_bytes(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gives_bytes_share_rate_and_time_left() {
        let gib = 1u64 << 30;
        // 1.5 GiB at 110 MiB/s; 38.5 GiB left at that rate: 358 s, about 6 min.
        let pos = gib * 3 / 2;
        let l = line(
            "disk sda: base upload",
            pos,
            40 * gib,
            Duration::from_secs_f64(pos as f64 / (110.0 * 1048576.0)),
        );
        assert_eq!(
            l,
            "disk sda: base upload: 1.5 GiB of 40.0 GiB (3%), 110.0 MiB/s, about 6 min left"
        );
    }

    #[test]
    fn a_line_with_nothing_moved_yet_gives_no_time_left() {
        let l = line("x", 0, 1 << 20, Duration::from_secs(10));
        assert_eq!(l, "x: 0 B of 1.0 MiB (0%), 0 B/s, time left unknown");
        let done = line("x", 1 << 20, 1 << 20, Duration::from_secs(1));
        assert!(done.ends_with("(100%), 1.0 MiB/s, done"), "{done}");
    }

    #[test]
    fn a_transfer_dropped_without_finish_is_no_longer_drawn() {
        let live = |s: &Arc<Shared>| {
            let l = ticker().live.lock().unwrap();
            l.iter().any(|x| Arc::ptr_eq(x, s))
        };
        let t = Transfer::new("disk sda: base upload", 1 << 20);
        t.add(4096);
        let shared = t.shared.clone();
        assert_eq!(shared.pos.load(Relaxed), 4096);
        if show() != Show::Nothing {
            assert!(live(&shared), "drawn while it runs");
        }
        drop(t);
        assert!(!live(&shared), "an error path leaves no line or bar behind");
    }

    #[test]
    fn quiet_shows_nothing_a_terminal_bars_else_lines() {
        let e = Some(EVERY);
        assert_eq!(decide(true, true, e), Show::Nothing);
        assert_eq!(decide(false, true, None), Show::Bars);
        assert_eq!(decide(false, false, e), Show::Lines(EVERY));
        assert_eq!(decide(false, false, None), Show::Nothing);
    }
}
