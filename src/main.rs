//! The virt-vmdkimport command: parse the command line into a plan, run it, report the outcome as an exit code and one error line.

use clap::Parser;
use std::time::{Instant, SystemTime};
use vmdkimport::cli::{Cli, Command};
use vmdkimport::plan::Plan;
use vmdkimport::{interrupt, report, watchdog};

fn main() {
    if let Err(e) = interrupt::install() {
        eprintln!("virt-vmdkimport: catching SIGINT and SIGTERM: {e}");
        std::process::exit(1);
    }
    let args = vmdkimport::cli::hoist_before_subcommand(std::env::args_os().collect());
    let cli = Cli::parse_from(args);
    vmdkimport::out::init(cli.verbosity(), cli.wants_json());
    watchdog::start(cli.stall_timeout, cli.target.is_some());
    let began = (SystemTime::now(), Instant::now());
    let result = Plan::from_cli(&cli).and_then(Plan::run);
    let code = match &result {
        Ok(()) => 0,
        Err(e) => report_error(&cli, e),
    };
    if cli.json {
        print_document(&cli, began, code, result.err());
    }
    std::process::exit(code);
}

/// The error's one line on stderr; the exit code.
fn report_error(cli: &Cli, e: &anyhow::Error) -> i32 {
    if let Some(sig) = interrupt::received() {
        let line = match &cli.command {
            Some(Command::TestBoot(_)) => vmdkimport::testboot::interrupted_line(sig, e),
            _ => interrupt::rerun_line(sig, e, cli.target.is_some()),
        };
        log::error!("{}", vmdkimport::out::sanitize(&line));
        return 128 + sig;
    }
    if let Some(nb) = e.downcast_ref::<vmdkimport::testboot::NotBooted>() {
        log::error!("{nb}");
        return nb.exit_code();
    }
    if let Some(stall) = watchdog::stalled() {
        log::error!(
            "{}",
            vmdkimport::out::sanitize(&stall.line(e, cli.target.is_some()))
        );
        return 1;
    }
    // One line, whatever names from files or ESXi the message carries.
    log::error!("{}", vmdkimport::out::sanitize(&format!("{e:#}")));
    1
}

/// `--json`: the run's document on stdout.
fn print_document(
    cli: &Cli,
    began: (SystemTime, Instant),
    exit_code: i32,
    error: Option<anyhow::Error>,
) {
    let (uri, state) = match &cli.domain {
        Some(d) => report::state_of(cli.connect.as_deref(), d),
        None => (cli.connect.clone(), serde_json::Value::Null),
    };
    let doc = report::document(&report::RunInfo {
        command: cli.command_name(),
        domain: cli.domain.as_deref(),
        uri,
        dry_run: cli.dry_run,
        began: began.0,
        ms: began.1.elapsed().as_millis() as u64,
        exit_code,
        error: error.map(|e| vmdkimport::out::sanitize(&format!("{e:#}"))),
        state,
    });
    vmdkimport::say_raw!("{doc:#}\n");
}
