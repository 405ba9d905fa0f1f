//! The `plan` and `status` subcommands' arguments (clap), beside the import's flat command line.

use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a migration plan (TOML) for many VMs across KVM hosts: check, stage1, sync, cutover, status.
    Plan(PlanArgs),
    /// Show a domain's import state as a table.
    Status(StatusArgs),
}

/// What `plan` does for each VM of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Check everything that can be checked (each VM's next step with --dry-run); change nothing.
    Check,
    /// Stage 1 of every VM whose stage 1 is not done: volumes, domain, base upload, trial start.
    Stage1,
    /// A pre-copy round for every VM from ESXi (--sync).
    Sync,
    /// The cutover of every VM: final deltas applied, domain started.
    Cutover,
    /// One line per VM from the import state on its host: phase, bytes, outage, errors.
    Status,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// What to do.
    #[arg(value_enum)]
    pub action: Action,
    /// The plan file (TOML; see the README's "Many VMs").
    #[arg(value_name = "PLAN.toml")]
    pub plan: PathBuf,
    /// Only these VMs of the plan (names, comma-separated).
    #[arg(long, value_name = "NAME,...", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Print one JSON document (every VM's step, result, phase, bytes, times, error) on
    /// standard output; the per-VM lines and the table go to standard error.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The domain.
    #[arg(short = 'd', long, value_name = "NAME")]
    pub domain: String,
    /// libvirt connection URI (else LIBVIRT_DEFAULT_URI, else libvirt's default).
    #[arg(short = 'c', long = "connect", value_name = "URI")]
    pub connect: Option<String>,
}
