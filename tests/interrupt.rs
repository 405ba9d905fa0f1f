//! Interruptions end to end on the real libvirtd: SIGINT and SIGTERM sent to the running binary mid-stage, a process killed outright, a closed stdout, a full pool; each followed by a rerun that gives qemu-img's bytes.

mod util;

use std::path::PathBuf;
use std::process::Output;

use nix::libc::{SYS_read, SYS_write};
use nix::sys::signal::Signal;

use util::fixtures::SECTOR;
use util::import::*;
use util::interrupt::*;
use util::libvirt::TestPool;
use util::{assert_same, qemu_read, Folder};

const CAP: u64 = 8 * MIB;
const SECTORS: u64 = CAP / SECTOR;

/// Assert the exit of a run stopped by `sig`: code 128 + `sig` and one stderr line naming the
/// signal, the volume, the rerun and each of `also`.
fn assert_interrupted(out: &Output, sig: Signal, tp: &TestPool, im: &Import, also: &[&str]) {
    assert_eq!(out.status.code(), Some(128 + sig as i32), "{}", show(out));
    let line = one_line(out);
    let mut wants = vec![
        format!("interrupted by {sig}"),
        format!("volume '{}/{}'", tp.name, im.volume_name()),
        "rerun the same command".to_string(),
    ];
    wants.extend(also.iter().map(|a| a.to_string()));
    for want in wants {
        assert!(line.contains(&want), "{want:?} in {line}");
    }
}

/// Stage 1 from a pipe, stopped by `sig` while it waits for more of the base: the stream is
/// aborted, the file volume has its length back, the state says the base is incomplete, the
/// exit code is 128 + signal with one line naming the rerun; the same command then gives the
/// base, and stage 2 qemu-img's bytes of the chain.
fn signal_mid_base_upload(sig: Signal) {
    let tp = TestPool::new("sig1");
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "sig1");
    let mut run = Running::start(&stage1_stdin_args(&im, CAP), Stdout::Collected);
    run.feed(&base[..MIB as usize]).unwrap();
    // Waiting for more: the first megabyte went into the stream, which cut the file short.
    run.wait_in_syscall(SYS_read, 0);
    let len = std::fs::metadata(volume_file(&tp, &im)).unwrap().len();
    assert!(len < CAP, "mid-upload the volume file holds {len} bytes");
    run.signal(sig);
    // Ctrl-C stops the whole pipeline: the source ends too.
    run.close_stdin();
    let out = run.finish();
    assert_interrupted(&out, sig, &tp, &im, &["--flat -"]);
    assert_eq!(im.volume().capacity().unwrap(), CAP, "length given back");
    assert_eq!(std::fs::metadata(volume_file(&tp, &im)).unwrap().len(), CAP);
    assert_eq!(state_attr(&im, "base-uploaded").as_deref(), Some("no"));

    ok(&im.stage1_stdin(&base, CAP, &[]), "stage 1 again");
    assert_same(&im.read(), &base, "volume after the rerun");
    assert_eq!(state_attr(&im, "base-uploaded").as_deref(), Some("yes"));
    let delta = spread_delta(&f);
    ok(&im.stage2(&[&delta], &["--no-start"]), "stage 2");
    assert_same(&im.read(), &qemu_read(&delta), "volume after stage 2");
}

#[test]
fn sigint_mid_base_upload_restores_the_volume_length_and_a_rerun_converges() {
    signal_mid_base_upload(Signal::SIGINT);
}

#[test]
fn sigterm_mid_base_upload_restores_the_volume_length_and_a_rerun_converges() {
    signal_mid_base_upload(Signal::SIGTERM);
}

#[test]
fn a_base_upload_killed_outright_leaves_a_short_volume_that_the_rerun_repairs() {
    let tp = TestPool::new("kill1");
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "kill1");
    let mut run = Running::start(&stage1_stdin_args(&im, CAP), Stdout::Collected);
    run.feed(&base[..MIB as usize]).unwrap();
    run.wait_in_syscall(SYS_read, 0);
    run.signal(Signal::SIGKILL);
    let out = run.finish();
    assert_eq!(out.status.code(), None, "killed: {}", show(&out));
    let short = im.volume().capacity().unwrap();
    assert!(short < CAP, "nothing could give the length back: {short}");
    assert_eq!(state_attr(&im, "base-uploaded").as_deref(), Some("no"));

    let stdout = ok(&im.stage1_stdin(&base, CAP, &[]), "stage 1 again");
    assert!(
        stdout.contains(&format!("held {short} bytes after an interrupted upload")),
        "{stdout}"
    );
    assert_same(&im.read(), &base, "volume after the rerun");
    assert_eq!(state_attr(&im, "base-uploaded").as_deref(), Some("yes"));
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_the_rerun_repairs_the_volume() {
    let tp = TestPool::new("sigsig");
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "sigsig");
    let mut upload = Running::start(&stage1_stdin_args(&im, CAP), Stdout::Collected);
    upload.feed(&base[..MIB as usize]).unwrap();
    upload.wait_in_syscall(SYS_read, 0);
    upload.signal(Signal::SIGINT);
    upload.wait_signals_handled();
    // Still waiting for its input (the pipe's writer did not stop): a second Ctrl-C.
    upload.signal(Signal::SIGINT);
    let out = upload.finish();
    assert_eq!(out.status.code(), Some(130), "{}", show(&out));
    assert!(
        out.stderr.is_empty(),
        "no clean-up, no line: {}",
        show(&out)
    );
    assert!(im.volume().capacity().unwrap() < CAP, "left short");

    let stdout = ok(&im.stage1_stdin(&base, CAP, &[]), "stage 1 again");
    assert!(stdout.contains("after an interrupted upload"), "{stdout}");
    assert_same(&im.read(), &base, "volume after the rerun");
}

/// Stage 2 of two deltas through `--io io`, stopped by `sig` mid-transfer: the first delta's
/// bytes written (direct) or a stream open (stream), the binary waiting for the second
/// delta's bytes (served by a paused FUSE file). Exit 128 + signal, one line naming the
/// volume and the rerun, the disk still marked unfinished, no stats line; the same command
/// then gives qemu-img's bytes.
fn signal_mid_stage2(sig: Signal, io: &str) {
    let tp = TestPool::new("sig2");
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, "sig2");
    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    let (d1, d2) = halves_chain(&f);
    let want = qemu_read(&d2);
    let served = FuseFile::serve(&f.path("d2-delta.vmdk"));
    let args = stage2_args(&im, &[&d1, &d2], io);
    // With its stdout full, the binary waits at the line announcing the disk: every table
    // read, the disk marked as being applied.
    let mut apply = Running::start(&args, Stdout::Full(FullPipe::new()));
    apply.wait_in_syscall(SYS_write, 1);
    assert_eq!(state_attr(&im, "applying").as_deref(), Some("yes"));
    served.pause();
    apply.drain_stdout();
    apply.wait_reading(&served.path);
    let half = (CAP / 2) as usize;
    if io == "direct" {
        let now = std::fs::read(volume_file(&tp, &im)).unwrap();
        assert_same(
            &now[..half],
            &want[..half],
            "first half, written before the signal",
        );
        assert!(
            now[half..] != want[half..],
            "the second half is not written yet"
        );
    } else {
        let daemon = libvirtd_pid().expect("libvirtd runs");
        assert!(
            holds_open(daemon, &volume_file(&tp, &im)),
            "a stream is open"
        );
    }
    apply.signal(sig);
    served.resume();
    let out = apply.finish();
    assert_interrupted(&out, sig, &tp, &im, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        disk_stats(&stdout).is_none(),
        "nothing reported done: {stdout}"
    );
    assert_eq!(state_attr(&im, "applying").as_deref(), Some("yes"));

    let out = run(&args);
    assert!(disk_stats(&ok(&out, "stage 2 again")).is_some());
    assert_same(&im.read(), &want, "volume after the rerun");
    assert_eq!(state_attr(&im, "applying"), None);
}

#[test]
fn sigint_mid_stage2_direct_writes_leaves_the_disk_unfinished_and_a_rerun_converges() {
    signal_mid_stage2(Signal::SIGINT, "direct");
}

#[test]
fn sigterm_mid_stage2_streams_leaves_the_disk_unfinished_and_a_rerun_converges() {
    signal_mid_stage2(Signal::SIGTERM, "stream");
}

#[test]
fn a_closed_stdout_neither_panics_nor_leaves_a_disk_unfinished() {
    let tp = TestPool::new("epipe");
    let f = Folder::base(SECTORS);
    let delta = spread_delta(&f);
    for io in ["direct", "stream"] {
        let im = Import::new(&tp, &format!("epipe-{io}"));
        let mut a = im.common();
        a.extend(["--flat".into(), f.path("base.vmdk").into()]);
        let out = Running::start(&a, Stdout::Closed).finish();
        assert_eq!(out.status.code(), Some(0), "stage 1: {}", show(&out));
        assert_eq!(state_attr(&im, "base-uploaded").as_deref(), Some("yes"));
        let out = Running::start(&stage2_args(&im, &[&delta], io), Stdout::Closed).finish();
        let what = format!("stage 2 --io {io}");
        assert_eq!(out.status.code(), Some(0), "{what}: {}", show(&out));
        assert!(out.stderr.is_empty(), "{what}: {}", show(&out));
        assert_eq!(state_attr(&im, "applying"), None, "{what}");
        assert_same(&im.read(), &qemu_read(&delta), &what);
    }
}

#[test]
fn the_tool_writes_its_output_through_say_which_survives_a_closed_stdout() {
    // println! panics on a closed stdout (exit 101, mid-import): the tool's code uses say!.
    let mut found = Vec::new();
    let mut dirs = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, l) in text.lines().enumerate() {
                    let code = l.split("//").next().unwrap_or("");
                    let bare = code.replace("eprintln!", "").replace("eprint!", "");
                    if bare.contains("println!") || bare.contains("print!(") {
                        found.push(format!("{}:{}: {l}", p.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "use say!/say_raw!:\n{}", found.join("\n"));
}

/// A base with data in its first 64 KiB only: after stage 1 the volume is a sparse file.
fn sparse_folder() -> Folder {
    let f = Folder::base(SECTORS);
    let mut data = base_bytes(&f);
    data[64 << 10..].fill(0);
    std::fs::write(f.path("base-flat.vmdk"), &data).unwrap();
    f
}

#[test]
fn a_full_pool_in_stage2_names_the_volume_and_reports_nothing_done() {
    let tp = TestPool::new("full2");
    let fs = SmallFs::mount(&tp.path("fs.img"), 24 * MIB, &tp.pool_dir());
    let f = sparse_folder();
    let im = Import::new(&tp, "full2");
    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    fs.fill();
    let delta = spread_delta(&f);
    for io in ["direct", "stream"] {
        let out = im.stage2(&[&delta], &["--no-start", "--io", io]);
        let line = refused(&out, &["no space left on the storage"]);
        let vol = format!("volume '{}/{}'", tp.name, im.volume_name());
        assert!(line.contains(&vol), "--io {io}: {vol} in {line}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(disk_stats(&stdout).is_none(), "--io {io}: {stdout}");
        assert_eq!(state_attr(&im, "applying").as_deref(), Some("yes"));
    }
    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    ok(&im.stage2(&[&delta], &["--no-start"]), "stage 2 with room");
    assert_same(&im.read(), &qemu_read(&delta), "volume after the rerun");
}

#[test]
fn a_pool_that_fills_during_the_base_upload_names_the_volume_and_reports_nothing_done() {
    let tp = TestPool::new("full1");
    let fs = SmallFs::mount(&tp.path("fs.img"), 24 * MIB, &tp.pool_dir());
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "full1");
    let mut run = Running::start(&stage1_stdin_args(&im, CAP), Stdout::Collected);
    run.feed(&base[..MIB as usize]).unwrap();
    run.wait_in_syscall(SYS_read, 0);
    fs.fill();
    // The daemon fails to write, the binary stops reading: the rest may not all go in.
    let _ = run.feed(&base[MIB as usize..]);
    let out = run.finish();
    let line = refused(&out, &["no space left on the storage"]);
    let vol = format!("volume '{}/{}'", tp.name, im.volume_name());
    assert!(line.contains(&vol), "{vol} in {line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("uploaded") && !stdout.contains("stage 1 done"),
        "{stdout}"
    );
    assert_eq!(state_attr(&im, "base-uploaded").as_deref(), Some("no"));

    std::fs::remove_file(fs.dir.join("filler")).unwrap();
    ok(&im.stage1_stdin(&base, CAP, &[]), "stage 1 with room");
    assert_same(&im.read(), &base, "volume after the rerun");
}
