//! End to end: the CLI's libvirt import (stage 1 base upload, stage 2 delta apply) against the real libvirtd.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use util::bootimg;
use util::fixtures::{descriptor, pattern, Kind, SECTOR};
use util::import::*;
use util::libvirt::{fill_volume, read_volume, unique_name, TestPool, REMOTE_URI};
use util::vmximport::TestNet;
use util::{assert_same, qemu_read, scatter, Folder, Rng, BASE_CID};

/// Every test disk: 8 MiB.
const CAP: u64 = 8 * MIB;
const SECTORS: u64 = CAP / SECTOR;

const DATA: &[Kind] = &[Kind::Data];
const DATA_ZERO_UNMAPPED: &[Kind] = &[Kind::Data, Kind::Data, Kind::Zero, Kind::Unmapped];

/// Many short runs (1-4 grains) separated by short gaps (1-8 grains, now and then a long
/// one) over the whole disk: the shape that makes one upload call per run expensive.
fn small_runs(rng: &mut Rng, capacity_grains: u64, kinds: &[Kind]) -> Vec<(u64, Kind)> {
    let mut v = Vec::new();
    let mut g = rng.below(3);
    while g < capacity_grains {
        let run = 1 + rng.below(4);
        for k in 0..run.min(capacity_grains - g) {
            v.push((g + k, kinds[rng.below(kinds.len() as u64) as usize]));
        }
        g += run
            + if rng.below(50) == 0 {
                64 + rng.below(512)
            } else {
                1 + rng.below(8)
            };
    }
    rng.shuffle(&mut v);
    v
}

/// The delta chains of the round trips.
#[derive(Debug, Clone, Copy)]
enum Chain {
    /// vmfsSparse (COWD), one-sector grains.
    Cowd,
    /// SEsparse with data, zero and unmapped grains.
    SeSparse,
    /// monolithicSparse (KDMV) made by qemu-img and written by qemu-io, zeroed grains included.
    Kdmv,
    /// COWD then SEsparse on top.
    TwoDeltas,
}

/// Deltas for `chain` over the folder's base, oldest first.
fn make_chain(f: &Folder, chain: Chain) -> Vec<PathBuf> {
    let mut rng = Rng(0xc0ffee ^ chain as u64);
    let base = (BASE_CID, "base.vmdk");
    let sectors = f.capacity_sectors;
    match chain {
        Chain::Cowd => {
            let g = scatter(&mut rng, sectors, 400, DATA);
            vec![cowd_child(f, "vm-000001", 0x11, base, 1, &g)]
        }
        Chain::SeSparse => {
            let g = scatter(&mut rng, sectors / 8, 300, DATA_ZERO_UNMAPPED);
            vec![sesparse_child(f, "vm-000001", 0x21, base, &g)]
        }
        Chain::Kdmv => vec![qemu_child(
            f,
            "vm-000001",
            &[
                "write -P 0x11 4096 65536",
                "write -z 1M 128k",
                "write -P 0x22 1000448 512",
                "write -z 5M 4k",
                "write -P 0x33 7M 1M",
            ],
        )],
        Chain::TwoDeltas => {
            let g1 = scatter(&mut rng, sectors, 300, DATA);
            let g2 = scatter(&mut rng, sectors / 8, 200, DATA_ZERO_UNMAPPED);
            vec![
                cowd_child(f, "vm-000001", 0x31, base, 1, &g1),
                sesparse_child(f, "vm-000002", 0x32, (0x31, "vm-000001.vmdk"), &g2),
            ]
        }
    }
}

fn refs(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).collect()
}

fn base_bytes(f: &Folder) -> Vec<u8> {
    std::fs::read(f.path("base-flat.vmdk")).unwrap()
}

/// The oracle for the chain whose top is `top`, checked to differ from the base.
fn oracle(f: &Folder, top: &Path) -> Vec<u8> {
    let want = qemu_read(top);
    assert!(
        want != base_bytes(f),
        "fixture changes nothing: the test would prove nothing"
    );
    want
}

/// Stage 1 from `base.vmdk`, checked: domain defined and shut off, the volume holds the
/// base, the state says the base upload is complete with the base's CID.
fn stage1_ok(im: &Import, f: &Folder, extra: &[&str]) {
    ok(&im.stage1(&f.path("base.vmdk"), extra), "stage 1");
    assert!(!im.is_active(), "stage 1 leaves the domain shut off");
    let meta = im.state();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_eq!(st.attr("base-uploaded"), Some("yes"), "{meta}");
    let cid = st.attr("base-cid").unwrap_or_else(|| panic!("{meta}"));
    assert_eq!(
        u32::from_str_radix(cid, 16).ok(),
        Some(BASE_CID),
        "base-cid in {meta}"
    );
    assert_same(&im.read(), &base_bytes(f), "volume after stage 1");
}

/// Stage 1, then stage 2 of `chain` with `--io io --no-start`; the volume equals qemu-img's
/// reading of the chain and the stats line names the path taken.
fn round_trip(chain: Chain, io: &str) {
    round_trip_sized(chain, io, SECTORS);
}

/// [`round_trip`] on a disk of `sectors` sectors.
fn round_trip_sized(chain: Chain, io: &str, sectors: u64) {
    let tp = TestPool::new(&format!("rt-{io}"));
    let f = Folder::base(sectors);
    let deltas = make_chain(&f, chain);
    let want = oracle(&f, deltas.last().unwrap());
    let im = Import::new(&tp, "rt");
    stage1_ok(&im, &f, &[]);

    let out = im.stage2(&refs(&deltas), &["--no-start", "--io", io]);
    let stdout = ok(&out, "stage 2");
    let stats = disk_stats(&stdout).unwrap_or_else(|| panic!("no stats line:\n{}", show(&out)));
    assert_eq!(stat(&stats, "io"), io, "{stdout}");
    assert_same(&im.read(), &want, &format!("{chain:?} --io {io}"));
    assert!(!im.is_active(), "--no-start");
    let meta = im.state();
    assert_eq!(
        applied_count(&meta),
        deltas.len(),
        "applied deltas recorded: {meta}"
    );
}

#[test]
fn cowd_round_trip_through_streams_equals_qemu() {
    round_trip(Chain::Cowd, "stream");
}

#[test]
fn cowd_round_trip_through_direct_writes_equals_qemu() {
    round_trip(Chain::Cowd, "direct");
}

#[test]
fn sesparse_round_trip_through_streams_equals_qemu() {
    round_trip(Chain::SeSparse, "stream");
}

#[test]
fn sesparse_round_trip_through_direct_writes_equals_qemu() {
    round_trip(Chain::SeSparse, "direct");
}

#[test]
fn kdmv_round_trip_through_streams_equals_qemu() {
    round_trip(Chain::Kdmv, "stream");
}

#[test]
fn kdmv_round_trip_through_direct_writes_equals_qemu() {
    round_trip(Chain::Kdmv, "direct");
}

#[test]
fn two_delta_round_trip_through_streams_equals_qemu() {
    round_trip(Chain::TwoDeltas, "stream");
}

#[test]
fn two_delta_round_trip_through_direct_writes_equals_qemu() {
    round_trip(Chain::TwoDeltas, "direct");
}

#[test]
fn odd_capacity_cowd_round_trip_through_streams_equals_qemu() {
    // Not a multiple of 4 KiB: the last window ends at an odd sector.
    round_trip_sized(Chain::Cowd, "stream", SECTORS + 7);
}

#[test]
fn odd_capacity_sesparse_round_trip_through_streams_equals_qemu() {
    round_trip_sized(Chain::SeSparse, "stream", SECTORS + 24);
}

#[test]
fn odd_capacity_cowd_round_trip_through_direct_writes_equals_qemu() {
    round_trip_sized(Chain::Cowd, "direct", SECTORS + 7);
}

#[test]
fn deltas_applied_one_run_at_a_time_give_the_whole_chain() {
    let tp = TestPool::new("incr");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::TwoDeltas);
    let want = oracle(&f, &deltas[1]);
    let im = Import::new(&tp, "incr");
    stage1_ok(&im, &f, &[]);
    ok(
        &im.stage2(&[&deltas[0]], &["--no-start"]),
        "stage 2, delta 1",
    );
    assert_same(&im.read(), &qemu_read(&deltas[0]), "after delta 1");
    ok(
        &im.stage2(&[&deltas[1]], &["--no-start"]),
        "stage 2, delta 2",
    );
    assert_same(&im.read(), &want, "after delta 2");
    assert!(!im.is_active());
    let meta = im.state();
    assert_eq!(applied_count(&meta), 2, "both deltas recorded: {meta}");
}

#[test]
fn cold_migration_in_one_command_gives_the_chain() {
    let tp = TestPool::new("cold");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::TwoDeltas);
    let want = oracle(&f, &deltas[1]);
    let im = Import::new(&tp, "cold");
    let out = im.both(&f.path("base.vmdk"), &refs(&deltas), &["--no-start"]);
    ok(&out, "stage 1 and 2 in one command");
    assert_same(&im.read(), &want, "volume");
    assert!(!im.is_active(), "--no-start");
    let meta = im.metadata();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_eq!(st.attr("base-uploaded"), Some("yes"), "{meta}");
    assert_eq!(applied_count(&meta), 2, "{meta}");
}

#[test]
fn io_auto_writes_directly_on_the_local_daemon() {
    let tp = TestPool::new("auto");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::SeSparse);
    let want = oracle(&f, &deltas[0]);
    let im = Import::new(&tp, "auto");
    stage1_ok(&im, &f, &[]);
    let out = ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    let stats = disk_stats(&out).unwrap_or_else(|| panic!("no stats line: {out}"));
    assert_eq!(stat(&stats, "io"), "direct", "{out}");
    assert_same(&im.read(), &want, "volume");
}

#[test]
fn stage1_leaves_no_byte_of_what_the_volume_held_before() {
    let tp = TestPool::new("stale");
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let zero_sectors = base
        .chunks(512)
        .filter(|s| s.iter().all(|&b| b == 0))
        .count();
    assert!(zero_sectors > 1000, "the base has zero stretches");
    let im = Import::new(&tp, "stale");
    let vol = tp
        .pool
        .create_volume(&im.volume_name(), CAP)
        .unwrap_or_else(|e| panic!("{e:#}"));
    fill_volume(&vol, 0x5a);
    assert!(read_volume(&vol).iter().all(|&b| b == 0x5a));

    stage1_ok(&im, &f, &[]);
    assert_same(&im.read(), &base, "volume after stage 1");
}

#[test]
fn stage1_into_a_larger_existing_volume_zeroes_the_tail() {
    let tp = TestPool::new("tail");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "tail");
    let vol = tp
        .pool
        .create_volume(&im.volume_name(), 2 * CAP)
        .unwrap_or_else(|e| panic!("{e:#}"));
    fill_volume(&vol, 0x5a);

    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    let mut want = base_bytes(&f);
    want.resize(2 * CAP as usize, 0);
    assert_same(&im.read(), &want, "volume after stage 1");

    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    let mut want = oracle(&f, &deltas[0]);
    want.resize(2 * CAP as usize, 0);
    assert_same(&im.read(), &want, "volume after stage 2");
}

#[test]
fn base_through_standard_input_gives_the_same_bytes_as_the_file() {
    let tp = TestPool::new("stdin");
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let from_file = Import::new(&tp, "file");
    ok(
        &from_file.stage1(&f.path("base-flat.vmdk"), &[]),
        "stage 1 from the flat file",
    );
    let from_pipe = Import::new(&tp, "pipe");
    ok(
        &from_pipe.stage1_stdin(&base, CAP, &[]),
        "stage 1 from standard input",
    );
    assert_same(&from_file.read(), &base, "from the flat file");
    assert_same(&from_pipe.read(), &base, "from standard input");
    let meta = from_pipe.metadata();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_eq!(st.attr("base-uploaded"), Some("yes"), "{meta}");
}

/// A folder whose base is the boot disk with `payload` in sectors 1..=8.
fn boot_folder(payload: &[u8]) -> Folder {
    let f = Folder::base(SECTORS);
    std::fs::write(
        f.path("base-flat.vmdk"),
        bootimg::boot_disk(payload, CAP as usize),
    )
    .unwrap();
    f
}

fn boot_payload() -> Vec<u8> {
    let mut p = vec![0u8; bootimg::PAYLOAD_LEN];
    pattern(0xb007)(0, &mut p);
    p
}

/// Small enough to start next to other tests; SeaBIOS needs little. QEMU's generic CPU, which
/// starts on every host: whether host-passthrough does is the host's business (nested KVMs
/// refuse it, "failed to set MSR 0x10a"), and no test may depend on it (doc/testing.md).
const SMALL_VM: &[&str] = &["--memory", "128", "--vcpus", "1", "--cpu", "default"];

/// Stage 1 of the boot disk (with `extra`), a serial log, stage 2 of a COWD delta that
/// changes sectors 2, 5 and 8 through `--io io`, which starts the domain: its console shows
/// the hash of the patched sectors.
fn boots_the_patched_disk(tag: &str, io: &str, extra: &[&str]) {
    let tp = TestPool::new(tag);
    let payload = boot_payload();
    let f = boot_folder(&payload);
    // One-sector grains: sectors 2, 5 and 8 of the payload change, the boot sector does not.
    let grains = [
        (2, Kind::Data),
        (5, Kind::Data),
        (8, Kind::Data),
        (100, Kind::Data),
    ];
    let delta = cowd_child(&f, "vm-000001", 0x41, (BASE_CID, "base.vmdk"), 1, &grains);
    let want = oracle(&f, &delta);
    let patched = &want[512..512 + bootimg::PAYLOAD_LEN];
    assert!(patched != &payload[..] && want[..512] == base_bytes(&f)[..512]);

    let im = Import::new(&tp, tag);
    stage1_ok(&im, &f, &[SMALL_VM, extra].concat());
    let log = tp.path("console.log");
    im.add_serial_log(&log);

    let out = im.stage2(&[&delta], &["--io", io]);
    ok(&out, "stage 2");
    assert!(im.is_active(), "stage 2 starts the domain");
    let line = wait_for_line(&log, bootimg::MARKER, Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "no boot marker in {} after 60 s: {:?}",
            log.display(),
            std::fs::read_to_string(&log)
        )
    });
    assert_eq!(line, bootimg::expected_line(patched), "the patched sectors");
}

#[test]
fn stage2_starts_a_domain_that_boots_the_patched_disk() {
    boots_the_patched_disk("boot", "auto", &[]);
}

/// Like `--cpu default` in SMALL_VM: this machine's nested KVM refuses the template's fixed
/// Hyper-V list ("kernel doesn't allow setting HyperV VP_INDEX"); the tool's knob for that.
#[test]
fn a_windows_domain_boots_the_patched_disk_from_sata_after_streamed_writes() {
    boots_the_patched_disk(
        "bootwin",
        "stream",
        &["--os", "windows", "--hyperv-passthrough"],
    );
}

#[test]
fn remote_uri_streams_and_gives_the_same_bytes() {
    let tp = TestPool::on(REMOTE_URI, "remote");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::TwoDeltas);
    let want = oracle(&f, &deltas[1]);
    let im = Import::with_uri(&tp, REMOTE_URI, "remote");
    stage1_ok(&im, &f, &[]);
    let out = im.stage2(&refs(&deltas), &["--no-start", "--io", "auto"]);
    let stdout = ok(&out, "stage 2");
    let stats = disk_stats(&stdout).unwrap_or_else(|| panic!("no stats line:\n{}", show(&out)));
    assert_eq!(stat(&stats, "io"), "stream", "{stdout}");
    assert_same(&im.read(), &want, "volume via the remote URI");
}

/// Many short runs with short gaps, through `--io io`: exactly the oracle's bytes, gaps
/// included (the volume holds the patterned base there, so a wrong gap byte shows). Without
/// `base_on_host` the base files are removed after stage 1, so a streamed stage 2 must take
/// the gap bytes from the volume.
fn small_runs_give_exactly_the_chain(io: &str, sesparse: bool, base_on_host: bool) {
    let tp = TestPool::new(&format!("win-{io}"));
    let f = Folder::base(SECTORS);
    let mut rng = Rng(0x5ca7 + sesparse as u64);
    let delta = if sesparse {
        let g = small_runs(&mut rng, SECTORS / 8, DATA_ZERO_UNMAPPED);
        sesparse_child(&f, "vm-000001", 0x71, (BASE_CID, "base.vmdk"), &g)
    } else {
        let g = small_runs(&mut rng, SECTORS, DATA);
        cowd_child(&f, "vm-000001", 0x71, (BASE_CID, "base.vmdk"), 1, &g)
    };
    let want = oracle(&f, &delta);
    let im = Import::new(&tp, "win");
    stage1_ok(&im, &f, &[]);
    if !base_on_host {
        std::fs::remove_file(f.path("base.vmdk")).unwrap();
        std::fs::remove_file(f.path("base-flat.vmdk")).unwrap();
    }
    let out = im.stage2(&[&delta], &["--no-start", "--io", io]);
    let stdout = ok(&out, "stage 2");
    eprintln!("{stdout}");
    assert_same(&im.read(), &want, "volume");
    if !base_on_host {
        assert!(
            !stdout.contains("refilled from"),
            "no base on the host to refill gaps from: {stdout}"
        );
    }
    let stats = disk_stats(&stdout).unwrap_or_else(|| panic!("no stats line:\n{}", show(&out)));
    assert_eq!(stat(&stats, "io"), io, "{stdout}");
    if io == "stream" {
        let runs: u64 = stat(&stats, "runs").parse().unwrap();
        let calls: u64 = stat(&stats, "calls").parse().unwrap();
        assert!(runs >= 100, "the fixture has many runs: {stdout}");
        assert!(
            calls < runs,
            "runs a few sectors apart are merged into fewer upload calls: {stdout}"
        );
    }
}

#[test]
fn scattered_sector_runs_through_streams_write_exactly_the_chain() {
    small_runs_give_exactly_the_chain("stream", false, true);
}

#[test]
fn scattered_sector_runs_through_streams_take_gaps_from_the_volume_without_the_base() {
    small_runs_give_exactly_the_chain("stream", false, false);
}

#[test]
fn scattered_grain_runs_with_zeros_through_streams_write_exactly_the_chain() {
    small_runs_give_exactly_the_chain("stream", true, true);
}

#[test]
fn scattered_grain_runs_with_zeros_through_streams_take_gaps_from_the_volume_without_the_base() {
    small_runs_give_exactly_the_chain("stream", true, false);
}

#[test]
fn scattered_sector_runs_through_direct_writes_write_exactly_the_chain() {
    small_runs_give_exactly_the_chain("direct", false, true);
}

// ---- the domain XML --------------------------------------------------------------------

/// `--print-xml` output for `extra`, after checking it passes `virt-xml-validate` and that
/// nothing was created on the host.
fn print_xml(tp: &TestPool, f: &Folder, extra: &[&str]) -> (String, Vec<Elem>) {
    let im = Import::new(tp, "xml");
    let out = im.stage1(&f.path("base.vmdk"), &[&["--print-xml"], extra].concat());
    let xml = ok(&out, "--print-xml");
    let file = tp.path(&format!("{}.xml", im.domain));
    std::fs::write(&file, &xml).unwrap();
    let v = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("virt-xml-validate runs");
    assert!(
        v.status.success(),
        "virt-xml-validate:\n{}\n{xml}",
        show(&v)
    );
    assert!(!im.exists(), "--print-xml defined the domain");
    assert!(
        tp.pool.find_volume(&im.volume_name()).unwrap().is_none(),
        "--print-xml created the volume"
    );
    let elems = elements(&xml);
    let root = &elems[0];
    assert_eq!(root.path, "domain");
    assert!(
        matches!(root.attr("type"), Some("kvm") | Some("qemu")),
        "{xml}"
    );
    assert_eq!(find(&elems, "domain/name")[0].text, im.domain, "{xml}");
    (xml, elems)
}

/// The one `device='disk'` disk, and its target's `bus`.
fn the_disk_bus(elems: &[Elem], xml: &str) -> (String, String) {
    let disks: Vec<_> = find(elems, "domain/devices/disk")
        .into_iter()
        .filter(|d| d.attr("device").unwrap_or("disk") == "disk")
        .collect();
    assert_eq!(disks.len(), 1, "one disk: {xml}");
    let targets = find(elems, "domain/devices/disk/target");
    let t = targets[0];
    (
        t.attr("dev").unwrap_or_default().to_owned(),
        t.attr("bus").unwrap_or_default().to_owned(),
    )
}

#[test]
fn print_xml_for_linux_validates_with_a_virtio_scsi_disk_and_no_nic() {
    let tp = TestPool::new("xml-linux");
    let f = Folder::base(SECTORS);
    let (xml, elems) = print_xml(&tp, &f, &["--disk-bus", "virtio-blk"]);
    assert_eq!(
        the_disk_bus(&elems, &xml),
        ("vda".to_owned(), "virtio".to_owned()),
        "--disk-bus virtio-blk: the old way"
    );
    let (xml, elems) = print_xml(&tp, &f, &[]);
    assert_eq!(
        the_disk_bus(&elems, &xml),
        ("sda".to_owned(), "scsi".to_owned())
    );
    assert!(
        find(&elems, "domain/devices/interface").is_empty(),
        "no NIC without --network/--bridge/--mac: {xml}"
    );
    assert!(
        xml.contains("-disk0"),
        "the disk is the imported volume: {xml}"
    );
}

#[test]
fn print_xml_for_linux_with_a_network_has_a_virtio_nic() {
    let tp = TestPool::new("xml-net");
    let f = Folder::base(SECTORS);
    let (xml, elems) = print_xml(
        &tp,
        &f,
        &["--network", "default", "--mac", "52:54:00:AB:cd:01"],
    );
    let nics = find(&elems, "domain/devices/interface");
    assert_eq!(nics.len(), 1, "{xml}");
    assert_eq!(nics[0].attr("type"), Some("network"), "{xml}");
    let src = find(&elems, "domain/devices/interface/source");
    assert_eq!(src[0].attr("network"), Some("default"), "{xml}");
    let model = find(&elems, "domain/devices/interface/model");
    assert_eq!(model[0].attr("type"), Some("virtio"), "{xml}");
    let mac = find(&elems, "domain/devices/interface/mac");
    assert_eq!(mac[0].attr("address"), Some("52:54:00:ab:cd:01"), "{xml}");
}

#[test]
fn print_xml_for_windows_has_a_sata_disk_and_an_e1000e_nic() {
    let tp = TestPool::new("xml-win");
    let f = Folder::base(SECTORS);
    let (xml, elems) = print_xml(&tp, &f, &["--os", "windows", "--network", "default"]);
    let (_, bus) = the_disk_bus(&elems, &xml);
    assert_eq!(bus, "sata", "{xml}");
    let model = find(&elems, "domain/devices/interface/model");
    assert_eq!(model.len(), 1, "{xml}");
    assert_eq!(model[0].attr("type"), Some("e1000e"), "{xml}");
    let os = find(&elems, "domain/os/type");
    assert!(
        os[0].attr("machine").unwrap_or_default().contains("q35"),
        "{xml}"
    );
}

#[test]
fn print_xml_with_a_bridge_names_the_bridge() {
    let tp = TestPool::new("xml-br");
    let f = Folder::base(SECTORS);
    let (xml, elems) = print_xml(&tp, &f, &["--bridge", "br-lan"]);
    let nics = find(&elems, "domain/devices/interface");
    assert_eq!(nics.len(), 1, "{xml}");
    assert_eq!(nics[0].attr("type"), Some("bridge"), "{xml}");
    let src = find(&elems, "domain/devices/interface/source");
    assert_eq!(src[0].attr("bridge"), Some("br-lan"), "{xml}");
}

#[test]
fn dry_run_changes_nothing() {
    let tp = TestPool::new("dry");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "dry");
    ok(
        &im.stage1(&f.path("base.vmdk"), &["--dry-run"]),
        "stage 1 --dry-run",
    );
    assert!(!im.exists(), "stage 1 --dry-run defined the domain");
    assert!(
        tp.pool.find_volume(&im.volume_name()).unwrap().is_none(),
        "stage 1 --dry-run created the volume"
    );

    ok(
        &im.both(&f.path("base.vmdk"), &refs(&deltas), &["--dry-run"]),
        "stage 1 and 2 --dry-run",
    );
    assert!(!im.exists(), "cold --dry-run defined the domain");
    assert!(
        tp.pool.find_volume(&im.volume_name()).unwrap().is_none(),
        "cold --dry-run created the volume"
    );

    stage1_ok(&im, &f, &[]);
    let meta = im.metadata();
    ok(
        &im.stage2(&refs(&deltas), &["--dry-run"]),
        "stage 2 --dry-run",
    );
    assert_same(
        &im.read(),
        &base_bytes(&f),
        "volume after stage 2 --dry-run",
    );
    assert_eq!(im.metadata(), meta, "metadata after stage 2 --dry-run");
    assert!(!im.is_active(), "stage 2 --dry-run started the domain");
}

// ---- refusals --------------------------------------------------------------------------

/// Run stage 2 of `deltas` (with `extra`, starting the domain unless told otherwise) and
/// check it is refused with a message containing one of `any_of`, and changes nothing: the
/// volume's bytes, the import state, the rest of the domain's XML and its run state are as
/// before.
fn assert_refused_untouched(im: &Import, deltas: &[&Path], extra: &[&str], any_of: &[&str]) {
    let before = im.read();
    let meta = im.metadata();
    let xml = im.xml();
    let active = im.is_active();
    let out = im.stage2(deltas, extra);
    let line = refused(&out, any_of);
    eprintln!("refused as expected: {line}");
    assert_same(&im.read(), &before, "volume after a refused stage 2");
    assert_eq!(im.metadata(), meta, "import state after a refused stage 2");
    assert_eq!(im.xml(), xml, "domain XML after a refused stage 2");
    assert_eq!(
        im.is_active(),
        active,
        "a refused stage 2 leaves the domain's run state alone"
    );
}

#[test]
fn stage2_refuses_a_running_domain() {
    let tp = TestPool::new("running");
    let payload = boot_payload();
    let f = boot_folder(&payload);
    let delta = cowd_child(
        &f,
        "vm-000001",
        0x81,
        (BASE_CID, "base.vmdk"),
        1,
        &[(0, Kind::Data), (3, Kind::Data), (9000, Kind::Data)],
    );
    let im = Import::new(&tp, "running");
    stage1_ok(&im, &f, SMALL_VM);
    virsh(&im.uri, &["start", &im.domain]);
    assert!(im.is_active());
    assert_refused_untouched(&im, &[&delta], &[], &["running", "active"]);
    assert_refused_untouched(
        &im,
        &[&delta],
        &["--io", "stream", "--no-start"],
        &["running", "active"],
    );
}

#[test]
fn stage2_refuses_a_delta_of_another_base() {
    let tp = TestPool::new("cid");
    let f = Folder::base(SECTORS);
    // A consistent chain, but over a base whose CID is not the one stage 1 uploaded.
    let other = descriptor(
        0x0bad_cafe,
        None,
        "vmfs",
        &[format!("RW {SECTORS} VMFS \"base-flat.vmdk\"")],
    );
    f.write("other.vmdk", &other);
    let g = scatter(&mut Rng(0x91), SECTORS, 50, DATA);
    let delta = cowd_child(&f, "vm-000001", 0x91, (0x0bad_cafe, "other.vmdk"), 1, &g);
    let im = Import::new(&tp, "cid");
    stage1_ok(&im, &f, &[]);
    assert_refused_untouched(&im, &[&delta], &[], &["cid"]);
}

#[test]
fn stage2_refuses_a_delta_whose_parent_cid_does_not_match_its_base() {
    let tp = TestPool::new("pcid");
    let f = Folder::base(SECTORS);
    let g = scatter(&mut Rng(0x92), SECTORS, 50, DATA);
    let delta = cowd_child(&f, "vm-000001", 0x92, (0x1234_5678, "base.vmdk"), 1, &g);
    let im = Import::new(&tp, "pcid");
    stage1_ok(&im, &f, &[]);
    assert_refused_untouched(&im, &[&delta], &[], &["cid"]);
}

#[test]
fn stage2_refuses_when_the_base_upload_did_not_complete() {
    let tp = TestPool::new("nobase");
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "nobase");

    // Standard input ends halfway through the disk: stage 1 fails, saying so.
    let out = im.stage1_stdin(&base[..(CAP / 2) as usize], CAP, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("virt-vmdkimport: "), "{}", show(&out));
    assert!(im.exists(), "stage 1 defines the domain before it uploads");
    let meta = im.metadata();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_eq!(st.attr("base-uploaded"), Some("no"), "{meta}");
    assert!(!im.is_active());

    assert_refused_untouched(&im, &refs(&deltas), &[], &["upload", "base"]);

    // Stage 1 again, complete this time, then stage 2 goes through.
    stage1_ok(&im, &f, &[]);
    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    assert_same(&im.read(), &qemu_read(&deltas[0]), "volume");
}

#[test]
fn stage2_refuses_a_delta_whose_capacity_differs_from_the_base() {
    let tp = TestPool::new("cap");
    let f = Folder::base(SECTORS);
    let g = scatter(&mut Rng(0xa1), SECTORS, 50, DATA);
    let delta = cowd_child_sized(
        &f,
        "vm-000001",
        0xa1,
        (BASE_CID, "base.vmdk"),
        1,
        &g,
        2 * SECTORS,
    );
    let im = Import::new(&tp, "cap");
    stage1_ok(&im, &f, &[]);
    assert_refused_untouched(&im, &[&delta], &[], &["capacity", "size", "fit", "larger"]);
}

#[test]
fn stage2_refuses_a_chain_larger_than_the_volume() {
    let tp = TestPool::new("cap2");
    let f = Folder::base(SECTORS);
    // The same base CID, but a disk twice the size: the chain itself is consistent.
    let big = Folder::base(2 * SECTORS);
    let g = scatter(&mut Rng(0xa2), 2 * SECTORS, 50, DATA);
    let delta = cowd_child(&big, "vm-000001", 0xa2, (BASE_CID, "base.vmdk"), 1, &g);
    let im = Import::new(&tp, "cap2");
    stage1_ok(&im, &f, &[]);
    assert_refused_untouched(&im, &[&delta], &[], &["capacity", "size", "fit", "larger"]);
}

#[test]
fn stage2_refuses_an_older_delta_after_a_newer_one() {
    let tp = TestPool::new("order");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::TwoDeltas);
    let want = oracle(&f, &deltas[1]);
    let im = Import::new(&tp, "order");
    stage1_ok(&im, &f, &[]);
    // The newer delta alone, without the one below it, sits on nothing the volume holds.
    assert_refused_untouched(&im, &[&deltas[1]], &[], &["cid"]);
    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    assert_same(&im.read(), &want, "after the chain");
    let meta = im.metadata();

    assert_refused_untouched(
        &im,
        &[&deltas[0]],
        &[],
        &["applied", "order", "older", "cid"],
    );

    // The same full chain again, after stage 2 handed the domain over (--no-start): refused,
    // naming the delta; the volume keeps its bytes.
    assert_refused_untouched(&im, &refs(&deltas), &["--no-start"], &["already applied"]);
    assert_same(&im.read(), &want, "after the refused rerun");
    assert_eq!(
        applied_count(&im.metadata()),
        applied_count(&meta),
        "{meta}"
    );
}

// ---- a domain defined by other tooling --------------------------------------------------

/// A domain as virt-install or puppet might define it: its disk is `disk_xml`, plus a NIC
/// (user networking: it needs nothing on the host, so stage 1's trial start passes), a serial
/// console and some things the tool's templates do not have.
fn foreign_domain_xml(tp: &TestPool, name: &str, disk_xml: &str) -> String {
    format!(
        "<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>96</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_reboot>destroy</on_reboot>
  <metadata><other:owner xmlns:other='urn:example:other'>puppet keeps this</other:owner></metadata>
  <devices>
    {disk_xml}
    <interface type='user'>
      <mac address='52:54:00:12:34:56'/>
      <model type='rtl8139'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>",
        kind = tp.conn.domain_type()
    )
}

/// Domain XML without its `<metadata>` and blank lines.
fn without_metadata(xml: &str) -> String {
    remove_elements(xml, "metadata")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Stage 1 and stage 2 into a domain defined by other tooling: the domain's own volume gets
/// the bytes, no `<domain>-disk0` appears, and the domain's XML is as it was apart from the
/// tool's metadata.
fn existing_domain_keeps_its_xml(disk_by_path: bool) {
    let tp = TestPool::new("foreign");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::SeSparse);
    let want = oracle(&f, &deltas[0]);
    let vol = tp.volume("web-root", CAP);
    fill_volume(&vol, 0x5a);
    let disk = if disk_by_path {
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{}'/><target dev='sda' bus='sata'/></disk>",
            vol.path()
        )
    } else {
        format!(
            "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
             <source pool='{}' volume='{}'/><target dev='sda' bus='sata'/></disk>",
            tp.name,
            vol.name()
        )
    };
    let name = unique_name("foreign");
    tp.define_domain(&foreign_domain_xml(&tp, &name, &disk));
    let im = Import::existing(&tp, &name);
    let xml_before = without_metadata(&im.xml());

    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    assert!(
        tp.pool.find_volume(&im.volume_name()).unwrap().is_none(),
        "stage 1 created {} next to the domain's own disk",
        im.volume_name()
    );
    assert_same(&read_volume(&vol), &base_bytes(&f), "the domain's volume");
    let meta = im.metadata();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_eq!(st.attr("base-uploaded"), Some("yes"), "{meta}");

    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    assert_same(&read_volume(&vol), &want, "the domain's volume");
    let xml_after = without_metadata(&im.xml());
    assert_eq!(
        section(&xml_after, "devices"),
        section(&xml_before, "devices"),
        "devices"
    );
    assert_eq!(
        xml_after, xml_before,
        "the domain's XML apart from metadata"
    );
    let meta = im.metadata();
    assert!(
        meta.contains("urn:example:other") && meta.contains("puppet keeps this"),
        "other tooling's metadata kept: {meta}"
    );
    assert!(!im.is_active());
}

#[test]
fn existing_domain_with_a_volume_disk_gets_the_bytes_and_keeps_its_devices() {
    existing_domain_keeps_its_xml(false);
}

#[test]
fn existing_domain_with_a_file_disk_gets_the_bytes_and_keeps_its_devices() {
    existing_domain_keeps_its_xml(true);
}

#[test]
fn stage2_refuses_a_domain_that_stage1_never_imported() {
    let tp = TestPool::new("nostate");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let vol = tp.volume("web-root", CAP);
    fill_volume(&vol, 0x5a);
    let disk = format!(
        "<disk type='volume' device='disk'><driver name='qemu' type='raw'/>\
         <source pool='{}' volume='{}'/><target dev='vda' bus='virtio'/></disk>",
        tp.name,
        vol.name()
    );
    let name = unique_name("nostate");
    tp.define_domain(&foreign_domain_xml(&tp, &name, &disk));
    let im = Import::existing(&tp, &name);
    let xml = im.xml();
    let out = im.stage2(&refs(&deltas), &[]);
    refused(&out, &["stage 1", "import state", "base"]);
    assert!(
        read_volume(&vol).iter().all(|&b| b == 0x5a),
        "volume written"
    );
    assert_eq!(im.xml(), xml, "domain XML changed");
    assert!(!im.is_active(), "domain started");
}

#[test]
fn stage2_refuses_a_domain_that_does_not_exist() {
    let tp = TestPool::new("nodom");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "nodom");
    let out = im.stage2(&refs(&deltas), &[]);
    let line = refused(&out, &["not exist", "not found", "no domain"]);
    assert!(line.contains(&im.domain), "names the domain: {line}");
    assert!(!im.exists());
}

#[test]
fn stage1_refuses_an_existing_volume_smaller_than_the_disk() {
    let tp = TestPool::new("small");
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, "small");
    let vol = tp
        .pool
        .create_volume(&im.volume_name(), CAP / 2)
        .unwrap_or_else(|e| panic!("{e:#}"));
    fill_volume(&vol, 0x5a);
    let out = im.stage1(&f.path("base.vmdk"), &[]);
    let line = refused(&out, &["smaller", "capacity", "size"]);
    assert!(line.contains(&im.volume_name()), "names the volume: {line}");
    let got = read_volume(&vol);
    assert_eq!(got.len() as u64, CAP / 2, "volume resized");
    assert!(got.iter().all(|&b| b == 0x5a), "volume written");
    assert!(
        !im.exists(),
        "domain defined around a volume that cannot hold the disk"
    );
}

#[test]
fn stage1_fails_when_standard_input_is_longer_than_the_capacity() {
    let tp = TestPool::new("long");
    let f = Folder::base(SECTORS);
    let mut input = base_bytes(&f);
    input.extend_from_slice(&[0x77; 4096]);
    let im = Import::new(&tp, "long");
    let out = im.stage1_stdin(&input, CAP, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("virt-vmdkimport: "), "{}", show(&out));
    if im.exists() {
        let meta = im.metadata();
        let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
        assert_eq!(
            st.attr("base-uploaded"),
            Some("no"),
            "a base longer than the disk is not a complete upload: {meta}"
        );
    }
}

#[test]
fn windows_domain_round_trip_writes_its_sata_disk() {
    let tp = TestPool::new("win");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::SeSparse);
    let want = oracle(&f, &deltas[0]);
    let im = Import::new(&tp, "win");
    let net = TestNet::isolated("win");
    stage1_ok(&im, &f, &["--os", "windows", "--network", &net.name]);
    let xml = im.xml();
    let elems = elements(&xml);
    assert_eq!(the_disk_bus(&elems, &xml).1, "sata", "{xml}");
    let out = ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    let stats = disk_stats(&out).unwrap_or_else(|| panic!("no stats line: {out}"));
    assert!(
        out.lines().any(|l| l.starts_with("disk sd")),
        "the stats line names the SATA disk: {out}"
    );
    assert!(!stats.is_empty());
    assert_same(&im.read(), &want, "volume");
}

#[test]
fn domain_name_with_spaces_and_xml_specials_round_trips() {
    let tp = TestPool::new("names");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let want = oracle(&f, &deltas[0]);
    let mut im = Import::new(&tp, "names");
    im.domain = format!("{} Web & 'DB' <prod>", im.domain);
    tp.track_domain(&im.domain);
    stage1_ok(&im, &f, &[]);
    let xml = im.xml();
    assert_eq!(find(&elements(&xml), "domain/name")[0].text, im.domain);
    ok(&im.stage2(&refs(&deltas), &["--no-start"]), "stage 2");
    assert_same(&im.read(), &want, "volume");
}

#[test]
fn windows_over_an_earlier_delta_keep_its_bytes_in_the_gaps() {
    // Delta 1 changes many scattered sectors; delta 2, applied in a later run through
    // streams, has short runs whose gaps cover delta 1's sectors. Gap bytes must come from
    // what the volume holds now (delta 1 applied), not from the base.
    let tp = TestPool::new("gaps");
    let f = Folder::base(SECTORS);
    let g1 = scatter(&mut Rng(0x9a9), SECTORS, 3000, DATA);
    let d1 = cowd_child(&f, "vm-000001", 0xb1, (BASE_CID, "base.vmdk"), 1, &g1);
    let g2 = small_runs(&mut Rng(0x9aa), SECTORS, DATA);
    let d2 = cowd_child(&f, "vm-000002", 0xb2, (0xb1, "vm-000001.vmdk"), 1, &g2);
    let want = oracle(&f, &d2);
    let im = Import::new(&tp, "gaps");
    stage1_ok(&im, &f, &[]);
    ok(
        &im.stage2(&[&d1], &["--no-start", "--io", "stream"]),
        "stage 2, delta 1",
    );
    assert_same(&im.read(), &qemu_read(&d1), "after delta 1");
    let out = ok(
        &im.stage2(&[&d2], &["--no-start", "--io", "stream"]),
        "stage 2, delta 2",
    );
    let stats = disk_stats(&out).unwrap_or_else(|| panic!("no stats line: {out}"));
    let gap: u64 = stat(&stats, "gap_bytes").parse().unwrap();
    assert!(gap > 0, "the planner merged runs over gaps: {out}");
    assert_same(&im.read(), &want, "after delta 2");
}

#[test]
fn io_direct_on_a_remote_uri_is_refused_and_changes_nothing() {
    let tp = TestPool::on(REMOTE_URI, "rdirect");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::with_uri(&tp, REMOTE_URI, "rdirect");
    stage1_ok(&im, &f, &[]);
    assert_refused_untouched(
        &im,
        &refs(&deltas),
        &["--io", "direct"],
        &["direct", "local"],
    );
}

#[test]
fn a_block_device_volume_gets_real_zeros_and_both_write_paths() {
    let tp = TestPool::new("block");
    // A block device that holds someone else's data, as a new LV can (the LVM case).
    let backing = tp.path("blockdev.raw");
    std::fs::write(&backing, vec![0x5au8; CAP as usize]).unwrap();
    let Some(lo) = util::libvirt::LoopDev::attach(&backing) else {
        eprintln!("SKIPPED: no loop device on this machine");
        return;
    };
    // A dir pool lists a symlink to a block device as a volume; streams open the device.
    std::os::unix::fs::symlink(&lo.dev, tp.pool_dir().join("blk")).unwrap();
    tp.pool.refresh().unwrap();
    let vol = tp.pool.volume("blk").unwrap_or_else(|e| panic!("{e:#}"));
    // (libvirt calls it a file: a dir pool reports a symlink to a device so.)
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(vol.path()).unwrap().file_type();
    assert!(kind.is_block_device(), "the volume is a block device");

    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::TwoDeltas);
    // A block disk on the volume's path: the domain can start (QEMU opens a `type='volume'`
    // disk of a dir pool as a regular file, which this one is not).
    let disk = format!(
        "<disk type='block' device='disk'><driver name='qemu' type='raw'/>\
         <source dev='{}'/><target dev='vda' bus='virtio'/></disk>",
        tp.pool_dir().join("blk").display()
    );
    let name = unique_name("block");
    tp.define_domain(&foreign_domain_xml(&tp, &name, &disk));
    let im = Import::existing(&tp, &name);
    let on_device = || {
        let mut buf = vec![0u8; CAP as usize];
        std::fs::File::open(&lo.dev)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
            .unwrap();
        buf
    };

    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    assert_same(&read_volume(&vol), &base_bytes(&f), "volume after stage 1");
    assert_same(&on_device(), &base_bytes(&f), "device after stage 1");

    let out = ok(
        &im.stage2(&[&deltas[0]], &["--no-start", "--io", "stream"]),
        "stage 2, delta 1",
    );
    assert_eq!(stat(&disk_stats(&out).unwrap(), "io"), "stream", "{out}");
    assert_same(&on_device(), &qemu_read(&deltas[0]), "device after delta 1");

    let out = ok(
        &im.stage2(&[&deltas[1]], &["--no-start"]),
        "stage 2, delta 2",
    );
    assert_eq!(
        stat(&disk_stats(&out).unwrap(), "io"),
        "direct",
        "auto writes a local block device directly: {out}"
    );
    let want = oracle(&f, &deltas[1]);
    assert_same(&on_device(), &want, "device after delta 2");
    assert_same(&read_volume(&vol), &want, "volume after delta 2");
}

#[test]
fn stage1_keeps_a_file_volume_sparse() {
    use std::os::unix::fs::MetadataExt;
    let tp = TestPool::new("sparse");
    let f = Folder::base(SECTORS);
    // 1 MiB of data at the front, 4 KiB at the end, zeros between.
    let mut base = base_bytes(&f);
    base[MIB as usize..CAP as usize - 4096].fill(0);
    std::fs::write(f.path("base-flat.vmdk"), &base).unwrap();
    let im = Import::new(&tp, "sparse");
    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    let vol = im.volume();
    assert_same(&read_volume(&vol), &base, "volume");
    let allocated = std::fs::metadata(vol.path()).unwrap().blocks() * 512;
    assert!(
        allocated < 2 * MIB,
        "{allocated} bytes allocated for 1 MiB of data in a {CAP}-byte volume"
    );
}

#[test]
fn stage2_needs_no_pool_option() {
    let tp = TestPool::new("nopool");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::Cowd);
    let im = Import::new(&tp, "nopool");
    stage1_ok(&im, &f, &[]);
    // No --pool: the volume is the one stage 1 recorded (this host has no pool 'default').
    let mut args: Vec<std::ffi::OsString> = ["-c", &im.uri, "--domain", &im.domain, "--no-start"]
        .iter()
        .map(Into::into)
        .collect();
    args.extend(deltas.iter().map(Into::into));
    ok(&run(&args), "stage 2 without --pool");
    assert_same(&im.read(), &oracle(&f, &deltas[0]), "volume");
}

#[test]
fn a_monolithic_sparse_base_round_trips_through_streams() {
    let tp = TestPool::new("sbase");
    let f = Folder::base(SECTORS);
    let base = sparse_base(&f, "sbase.vmdk");
    let cid = util::fixtures::read_cid(&base).unwrap();
    // Small writes 128 KiB apart: 64 KiB grains with gaps between them.
    let writes: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "write -P {} {} 4k",
                0x40 + i,
                i * 128 * 1024 + 512 * (i % 7)
            )
        })
        .collect();
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    let child = qemu_child_of(&f, "sbase.vmdk", "sbase-000001", &writes);
    let want = oracle(&f, &child);
    assert_eq!(
        qemu_read(&base),
        base_bytes(&f),
        "the sparse base holds the base"
    );

    let im = Import::new(&tp, "sbase");
    ok(
        &im.stage1(&base, &[]),
        "stage 1 from a monolithicSparse base",
    );
    assert_same(&im.read(), &base_bytes(&f), "volume after stage 1");
    let meta = im.state();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_eq!(
        st.attr("base-cid")
            .and_then(|c| u32::from_str_radix(c, 16).ok()),
        Some(cid),
        "{meta}"
    );
    let out = ok(
        &im.stage2(&[&child], &["--no-start", "--io", "stream"]),
        "stage 2",
    );
    eprintln!("{out}");
    assert_same(&im.read(), &want, "volume after stage 2");
}

/// `blockdev --setro|--setrw DEV`: writes to a read-only block device fail (EPERM) even for
/// root, while opening it still succeeds: a real failure in the middle of stage 2.
fn set_read_only(dev: &Path, ro: bool) {
    let out = Command::new("blockdev")
        .arg(if ro { "--setro" } else { "--setrw" })
        .arg(dev)
        .output()
        .expect("blockdev runs");
    assert!(out.status.success(), "blockdev:\n{}", show(&out));
}

/// Stage 2 through `--io io` fails while writing (the block device under the volume turned
/// read-only): exit 1, the domain stays off, the state keeps the disk marked as being written
/// and records no delta; once the device is writable again the same command completes.
fn a_failed_write_leaves_the_domain_off_and_a_rerun_completes(io: &str) {
    let tp = TestPool::new(&format!("wfail-{io}"));
    let backing = tp.path("blockdev.raw");
    std::fs::write(&backing, vec![0x5au8; CAP as usize]).unwrap();
    let Some(lo) = util::libvirt::LoopDev::attach(&backing) else {
        eprintln!("SKIPPED: no loop device on this machine");
        return;
    };
    std::os::unix::fs::symlink(&lo.dev, tp.pool_dir().join("blk")).unwrap();
    tp.pool.refresh().unwrap();
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::SeSparse);
    // A block disk on the volume's path: the domain can start (QEMU opens a `type='volume'`
    // disk of a dir pool as a regular file, which this one is not).
    let disk = format!(
        "<disk type='block' device='disk'><driver name='qemu' type='raw'/>\
         <source dev='{}'/><target dev='vda' bus='virtio'/></disk>",
        tp.pool_dir().join("blk").display()
    );
    let name = unique_name("wfail");
    tp.define_domain(&foreign_domain_xml(&tp, &name, &disk));
    let im = Import::existing(&tp, &name);
    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");

    set_read_only(&lo.dev, true);
    let out = im.stage2(&refs(&deltas), &["--io", io]);
    set_read_only(&lo.dev, false);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap_or_default()
            .starts_with("virt-vmdkimport: "),
        "{}",
        show(&out)
    );
    eprintln!("failed as expected: {}", stderr.trim_end());
    assert!(!im.is_active(), "a failed stage 2 started the domain");
    let meta = im.state();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_eq!(st.attr("applying"), Some("yes"), "{meta}");
    // The chain in progress is recorded, so a rerun must give all of it again.
    assert_eq!(applied_count(&meta), 1, "{meta}");

    ok(
        &im.stage2(&refs(&deltas), &["--no-start", "--io", io]),
        "stage 2 again",
    );
    assert_same(
        &read_volume(&tp.pool.volume("blk").unwrap()),
        &oracle(&f, &deltas[0]),
        "volume",
    );
    let meta = im.state();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    assert_ne!(st.attr("applying"), Some("yes"), "{meta}");
    assert_eq!(applied_count(&meta), 1, "{meta}");
}

#[test]
fn a_failed_streamed_write_leaves_the_domain_off_and_a_rerun_completes() {
    a_failed_write_leaves_the_domain_off_and_a_rerun_completes("stream");
}

#[test]
fn a_failed_direct_write_leaves_the_domain_off_and_a_rerun_completes() {
    a_failed_write_leaves_the_domain_off_and_a_rerun_completes("direct");
}

#[path = "import/lifecycle.rs"]
mod lifecycle;

#[test]
fn two_imports_at_once_into_one_pool_both_land() {
    // Hosts migrate several VMs in the same outage: two streamed stage 2 runs at the same
    // moment, each refreshing the shared pool after its uploads.
    let tp = TestPool::new("pair");
    let fa = Folder::base(SECTORS);
    let fb = Folder::base(SECTORS);
    let ga = small_runs(&mut Rng(0xaa), SECTORS, DATA);
    let gb = small_runs(&mut Rng(0xbb), SECTORS / 8, DATA_ZERO_UNMAPPED);
    let da = cowd_child(&fa, "vm-000001", 0xc1, (BASE_CID, "base.vmdk"), 1, &ga);
    let db = sesparse_child(&fb, "vm-000001", 0xc2, (BASE_CID, "base.vmdk"), &gb);
    let (want_a, want_b) = (oracle(&fa, &da), oracle(&fb, &db));
    let a = Import::new(&tp, "pair-a");
    let b = Import::new(&tp, "pair-b");
    stage1_ok(&a, &fa, &[]);
    stage1_ok(&b, &fb, &[]);
    // Without the bases, so both take their gap bytes from their volumes.
    for f in [&fa, &fb] {
        std::fs::remove_file(f.path("base.vmdk")).unwrap();
    }
    let spawn = |im: &Import, d: &Path| {
        let mut args = im.common();
        args.extend([
            d.into(),
            "--no-start".into(),
            "--io".into(),
            "stream".into(),
        ]);
        Command::new(util::BIN)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("binary runs")
    };
    let ca = spawn(&a, &da);
    let cb = spawn(&b, &db);
    let oa = ca.wait_with_output().unwrap();
    let ob = cb.wait_with_output().unwrap();
    ok(&oa, "stage 2 of a");
    ok(&ob, "stage 2 of b");
    assert_same(&a.read(), &want_a, "volume a");
    assert_same(&b.read(), &want_b, "volume b");
}

/// The document `--json` printed: all of standard output, one JSON value.
fn json_doc(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", show(out)))
}

/// The phases named `name` in a `--json` document.
fn phases<'d>(doc: &'d serde_json::Value, name: &str) -> Vec<&'d serde_json::Value> {
    doc["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter(|p| p["name"] == name)
        .collect()
}

/// Issue 10: `--json` prints one document per run on stdout (the human lines go to stderr):
/// its phases with bytes, calls and write path, the import state after the run, and for a
/// refused run the error with `ok: false`.
#[test]
fn json_gives_one_document_per_run_with_phases_bytes_and_the_state_after_it() {
    let tp = TestPool::new("json");
    let f = Folder::base(SECTORS);
    let deltas = make_chain(&f, Chain::SeSparse);
    let want = oracle(&f, &deltas[0]);
    let im = Import::new(&tp, "json");

    let out = im.stage1(&f.path("base.vmdk"), &["--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let doc = json_doc(&out);
    assert_eq!(
        (doc["ok"].as_bool(), doc["format"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(doc["domain"], im.domain.as_str());
    let upload = phases(&doc, "base upload");
    assert_eq!(upload.len(), 1, "{doc:#}");
    assert_eq!(upload[0]["bytes"].as_u64(), Some(CAP), "{doc:#}");
    assert_eq!(upload[0]["ok"], true);
    assert_eq!(phases(&doc, "trial start").len(), 1, "{doc:#}");
    let disk = &doc["state"]["disks"][0];
    assert_eq!(disk["base_uploaded"], true, "{doc:#}");
    assert_eq!(
        disk["base_cid"],
        format!("{BASE_CID:08x}").as_str(),
        "{doc:#}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("uploaded "),
        "the human lines on stderr: {err}"
    );

    let out = im.stage2(&refs(&deltas), &["--json", "--no-start", "--io", "stream"]);
    assert!(out.status.success(), "{}", show(&out));
    let doc = json_doc(&out);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let stats = disk_stats(&err).unwrap_or_else(|| panic!("no stats line: {err}"));
    let applied: u64 = ["data_bytes", "zero_bytes"]
        .iter()
        .map(|k| stat(&stats, k).parse::<u64>().unwrap())
        .sum();
    let apply = phases(&doc, "delta apply");
    assert_eq!(apply.len(), 1, "{doc:#}");
    assert_eq!(apply[0]["io"], "stream");
    assert_eq!(apply[0]["bytes"].as_u64(), Some(applied), "{doc:#}");
    assert_eq!(
        apply[0]["calls"].as_u64().map(|c| c >= 1),
        Some(true),
        "{doc:#}"
    );
    let state = &doc["state"];
    assert_eq!(
        state["disks"][0]["applied"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(state["handed_over"]["how"], "no-start", "{doc:#}");
    assert_same(&im.read(), &want, "volume after the --json run");

    let missing = f.path("no-such-delta.vmdk");
    let out = im.stage2(&[missing.as_path()], &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let doc = json_doc(&out);
    assert_eq!(
        (doc["ok"].as_bool(), doc["exit_code"].as_i64()),
        (Some(false), Some(1))
    );
    let error = doc["error"].as_str().unwrap_or_default();
    assert!(error.contains("no-such-delta.vmdk"), "{doc:#}");
    assert_eq!(
        doc["state"]["handed_over"]["how"], "no-start",
        "the state is unchanged"
    );
}
