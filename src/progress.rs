//! Progress of long transfers: indicatif bars on a terminal, held in one place so that log lines are drawn above them.

use indicatif::MultiProgress;
use std::sync::OnceLock;

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
