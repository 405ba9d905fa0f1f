//! What the plan prints: the summary table, `plan status`, and one domain's import state as a table; names from files and hosts sanitised.

use crate::state::lifecycle::DomainPhase;
use crate::state::{ImportState, StepRecord};
use crate::units::{human_ms, parse_utc_ms};

pub use crate::escape::sanitize;

pub use crate::units::human_bytes;

/// Rows as a table: columns padded to their widest cell, the last column as it is.
pub fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = width[i])
                }
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(head.iter().map(|h| h.to_string()).collect())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(|c| sanitize(c)).collect())),
    );
    out.join("\n")
}

/// A step record's duration in milliseconds.
pub fn step_ms(s: &StepRecord) -> Option<u64> {
    let (b, e) = (parse_utc_ms(&s.began)?, parse_utc_ms(&s.ended)?);
    u64::try_from(e - b).ok()
}

/// The outage of a cut-over VM: the cutover's own figure from ESXi, else the duration of the
/// last plan cutover step that finished (for local sources, the VM was off that long at least).
pub fn outage_ms(st: &ImportState) -> Option<u64> {
    if st.phase() != DomainPhase::HandedOver {
        return None;
    }
    if let Some(o) = &st.cutover {
        return Some(o.total_ms);
    }
    st.steps
        .iter()
        .rev()
        .find(|s| s.name == "cutover" && s.outcome == "done")
        .and_then(step_ms)
}

/// A cutover's projected outage after the VM's `--sync` rounds (until it is cut over).
pub fn projection(st: &ImportState) -> Option<crate::projection::Projection> {
    if st.phase() == DomainPhase::HandedOver {
        return None;
    }
    let start = st.trial.as_ref().and_then(|t| t.start_ms);
    crate::projection::project(&st.syncs, start)
}

/// [`projection`] as JSON: `ms`, `bytes`, `rate_bytes_per_s`, `start_ms`, and the rounds'
/// count.
pub fn projection_json(st: &ImportState) -> Option<serde_json::Value> {
    let p = projection(st)?;
    Some(serde_json::json!({
        "ms": p.ms, "bytes": p.bytes, "rate_bytes_per_s": p.rate.round() as u64,
        "start_ms": p.start_ms, "rounds": st.syncs.len(),
    }))
}

/// [`projection`] in a table: `about N s`, or `-`.
pub fn opt_projection(st: Option<&ImportState>) -> String {
    st.and_then(projection).map_or("-".into(), |p| p.about())
}

/// The disks' total capacity once every base is uploaded.
pub fn uploaded_bytes(st: &ImportState) -> Option<u64> {
    st.every_base_uploaded()
        .then(|| st.disks.iter().map(|d| d.capacity).sum())
}

pub fn opt_ms(ms: Option<u64>) -> String {
    ms.map_or("-".into(), human_ms)
}

pub fn opt_bytes(b: Option<u64>) -> String {
    b.map_or("-".into(), human_bytes)
}

/// One domain's import state as a readable table (`virt-vmdkimport status`).
pub fn domain_table(name: &str, uri: &str, st: &ImportState) -> String {
    let phase = st.phase();
    let mut out = vec![format!(
        "domain '{}' on {}: {phase}",
        sanitize(name),
        sanitize(uri)
    )];
    let facts = facts(st);
    if !facts.is_empty() {
        out.push(
            table(&["", ""], &facts)
                .lines()
                .skip(1)
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    out.push(String::new());
    out.push(table(
        &[
            "DISK",
            "VOLUME",
            "CAPACITY",
            "BASE",
            "STATE",
            "DELTAS APPLIED",
        ],
        &disk_rows(st),
    ));
    if !st.steps.is_empty() {
        out.push(String::new());
        out.push(table(
            &["PLAN STEP", "BEGAN", "TIME", "OUTCOME", "ERROR"],
            &step_rows(st),
        ));
    }
    out.join("\n")
}

/// The lines above the disk table: who defined the domain, the trial start, the hand-over,
/// each sync and stage 2 run, the cutover's outage.
fn facts(st: &ImportState) -> Vec<Vec<String>> {
    let mut facts: Vec<Vec<String>> = Vec::new();
    let mut fact = |k: &str, v: String| facts.push(vec![k.to_string(), v]);
    if let Some(ours) = st.defined_by_tool {
        let by = if ours {
            "virt-vmdkimport"
        } else {
            "other tooling"
        };
        fact(
            "defined by",
            format!(
                "{by}{}",
                st.os
                    .as_ref()
                    .map(|o| format!(" ({o})"))
                    .unwrap_or_default()
            ),
        );
    }
    if let Some(t) = &st.trial {
        let how = if t.started { "passed" } else { "FAILED" };
        let hv = t
            .hyperv
            .as_ref()
            .map(|h| format!(", hyperv {h}"))
            .unwrap_or_default();
        fact(
            "trial start",
            format!(
                "{how}: cpu {}{hv}, {} fallback(s)",
                t.cpu,
                t.fallbacks.len()
            ),
        );
    }
    if let Some(t) = &st.test_boot {
        fact(
            "test boot",
            format!(
                "{} at {} after {}: {}",
                t.verdict,
                t.at,
                human_ms(t.ms),
                t.evidence
            ),
        );
    }
    if let Some(h) = &st.handed_over {
        fact("handed over", h.to_string());
    }
    for (i, s) in st.syncs.iter().enumerate() {
        let left = s
            .final_bytes
            .map(|b| format!(", {} in the final deltas after it", human_bytes(b)))
            .unwrap_or_default();
        fact(
            &format!("sync {}", i + 1),
            format!(
                "{}  {} in {}{left}",
                s.at,
                human_bytes(s.bytes),
                human_ms(s.ms)
            ),
        );
    }
    if let Some(p) = projection(st) {
        fact("projected cutover", p.line());
    }
    facts.extend(written_facts(st));
    facts
}

/// The lines of what wrote the volumes here: each stage 2 run, the cutover's outage.
fn written_facts(st: &ImportState) -> Vec<Vec<String>> {
    let mut facts: Vec<Vec<String>> = Vec::new();
    let mut fact = |k: &str, v: String| facts.push(vec![k.to_string(), v]);
    for (i, a) in st.local_applies.iter().enumerate() {
        fact(
            &format!("stage 2 run {}", i + 1),
            format!("{}  {} in {}", a.at, human_bytes(a.bytes), human_ms(a.ms)),
        );
    }
    if let Some(o) = &st.cutover {
        fact(
            "cutover outage",
            format!(
                "{} (shutdown {}, deltas {} of {}, start {}) at {}",
                human_ms(o.total_ms),
                human_ms(o.shutdown_ms),
                human_ms(o.apply_ms),
                human_bytes(o.bytes),
                human_ms(o.start_ms),
                o.at
            ),
        );
    }
    facts
}

fn step_rows(st: &ImportState) -> Vec<Vec<String>> {
    st.steps
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.began.clone(),
                opt_ms(step_ms(s)),
                s.outcome.clone(),
                s.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

fn disk_rows(st: &ImportState) -> Vec<Vec<String>> {
    st.disks
        .iter()
        .map(|d| {
            let phase = d.phase(st.handed_over.as_ref());
            let base = d.base_cid.map_or("-".into(), |c| format!("cid {c:08x}"));
            let applied: Vec<String> = d.applied.iter().map(|a| a.file.clone()).collect();
            vec![
                d.target_dev.clone(),
                format!("{}/{}", d.pool, d.volume),
                human_bytes(d.capacity),
                base,
                phase.to_string(),
                if applied.is_empty() {
                    "-".into()
                } else {
                    applied.join(", ")
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_in_names_are_escaped() {
        assert_eq!(sanitize("web\u{1b}[2Jx\tok"), "web\\u{1b}[2Jx\\u{9}ok");
        assert_eq!(sanitize("é 日本"), "é 日本");
    }

    #[test]
    fn the_projection_is_shown_until_the_cutover() {
        use crate::state::{DiskState, HandOver, HandOverHow, SyncRound, TrialRecord};
        let mut st = ImportState {
            disks: vec![DiskState {
                base_uploaded: true,
                ..Default::default()
            }],
            trial: Some(TrialRecord {
                started: true,
                start_ms: Some(500),
                ..Default::default()
            }),
            syncs: vec![SyncRound {
                read: Some(10 << 20),
                ms: 1000,
                final_bytes: Some(5 << 20),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(opt_projection(Some(&st)), "about 1.0 s");
        let table = domain_table("web1", "qemu:///system", &st);
        assert!(
            table.contains(
                "projected cutover  a cutover now: about 1.0 s (5.0 MiB to read at 10.0 MiB/s"
            ),
            "{table}"
        );
        assert_eq!(projection_json(&st).unwrap()["ms"], 1000);
        st.test_boot = Some(crate::state::TestBootRecord {
            at: "2026-12-07T19:00:00Z".into(),
            verdict: "booted".into(),
            evidence: "serial: login prompt: web1 login:".into(),
            ms: 47_000,
        });
        let table = domain_table("web1", "qemu:///system", &st);
        assert!(
            table.contains("test boot          booted at 2026-12-07T19:00:00Z after "),
            "{table}"
        );
        st.handed_over = Some(HandOver {
            at: None,
            how: HandOverHow::NoStart,
        });
        assert_eq!(opt_projection(Some(&st)), "-");
    }

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1");
    }
}
