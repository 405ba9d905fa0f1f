//! Stage 1 straight from an ESXi host over ssh://, end to end: the real binary, the real
//! libvirtd (qemu:///system) and a stand-in ESXi host (OpenSSH's sshd with the stand-in
//! vim-cmd of tests/fixtures/esx, see tests/util/esx.rs). Every volume is checked against
//! qemu-img's reading of its base.

mod util;

use std::path::Path;

use util::esx::StandIn;
use util::fixtures::{pattern, patterned, Kind, SECTOR};
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{
    cowd_child, domain_exists, domstate, flat_base, virsh, volume_bytes, volume_names, Run,
};
use util::{assert_same, qemu_read};
use vmdkimport::state::NS_URI;

const MIB: usize = 1 << 20;
/// The nested KVM here cannot start host-passthrough: the trial start asks for QEMU's CPU.
const CPU: [&str; 2] = ["--cpu", "default"];

/// A .vmx with no NIC and the given disk file names on scsi0.
fn vmx_text(name: &str, disks: &[&str]) -> String {
    let mut s = format!(
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\nvirtualHW.version = \"19\"\n\
         displayName = \"{name}\"\nguestOS = \"ubuntu-64\"\nmemsize = \"128\"\nnumvcpus = \"1\"\n\
         scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"pvscsi\"\n"
    );
    for (i, d) in disks.iter().enumerate() {
        s += &format!(
            "scsi0:{i}.present = \"TRUE\"\nscsi0:{i}.deviceType = \"scsi-hardDisk\"\nscsi0:{i}.fileName = \"{d}\"\n"
        );
    }
    s
}

fn stage1(esx: &StandIn, tp: &TestPool, domain: &str, vmx: &str, extra: &[&str]) -> Run {
    let url = esx.url(vmx);
    let mut args = vec![
        "-c",
        "qemu:///system",
        "--domain",
        domain,
        "--pool",
        &tp.name,
        "--vmx",
        &url,
    ];
    args.extend_from_slice(extra);
    esx.tool(&args)
}

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
fn stage_one_over_ssh_snapshots_a_running_vm_and_streams_each_base_on_one_connection() {
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

    let run = stage1(&esx, &tp, &name, "web one/web one.vmx", &CPU).ok();
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
    assert_eq!(
        esx.connections(),
        1,
        "every command and both streams go over one ssh connection:\n{}",
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

    let run = stage1(&esx, &tp, &name, "app/app.vmx", &CPU).ok();
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
    let again = stage1(&esx, &tp, &name, "app/app.vmx", &CPU);
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

    let run = stage1(&esx, &tp, &name, "mail/mail.vmx", &CPU);
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
        let run = stage1(&esx, &tp, &name, "odd/odd.vmx", &CPU);
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

    let run = stage1(&esx, &tp, &name, "dry/dry.vmx", &["--dry-run"]).ok();
    let out = run.stdout();
    for want in [
        "running vim-cmd vmsvc/getallvms",
        "running vim-cmd vmsvc/power.getstate 5",
        "running vim-cmd vmsvc/snapshot.get 5",
        "would run vim-cmd vmsvc/snapshot.create 5 'virt-vmdkimport-1'",
        &format!(
            "would run dd if='{}' bs=4M",
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
