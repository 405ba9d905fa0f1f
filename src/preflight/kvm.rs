//! The preflight's KVM side, looked up in libvirt without changing it: the domain's name and state, free space in the pool against the disks' capacities, the networks and bridges the NICs go on, the machine type and firmware the host offers, and the trial start's outcome.

use super::finding::{Finding, Severity, Side, Source};
use crate::domain_xml::NetSource;
use crate::import::esxone::nic_problem;
use crate::import::trial::{host_cause, Problem};
use crate::import::ImportPlan;
use crate::libvirt::{self, Conn};
use crate::state::lifecycle::DomainPhase;
use crate::state::{metadata, ImportState};
use crate::units::human_bytes;
use crate::vmx::Firmware;

fn finding(severity: Severity, what: String, way_out: impl Into<String>) -> Finding {
    Finding::new(severity, Side::Kvm, what, way_out)
}

/// The KVM side of `plan`'s import (`source`: what the VMware side read), its findings added
/// to `out`.
pub(super) fn check(plan: &ImportPlan, source: &Source, out: &mut Vec<Finding>) {
    let conn = match libvirt::connect(plan.uri.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                format!("{e:#}"),
                "check the -c URI and that libvirtd runs there",
            ));
            return;
        }
    };
    let state = domain(&conn, plan, out);
    pool(&conn, plan, source, state.is_some(), out);
    networks(&conn, plan, source, out);
    machine(&conn, source, out);
    out.push(trial(state.as_ref()));
    out.push(test_boot(state.as_ref(), &plan.domain));
}

/// The domain's name: free, taken by another tool's domain, or this import's (its phase).
fn domain(conn: &Conn, plan: &ImportPlan, out: &mut Vec<Finding>) -> Option<ImportState> {
    let (name, uri) = (&plan.domain, conn.uri());
    let dom = match conn.domain(name) {
        Ok(Some(d)) => d,
        Ok(None) => {
            out.push(finding(
                Severity::Info,
                format!("domain '{name}' does not exist on {uri}: stage 1 defines it"),
                "-",
            ));
            return None;
        }
        Err(e) => {
            out.push(finding(Severity::Error, format!("{e:#}"), "check libvirtd"));
            return None;
        }
    };
    if dom.is_active().unwrap_or(false) {
        out.push(finding(
            Severity::Error,
            format!("domain '{name}' is running on {uri}: nothing is written under a live guest"),
            format!("shut it down (virsh -c {uri} shutdown {name}), or give another --domain name"),
        ));
    }
    match metadata::read(&dom) {
        Ok(None) => {
            out.push(finding(Severity::Warning, format!("the name '{name}' is taken on {uri} by a domain without import state (other tooling's): stage 1 writes into its disks and keeps its definition"), "give another --domain name unless that domain was made for this VM"));
            None
        }
        Ok(Some(st)) if st.phase() == DomainPhase::HandedOver && plan.reupload_base => {
            out.push(finding(
                Severity::Warning,
                format!("domain '{name}' on {uri} was cut over already: --reupload-base destroys what its guest wrote on KVM and starts over from the base"),
                "go on only if that is wanted (the run says what it destroys)",
            ));
            Some(st)
        }
        Ok(Some(st)) if st.phase() == DomainPhase::HandedOver => {
            out.push(finding(
                Severity::Error,
                format!("domain '{name}' on {uri} was cut over already: its guest runs on KVM"),
                "give another --domain name for a new import (or --reupload-base to start this one over)",
            ));
            Some(st)
        }
        Ok(Some(st)) => {
            out.push(finding(
                Severity::Info,
                format!("domain '{name}' on {uri}: {}", st.phase()),
                "-",
            ));
            Some(st)
        }
        Err(e) => {
            out.push(finding(
                Severity::Error,
                format!("domain '{name}': {e:#}"),
                "check the domain's metadata (virt-vmdkimport status)",
            ));
            None
        }
    }
}

/// The pool: there and active, and (unless an earlier stage 1 made the volumes) free space for
/// the disks' capacities.
fn pool(conn: &Conn, plan: &ImportPlan, source: &Source, made: bool, out: &mut Vec<Finding>) {
    let pool = match conn.pool(&plan.pool) {
        Ok(p) => p,
        Err(e) => {
            let uri = conn.uri();
            out.push(finding(Severity::Error, format!("{e:#}"), format!("name a pool that exists with --pool (virsh -c {uri} pool-list --all), or define and start one")));
            return;
        }
    };
    if made || source.capacities.is_empty() {
        return;
    }
    let kind = pool
        .raw()
        .xml_desc(0)
        .ok()
        .and_then(|x| crate::xmltree::parse(&x).ok())
        .and_then(|e| e.get_attr("type").map(str::to_string))
        .unwrap_or_default();
    match pool.raw().info() {
        Ok(info) => out.push(space(
            &plan.pool,
            &kind,
            source.capacities.iter().sum(),
            info.available,
        )),
        Err(e) => out.push(finding(
            Severity::Warning,
            format!(
                "storage pool '{}': its free space cannot be read: {e}",
                plan.pool
            ),
            "check it with virsh pool-info",
        )),
    }
}

/// `need` bytes of disks against `available` bytes free in pool `name` of type `kind`: file
/// pools hold sparse volumes (a base's unwritten runs take no space), block pools do not.
pub fn space(name: &str, kind: &str, need: u64, available: u64) -> Finding {
    let sparse = matches!(kind, "dir" | "fs" | "netfs");
    let what = format!(
        "storage pool '{name}' ({kind}): {} free for disks of {} in all",
        human_bytes(available),
        human_bytes(need)
    );
    match (need <= available, sparse) {
        (true, _) => finding(Severity::Info, what, "-"),
        (false, true) => finding(
            Severity::Warning,
            format!("{what}: enough only if the disks' unwritten parts stay sparse"),
            "free space in the pool, or give --pool one with room",
        ),
        (false, false) => finding(
            Severity::Error,
            format!("{what}: not enough"),
            "free space in the pool (or grow its volume group), or give --pool one with room",
        ),
    }
}

/// Each NIC's network or bridge, as the domain would get it.
fn networks(conn: &Conn, plan: &ImportPlan, source: &Source, out: &mut Vec<Finding>) {
    let wanted: Vec<(String, NetSource)> = match &source.vmx {
        Some(cfg) => cfg
            .nics
            .iter()
            .map(|n| {
                let vmnet = n.network_name.as_deref();
                (
                    format!(
                        "ethernet{} ({})",
                        n.index,
                        vmnet.unwrap_or("no network name")
                    ),
                    plan.net_source(vmnet),
                )
            })
            .collect(),
        // Without a .vmx the domain gets a NIC only when one was asked for.
        None if plan.network.is_some() || plan.bridge.is_some() || plan.mac.is_some() => {
            vec![("the NIC".to_string(), plan.net_source(None))]
        }
        None => Vec::new(),
    };
    for (nic, src) in wanted {
        let on = match &src {
            NetSource::Network(n) => format!("libvirt network '{n}'"),
            NetSource::Bridge(b) => format!("bridge '{b}'"),
        };
        out.push(match nic_problem(conn, &src) {
            Some(p) => finding(
                Severity::Error,
                format!("{nic} goes on the {on}: {}", problem_word(&p)),
                host_cause(&p, conn.uri()).unwrap_or_default(),
            ),
            None => finding(Severity::Info, format!("{nic} goes on the {on}"), "-"),
        });
    }
}

fn problem_word(p: &Problem) -> &'static str {
    match p {
        Problem::NoNetwork(_) | Problem::NoBridge(_) => "it does not exist",
        Problem::NetworkInactive(_) => "it is not active",
        _ => "refused",
    }
}

/// The machine type and firmware the domain gets, against what the host's QEMU offers.
fn machine(conn: &Conn, source: &Source, out: &mut Vec<Finding>) {
    let legacy = source.vmx.as_ref().is_some_and(|c| c.legacy_machine);
    let firmware = source.vmx.as_ref().map_or(Firmware::Bios, |c| c.firmware);
    let machine = if legacy { "pc" } else { "q35" };
    let virt = conn.domain_type();
    let caps = conn
        .raw()
        .domain_capabilities(None, None, Some(machine), Some(virt), 0);
    out.push(machine_finding(
        machine,
        firmware,
        virt,
        caps.as_deref().ok(),
        conn.uri(),
    ));
}

/// `machine` and `firmware` against the host's domain capabilities for them (`caps`, None when
/// the host refused the machine type), under `virt` (`kvm` or `qemu`).
pub fn machine_finding(
    machine: &str,
    firmware: Firmware,
    virt: &str,
    caps: Option<&str>,
    uri: &str,
) -> Finding {
    let fw = match firmware {
        Firmware::Bios => "BIOS",
        Firmware::Efi { secure_boot: true } => "UEFI with secure boot",
        Firmware::Efi { .. } => "UEFI",
    };
    let what = format!("machine {machine}, {fw}, {virt}");
    let Some(caps) = caps else {
        let p = Problem::NoMachine(machine.to_string());
        return finding(
            Severity::Error,
            format!("{what}: the host's QEMU has no machine type '{machine}'"),
            host_cause(&p, uri).unwrap_or_default(),
        );
    };
    if matches!(firmware, Firmware::Efi { .. }) && !caps.contains("<value>efi</value>") {
        return finding(
            Severity::Error,
            format!("{what}: the host offers no UEFI firmware"),
            host_cause(&Problem::Firmware, uri).unwrap_or_default(),
        );
    }
    let secure = caps
        .split("<enum name='secure'>")
        .nth(1)
        .and_then(|r| r.split("</enum>").next())
        .is_some_and(|e| e.contains("<value>yes</value>"));
    if firmware == (Firmware::Efi { secure_boot: true }) && !secure {
        return finding(
            Severity::Error,
            format!("{what}: the host's firmware offers no secure boot"),
            host_cause(&Problem::Smm, uri).unwrap_or_default(),
        );
    }
    if virt == "qemu" {
        return finding(
            Severity::Warning,
            format!(
                "{what}: the host has no KVM: the guest runs emulated (TCG), many times slower"
            ),
            "run the domain on a host with KVM (/dev/kvm)",
        );
    }
    finding(Severity::Info, format!("{what}: offered by the host"), "-")
}

/// What stage 1's trial start proved (the domain started paused), or that it is still to come.
pub fn trial(state: Option<&ImportState>) -> Finding {
    let staged = state.is_some_and(ImportState::every_base_uploaded);
    match state.and_then(|s| s.trial.as_ref()) {
        Some(t) if t.started => finding(Severity::Info, format!("the trial start passed: cpu {}{}, {} fallback(s)", t.cpu, t.hyperv.as_ref().map(|h| format!(", hyperv {h}")).unwrap_or_default(), t.fallbacks.len()), "-"),
        Some(t) => finding(Severity::Error, format!("the trial start failed (last tried: cpu {})", t.cpu), "see the reason in virt-vmdkimport status --domain; the next run starts it again once the host is fixed"),
        None if staged => finding(Severity::Warning, "no trial start recorded: the domain was never started".to_string(), "the next --sync or --cutover starts it paused first"),
        None => finding(Severity::Info, "stage 1 ends with a trial start (paused: no guest code runs)".to_string(), "-"),
    }
}

/// The last test boot's verdict (`virt-vmdkimport test-boot`), or that none was made.
pub fn test_boot(state: Option<&ImportState>, domain: &str) -> Finding {
    let way =
        |d: &str| format!("virt-vmdkimport test-boot --domain {d} (the volumes are not written)");
    match state.and_then(|s| s.test_boot.as_ref()) {
        Some(t) if t.verdict == "booted" => finding(Severity::Info, format!("the test boot at {} booted: {}", t.at, t.evidence), "-"),
        Some(t) if t.verdict == "failed" => finding(Severity::Error, format!("the test boot at {} failed: {}", t.at, t.evidence), format!("fix the guest on VMware (drivers, fstab, boot device) or the domain here, sync, and test again: {}", way(domain))),
        Some(t) => finding(Severity::Warning, format!("the test boot at {} gave no verdict ({}): {}", t.at, t.verdict, t.evidence), format!("look at its screenshots, or boot it again with a longer --timeout: {}", way(domain))),
        None if state.is_some_and(ImportState::every_base_uploaded) => finding(Severity::Warning, "no test boot yet: nothing has run the guest's own code".to_string(), way(domain)),
        None => finding(Severity::Info, "a test boot is possible once stage 1 is done".to_string(), "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_an_error_on_block_pools_and_a_warning_on_sparse_file_pools() {
        const G: u64 = 1 << 30;
        assert_eq!(space("p", "dir", 10 * G, 20 * G).severity, Severity::Info);
        assert_eq!(
            space("p", "dir", 30 * G, 20 * G).severity,
            Severity::Warning
        );
        let lvm = space("vg0", "logical", 30 * G, 20 * G);
        assert_eq!(lvm.severity, Severity::Error);
        assert!(
            lvm.what.contains("20.0 GiB free for disks of 30.0 GiB"),
            "{lvm:?}"
        );
    }

    #[test]
    fn a_machine_or_firmware_the_host_lacks_is_an_error_naming_the_fix() {
        let efi = Firmware::Efi { secure_boot: false };
        let caps = "<enum name='firmware'><value>efi</value></enum>";
        assert_eq!(
            machine_finding("q35", efi, "kvm", Some(caps), "u").severity,
            Severity::Info
        );
        let no_efi = machine_finding("q35", efi, "kvm", Some("<os/>"), "u");
        assert!(no_efi.severity == Severity::Error && no_efi.way_out.contains("ovmf"));
        let no_pc = machine_finding("pc", Firmware::Bios, "kvm", None, "u");
        assert!(no_pc.severity == Severity::Error && no_pc.what.contains("no machine type 'pc'"));
        assert_eq!(
            machine_finding("q35", Firmware::Bios, "qemu", Some(caps), "u").severity,
            Severity::Warning
        );
        let sb = Firmware::Efi { secure_boot: true };
        let no_sb = machine_finding("q35", sb, "kvm", Some(caps), "u");
        assert!(
            no_sb.severity == Severity::Error && no_sb.what.contains("no secure boot"),
            "{no_sb:?}"
        );
        let with_sb =
            format!("{caps}<enum name='secure'><value>yes</value><value>no</value></enum>");
        assert_eq!(
            machine_finding("q35", sb, "kvm", Some(&with_sb), "u").severity,
            Severity::Info
        );
    }

    #[test]
    fn the_trial_start_recorded_is_said_and_a_failed_one_blocks() {
        use crate::state::TrialRecord;
        assert_eq!(trial(None).severity, Severity::Info);
        let mut st = ImportState {
            trial: Some(TrialRecord {
                started: false,
                cpu: "host-model".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(trial(Some(&st)).severity, Severity::Error);
        st.trial.as_mut().unwrap().started = true;
        assert!(trial(Some(&st)).what.contains("passed: cpu host-model"));
    }

    #[test]
    fn the_last_test_boot_is_said_and_a_failed_one_blocks() {
        let mut st = ImportState::default();
        assert_eq!(test_boot(None, "web1").severity, Severity::Info);
        st.test_boot = Some(crate::state::TestBootRecord {
            at: "2026-12-07T19:00:00Z".into(),
            verdict: "failed".into(),
            evidence: "Gave up waiting for root file system device.".into(),
            ms: 42_000,
        });
        let f = test_boot(Some(&st), "web1");
        assert_eq!(f.severity, Severity::Error);
        assert!(f.what.contains("Gave up waiting"), "{}", f.what);
        assert!(
            f.way_out.contains("test-boot --domain web1"),
            "{}",
            f.way_out
        );
        st.test_boot.as_mut().unwrap().verdict = "unknown".into();
        assert_eq!(test_boot(Some(&st), "web1").severity, Severity::Warning);
        st.test_boot.as_mut().unwrap().verdict = "booted".into();
        assert_eq!(test_boot(Some(&st), "web1").severity, Severity::Info);
    }
}
