//! The ESXi transfer levers (issue 18, part 3): a base read as ranges over several ssh
//! connections or over `dd | nc`, written in place as they arrive; a range cut short; a
//! cutover over nc; `probe`. Against the strict stand-in of tests/util/esx.rs.

mod util;

use util::esx::{assert_volumes, off_vm_with_snapshot, tops, Setup, StandIn};
use util::fixtures::patterned;
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{virsh, volume_bytes};
use util::{assert_same, qemu_read};

const MIB: usize = 1 << 20;
/// The trial start asks for QEMU's CPU, which starts on every host (doc/testing.md).
const CPU: [&str; 2] = ["--cpu", "default"];

/// A powered-off VM `stem` (id `id`) whose base of `mib` MiB holds data with a 12 MiB run of
/// zeros from 8 MiB on (a hole in the volume), and a COWD snapshot of its own ("nightly")
/// holding data its .vmx names. The base's and the snapshot's descriptors.
fn off_vm(
    esx: &StandIn,
    stem: &str,
    id: u32,
    mib: usize,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cid = 0x40000000 + id;
    let mut data = patterned(0x700 + u64::from(id), mib * MIB);
    data[8 * MIB..20 * MIB].fill(0);
    off_vm_with_snapshot(
        esx,
        stem,
        id,
        (&data, cid),
        &[3, 9000, 30000],
        0xd0 + u64::from(id),
    )
}

/// Bytes the volume takes on its storage.
fn allocation(tp: &TestPool, name: &str) -> u64 {
    tp.pool.volume(name).unwrap().allocation().unwrap()
}

#[test]
fn a_base_over_one_or_four_ssh_connections_or_nc_is_the_base() {
    let esx = StandIn::start();
    let tp = TestPool::new("esxt-ranges");
    let (base, _) = off_vm(&esx, "ranges", 51, 32);
    let want = qemu_read(&base);
    for (tag, extra, conns) in [
        ("one", &["--ssh-connections", "1"][..], Some(1)),
        ("four", &["--ssh-connections", "4"][..], Some(4)),
        ("nc", &["--transport", "nc", "--nc-port", "0"][..], None),
    ] {
        let name = unique_name(&format!("esxt-{tag}"));
        tp.track_domain(&name);
        let before = esx.connections();
        let mut args = vec![CPU[0], CPU[1], "--no-start", "-v"];
        args.extend_from_slice(extra);
        let run = esx.import(&tp, &name, "ranges/ranges.vmx", &args).ok();
        let vol = format!("{name}-disk0");
        assert_same(&volume_bytes(&tp, &vol), &want, tag);
        // The 12 MiB of zeros stay a hole.
        assert!(
            allocation(&tp, &vol) <= (32 - 12 + 1) as u64 * MIB as u64,
            "{tag}: {} bytes allocated: {run}",
            allocation(&tp, &vol)
        );
        // One connection for the commands, and one per range.
        if let Some(n) = conns {
            assert_eq!(
                esx.connections() - before,
                1 + n,
                "{tag}: {run}\n{}",
                esx.log()
            );
        } else {
            assert!(run.stderr().contains("| nc "), "{tag}: {run}");
        }
    }
}

#[test]
fn nc_ranges_on_a_host_of_one_session_per_connection_still_come() {
    // MaxSessions 1 (the 6.5 and 6.7 STIGs): the ranges' `dd | nc` commands overlap on the
    // shared connection, and ssh opens connections of their own for them.
    let esx = StandIn::start_with(Setup {
        one_session: true,
        ..Setup::default()
    });
    let tp = TestPool::new("esxt-one");
    let name = unique_name("esxt-one");
    tp.track_domain(&name);
    let (base, _) = off_vm(&esx, "one", 58, 32);
    let args = [
        CPU[0],
        CPU[1],
        "--no-start",
        "--transport",
        "nc",
        "--nc-port",
        "0",
    ];
    let run = esx.import(&tp, &name, "one/one.vmx", &args).ok();
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&base),
        "nc under MaxSessions 1",
    );
    assert_eq!(
        run.stdout()
            .matches("one session per ssh connection")
            .count(),
        1,
        "said once: {run}"
    );
}

#[test]
fn a_range_cut_short_fails_saying_so_and_a_rerun_completes() {
    for (tag, extra) in [
        ("ssh", &["--ssh-connections", "4"][..]),
        (
            "nc",
            &[
                "--transport",
                "nc",
                "--nc-port",
                "0",
                "--ssh-connections",
                "4",
            ][..],
        ),
    ] {
        let esx = StandIn::start();
        let tp = TestPool::new(&format!("esxt-cut-{tag}"));
        let name = unique_name(&format!("esxt-cut-{tag}"));
        tp.track_domain(&name);
        let (base, _) = off_vm(&esx, "cut", 52, 32);
        let mut args = vec![CPU[0], CPU[1], "--no-start"];
        args.extend_from_slice(extra);
        // The third of four ranges (8 MiB each), cut 1 MiB in.
        esx.drop_read("cut-flat.vmdk bs=4194304 skip=4", MIB as u64);
        let run = esx.import(&tp, &name, "cut/cut.vmx", &args);
        assert_ne!(run.code(), Some(0), "{tag}: {run}");
        assert!(
            run.stderr().contains("the transfer ended after")
                || run.stderr().contains("reading over ssh failed"),
            "{tag}: {run}"
        );
        assert!(run.stderr().contains("cut-flat.vmdk"), "{tag}: {run}");
        esx.import(&tp, &name, "cut/cut.vmx", &args).ok();
        assert_same(
            &volume_bytes(&tp, &format!("{name}-disk0")),
            &qemu_read(&base),
            tag,
        );
    }
}

#[test]
fn a_base_longer_than_its_disk_is_refused_over_ssh_and_nc() {
    let esx = StandIn::start();
    let tp = TestPool::new("esxt-long");
    let (base, _) = off_vm(&esx, "long", 57, 24);
    // The flat extent holds a block more than the descriptor's 24 MiB.
    let flat = base.with_file_name("long-flat.vmdk");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&flat)
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![7u8; 4 * MIB]).unwrap();
    for (tag, extra) in [
        ("ssh", &["--ssh-connections", "2"][..]),
        ("nc", &["--transport", "nc", "--nc-port", "0"][..]),
    ] {
        let name = unique_name(&format!("esxt-long-{tag}"));
        tp.track_domain(&name);
        let mut args = vec![CPU[0], CPU[1], "--no-start"];
        args.extend_from_slice(extra);
        let run = esx.import(&tp, &name, "long/long.vmx", &args);
        assert_eq!(run.code(), Some(1), "{tag}: {run}");
        assert!(
            run.stderr().contains("long-flat.vmdk")
                && run.stderr().contains("more bytes than the range"),
            "{tag}: {run}"
        );
    }
}

#[test]
fn a_cutover_over_nc_gives_the_final_chain() {
    let esx = StandIn::start();
    let tp = TestPool::new("esxt-cutover");
    let name = unique_name("esxt-cutover");
    tp.track_domain(&name);
    off_vm(&esx, "cutnc", 53, 24);
    let nc = ["--transport", "nc", "--nc-port", "0"];
    let mut args = vec![CPU[0], CPU[1]];
    args.extend_from_slice(&nc);
    esx.import(&tp, &name, "cutnc/cutnc.vmx", &args).ok();
    let mut args = vec!["--cutover", "-v"];
    args.extend_from_slice(&nc);
    let run = esx.import(&tp, &name, "cutnc/cutnc.vmx", &args).ok();
    assert!(run.stderr().contains("| nc "), "the grains over nc: {run}");
    assert!(run.stdout().contains("bytes read over nc"), "{run}");
    virsh(&["destroy", &name]).ok();
    assert_volumes(
        &tp,
        &name,
        &tops(&esx, "cutnc/cutnc.vmx"),
        "cutover over nc",
    );
}

#[test]
fn an_nc_port_in_use_is_refused_before_anything_changes_on_esxi() {
    let esx = StandIn::start();
    let tp = TestPool::new("esxt-busy");
    let name = unique_name("esxt-busy");
    tp.track_domain(&name);
    off_vm(&esx, "busy", 59, 24);
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let run = esx.import(
        &tp,
        &name,
        "busy/busy.vmx",
        &[CPU[0], CPU[1], "--transport", "nc", "--nc-port", &port],
    );
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr()
            .contains(&format!("listening on TCP port {port}")),
        "{run}"
    );
    let sent = esx.commands();
    assert!(!sent.contains("snapshot.create"), "no snapshot: {sent}");
    assert!(!util::vmximport::domain_exists(&name), "{run}");
}

#[test]
fn nc_that_cannot_connect_names_the_esxi_firewall() {
    let esx = StandIn::start();
    let tp = TestPool::new("esxt-fw");
    let name = unique_name("esxt-fw");
    tp.track_domain(&name);
    off_vm(&esx, "fw", 54, 24);
    // No host answers at 0.0.0.1: nc fails at once, as behind a closed firewall.
    let run = esx.import(
        &tp,
        &name,
        "fw/fw.vmx",
        &[
            CPU[0],
            CPU[1],
            "--transport",
            "nc",
            "--nc-port",
            "0",
            "--nc-address",
            "0.0.0.1",
        ],
    );
    assert_ne!(run.code(), Some(0), "{run}");
    assert!(
        run.stderr().contains("/etc/vmware/firewall")
            && run.stderr().contains("esxcli network firewall refresh"),
        "{run}"
    );
}

/// Every file under the stand-in's datastore with its length and modification time.
fn datastore(esx: &StandIn) -> Vec<(std::path::PathBuf, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut dirs = vec![esx.vm_dir("")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dirs.push(e.path());
            } else {
                files.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn probe_prints_each_settings_rate_and_changes_nothing() {
    let esx = StandIn::start();
    off_vm(&esx, "probe", 55, 32);
    let url = esx.url("probe/probe.vmx");
    let before = datastore(&esx);
    // A port of its own for the run, as --nc-port 9001 would be: one listener for every
    // nc setting.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let run = esx
        .tool(&[
            "probe",
            &url,
            "--bytes",
            "8M",
            "--transport",
            "nc",
            "--nc-port",
            &port,
        ])
        .ok();
    let out = run.stdout();
    for (transport, n) in [
        ("ssh", 1),
        ("ssh", 2),
        ("ssh", 4),
        ("ssh", 8),
        ("nc", 1),
        ("nc", 4),
    ] {
        assert!(
            out.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 4
                    && f[0] == transport
                    && f[1] == n.to_string()
                    && f[2].parse::<f64>().is_ok_and(|r| r > 0.0)
            }),
            "{transport} x{n}: {run}"
        );
    }
    assert!(out.contains("recommended: --ssh-connections "), "{run}");
    // Every connection of the run is closed once it ended, its shared one too (not left to
    // ControlPersist).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let closed = || esx.log().matches("Disconnected from user root").count();
    while closed() < esx.connections() {
        assert!(
            std::time::Instant::now() < until,
            "{} of {} connections closed:\n{}",
            closed(),
            esx.connections(),
            esx.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(datastore(&esx), before, "nothing changed on the datastore");
    let sent = esx.commands();
    for l in sent.lines() {
        assert!(
            l.starts_with("vmsvc/getallvms"),
            "only reads: {l:?} in {sent}"
        );
    }

    let json = esx.tool(&["probe", &url, "--bytes", "4M", "--json"]).ok();
    let doc: serde_json::Value = serde_json::from_str(json.stdout().trim()).unwrap();
    assert_eq!(doc["rates"].as_array().unwrap().len(), 4, "{json}");
    assert_eq!(doc["bytes"], 4 << 20, "{json}");
    assert!(doc["recommended"]
        .as_str()
        .unwrap()
        .starts_with("--ssh-connections"));
}

#[test]
fn probe_of_a_base_the_vm_holds_says_when_it_can_run() {
    let esx = StandIn::start();
    let (base, _) = off_vm(&esx, "held", 56, 24);
    esx.lock(&base.with_file_name("held-flat.vmdk"));
    let run = esx.tool(&["probe", &esx.url("held/held.vmx")]);
    assert_eq!(run.code(), Some(1), "{run}");
    assert!(
        run.stderr().contains("locked") && run.stderr().contains("after stage 1"),
        "{run}"
    );
}
