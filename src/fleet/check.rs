//! `plan check`'s preflight: every VM's stage 1 as its child run would take it, checked in this process (reading only), one table for the whole plan; a VM with an error finding runs no dry run.

use crate::cli::Cli;
use crate::import::ImportPlan;
use crate::plan_file::{FleetVm, StepKind};
use crate::preflight::{self, Finding, Report, Severity, Side};
use clap::Parser;

/// The preflight of `vm`: its stage 1 arguments (the ones its child run gets) made into a
/// plan and checked; arguments the plan refuses are the one finding.
pub fn preflight(vm: &FleetVm) -> Report {
    let plan = vm
        .args(StepKind::Stage1, true)
        .ok_or_else(|| anyhow::anyhow!("stage 1 does not apply to this VM's source"))
        .and_then(|args| {
            let argv = std::iter::once("virt-vmdkimport".into()).chain(args);
            let cli = Cli::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
            ImportPlan::from_cli(&cli)
        });
    match plan {
        Ok(p) => preflight::check(&p),
        Err(e) => Report {
            domain: vm.name.clone(),
            findings: vec![Finding::new(
                Severity::Error,
                Side::Kvm,
                format!("the plan's options for '{}': {e:#}", vm.name),
                "fix the VM's entry in the plan file",
            )],
        },
    }
}

/// Every VM's preflight, the table said; the reports in `vms`'s order (fewer after Ctrl-C:
/// the VMs not reached have none, and the run stops before any dry run).
pub fn preflights(vms: &[FleetVm]) -> Vec<Report> {
    let reports: Vec<Report> = vms
        .iter()
        .take_while(|_| crate::interrupt::received().is_none())
        .map(preflight)
        .collect();
    let all: Vec<&Report> = reports.iter().collect();
    log::info!("preflight:\n{}", preflight::table::render(&all));
    reports
}
