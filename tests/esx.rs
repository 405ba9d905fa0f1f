//! Stage 1 straight from an ESXi host over ssh://, end to end: the real binary, the real
//! libvirtd (qemu:///system) and a stand-in ESXi host (OpenSSH's sshd with the stand-in
//! vim-cmd of tests/fixtures/esx, see tests/util/esx.rs). Every volume is checked against
//! qemu-img's reading of its base.

mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use util::esx::{vmx_text, StandIn};
use util::fixtures::{pattern, patterned, Kind, SECTOR};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{
    cowd_child, domain_exists, domstate, flat_base, virsh, volume_bytes, volume_names,
};
use util::{assert_same, qemu_read};
use vmdkimport::state::NS_URI;

const MIB: usize = 1 << 20;
/// The trial start asks for QEMU's CPU, which starts on every host (doc/testing.md).
const CPU: [&str; 2] = ["--cpu", "default"];

fn trial_started(domain: &str) -> bool {
    let meta = virsh(&["metadata", domain, NS_URI]).ok().stdout();
    meta.contains("<trial") && meta.contains("started=\"yes\"")
}

fn vmx_disks(vmx: &Path) -> Vec<String> {
    std::fs::read_to_string(vmx)
        .unwrap()
        .lines()
        .filter(|l| l.contains(".fileName"))
        .map(str::to_string)
        .collect()
}

#[test]
fn stage_one_over_ssh_snapshots_a_running_vm_and_streams_each_base_in_ranges() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-run");
    let dir = esx.vm_dir("web one");
    let bases = [
        flat_base(&dir, "web one", &patterned(0xe51, 8 * MIB), 0x1111aaaa),
        flat_base(&dir, "web one_1", &patterned(0xe52, 8 * MIB), 0x2222bbbb),
    ];
    let vmx = dir.join("web one.vmx");
    std::fs::write(
        &vmx,
        vmx_text("web one", &["web one.vmdk", "web one_1.vmdk"]),
    )
    .unwrap();
    // A VMFS6-style VM, running: it writes into its bases, which it holds locked.
    esx.register(
        4,
        "web one",
        "web one/web one.vmx",
        true,
        "sesparse",
        "front end\\nsecond line",
    );
    esx.register(7, "db", "db/db.vmx", false, "cowd", "");
    let flats = [
        dir.join("web one-flat.vmdk"),
        dir.join("web one_1-flat.vmdk"),
    ];
    for f in &flats {
        esx.lock(f);
    }
    let want = [qemu_read(&bases[0]), qemu_read(&bases[1])];
    let name = unique_name("esx-web");
    tp.track_domain(&name);

    let run = esx.import(&tp, &name, "web one/web one.vmx", &CPU).ok();
    println!("{run}");
    assert!(
        run.stdout().contains("took snapshot 'virt-vmdkimport-1'"),
        "{run}"
    );
    assert!(run.stdout().contains("stage 1 done"), "{run}");

    // On the host: the snapshot froze the bases; the VM writes into SEsparse children now.
    assert_eq!(
        vmx_disks(&vmx),
        [
            "scsi0:0.fileName = \"web one-000001.vmdk\"",
            "scsi0:1.fileName = \"web one_1-000001.vmdk\""
        ]
    );
    for (f, child) in flats.iter().zip([
        "web one-000001-sesparse.vmdk",
        "web one_1-000001-sesparse.vmdk",
    ]) {
        assert!(!esx.is_locked(f), "{} frozen", f.display());
        assert!(esx.is_locked(&dir.join(child)), "{child} written by the VM");
    }
    for (i, top) in ["web one-000001.vmdk", "web one_1-000001.vmdk"]
        .iter()
        .enumerate()
    {
        assert_same(
            &qemu_read(&dir.join(top)),
            &want[i],
            &format!("{top}: an empty child"),
        );
    }

    // On KVM: each volume holds its base, the domain is defined and its trial start passed.
    let vols = [format!("{name}-disk0"), format!("{name}-disk1")];
    assert_eq!(volume_names(&tp), vols.to_vec());
    for i in 0..2 {
        assert_same(&volume_bytes(&tp, &vols[i]), &want[i], &vols[i]);
    }
    assert_eq!(domstate(&name), "shut off");
    assert!(trial_started(&name), "trial start recorded");
    // The commands over one connection; each 8 MiB base as two ranges of one 4 MiB block
    // (--ssh-connections 4 by default), each over a connection of its own.
    assert_eq!(
        esx.connections(),
        1 + 2 + 2,
        "the commands over one ssh connection, each range over one of its own:\n{}",
        esx.log()
    );
}

#[test]
fn a_vm_with_snapshots_of_its_own_is_walked_down_to_its_base_and_a_second_run_is_refused() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-own");
    let dir = esx.vm_dir("app");
    let base = flat_base(&dir, "app", &patterned(0xa99, 8 * MIB), 0x3333cccc);
    // Its own snapshot (VMFS5-style COWD), with data, that the tool must not take for the base.
    let sectors = (8 * MIB) as u64 / SECTOR;
    let theirs = cowd_child(
        &dir,
        "app-000001",
        "app.vmdk",
        0x3333cccc,
        0x4444dddd,
        sectors,
        &[(3, Kind::Data), (9000, Kind::Data)],
        &mut pattern(0xc0),
    );
    let vmx = dir.join("app.vmx");
    std::fs::write(&vmx, vmx_text("app", &["app-000001.vmdk"])).unwrap();
    esx.register(12, "app", "app/app.vmx", true, "cowd", "");
    esx.add_snapshot_record(12, 1, "nightly");
    esx.lock(&dir.join("app-000001-delta.vmdk"));
    let theirs_before = std::fs::read(dir.join("app-000001-delta.vmdk")).unwrap();
    assert_ne!(
        qemu_read(&theirs),
        qemu_read(&base),
        "their snapshot holds data"
    );
    let name = unique_name("esx-app");
    tp.track_domain(&name);

    let run = esx.import(&tp, &name, "app/app.vmx", &CPU).ok();
    println!("{run}");
    assert!(
        run.stdout().contains("took snapshot 'virt-vmdkimport-2'"),
        "{run}"
    );
    assert_eq!(vmx_disks(&vmx), ["scsi0:0.fileName = \"app-000002.vmdk\""]);
    let child = std::fs::read_to_string(dir.join("app-000002.vmdk")).unwrap();
    assert!(
        child.contains("parentFileNameHint=\"app-000001.vmdk\"") && child.contains("VMFSSPARSE"),
        "a COWD child over their snapshot:\n{child}"
    );
    assert_eq!(
        std::fs::read(dir.join("app-000001-delta.vmdk")).unwrap(),
        theirs_before
    );
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&base),
        "the volume holds the base, below both snapshots",
    );
    assert!(trial_started(&name));

    // The same command again is refused, pointing at --sync and --cutover; nothing is taken.
    let again = esx.import(&tp, &name, "app/app.vmx", &CPU);
    assert_eq!(again.code(), Some(1), "{again}");
    assert!(
        again.stderr().contains(
            "stage 1 is done; add --sync for a pre-copy round while the VM runs, or --cutover"
        ),
        "{again}"
    );
    assert!(!dir.join("app-000003.vmdk").exists(), "no third snapshot");

    // Stage 2 from the deltas copied over as local files works too.
    let local = tp.path("copied");
    std::fs::create_dir_all(&local).unwrap();
    for f in [
        "app-000001.vmdk",
        "app-000001-delta.vmdk",
        "app-000002.vmdk",
        "app-000002-delta.vmdk",
    ] {
        std::fs::copy(dir.join(f), local.join(f)).unwrap();
    }
    let (d1, d2) = (local.join("app-000001.vmdk"), local.join("app-000002.vmdk"));
    let args = ["-c", "qemu:///system", "--domain", &name, "--no-start"];
    let s2 = esx
        .tool(&[&args[..], &[d1.to_str().unwrap(), d2.to_str().unwrap()]].concat())
        .ok();
    println!("{s2}");
    assert_same(
        &volume_bytes(&tp, &format!("{name}-disk0")),
        &qemu_read(&dir.join("app-000002.vmdk")),
        "stage 2 from the copied deltas",
    );
}

#[test]
fn a_base_still_open_for_writing_is_refused_naming_it_before_anything_is_made() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-lock");
    let dir = esx.vm_dir("mail");
    flat_base(&dir, "mail", &patterned(0x3a1, 8 * MIB), 0x5555eeee);
    std::fs::write(dir.join("mail.vmx"), vmx_text("mail", &["mail.vmdk"])).unwrap();
    esx.register(3, "mail", "mail/mail.vmx", true, "sesparse", "");
    // A migration snapshot exists, but this disk has no delta (added after the snapshot):
    // the VM still writes into its base.
    esx.add_snapshot_record(3, 1, "virt-vmdkimport-1");
    let flat = dir.join("mail-flat.vmdk");
    esx.lock(&flat);
    let name = unique_name("esx-mail");
    tp.track_domain(&name);

    let run = esx.import(&tp, &name, "mail/mail.vmx", &CPU);
    assert_eq!(run.code(), Some(1), "{run}");
    let err = run.stderr();
    assert!(
        err.contains(&format!("{}: locked on the ESXi host", flat.display()))
            && err.contains("Device or resource busy")
            && err.contains(
                "the VM has no snapshot over this disk, so its base is still open for writing"
            ),
        "{run}"
    );
    assert!(!domain_exists(&name), "nothing defined");
    assert!(volume_names(&tp).is_empty(), "no volume made");
}

#[test]
fn vim_cmd_answers_that_do_not_parse_are_refused_naming_the_command() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-hostile");
    let dir = esx.vm_dir("odd");
    flat_base(&dir, "odd", &patterned(0x0dd, 8 * MIB), 0x6666ffff);
    let vmx = dir.join("odd.vmx");
    std::fs::write(&vmx, vmx_text("odd", &["odd.vmdk"])).unwrap();
    esx.register(9, "odd", "odd/odd.vmx", true, "sesparse", "");
    let name = unique_name("esx-odd");
    tp.track_domain(&name);
    for (sub, cmd, shown) in [
        (
            "power.getstate",
            "vim-cmd vmsvc/power.getstate 9",
            "Powered sideways",
        ),
        (
            "getallvms",
            "vim-cmd vmsvc/getallvms",
            "1 web1 datastore1 web1.vmx",
        ),
    ] {
        esx.hostile(sub);
        let run = esx.import(&tp, &name, "odd/odd.vmx", &CPU);
        assert_eq!(run.code(), Some(1), "{run}");
        assert!(
            run.stderr().contains(&format!(
                "`{cmd}` answered something this tool does not understand"
            )) && run.stderr().contains(shown),
            "{run}"
        );
    }
    assert_eq!(
        vmx_disks(&vmx),
        ["scsi0:0.fileName = \"odd.vmdk\""],
        "no snapshot taken"
    );
    assert!(!domain_exists(&name));
}

#[test]
fn dry_run_prints_the_esxi_commands_and_changes_nothing() {
    let esx = StandIn::start();
    let tp = TestPool::new("esx-dry");
    let dir = esx.vm_dir("dry");
    flat_base(&dir, "dry", &patterned(0xd11, 8 * MIB), 0x7777abcd);
    let vmx = dir.join("dry.vmx");
    std::fs::write(&vmx, vmx_text("dry", &["dry.vmdk"])).unwrap();
    esx.register(5, "dry", "dry/dry.vmx", true, "sesparse", "");
    esx.lock(&dir.join("dry-flat.vmdk"));
    let name = unique_name("esx-dry");
    tp.track_domain(&name);

    let run = esx.import(&tp, &name, "dry/dry.vmx", &["--dry-run"]).ok();
    let out = run.stdout();
    for want in [
        "running vim-cmd vmsvc/getallvms",
        "running vim-cmd vmsvc/power.getstate 5",
        "running vim-cmd vmsvc/snapshot.get 5",
        "would run vim-cmd vmsvc/snapshot.create 5 'virt-vmdkimport-1'",
        &format!(
            "would run dd if='{}' bs=4194304 skip=1 count=2",
            dir.join("dry-flat.vmdk").display()
        ),
    ] {
        assert!(out.contains(want), "{want}: {run}");
    }
    assert_eq!(
        vmx_disks(&vmx),
        ["scsi0:0.fileName = \"dry.vmdk\""],
        "no snapshot taken"
    );
    assert!(!dir.join("dry-000001.vmdk").exists());
    assert!(!domain_exists(&name) && volume_names(&tp).is_empty());
}

/// Poll `vim-cmd vmsvc/power.getstate ID` over ssh until it says `Powered off` (bounded).
fn wait_powered_off(esx: &StandIn, id: u32) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let run = esx.ssh(&format!("vim-cmd vmsvc/power.getstate {id}")).ok();
        if run.stdout() == "Retrieved runtime info\nPowered off\n" {
            return;
        }
        assert!(Instant::now() < until, "never powered off: {run}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lock_markers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".standin-lock"))
        .collect()
}

/// A stand-in VM and the files a snapshot freezes and makes.
struct StandInVm {
    id: u32,
    dir: PathBuf,
    /// The top before the snapshot (descriptor, extent).
    frozen: (PathBuf, PathBuf),
    /// The child the snapshot adds (descriptor, extent).
    child: (PathBuf, PathBuf),
    base: Vec<u8>,
}

/// VM 31: SEsparse snapshots over a flat base it writes into. VM 32: COWD snapshots, running
/// on a COWD snapshot of its own that already holds sectors 10 and 12.
fn stand_in_vms(esx: &StandIn) -> Vec<StandInVm> {
    let mut vms = Vec::new();
    for (id, stem, format, delta) in [
        (31, "se", "sesparse", "sesparse"),
        (32, "co", "cowd", "delta"),
    ] {
        let dir = esx.vm_dir(stem);
        let base = patterned(0x5700 + u64::from(id), 8 * MIB);
        let mut top = flat_base(&dir, stem, &base, 0x1000 + id);
        let mut extent = dir.join(format!("{stem}-flat.vmdk"));
        let mut n = 1;
        if id == 32 {
            let sectors = (8 * MIB) as u64 / SECTOR;
            let grains = [(10, Kind::Data), (12, Kind::Data)];
            top = cowd_child(
                &dir,
                "co-000001",
                "co.vmdk",
                0x1020,
                0x2020,
                sectors,
                &grains,
                &mut pattern(0x7e),
            );
            extent = dir.join("co-000001-delta.vmdk");
            esx.add_snapshot_record(id, 1, "theirs");
            n = 2;
        }
        let name = top.file_name().unwrap().to_str().unwrap().to_string();
        let vmx = format!("{stem}/{stem}.vmx");
        std::fs::write(esx.vmx_path(&vmx), vmx_text(stem, &[&name])).unwrap();
        esx.register(id, stem, &vmx, false, format, "");
        let child = (
            dir.join(format!("{stem}-{n:06}.vmdk")),
            dir.join(format!("{stem}-{n:06}-{delta}.vmdk")),
        );
        vms.push(StandInVm {
            id,
            dir,
            frozen: (top, extent),
            child,
            base,
        });
    }
    vms
}

#[test]
fn the_stand_in_vm_writes_its_top_until_a_guest_shutdown_and_a_read_can_be_cut() {
    let esx = StandIn::start();
    let vim = |cmd: &str| esx.ssh(&format!("vim-cmd {cmd}"));
    let vms = stand_in_vms(&esx);
    let theirs = qemu_read(&vms[1].frozen.0);
    assert!(
        theirs[5120..5632] != vms[1].base[5120..5632],
        "their snapshot holds sector 10"
    );
    for vm in &vms {
        esx.shutdown_delay(vm.id, 0.2);
        esx.power_on(vm.id);
        assert_eq!(esx.power_state(vm.id), "on");
        assert_eq!(
            lock_markers(&vm.dir),
            [format!(
                "{}.standin-lock",
                vm.frozen.1.file_name().unwrap().to_str().unwrap()
            )]
        );
    }
    let again = vim("vmsvc/power.on 31");
    assert_eq!(
        (again.code(), again.stdout().as_str()),
        (Some(1), "Powering on VM:\nPower on failed\n"),
        "{again}"
    );

    let dd = |f: &Path| esx.ssh(&format!("dd if='{}' bs=4M", f.display()));
    for vm in &vms {
        esx.wait_rounds(vm.id, 2);
        let snap = vim(&format!(
            "vmsvc/snapshot.create {} virt-vmdkimport-1 x 0 0",
            vm.id
        ))
        .ok();
        assert_eq!(snap.stdout(), "Create Snapshot:\n");
        assert!(
            !esx.is_locked(&vm.frozen.1) && esx.is_locked(&vm.child.1),
            "the lock moved to the child"
        );
        let frozen = dd(&vm.frozen.1).ok();
        esx.wait_rounds(vm.id, 3);
        assert_same(
            &dd(&vm.frozen.1).ok().out.stdout,
            &frozen.out.stdout,
            "the frozen top, read twice",
        );
        let busy = dd(&vm.child.1);
        assert!(
            busy.code() == Some(1) && busy.stderr().contains("Device or resource busy"),
            "{busy}"
        );
        let was = qemu_read(&vm.frozen.0);
        assert!(
            was[512..4608] != vm.base[512..4608],
            "written while it was the top"
        );
        if vm.id == 32 {
            assert_same(&was[5120..7168], &theirs[5120..7168], "their sectors kept");
        }
    }

    // A read cut after 1 MiB: the client sees the connection drop; the next read is whole.
    let flat = &vms[0].frozen.1;
    let whole = std::fs::read(flat).unwrap();
    esx.drop_read("se-flat.vmdk", MIB as u64);
    let cut = dd(flat);
    let got = &cut.out.stdout;
    assert!(
        cut.code() == Some(255) && cut.stderr().contains("closed by remote host"),
        "{cut}"
    );
    assert!(
        !got.is_empty() && got.len() <= MIB && got[..] == whole[..got.len()],
        "{} bytes",
        got.len()
    );
    assert_same(&dd(flat).ok().out.stdout, &whole, "the read after the cut");

    // The guest shutdown: its last round is in the top, its files are let go.
    esx.on_powered_off(
        31,
        "vim-cmd vmsvc/power.getstate 31 | tail -n 1 > \"$STANDIN_ROOT/hook-31\"",
    );
    for vm in &vms {
        let down = vim(&format!("vmsvc/power.shutdown {}", vm.id)).ok();
        assert_eq!(down.stdout(), "", "{down}");
    }
    for vm in &vms {
        wait_powered_off(&esx, vm.id);
        let top = qemu_read(&vm.child.0);
        assert_eq!(
            top[512..4608],
            esx.last_payload(vm.id),
            "the data written last"
        );
        assert!(
            top[8192..] != qemu_read(&vm.frozen.0)[8192..],
            "the child holds writes"
        );
        assert_eq!(lock_markers(&vm.dir), Vec::<String>::new());
        dd(&vm.child.1).ok();
        let off = vim(&format!("vmsvc/power.off {}", vm.id));
        assert_eq!(
            (off.code(), off.stdout().as_str()),
            (Some(1), "Powering off VM:\nPower off failed\n"),
            "{off}"
        );
    }
    assert_eq!(
        qemu_read(&vms[1].child.0)[5120..7168],
        theirs[5120..7168],
        "their sectors kept"
    );
    let hook = std::fs::read_to_string(esx.root().join("hook-31")).unwrap();
    assert_eq!(
        hook, "Powered on\n",
        "the hook runs before the VM shows powered off"
    );

    // snapshot.remove drops the record only; a hard power.off kills the VM at once.
    let dir = &vms[1].dir;
    assert_eq!(
        vim("vmsvc/snapshot.remove 32 2").ok().stdout(),
        "Remove Snapshot:\n"
    );
    let left = vim("vmsvc/snapshot.get 32").ok().stdout();
    assert!(
        left.contains("Snapshot Name        : theirs") && !left.contains("virt-vmdkimport-1"),
        "{left}"
    );
    assert!(vms[1].child.1.exists(), "no consolidation");
    let gone = vim("vmsvc/snapshot.remove 32 2");
    assert!(
        gone.code() == Some(1) && gone.stdout().contains("(vim.fault.NotFound)"),
        "{gone}"
    );
    assert_eq!(vim("vmsvc/power.on 32").ok().stdout(), "Powering on VM:\n");
    esx.wait_rounds(32, 1);
    assert_eq!(
        vim("vmsvc/power.off 32").ok().stdout(),
        "Powering off VM:\n"
    );
    assert_eq!(esx.power_state(32), "off");
    assert_eq!(lock_markers(dir), Vec::<String>::new());
    let rounds = esx.vm_rounds(32);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(esx.vm_rounds(32), rounds, "no round after the power-off");
}
