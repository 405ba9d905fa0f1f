//! Pre-copy rounds and the cutover straight from an ESXi host (`--sync`, `--cutover` with
//! `--vmx ssh://`), end to end: the real binary, the real libvirtd (qemu:///system), the
//! stand-in ESXi host of tests/util/esx.rs. Every volume is checked against qemu-img's
//! reading of the VM's chain on the host, and the boot-sector guest shows what it booted.

mod util;

use std::path::Path;
use std::time::Duration;

use util::bootimg;
use util::esx::{assert_volumes, running_vm, tops, vmx_text, StandIn};
use util::fixtures::{pattern, patterned, Kind, SECTOR};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{
    add_console_log, cowd_child, domstate, dumpxml, flat_base, virsh, volume_bytes, wait_for_line,
    Run,
};
use util::{assert_same, qemu_read};
use vmdkimport::state::NS_URI;

const MIB: usize = 1 << 20;
const CPU: [&str; 2] = ["--cpu", "default"];

fn metadata(domain: &str) -> String {
    virsh(&["metadata", domain, NS_URI]).ok().stdout()
}

/// The boot line the guest prints for the disk `top` (a descriptor on the stand-in).
fn boot_line_of(top: &Path) -> String {
    let disk = qemu_read(top);
    bootimg::expected_line(&disk[512..512 + bootimg::PAYLOAD_LEN])
}

/// Wait for the guest's boot line in `log`.
fn booted_line(log: &Path) -> String {
    let line = wait_for_line(log, bootimg::MARKER, Duration::from_secs(90));
    let console = std::fs::read_to_string(log).unwrap_or_default();
    line.unwrap_or_else(|| panic!("no boot marker within 90 s; console: {console:?}"))
}

#[test]
fn a_powered_off_vm_with_snapshots_of_its_own_is_cut_over_without_a_shutdown() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-off");
    let dir = esx.vm_dir("app");
    let base = flat_base(
        &dir,
        "app",
        &bootimg::boot_disk(&patterned(0xb01, bootimg::PAYLOAD_LEN), 8 * MIB),
        0x3333cccc,
    );
    // Its own snapshot (VMFS5-style COWD) with data over the boot payload.
    let sectors = (8 * MIB) as u64 / SECTOR;
    cowd_child(
        &dir,
        "app-000001",
        "app.vmdk",
        0x3333cccc,
        0x4444dddd,
        sectors,
        &[(2, Kind::Data), (9000, Kind::Data)],
        &mut pattern(0xc0),
    );
    std::fs::write(dir.join("app.vmx"), vmx_text("app", &["app-000001.vmdk"])).unwrap();
    esx.register(12, "app", "app/app.vmx", false, "cowd", "");
    esx.add_snapshot_record(12, 1, "nightly");
    let name = unique_name("esx-off");
    tp.track_domain(&name);

    esx.import(&tp, &name, "app/app.vmx", &CPU).ok();
    // What the VM wrote into the migration snapshot's delta before it was powered off.
    cowd_child(
        &dir,
        "app-000002",
        "app-000001.vmdk",
        0x4444dddd,
        0x0badcafe,
        sectors,
        &[(5, Kind::Data), (7, Kind::Zero), (12000, Kind::Data)],
        &mut pattern(0xc1),
    );
    let top = dir.join("app-000002.vmdk");
    let want = qemu_read(&top);
    assert_ne!(want, qemu_read(&base), "the snapshots hold data");
    let log = tp.path("console.log");
    add_console_log(&name, &log);

    let run = esx.import(&tp, &name, "app/app.vmx", &["--cutover"]).ok();
    println!("{run}");
    let out = run.stdout();
    assert!(
        out.contains("the VM is powered off already: no shutdown"),
        "{run}"
    );
    assert!(
        out.contains("cutover of '") && out.contains("total"),
        "{run}"
    );
    assert_eq!(booted_line(&log), boot_line_of(&top));
    assert_eq!(domstate(&name), "running");
    virsh(&["destroy", &name]).ok();
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &want,
        "volume",
    );
    let meta = metadata(&name);
    assert!(
        meta.contains("<cutover ") && meta.contains("handed-over"),
        "{meta}"
    );

    // Once handed over, nothing from ESXi is written again.
    let again = esx.import(&tp, &name, "app/app.vmx", &["--cutover"]);
    assert_eq!(again.code(), Some(1), "{again}");
    assert!(
        again.stderr().contains("was already handed over"),
        "{again}"
    );
}

#[test]
fn stage_one_two_syncs_and_the_cutover_of_a_running_vm_bring_its_last_writes_over() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-e2e");
    let vmx = running_vm(&esx, "web", 21, "sesparse", 2, false);
    let name = unique_name("esx-e2e");
    tp.track_domain(&name);

    let s1 = esx.import(&tp, &name, &vmx, &CPU).ok();
    assert!(
        s1.stdout().contains("took snapshot 'virt-vmdkimport-1'"),
        "{s1}"
    );
    esx.wait_rounds(21, 3);

    // A dry run says what a round would do and changes nothing.
    let dry = esx.import(&tp, &name, &vmx, &["--sync", "--dry-run"]).ok();
    assert!(
        dry.stdout()
            .contains("would run vim-cmd vmsvc/snapshot.create 21 'virt-vmdkimport-2'"),
        "{dry}"
    );
    assert!(
        tops(&esx, &vmx)[0].ends_with("web-000001.vmdk"),
        "no snapshot taken"
    );

    // Two pre-copy rounds: each freezes what the VM wrote since the last and applies it.
    for round in 1..=2 {
        let frozen = tops(&esx, &vmx);
        let sync = esx.import(&tp, &name, &vmx, &["--sync"]).ok();
        println!("{sync}");
        assert!(
            sync.stdout()
                .contains(&format!("sync round {round}: applied 2 delta(s)")),
            "{sync}"
        );
        assert_volumes(&tp, &name, &frozen, &format!("after sync round {round}"));
        assert_eq!(esx.power_state(21), "on", "the VM keeps running");
        esx.wait_rounds(21, 3);
    }

    let dry = esx
        .import(&tp, &name, &vmx, &["--cutover", "--dry-run"])
        .ok();
    assert!(
        dry.stdout()
            .contains("would run vim-cmd vmsvc/power.shutdown 21"),
        "{dry}"
    );
    assert_eq!(esx.power_state(21), "on");

    let log = tp.path("console.log");
    add_console_log(&name, &log);
    let cut = esx
        .import(
            &tp,
            &name,
            &vmx,
            &["--cutover", "--jobs", "2", "--remove-esx-snapshots"],
        )
        .ok();
    println!("{cut}");
    let out = cut.stdout();
    for want in [
        "asking for a guest shutdown (vim-cmd vmsvc/power.shutdown 21)",
        "power.shutdown to powered off",
        "final deltas",
        "domain start",
        "from the shutdown command to the domain running",
        "removed snapshot 'virt-vmdkimport-1'",
        "removed snapshot 'virt-vmdkimport-3'",
    ] {
        assert!(out.contains(want), "{want}: {cut}");
    }
    assert_eq!(esx.power_state(21), "off");
    let top = tops(&esx, &vmx);
    // The guest booted on KVM shows what the VM wrote last on ESXi, before its shutdown.
    let last = esx.last_payload(21);
    assert_eq!(booted_line(&log), bootimg::expected_line(&last));
    assert_eq!(boot_line_of(&top[0]), bootimg::expected_line(&last));
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &top, "after the cutover");
    let meta = metadata(&name);
    assert_eq!(meta.matches("<sync ").count(), 2, "{meta}");
    assert!(
        meta.contains("<cutover ") && meta.contains("total-ms="),
        "{meta}"
    );
    let snaps = esx.vim_cmd(&["vmsvc/snapshot.get", "21"]).ok();
    assert!(!snaps.stdout().contains("virt-vmdkimport"), "{snaps}");
    // The commands of each of the 6 runs over one connection; stage 1's two 8 MiB bases as
    // two ranges each, and each round's and the cutover's grains of each of the 2 disks over
    // one connection each.
    assert_eq!(
        esx.connections(),
        6 + 2 * 2 + 3 * 2,
        "one ssh connection per run, and one per range:\n{}",
        esx.log()
    );
}

#[test]
fn a_guest_that_does_not_shut_down_is_left_running_and_nothing_changes_unless_hard_off() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-stuck");
    let vmx = running_vm(&esx, "db", 22, "cowd", 1, false);
    let name = unique_name("esx-stuck");
    tp.track_domain(&name);
    esx.import(&tp, &name, &vmx, &CPU).ok();
    esx.wait_rounds(22, 2);
    let meta = metadata(&name);
    let vol = volume_bytes(&tp, &format!("{name}-disk0"));

    // A volume nobody recorded where the cutover's overlay would go.
    let foreign = format!("{name}-disk0-overlay");
    virsh(&["vol-create-as", &tp.name, &foreign, "1M"]).ok();
    let run = esx.import(&tp, &name, &vmx, &["--cutover", "--io", "overlay"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains("exists and is no overlay this tool left"),
        "{run}"
    );
    assert_eq!(
        esx.power_state(22),
        "on",
        "refused before the VM is touched"
    );
    virsh(&["vol-delete", "--pool", &tp.name, &foreign]).ok();

    esx.ignore_shutdown(22);
    let run = esx.import(&tp, &name, &vmx, &["--cutover", "--shutdown-timeout", "2"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr().contains("not powered off 2s after the shutdown request: the VM still runs on ESXi and nothing was changed here"),
        "{run}"
    );
    assert_eq!(esx.power_state(22), "on");
    std::fs::remove_file(esx.root().join("standin/ignore-shutdown-22")).unwrap();

    esx.no_tools(22);
    let run = esx.import(&tp, &name, &vmx, &["--cutover"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains("VMware Tools do not run in the guest"),
        "{run}"
    );
    assert!(run.stderr().contains("ToolsUnavailable"), "{run}");
    assert_eq!(esx.power_state(22), "on");
    assert_eq!(metadata(&name), meta, "the import state is unchanged");
    assert!(
        volume_bytes(&tp, &format!("{name}-disk0")) == vol,
        "the volume is unchanged"
    );
    assert_eq!(domstate(&name), "shut off");

    // With --json: the human lines on stderr, the document on stdout.
    let run = esx
        .import(&tp, &name, &vmx, &["--cutover", "--hard-off", "--json"])
        .ok();
    assert!(
        run.stderr()
            .contains("no VMware Tools: powering it off (--hard-off)"),
        "{run}"
    );
    let doc: serde_json::Value = serde_json::from_str(&run.stdout())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {run}"));
    let names: Vec<&str> = doc["phases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["ok"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["guest shutdown", "delta apply", "start"], "{run}");
    assert_eq!(doc["command"], "cutover");
    let cutover = &doc["state"]["cutover"];
    assert_eq!(
        doc["phases"][1]["bytes"], cutover["bytes"],
        "the apply phase's bytes are the recorded cutover's: {run}"
    );
    assert_eq!(esx.power_state(22), "off");
    assert_eq!(domstate(&name), "running");
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &tops(&esx, &vmx), "after a hard power-off");
}

#[test]
fn a_connection_cut_while_the_final_delta_is_read_leaves_the_disk_marked_and_a_rerun_finishes() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-drop");
    let vmx = running_vm(&esx, "mx", 23, "sesparse", 1, false);
    let name = unique_name("esx-drop");
    tp.track_domain(&name);
    esx.import(&tp, &name, &vmx, &CPU).ok();
    esx.wait_rounds(23, 4);

    // The pass over the grains reads with bs=1048576: the cut comes there, after the
    // disk was marked, 64 KiB into the grains.
    esx.drop_read("mx-000001-sesparse.vmdk bs=1048576", 65536);
    let run = esx.import(&tp, &name, &vmx, &["--cutover"]);
    assert_eq!(run.code(), Some(1), "{run}");
    let err = run.stderr();
    assert!(err.contains("mx-000001-sesparse.vmdk"), "{run}");
    assert!(
        err.contains("the VM is powered off on ESXi: rerun --cutover to finish"),
        "{run}"
    );
    assert!(
        metadata(&name).contains("applying=\"yes\""),
        "the disk is marked"
    );
    assert_eq!(
        domstate(&name),
        "shut off",
        "never started on a half-written disk"
    );

    let again = esx.import(&tp, &name, &vmx, &["--cutover"]).ok();
    assert!(
        again.stdout().contains("powered off already: no shutdown"),
        "{again}"
    );
    assert_eq!(domstate(&name), "running");
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &tops(&esx, &vmx), "after the rerun");
    assert!(!metadata(&name).contains("applying=\"yes\""));
}

#[test]
fn a_start_that_fails_rolls_back_to_esxi_and_the_next_cutover_brings_the_newer_writes() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-back");
    let net = util::vmximport::TestNet::isolated("esx-back");
    let vmx = running_vm(&esx, "shop", 24, "cowd", 1, true);
    let name = unique_name("esx-back");
    tp.track_domain(&name);
    let map = format!("VM Network={}", net.name);
    esx.import(&tp, &name, &vmx, &[CPU[0], CPU[1], "--network", &map])
        .ok();
    esx.wait_rounds(24, 2);

    // Something on the KVM host breaks while the VM is going down on ESXi: its network goes.
    let net_xml = format!(
        "<network><name>{}</name><forward mode='bridge'/><bridge name='{}'/></network>",
        net.name, net.bridge
    );
    esx.on_powered_off(
        24,
        &format!("virsh -c qemu:///system net-destroy '{}'", net.name),
    );
    let run = esx.import(&tp, &name, &vmx, &["--cutover", "--rollback-on-failure"]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains("rolled back: the VM runs on ESXi again"),
        "{run}"
    );
    assert_eq!(esx.power_state(24), "on");
    assert_eq!(domstate(&name), "shut off");
    let meta = metadata(&name);
    assert!(
        meta.contains("active=\"yes\"") && !meta.contains("handed-over"),
        "{meta}"
    );

    // The VM writes on on ESXi, into the delta already applied once; the next cutover must
    // bring those writes too.
    esx.wait_rounds(24, 4);
    std::fs::remove_file(esx.root().join("standin/on-powered-off-24")).unwrap();
    let f = tp.path("net.xml");
    std::fs::write(&f, net_xml).unwrap();
    virsh(&["net-create", f.to_str().unwrap()]).ok();
    let log = tp.path("console.log");
    add_console_log(&name, &log);
    esx.import(&tp, &name, &vmx, &["--cutover"]).ok();
    let top = tops(&esx, &vmx);
    assert_eq!(
        booted_line(&log),
        bootimg::expected_line(&esx.last_payload(24))
    );
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &top, "after the second cutover");
}

#[test]
fn a_vm_with_an_independent_disk_is_refused_over_ssh_naming_the_disk() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-indep");
    let dir = esx.vm_dir("ind");
    flat_base(&dir, "ind", &patterned(0x1d1, 8 * MIB), 0x1d1d1d1d);
    flat_base(&dir, "ind_1", &patterned(0x1d2, 8 * MIB), 0x1d1d1d1e);
    let mut vmx = vmx_text("ind", &["ind.vmdk", "ind_1.vmdk"]);
    vmx += "scsi0:1.mode = \"independent-persistent\"\n";
    std::fs::write(dir.join("ind.vmx"), vmx).unwrap();
    esx.register(25, "ind", "ind/ind.vmx", false, "cowd", "");
    let name = unique_name("esx-indep");
    tp.track_domain(&name);
    let run = esx.import(&tp, &name, "ind/ind.vmx", &CPU);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains("disk scsi0:1 (ind_1.vmdk) is independent"),
        "{run}"
    );
    assert!(!util::vmximport::domain_exists(&name));
}

/// `esx.import(...)` with the trial start's CPU ladder forced: `rung` is the first that
/// starts, whatever this host's KVM does (doc/testing.md).
fn import_forced(
    esx: &StandIn,
    tp: &TestPool,
    domain: &str,
    vmx: &str,
    extra: &[&str],
    rung: &str,
) -> Run {
    esx.import_env(
        tp,
        domain,
        &esx.url(vmx),
        extra,
        &[(util::ladder::ENV, rung)],
    )
}

/// Replace the `key=` line of the descriptor `path` with `key=value`; the text before.
fn set_descriptor_line(path: &Path, key: &str, value: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix(key) {
            Some(rest) if rest.starts_with('=') => format!("{key}={value}"),
            _ => l.to_string(),
        })
        .collect();
    assert_ne!(
        edited.join("\n"),
        text.trim_end(),
        "{}: no {key}=",
        path.display()
    );
    std::fs::write(path, edited.join("\n") + "\n").unwrap();
    text
}

/// A domain stage 1 could not prove (its explicit CPU is made to fail) is trial-started by
/// `--sync` and `--cutover`, whose ladder redefines it; every check that can refuse comes
/// first, so a refused run leaves `virsh dumpxml` and the import state byte for byte as they
/// were: refused for a volume in the overlay's place (the targets) and for a base that changed on ESXi
/// (the ssh side) before the trial start; refused after it, before anything is written (a
/// guest that does not shut down, a frozen delta whose read is cut), with the definition and
/// the state put back. The cutover then goes through on the CPU the ladder proves.
#[test]
fn a_refused_sync_or_cutover_leaves_a_domain_stage1_could_not_prove_as_it_found_it() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-unproved");
    let vmx = running_vm(&esx, "crm", 26, "cowd", 1, false);
    let folder = esx.vm_dir("crm");
    let name = unique_name("esx-unproved");
    tp.track_domain(&name);
    // Every host CPU fails: stage 1's explicit host-passthrough, and the ladder's first two
    // rungs in the runs below.
    let run = |extra: &[&str]| import_forced(&esx, &tp, &name, &vmx, extra, "default");
    let s1 = run(&["--cpu", "host-passthrough"]);
    assert_eq!(s1.code(), Some(1), "{s1}");
    assert!(s1.stderr().contains("never replaced"), "{s1}");
    let (xml, meta) = (dumpxml(&name), metadata(&name));
    assert!(
        meta.contains("base-uploaded=\"yes\"") && meta.contains("started=\"no\""),
        "{meta}"
    );
    let unchanged = |what: &str, r: &Run| {
        assert_eq!(dumpxml(&name), xml, "virsh dumpxml after {what}: {r}");
        assert_eq!(metadata(&name), meta, "virsh metadata after {what}: {r}");
        assert_eq!(domstate(&name), "shut off", "{what}");
        assert_eq!(
            esx.power_state(26),
            "on",
            "{what}: the VM still runs on ESXi"
        );
    };
    let refused = |extra: &[&str], needle: &str| {
        let r = run(extra);
        assert_eq!(r.code(), Some(1), "{r}");
        assert!(r.stderr().contains(needle), "{needle}: {r}");
        r
    };

    // Refused before the trial start, and before anything on ESXi: a volume nobody recorded
    // where the cutover's overlay would go.
    let foreign = format!("{name}-disk0-overlay");
    virsh(&["vol-create-as", &tp.name, &foreign, "1M"]).ok();
    let commands = esx.commands();
    let r = refused(
        &["--cutover", "--io", "overlay"],
        "exists and is no overlay this tool left",
    );
    assert_eq!(esx.commands(), commands, "no vim-cmd: {r}");
    assert!(!r.stdout().contains("trial start"), "{r}");
    unchanged("--cutover --io overlay", &r);
    virsh(&["vol-delete", "--pool", &tp.name, &foreign]).ok();
    // The VM's base is another one now (its CID changed, the chain still linked).
    let base = folder.join("crm.vmdk");
    let top = tops(&esx, &vmx)[0].clone();
    let base_text = set_descriptor_line(&base, "CID", "0badba5e");
    let top_text = set_descriptor_line(&top, "parentCID", "0badba5e");
    for step in ["--sync", "--cutover"] {
        let commands = esx.commands();
        let r = refused(&[step], "is not the one stage 1 uploaded");
        assert!(!r.stdout().contains("trial start"), "{r}");
        unchanged(&format!("{step} over another base"), &r);
        let sent = esx.commands()[commands.len()..].to_string();
        assert!(!sent.contains("snapshot.create"), "no snapshot: {sent}");
        assert!(!sent.contains("power.shutdown"), "no shutdown: {sent}");
    }
    std::fs::write(&base, base_text).unwrap();
    std::fs::write(&top, top_text).unwrap();

    // Refused after the trial start (the ladder stepped down and redefined the domain) and
    // before anything is written: the definition and the state go back.
    esx.ignore_shutdown(26);
    let r = refused(
        &["--cutover", "--shutdown-timeout", "2"],
        "not powered off 2s after the shutdown request",
    );
    assert!(r.stdout().contains("trying cpu"), "the ladder stepped: {r}");
    unchanged("a cutover whose guest does not shut down", &r);
    std::fs::remove_file(esx.root().join("standin/ignore-shutdown-26")).unwrap();
    // The sync's snapshot is taken after the trial start; reading the delta it froze fails.
    let frozen = top.file_stem().unwrap().to_string_lossy().into_owned() + "-delta.vmdk";
    esx.drop_read(&frozen, 0);
    let r = refused(&["--sync"], &frozen);
    println!("{r}");
    assert!(r.stdout().contains("trying cpu"), "the ladder stepped: {r}");
    unchanged("a sync whose frozen delta cannot be read", &r);

    // The cutover goes through, on the CPU the ladder proves.
    let cut = run(&["--cutover"]).ok();
    assert!(cut.stdout().contains("with CPU default"), "{cut}");
    assert_eq!(domstate(&name), "running");
    virsh(&["destroy", &name]).ok();
    assert_ne!(dumpxml(&name), xml, "the ladder's definition is kept");
    assert!(
        metadata(&name).contains("started=\"yes\" cpu=\"default\""),
        "{}",
        metadata(&name)
    );
    assert_volumes(&tp, &name, &tops(&esx, &vmx), "after the cutover");
}
