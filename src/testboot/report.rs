//! The test boot's report: `--report DIR` holds the screenshots, the console log and `report.json` (the verdict, its evidence, the times).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::verdict::Finding;
use super::watch::Observed;

/// The run's facts besides what the watch saw.
pub struct Facts {
    pub domain: String,
    pub throwaway: String,
    pub uri: String,
    /// UTC, when the test boot began.
    pub began: String,
    pub timeout_s: u64,
    /// From the start of the run to the guest let run, in ms.
    pub start_ms: u64,
    /// The copy-on-write layer of each disk, as a line.
    pub layers: Vec<String>,
    pub ocr: Option<String>,
}

/// The report as JSON.
pub fn document(f: &Facts, seen: &Observed, finding: &Finding) -> Value {
    let disks: Vec<Value> = seen
        .disk_io
        .iter()
        .map(|(dev, r, w)| json!({"dev": dev, "read_bytes": r, "written_bytes": w}))
        .collect();
    json!({
        "domain": f.domain,
        "throwaway_domain": f.throwaway,
        "uri": f.uri,
        "verdict": finding.verdict,
        "evidence": {
            "source": finding.source,
            "text": finding.evidence,
            "reboots": seen.reboots,
            "crashes": seen.crashes,
            "disks": disks,
            "notes": seen.notes,
        },
        "times": {
            "began": f.began,
            "start_ms": f.start_ms,
            "watched_ms": seen.watched.as_millis() as u64,
            "timeout_s": f.timeout_s,
        },
        "layers": f.layers,
        "ocr": f.ocr.as_deref().unwrap_or("absent (tesseract is not installed)"),
        "screenshots": seen.shots,
        "console_log": "console.log",
    })
}

/// Write `console.log` and `report.json` into `dir` (the screenshots are there already).
pub fn write(dir: &Path, doc: &Value, seen: &Observed) -> Result<()> {
    std::fs::write(dir.join("console.log"), &seen.console)
        .with_context(|| format!("{}: writing console.log", dir.display()))?;
    let text = serde_json::to_string_pretty(doc).context("report.json")?;
    std::fs::write(dir.join("report.json"), text + "\n")
        .with_context(|| format!("{}: writing report.json", dir.display()))
}

/// Make the report folder: new, empty, or holding only an earlier report of ours (its files
/// are removed, so that none of them is taken for this one's); any other file is refused.
pub fn prepare(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::create_dir_all(dir)
            .with_context(|| format!("--report {}: creating the folder", dir.display()));
    }
    let mut ours = Vec::new();
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("--report {}: reading the folder", dir.display()))?
    {
        let e = e.with_context(|| format!("--report {}: reading the folder", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let is_ours = name == "report.json"
            || name == "console.log"
            || (name.starts_with("screen-") && name.ends_with(".png"));
        anyhow::ensure!(
            is_ours && e.file_type().is_ok_and(|t| t.is_file()),
            "--report {}: holds {name:?}, which is not part of a test boot report (give a new or empty folder)",
            dir.display()
        );
        ours.push(e.path());
    }
    for p in ours {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}
