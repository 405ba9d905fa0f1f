//! `--io overlay` interrupted during the block commit, for real: the tool killed, the domain
//! destroyed. A rerun of the same command finishes the commit and converges.

use nix::sys::signal::Signal;

use crate::util::bootimg;
use crate::util::import::*;
use crate::util::interrupt::{one_line, Running, Stdout};
use crate::util::libvirt::{TestPool, REMOTE_URI};
use crate::util::overlay::*;

#[test]
fn tool_killed_during_the_commit_rerun_takes_the_job_over_and_finishes() {
    let (f, _) = boot_folder();
    let (delta, want) = slow_commit_delta(&f);
    let tp = TestPool::on(REMOTE_URI, "ovl-kill");
    let (im, log) = stage1(&tp, &f, "ovl-kill");
    let mut args = im.common();
    args.push(delta.clone().into());
    args.extend(SLOW.iter().map(Into::into));
    let run = Running::start(&args, Stdout::Collected);
    wait_for_step(&im, "committing");
    run.signal(Signal::SIGKILL);
    let out = run.finish();
    assert!(!out.status.success(), "{}", show(&out));
    assert!(im.is_active(), "the domain keeps running on the overlay");
    // The guest booted from the overlay: it reads the delta's sectors.
    let patched = &want[512..512 + bootimg::PAYLOAD_LEN];
    assert_eq!(boot_line(&log), bootimg::expected_line(patched));

    let text = ok(&im.stage2(&[&delta], SLOW), "the rerun");
    eprintln!("{text}");
    assert!(text.contains("still on a qcow2 overlay"), "{text}");
    assert!(im.is_active(), "the domain still runs");
    assert_committed(&im, &want);
}

#[test]
fn domain_destroyed_during_the_commit_rerun_commits_offline_and_leaves_it_shut_off() {
    let (f, _) = boot_folder();
    let (delta, want) = slow_commit_delta(&f);
    let tp = TestPool::on(REMOTE_URI, "ovl-destroy");
    let (im, _log) = stage1(&tp, &f, "ovl-destroy");
    let mut args = im.common();
    args.push(delta.clone().into());
    args.extend(SLOW.iter().map(Into::into));
    let run = Running::start(&args, Stdout::Collected);
    wait_for_step(&im, "committing");
    virsh(&im.uri, &["destroy", &im.domain]);
    let out = run.finish();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let line = one_line(&out);
    assert!(
        line.contains("stopped before the commit") && line.contains("rerun the same command"),
        "{line}"
    );
    assert!(im.xml().contains("qcow2"), "the disk stays on its overlay");

    let text = ok(&im.stage2(&[&delta], &["--io", "overlay"]), "the rerun");
    eprintln!("{text}");
    assert!(text.contains("starting it paused"), "{text}");
    assert!(!im.is_active(), "left shut off, as the operator had it");
    assert_committed(&im, &want);
}
