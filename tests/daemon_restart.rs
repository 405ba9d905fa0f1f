//! libvirtd killed by its pid in the middle of an import and started again: one line saying the connection was lost, then a rerun of the same command that gives qemu-img's bytes. These kill the daemon every other test uses: they are ignored in the main run, and scripts/test.sh runs them alone afterwards.

mod util;

use std::time::{Duration, Instant};

use nix::libc::{SYS_read, SYS_write};
use nix::sys::signal::Signal;

use util::fixtures::SECTOR;
use util::import::*;
use util::interrupt::*;
use util::libvirt::{TestPool, LOCAL_URI};
use util::{assert_same, qemu_read, Folder};

const CAP: u64 = 8 * MIB;
const SECTORS: u64 = CAP / SECTOR;

/// The one line of a run whose daemon went away, checked to say so and to name `volume`.
fn assert_lost(out: &std::process::Output, volume: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", show(out));
    let line = one_line(out);
    eprintln!("{line}");
    for want in [
        format!("lost the connection to libvirtd at {LOCAL_URI}"),
        volume.to_owned(),
        "rerun the same command".into(),
    ] {
        assert!(line.contains(&want), "{want:?} in {line}");
    }
    assert!(!line.contains("Broken pipe"), "{line}");
}

#[test]
#[ignore = "kills libvirtd: run alone (scripts/test.sh does)"]
fn libvirtd_killed_mid_base_upload_is_one_line_and_a_rerun_repairs_the_volume_and_converges() {
    let tp = TestPool::new("dkill1");
    let f = Folder::base(SECTORS);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "dkill1");
    let (domain, volume) = (
        im.domain.clone(),
        format!("{}/{}", tp.name, im.volume_name()),
    );
    let mut upload = Running::start(&stage1_stdin_args(&im, CAP), Stdout::Collected);
    upload.feed(&base[..MIB as usize]).unwrap();
    // Waiting for more, with the stream open and a megabyte sent.
    upload.wait_in_syscall(SYS_read, 0);
    DaemonDown::kill().restart();
    upload.close_stdin();
    assert_lost(&upload.finish(), &volume);

    drop(im);
    let tp = tp.reconnected();
    let im = Import::existing(&tp, &domain);
    assert_eq!(state_attr(&im, "base-uploaded").as_deref(), Some("no"));
    assert!(
        im.volume().capacity().unwrap() < CAP,
        "the volume was left short"
    );
    let stdout = ok(&im.stage1_stdin(&base, CAP, &[]), "stage 1 again");
    assert!(stdout.contains("after an interrupted upload"), "{stdout}");
    assert_same(&im.read(), &base, "volume after the rerun");
    let delta = spread_delta(&f);
    ok(&im.stage2(&[&delta], &["--no-start"]), "stage 2");
    assert_same(&im.read(), &qemu_read(&delta), "volume after stage 2");
}

#[test]
#[ignore = "kills libvirtd: run alone (scripts/test.sh does)"]
fn libvirtd_killed_mid_stream_in_stage2_is_one_line_and_a_rerun_converges() {
    let tp = TestPool::new("dkill2");
    let f = Folder::base(SECTORS);
    let im = Import::new(&tp, "dkill2");
    let (domain, volume) = (
        im.domain.clone(),
        format!("{}/{}", tp.name, im.volume_name()),
    );
    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    let (d1, d2) = halves_chain(&f);
    let want = qemu_read(&d2);
    let served = FuseFile::serve(&f.path("d2-delta.vmdk"));
    let args = stage2_args(&im, &[&d1, &d2], "stream");
    // Stdout full: the binary waits at the line announcing the disk (marked as being
    // applied); then, a stream open, for the second delta's bytes.
    let mut apply = Running::start(&args, Stdout::Full(FullPipe::new()));
    apply.wait_in_syscall(SYS_write, 1);
    served.pause();
    apply.drain_stdout();
    apply.wait_reading(&served.path);
    let daemon = libvirtd_pid().expect("libvirtd runs");
    assert!(
        holds_open(daemon, &volume_file(&tp, &im)),
        "a stream is open"
    );
    DaemonDown::kill().restart();
    served.resume();
    let out = apply.finish();
    assert_lost(&out, &volume);
    assert!(disk_stats(&String::from_utf8_lossy(&out.stdout)).is_none());

    drop(im);
    let tp = tp.reconnected();
    let im = Import::existing(&tp, &domain);
    assert_eq!(state_attr(&im, "applying").as_deref(), Some("yes"));
    ok(&run(&args), "stage 2 again");
    assert_same(&im.read(), &want, "volume after the rerun");
    assert_eq!(state_attr(&im, "applying"), None);
}

#[test]
#[ignore = "kills libvirtd: run alone (scripts/test.sh does)"]
fn libvirtd_killed_during_an_overlay_commit_rerun_finds_the_job_and_finishes() {
    use util::libvirt::REMOTE_URI;
    use util::overlay::*;
    let (f, _) = boot_folder();
    let (delta, want) = slow_commit_delta(&f);
    let tp = TestPool::on(REMOTE_URI, "dkill-ovl");
    let (im, _log) = stage1(&tp, &f, "dkill-ovl");
    let domain = im.domain.clone();
    let mut args = im.common();
    args.push(delta.clone().into());
    args.extend(SLOW.iter().map(Into::into));
    let run = Running::start(&args, Stdout::Collected);
    wait_for_step(&im, "committing");
    DaemonDown::kill().restart();
    let out = run.finish();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = one_line(&out);
    assert!(line.contains("lost the connection to libvirtd"), "{line}");

    drop(im);
    let tp = tp.reconnected();
    let im = Import::existing(&tp, &domain);
    assert!(
        im.is_active(),
        "the domain kept running through the daemon's restart"
    );
    let text = ok(&run_args(&args), "the rerun");
    eprintln!("{text}");
    assert!(text.contains("still on a qcow2 overlay"), "{text}");
    assert_committed(&im, &want);
}

fn run_args(args: &[std::ffi::OsString]) -> std::process::Output {
    util::import::run(args)
}

/// Stage 2 through streams held in an upload to a daemon that stopped answering (SIGSTOP, so
/// the connection stays open and nothing fails by itself): the run, its arguments with
/// `extra`, the args and the bytes a rerun must give. The daemon runs again when the
/// returned guard drops.
struct Stuck<'a> {
    im: Import<'a>,
    apply: Running,
    stopped: DaemonStopped,
    _served: FuseFile,
    _f: Folder,
    args: Vec<std::ffi::OsString>,
    want: Vec<u8>,
}

fn stage2_stuck_on_a_stopped_daemon<'a>(tp: &'a TestPool, tag: &str, extra: &[&str]) -> Stuck<'a> {
    let f = Folder::base(SECTORS);
    let im = Import::new(tp, tag);
    ok(&im.stage1(&f.path("base.vmdk"), &[]), "stage 1");
    let (d1, d2) = halves_chain(&f);
    let want = qemu_read(&d2);
    let served = FuseFile::serve(&f.path("d2-delta.vmdk"));
    let mut args = stage2_args(&im, &[&d1, &d2], "stream");
    args.extend(extra.iter().map(Into::into));
    let mut apply = Running::start(&args, Stdout::Full(FullPipe::new()));
    apply.wait_in_syscall(SYS_write, 1);
    served.pause();
    apply.drain_stdout();
    // A stream is open and waits for the second delta's bytes: stop the daemon, then let
    // the bytes go to it.
    apply.wait_reading(&served.path);
    let stopped = DaemonStopped::stop();
    served.resume();
    std::thread::sleep(Duration::from_secs(2));
    assert!(apply.is_running(), "blocked on the stopped daemon");
    Stuck {
        im,
        apply,
        stopped,
        _served: served,
        _f: f,
        args,
        want,
    }
}

#[test]
#[ignore = "stops libvirtd: run alone (scripts/test.sh does)"]
fn the_first_sigterm_ends_a_stage2_blocked_in_a_stalled_stream_within_seconds_and_a_rerun_converges(
) {
    let tp = TestPool::new("stall1");
    // Bound whole: the served file and the folder live to the end of the test.
    let stuck = stage2_stuck_on_a_stopped_daemon(&tp, "stall1", &[]);
    let (im, apply, stopped) = (&stuck.im, stuck.apply, stuck.stopped);
    let (args, want) = (stuck.args.clone(), stuck.want.clone());
    let sent = Instant::now();
    apply.signal(Signal::SIGTERM);
    let out = apply.finish();
    let took = sent.elapsed();
    eprintln!("the first SIGTERM ended the blocked run in {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: {}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{}", show(&out));
    let line = one_line(&out);
    for want in ["interrupted by SIGTERM", "rerun the same command"] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    drop(stopped);
    assert_eq!(state_attr(im, "applying").as_deref(), Some("yes"));
    ok(&run(&args), "stage 2 again");
    assert_same(&im.read(), &want, "volume after the rerun");
    assert_eq!(state_attr(im, "applying"), None);
}

#[test]
#[ignore = "stops libvirtd: run alone (scripts/test.sh does)"]
fn a_stage2_whose_stream_stalls_ends_after_the_stall_timeout_naming_the_disk_and_a_rerun_converges()
{
    let tp = TestPool::new("stall2");
    // Bound whole: the served file and the folder live to the end of the test.
    let stuck = stage2_stuck_on_a_stopped_daemon(&tp, "stall2", &["--stall-timeout", "3s"]);
    let (im, apply, stopped) = (&stuck.im, stuck.apply, stuck.stopped);
    let (args, want) = (stuck.args.clone(), stuck.want.clone());
    let out = apply.finish();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = one_line(&out);
    eprintln!("{line}");
    for want in [
        ": delta apply: no progress for",
        "disk ",
        "--stall-timeout",
        "rerun the same command",
    ] {
        assert!(line.contains(want), "{want:?} in {line}");
    }
    assert!(!line.contains("lost the connection"), "{line}");
    drop(stopped);
    assert_eq!(state_attr(im, "applying").as_deref(), Some("yes"));
    ok(&run(&args), "stage 2 again");
    assert_same(&im.read(), &want, "volume after the rerun");
    assert_eq!(state_attr(im, "applying"), None);
}

#[test]
#[ignore = "kills libvirtd: run alone (scripts/test.sh does)"]
fn libvirtd_killed_during_a_test_boot_ends_it_and_cleanup_leaves_nothing() {
    use util::bootimg::{saying, Then};
    use util::testboot::*;
    let tp = TestPool::new("dkill-tb");
    let im = imported(&tp, "dkill-tb", &saying("", Then::Halt));
    let (domain, before) = (im.domain.clone(), xml_without_state(&im));
    let child = running_test_boot(&im);
    DaemonDown::kill().restart();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = one_line(&out);
    eprintln!("{line}");
    assert!(line.contains("lost the connection to libvirtd"), "{line}");

    drop(im);
    let tp = tp.reconnected();
    let im = Import::existing(&tp, &domain);
    cleanup_after_a_cut(&tp, &im, &before);
}
