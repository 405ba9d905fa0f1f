//! The virt-vmdkimport command: parse the command line, run the library, report errors on one line.

use anyhow::{ensure, Context};
use clap::Parser;
use vmdkimport::apply::run_target;
use vmdkimport::cli::Cli;
use vmdkimport::vmdk::{Chain, OpenOptions};
use vmdkimport::{domain_xml, import, interrupt, libvirt};

fn run(cli: &Cli) -> anyhow::Result<()> {
    if let Some(cmd) = &cli.command {
        return vmdkimport::fleet::run(cmd);
    }
    if let Some(target) = &cli.target {
        ensure!(
            !cli.deltas.is_empty(),
            "--target needs at least one delta to apply"
        );
        let opts = OpenOptions {
            allow_outside_paths: cli.allow_outside_paths,
        };
        let chain = Chain::open_deltas(&cli.deltas, &opts)?;
        return run_target(&chain, target, &opts, cli.dry_run);
    }
    if cli.switch_to_virtio {
        let name = cli.domain.as_deref().expect("clap requires --domain");
        let conn = libvirt::connect(cli.connect.as_deref())?;
        let dom = conn
            .domain(name)?
            .with_context(|| format!("domain '{name}' does not exist on {}", conn.uri()))?;
        ensure!(
            !dom.is_active()?,
            "domain '{name}' is running: shut it down before changing its devices"
        );
        let xml = domain_xml::switch_to_virtio(&dom.xml()?)?;
        if cli.print_xml || cli.dry_run {
            vmdkimport::say_raw!("{xml}");
            return Ok(());
        }
        conn.define_domain(&xml)?;
        vmdkimport::say!("domain '{name}': disks and NICs are virtio now (MACs kept); start it with virsh -c {} start {name}", conn.uri());
        return Ok(());
    }
    import::run(import::Request::from_cli(cli)?)
}

fn main() {
    if let Err(e) = interrupt::install() {
        eprintln!("virt-vmdkimport: catching SIGINT and SIGTERM: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        if let Some(sig) = interrupt::received() {
            eprintln!(
                "virt-vmdkimport: {}",
                vmdkimport::out::sanitize(&interrupt::rerun_line(sig, &e, cli.target.is_some()))
            );
            std::process::exit(128 + sig);
        }
        // One line, whatever names from files or ESXi the message carries.
        eprintln!(
            "virt-vmdkimport: {}",
            vmdkimport::out::sanitize(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}
