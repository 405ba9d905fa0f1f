//! Migration plans end to end on the real libvirtd through two URIs: stage 1 and the cutover of six VMs within the plan's limits (read from the step times in each import state), one VM failing while the others finish, an interrupted run resumed, `plan check` changing nothing.

mod util;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::Stdio;

use util::import::show;
use util::libvirt::{read_volume, TestPool, REMOTE_URI};
use util::plan::*;
use util::{assert_same, qemu_read};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The summary line of `vm` (the table's row starting with its name).
fn row<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .rev()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no summary row for {name} in\n{text}"))
}

/// Each VM's volume (VM i in pool i % 2) holds its base, byte for byte.
fn assert_bases_uploaded(pools: &[&TestPool], vms: &[PlanVm]) {
    for (i, v) in vms.iter().enumerate() {
        let vol = pools[i % 2]
            .pool
            .volume(&format!("{}-disk0", v.name))
            .unwrap();
        assert_same(
            &read_volume(&vol),
            &std::fs::read(v.folder.path("base-flat.vmdk")).unwrap(),
            &v.name,
        );
    }
}

#[test]
fn six_vms_over_two_uris_run_within_the_limits_and_one_bad_delta_fails_alone() {
    let (a, b) = (TestPool::new("plana"), TestPool::on(REMOTE_URI, "planb"));
    let pools = [&a, &b];
    let vms = vms(&pools, 6, 3, Some(4));
    let head = "jobs = 3\nmax_per_target = 2\nmax_per_source = 1\n";
    let plan = write_plan(&a.dir, &plan_text(head, &pools, &vms));

    let out = run_plan("stage1", &plan, &[]);
    assert!(out.status.success(), "{}", show(&out));
    println!("{}", stdout(&out));
    let spans1 = spans(&pools, &vms, "stage1");
    assert_eq!(spans1.len(), 6, "one stage1 record per VM");
    assert_eq!(
        max_overlap(&spans1, |_| "all".into()),
        3,
        "jobs = 3, reached"
    );
    assert!(
        max_overlap(&spans1, |i| vms[i].uri.clone()) <= 2,
        "max_per_target = 2"
    );
    assert_eq!(
        max_overlap(&spans1, |i| vms[i].group.clone()),
        1,
        "max_per_source = 1"
    );
    assert_bases_uploaded(&pools, &vms);

    let out = run_plan("cutover", &plan, &[]);
    println!("{}", stdout(&out));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = stdout(&out);
    let bad = row(&text, &vms[4].name);
    assert!(bad.contains("FAILED") && bad.contains("parentCID"), "{bad}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 of 6 VMs failed") && err.contains(&vms[4].name),
        "{err}"
    );
    // Each delta's 16 grains of 8 sectors: what its local stage 2 wrote, recorded and shown.
    let applied = 16 * 8 * 512;
    for (i, v) in vms.iter().enumerate().filter(|(i, _)| *i != 4) {
        assert!(
            row(&text, &v.name).contains("cut over") && row(&text, &v.name).contains("64.0 KiB"),
            "{}",
            row(&text, &v.name)
        );
        let st = state_of(pools[i % 2], v).unwrap();
        let runs: Vec<u64> = st.local_applies.iter().map(|a| a.bytes).collect();
        assert_eq!(runs, [applied], "{}: one local stage 2 record", v.name);
        let vol = pools[i % 2]
            .pool
            .volume(&format!("{}-disk0", v.name))
            .unwrap();
        assert_same(&read_volume(&vol), &qemu_read(&v.delta), &v.name);
    }
    let spans2 = spans(&pools, &vms, "cutover");
    assert_eq!(spans2.len(), 6);
    assert!(max_overlap(&spans2, |i| vms[i].uri.clone()) <= 2);
    assert_eq!(max_overlap(&spans2, |i| vms[i].group.clone()), 1);
    let st = state_of(pools[0], &vms[4]).unwrap();
    assert!(
        st.local_applies.is_empty(),
        "the failed stage 2 wrote nothing"
    );
    assert!(!row(&text, &vms[4].name).contains("KiB"), "no bytes for it");
    let rec = st.steps.last().unwrap();
    assert_eq!(rec.outcome, "failed");
    assert!(
        rec.error.as_deref().unwrap_or("").contains("parentCID"),
        "{rec:?}"
    );

    // A rerun leaves the finished VMs alone (--json: the document on stdout, the table on stderr).
    let only = format!("{},{}", vms[0].name, vms[4].name);
    let out = run_plan("cutover", &plan, &["--only", &only, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let list = doc["vms"].as_array().unwrap();
    assert_eq!((list.len(), doc["failed"].as_u64()), (2, Some(1)), "{doc}");
    assert_eq!(list[0]["result"], "skipped");
    assert_eq!(list[0]["error"], "cut over already");
    assert_eq!(list[1]["result"], "failed");
    assert!(
        list[1]["error"].as_str().unwrap().contains("parentCID"),
        "{doc}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        row(&err, &vms[0].name).contains("cut over already"),
        "{err}"
    );
    let out = run_plan("status", &plan, &[]);
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    println!("{text}");
    assert!(
        row(&text, &vms[4].name).contains("stage 1 done")
            && row(&text, &vms[4].name).contains("parentCID")
    );
    assert!(
        row(&text, &vms[1].name).contains("cut over")
            && row(&text, &vms[1].name).contains("8.0 MiB")
    );

    let out = run_plan("status", &plan, &["--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["vms"][4]["last_step"]["outcome"], "failed", "{doc}");
    assert_eq!(doc["vms"][1]["phase"], "cut over", "{doc}");

    let out = util::import::run(&["status", "--domain", &vms[1].name, "-c", &vms[1].uri]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        text.contains("cut over") && text.contains("d1.vmdk") && text.contains("cutover"),
        "{text}"
    );
    let run1 = text.lines().find(|l| l.contains("stage 2 run 1"));
    assert!(run1.is_some_and(|l| l.contains("64.0 KiB in")), "{text}");
}

#[test]
fn an_interrupted_plan_stage1_is_resumed_by_the_same_command() {
    let (a, b) = (TestPool::new("planc"), TestPool::on(REMOTE_URI, "pland"));
    let pools = [&a, &b];
    let vms = vms(&pools, 4, 4, None);
    let plan = write_plan(&a.dir, &plan_text("jobs = 1\n", &pools, &vms));

    let mut child = plan_cmd("stage1", &plan, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("stage1 started"), "{first}");
    // Ctrl-C: the whole process group of the plan run.
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}\n{err}");
    assert!(
        err.contains("interrupted by SIGINT") && err.contains("rerun the same command"),
        "{err}"
    );
    let text = rest.join("\n");
    assert!(
        text.contains("not started"),
        "later VMs never started:\n{text}"
    );

    let out = run_plan("stage1", &plan, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert_bases_uploaded(&pools, &vms);
    for v in &vms {
        assert!(
            row(&stdout(&out), &v.name).contains("stage 1 done"),
            "{}",
            stdout(&out)
        );
    }
    // Never two at once with jobs = 1, over both runs.
    assert_eq!(
        max_overlap(&spans(&pools, &vms, "stage1"), |_| "all".into()),
        1
    );
}

#[test]
fn plan_check_changes_nothing_and_names_what_is_wrong() {
    let tp = TestPool::new("plane");
    let pools = [&tp];
    let vms = vms(&pools, 2, 1, None);
    let mut text = plan_text("", &pools, &vms);
    text += &format!(
        "\n[[vm]]\nname = \"missing-{}\"\npool = \"{}\"\nflat = \"nowhere.vmdk\"\n",
        vms[0].name, tp.name
    );
    let plan = write_plan(&tp.dir, &text);

    let out = run_plan("check", &plan, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("would create volume"), "{text}");
    let last = text.lines().last().unwrap();
    assert!(
        last.contains("FAILED") && last.contains("nowhere.vmdk"),
        "{last}"
    );
    for v in &vms {
        assert!(
            tp.conn.domain(&v.name).unwrap().is_none(),
            "{} defined by a check",
            v.name
        );
    }
    assert!(
        tp.pool.raw().list_all_volumes(0).unwrap().is_empty(),
        "volumes made by a check"
    );

    // `-v` given to the plan reaches each VM's run: its debug lines are in the VM's log.
    run_plan("check", &plan, &["-v"]);
    let log = plan
        .with_extension("logs")
        .join(format!("{}.log", vms[0].name));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.starts_with("debug: connected to libvirt at ")),
        "{log}"
    );

    std::fs::write(
        &plan,
        format!("{}\nmemroy = 64\n", plan_text("", &pools, &vms)),
    )
    .unwrap();
    let out = run_plan("check", &plan, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("migration.toml") && err.contains("memroy") && err.contains("line"),
        "{err}"
    );
}

/// Two powered-off VMs on the stand-in ESXi host, each with data in the delta frozen by the
/// pre-copy round and in the one the cutover reads: `plan stage1`, `plan sync`, `plan cutover`
/// give each volume qemu-img's reading of its chain on the host; local sources are skipped
/// by `plan sync`.
#[test]
fn plan_sync_and_cutover_drive_vms_from_an_esxi_host() {
    use util::esx::StandIn;
    use util::fixtures::{pattern, Kind, SECTOR};
    use util::vmximport::{cowd_child, flat_base};
    let esx = StandIn::start();
    let tp = TestPool::new("planesx");
    let sectors = CAP / SECTOR;
    let mut text = format!("[defaults]\npool = \"{}\"\ncpu = \"default\"\n", tp.name);
    let mut names = Vec::new();
    for (i, stem) in ["ea", "eb"].iter().enumerate() {
        let dir = esx.vm_dir(stem);
        flat_base(
            &dir,
            stem,
            &util::fixtures::patterned(0xe0 + i as u64, CAP as usize),
            0x1000 + i as u32,
        );
        let vmx = format!(
            "config.version = \"8\"\nvirtualHW.version = \"19\"\nguestOS = \"ubuntu-64\"\nmemsize = \"64\"\n\
             numvcpus = \"1\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
             scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"{stem}.vmdk\"\n"
        );
        std::fs::write(dir.join(format!("{stem}.vmx")), vmx).unwrap();
        esx.register(
            30 + i as u32,
            stem,
            &format!("{stem}/{stem}.vmx"),
            false,
            "cowd",
            "",
        );
        let name = util::libvirt::unique_name(&format!("planesx{i}"));
        tp.track_domain(&name);
        text += &format!(
            "\n[[vm]]\nname = \"{name}\"\nvmx = \"{}\"\n",
            esx.url(&format!("{stem}/{stem}.vmx"))
        );
        names.push((name, dir, stem.to_string()));
    }
    let plan = write_plan(&tp.dir, &text);
    let run = |action: &str| {
        let out = plan_cmd(action, &plan, &[])
            .env("VIRT_VMDKIMPORT_SSH_CONFIG", esx.ssh_config())
            .output()
            .unwrap();
        assert!(out.status.success(), "plan {action}: {}", show(&out));
        stdout(&out)
    };
    // What each VM writes into the delta a snapshot gives it (the VM is off: written here).
    let write = |n: u32, seed: u64| {
        for (i, (_, dir, stem)) in names.iter().enumerate() {
            let parent = if n == 1 {
                format!("{stem}.vmdk")
            } else {
                format!("{stem}-{:06}.vmdk", n - 1)
            };
            let parent_cid = if n == 1 {
                0x1000 + i as u32
            } else {
                0x2000 + i as u32 + 16 * (n - 1)
            };
            let grains = [
                ((seed + i as u64) * 8, Kind::Data),
                (9000 + seed, Kind::Data),
            ];
            cowd_child(
                dir,
                &format!("{stem}-{n:06}"),
                &parent,
                parent_cid,
                0x2000 + i as u32 + 16 * n,
                sectors,
                &grains,
                &mut pattern(seed),
            );
        }
    };
    check_reads_esxi_and_changes_nothing(&esx, &tp, &run("check"), &names);
    run("stage1");
    write(1, 11);
    let synced = run("sync");
    assert!(synced.matches(" sync done").count() == 2, "{synced}");
    write(2, 22);
    let cut = run("cutover");
    assert!(cut.matches("cut over").count() >= 2, "{cut}");
    for (name, dir, stem) in &names {
        let vol = tp.pool.volume(&format!("{name}-disk0")).unwrap();
        let top = dir.join(format!("{stem}-000002.vmdk"));
        assert_same(&read_volume(&vol), &qemu_read(&top), name);
    }
}

/// `plan check` of VMs on the stand-in ESXi host (VM ids 30, 31) read them over ssh as
/// stage 1's dry run does: each VM's disk is found on the host and the snapshot is only said,
/// not taken; nothing is made here.
fn check_reads_esxi_and_changes_nothing(
    esx: &util::esx::StandIn,
    tp: &TestPool,
    check: &str,
    vms: &[(String, std::path::PathBuf, String)],
) {
    for (i, (name, dir, stem)) in vms.iter().enumerate() {
        let id = 30 + i;
        let flat = dir.join(format!("{stem}-flat.vmdk"));
        for want in [
            format!("[{name}] stage1 --dry-run done"),
            format!("[{name}]   127.0.0.1: running vim-cmd vmsvc/getallvms"),
            format!("would run vim-cmd vmsvc/snapshot.create {id} 'virt-vmdkimport-1'"),
            format!(
                "would run dd if='{}' bs=4194304 skip=1 count=2",
                flat.display()
            ),
        ] {
            assert!(check.contains(&want), "{want:?} in\n{check}");
        }
        let snaps = esx.vim_cmd(&["vmsvc/snapshot.get", &id.to_string()]).ok();
        assert_eq!(snaps.stdout(), "Get Snapshot:\n", "no snapshot of VM {id}");
        let vmx = std::fs::read_to_string(dir.join(format!("{stem}.vmx"))).unwrap();
        assert!(
            vmx.contains(&format!("fileName = \"{stem}.vmdk\"")),
            "{vmx}"
        );
        assert!(!dir.join(format!("{stem}-000001.vmdk")).exists());
        assert!(tp.conn.domain(name).unwrap().is_none(), "{name} defined");
    }
    assert!(tp.pool.raw().list_all_volumes(0).unwrap().is_empty());
}

/// `plan check` of an ESXi VM whose .vmx is not on the host fails for that VM, naming the
/// path, while the other VM of the plan passes.
#[test]
fn plan_check_of_a_missing_esxi_vm_names_its_path() {
    use util::esx::StandIn;
    let esx = StandIn::start();
    let tp = TestPool::new("planesxbad");
    let dir = esx.vm_dir("ok");
    util::vmximport::flat_base(
        &dir,
        "ok",
        &util::fixtures::patterned(0xe5, CAP as usize),
        0x4444,
    );
    std::fs::write(dir.join("ok.vmx"), util::esx::vmx_text("ok", &["ok.vmdk"])).unwrap();
    esx.register(40, "ok", "ok/ok.vmx", false, "cowd", "");
    let (good, bad) = (
        util::libvirt::unique_name("planesxok"),
        util::libvirt::unique_name("planesxbad"),
    );
    tp.track_domain(&good);
    tp.track_domain(&bad);
    let text = format!(
        "[defaults]\npool = \"{}\"\ncpu = \"default\"\n\n[[vm]]\nname = \"{good}\"\nvmx = \"{}\"\n\n\
         [[vm]]\nname = \"{bad}\"\nvmx = \"{}\"\n",
        tp.name,
        esx.url("ok/ok.vmx"),
        esx.url("gone/gone.vmx")
    );
    let plan = write_plan(&tp.dir, &text);
    let out = plan_cmd("check", &plan, &[])
        .env("VIRT_VMDKIMPORT_SSH_CONFIG", esx.ssh_config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let text = stdout(&out);
    println!("{text}");
    let failed = row(&text, &bad);
    assert!(
        failed.contains("FAILED") && failed.contains("gone/gone.vmx"),
        "{failed}"
    );
    assert!(row(&text, &good).contains("done"), "{text}");
    assert_eq!(
        esx.vim_cmd(&["vmsvc/snapshot.get", "40"]).ok().stdout(),
        "Get Snapshot:\n"
    );
    assert!(tp.pool.raw().list_all_volumes(0).unwrap().is_empty());
}

/// A VM given by its local `.vmx` (two disks): `plan stage1` uploads both bases, `plan
/// cutover` walks each disk's chain from the `.vmx` again (its fileName now names the
/// snapshot VMware took) and applies it: both volumes hold qemu-img's reading of their chains.
#[test]
fn a_local_vmx_vm_goes_through_plan_stage1_and_cutover() {
    use util::fixtures::{pattern, patterned, Kind, SECTOR};
    use util::vmximport::{cowd_child, flat_base};
    let tp = TestPool::new("planvmx");
    let dir = tp.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let sectors = CAP / SECTOR;
    for (i, stem) in ["vx", "vx_1"].iter().enumerate() {
        flat_base(
            &dir,
            stem,
            &patterned(0x70 + i as u64, CAP as usize),
            0x7000 + i as u32,
        );
    }
    let vmx = |a: &str, b: &str| {
        format!(
            "config.version = \"8\"\nvirtualHW.version = \"19\"\nguestOS = \"ubuntu-64\"\n\
             memsize = \"64\"\nnumvcpus = \"1\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n\
             scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"{a}\"\n\
             scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"{b}\"\n"
        )
    };
    std::fs::write(dir.join("vx.vmx"), vmx("vx.vmdk", "vx_1.vmdk")).unwrap();
    let name = util::libvirt::unique_name("planvmx");
    tp.track_domain(&name);
    let text = format!(
        "[defaults]\npool = \"{}\"\ncpu = \"default\"\nno_start = true\n\n[[vm]]\nname = \"{name}\"\nvmx = \"vm/vx.vmx\"\n",
        tp.name
    );
    let plan = write_plan(&tp.dir, &text);
    let out = run_plan("stage1", &plan, &[]);
    assert!(out.status.success(), "{}", show(&out));

    // VMware's snapshot: each disk's fileName now names its child.
    let mut tops = Vec::new();
    for (i, stem) in ["vx", "vx_1"].iter().enumerate() {
        let grains = [(8 * (i as u64 + 1), Kind::Data), (sectors - 1, Kind::Data)];
        let parent = format!("{stem}.vmdk");
        let top = cowd_child(
            &dir,
            &format!("{stem}-000001"),
            &parent,
            0x7000 + i as u32,
            0x7100 + i as u32,
            sectors,
            &grains,
            &mut pattern(0x71 + i as u64),
        );
        tops.push(top);
    }
    std::fs::write(
        dir.join("vx.vmx"),
        vmx("vx-000001.vmdk", "vx_1-000001.vmdk"),
    )
    .unwrap();
    let out = run_plan("cutover", &plan, &[]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        row(&stdout(&out), &name).contains("cut over"),
        "{}",
        stdout(&out)
    );
    for (i, top) in tops.iter().enumerate() {
        let vol = tp.pool.volume(&format!("{name}-disk{i}")).unwrap();
        assert_same(&read_volume(&vol), &qemu_read(top), &format!("disk {i}"));
    }
}
