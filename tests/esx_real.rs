//! Real ESXi hosts, not a kind imitation of one (issue 18): each fault ESX-REAL.md reports of
//! real hosts, switched on in the stand-in of tests/util/esx.rs, and met by the tool; then
//! the whole migration (stage 1, two `--sync` rounds, `--cutover --remove-esx-snapshots`) with
//! every fault on at once. The stand-in always runs commands in BusyBox's `sh` with ESXi's
//! applets only (no `tr`, `comm`, `head -c`), takes ECDSA and RSA keys only, and keeps its
//! datastore under a UUID folder that the datastore's name links to.

mod util;

use util::esx::{assert_volumes, running_vm, tops, vmx_text, Setup, StandIn};
use util::fixtures::{pattern, patterned, Kind, SECTOR};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{cowd_child, domain_exists, flat_base, virsh, volume_bytes, Run};
use util::{assert_same, qemu_read};

const MIB: usize = 1 << 20;
/// The trial start asks for QEMU's CPU, which starts on every host (doc/testing.md).
const CPU: [&str; 2] = ["--cpu", "default"];

/// The programs of the commands the tool ran on the host, from its `-v` lines (`debug: ssh
/// root@127.0.0.1: COMMAND`), each command split at `&&`.
fn programs_sent(run: &Run) -> Vec<String> {
    let mut sent: Vec<String> = run
        .stderr()
        .lines()
        .filter_map(|l| l.strip_prefix("debug: ssh root@127.0.0.1"))
        .filter_map(|l| l.split_once(": ").map(|(_, c)| c.to_string()))
        .flat_map(|c| {
            c.split("&&")
                .map(|p| p.split_whitespace().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    sent.sort();
    sent.dedup();
    sent
}

/// A powered-off VM `stem` (id `id`) whose 8 MiB base has a COWD snapshot of its own,
/// "nightly" (id 1), holding data; its .vmx names that snapshot's descriptor. The base's and
/// the snapshot's descriptors.
fn off_vm_with_their_snapshot(
    esx: &StandIn,
    stem: &str,
    id: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = esx.vm_dir(stem);
    let cid = 0x30000000 + id;
    let base = flat_base(&dir, stem, &patterned(0x900 + u64::from(id), 8 * MIB), cid);
    let sectors = (8 * MIB) as u64 / SECTOR;
    let theirs = cowd_child(
        &dir,
        &format!("{stem}-000001"),
        &format!("{stem}.vmdk"),
        cid,
        cid + 0x100,
        sectors,
        &[(3, Kind::Data), (9000, Kind::Data)],
        &mut pattern(0xc0 + u64::from(id)),
    );
    let vmx = format!("{stem}/{stem}.vmx");
    std::fs::write(
        esx.vmx_path(&vmx),
        vmx_text(stem, &[&format!("{stem}-000001.vmdk")]),
    )
    .unwrap();
    esx.register(id, stem, &vmx, false, "cowd", "");
    esx.add_snapshot_record(id, 1, "nightly");
    (base, theirs)
}

#[test]
fn reads_on_the_host_are_dd_and_stat_only() {
    let esx = StandIn::start();
    let tp = TestPool::new("esxr-dd");
    let (base, theirs) = off_vm_with_their_snapshot(&esx, "dd", 41);
    let name = unique_name("esxr-dd");
    tp.track_domain(&name);

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
        let sent = programs_sent(run);
        assert!(sent.contains(&"dd".to_string()), "{sent:?}: {run}");
        for p in &sent {
            assert!(
                ["vim-cmd", "dd", "stat"].contains(&p.as_str()),
                "{p}: the tool sends vim-cmd, dd and stat only: {run}"
            );
        }
    }
}

/// No line of the run is a warning.
fn no_warning(run: &Run) {
    assert!(!run.stderr().contains("warning:"), "a warning: {run}");
}

/// What the tool says when the host takes one session per connection.
const ONE_SESSION: &str = "takes one session per ssh connection";

#[test]
fn a_host_that_refuses_a_second_session_is_said_once_and_is_no_failure() {
    let esx = StandIn::start_with(Setup {
        one_session: true,
        ..Setup::default()
    });
    let tp = TestPool::new("esxr-sess");
    let vmx = running_vm(&esx, "ses", 46, "cowd", 2, false);
    let name = unique_name("esxr-sess");
    tp.track_domain(&name);
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
    virsh(&["destroy", &name]).ok();
    assert_volumes(&tp, &name, &tops(&esx, &vmx), "after the cutover");
}

#[test]
fn an_ed25519_key_refused_by_the_host_is_said_with_the_key_types_esxi_takes() {
    let esx = StandIn::start();
    let tp = TestPool::new("esxr-key");
    off_vm_with_their_snapshot(&esx, "key", 52);
    esx.client_key_ed25519();
    let name = unique_name("esxr-key");
    tp.track_domain(&name);
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
