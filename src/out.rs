//! The tool's one output path: a `log` logger that sanitises every line, sends the human lines to stdout (stderr under `--json`), notes, warnings and debug lines to stderr, and never panics on a closed stream.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI8, Ordering};
use std::sync::Mutex;

pub use crate::escape::{sanitize, sanitize_lines};

/// The target of notes: facts about the input the operator should know (`note: ...`).
pub const NOTE: &str = "vmdkimport::note";

static VERBOSITY: AtomicI8 = AtomicI8::new(0);
static JSON: AtomicBool = AtomicBool::new(false);
static LOGGER: Logger = Logger;
/// Notes and warnings of this run, kept for `--json`.
static KEPT: Mutex<Kept> = Mutex::new(Kept {
    notes: Vec::new(),
    warnings: Vec::new(),
});

/// The notes and warnings a run printed, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// Install the logger: `verbosity` -1 is `-q` (warnings and errors only), 0 the default,
/// 1 `-v` (debug lines), 2 and more `-vv` (trace); `json` sends the human lines to stderr.
pub fn init(verbosity: i8, json: bool) {
    VERBOSITY.store(verbosity, Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
    crate::progress::set_quiet(verbosity < 0);
    let _ = log::set_logger(&LOGGER);
    // Notes and warnings always reach the logger, to be kept for `--json` under `-q` too.
    log::set_max_level(level_for(verbosity).max(LevelFilter::Info));
}

fn level_for(verbosity: i8) -> LevelFilter {
    match verbosity {
        i8::MIN..=-1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// -1 for `-q`, 0 by default, the number of `-v` otherwise.
pub fn verbosity() -> i8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// `-q` was given: no human lines, no progress.
pub fn quiet() -> bool {
    VERBOSITY.load(Ordering::Relaxed) < 0
}

/// `--json` was given: standard output holds only the JSON document.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The notes and warnings printed so far.
pub fn kept() -> Kept {
    KEPT.lock().map(|k| k.clone()).unwrap_or_default()
}

struct Logger;

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        ours(m.target()) && m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let text = sanitize_lines(&r.args().to_string());
        keep(r, &text);
        if r.level() > level_for(VERBOSITY.load(Ordering::Relaxed)) {
            return;
        }
        let (prefix, to_stdout) = match r.level() {
            Level::Error => ("virt-vmdkimport: ", false),
            Level::Warn => ("warning: ", false),
            Level::Info if r.target() == NOTE => ("note: ", false),
            Level::Info => ("", !json()),
            Level::Debug | Level::Trace => ("debug: ", false),
        };
        crate::progress::suspend(|| write_line(to_stdout, prefix, &text));
    }

    fn flush(&self) {}
}

/// Lines from this crate (the library or the binary), not from dependencies.
fn ours(target: &str) -> bool {
    target.starts_with("vmdkimport") || target.starts_with("virt_vmdkimport")
}

fn keep(r: &Record, text: &str) {
    let Ok(mut k) = KEPT.lock() else { return };
    match r.level() {
        Level::Warn => k.warnings.push(text.to_owned()),
        Level::Info if r.target() == NOTE => k.notes.push(text.to_owned()),
        _ => {}
    }
}

fn write_line(to_stdout: bool, prefix: &str, text: &str) {
    let _ = if to_stdout {
        writeln!(std::io::stdout().lock(), "{prefix}{text}")
    } else {
        writeln!(std::io::stderr().lock(), "{prefix}{text}")
    };
}

/// Write `args` to stdout as they are (data the operator asked for: XML, a JSON document);
/// a closed or broken stdout is ignored.
pub fn text(args: Arguments) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.flush());
}

/// A note: `note: ...` on stderr, kept for `--json`.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        log::info!(target: $crate::out::NOTE, $($arg)*)
    };
}

/// `print!` for data on stdout (XML, JSON): never panics on a closed stdout.
#[macro_export]
macro_rules! say_raw {
    ($($arg:tt)*) => {
        $crate::out::text(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_keeps_warnings_and_verbose_adds_debug_lines() {
        assert_eq!(level_for(-1), LevelFilter::Warn);
        assert_eq!(level_for(0), LevelFilter::Info);
        assert_eq!(level_for(1), LevelFilter::Debug);
        assert_eq!(level_for(3), LevelFilter::Trace);
    }

    #[test]
    fn only_this_crates_lines_are_written() {
        assert!(ours("vmdkimport::import::write"));
        assert!(ours(NOTE));
        assert!(ours("virt_vmdkimport"));
        assert!(!ours("indicatif::draw"));
    }
}
