//! `--target`: the first delta's link to its parent descriptor, and `--dry-run` writing nothing.

use super::*;

#[test]
fn dry_run_target_leaves_the_target_identical() {
    let f = Folder::base(4096);
    let g = scatter(&mut Rng(0x71), 4096, 200, DATA);
    let (desc, _) = f.cowd_child("vm-000001", 0x71, (BASE_CID, "base.vmdk"), 1, &g);
    let target = f.target();
    let before = std::fs::read(&target).unwrap();
    assert!(qemu_read(&desc) != before, "the delta changes the target");
    let out = apply(&target, &["--dry-run".as_ref(), desc.as_os_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("would apply"), "{stdout}");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "--dry-run wrote the target"
    );
}

#[test]
fn target_refuses_a_first_delta_whose_parent_cid_differs_from_its_parent_descriptor() {
    let f = Folder::base(4096);
    let g = scatter(&mut Rng(0x72), 4096, 200, DATA);
    // The hint names base.vmdk, whose CID is BASE_CID: the delta sits on another base.
    let (desc, _) = f.cowd_child("vm-000001", 0x72, (0x1234_5678, "base.vmdk"), 1, &g);
    let target = f.target();
    let before = std::fs::read(&target).unwrap();
    let out = apply(&target, &[&desc]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("parentCID 12345678") && stderr.contains("base.vmdk"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        before,
        "the refused apply wrote"
    );
}

#[test]
fn target_checks_a_present_parent_and_says_when_the_parent_is_absent() {
    let f = Folder::base(4096);
    let g = scatter(&mut Rng(0x73), 4096, 200, DATA);
    let (desc, _) = f.cowd_child("vm-000001", 0x73, (BASE_CID, "base.vmdk"), 1, &g);
    let want = qemu_read(&desc);
    let target = f.target();
    let out = apply(&target, &[&desc]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("parentCID matches"), "{stdout}");
    assert_same(&std::fs::read(&target).unwrap(), &want, "target");

    // The parent descriptor not copied over: applied, with a note that the link was not checked.
    std::fs::remove_file(f.path("base.vmdk")).unwrap();
    let target = f.target();
    let out = apply(&target, &[&desc]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not checked") && stderr.contains("base.vmdk"),
        "{stderr}"
    );
    assert_same(
        &std::fs::read(&target).unwrap(),
        &want,
        "target without the parent",
    );
}
