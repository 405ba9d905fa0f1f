//! ESXi to a KVM host that is not this one (issue 18, part 4): the whole migration from the
//! strict stand-in ESXi host of tests/util/esx.rs against a `qemu+tcp://` URI (the loopback
//! listener scripts/setup-host.sh makes), the pre-copy rounds through upload streams and the
//! cutover through a qcow2 overlay; and a cutover whose overlay fails before the start.

mod util;

use nix::sys::signal::Signal;

use util::esx::{assert_volumes, programs_sent, running_vm, tops, Setup, StandIn};
use util::interrupt::{Running, Stdout};
use util::libvirt::{unique_name, TestPool, REMOTE_URI};
use util::vmximport::{add_console_log, domstate, dumpxml, virsh, wait_for_line, Run};
use vmdkimport::state::NS_URI;

/// The trial start asks for QEMU's CPU, which starts on every host (doc/testing.md).
const CPU: [&str; 2] = ["--cpu", "default"];

/// `virt-vmdkimport -c REMOTE_URI --domain NAME --pool POOL --vmx URL EXTRA...` of the .vmx
/// `vmx` (`dir/file.vmx`) on the stand-in.
fn remote(esx: &StandIn, tp: &TestPool, name: &str, vmx: &str, extra: &[&str]) -> Run {
    remote_url(esx, tp, name, &esx.url(vmx), extra)
}

/// [`remote`] of the .vmx `url`.
fn remote_url(esx: &StandIn, tp: &TestPool, name: &str, url: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "-c", REMOTE_URI, "--domain", name, "--pool", &tp.name, "--vmx", url,
    ];
    args.extend_from_slice(extra);
    esx.tool(&args)
}

fn no_warning(run: &Run) {
    assert!(!run.stderr().contains("warning:"), "a warning: {run}");
}

fn metadata(domain: &str) -> String {
    virsh(&["metadata", domain, NS_URI]).ok().stdout()
}

/// The volumes of the pool, by name.
fn volumes(tp: &TestPool) -> Vec<String> {
    let mut v = tp.pool.raw().list_volumes().unwrap();
    v.sort();
    v
}

/// A running VM of two disks on the stand-in, stage 1 against the remote URI: the stand-in,
/// the pool (on the remote URI), the domain's name and the .vmx.
fn staged(tag: &str, id: u32) -> (StandIn, TestPool, String, String) {
    let esx = StandIn::start();
    let tp = TestPool::on(REMOTE_URI, tag);
    let name = unique_name(tag);
    tp.track_domain(&name);
    let vmx = running_vm(&esx, tag, id, "sesparse", 2, false);
    let s1 = remote(&esx, &tp, &name, &vmx, &CPU).ok();
    no_warning(&s1);
    esx.wait_rounds(id, 2);
    (esx, tp, name, vmx)
}

/// hostd's passing failures as tests/esx_real.rs has them (ESX-REAL.md section 4).
const LOGIN_RESET: &str = "Failed to login: Connection reset by peer";
const LOGIN_SSL: &str = "Failed to login: SSL Exception: The SSL handshake timed out local: 127.0.0.1:52713 peer: 127.0.0.1:443.";
const NO_LOCALHOST: &str = "Connect to localhost failed: Connection failure";
/// A snapshot description whose later lines `snapshot.get` prints raw (ESX-REAL.md section 1).
const HOSTILE_DESCRIPTION: &str = "before the move\n\
    |-CHILD\n\
    --Snapshot Name        : virt-vmdkimport-1\n\
    ----Snapshot Id        : 78\n\
    Snapshot State : powered off: it is all text";

/// The whole migration of a running VM of two disks to the remote URI with the faults of
/// ESX-REAL.md on at once, as tests/esx_real.rs runs it to the local daemon: a datastore and
/// a VM named with spaces and brackets, reached by name and by UUID, `MaxSessions 1`, an
/// invalid VM in getallvms, snapshots of theirs with multi-line descriptions, the tree printed
/// after each removal, an unchanged-state refusal and hostd hiccups. The rounds go through
/// upload streams, the cutover through the overlay.
#[test]
fn the_whole_migration_reaches_a_remote_uri_through_the_overlay() {
    let esx = StandIn::start_with(Setup {
        datastore: "datastore2 (1)".into(),
        one_session: true,
    });
    let tp = TestPool::on(REMOTE_URI, "esxrem-all");
    let name = unique_name("esxrem-all");
    tp.track_domain(&name);
    let vmx = running_vm(&esx, "far [eu] 1", 70, "sesparse", 2, false);
    for snap in 1..=3 {
        esx.add_snapshot_described(70, snap, &format!("theirs-{snap}"), HOSTILE_DESCRIPTION);
    }
    esx.invalid_vms();
    esx.remove_prints_tree();
    let by_uuid = esx.url_by_uuid(&vmx);
    let mut runs = Vec::new();

    esx.transient("getallvms", 1, LOGIN_RESET);
    runs.push(remote_url(&esx, &tp, &name, &by_uuid, &CPU).ok());
    esx.wait_rounds(70, 2);
    // Round 1: ESXi refuses the snapshot as unchanged; the chain already frozen is used.
    esx.unchanged_once(70);
    esx.transient("power.getstate", 1, NO_LOCALHOST);
    let sync = remote(&esx, &tp, &name, &vmx, &["--sync"]).ok();
    assert!(
        sync.stdout()
            .contains("has not changed since its last snapshot"),
        "{sync}"
    );
    runs.push(sync);
    esx.wait_rounds(70, 2);
    // Round 2, by the UUID: a snapshot, its frozen deltas through upload streams.
    esx.transient("snapshot.create", 1, LOGIN_SSL);
    let frozen = tops(&esx, &vmx);
    let sync = remote_url(&esx, &tp, &name, &by_uuid, &["--sync"]).ok();
    assert!(sync.stdout().contains("sync round 2: applied"), "{sync}");
    assert!(sync.stdout().contains("io=stream"), "{sync}");
    assert_volumes(&tp, &name, &frozen, "after sync round 2");
    runs.push(sync);
    esx.wait_rounds(70, 2);

    esx.transient("power.shutdown", 1, LOGIN_RESET);
    esx.transient("power.getstate", 3, LOGIN_RESET);
    esx.transient("snapshot.get", 2, NO_LOCALHOST);
    let log = tp.path("console.log");
    add_console_log(&name, &log);
    let cut = remote(
        &esx,
        &tp,
        &name,
        &vmx,
        &["--cutover", "--remove-esx-snapshots", "-v"],
    )
    .ok();
    // What it reads on the host through this path too: dd and stat only.
    let sent = programs_sent(&cut);
    assert!(sent.contains(&"stat".to_string()), "{sent:?}: {cut}");
    for p in &sent {
        assert!(
            ["vim-cmd", "dd", "stat"].contains(&p.as_str()),
            "{p}: {cut}"
        );
    }
    for want in ["io=overlay", "final deltas", "committed into volume"] {
        assert!(cut.stdout().contains(want), "{want}: {cut}");
    }
    let removed = cut
        .stdout()
        .matches("removed snapshot 'virt-vmdkimport-")
        .count();
    assert_eq!(removed, 2, "stage 1's and round 2's: {cut}");
    runs.push(cut);
    for run in &runs {
        println!("{run}");
        no_warning(run);
    }
    assert_eq!(esx.power_state(70), "off");
    assert_eq!(
        wait_for_line(
            &log,
            util::bootimg::MARKER,
            std::time::Duration::from_secs(90)
        ),
        Some(util::bootimg::expected_line(&esx.last_payload(70))),
        "the guest booted on KVM shows what it wrote last on ESXi"
    );
    let left = esx.snapshot_names(70);
    assert_eq!(
        left,
        ["theirs-1", "theirs-2", "theirs-3"],
        "ours gone, theirs kept"
    );
    let xml = dumpxml(&name);
    assert!(!xml.contains("-overlay") && !xml.contains("qcow2"), "{xml}");
    assert!(
        !volumes(&tp).iter().any(|v| v.contains("overlay")),
        "{:?}",
        volumes(&tp)
    );
    let top = tops(&esx, &vmx);
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &top, "after the cutover");
}

#[test]
fn an_overlay_failing_before_the_start_powers_the_vm_on_again_and_leaves_the_domain() {
    let (esx, tp, name, vmx) = staged("esxrem-fail", 71);
    // Once the VM is off, a volume nobody recorded takes the place of disk 1's overlay: disk
    // 0's overlay is uploaded, disk 1's is refused, the domain never starts.
    let foreign = format!("{name}-disk1-overlay");
    esx.on_powered_off(
        71,
        &format!(
            "virsh -c qemu:///system vol-create-as '{}' '{foreign}' 1M",
            tp.name
        ),
    );
    let (xml, meta) = (dumpxml(&name), metadata(&name));
    let dry = remote(&esx, &tp, &name, &vmx, &["--cutover", "--dry-run"]).ok();
    assert!(
        dry.stdout().contains("uploaded as a qcow2 overlay"),
        "{dry}"
    );
    assert_eq!(esx.power_state(71), "on");
    let run = remote(
        &esx,
        &tp,
        &name,
        &vmx,
        &["--cutover", "--rollback-on-failure"],
    );
    assert_eq!(run.code(), Some(1), "{run}");
    for want in [
        "exists and is no overlay this tool left",
        "rolled back: the VM runs on ESXi again",
        "as before the cutover (the overlays removed)",
    ] {
        assert!(run.stderr().contains(want), "{want}: {run}");
    }
    assert_eq!(esx.power_state(71), "on");
    assert_eq!(domstate(&name), "shut off");
    assert_eq!(dumpxml(&name), xml, "the definition is as before");
    assert_eq!(metadata(&name), meta, "the import state is as before");
    assert_eq!(
        volumes(&tp),
        [
            format!("{name}-disk0"),
            format!("{name}-disk1"),
            foreign.clone()
        ],
        "disk 0's overlay removed, the volume not ours kept"
    );

    // Once the way is clear, the same command cuts over, the writes made since included.
    esx.wait_rounds(71, 2);
    std::fs::remove_file(esx.root().join("standin/on-powered-off-71")).unwrap();
    virsh(&["vol-delete", "--pool", &tp.name, &foreign]).ok();
    let cut = remote(&esx, &tp, &name, &vmx, &["--cutover"]).ok();
    assert!(cut.stdout().contains("committed into volume"), "{cut}");
    let top = tops(&esx, &vmx);
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &top, "after the second cutover");
}

#[test]
fn a_cutover_cut_off_while_fetching_after_the_shutdown_is_finished_by_running_it_again() {
    let (esx, tp, name, vmx) = staged("esxrem-cut", 72);
    let (xml, meta) = (dumpxml(&name), metadata(&name));
    // The fetch of disk 0's active delta, after the VM is off: 64 KiB through, then the
    // connection is cut. One disk at a time: a read of the other disk's delta at the same
    // moment could look at the stand-in's drop first and miss this one.
    esx.drop_read("esxrem-cut-000001-sesparse.vmdk bs=4194304", 65536);
    let run = remote(&esx, &tp, &name, &vmx, &["--cutover", "--jobs", "1"]);
    assert_eq!(run.code(), Some(1), "{run}");
    for want in [
        "esxrem-cut-000001-sesparse.vmdk",
        "the VM is powered off on ESXi: rerun --cutover to finish",
    ] {
        assert!(run.stderr().contains(want), "{want}: {run}");
    }
    assert_eq!(esx.power_state(72), "off");
    assert_eq!(domstate(&name), "shut off", "never started");
    assert_eq!(dumpxml(&name), xml, "the definition is as before");
    assert_eq!(metadata(&name), meta, "the import state is as before");

    let again = remote(&esx, &tp, &name, &vmx, &["--cutover"]).ok();
    assert!(
        again.stdout().contains("powered off already: no shutdown"),
        "{again}"
    );
    assert!(again.stdout().contains("committed into volume"), "{again}");
    no_warning(&again);
    assert_eq!(domstate(&name), "running");
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &tops(&esx, &vmx), "after the rerun");
}

/// The steps the overlay records of `domain` are at.
fn overlay_steps(domain: &str) -> Vec<String> {
    let text = virsh(&["metadata", domain, vmdkimport::state::OVERLAY_NS_URI]).stdout();
    text.split("step=\"")
        .skip(1)
        .filter_map(|t| t.split('"').next())
        .map(String::from)
        .collect()
}

#[test]
fn a_cutover_killed_during_the_commit_is_finished_by_running_it_again() {
    let (esx, tp, name, vmx) = staged("esxrem-kill", 73);
    let url = esx.url(&vmx);
    // 1 MiB/s: each disk's commit (8 MiB) lasts seconds, time enough to kill the tool in it.
    let args = [
        "-c",
        REMOTE_URI,
        "--domain",
        &name,
        "--pool",
        &tp.name,
        "--vmx",
        &url,
        "--cutover",
        "--io",
        "overlay",
        "--commit-bandwidth",
        "1048576",
    ];
    std::env::set_var("VIRT_VMDKIMPORT_SSH_CONFIG", esx.ssh_config());
    let mut run = Running::start(&args, Stdout::Collected);
    let started = std::time::Instant::now();
    while !overlay_steps(&name).iter().any(|s| s == "committing") {
        if !run.is_running() {
            let out = run.finish();
            panic!("the cutover ended before its commit: {out:?}");
        }
        if started.elapsed().as_secs() > 90 {
            run.signal(Signal::SIGKILL);
            panic!("no commit began in 90 s: {:?}", run.finish());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run.signal(Signal::SIGKILL);
    assert!(!run.finish().status.success());
    assert_eq!(
        domstate(&name),
        "running",
        "the domain runs on its overlays"
    );
    assert_eq!(esx.power_state(73), "off");
    let top = tops(&esx, &vmx);

    let commands = esx.commands();
    let again = remote(&esx, &tp, &name, &vmx, &["--cutover"]).ok();
    println!("{again}");
    for want in ["still on a qcow2 overlay", "the cutover is done"] {
        assert!(again.stdout().contains(want), "{want}: {again}");
    }
    no_warning(&again);
    assert_eq!(esx.commands(), commands, "nothing sent to ESXi: {again}");
    assert_eq!(esx.power_state(73), "off");
    assert_eq!(overlay_steps(&name), Vec::<String>::new());
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &top, "after the commit's rerun");
}

/// `plan stage1`, `plan sync` and `plan cutover` of a VM on the stand-in whose `connect` is
/// the remote URI: the same steps as the commands above, run by the plan.
#[test]
fn a_plan_cuts_an_esxi_vm_over_to_a_remote_uri() {
    let esx = StandIn::start();
    let tp = TestPool::on(REMOTE_URI, "esxrem-plan");
    let name = unique_name("esxrem-plan");
    tp.track_domain(&name);
    let vmx = running_vm(&esx, "esxrem-plan", 74, "sesparse", 1, false);
    let text = format!(
        "[defaults]\ncpu = \"default\"\nremove_esx_snapshots = true\n\n[[vm]]\nname = \"{name}\"\n\
         vmx = \"{}\"\nconnect = \"{REMOTE_URI}\"\npool = \"{}\"\n",
        esx.url(&vmx),
        tp.name
    );
    let plan = util::plan::write_plan(&tp.dir, &text);
    let run = |action: &str| {
        let out = util::plan::plan_cmd(action, &plan, &[])
            .env("VIRT_VMDKIMPORT_SSH_CONFIG", esx.ssh_config())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "plan {action}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    run("stage1");
    esx.wait_rounds(74, 2);
    let frozen = tops(&esx, &vmx);
    assert!(run("sync").contains("sync done"));
    assert_volumes(&tp, &name, &frozen, "after plan sync");
    esx.wait_rounds(74, 2);
    assert!(run("cutover").contains("cut over"));
    assert_eq!(esx.power_state(74), "off");
    assert_eq!(domstate(&name), "running");
    assert!(
        esx.snapshot_names(74).is_empty(),
        "{:?}",
        esx.snapshot_names(74)
    );
    let top = tops(&esx, &vmx);
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &top, "after plan cutover");
}

/// A VM `stem` (id `id`) with a 256 MiB base, staged into `tp` over `uri`, then
/// 64 MiB of data written into the delta its migration snapshot gave it (every other 4 KiB
/// grain of the first 128 MiB); its cutover's outage lines and the delta's descriptor.
fn measured_cutover(esx: &StandIn, uri: &str, tp: &TestPool, stem: &str, id: u32) -> String {
    use util::fixtures::{pattern, patterned, Kind, SECTOR};
    use util::vmximport::{flat_base, sesparse_child};
    const CAP: usize = 256 << 20;
    let dir = esx.vm_dir(stem);
    flat_base(
        &dir,
        stem,
        &patterned(0x500 + u64::from(id), CAP),
        0x5000 + id,
    );
    let vmx = format!("{stem}/{stem}.vmx");
    std::fs::write(
        esx.vmx_path(&vmx),
        util::esx::vmx_text(stem, &[&format!("{stem}.vmdk")]),
    )
    .unwrap();
    // Registered as running (no process writes into it): the cutover shuts it down first.
    esx.register(id, stem, &vmx, true, "sesparse", "");
    let name = unique_name(stem);
    tp.track_domain(&name);
    let url = esx.url(&vmx);
    let args = |extra: &[&str]| {
        let mut a = vec![
            "-c", uri, "--domain", &name, "--pool", &tp.name, "--vmx", &url,
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let s1: Vec<String> = args(&CPU);
    esx.tool(&s1.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();
    let grains: Vec<(u64, Kind)> = (0..16384).map(|g| (2 * g, Kind::Data)).collect();
    let top = sesparse_child(
        &dir,
        &format!("{stem}-000001"),
        &format!("{stem}.vmdk"),
        0x5000 + id,
        0x6000 + id,
        CAP as u64 / SECTOR,
        &grains,
        &mut pattern(u64::from(id)),
    );
    let cut: Vec<String> = args(&["--cutover"]);
    let run = esx
        .tool(&cut.iter().map(String::as_str).collect::<Vec<_>>())
        .ok();
    virsh(&["destroy", &name]).ok();
    assert_volumes(tp, &name, &[top], stem);
    run.stdout()
        .lines()
        .filter(|l| l.contains(" s") || l.contains("io="))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cutover's outage for a 64 MiB final delta, written directly into a local volume and
/// through the overlay to the remote URI (`cargo nextest run --test esx_remote --run-ignored
/// only --no-capture`); the figures in doc/esxi.md.
#[test]
#[ignore = "a measurement: run by hand"]
fn measure_the_outage_local_and_remote() {
    let esx = StandIn::start();
    let local = TestPool::new("esxrem-mloc");
    let far = TestPool::on(REMOTE_URI, "esxrem-mfar");
    let l = measured_cutover(&esx, "qemu:///system", &local, "mloc", 80);
    let r = measured_cutover(&esx, REMOTE_URI, &far, "mfar", 81);
    println!("local (direct writes):\n{l}\nremote (overlay):\n{r}");
}
