//! What a single run did, for `--json`: its spans (timed steps: a base upload, a delta apply, the start...) with their times, bytes, calls and write path, kept as they end and printed as one document at the end, where the list is called `phases`.

use crate::units::utc_ms;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// The format of the document; raised when a field changes meaning or goes away.
pub const FORMAT: u32 = 1;

static SPANS: Mutex<Vec<SpanRecord>> = Mutex::new(Vec::new());

/// One span of a run, as the document shows it (in its `phases`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SpanRecord {
    /// `base upload`, `delta apply`, `define`, `trial start`, `start`, `guest shutdown`, ...
    pub name: String,
    /// The disk's target (`sda`), for per-disk spans.
    pub disk: Option<String>,
    /// UTC with milliseconds.
    pub began: String,
    pub ms: u64,
    /// Bytes moved (read from the source and written), when the span moves any.
    pub bytes: Option<u64>,
    /// libvirt upload calls, for stage 2 through streams.
    pub calls: Option<u64>,
    /// The write path: `stream`, `direct` or `overlay`.
    pub io: Option<String>,
    /// False for a span that ended with an error (or was interrupted).
    pub ok: bool,
}

/// A span being timed; kept when [`Span::done`] is called, or as failed when dropped before.
pub struct Span {
    rec: SpanRecord,
    started: Instant,
}

/// Begin timing the span `name`.
pub fn begin(name: &str) -> Span {
    Span {
        rec: SpanRecord {
            name: name.to_owned(),
            disk: None,
            began: utc_ms(SystemTime::now()),
            ms: 0,
            bytes: None,
            calls: None,
            io: None,
            ok: false,
        },
        started: Instant::now(),
    }
}

impl Span {
    /// The span is about disk `dev`.
    pub fn disk(mut self, dev: &str) -> Span {
        self.rec.disk = Some(dev.to_owned());
        self
    }

    /// Its write path.
    pub fn io(&mut self, io: &str) {
        self.rec.io = Some(io.to_owned());
    }

    /// It ended well, having moved `bytes` in `calls` upload calls.
    pub fn done(mut self, bytes: Option<u64>, calls: Option<u64>) {
        self.rec.bytes = bytes;
        self.rec.calls = calls;
        self.rec.ok = true;
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.rec.ms = self.started.elapsed().as_millis() as u64;
        if let Ok(mut v) = SPANS.lock() {
            v.push(self.rec.clone());
        }
    }
}

/// The spans ended so far, in the order they ended.
pub fn spans() -> Vec<SpanRecord> {
    SPANS.lock().map(|v| v.clone()).unwrap_or_default()
}

/// What the document says about the run besides its spans.
pub struct RunInfo<'a> {
    pub command: &'a str,
    pub domain: Option<&'a str>,
    pub uri: Option<String>,
    pub dry_run: bool,
    pub began: SystemTime,
    pub ms: u64,
    pub exit_code: i32,
    pub error: Option<String>,
    /// The import state after the run (`null` when there is no domain or it has none).
    pub state: Value,
}

/// The URI libvirt chose and domain `name`'s import state as JSON, read after the run
/// (`null` when the domain or its state is absent; a reading error is put in its place).
pub fn state_of(uri: Option<&str>, name: &str) -> (Option<String>, Value) {
    let conn = match crate::libvirt::connect(uri) {
        Ok(c) => c,
        Err(e) => {
            return (
                uri.map(str::to_owned),
                json!({ "unreadable": format!("{e:#}") }),
            )
        }
    };
    let state = conn
        .domain(name)
        .and_then(|d| d.map(|d| crate::state::metadata::read(&d)).transpose())
        .map(Option::flatten);
    let value = match state {
        Ok(Some(st)) => serde_json::to_value(&st).unwrap_or(Value::Null),
        Ok(None) => Value::Null,
        Err(e) => json!({ "unreadable": format!("{e:#}") }),
    };
    (Some(conn.uri().to_owned()), value)
}

static PREFLIGHT: std::sync::Mutex<Option<Value>> = std::sync::Mutex::new(None);

/// Keep the run's preflight (as JSON) for its document.
pub fn keep_preflight(doc: Value) {
    *PREFLIGHT.lock().unwrap_or_else(|e| e.into_inner()) = Some(doc);
}

/// The run's preflight, when it made one (`null` otherwise).
fn kept_preflight() -> Value {
    PREFLIGHT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or(Value::Null)
}

/// The run's document: see the README's "--json" section for its fields.
pub fn document(run: &RunInfo) -> Value {
    let kept = crate::out::kept();
    json!({
        "format": FORMAT,
        "command": run.command,
        "domain": run.domain,
        "uri": run.uri,
        "dry_run": run.dry_run,
        "ok": run.exit_code == 0,
        "exit_code": run.exit_code,
        "error": run.error,
        "began": utc_ms(run.began),
        "ms": run.ms,
        "phases": spans(),
        "notes": kept.notes,
        "preflight": kept_preflight(),
        "warnings": kept.warnings,
        "state": run.state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_dropped_before_done_is_kept_as_failed_and_a_done_one_with_its_figures() {
        {
            let _failed = begin("unit-test failed").disk("sdz");
        }
        let mut p = begin("unit-test done");
        p.io("direct");
        p.done(Some(4096), Some(2));
        let all = spans();
        let failed = all.iter().find(|p| p.name == "unit-test failed").unwrap();
        assert!(!failed.ok);
        assert_eq!(failed.disk.as_deref(), Some("sdz"));
        let done = all.iter().find(|p| p.name == "unit-test done").unwrap();
        assert!(done.ok);
        assert_eq!((done.bytes, done.calls), (Some(4096), Some(2)));
        assert_eq!(done.io.as_deref(), Some("direct"));
    }
}
