//! Real ESXi hosts, not a kind imitation of one (issue 18): each fault ESX-REAL.md reports of
//! real hosts, switched on in the stand-in of tests/util/esx.rs, and met by the tool; then
//! the whole migration (stage 1, two `--sync` rounds, `--cutover --remove-esx-snapshots`) with
//! every fault on at once. The stand-in always runs commands in BusyBox's `sh` with ESXi's
//! applets only (no `tr`, `comm`, `head -c`), takes ECDSA and RSA keys only, and keeps its
//! datastore under a UUID folder that the datastore's name links to.

mod util;

use util::esx::{
    assert_volumes, off_vm_with_snapshot, programs_sent, running_vm, tops, vmx_text, Setup,
    StandIn, UUID,
};
use util::fixtures::{pattern, patterned, Kind, SECTOR};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{cowd_child, domain_exists, flat_base, virsh, volume_bytes, Run};
use util::{assert_same, qemu_read};

const MIB: usize = 1 << 20;
/// The trial start asks for QEMU's CPU, which starts on every host (doc/testing.md).
const CPU: [&str; 2] = ["--cpu", "default"];

/// A powered-off VM `stem` (id `id`) whose 8 MiB base has a COWD snapshot of its own,
/// "nightly" (id 1), holding data; its .vmx names that snapshot's descriptor. The base's and
/// the snapshot's descriptors.
fn off_vm_with_their_snapshot(
    esx: &StandIn,
    stem: &str,
    id: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = patterned(0x900 + u64::from(id), 8 * MIB);
    let cid = 0x30000000 + id;
    off_vm_with_snapshot(
        esx,
        stem,
        id,
        (&data, cid),
        &[3, 9000],
        0xc0 + u64::from(id),
    )
}

/// A stand-in started with `setup`, a test pool, and a domain name the pool removes at the
/// end, all tagged `tag`.
fn begin(setup: Setup, tag: &str) -> (StandIn, TestPool, String) {
    let esx = StandIn::start_with(setup);
    let tp = TestPool::new(tag);
    let name = unique_name(tag);
    tp.track_domain(&name);
    (esx, tp, name)
}

/// The domain stopped, and each of its volumes against qemu-img's reading of its disk's top
/// on the stand-in now.
fn assert_cut_over(esx: &StandIn, tp: &TestPool, name: &str, vmx: &str, what: &str) {
    virsh(&["destroy", name]).ok();
    assert_volumes(tp, name, &tops(esx, vmx), what);
}

/// No line of the run is a warning.
fn no_warning(run: &Run) {
    assert!(!run.stderr().contains("warning:"), "a warning: {run}");
}

#[test]
fn reads_on_the_host_are_dd_and_stat_only() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-dd");
    let (base, theirs) = off_vm_with_their_snapshot(&esx, "dd", 41);

    let s1 = esx
        .import(&tp, &name, "dd/dd.vmx", &[CPU[0], CPU[1], "-v"])
        .ok();
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&base),
        "stage 1",
    );
    let cut = esx
        .import(&tp, &name, "dd/dd.vmx", &["--cutover", "-v"])
        .ok();
    virsh(&["destroy", &name]).ok();
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&theirs),
        "after the cutover",
    );
    for run in [&s1, &cut] {
        println!("{run}");
        let sent = programs_sent(run);
        assert!(sent.contains(&"dd".to_string()), "{sent:?}: {run}");
        assert!(
            run.stderr().contains(&format!(
                "dd if='{}' bs=65536 count=65",
                esx.vmx_path("dd/dd.vmx").display()
            )),
            "the .vmx read with dd: {run}"
        );
        for p in &sent {
            assert!(
                ["vim-cmd", "dd", "stat"].contains(&p.as_str()),
                "{p}: the tool sends vim-cmd, dd and stat only: {run}"
            );
        }
    }
}

/// A description written to look like the tree around it: `snapshot.get` prints its later
/// lines raw (ESX-REAL.md section 1).
const HOSTILE_DESCRIPTION: &str = "before the upgrade\n\
    |-CHILD\n\
    --Snapshot Name        : virt-vmdkimport-1\n\
    ----Snapshot Id        : 77\n\
    \n\
    ----Snapshot Created On  : 1/2/2026 3:4:5\n\
    Snapshot State : powered off: it is all text";

#[test]
fn a_multi_line_snapshot_description_is_read_as_text() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-desc");
    let (base, _) = off_vm_with_their_snapshot(&esx, "desc", 42);
    esx.add_snapshot_described(42, 2, "before upgrade", HOSTILE_DESCRIPTION);
    let shown = esx.vim_cmd(&["vmsvc/snapshot.get", "42"]).ok();
    assert!(
        shown
            .stdout()
            .contains("--Snapshot Desciption  : before the upgrade\n|-CHILD\n--Snapshot Name"),
        "{shown}"
    );

    let s1 = esx.import(&tp, &name, "desc/desc.vmx", &CPU).ok();
    no_warning(&s1);
    // Not taken for one of ours: the description's "virt-vmdkimport-1" is text.
    assert!(
        s1.stdout().contains("took snapshot 'virt-vmdkimport-3'")
            && !s1.stdout().contains("keeps its migration snapshot"),
        "{s1}"
    );
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&base),
        "stage 1",
    );
}

#[test]
fn a_removal_is_confirmed_by_snapshot_get_not_by_the_tree_printed_after_it() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-remove");
    let (_, theirs) = off_vm_with_their_snapshot(&esx, "rm", 43);
    esx.remove_prints_tree();
    esx.import(&tp, &name, "rm/rm.vmx", &CPU).ok();
    assert_eq!(esx.snapshot_names(43), ["nightly", "virt-vmdkimport-2"]);

    let cut = esx
        .import(
            &tp,
            &name,
            "rm/rm.vmx",
            &["--cutover", "--remove-esx-snapshots"],
        )
        .ok();
    println!("{cut}");
    no_warning(&cut);
    assert!(
        cut.stdout()
            .contains("removed snapshot 'virt-vmdkimport-2'"),
        "{cut}"
    );
    assert_eq!(
        esx.snapshot_names(43),
        ["nightly"],
        "ours gone, theirs kept"
    );
    let sent = esx.commands();
    let remove = sent
        .lines()
        .position(|l| l == "vmsvc/snapshot.remove 43 2")
        .unwrap_or_else(|| panic!("no removal: {sent}"));
    assert!(
        sent.lines()
            .skip(remove + 1)
            .any(|l| l == "vmsvc/snapshot.get 43"),
        "the removal is checked with snapshot.get: {sent}"
    );
    virsh(&["destroy", &name]).ok();
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&theirs),
        "after the cutover",
    );
}

#[test]
fn an_unchanged_state_refusal_uses_the_chain_already_frozen() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-same");
    let (base, theirs) = off_vm_with_their_snapshot(&esx, "same", 44);
    // A second snapshot of theirs over the first: its delta is the top.
    let dir = esx.vm_dir("same");
    let sectors = (8 * MIB) as u64 / SECTOR;
    cowd_child(
        &dir,
        "same-000002",
        "same-000001.vmdk",
        0x3000002c + 0x100,
        0x3000002c + 0x200,
        sectors,
        &[(5, Kind::Data)],
        &mut pattern(0xd1),
    );
    let vmx = "same/same.vmx";
    std::fs::write(esx.vmx_path(vmx), vmx_text("same", &["same-000002.vmdk"])).unwrap();
    esx.add_snapshot_record(44, 2, "hourly");

    // Stage 1: ESXi takes no snapshot; the one of theirs froze the base already.
    esx.unchanged_once(44);
    let s1 = esx.import(&tp, &name, vmx, &CPU).ok();
    no_warning(&s1);
    assert!(
        s1.stdout()
            .contains("has not changed since its last snapshot"),
        "{s1}"
    );
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&base),
        "stage 1",
    );
    // A sync: no new snapshot; the deltas already frozen (theirs, below the top) are applied.
    esx.unchanged_once(44);
    let sync = esx.import(&tp, &name, vmx, &["--sync"]).ok();
    println!("{sync}");
    no_warning(&sync);
    assert!(
        sync.stdout().contains("sync round 1: applied 1 delta(s)")
            && sync
                .stdout()
                .contains("has not changed since its last snapshot"),
        "{sync}"
    );
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&theirs),
        "after the sync",
    );
    assert_eq!(esx.snapshot_names(44), ["nightly", "hourly"], "none taken");
    assert_eq!(tops(&esx, vmx), [dir.join("same-000002.vmdk")]);
}

/// hostd's passing failures as [VCL] quotes them (ESX-REAL.md section 4).
const LOGIN_RESET: &str = "Failed to login: Connection reset by peer";
const LOGIN_SSL: &str = "Failed to login: SSL Exception: The SSL handshake timed out local: 127.0.0.1:52713 peer: 127.0.0.1:443.";
const NO_LOCALHOST: &str = "Connect to localhost failed: Connection failure";
/// hostd's answer "The object has already been deleted or has not been completely created",
/// as [VCL] quotes it (ESX-REAL.md section 4).
const NOT_CREATED: &str = concat!(
    r"(vmodl.fault.ManagedObjectNotFound) {\n",
    r"    dynamicType = <unset>,\n",
    r"    faultCause = (vmodl.MethodFault) null,\n",
    r"    obj = 'vim.VirtualMachine:672',\n",
    r#"    msg = "The object has already been deleted or has not been completely created",\n"#,
    "}"
);

/// How many `vmsvc/SUBCOMMAND` calls the stand-in answered so far.
fn calls(esx: &StandIn, subcommand: &str) -> usize {
    let cmd = format!("vmsvc/{subcommand}");
    esx.commands()
        .lines()
        .filter(|l| l.split(' ').next() == Some(cmd.as_str()))
        .count()
}

#[test]
fn transient_hostd_answers_are_retried_and_no_hiccup_aborts_a_cutover() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-hiccup");
    let vmx = running_vm(&esx, "hic", 45, "sesparse", 1, false);
    esx.transient("getallvms", 1, LOGIN_RESET);
    esx.transient("snapshot.create", 1, LOGIN_SSL);
    let s1 = esx.import(&tp, &name, &vmx, &CPU).ok();
    no_warning(&s1);
    assert!(
        s1.stdout().contains("took snapshot 'virt-vmdkimport-1'"),
        "{s1}"
    );
    assert_eq!(esx.snapshot_names(45), ["virt-vmdkimport-1"], "one taken");
    esx.wait_rounds(45, 2);

    // The cutover: the guest takes 4 s to shut down; hostd hiccups at the shutdown request
    // and twice while the power state is polled.
    esx.shutdown_delay(45, 4);
    esx.transient("power.shutdown", 1, NO_LOCALHOST);
    esx.transient("power.getstate", 3, LOGIN_RESET);
    esx.transient("power.getstate", 4, NOT_CREATED);
    let polls = calls(&esx, "power.getstate");
    let cut = esx.import(&tp, &name, &vmx, &["--cutover"]).ok();
    println!("{cut}");
    no_warning(&cut);
    assert!(cut.stdout().contains("trying again"), "{cut}");
    assert_eq!(esx.power_state(45), "off");
    // About one poll a second: the 4 s shutdown and the hiccups' waits, not 4 a second.
    let polls = calls(&esx, "power.getstate") - polls;
    assert!(polls <= 12, "{polls} power.getstate calls: {cut}");
    assert_cut_over(&esx, &tp, &name, &vmx, "after the cutover");
    assert_eq!(
        esx.last_payload(45)[..],
        volume_bytes(&tp, &format!("{name}-disk0"))[512..4608],
        "the guest's last writes"
    );
}

/// What the tool says when the host takes one session per connection.
const ONE_SESSION: &str = "takes one session per ssh connection";

#[test]
fn a_host_that_refuses_a_second_session_is_said_once_and_is_no_failure() {
    let (esx, tp, name) = begin(
        Setup {
            one_session: true,
            ..Setup::default()
        },
        "esxr-sess",
    );
    let vmx = running_vm(&esx, "ses", 46, "cowd", 2, false);
    esx.import(&tp, &name, &vmx, &CPU).ok();
    esx.wait_rounds(46, 2);

    // Two disks side by side: their reads overlap, and the host refuses the second session.
    let cut = esx
        .import(&tp, &name, &vmx, &["--cutover", "--jobs", "2"])
        .ok();
    println!("{cut}");
    no_warning(&cut);
    let all = cut.stdout() + &cut.stderr();
    assert_eq!(all.matches(ONE_SESSION).count(), 1, "said once: {cut}");
    assert!(!all.contains("mux_client_request_session"), "{cut}");
    assert!(esx.log().contains("no more sessions"), "{}", esx.log());
    assert_cut_over(&esx, &tp, &name, &vmx, "after the cutover");
}

#[test]
fn a_uuid_path_and_the_datastore_name_find_the_same_vm() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-uuid");
    let (base, theirs) = off_vm_with_their_snapshot(&esx, "uu", 47);
    let by_uuid = esx.url_by_uuid("uu/uu.vmx");
    assert!(by_uuid.contains(&format!("/vmfs/volumes/{UUID}/uu/uu.vmx")));
    let s1 = esx.import_url(&tp, &name, &by_uuid, &CPU).ok();
    no_warning(&s1);
    assert!(s1.stdout().contains("[datastore1] uu/uu.vmx"), "{s1}");
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&base),
        "stage 1 by the UUID path",
    );
    // The cutover by the datastore's name: the same VM, the same files.
    esx.import(&tp, &name, "uu/uu.vmx", &["--cutover"]).ok();
    virsh(&["destroy", &name]).ok();
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&theirs),
        "after the cutover by the name",
    );
}

#[test]
fn a_datastore_and_a_vm_named_with_spaces_and_brackets_are_found() {
    let (esx, tp, name) = begin(
        Setup {
            datastore: "datastore2 (1)".into(),
            ..Setup::default()
        },
        "esxr-names",
    );
    let dir = esx.vm_dir("web [1] x");
    let base = flat_base(&dir, "web [1] x", &patterned(0x951, 8 * MIB), 0x3100aaaa);
    let vmx = "web [1] x/web [1] x.vmx";
    std::fs::write(
        esx.vmx_path(vmx),
        vmx_text("web [1] x", &["web [1] x.vmdk"]),
    )
    .unwrap();
    // Another VM whose name holds what looks like a datastore path.
    esx.register(
        3,
        "[datastore2 (1)] web",
        "other/other.vmx",
        false,
        "cowd",
        "",
    );
    esx.register(48, "web [1] x", vmx, false, "cowd", "[prod] web.vmx");

    let s1 = esx.import(&tp, &name, vmx, &CPU).ok();
    no_warning(&s1);
    assert!(
        s1.stdout().contains("took snapshot 'virt-vmdkimport-1'"),
        "{s1}"
    );
    assert!(
        esx.commands()
            .contains("vmsvc/snapshot.create 48 virt-vmdkimport-1"),
        "{}",
        esx.commands()
    );
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&base),
        "stage 1",
    );
}

#[test]
fn getallvms_with_an_invalid_vm_before_its_header_and_a_vcls_row_is_read() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-inv");
    off_vm_with_their_snapshot(&esx, "inv", 49);
    esx.invalid_vms();
    let listed = esx.vim_cmd(&["vmsvc/getallvms"]).ok();
    assert!(
        listed
            .stdout()
            .starts_with("Skipping invalid VM '6'\nVmid ")
            && listed.stdout().contains("   [] /var/run/crx/"),
        "{listed}"
    );
    let dry = esx.import(&tp, &name, "inv/inv.vmx", &["--dry-run"]).ok();
    no_warning(&dry);
    assert!(
        dry.stdout()
            .contains("would run vim-cmd vmsvc/snapshot.create 49 'virt-vmdkimport-2'"),
        "{dry}"
    );
    assert!(!domain_exists(&name));
}

/// VM `id`'s snapshots of its own: `n` in one chain ("theirs-1" ... ), the first "nightly"
/// from [`off_vm_with_their_snapshot`].
fn chain_of_theirs(esx: &StandIn, id: u32, n: u32) {
    for snap in 2..=n {
        esx.add_snapshot_record(id, snap, &format!("theirs-{snap}"));
    }
}

#[test]
fn snapshots_stop_two_below_esxis_limit_saying_the_way_out() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-limit");
    // 29 in the chain: stage 1 takes none.
    off_vm_with_their_snapshot(&esx, "full", 50);
    chain_of_theirs(&esx, 50, 29);
    let s1 = esx.import(&tp, &name, "full/full.vmx", &CPU);
    assert_eq!(s1.code(), Some(1), "{s1}");
    assert!(
        s1.stderr().contains("29 snapshots deep")
            && s1.stderr().contains("vim-cmd vmsvc/snapshot.removeall 50"),
        "{s1}"
    );
    assert!(!esx.commands().contains("snapshot.create"), "none tried");
    assert!(!domain_exists(&name));

    // 27 in the chain: stage 1 takes the 28th, a sync the 29th, the next sync is refused.
    off_vm_with_their_snapshot(&esx, "deep", 51);
    chain_of_theirs(&esx, 51, 27);
    let name = unique_name("esxr-limit");
    tp.track_domain(&name);
    esx.import(&tp, &name, "deep/deep.vmx", &CPU).ok();
    esx.import(&tp, &name, "deep/deep.vmx", &["--sync"]).ok();
    assert_eq!(esx.snapshot_names(51).len(), 29);
    let creates = esx.commands().matches("snapshot.create 51").count();
    let refused = esx.import(&tp, &name, "deep/deep.vmx", &["--sync"]);
    assert_eq!(refused.code(), Some(1), "{refused}");
    let err = refused.stderr();
    for want in [
        "29 snapshots deep",
        "ESXi allows 31",
        "--cutover",
        "vim-cmd vmsvc/snapshot.removeall 51",
        "--reupload-base",
    ] {
        assert!(err.contains(want), "{want}: {refused}");
    }
    assert_eq!(
        esx.commands().matches("snapshot.create 51").count(),
        creates,
        "no snapshot tried"
    );
    // The way out: the cutover takes no snapshot.
    esx.import(&tp, &name, "deep/deep.vmx", &["--cutover"]).ok();
    assert_cut_over(&esx, &tp, &name, "deep/deep.vmx", "after the cutover");
}

#[test]
fn an_ed25519_key_refused_by_the_host_is_said_with_the_key_types_esxi_takes() {
    let (esx, tp, name) = begin(Setup::default(), "esxr-key");
    off_vm_with_their_snapshot(&esx, "key", 52);
    esx.client_key_ed25519();
    let run = esx.import(&tp, &name, "key/key.vmx", &CPU);
    assert_eq!(run.code(), Some(1), "{run}");
    let err = run.stderr();
    assert!(err.contains("Permission denied"), "{run}");
    assert!(
        err.contains("ECDSA or RSA") && err.contains("ed25519"),
        "the way out: {run}"
    );
    assert!(!domain_exists(&name));
}

/// The whole migration of a running VM with every fault of ESX-REAL.md on at once: a
/// datastore named with spaces and brackets reached by its name and by its UUID, a VM name with
/// brackets, `MaxSessions 1`, an invalid VM and a vCLS row in getallvms, 26 snapshots of
/// theirs with multi-line descriptions (the chain ends 28 deep, one below where the tool
/// stops), an unchanged-state refusal, hostd hiccups at every kind of call, and the tree
/// printed after each removal.
#[test]
fn the_whole_migration_goes_through_with_every_fault_at_once() {
    let (esx, tp, name) = begin(
        Setup {
            datastore: "datastore2 (1)".into(),
            one_session: true,
        },
        "esxr-all",
    );
    let vmx = running_vm(&esx, "shop [eu] 1", 60, "sesparse", 2, false);
    for snap in 1..=26 {
        esx.add_snapshot_described(60, snap, &format!("theirs-{snap}"), HOSTILE_DESCRIPTION);
    }
    esx.invalid_vms();
    esx.remove_prints_tree();
    let by_uuid = esx.url_by_uuid(&vmx);
    let mut runs = Vec::new();

    // Stage 1, by the datastore's UUID.
    esx.transient("getallvms", 1, LOGIN_RESET);
    esx.transient("snapshot.get", 1, NOT_CREATED);
    let s1 = esx.import_url(&tp, &name, &by_uuid, &CPU).ok();
    assert!(
        s1.stdout().contains("took snapshot 'virt-vmdkimport-27'"),
        "{s1}"
    );
    runs.push(s1);
    esx.wait_rounds(60, 3);

    // Sync 1: ESXi refuses the snapshot as unchanged; the chain already frozen is used.
    esx.unchanged_once(60);
    esx.transient("power.getstate", 1, NO_LOCALHOST);
    let sync = esx.import(&tp, &name, &vmx, &["--sync"]).ok();
    assert!(
        sync.stdout()
            .contains("has not changed since its last snapshot"),
        "{sync}"
    );
    runs.push(sync);
    esx.wait_rounds(60, 3);

    // Sync 2, by the UUID again: a snapshot (the 28th), its frozen deltas applied.
    esx.transient("snapshot.create", 1, LOGIN_SSL);
    let frozen = tops(&esx, &vmx);
    let sync = esx.import_url(&tp, &name, &by_uuid, &["--sync"]).ok();
    assert!(
        sync.stdout().contains("sync round 2: applied 2 delta(s)"),
        "{sync}"
    );
    assert_volumes(&tp, &name, &frozen, "after sync round 2");
    runs.push(sync);
    esx.wait_rounds(60, 3);

    // The cutover: hiccups at the shutdown request, the power poll and the removals.
    esx.shutdown_delay(60, 2);
    esx.transient("power.shutdown", 1, LOGIN_RESET);
    esx.transient("power.getstate", 3, LOGIN_RESET);
    esx.transient("snapshot.remove", 1, NOT_CREATED);
    esx.transient("snapshot.get", 2, NO_LOCALHOST);
    let log = tp.path("console.log");
    util::vmximport::add_console_log(&name, &log);
    let cut = esx
        .import(
            &tp,
            &name,
            &vmx,
            &["--cutover", "--jobs", "2", "--remove-esx-snapshots"],
        )
        .ok();
    for want in [
        "removed snapshot 'virt-vmdkimport-27'",
        "removed snapshot 'virt-vmdkimport-1'",
        "final deltas",
    ] {
        assert!(cut.stdout().contains(want), "{want}: {cut}");
    }
    runs.push(cut);
    for run in &runs {
        println!("{run}");
        no_warning(run);
    }
    let said = runs
        .iter()
        .map(|r| (r.stdout() + &r.stderr()).matches(ONE_SESSION).count())
        .sum::<usize>();
    assert!(said >= 1, "the one-session host is said");
    assert_eq!(esx.power_state(60), "off");
    let top = tops(&esx, &vmx);
    let last = esx.last_payload(60);
    assert_eq!(
        util::vmximport::wait_for_line(
            &log,
            util::bootimg::MARKER,
            std::time::Duration::from_secs(90)
        ),
        Some(util::bootimg::expected_line(&last)),
        "the guest booted on KVM shows what it wrote last on ESXi"
    );
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &top, "after the cutover");
    let left = esx.snapshot_names(60);
    assert_eq!(left.len(), 26, "theirs kept: {left:?}");
    assert!(left.iter().all(|n| n.starts_with("theirs-")), "{left:?}");
}
