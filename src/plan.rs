//! What one command will do, decided from its arguments alone: a combination refused here is refused before any file, daemon or host is touched.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};

use crate::apply::run_target;
use crate::cli::{Action, Cli, Command, PlanArgs};
use crate::import::ImportPlan;
use crate::vmdk::{Chain, OpenOptions};
use crate::{domain_xml, libvirt};

/// One command's work, every option checked.
pub enum Plan<'a> {
    /// `plan ...` and `status ...`: many VMs, or a look at one.
    Fleet(&'a Command),
    /// `probe ssh://...`: the transfer rates of an ESXi host.
    Probe(crate::esx::probe::ProbePlan),
    /// `--target`: deltas applied to a raw image or device, no libvirt.
    Target {
        deltas: Vec<PathBuf>,
        target: PathBuf,
        open: OpenOptions,
        dry_run: bool,
    },
    /// `--switch-to-virtio`: a shut-off domain's disks and NICs made virtio.
    SwitchToVirtio {
        uri: Option<String>,
        domain: String,
        show_only: bool,
    },
    /// An import into libvirt: stage 1, stage 2 or both, shaping options, `--sync`,
    /// `--cutover`, from local files or an ESXi host.
    Import(Box<ImportPlan>),
    /// `test-boot`: the volumes booted in a throwaway copy of the domain, or `--cleanup`.
    TestBoot(crate::testboot::Request),
    /// `plan test-boot`: a test boot of each VM of a plan, and one HTML page.
    TestBootPlan(&'a crate::cli::PlanArgs),
}

impl<'a> Plan<'a> {
    /// The plan for `cli`. Pure: opens nothing, connects nowhere.
    pub fn from_cli(cli: &'a Cli) -> Result<Plan<'a>> {
        match &cli.command {
            Some(Command::Probe(p)) => {
                let t = &p.transport;
                return Ok(Plan::Probe(crate::esx::probe::ProbePlan::check(
                    &p.vmx,
                    p.bytes,
                    p.json,
                    t.transport == crate::cli::TransportArg::Nc,
                    t.nc_port,
                    t.nc_address.as_deref(),
                )?));
            }
            Some(Command::TestBoot(a)) => {
                return Ok(Plan::TestBoot(crate::testboot::Request::from_args(a)?))
            }
            Some(Command::Plan(p)) if p.action == Action::TestBoot => {
                return Ok(Plan::TestBootPlan(p))
            }
            Some(Command::Plan(p)) if p.timeout.is_some() => {
                anyhow::bail!("--timeout goes with plan test-boot")
            }
            Some(cmd) => {
                if let Command::Plan(a) = cmd {
                    check_rounds(a)?;
                }
                return Ok(Plan::Fleet(cmd));
            }
            None => {}
        }
        if let Some(target) = &cli.target {
            ensure!(
                !cli.deltas.is_empty(),
                "--target needs at least one delta to apply"
            );
            return Ok(Plan::Target {
                deltas: cli.deltas.clone(),
                target: target.clone(),
                open: OpenOptions {
                    allow_outside_paths: cli.allow_outside_paths,
                },
                dry_run: cli.dry_run,
            });
        }
        if cli.switch_to_virtio {
            return Ok(Plan::SwitchToVirtio {
                uri: cli.connect.clone(),
                domain: cli
                    .domain
                    .clone()
                    .context("--switch-to-virtio needs --domain")?,
                show_only: cli.print_xml || cli.dry_run,
            });
        }
        Ok(Plan::Import(Box::new(ImportPlan::from_cli(cli)?)))
    }

    /// Do it.
    pub fn run(self) -> Result<()> {
        match self {
            Plan::Fleet(cmd) => crate::fleet::run(cmd),
            Plan::Probe(p) => crate::esx::probe::run(&p),
            Plan::Target {
                deltas,
                target,
                open,
                dry_run,
            } => {
                let chain = Chain::open_deltas(&deltas, &open)?;
                run_target(&chain, &target, &open, dry_run)
            }
            Plan::SwitchToVirtio {
                uri,
                domain,
                show_only,
            } => switch_to_virtio(uri.as_deref(), &domain, show_only),
            Plan::Import(plan) => {
                if crate::preflight::wanted(&plan) {
                    crate::preflight::dry_run(&plan)?;
                }
                crate::import::run(*plan)
            }
            Plan::TestBoot(req) => crate::testboot::run(&req),
            Plan::TestBootPlan(args) => crate::testboot::plan::run(args),
        }
    }
}

/// `--until-outage` and `--max-rounds` go with `plan sync`; the rounds leave room in the VM's
/// snapshot chain (stage 1 took one snapshot).
fn check_rounds(a: &PlanArgs) -> Result<()> {
    ensure!(
        a.until_outage.is_none() || a.action == Action::Sync,
        "--until-outage goes with plan sync (pre-copy rounds until a cutover's projected outage is under it)"
    );
    let most = crate::esx::host::MAX_CHAIN_BEFORE_OURS - 1;
    if let Some(n) = a.max_rounds {
        ensure!(
            (1..=most as u32).contains(&n),
            "--max-rounds {n}: from 1 to {most} (each round takes a migration snapshot; this tool takes none over a chain {} deep)",
            most + 1
        );
    }
    Ok(())
}

/// A shut-off domain's disks and NICs made virtio (MACs kept); `show_only` prints the XML.
fn switch_to_virtio(uri: Option<&str>, name: &str, show_only: bool) -> Result<()> {
    let conn = libvirt::connect(uri)?;
    let dom = conn
        .domain(name)?
        .with_context(|| format!("domain '{name}' does not exist on {}", conn.uri()))?;
    ensure!(
        !dom.is_active()?,
        "domain '{name}' is running: shut it down before changing its devices"
    );
    let xml = domain_xml::switch_to_virtio(&dom.xml()?)?;
    if show_only {
        crate::say_raw!("{xml}");
        return Ok(());
    }
    conn.define_domain(&xml)?;
    log::info!(
        "domain '{name}': disks and NICs are virtio now (MACs kept); start it with virsh -c {} start {name}",
        conn.uri()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const SSH: &str = "ssh://root@esx1/vmfs/volumes/ds1/web/web.vmx";

    fn plan(args: &[&str]) -> Result<()> {
        let cli =
            Cli::try_parse_from(std::iter::once("virt-vmdkimport").chain(args.iter().copied()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        Plan::from_cli(&cli).map(drop)
    }

    fn refused(args: &[&str], want: &str) {
        let e = plan(args).expect_err(&format!("{args:?} is refused"));
        assert!(format!("{e:#}").contains(want), "{want:?} in {e:#}");
    }

    fn import(extra: &[&str]) -> Vec<&'static str> {
        let mut v = vec!["--domain", "d", "--pool", "p"];
        v.extend(
            extra
                .iter()
                .map(|s| -> &'static str { Box::leak(s.to_string().into_boxed_str()) }),
        );
        v
    }

    #[test]
    fn nothing_is_opened_while_planning() {
        // Neither file exists: a plan names them, the run opens them.
        plan(&import(&["--flat", "/nonexistent/base.vmdk"])).unwrap();
        plan(&import(&["/nonexistent/vm-000001.vmdk"])).unwrap();
        plan(&import(&["--vmx", "/nonexistent/vm.vmx"])).unwrap();
        plan(&import(&["--vmx", SSH])).unwrap();
        plan(&import(&["--vmx", SSH, "--network", "VM Network=lan"])).unwrap();
        plan(&["--target", "/nonexistent/raw", "/nonexistent/d.vmdk"]).unwrap();
    }

    #[test]
    fn a_target_needs_a_delta_and_an_import_a_domain() {
        refused(&["--target", "/x/raw"], "needs at least one delta");
        refused(&["--pool", "p", "/x/d.vmdk"], "--domain NAME is required");
    }

    #[test]
    fn a_base_from_standard_input_needs_a_whole_sector_capacity() {
        refused(
            &import(&["--flat", "-"]),
            "give the disk's size with --capacity",
        );
        refused(
            &import(&["--flat", "-", "--capacity", "1000"]),
            "multiple of 512",
        );
        refused(
            &import(&["--flat", "-", "--capacity", "0"]),
            "multiple of 512",
        );
    }

    #[test]
    fn cutover_options_go_with_the_cutover() {
        for opt in [
            &["--hard-off"][..],
            &["--rollback-on-failure"],
            &["--remove-esx-snapshots"],
            &["--shutdown-timeout", "10s"],
        ] {
            let args = [&["--vmx", SSH, "--sync"][..], opt].concat();
            refused(&import(&args), "goes with --cutover");
        }
    }

    #[test]
    fn transfer_levers_are_checked_and_go_with_an_esxi_source() {
        let cli = Cli::try_parse_from(["virt-vmdkimport"]).unwrap();
        assert_eq!(
            cli.ssh_connections,
            crate::esx::transfer::DEFAULT_CONNECTIONS
        );
        for n in ["1", "4", "16"] {
            plan(&import(&["--vmx", SSH, "--ssh-connections", n])).unwrap();
        }
        for n in ["0", "17"] {
            refused(
                &import(&["--vmx", SSH, "--ssh-connections", n]),
                "from 1 to 16",
            );
        }
        plan(&import(&["--vmx", SSH, "--transport", "nc"])).unwrap();
        plan(&import(&[
            "--vmx",
            SSH,
            "--cutover",
            "--transport",
            "nc",
            "--nc-port",
            "0",
            "--nc-address",
            "10.0.0.5",
        ]))
        .unwrap();
        refused(
            &import(&["--vmx", SSH, "--nc-port", "9002"]),
            "go with --transport nc",
        );
        refused(
            &import(&["--vmx", SSH, "--nc-address", "10.0.0.5"]),
            "go with --transport nc",
        );
        refused(
            &import(&["--vmx", SSH, "--transport", "nc", "--nc-address=-oProxy=x"]),
            "an IP address or host name",
        );
        refused(
            &import(&["--vmx", SSH, "--transport", "nc", "--nc-address", "a b"]),
            "an IP address or host name",
        );
        for extra in [&["--ssh-connections", "2"][..], &["--transport", "nc"]] {
            refused(
                &import(&[&["--flat", "/x/base.vmdk"][..], extra].concat()),
                "go with --vmx ssh://",
            );
            refused(
                &import(&[&["--vmx", "/x/vm.vmx"][..], extra].concat()),
                "go with --vmx ssh://",
            );
        }
    }

    #[test]
    fn sync_and_cutover_are_refused_in_every_wrong_company() {
        refused(&import(&["--sync"]), "give --vmx ssh://");
        refused(
            &import(&["--sync", "--vmx", "/x/vm.vmx"]),
            "give --vmx ssh://",
        );
        refused(
            &import(&["--sync", "--vmx", SSH, "/x/d.vmdk"]),
            "give no delta files",
        );
        // clap itself refuses --flat beside --vmx.
        refused(
            &import(&["--sync", "--vmx", SSH, "--flat", "/x/b.vmdk"]),
            "cannot be used with",
        );
        refused(
            &import(&["--sync", "--vmx", SSH, "--reupload-base"]),
            "--reupload-base",
        );
        refused(
            &import(&["--cutover", "--vmx", SSH, "--no-start"]),
            "without --no-start",
        );
        refused(
            &import(&["--sync", "--vmx", SSH, "--jobs", "0"]),
            "at least 1",
        );
        refused(&import(&["--sync", "--vmx", "ssh://"]), "ssh://");
        refused(
            &import(&["--cutover", "--vmx", SSH, "--memory", "512"]),
            "change no settings",
        );
    }

    #[test]
    fn an_import_with_nothing_to_do_or_with_clashing_sources_is_refused() {
        refused(&import(&[]), "nothing to do");
        refused(
            &import(&["--vmx", "/x/vm.vmx", "/x/d.vmdk"]),
            "give no delta files",
        );
        refused(&import(&["--vmx", SSH, "/x/d.vmdk"]), "give no delta files");
        refused(
            &import(&["--reupload-base", "/x/d.vmdk"]),
            "--reupload-base goes with stage 1",
        );
        refused(
            &import(&["--reupload-base", "--flat", "/x/b.vmdk", "/x/d.vmdk"]),
            "--reupload-base goes with stage 1",
        );
    }

    #[test]
    fn network_mac_and_naming_options_are_checked_before_anything() {
        refused(
            &import(&["--vmx", SSH, "--network", "=lan"]),
            "expected VMNET=LIBVIRTNET",
        );
        refused(
            &import(&["--vmx", SSH, "--network", "VM Network="]),
            "expected VMNET=LIBVIRTNET",
        );
        refused(
            &import(&["--vmx", SSH, "--network", "a", "--network", "b"]),
            "--network given twice",
        );
        refused(
            &import(&["--vmx", SSH, "--mac", "52:54:00:zz:00:01"]),
            "--mac",
        );
        refused(
            &import(&["--vmx", SSH, "--os", "windows", "--nic-names", "kvm"]),
            "shapes Linux guests",
        );
        refused(
            &import(&[
                "--flat",
                "/x/b.vmdk",
                "--os",
                "windows",
                "--disk-bus",
                "virtio-blk",
            ]),
            "shapes Linux guests",
        );
        refused(
            &import(&["--flat", "/x/b.vmdk", "--nic-names", "vmware"]),
            "give --vmx",
        );
    }

    #[test]
    fn rounds_until_an_outage_go_with_plan_sync_and_leave_room_in_the_chain() {
        plan(&["plan", "sync", "p.toml", "--until-outage", "30s"]).unwrap();
        plan(&[
            "plan",
            "sync",
            "p.toml",
            "--until-outage",
            "1m",
            "--max-rounds",
            "3",
        ])
        .unwrap();
        refused(
            &["plan", "cutover", "p.toml", "--until-outage", "30s"],
            "--until-outage goes with plan sync",
        );
        refused(
            &["plan", "sync", "p.toml", "--max-rounds", "3"],
            "--until-outage",
        );
        refused(
            &[
                "plan",
                "sync",
                "p.toml",
                "--until-outage",
                "30s",
                "--max-rounds",
                "0",
            ],
            "from 1 to 28",
        );
        refused(
            &[
                "plan",
                "sync",
                "p.toml",
                "--until-outage",
                "30s",
                "--max-rounds",
                "29",
            ],
            "from 1 to 28",
        );
        refused(
            &["plan", "sync", "p.toml", "--until-outage", "0s"],
            "longer than zero",
        );
    }

    #[test]
    fn test_boot_options_are_checked_before_anything() {
        plan(&["test-boot", "--domain", "web1"]).unwrap();
        plan(&["test-boot", "--domain", "web1", "--cleanup"]).unwrap();
        plan(&[
            "plan",
            "test-boot",
            "/nonexistent/p.toml",
            "--timeout",
            "90s",
        ])
        .unwrap();
        refused(
            &[
                "test-boot",
                "--domain",
                "web1",
                "--cleanup",
                "--report",
                "/tmp/r",
            ],
            "--cleanup boots nothing",
        );
        refused(
            &["test-boot", "--domain", "web1", "--timeout", "2d"],
            "at most a day",
        );
        refused(
            &["test-boot", "--domain", "", "--timeout", "1m"],
            "give the domain's name",
        );
        refused(
            &["plan", "check", "/nonexistent/p.toml", "--timeout", "90s"],
            "--timeout goes with plan test-boot",
        );
        assert!(plan(&["test-boot", "--domain", "web1", "--timeout", "0s"]).is_err());
    }

    #[test]
    fn switch_to_virtio_names_its_domain() {
        plan(&["--switch-to-virtio", "--domain", "d"]).unwrap();
    }
}
