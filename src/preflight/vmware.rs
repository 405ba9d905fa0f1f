//! The preflight's VMware side: the `.vmx` (disks that cannot come over, vTPM, encryption, devices left behind, the guest OS's mapping), each disk's chain, and on ESXi the snapshot chain's room and VMware Tools, read without changing anything there.

use std::collections::BTreeMap;
use std::path::Path;

use super::finding::{Finding, Severity, Side, Source};
use crate::esx::host::{chain_depth, ESXI_MAX_CHAIN, MAX_CHAIN_BEFORE_OURS};
use crate::esx::vimcmd::Power;
use crate::esx::vm::Vm;
use crate::import::ImportPlan;
use crate::vmdk::{self, BaseImage};
use crate::vmx::{self, is_true, OsFamily, VmxConfig};

fn finding(severity: Severity, what: String, way_out: impl Into<String>) -> Finding {
    Finding::new(severity, Side::Vmware, what, way_out)
}

/// The VMware side of `plan`'s import, its findings added to `out`; what the KVM side needs
/// from it (the `.vmx`, the disks' capacities).
pub(super) fn check(plan: &ImportPlan, out: &mut Vec<Finding>) -> Source {
    match plan.vmx_source() {
        Some((p, true)) => esx(plan, &p.to_string_lossy(), out),
        Some((p, false)) => local(plan, p, out),
        None => flat(plan, out),
    }
}

/// `--flat`: the base's capacity (or `--capacity` for standard input); nothing for stage 2.
fn flat(plan: &ImportPlan, out: &mut Vec<Finding>) -> Source {
    let mut source = Source::default();
    match plan.base_source() {
        Some((None, Some(capacity))) => source.capacities.push(capacity),
        Some((Some(path), _)) => match BaseImage::open(path, &plan.open) {
            Ok(b) => source.capacities.push(b.capacity),
            Err(e) => out.push(unreadable_disk(
                &path.display().to_string(),
                &format!("{e:#}"),
            )),
        },
        _ => {}
    }
    source
}

/// A `.vmx` on this machine: its findings, each disk's chain resolved to its base.
fn local(plan: &ImportPlan, path: &Path, out: &mut Vec<Finding>) -> Source {
    let name = path.display().to_string();
    let read = std::fs::read(path)
        .map_err(anyhow::Error::from)
        .and_then(|text| Ok((vmx::vmx_keys(&text, &name)?.0, vmx::parse_vmx(path)?)));
    let (keys, cfg) = match read {
        Ok(r) => r,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                format!("cannot be read: {e:#}"),
                "give --vmx the VM's .vmx (copied or mounted from the datastore)",
            ));
            return Source::default();
        }
    };
    out.extend(from_vmx(&cfg, &keys, false, plan.copies_independent()));
    let mut capacities = Vec::new();
    for disk in &cfg.disks {
        let base = vmdk::resolve_chain(&disk.file_name, &plan.open)
            .and_then(|c| BaseImage::open(&c.base, &plan.open));
        match base {
            Ok(b) => capacities.push(b.capacity),
            Err(e) => out.push(unreadable_disk(&disk.slot(), &format!("{e:#}"))),
        }
    }
    Source {
        vmx: Some(cfg),
        capacities,
    }
}

/// A `.vmx` on an ESXi host: the VM found, its power, `.vmx`, snapshots and Tools asked for
/// with queries only, each disk's chain walked to its base.
fn esx(plan: &ImportPlan, url: &str, out: &mut Vec<Finding>) -> Source {
    let outside = plan.open.allow_outside_paths;
    let vm = match Vm::find(url, true, false, outside, Default::default()) {
        Ok(vm) => vm,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                format!("{e:#}"),
                "check the ssh:// URL and that root can log in with a key (doc/esxi.md)",
            ));
            return Source::default();
        }
    };
    let name = vm.url().with_path(&vm.url().path);
    let read = vm.vmx_text().and_then(|text| {
        let keys = vmx::vmx_keys(&text, &name)?.0;
        Ok((keys, vmx::parse_vmx_str(&text, &name)?))
    });
    let (keys, cfg) = match read {
        Ok(r) => r,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                format!("{e:#}"),
                "check the .vmx on the host",
            ));
            return Source::default();
        }
    };
    out.extend(from_vmx(&cfg, &keys, true, plan.copies_independent()));
    esx_state(&vm, out);
    let capacities = esx_disks(&vm, &cfg, outside, out);
    Source {
        vmx: Some(cfg),
        capacities,
    }
}

/// The VM's snapshot chain and VMware Tools, as the host answers its queries.
fn esx_state(vm: &Vm, out: &mut Vec<Finding>) {
    match vm.snapshots() {
        Ok(s) => out.push(snapshot_room(&vm.ds_path, chain_depth(&s))),
        Err(e) => out.push(finding(
            Severity::Error,
            format!("{e:#}"),
            "check hostd on the host",
        )),
    }
    let power = match vm.power() {
        Ok(p) => p,
        Err(e) => {
            out.push(finding(
                Severity::Error,
                format!("{e:#}"),
                "check hostd on the host",
            ));
            return;
        }
    };
    let tools = match power {
        Power::On => match vm.tools() {
            Ok(t) => Some(t),
            Err(e) => {
                out.push(finding(
                    Severity::Warning,
                    format!("{e:#}"),
                    "check hostd on the host",
                ));
                return;
            }
        },
        _ => None,
    };
    out.push(tools_finding(&vm.ds_path, power, tools));
}

/// Each disk's chain on the host walked to its base: the capacities of those that can be read.
fn esx_disks(vm: &Vm, cfg: &VmxConfig, outside: bool, out: &mut Vec<Finding>) -> Vec<u64> {
    let folder = crate::esx::ssh::folder(&vm.url().path).to_string();
    let mut capacities = Vec::new();
    for disk in cfg.disks.iter().filter(|d| !d.independent) {
        let walked = crate::esx::remote_join(&folder, &disk.file_name.to_string_lossy(), outside)
            .and_then(|top| crate::esx::walk_chain(&vm.transfer, &top, outside));
        match walked {
            Ok(c) => capacities.push(c.base.capacity),
            Err(e) => out.push(unreadable_disk(&disk.slot(), &format!("{e:#}"))),
        }
    }
    capacities
}

/// The findings a `.vmx` gives by itself (the VM's name is in its report's rows) (`esx`: read on an ESXi host, where independent disks
/// are not taken; `copy_independent`: `--copy-independent` was given).
pub fn from_vmx(
    cfg: &VmxConfig,
    keys: &BTreeMap<String, String>,
    esx: bool,
    copy_independent: bool,
) -> Vec<Finding> {
    let mut out = Vec::new();
    disks(cfg, keys, esx, copy_independent, &mut out);
    shared_buses(keys, &mut out);
    security(keys, &mut out);
    left_behind(cfg, keys, &mut out);
    out.push(guest_os(cfg));
    out
}

/// Independent, multi-writer and raw disks.
fn disks(
    cfg: &VmxConfig,
    keys: &BTreeMap<String, String>,
    esx: bool,
    copy_independent: bool,
    out: &mut Vec<Finding>,
) {
    for d in &cfg.disks {
        let slot = d.slot();
        let file = d.file_name.display();
        let key = |f: &str| {
            keys.get(&format!("{slot}.{f}"))
                .map(|v| v.to_ascii_lowercase())
        };
        if d.independent {
            out.push(match (esx, copy_independent) {
                (true, _) => finding(Severity::Error, format!("disk {slot} ({file}) is independent: in no snapshot, and locked while the VM runs"), "make it dependent in vSphere (VM powered off), or copy the VM's files and import the local .vmx with --copy-independent"),
                (false, false) => finding(Severity::Error, format!("disk {slot} ({file}) is independent: in no snapshot, so no delta brings it up to date"), "give --copy-independent to copy it whole after the VM is shut down (in the outage), or make it dependent in vSphere"),
                (false, true) => finding(Severity::Warning, format!("disk {slot} ({file}) is independent: copied whole after the VM is shut down, in the outage"), "make it dependent in vSphere to have it copied before the outage"),
            });
        }
        if key("sharing").is_some_and(|s| s.contains("multi")) {
            out.push(finding(Severity::Error, format!("disk {slot} ({file}) is multi-writer: other VMs write it too, and VMware snapshots no such disk"), "migrate the cluster's shared disks on their own (a <shareable/> volume on KVM) and remove the disk from this VM first"));
        }
        if key("devicetype").is_some_and(|t| t == "rawdisk") {
            out.push(rdm(&slot, &file.to_string()));
        }
    }
}

/// An RDM: a SAN LUN mapped into the VM, not a file.
fn rdm(slot: &str, file: &str) -> Finding {
    rdm_said(format!("disk {slot} ({file}) is a raw device mapping (RDM): a LUN, not a file on the datastore (a physical RDM cannot be snapshotted)"))
}

fn rdm_said(what: String) -> Finding {
    finding(
        Severity::Error,
        what,
        "present the LUN to the KVM host and attach it to the domain as a block device, or turn the RDM into a virtual disk in vSphere (migrate its storage) first",
    )
}

/// SCSI controllers whose bus is shared with other VMs (`scsiN.sharedBus`).
fn shared_buses(keys: &BTreeMap<String, String>, out: &mut Vec<Finding>) {
    for (k, v) in keys {
        let Some(ctl) = k.strip_suffix(".sharedbus") else {
            continue;
        };
        if !v.eq_ignore_ascii_case("none") && !v.is_empty() {
            out.push(finding(Severity::Error, format!("controller {ctl} shares its bus ({v}) with other VMs: its disks are shared, and VMware snapshots no such VM"), "migrate the cluster's shared disks on their own (a <shareable/> volume on KVM) and remove the shared controller from this VM first"));
        }
    }
}

/// A vTPM, and VM encryption.
fn security(keys: &BTreeMap<String, String>, out: &mut Vec<Finding>) {
    if keys.get("vtpm.present").is_some_and(|v| is_true(v)) {
        out.push(finding(Severity::Warning, "has a vTPM: its keys stay with VMware (BitLocker asks for its recovery key, sealed secrets are lost)".to_string(), "have the BitLocker recovery keys at hand (or suspend BitLocker) before the cutover; give the domain a TPM (swtpm) after"));
    }
    if keys.contains_key("encryption.keysafe") || keys.contains_key("encryption.data") {
        out.push(finding(
            Severity::Error,
            "the VM is encrypted (VM Encryption): its disks on the datastore are ciphertext"
                .to_string(),
            "decrypt it in vSphere (VM Options > Encryption, VM powered off), then migrate",
        ));
    }
}

/// CD-ROMs, USB, serial and other devices a domain does not get.
fn left_behind(cfg: &VmxConfig, keys: &BTreeMap<String, String>, out: &mut Vec<Finding>) {
    for cd in &cfg.cdroms {
        out.push(finding(
            Severity::Info,
            format!("CD-ROM {cd} is not migrated"),
            "attach the ISO to the domain after the migration if the guest needs it",
        ));
    }
    let present = |prefix: &str| -> Vec<String> {
        keys.iter()
            .filter(|(k, v)| {
                k.starts_with(prefix)
                    && k.ends_with(".present")
                    && k.matches('.').count() == 1
                    && is_true(v)
            })
            .map(|(k, _)| k.trim_end_matches(".present").to_string())
            .collect()
    };
    let kinds: [(&str, Severity, &str); 6] = [
        ("usb", Severity::Warning, "attach the host's USB devices (a licence dongle) to the domain after the migration (virsh attach-device)"),
        ("ehci", Severity::Warning, "attach the host's USB devices to the domain after the migration (virsh attach-device)"),
        ("serial", Severity::Warning, "give the domain a <serial> of the kind the guest uses (a console, a device on a named pipe) after the migration"),
        ("parallel", Severity::Info, "give the domain a <parallel> if the guest uses it"),
        ("floppy", Severity::Info, "attach the floppy image to the domain if the guest needs it"),
        ("pcipassthru", Severity::Warning, "pass the host's device through to the domain (a <hostdev>) after the migration"),
    ];
    for (prefix, severity, way_out) in kinds {
        for dev in present(prefix) {
            out.push(finding(severity, format!("{dev} is not migrated"), way_out));
        }
    }
}

/// The guest OS and the template it maps to.
fn guest_os(cfg: &VmxConfig) -> Finding {
    let g = &cfg.guest_os;
    if g.is_empty() {
        return finding(
            Severity::Warning,
            "no guestOS: treated as a Linux guest (virtio devices)".to_string(),
            "give --os windows for a Windows guest; test-boot the copy before the cutover",
        );
    }
    match cfg.os {
        OsFamily::Windows => finding(Severity::Info, format!("guestOS {g:?}: a Windows guest ({})", if cfg.legacy_machine { "pc machine, IDE disks, e1000" } else { "q35, SATA disks, e1000e" }), "for virtio later: --driver-disk in stage 2, then --switch-to-virtio"),
        OsFamily::Linux if vmx::known_linux(g) => finding(Severity::Info, format!("guestOS {g:?}: a Linux guest (virtio devices)"), "-"),
        OsFamily::Linux => finding(Severity::Warning, format!("guestOS {g:?} is neither Windows nor a known Linux: given the Linux (virtio) template"), "give --os windows or --os linux as the guest is; test-boot the copy before the cutover"),
    }
}

/// The snapshot chain `depth` levels deep against the limit this tool keeps below ESXi's.
pub fn snapshot_room(vm: &str, depth: usize) -> Finding {
    let room = MAX_CHAIN_BEFORE_OURS.saturating_sub(depth);
    let what = format!("{vm}: its snapshot chain is {depth} deep; this tool takes none over {MAX_CHAIN_BEFORE_OURS} (ESXi's limit is {ESXI_MAX_CHAIN})");
    match room {
        0 => finding(Severity::Error, what, "remove or consolidate the VM's snapshots in vSphere (or vim-cmd vmsvc/snapshot.remove) first"),
        1..=3 => finding(Severity::Warning, format!("{what}: room for {room} more (stage 1 takes one, each --sync one)"), "remove snapshots the VM no longer needs, or plan fewer --sync rounds"),
        _ => finding(Severity::Info, format!("{what}: room for {room} more (stage 1 takes one, each --sync one)"), "-"),
    }
}

/// The VM's power and VMware Tools (`tools`: running, and the status `get.guest` gave, asked
/// only of a running VM) against what the cutover's clean shutdown needs.
pub fn tools_finding(vm: &str, power: Power, tools: Option<(bool, String)>) -> Finding {
    match (power, tools) {
        (Power::Suspended, _) => finding(Severity::Error, format!("{vm}: the VM is suspended: its memory holds state its disks do not"), "resume it or power it off first"),
        (Power::Off, _) => finding(Severity::Info, format!("{vm}: the VM is powered off: its disks are read as they are, no shutdown needed"), "-"),
        (Power::On, Some((true, _))) => finding(Severity::Info, format!("{vm}: VMware Tools run: the cutover can ask for a clean guest shutdown"), "-"),
        (Power::On, Some((false, status))) => finding(Severity::Warning, format!("{vm}: VMware Tools do not run in the guest (toolsRunningStatus {status}): the cutover cannot ask for a clean shutdown"), "start VMware Tools (open-vm-tools) in the guest, or shut it down from inside before --cutover, or give --cutover --hard-off (a power cut)"),
        (Power::On, None) => finding(Severity::Warning, format!("{vm}: whether VMware Tools run is not known"), "check with vim-cmd vmsvc/get.guest before the cutover"),
    }
}

/// A disk whose chain cannot be read (`error`): an RDM when the descriptor says so.
pub fn unreadable_disk(slot: &str, error: &str) -> Finding {
    let lower = error.to_ascii_lowercase();
    if ["rawdevicemap", "vmfsrdm", "vmfsraw"]
        .iter()
        .any(|k| lower.contains(k))
    {
        return rdm_said(format!("disk {slot} is a raw device mapping (RDM), a LUN and not a file on the datastore: {error}"));
    }
    finding(
        Severity::Error,
        format!("disk {slot} cannot be read: {error}"),
        "check the disk's files on the datastore (vmkfstools -e DISK.vmdk checks a chain)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings(text: &[u8], esx: bool, copy_independent: bool) -> Vec<Finding> {
        let keys = vmx::vmx_keys(text, "t.vmx").unwrap().0;
        let cfg = vmx::parse_vmx_str(text, "t.vmx").unwrap();
        from_vmx(&cfg, &keys, esx, copy_independent)
    }

    /// The finding whose text has `what`, with its severity.
    fn one<'a>(all: &'a [Finding], what: &str) -> &'a Finding {
        let hits: Vec<&Finding> = all.iter().filter(|f| f.what.contains(what)).collect();
        assert_eq!(hits.len(), 1, "one finding with {what:?} in {all:#?}");
        hits[0]
    }

    const TROUBLED: &[u8] = include_bytes!("../../tests/fixtures/preflight/troubled.vmx");
    const CLEAN: &[u8] = include_bytes!("../../tests/fixtures/preflight/clean.vmx");

    #[test]
    fn each_trouble_of_a_vmx_is_a_finding_with_its_severity_and_way_out() {
        let all = findings(TROUBLED, false, false);
        let sev = |what| one(&all, what).severity;
        assert_eq!(
            sev("disk scsi0:1 (troubled_1.vmdk) is independent"),
            Severity::Error
        );
        assert!(one(&all, "is independent")
            .way_out
            .contains("--copy-independent"));
        assert_eq!(
            sev("disk scsi0:2 (troubled_2.vmdk) is multi-writer"),
            Severity::Error
        );
        assert_eq!(
            sev("disk scsi0:3 (troubled_3.vmdk) is a raw device mapping"),
            Severity::Error
        );
        assert_eq!(
            sev("controller scsi1 shares its bus (physical)"),
            Severity::Error
        );
        assert_eq!(sev("has a vTPM"), Severity::Warning);
        assert_eq!(sev("the VM is encrypted"), Severity::Error);
        assert_eq!(
            sev("CD-ROM sata0:0: /vmfs/volumes/ds1/iso/install.iso is not migrated"),
            Severity::Info
        );
        assert_eq!(sev("usb is not migrated"), Severity::Warning);
        assert_eq!(sev("usb_xhci is not migrated"), Severity::Warning);
        assert_eq!(sev("serial0 is not migrated"), Severity::Warning);
        assert_eq!(
            sev("guestOS \"freebsd12-64\" is neither Windows nor a known Linux"),
            Severity::Warning
        );
        // floppy0.present = "FALSE": nothing to say.
        assert!(all.iter().all(|f| !f.what.contains("floppy")), "{all:#?}");
        assert!(all
            .iter()
            .all(|f| f.side == Side::Vmware && !f.way_out.is_empty()));
    }

    #[test]
    fn independent_disks_are_refused_over_ssh_and_copied_whole_locally_when_asked() {
        let esx = findings(TROUBLED, true, true);
        let f = one(&esx, "is independent");
        assert_eq!(f.severity, Severity::Error);
        assert!(f.way_out.contains("make it dependent"), "{f:?}");
        let copied = findings(TROUBLED, false, true);
        let f = one(&copied, "is independent");
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.what.contains("in the outage"), "{f:?}");
    }

    #[test]
    fn a_clean_vmx_gives_only_its_guest_mapping() {
        let all = findings(CLEAN, true, false);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].severity, Severity::Info);
        assert!(all[0]
            .what
            .contains("guestOS \"debian12-64\": a Linux guest"));
        let windows = findings(b"guestOS = \"windows2019srv-64\"\n", false, false);
        assert!(one(&windows, "a Windows guest (q35").severity == Severity::Info);
        let none = findings(b"memsize = \"64\"\n", false, false);
        assert_eq!(one(&none, "no guestOS").severity, Severity::Warning);
    }

    #[test]
    fn the_snapshot_chain_is_measured_against_the_limit_two_below_esxis() {
        assert_eq!(snapshot_room("vm", 0).severity, Severity::Info);
        assert!(snapshot_room("vm", 0).what.contains("room for 29 more"));
        assert_eq!(snapshot_room("vm", 26).severity, Severity::Warning);
        assert!(snapshot_room("vm", 26).what.contains("room for 3 more"));
        assert_eq!(snapshot_room("vm", 29).severity, Severity::Error);
        assert_eq!(snapshot_room("vm", 40).severity, Severity::Error);
    }

    #[test]
    fn a_running_guest_without_tools_is_a_warning_with_the_way_out() {
        let no = tools_finding(
            "vm",
            Power::On,
            Some((false, "guestToolsNotRunning".into())),
        );
        assert_eq!(no.severity, Severity::Warning);
        assert!(no.what.contains("guestToolsNotRunning") && no.way_out.contains("--hard-off"));
        let yes = tools_finding("vm", Power::On, Some((true, "guestToolsRunning".into())));
        assert_eq!(yes.severity, Severity::Info);
        assert_eq!(
            tools_finding("vm", Power::Off, None).severity,
            Severity::Info
        );
        assert_eq!(
            tools_finding("vm", Power::Suspended, None).severity,
            Severity::Error
        );
    }

    #[test]
    fn an_unreadable_rdm_is_named_an_rdm() {
        let e = "ssh://esx/vm/vm_1.vmdk: the base is not one flat extent (createType vmfsPassthroughRawDeviceMap)";
        assert!(unreadable_disk("scsi0:1", e)
            .what
            .contains("raw device mapping (RDM)"));
        let other = unreadable_disk("scsi0:0", "vm.vmdk: cannot stat");
        assert!(other
            .what
            .starts_with("disk scsi0:0 cannot be read: vm.vmdk"));
    }
}
