//! End to end on the real libvirtd: stage 1's trial start (the CPU ladder, explicit --cpu, a missing network, bridge or firmware), the shaping options for an existing domain, and stage 2's failed start.

mod util;

use std::process::Output;

use util::fixtures::{Kind, SECTOR};
use util::import::*;
use util::ladder;
use util::libvirt::{fill_volume, read_volume, unique_name, TestPool};
use util::vmximport::TestNet;
use util::{assert_same, qemu_read, Folder, BASE_CID};

/// Every test disk: 8 MiB.
const CAP: u64 = 8 * MIB;
const SECTORS: u64 = CAP / SECTOR;
const SMALL: &[&str] = &["--memory", "128"];

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The tool's trial record (`<trial>`) in the metadata.
fn trial_elem(meta: &str) -> Elem {
    elements(meta)
        .into_iter()
        .find(|e| e.path.ends_with("trial"))
        .unwrap_or_else(|| panic!("no <trial> in {meta}"))
}

/// A plain stage 1 (no --cpu) ends on the first CPU of the ladder that starts, `want`, says
/// for each rung it left that it did not start and libvirt's reason, records the same, and
/// the domain then really starts. Whatever this host's KVM does: the rungs before `want` are
/// made to fail (`Import::cpu_starts`, doc/testing.md).
fn a_plain_stage1_falls_back_to(want: &'static str) {
    let failed = ladder::failing_before(want);
    let tp = TestPool::new("ladder");
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, "ladder").cpu_starts(want);
    let out = im.stage1(&f.path("base.vmdk"), SMALL);
    let text = ok(&out, "stage 1");
    for rung in failed {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("trial start: cpu {rung} does not start")))
            .unwrap_or_else(|| panic!("no fallback line for {rung}:\n{text}"));
        let reason = line
            .split_once("on this host (")
            .and_then(|(_, r)| r.rsplit_once("); trying cpu"))
            .map(|(r, _)| r);
        assert!(
            reason.is_some_and(|r| r.len() > 10),
            "the daemon's reason: {line}"
        );
    }
    assert!(
        text.contains("starts (started paused") && text.contains(&format!("with CPU {want}")),
        "says which CPU it starts with ({want}):\n{text}"
    );
    assert!(!im.is_active(), "the trial domain is destroyed again");
    let meta = im.metadata();
    let t = trial_elem(&meta);
    assert_eq!(
        (t.attr("started"), t.attr("cpu")),
        (Some("yes"), Some(want)),
        "{meta}"
    );
    assert_eq!(
        elements(&meta)
            .iter()
            .filter(|e| e.path.ends_with("fallback"))
            .count(),
        failed.len(),
        "{meta}"
    );
    assert_same(
        &im.read(),
        &std::fs::read(f.path("base-flat.vmdk")).unwrap(),
        "volume",
    );
    virsh(&im.uri, &["start", &im.domain]);
    assert!(im.is_active(), "the domain stage 1 defined starts");
    virsh(&im.uri, &["destroy", &im.domain]);
}

#[test]
fn a_plain_stage1_keeps_host_passthrough_where_it_starts() {
    a_plain_stage1_falls_back_to("host-passthrough");
}

#[test]
fn a_plain_stage1_falls_back_to_host_model_where_host_passthrough_fails() {
    a_plain_stage1_falls_back_to("host-model");
}

#[test]
fn a_plain_stage1_falls_back_to_the_default_cpu_where_no_host_cpu_starts() {
    a_plain_stage1_falls_back_to("default");
}

/// An explicit --cpu that does not start (host-passthrough, made to fail) fails stage 1 with
/// one clear line (nothing started, the CPU not replaced, the upload recorded);
/// `--domain D --cpu default` then redefines the shut-off domain and its trial start passes.
#[test]
fn an_explicit_cpu_the_host_refuses_fails_stage1_and_cpu_default_then_reshapes_it() {
    let tp = TestPool::new("explicit");
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, "explicit").cpu_starts("default");
    let out = im.stage1(
        &f.path("base.vmdk"),
        &[SMALL, &["--cpu", "host-passthrough"]].concat(),
    );
    let line = refused(&out, &["never replaced"]);
    assert!(
        line.contains("stage 1") && line.contains("--cpu default"),
        "{line}"
    );
    assert!(
        !stdout(&out).contains("trying cpu"),
        "no fallback: {}",
        show(&out)
    );
    assert!(!im.is_active(), "nothing runs");
    let mode = "mode='host-passthrough'";
    assert!(
        im.xml().contains(mode),
        "the asked CPU is kept: {}",
        im.xml()
    );
    let meta = im.metadata();
    assert_eq!(
        state_elem(&meta).unwrap().attr("base-uploaded"),
        Some("yes"),
        "{meta}"
    );
    assert_eq!(trial_elem(&meta).attr("started"), Some("no"), "{meta}");

    let out = im.run(&[&im.common()[..], &["--cpu".into(), "default".into()]].concat());
    let text = ok(&out, "--cpu default for the existing domain");
    assert!(text.contains("redefined with CPU default"), "{text}");
    assert!(text.contains("with CPU default"), "trial passes: {text}");
    assert!(!im.is_active());
    let meta = im.metadata();
    assert_eq!(
        (
            trial_elem(&meta).attr("started"),
            trial_elem(&meta).attr("cpu")
        ),
        (Some("yes"), Some("default")),
        "{meta}"
    );
    assert!(!im.xml().contains(mode), "CPU changed");
}

/// A network or bridge that does not exist is a stage-1 error naming it and the fix.
fn missing_nic_backend_is_refused(tag: &str, option: &str, fix: &str) {
    let tp = TestPool::new(tag);
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, tag);
    let missing = format!("vknone{}", std::process::id());
    let out = im.stage1(
        &f.path("base.vmdk"),
        &[SMALL, &["--cpu", "default", option, &missing]].concat(),
    );
    let line = refused(&out, &[fix]);
    assert!(
        line.contains(&missing) && line.contains("stage 1"),
        "{line}"
    );
    assert!(!im.is_active(), "nothing runs");
}

#[test]
fn a_missing_network_is_refused_in_stage1_naming_it() {
    missing_nic_backend_is_refused("nonet", "--network", "net-start");
}

#[test]
fn a_missing_bridge_is_refused_in_stage1_naming_it() {
    missing_nic_backend_is_refused("nobr", "--bridge", "ip link add");
}

/// Shaping options for a domain this tool defined and that is shut off are applied (the
/// domain redefined, the trial start run again); given again they change nothing.
#[test]
fn shaping_options_are_applied_to_our_shut_off_domain_and_proved() {
    let tp = TestPool::new("reshape");
    let net = TestNet::isolated("reshape");
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, "reshape");
    ok(
        &im.stage1(
            &f.path("base.vmdk"),
            &[SMALL, &["--cpu", "default"]].concat(),
        ),
        "stage 1",
    );
    let args = [
        "--memory",
        "192",
        "--vcpus",
        "2",
        "--network",
        &net.name,
        "--mac",
        "52:54:00:0a:0b:0c",
    ];
    let cmd = [&im.common()[..], &args.map(Into::into)[..]].concat();
    let text = ok(&run(&cmd), "shaping options");
    assert!(
        text.contains("redefined with memory 192 MiB, 2 vCPUs")
            && text.contains(&format!("network '{}'", net.name))
            && text.contains("MAC 52:54:00:0a:0b:0c"),
        "{text}"
    );
    assert!(
        text.contains("trial start: domain") && text.contains("starts"),
        "{text}"
    );
    let xml = im.xml();
    for want in [
        "<memory unit='KiB'>196608</memory>",
        ">2</vcpu>",
        "52:54:00:0a:0b:0c",
        &net.name,
    ] {
        assert!(xml.contains(want), "{want}: {xml}");
    }
    let again = ok(&run(&cmd), "the same options again");
    assert!(!again.contains("redefined"), "nothing to change: {again}");
    assert!(!im.is_active());

    // Running: refused, saying why, and the definition stays.
    virsh(&im.uri, &["start", &im.domain]);
    let before = im.xml();
    let cmd = [&im.common()[..], &["--memory".into(), "256".into()]].concat();
    let line = refused(&run(&cmd), &["is running"]);
    assert!(line.contains("shut-off domain"), "{line}");
    assert_eq!(im.xml(), before, "definition unchanged");
    virsh(&im.uri, &["destroy", &im.domain]);
}

/// Shaping options whose new definition does not start (an explicit --cpu made to fail) are
/// refused, and the previous definition and import state are back byte for byte.
#[test]
fn shaping_that_does_not_start_puts_the_previous_definition_back() {
    let tp = TestPool::new("reshape-back");
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, "reshape-back").cpu_starts("default");
    let stage1 = [SMALL, &["--cpu", "default"]].concat();
    ok(&im.stage1(&f.path("base.vmdk"), &stage1), "stage 1");
    let (xml, state) = (im.xml(), im.state());
    let args = ["--memory", "192", "--cpu", "host-model"].map(Into::into);
    let line = refused(
        &im.run(&[&im.common()[..], &args[..]].concat()),
        &["previous definition is back"],
    );
    assert!(line.contains("host-model"), "{line}");
    assert_eq!(im.xml(), xml, "virsh dumpxml after the refused shaping");
    assert_eq!(
        im.state(),
        state,
        "virsh metadata after the refused shaping"
    );
    assert!(!im.is_active());
}

/// A domain as other tooling defines it: its volume `vol`, no NIC.
fn foreign_domain(
    tp: &TestPool,
    name: &str,
    vol: &vmdkimport::libvirt::Vol,
    os_attr: &str,
    os_inner: &str,
) -> String {
    format!(
        "<domain type='{}'><name>{name}</name><memory unit='MiB'>96</memory><vcpu>1</vcpu>\
         <os{os_attr}><type arch='x86_64' machine='pc'>hvm</type>{os_inner}</os><features><acpi/></features>\
         <devices><disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
         <source pool='{}' volume='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        tp.conn.domain_type(),
        tp.name,
        vol.name()
    )
}

/// Shaping options for a domain other tooling defined are refused, saying so, before
/// anything is written; the same stage 1 without them goes through.
#[test]
fn shaping_options_are_refused_for_a_domain_other_tooling_defined() {
    let tp = TestPool::new("foreign-shape");
    let f = Folder::base(SECTORS);
    let vol = tp.volume("root", CAP);
    fill_volume(&vol, 0x5a);
    let name = unique_name("foreign-shape");
    tp.define_domain(&foreign_domain(&tp, &name, &vol, "", ""));
    let im = Import::existing(&tp, &name);
    let xml = im.xml();
    let out = im.stage1(
        &f.path("base.vmdk"),
        &["--memory", "512", "--cpu", "host-model"],
    );
    let line = refused(&out, &["other tooling"]);
    assert!(
        line.contains("memory 512 MiB") && line.contains("virsh"),
        "{line}"
    );
    assert!(
        read_volume(&vol).iter().all(|&b| b == 0x5a),
        "volume written"
    );
    assert_eq!(im.xml(), xml, "the domain's XML");
    ok(
        &im.stage1(&f.path("base.vmdk"), &[]),
        "stage 1 without them",
    );
    let out = run(&[&im.common()[..], &["--vcpus".into(), "4".into()]].concat());
    refused(&out, &["other tooling"]);
}

/// A domain whose UEFI firmware request no OVMF build on the host meets (secure boot on the
/// pc machine) is a stage-1 error naming OVMF.
#[test]
fn a_firmware_request_no_ovmf_meets_is_refused_in_stage1() {
    let tp = TestPool::new("noovmf");
    let f = Folder::base(SECTORS);
    let vol = tp.volume("root", CAP);
    let name = unique_name("noovmf");
    let fw = "<firmware><feature enabled='yes' name='secure-boot'/></firmware>";
    tp.define_domain(&foreign_domain(&tp, &name, &vol, " firmware='efi'", fw));
    let im = Import::existing(&tp, &name);
    let out = im.stage1(&f.path("base.vmdk"), &[]);
    let line = refused(&out, &["ovmf"]);
    assert!(
        line.contains("stage 1") && line.contains("firmware"),
        "{line}"
    );
    assert!(!im.is_active());
}

/// The network stage 1 proved is gone by stage 2: the start fails, the error says the disk
/// is complete and marked applied and gives the command to retry (the same command); the
/// volume holds the chain, the state records the delta as applied and not handed over. With
/// the network back, that command starts the domain.
#[test]
fn a_failed_start_in_stage2_leaves_the_disk_complete_and_applied_and_says_how_to_start() {
    let tp = TestPool::new("s2start");
    let f = Folder::base(SECTORS);
    let grains = [(3, Kind::Data), (40, Kind::Data)];
    let delta = cowd_child(&f, "vm-000001", 0x61, (BASE_CID, "base.vmdk"), 8, &grains);
    let want = qemu_read(&delta);
    let im = Import::new(&tp, "s2start");
    let net = TestNet::isolated("s2start");
    let stage1 = [SMALL, &["--cpu", "default", "--network", &net.name]].concat();
    ok(&im.stage1(&f.path("base.vmdk"), &stage1), "stage 1");
    virsh(&im.uri, &["net-destroy", &net.name]);

    let out = im.stage2(&[&delta], &[]);
    let line = refused(&out, &["did not start"]);
    assert!(
        line.contains("marked applied") && line.contains(&net.name),
        "{line}"
    );
    let mut command = vec![util::BIN.to_string()];
    command.extend(im.common().iter().map(|a| a.to_string_lossy().into_owned()));
    command.push(delta.display().to_string());
    assert!(
        line.ends_with(&command.join(" ")),
        "the retry command: {line}"
    );
    assert!(!im.is_active());
    assert_same(&im.read(), &want, "volume");
    let meta = im.metadata();
    let st = state_elem(&meta).unwrap();
    assert_eq!(st.attr("applying"), None, "{meta}");
    assert_eq!(applied_count(&meta), 1, "{meta}");
    assert!(!meta.contains("handed-over by"), "not handed over: {meta}");

    let xml = tp.path("net.xml");
    std::fs::write(
        &xml,
        format!(
            "<network><name>{}</name><forward mode='bridge'/><bridge name='{}'/></network>",
            net.name, net.bridge
        ),
    )
    .unwrap();
    virsh(&im.uri, &["net-create", xml.to_str().unwrap()]);
    ok(&im.stage2(&[&delta], &[]), "the retry");
    assert!(im.is_active(), "the retry starts the domain");
    assert_same(&im.read(), &want, "volume after the retry");
    virsh(&im.uri, &["destroy", &im.domain]);
}

/// A domain whose stage-1 trial start failed is proved again by stage 2 before anything is
/// marked or written: still failing, stage 2 is refused with the volume and the state as
/// they were; with the cause fixed (here a network that exists), stage 2 applies and starts.
#[test]
fn stage2_on_a_domain_stage1_could_not_prove_tries_it_first_and_writes_nothing_when_it_fails() {
    let tp = TestPool::new("s2prove");
    let f = Folder::base(SECTORS);
    let base = qemu_read(&f.path("base.vmdk"));
    let delta = cowd_child(
        &f,
        "vm-000001",
        0x62,
        (BASE_CID, "base.vmdk"),
        8,
        &[(5, Kind::Data)],
    );
    let want = qemu_read(&delta);
    let im = Import::new(&tp, "s2prove");
    let missing = format!("vknone{}", std::process::id());
    let stage1 = [SMALL, &["--cpu", "default", "--network", &missing]].concat();
    refused(&im.stage1(&f.path("base.vmdk"), &stage1), &["net-start"]);
    let before = im.metadata();

    let line = refused(&im.stage2(&[&delta], &[]), &["nothing written"]);
    assert!(line.contains(&missing), "{line}");
    assert!(!im.is_active(), "nothing runs");
    assert_same(&im.read(), &base, "volume untouched");
    let meta = im.metadata();
    assert_eq!(applied_count(&meta), 0, "{meta}");
    assert_eq!(state_elem(&meta).unwrap().attr("applying"), None, "{meta}");
    assert_eq!(
        trial_elem(&meta).attr("started"),
        trial_elem(&before).attr("started")
    );

    let net = TestNet::isolated("s2prove");
    ok(
        &im.stage2(&[&delta], &["--network", &net.name]),
        "stage 2 with a network that exists",
    );
    assert!(im.is_active(), "started");
    assert_same(&im.read(), &want, "volume");
    virsh(&im.uri, &["destroy", &im.domain]);
}

/// A stage 2 refused by its own trial start leaves the domain as it found it, though the
/// trial redefined it on the way (here the forced ladder's CPU features; on a real host the
/// ladder's steps): stage 1 could not prove the domain (its network is missing) with
/// host-passthrough; stage 2, forced to fail every host CPU, is refused for the network, and
/// the domain's XML, its import state and the volume are byte for byte as before.
#[test]
fn a_stage2_refused_by_its_trial_start_puts_the_definition_and_the_state_back() {
    let tp = TestPool::new("s2back");
    let f = Folder::base(SECTORS);
    let base = qemu_read(&f.path("base.vmdk"));
    let delta = cowd_child(
        &f,
        "vm-000001",
        0x63,
        (BASE_CID, "base.vmdk"),
        8,
        &[(7, Kind::Data)],
    );
    let mut im = Import::new(&tp, "s2back").cpu_starts("host-passthrough");
    let missing = format!("vknone{}", std::process::id());
    let stage1 = [SMALL, &["--network", &missing]].concat();
    refused(&im.stage1(&f.path("base.vmdk"), &stage1), &["net-start"]);
    let (xml, state) = (im.xml(), im.state());
    assert_eq!(trial_elem(&state).attr("cpu"), Some("host-passthrough"));

    im.forced_cpu = Some("default");
    let line = refused(&im.stage2(&[&delta], &[]), &["nothing written"]);
    assert!(line.contains(&missing), "{line}");
    assert_eq!(im.xml(), xml, "virsh dumpxml after the refused stage 2");
    assert_eq!(
        im.state(),
        state,
        "virsh metadata after the refused stage 2"
    );
    assert_same(&im.read(), &base, "volume untouched");
    assert!(!im.is_active(), "nothing runs");
}
