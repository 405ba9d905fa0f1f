//! `plan test-boot`: a test boot of every VM of the plan, one after the other (each keeps a core busy), and one HTML page of the verdicts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::html::{self, Row};
use super::Request;
use crate::cli::PlanArgs;
use crate::{interrupt, libvirt, plan_file};

/// `--timeout` when the plan command gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Test-boot the plan's VMs (or `--only` those) and write `LOGDIR/test-boot/index.html`.
pub fn run(a: &PlanArgs) -> Result<()> {
    let fleet = plan_file::load(&a.plan)?;
    let vms = plan_file::select(&fleet, &a.only)?;
    let dir = fleet.log_dir.join("test-boot");
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: creating the report folder", dir.display()))?;
    let mut rows = Vec::new();
    for vm in &vms {
        interrupt::check()?;
        let folder = html::folder_name(&vm.name);
        let req = Request {
            uri: Some(vm.uri.clone()),
            domain: vm.name.clone(),
            timeout: a.timeout.unwrap_or(DEFAULT_TIMEOUT),
            report: Some(dir.join(&folder)),
            cleanup_only: false,
            overlay_pool: "default".into(),
        };
        log::info!("[{}] test boot started on {}", vm.name, vm.uri);
        let got = libvirt::connect(req.uri.as_deref()).and_then(|c| super::test_boot(&c, &req));
        let row = match got {
            Ok(Some(out)) => {
                log::info!(
                    "[{}] {}: {} ({} s)",
                    vm.name,
                    out.finding.verdict.as_str(),
                    out.finding.evidence,
                    out.watched.as_secs()
                );
                Row::done(&vm.name, &folder, &out)
            }
            Ok(None) => unreachable!("a plan's test boot is never --cleanup"),
            Err(e) => {
                log::warn!("[{}] test boot did not run: {e:#}", vm.name);
                Row::error(&vm.name, &format!("{e:#}"))
            }
        };
        rows.push(row);
    }
    let page = dir.join("index.html");
    let title = format!("Test boots of {}", fleet.path.display());
    std::fs::write(&page, html::page(&title, &rows))
        .with_context(|| format!("writing {}", page.display()))?;
    log::info!("{}", page_line(&page, &rows));
    Ok(())
}

fn page_line(page: &Path, rows: &[Row]) -> String {
    let count = |v: &str| rows.iter().filter(|r| r.verdict == v).count();
    format!(
        "test boots: {} booted, {} failed, {} unknown, {} not run; page: {}",
        count("booted"),
        count("failed"),
        count("unknown"),
        count("error"),
        page.display()
    )
}
