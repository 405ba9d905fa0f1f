//! An import over ssh:// refused for its options changes nothing anywhere: no command reaches the stand-in ESXi host, no libvirt connection is made; one refused for a network the KVM host lacks is refused before the migration snapshot.

mod util;

use std::os::unix::net::UnixListener;

use util::esx::{vmx_text, StandIn};
use util::fixtures::patterned;
use util::libvirt::{unique_name, TestPool};
use util::vmximport::{domain_exists, flat_base};

const MIB: usize = 1 << 20;
const CPU: [&str; 2] = ["--cpu", "default"];

/// A running VM `web` (id 4, one disk, one NIC on "VM Network") on a new stand-in.
fn standin_with_a_vm() -> StandIn {
    let esx = StandIn::start();
    let dir = esx.vm_dir("web");
    flat_base(&dir, "web", &patterned(0x91a, 4 * MIB), 0x1234abcd);
    let vmx = vmx_text("web", &["web.vmdk"])
        + "ethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vmxnet3\"\n\
           ethernet0.networkName = \"VM Network\"\nethernet0.addressType = \"static\"\n\
           ethernet0.address = \"00:50:56:01:02:03\"\n";
    std::fs::write(dir.join("web.vmx"), vmx).unwrap();
    esx.register(4, "web", "web/web.vmx", true, "sesparse", "");
    esx
}

#[test]
fn every_option_error_on_an_ssh_import_reaches_neither_esxi_nor_libvirt() {
    let esx = standin_with_a_vm();
    // A libvirt "daemon" that only counts: any connection the tool made would be accepted here.
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("libvirt-sock");
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let uri = format!("qemu+unix:///system?socket={}", sock.display());
    let url = esx.url("web/web.vmx");
    let refusals: &[(&[&str], &str)] = &[
        (&["--network", "=br0"], "expected VMNET=LIBVIRTNET"),
        (
            &["--network", "a", "--network", "b"],
            "--network given twice",
        ),
        (&["--mac", "52:54:00:zz:00:01"], "--mac"),
        (
            &["--os", "windows", "--nic-names", "kvm"],
            "shapes Linux guests",
        ),
        (
            &["--os", "windows", "--disk-bus", "virtio-blk"],
            "shapes Linux guests",
        ),
        (&["--hard-off"], "goes with --cutover"),
        (&["--shutdown-timeout", "10s"], "goes with --cutover"),
        (&["--cutover", "--no-start"], "without --no-start"),
        (&["--sync", "--jobs", "0"], "at least 1"),
        (&["--sync", "--memory", "512"], "change no settings"),
        (
            &["--reupload-base", "/tmp/x-000001.vmdk"],
            "give no delta files",
        ),
        (&["/tmp/x-000001.vmdk"], "give no delta files"),
    ];
    for (extra, want) in refusals {
        let mut args = vec![
            "-c", &uri, "--domain", "web", "--pool", "nopool", "--vmx", &url,
        ];
        args.extend_from_slice(&CPU);
        args.extend_from_slice(extra);
        let run = esx.tool(&args);
        assert!(!run.out.status.success(), "refused: {run}");
        assert!(run.stderr().contains(want), "{want:?} in: {run}");
        assert_eq!(esx.commands(), "", "nothing sent to ESXi for {extra:?}");
        assert!(
            listener.accept().is_err(),
            "no libvirt connection for {extra:?}: {run}"
        );
    }
}

#[test]
fn a_network_the_kvm_host_lacks_is_refused_before_the_migration_snapshot() {
    let esx = standin_with_a_vm();
    let tp = TestPool::new("esx-nonet");
    let name = unique_name("esx-nonet");
    tp.track_domain(&name);
    let missing = format!("vknet{}", std::process::id());
    let map = format!("VM Network={missing}");
    for network in [missing.as_str(), map.as_str()] {
        let run = esx.import(
            &tp,
            &name,
            "web/web.vmx",
            &[CPU[0], CPU[1], "--network", network],
        );
        assert!(!run.out.status.success(), "refused: {run}");
        let err = run.stderr();
        assert!(
            err.contains(&format!("'{missing}' does not exist"))
                && err.contains("no snapshot taken"),
            "{run}"
        );
        let sent = esx.commands();
        assert!(!sent.contains("snapshot.create"), "{sent}");
        assert!(sent.contains("getallvms"), "the VM was looked up: {sent}");
        assert!(!domain_exists(&name), "no domain defined");
    }
}
