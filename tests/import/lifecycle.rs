//! The import's lifecycle end to end: nothing in the volume at a hand-over is written again, stage 1 never uploads over a finished base unasked, only raw disks are written.

use super::*;
use vmdkimport::libvirt::{upload_at, Vol};

/// What the guest writes once it has the disk: this many bytes of 0xee at the start of the
/// disk, over grains every chain of `make_chain` changes (scatter always takes grain 0).
const GUEST_BYTES: u64 = 64 << 10;

/// The guest's newer data, written into the volume after the hand-over; the volume's bytes.
fn guest_writes(im: &Import) -> Vec<u8> {
    upload_at(&im.volume(), 0, GUEST_BYTES, &mut |_, buf| {
        buf.fill(0xee);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let bytes = im.read();
    assert!(bytes[..GUEST_BYTES as usize].iter().all(|&b| b == 0xee));
    bytes
}

/// The `<handed-over>` record of the import state, if any.
fn handed_over(im: &Import) -> Option<Elem> {
    elements(&im.state())
        .into_iter()
        .find(|e| e.path.ends_with("/handed-over"))
}

/// The `<trial>` record of the import state.
fn state_trial(im: &Import) -> Elem {
    let meta = im.state();
    elements(&meta)
        .into_iter()
        .find(|e| e.path.ends_with("/trial"))
        .unwrap_or_else(|| panic!("no <trial> in {meta}"))
}

/// Stage 1 again (with `extra`), expected refused with one of `any_of`, leaving the volume's
/// bytes, the domain's XML (`virsh dumpxml`), its import state (`virsh metadata`) and its run
/// state as they were. The refusal's line.
fn assert_stage1_refused_untouched(
    im: &Import,
    f: &Folder,
    extra: &[&str],
    any_of: &[&str],
) -> String {
    let before = im.read();
    let (xml, state) = (im.xml(), im.state());
    let active = im.is_active();
    let line = refused(&im.stage1(&f.path("base.vmdk"), extra), any_of);
    assert_same(&im.read(), &before, "volume after a refused stage 1");
    assert_eq!(
        im.xml(),
        xml,
        "virsh dumpxml after a refused stage 1 {extra:?}"
    );
    assert_eq!(
        im.state(),
        state,
        "virsh metadata after a refused stage 1 {extra:?}"
    );
    assert_eq!(im.is_active(), active, "run state after a refused stage 1");
    line
}

#[test]
fn stage2_rerun_after_a_start_is_refused_and_the_guests_write_survives() {
    let tp = TestPool::new("lc-start");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let want = oracle(&f, &deltas[0]);
    let im = Import::new(&tp, "lc-start");
    stage1_ok(&im, &f, SMALL_VM);
    ok(&im.stage2(&refs(&deltas), &[]), "stage 2");
    assert!(im.is_active(), "stage 2 started the domain");
    let h = handed_over(&im).unwrap_or_else(|| panic!("no hand-over in {}", im.state()));
    assert_eq!(h.attr("by"), Some("start"), "{}", im.state());
    let at = h.attr("at").expect("hand-over time").to_owned();
    virsh(&im.uri, &["destroy", &im.domain]);
    assert_same(&im.read(), &want, "volume after stage 2");

    let with_guest = guest_writes(&im);
    let line = refused(&im.stage2(&refs(&deltas), &[]), &["already applied"]);
    assert!(
        line.contains("vm-000001.vmdk") && line.contains(&at),
        "names the delta and the hand-over time {at}: {line}"
    );
    for io in ["stream", "direct"] {
        assert_refused_untouched(&im, &refs(&deltas), &["--io", io], &["already applied"]);
        assert_refused_untouched(
            &im,
            &refs(&deltas),
            &["--io", io, "--no-start"],
            &["already applied"],
        );
    }
    // A newer delta from VMware, after the guest ran here: refused as well.
    let g = scatter(&mut Rng(0x4c), SECTORS / 8, 40, DATA);
    let newer = sesparse_child(&f, "vm-000002", 0x12, (0x11, "vm-000001.vmdk"), &g);
    assert_refused_untouched(&im, &[&newer], &["--no-start"], &["guest has run"]);
    assert_same(
        &im.read(),
        &with_guest,
        "the guest's write after the refusals",
    );
    assert!(!im.is_active());
}

#[test]
fn stage2_rerun_after_no_start_with_the_same_delta_is_refused() {
    let tp = TestPool::new("lc-nostart");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::SeSparse);
    let want = oracle(&f, &deltas[0]);
    let im = Import::new(&tp, "lc-nostart");
    stage1_ok(&im, &f, &[]);
    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    assert_same(&im.read(), &want, "volume after stage 2");
    let h = handed_over(&im).unwrap_or_else(|| panic!("no hand-over in {}", im.state()));
    assert_eq!(h.attr("by"), Some("no-start"), "{}", im.state());

    let with_guest = guest_writes(&im);
    for io in ["stream", "direct"] {
        assert_refused_untouched(
            &im,
            &refs(&deltas),
            &["--io", io, "--no-start"],
            &["already applied"],
        );
    }
    // Without --no-start as well: refused, and the domain stays off.
    assert_refused_untouched(&im, &refs(&deltas), SMALL_VM, &["already applied"]);
    // A newer delta is what pre-copy applies after --no-start, but the volume was written
    // since the hand-over (someone ran the guest): refused too.
    let g = scatter(&mut Rng(0x4d), SECTORS / 8, 40, DATA);
    let newer = sesparse_child(&f, "vm-000002", 0x22, (0x21, "vm-000001.vmdk"), &g);
    assert_refused_untouched(&im, &[&newer], &["--no-start"], &["written after"]);
    assert_same(
        &im.read(),
        &with_guest,
        "the guest's write after the refusals",
    );
}

/// A stage 2 refused while it carries an option that shapes the domain changes nothing: not
/// the volume, not the domain's XML (`virsh dumpxml`), not its import state (`virsh
/// metadata`). Refused for a delta of another chain before the first stage 2, and for the
/// same delta again after a `--no-start` hand-over; `--memory` differs from stage 1's.
#[test]
fn a_refused_stage2_with_another_memory_leaves_the_domain_and_its_state_byte_identical() {
    let tp = TestPool::new("lc-shape-mem");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "lc-shape-mem");
    stage1_ok(&im, &f, SMALL_VM);
    let g = scatter(&mut Rng(0x4e), SECTORS, 20, DATA);
    let stranger = cowd_child(&f, "other-000001", 0x31, (0xbadc1d, "other.vmdk"), 1, &g);
    assert_refused_untouched(
        &im,
        &[&stranger],
        &["--memory", "256"],
        &["matches neither"],
    );
    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    for extra in [&["--memory", "256", "--no-start"][..], &["--memory", "256"]] {
        let (xml, state) = (im.xml(), im.state());
        assert_refused_untouched(&im, &refs(&deltas), extra, &["already applied"]);
        assert_eq!(
            im.xml(),
            xml,
            "virsh dumpxml after a refused stage 2 {extra:?}"
        );
        assert_eq!(
            im.state(),
            state,
            "virsh metadata after a refused stage 2 {extra:?}"
        );
    }
    assert!(
        im.xml().contains("<memory unit='KiB'>131072</memory>"),
        "stage 1's 128 MiB: {}",
        im.xml()
    );
}

/// The same with `--cpu`, on both kinds of host: where host-passthrough starts (stage 1
/// records it; the refused stage 2 asks for the default, as the host did) and where
/// no host CPU starts (stage 1 records the default; the refused stage 2 asks for host-model).
#[test]
fn a_refused_stage2_with_another_cpu_leaves_the_domain_and_its_state_byte_identical() {
    for (first, recorded, asked) in [
        ("host-passthrough", "host-passthrough", "default"),
        ("default", "default", "host-model"),
    ] {
        let tp = TestPool::new("lc-shape-cpu");
        let f = Folder::base(SECTORS);
        let deltas = make_chain(&f, Chain::SeSparse);
        let im = Import::new(&tp, "lc-shape-cpu").cpu_starts(first);
        stage1_ok(&im, &f, &["--memory", "128"]);
        let trial = state_trial(&im);
        assert_eq!(trial.attr("cpu"), Some(recorded), "{}", im.state());
        ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
        let (xml, state) = (im.xml(), im.state());
        assert_refused_untouched(
            &im,
            &refs(&deltas),
            &["--cpu", asked, "--no-start"],
            &["already applied"],
        );
        assert_eq!(
            im.xml(),
            xml,
            "virsh dumpxml after a refused stage 2 ({first})"
        );
        assert_eq!(
            im.state(),
            state,
            "virsh metadata after a refused stage 2 ({first})"
        );
        assert_eq!(state_trial(&im).attr("cpu"), Some(recorded), "{state}");
    }
}

/// doc/operator-guide.md's pre-copy: snapshot 1, stage 1, snapshot 2, delta 1 applied with --no-start
/// while the VM still runs on VMware, shut down, delta 2 applied and the domain started.
#[test]
fn pre_copy_applies_delta_1_with_no_start_then_delta_2_and_starts() {
    let tp = TestPool::new("lc-precopy");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::TwoDeltas);
    let want = oracle(&f, &deltas[1]);
    let im = Import::new(&tp, "lc-precopy");
    stage1_ok(&im, &f, SMALL_VM);
    ok(
        &im.stage2(&[&deltas[0]], &["--no-start", "--io", "direct"]),
        "delta 1, --no-start",
    );
    assert_same(&im.read(), &qemu_read(&deltas[0]), "after delta 1");
    assert!(!im.is_active());
    ok(
        &im.stage2(&[&deltas[1]], &["--io", "stream"]),
        "delta 2 and start",
    );
    assert!(im.is_active(), "started after delta 2");
    virsh(&im.uri, &["destroy", &im.domain]);
    assert_same(&im.read(), &want, "after delta 2");
    let meta = im.state();
    assert_eq!(applied_count(&meta), 2, "{meta}");
    assert_eq!(
        handed_over(&im).and_then(|h| h.attr("by").map(str::to_owned)),
        Some("start".to_owned()),
        "{meta}"
    );
    assert_refused_untouched(&im, &[&deltas[1]], &["--no-start"], &["already applied"]);
}

#[test]
fn stage1_rerun_is_refused_and_reupload_base_starts_over() {
    let tp = TestPool::new("lc-rerun1");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let want = oracle(&f, &deltas[0]);
    let im = Import::new(&tp, "lc-rerun1");
    stage1_ok(&im, &f, &[]);
    assert_stage1_refused_untouched(&im, &f, &[], &["base upload completed"]);

    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    let with_guest = guest_writes(&im);
    let line = assert_stage1_refused_untouched(&im, &f, &[], &["--reupload-base"]);
    assert!(line.contains("vm-000001.vmdk"), "names the delta: {line}");
    assert_same(
        &im.read(),
        &with_guest,
        "the guest's write after the refusal",
    );

    let meta = im.metadata();
    let dry = im.stage1(&f.path("base.vmdk"), &["--reupload-base", "--dry-run"]);
    ok(&dry, "stage 1 --reupload-base --dry-run");
    assert!(
        String::from_utf8_lossy(&dry.stderr).contains("would destroy"),
        "{}",
        show(&dry)
    );
    assert_same(&im.read(), &with_guest, "volume after --dry-run");
    assert_eq!(im.metadata(), meta, "import state after --dry-run");

    let out = im.stage1(&f.path("base.vmdk"), &["--reupload-base"]);
    ok(&out, "stage 1 --reupload-base");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("destroys")
            && stderr.contains("vm-000001.vmdk")
            && stderr.contains("guest wrote"),
        "says what it destroys: {stderr}"
    );
    assert_same(&im.read(), &base_bytes(&f), "volume after --reupload-base");
    assert_eq!(applied_count(&im.state()), 0, "{}", im.state());
    assert!(handed_over(&im).is_none(), "{}", im.state());
    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2 again");
    assert_same(&im.read(), &want, "volume after stage 2 again");
}

/// A stage 1 rerun refused while it carries an option that shapes the domain changes
/// nothing: every refusal of stage 1 comes before the shaping options are applied. Refused
/// because the base upload completed, and because a delta was applied over it; `--memory`
/// differs from stage 1's, and `--cpu` from the CPU stage 1 recorded (the default, asked for,
/// so the same on every host).
#[test]
fn a_refused_stage1_rerun_with_shaping_options_leaves_the_domain_and_its_state_byte_identical() {
    let tp = TestPool::new("lc-shape-s1");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "lc-shape-s1");
    stage1_ok(&im, &f, SMALL_VM);
    assert_eq!(
        state_trial(&im).attr("cpu"),
        Some("default"),
        "{}",
        im.state()
    );
    let shaping: [&[&str]; 3] = [
        &["--memory", "256"],
        &["--cpu", "host-model"],
        &["--vcpus", "2", "--cpu", "host-passthrough"],
    ];
    for extra in shaping {
        assert_stage1_refused_untouched(&im, &f, extra, &["base upload completed"]);
    }
    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    for extra in shaping {
        let line = assert_stage1_refused_untouched(&im, &f, extra, &["were applied"]);
        assert!(line.contains("vm-000001.vmdk"), "names the delta: {line}");
    }
    let xml = im.xml();
    assert!(
        xml.contains("<memory unit='KiB'>131072</memory>") && !xml.contains("host-"),
        "stage 1's 128 MiB and default CPU: {xml}"
    );
}

/// A domain defined by other tooling on a volume of `format`, its disk's driver `driver`.
fn foreign_on_format(tp: &TestPool, tag: &str, format: &str, driver: &str) -> (String, Vol) {
    let vol_name = format!("{tag}.img");
    virsh(
        tp.conn.uri(),
        &[
            "vol-create-as",
            &tp.name,
            &vol_name,
            &CAP.to_string(),
            "--format",
            format,
        ],
    );
    let vol = tp.pool.volume(&vol_name).unwrap();
    let disk = format!(
        "<disk type='volume' device='disk'><driver name='qemu' type='{driver}'/>\
         <source pool='{}' volume='{vol_name}'/><target dev='vda' bus='virtio'/></disk>",
        tp.name
    );
    let name = unique_name(tag);
    tp.define_domain(&foreign_domain_xml(tp, &name, &disk));
    (name, vol)
}

#[test]
fn stage1_refuses_a_qcow2_disk_or_volume_and_writes_nothing() {
    let tp = TestPool::new("lc-qcow2");
    let f = Folder::base(SECTORS);
    for (tag, format, driver, needle) in [
        ("q-driver", "qcow2", "qcow2", "driver type is 'qcow2'"),
        ("q-volume", "qcow2", "raw", "in qcow2 format"),
    ] {
        let (name, vol) = foreign_on_format(&tp, tag, format, driver);
        let im = Import::existing(&tp, &name);
        let file_before = std::fs::read(vol.path()).unwrap();
        refused(&im.stage1(&f.path("base.vmdk"), &[]), &[needle]);
        assert_eq!(
            std::fs::read(vol.path()).unwrap(),
            file_before,
            "{tag}: the qcow2 volume's file"
        );
        assert!(
            state_elem(&im.metadata()).is_none(),
            "{tag}: {}",
            im.metadata()
        );
    }
    // A new import whose volume name is taken by a qcow2 volume: refused, no domain defined.
    let im = Import::new(&tp, "q-new");
    let name = im.volume_name();
    virsh(
        tp.conn.uri(),
        &[
            "vol-create-as",
            &tp.name,
            &name,
            &CAP.to_string(),
            "--format",
            "qcow2",
        ],
    );
    refused(&im.stage1(&f.path("base.vmdk"), &[]), &["in qcow2 format"]);
    assert!(!im.exists(), "a domain was defined over the qcow2 volume");
}

#[test]
fn stage2_refuses_a_disk_made_qcow2_after_stage1() {
    let tp = TestPool::new("lc-qcow2b");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "lc-qcow2b");
    stage1_ok(&im, &f, &[]);
    // The domain's disk driver changed to qcow2 by other tooling.
    let xml = im.xml();
    let qcow = xml.replacen("type='raw'", "type='qcow2'", 1);
    assert_ne!(qcow, xml, "the disk driver is raw in:\n{xml}");
    let file = tp.path("qcow-driver.xml");
    std::fs::write(&file, &qcow).unwrap();
    virsh(&im.uri, &["define", file.to_str().unwrap()]);
    assert_refused_untouched(
        &im,
        &refs(&deltas),
        &["--no-start"],
        &["driver type is 'qcow2'"],
    );
    std::fs::write(&file, &xml).unwrap();
    virsh(&im.uri, &["define", file.to_str().unwrap()]);
    // The volume replaced by a qcow2 image: libvirt reports its format after a refresh.
    let vol = im.volume();
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", vol.path(), &CAP.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    tp.pool.refresh().unwrap();
    let (file_before, meta) = (std::fs::read(vol.path()).unwrap(), im.metadata());
    refused(
        &im.stage2(&refs(&deltas), &["--no-start"]),
        &["in qcow2 format"],
    );
    assert_eq!(
        std::fs::read(vol.path()).unwrap(),
        file_before,
        "the qcow2 file"
    );
    assert_eq!(im.metadata(), meta, "import state after the refusal");
    assert!(!im.is_active());
}

/// `virsh metadata --set` of the import state `xml` (as `virsh metadata` printed it).
fn set_state(im: &Import, xml: &str) {
    virsh(
        &im.uri,
        &[
            "metadata",
            &im.domain,
            vmdkimport::state::NS_URI,
            "--config",
            "--key",
            vmdkimport::state::NS_PREFIX,
            "--set",
            xml.trim(),
        ],
    );
}

/// The state as a version before the lifecycle wrote it: no `lifecycle` attribute, no
/// hand-over records.
fn as_older_version(state: &str) -> String {
    let mut old = remove_elements(state, "handed-over")
        .replace(" lifecycle=\"1\"", "")
        .replace(" handed-over=\"yes\"", "");
    while let Some(at) = old.find(" volume-mtime=\"") {
        let end = at + " volume-mtime=\"".len();
        let close = end + old[end..].find('"').unwrap() + 1;
        old.replace_range(at..close, "");
    }
    assert!(
        !old.contains("lifecycle") && !old.contains("handed-over") && !old.contains("mtime"),
        "{old}"
    );
    old
}

#[test]
fn a_state_written_by_an_older_version_counts_its_written_deltas_as_handed_over() {
    let tp = TestPool::new("lc-old");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::TwoDeltas);
    let im = Import::new(&tp, "lc-old");
    stage1_ok(&im, &f, &[]);
    // After stage 1 only: the older state lets stage 2 go on as before.
    set_state(&im, &as_older_version(&im.state()));
    ok(
        &im.stage2(&[&deltas[0]], &["--no-start"]),
        "stage 2 on an older state",
    );
    set_state(&im, &as_older_version(&im.state()));
    let with_guest = guest_writes(&im);
    let line = refused(
        &im.stage2(&[&deltas[0]], &["--no-start"]),
        &["already applied"],
    );
    assert!(
        line.contains("older"),
        "says the record is an older one: {line}"
    );
    assert_same(
        &im.read(),
        &with_guest,
        "the guest's write after the refusal",
    );
    // A newer delta still follows, as pre-copy would.
    ok(&im.stage2(&[&deltas[1]], &["--no-start"]), "the next delta");
}
