//! The trial start: the domain started paused (no guest code runs) and destroyed at once, stepping down the CPU and Hyper-V ladder when the host refuses a setting, so a domain that cannot start is found in stage 1 and not during the outage.

use anyhow::{bail, Context, Result};

use super::shape::{self, Hyperv};
use crate::domain_xml::CpuMode;
use crate::libvirt::{Conn, Dom};
use crate::state::{Fallback, ImportState, TrialRecord};
use crate::xmltree::{self, Element, Node};

/// Which settings were asked for explicitly: those are tried alone, never replaced.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixed {
    pub cpu: bool,
    pub hyperv: bool,
}

/// Why a start failed, from the daemon's error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The CPU setting (`failed to set MSR 0x10a`, a CPU feature the host lacks).
    Cpu,
    /// A Hyper-V enlightenment the host's KVM lacks.
    Hyperv,
    NoNetwork(String),
    NetworkInactive(String),
    NoBridge(String),
    /// No OVMF build fits the domain's firmware request.
    Firmware,
    NoMachine(String),
    /// Secure boot needs SMM, which some (nested) KVMs lack.
    Smm,
    /// QEMU exited with no reason this tool knows (libvirt sometimes misses QEMU's message):
    /// the CPU and Hyper-V settings are the likely cause, so the ladder is tried.
    QemuExited,
    Other,
}

/// The first `'...'`-quoted word after `marker` in `text`.
fn quoted_after(text: &str, marker: &str) -> Option<String> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let start = rest.find('\'')? + 1;
    let len = rest[start..].find('\'')?;
    Some(rest[start..start + len].to_string())
}

/// Whether QEMU exited with nothing after libvirt's "...monitor" (libvirt sometimes reads
/// QEMU's message too late), or was stopped by the daemon itself ("terminating on signal 15
/// from pid N (libvirtd)": the daemon gave up on the start, seen on busy hosts with a CPU
/// that starts at once when tried again), as opposed to a reason of its own.
fn qemu_gave_no_reason(lower: &str) -> bool {
    [
        "process exited while connecting to monitor",
        "closed the monitor",
    ]
    .iter()
    .any(|m| {
        lower.find(m).is_some_and(|i| {
            // What QEMU said, line by line (joined with " | "): nothing, or warnings only.
            lower[i + m.len()..]
                .split(" | ")
                .map(|l| l.trim_matches(|c: char| c == ':' || c.is_whitespace()))
                .all(|l| {
                    l.is_empty()
                        || l.contains("warning:")
                        || (l.contains("terminating on signal") && l.ends_with("(libvirtd)"))
                })
        })
    })
}

/// Read the daemon's error text (libvirt 9.0's wording, seen on this project's hosts).
pub fn classify(text: &str) -> Problem {
    let lower = text.to_ascii_lowercase();
    let q = |marker: &str| quoted_after(text, marker).unwrap_or_default();
    if lower.contains("no network with matching name") {
        Problem::NoNetwork(q("matching name"))
    } else if text.contains("network '") && lower.contains("is not active") {
        Problem::NetworkInactive(q("network"))
    } else if lower.contains("cannot get interface mtu on")
        || (lower.contains("bridge") && lower.contains("no such device"))
    {
        Problem::NoBridge(q("on").trim().to_string())
    } else if lower.contains("unable to find any firmware") || lower.contains("ovmf") {
        Problem::Firmware
    } else if lower.contains("does not support machine type") {
        Problem::NoMachine(q("machine type"))
    } else if lower.contains("system management mode") {
        Problem::Smm
    } else if qemu_gave_no_reason(&lower) {
        Problem::QemuExited
    } else if lower.contains("hyperv") || lower.contains("hyper-v") || lower.contains("hv-") {
        Problem::Hyperv
    } else if lower.contains("msr") || lower.contains("cpu") {
        Problem::Cpu
    } else {
        Problem::Other
    }
}

/// The daemon's text on one line (QEMU's stderr comes in several).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Whether this tool defined the domain: recorded, or for states from before that was
/// recorded, inferred from the volume names stage 1 gives (`DOMAIN-diskN`).
pub fn defined_here(st: Option<&ImportState>, domain: &str) -> bool {
    let Some(st) = st else { return false };
    st.defined_by_tool.unwrap_or_else(|| {
        !st.disks.is_empty()
            && st
                .disks
                .iter()
                .enumerate()
                .all(|(i, d)| d.volume == format!("{domain}-disk{i}"))
    })
}

/// Keep what an earlier state knew about the domain when stage 1 builds the state again.
pub fn carry_over(st: &mut ImportState, old: Option<&ImportState>, domain: &str) {
    st.defined_by_tool = Some(defined_here(old, domain));
    if let Some(old) = old {
        st.os = old.os.clone();
        st.trial = old.trial.clone();
    }
}

/// Test hook: the trial start behaves as on a host whose first CPU rung that starts is the one
/// named (`host-passthrough`, `host-model` or `default`), whatever this host's KVM does, so
/// the tests can take the ladder each way on any host. It works through the domain's `<cpu>`,
/// so the daemon really starts or refuses each rung: a host rung above the named one requires
/// both Intel's and AMD's virtualisation features (`vmx` and `svm`, `check='full'`: no x86 CPU
/// has both, and libvirt refuses the start), and every host rung has `arch-capabilities`
/// disabled (the MSR 0x10a that nested hosts cannot set, the reason host-passthrough and
/// host-model do not start on them). Only domains this tool defined are touched; the features
/// stay in the definition, so a later real start behaves the same. See doc/testing.md.
pub const TEST_CPU_ENV: &str = "VMDKIMPORT_TEST_CPU_STARTS";

/// The rung [`TEST_CPU_ENV`] names, when it is set.
fn forced_first_rung() -> Result<Option<CpuMode>> {
    let Some(v) = std::env::var_os(TEST_CPU_ENV) else {
        return Ok(None);
    };
    Ok(Some(match v.to_str() {
        Some("host-passthrough") => CpuMode::HostPassthrough,
        Some("host-model") => CpuMode::HostModel,
        Some("default") => CpuMode::Default,
        _ => bail!(
            "{TEST_CPU_ENV}={}: expected host-passthrough, host-model or default",
            v.to_string_lossy()
        ),
    }))
}

/// A CPU mode's place on the ladder; None for a named model, which is not on it.
fn rung(mode: &CpuMode) -> Option<u8> {
    match mode {
        CpuMode::HostPassthrough => Some(0),
        CpuMode::HostModel => Some(1),
        CpuMode::Default => Some(2),
        CpuMode::Model(_) => None,
    }
}

/// The `<feature>` elements [`TEST_CPU_ENV`] writes: (policy, name).
const FORCED_FEATURES: [(&str, &str); 3] = [
    ("disable", "arch-capabilities"),
    ("require", "vmx"),
    ("require", "svm"),
];

/// Give the domain's host CPU rung the features [`TEST_CPU_ENV`] asks for, with `first` the
/// first rung that is to start. True when the XML changed.
fn force_rung(dom: &mut Element, first: &CpuMode) -> bool {
    let mode = shape::cpu_mode(dom);
    let (Some(now), Some(first)) = (rung(&mode), rung(first)) else {
        return false;
    };
    if !matches!(mode, CpuMode::HostPassthrough | CpuMode::HostModel) {
        return false;
    }
    let before = xmltree::to_string(dom);
    let cpu = dom
        .find_mut("cpu")
        .expect("a host CPU mode is written in <cpu>");
    cpu.children.retain(|n| {
        !matches!(n, Node::Element(e) if e.name == "feature"
            && FORCED_FEATURES.contains(&(e.get_attr("policy").unwrap_or(""), e.get_attr("name").unwrap_or(""))))
    });
    let features = if now < first {
        cpu.set_attr("check", "full");
        &FORCED_FEATURES[..]
    } else {
        &FORCED_FEATURES[..1]
    };
    for (policy, name) in features {
        let f = Element::new("feature")
            .attr("policy", policy)
            .attr("name", name);
        cpu.children.push(Node::Element(f));
    }
    xmltree::to_string(dom) != before
}

/// One rung down for `problem`, when allowed: (what, from, to), with `dom` edited.
fn step(
    dom: &mut Element,
    problem: &Problem,
    fixed: Fixed,
) -> Result<Option<(&'static str, String, String)>> {
    if *problem == Problem::QemuExited {
        return match step(dom, &Problem::Cpu, fixed)? {
            Some(s) => Ok(Some(s)),
            None => step(dom, &Problem::Hyperv, fixed),
        };
    }
    match problem {
        Problem::Cpu if !fixed.cpu => {
            let now = shape::cpu_mode(dom);
            let Some(next) = shape::cpu_next(&now) else {
                return Ok(None);
            };
            shape::set_cpu_mode(dom, &next);
            Ok(Some(("cpu", shape::cpu_name(&now), shape::cpu_name(&next))))
        }
        Problem::Hyperv if !fixed.hyperv => {
            let Some(now) = shape::hyperv(dom) else {
                return Ok(None);
            };
            let Some(next) = now.next() else {
                return Ok(None);
            };
            shape::set_hyperv(dom, next)?;
            Ok(Some(("hyperv", now.name().into(), next.name().into())))
        }
        _ => Ok(None),
    }
}

/// Start `dom` paused and destroy it. When it does not start and `ours` (this tool defined it),
/// step down the ladder for what the daemon's error names (CPU: host-passthrough, host-model,
/// the hypervisor's default; Hyper-V: the fixed list, passthrough, none), redefine, and try
/// again. Each step is printed with the daemon's error and recorded in `st.trial` (also when
/// the domain does not start in the end). On failure, an error naming the cause and its fix.
pub fn prove(
    conn: &Conn,
    dom: &mut Dom,
    fixed: Fixed,
    ours: bool,
    st: &mut ImportState,
) -> Result<()> {
    let forced = if ours { forced_first_rung()? } else { None };
    let mut xml = xmltree::parse(&dom.xml()?).context("reading the domain XML")?;
    let mut rec = st.trial.take().unwrap_or_default();
    let had_hyperv = shape::hyperv(&xml).is_some() || rec.hyperv.is_some();
    let fixed = if ours {
        fixed
    } else {
        Fixed {
            cpu: true,
            hyperv: true,
        }
    };
    let result = climb(conn, dom, &mut xml, forced.as_ref(), fixed, &mut rec)?;
    rec.cpu = shape::cpu_name(&shape::cpu_mode(&xml));
    rec.hyperv = had_hyperv.then(|| shape::hyperv(&xml).unwrap_or(Hyperv::Off).name().into());
    rec.started = result.is_ok();
    st.trial = Some(rec.clone());
    if let Err((problem, text)) = result {
        bail!(
            "{}",
            failure(conn, dom.name(), &xml, &problem, &text, fixed, ours)
        );
    }
    say_started(dom, &rec);
    Ok(())
}

/// The ladder: start `dom` paused and destroy it; when the start fails, step down for what
/// the daemon's error names (each step recorded in `rec` and the domain redefined from
/// `xml`), until it starts or no step is left: then the problem and the daemon's text.
/// `forced` is the test hook's first rung ([`TEST_CPU_ENV`]).
fn climb(
    conn: &Conn,
    dom: &mut Dom,
    xml: &mut Element,
    forced: Option<&CpuMode>,
    fixed: Fixed,
    rec: &mut TrialRecord,
) -> Result<Result<(), (Problem, String)>> {
    // A start that fails for no known reason is tried once more before it counts: on a busy
    // host QEMU now and then dies early ("domain is no longer running").
    let mut retried = false;
    loop {
        // Interrupted: nothing is started (the paused domain of a start already made is
        // destroyed below before the loop looks here again).
        crate::interrupt::check()?;
        if forced.is_some_and(|first| force_rung(xml, first)) {
            *dom = conn
                .define_domain(&xmltree::to_string(xml))
                .map_err(|e| explain_define(conn, e))?;
        }
        let began = std::time::Instant::now();
        let Err(e) = dom.start_paused() else {
            rec.start_ms = Some(began.elapsed().as_millis() as u64);
            dom.destroy()
                .context("trial start: destroying the paused domain")?;
            return Ok(Ok(()));
        };
        let text = one_line(e.message());
        let problem = classify(&text);
        if matches!(problem, Problem::QemuExited | Problem::Other) && !retried {
            log::info!("trial start: the start failed for a reason this tool does not know ({text}); trying once more");
            retried = true;
            continue;
        }
        match step(xml, &problem, fixed)? {
            Some((what, from, to)) => {
                retried = false;
                log::info!("trial start: {what} {from} does not start on this host ({text}); trying {what} {to}");
                rec.fallbacks.push(Fallback {
                    what: what.into(),
                    from,
                    to,
                    error: text,
                });
                *dom = conn
                    .define_domain(&xmltree::to_string(xml))
                    .map_err(|e| explain_define(conn, e))?;
            }
            None => return Ok(Err((problem, text))),
        }
    }
}

/// The trial start's success, with the fallbacks it took.
fn say_started(dom: &Dom, rec: &TrialRecord) {
    let changed = if rec.fallbacks.is_empty() {
        String::new()
    } else {
        let steps: Vec<_> = rec
            .fallbacks
            .iter()
            .map(|f| format!("{} {} -> {}", f.what, f.from, f.to))
            .collect();
        format!("; redefined after falling back: {}", steps.join(", "))
    };
    log::info!(
        "trial start: domain '{}' starts (started paused, no guest code ran, destroyed again) with CPU {}{}{changed}",
        dom.name(),
        rec.cpu,
        rec.hyperv.as_deref().map(|h| format!(", Hyper-V {h}")).unwrap_or_default()
    );
}

/// What the host lacks, and how to fix it, for problems outside the domain's CPU settings.
pub(crate) fn host_cause(problem: &Problem, uri: &str) -> Option<String> {
    Some(match problem {
        Problem::NoNetwork(n) => format!("the libvirt network '{n}' does not exist on {uri}: define and start it (virsh -c {uri} net-define FILE; virsh -c {uri} net-start {n}), or name one that exists (virsh -c {uri} net-list --all) with --network"),
        Problem::NetworkInactive(n) => format!("the libvirt network '{n}' is not active: start it (virsh -c {uri} net-start {n}; net-autostart {n} keeps it up after a reboot)"),
        Problem::NoBridge(b) => format!("the host bridge '{b}' does not exist: create it (ip link add {b} type bridge; ip link set {b} up, or in the host's network configuration), or name one that exists with --bridge"),
        Problem::Firmware => "no UEFI firmware (OVMF) on this host fits the domain: install it (Debian: apt-get install ovmf) or check the domain's <os firmware> requests".to_string(),
        Problem::NoMachine(m) => format!("this host's QEMU has no machine type '{m}': install a QEMU that has it, or give the domain a machine type this one lists (virsh -c {uri} capabilities)"),
        Problem::Smm => "this host's KVM has no System Management Mode, which UEFI secure boot needs (nested hosts often lack it): run the domain on a host whose KVM has SMM, or without secure boot".to_string(),
        _ => return None,
    })
}

/// A definition the daemon refused, with the fix when its reason is one the trial knows (a
/// machine type the host's QEMU lacks is refused at define time, not at start).
pub fn explain_define(conn: &Conn, e: anyhow::Error) -> anyhow::Error {
    match host_cause(&classify(&format!("{e:#}")), conn.uri()) {
        Some(cause) => e.context(format!("stage 1: {cause}")),
        None => e,
    }
}

/// The stage-1 error for a domain that does not start: the cause, its fix, the daemon's text.
fn failure(
    conn: &Conn,
    name: &str,
    xml: &Element,
    problem: &Problem,
    text: &str,
    fixed: Fixed,
    ours: bool,
) -> String {
    let uri = conn.uri();
    let cpu = shape::cpu_name(&shape::cpu_mode(xml));
    let qname = sh(name);
    let log = format!(" (QEMU gave no reason; see /var/log/libvirt/qemu/{name}.log)");
    let (problem, log) = match problem {
        Problem::QemuExited => (&Problem::Cpu, log),
        p => (p, String::new()),
    };
    let why = host_cause(problem, uri).unwrap_or_else(|| match problem {
        Problem::Cpu if !ours => format!("CPU {cpu} does not start here; the domain was defined by other tooling, so this tool does not change it: change its <cpu> (virsh -c {uri} edit {qname})"),
        Problem::Cpu if fixed.cpu => format!("CPU {cpu}, as --cpu asked, does not start here, and an explicit --cpu is never replaced: choose another (host-passthrough, host-model, default, or a model), e.g. virt-vmdkimport -c {uri} --domain {qname} --cpu default"),
        Problem::Cpu => format!("no CPU on the ladder starts (host-passthrough, host-model, default; now {cpu})"),
        Problem::Hyperv if !ours => format!("a Hyper-V enlightenment does not start here; the domain was defined by other tooling, so this tool does not change it: change its <hyperv> (virsh -c {uri} edit {qname})"),
        Problem::Hyperv if fixed.hyperv => "Hyper-V passthrough, as --hyperv-passthrough asked, does not start here and is not replaced: leave the option out to let the ladder choose".to_string(),
        Problem::Hyperv => "no Hyper-V setting on the ladder starts (fixed list, passthrough, none)".to_string(),
        _ => "libvirt gave a reason this tool does not know".to_string(),
    });
    format!(
        "stage 1: domain '{name}' does not start (trial start, paused: no guest code ran): {why}. libvirt said: {text}{log}. \
         The domain stays defined and shut off; after fixing this, check with: virsh -c {uri} start --paused {qname} && virsh -c {uri} destroy {qname}"
    )
}

/// `s` as one shell word: as is when it is plain, else in single quotes.
fn sh(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:/@+=,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Stage 2's start, the last check: when it fails, the error says that the disks are complete
/// and marked applied, why the start failed, and the exact command to retry. That command is
/// this one again, not `virsh start`: the hand-over is recorded only when this tool starts the
/// domain, and without that record a later stage 2 could write over what the guest wrote.
pub fn start_after_stage_two(conn: &Conn, dom: &Dom) -> Result<()> {
    let mut text = String::new();
    // A QEMU that exits with no reason of its own (see `qemu_gave_no_reason`) is started once
    // more, as in the trial: a second try costs a second, an operator's retry minutes.
    for attempt in 0..2 {
        let Err(e) = dom.raw().create() else {
            return Ok(());
        };
        text = one_line(e.message());
        if attempt == 0 && classify(&text) == Problem::QemuExited {
            log::info!(
                "the start failed for a reason this tool does not know ({text}); trying once more"
            );
            continue;
        }
        break;
    }
    let fix = host_cause(&classify(&text), conn.uri())
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let again: Vec<String> = std::env::args().map(|a| sh(&a)).collect();
    bail!(
        "domain '{}' did not start: {text}{fix}. Its disks are completely written and marked applied: nothing is lost. \
         Once the cause is fixed, rerun the same command (it writes the same bytes again, records the hand-over and starts the domain): {}",
        dom.name(),
        again.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's texts as libvirt 9.0 gave them on this project's (nested) host.
    #[test]
    fn the_daemons_errors_are_classified() {
        let cases = [
            ("internal error: process exited while connecting to monitor: 2026-11-27T08:33:03.884623Z qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69", Problem::Cpu),
            ("internal error: qemu unexpectedly closed the monitor: 2026-11-27T08:33:08.090980Z qemu-system-x86_64: kernel doesn't allow setting HyperV VP_INDEX", Problem::Hyperv),
            ("Network not found: no network with matching name 'nonexist'", Problem::NoNetwork("nonexist".into())),
            ("Requested operation is not valid: network 'lan' is not active", Problem::NetworkInactive("lan".into())),
            ("Cannot get interface MTU on 'brnonexist': No such device", Problem::NoBridge("brnonexist".into())),
            ("operation failed: Unable to find any firmware to satisfy 'efi'", Problem::Firmware),
            ("unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not support machine type 'pc-q35-99.0'", Problem::NoMachine("pc-q35-99.0".into())),
            ("internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: System Management Mode not supported by this hypervisor.", Problem::Smm),
            ("Cannot access storage file '/x/y.img': No such file or directory", Problem::Other),
            ("internal error: process exited while connecting to monitor", Problem::QemuExited),
            ("internal error: qemu unexpectedly closed the monitor: 2026-11-27T09:40:06.985607Z qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0] | 2026-11-27T09:40:07.038753Z qemu-system-x86_64: terminating on signal 15 from pid 20440 (libvirtd)", Problem::QemuExited),
            ("internal error: process exited while connecting to monitor: 2026-11-27T09:15:09.709806Z qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.pni [bit 0]", Problem::QemuExited),
            ("internal error: qemu unexpectedly closed the monitor: 2026-11-27T08:47:41.228136Z qemu-system-x86_64: -blockdev {\"driver\":\"file\"}: 'file' driver requires '/p/blk' to be a regular file", Problem::Other),
        ];
        for (text, want) in cases {
            assert_eq!(classify(text), want, "{text}");
        }
    }

    /// The hook's features for each rung, and nothing but them touched.
    #[test]
    fn the_forced_ladder_fails_the_rungs_above_the_first_that_starts() {
        let cpu_of = |mode: &str, first: &CpuMode| {
            let mut d = xmltree::parse(&format!(
                "<domain><cpu mode='{mode}' check='none'><topology sockets='1' dies='1' cores='1' threads='1'/>\
                 <feature policy='disable' name='x2apic'/></cpu></domain>"
            ))
            .unwrap();
            let changed = force_rung(&mut d, first);
            assert!(!force_rung(&mut d, first), "a second pass changes nothing");
            let cpu = d.find("cpu").unwrap();
            let feats: Vec<String> = cpu
                .elements()
                .filter(|e| e.name == "feature")
                .map(|e| {
                    format!(
                        "{}:{}",
                        e.get_attr("policy").unwrap(),
                        e.get_attr("name").unwrap()
                    )
                })
                .collect();
            (
                changed,
                cpu.get_attr("check").map(str::to_owned),
                feats.join(" "),
            )
        };
        let fails = (
            true,
            Some("full".to_owned()),
            "disable:x2apic disable:arch-capabilities require:vmx require:svm".to_owned(),
        );
        let starts = (
            true,
            Some("none".to_owned()),
            "disable:x2apic disable:arch-capabilities".to_owned(),
        );
        assert_eq!(
            cpu_of("host-passthrough", &CpuMode::HostPassthrough),
            starts
        );
        assert_eq!(cpu_of("host-passthrough", &CpuMode::HostModel), fails);
        assert_eq!(cpu_of("host-model", &CpuMode::HostModel), starts);
        assert_eq!(cpu_of("host-model", &CpuMode::Default), fails);
        let mut d = xmltree::parse(
            "<domain><cpu><topology sockets='1' dies='1' cores='1' threads='1'/></cpu></domain>",
        )
        .unwrap();
        assert!(
            !force_rung(&mut d, &CpuMode::Default),
            "the default takes no features"
        );
    }

    #[test]
    fn names_in_printed_commands_are_one_shell_word() {
        assert_eq!(sh("web1"), "web1");
        assert_eq!(sh("qemu:///system"), "qemu:///system");
        assert_eq!(sh("a b&'c"), r"'a b&'\''c'");
    }

    #[test]
    fn a_state_from_before_the_record_is_ours_when_its_volumes_have_stage_1s_names() {
        let mut st = ImportState::default();
        st.disks.push(crate::state::DiskState {
            volume: "web1-disk0".into(),
            ..Default::default()
        });
        assert!(defined_here(Some(&st), "web1"));
        assert!(!defined_here(Some(&st), "web2"));
        assert!(!defined_here(None, "web1"));
        st.defined_by_tool = Some(false);
        assert!(!defined_here(Some(&st), "web1"));
    }
}
