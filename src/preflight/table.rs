//! The preflight as people read it (one table, a row per finding: severity, side, VM, what, the way out) and as programs read it (JSON), names from files and hosts sanitised.

use serde_json::{json, Value};

use super::finding::{Report, Severity, Side};
use crate::escape::sanitize;

const HEAD: [&str; 5] = ["SEVERITY", "SIDE", "VM", "WHAT", "WAY OUT"];

/// Every finding of `reports` as one table, errors first within each VM and side; a VM with no
/// finding gets a row saying so.
pub fn render(reports: &[&Report]) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for r in reports {
        if r.findings.is_empty() {
            rows.push([
                "ok".into(),
                "-".into(),
                r.domain.clone(),
                "nothing found".into(),
                "-".into(),
            ]);
        }
        for f in &r.findings {
            rows.push([
                severity_word(f.severity).into(),
                side_word(f.side).into(),
                r.domain.clone(),
                f.what.clone(),
                f.way_out.clone(),
            ]);
        }
    }
    let rows: Vec<[String; 5]> = rows.into_iter().map(|r| r.map(|c| sanitize(&c))).collect();
    let mut width = HEAD.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate().take(4) {
            s += &format!("{c:<w$}  ", w = width[i]);
        }
        (s + cells[4]).trim_end().to_string()
    };
    let mut out = vec![line(HEAD)];
    out.extend(rows.iter().map(|r| line(r.each_ref().map(String::as_str))));
    out.push(summary(reports));
    out.join("\n")
}

/// A VM's preflight errors on one line: the first one's text, and how many more.
pub fn blocked(r: &Report) -> String {
    let mut errors = r.findings.iter().filter(|f| f.severity == Severity::Error);
    let first = errors.next().map_or("", |f| f.what.as_str());
    match errors.count() {
        0 => format!("preflight: {first}"),
        more => format!("preflight: {first} (and {more} more error(s): see the preflight table)"),
    }
}

/// The last line: how many of each severity.
fn summary(reports: &[&Report]) -> String {
    let n = |s| reports.iter().map(|r| r.count(s)).sum::<usize>();
    format!(
        "{} error(s), {} warning(s), {} info",
        n(Severity::Error),
        n(Severity::Warning),
        n(Severity::Info)
    )
}

pub fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Error => "ERROR",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

fn side_word(s: Side) -> &'static str {
    match s {
        Side::Vmware => "vmware",
        Side::Kvm => "kvm",
    }
}

/// One VM's preflight as JSON: `domain`, the counts, and `findings`, each with `severity`
/// (`error`, `warning`, `info`), `side` (`vmware`, `kvm`), `what` and `way_out`.
pub fn to_json(r: &Report) -> Value {
    json!({
        "domain": r.domain,
        "errors": r.errors(),
        "warnings": r.count(Severity::Warning),
        "findings": r.findings,
    })
}

/// Keep the run's preflight for its `--json` document.
pub fn keep(r: &Report) {
    crate::report::keep_preflight(to_json(r));
}

#[cfg(test)]
mod tests {
    use super::super::finding::Finding;
    use super::*;

    fn report() -> Report {
        Report {
            domain: "web\u{1b}1".into(),
            findings: vec![
                Finding::new(
                    Severity::Error,
                    Side::Vmware,
                    "disk scsi0:1 is an RDM".into(),
                    "copy it",
                ),
                Finding::new(Severity::Info, Side::Kvm, "pool 'p'".into(), "-"),
            ],
        }
    }

    #[test]
    fn the_table_has_a_row_per_finding_padded_and_sanitised_with_the_counts_last() {
        let t = render(&[&report()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("SEVERITY  SIDE    VM"), "{t}");
        assert!(lines[1].starts_with("ERROR     vmware  web\\u{1b}1"), "{t}");
        assert!(lines[1].ends_with("disk scsi0:1 is an RDM  copy it"), "{t}");
        assert_eq!(lines[3], "1 error(s), 0 warning(s), 1 info");
        let empty = Report {
            domain: "db".into(),
            findings: vec![],
        };
        assert!(render(&[&empty]).contains("ok        -     db  nothing found"));
    }

    #[test]
    fn the_json_names_each_findings_severity_side_what_and_way_out() {
        let j = to_json(&report());
        assert_eq!(j["errors"], 1);
        assert_eq!(j["warnings"], 0);
        assert_eq!(j["findings"][0]["severity"], "error");
        assert_eq!(j["findings"][0]["side"], "vmware");
        assert_eq!(j["findings"][0]["way_out"], "copy it");
        assert_eq!(j["findings"][1]["severity"], "info");
    }
}
