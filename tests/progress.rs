//! Progress of a long transfer as the operator sees it: plain periodic lines when the output goes to a file, a bar with bytes and the disk's name on a terminal.

mod util;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use util::import::*;
use util::interrupt::{base_bytes, stage1_stdin_args, FuseFile, Running, Stdout, PATIENCE};
use util::libvirt::TestPool;
use util::plan::{plan_text, state_of, vms, write_plan};
use util::{assert_same, fixtures::SECTOR, Folder, BIN};

const CAP: u64 = 8 * MIB;

/// Wait until the files' text holds every one of `want` (the run is held up until then, so
/// this is no race with the clock); that text.
fn wait_for(files: &[&Path], want: &[&str]) -> String {
    let start = Instant::now();
    loop {
        let text: String = files
            .iter()
            .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned())
            .collect();
        if want.iter().all(|w| text.contains(w)) {
            return text;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "never saw {want:?} in the output:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A thread that writes the first half of `base` to `to()`, waits for `go`, writes the rest
/// and closes it: a base upload held at 50% until the test lets it go on.
fn feed_in_halves<W: Write>(
    to: impl FnOnce() -> W + Send + 'static,
    base: Vec<u8>,
    go: mpsc::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut w = to();
        let half = base.len() / 2;
        w.write_all(&base[..half]).unwrap();
        w.flush().unwrap();
        if go.recv().is_ok() {
            w.write_all(&base[half..]).unwrap();
        }
    })
}

/// The binary run with `args` under `script`, which gives it a terminal for its output (the
/// typescript goes to `typescript`); standard input from `stdin` when given.
fn under_script(args: &[String], stdin: Option<&Path>, typescript: &Path) -> std::process::Child {
    let mut cmd = format!("'{BIN}'");
    for a in args {
        cmd += &format!(" '{a}'");
    }
    if let Some(from) = stdin {
        cmd += &format!(" < '{}'", from.display());
    }
    Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(typescript).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn a_base_upload_into_a_log_prints_plain_progress_lines_with_bytes_share_and_rate() {
    let tp = TestPool::new("prglines");
    let f = Folder::base(CAP / SECTOR);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "prglines");
    let (out, err) = (f.path("stdout"), f.path("stderr"));
    let mut child = Command::new(BIN)
        .args(stage1_stdin_args(&im, CAP))
        .env("VMDKIMPORT_PROGRESS_EVERY", "1")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let (go, wait) = mpsc::channel();
    let feeder = feed_in_halves(move || stdin, base.clone(), wait);
    let text = wait_for(
        &[&out, &err],
        &["disk sda: base upload: 4.0 MiB of 8.0 MiB (50%), "],
    );
    let line = text
        .lines()
        .find(|l| l.contains("disk sda: base upload: 4.0 MiB"))
        .unwrap();
    assert!(
        line.contains("/s, about ") && line.ends_with(" left"),
        "rate and time left: {line}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no terminal escapes in a log:\n{text}"
    );
    go.send(()).unwrap();
    feeder.join().unwrap();
    assert!(
        child.wait().unwrap().success(),
        "stage 1: {}",
        wait_for(&[&out, &err], &[])
    );
    assert_same(&im.read(), &base, "volume after stage 1");
}

#[test]
fn quiet_prints_no_progress_lines() {
    let tp = TestPool::new("prgquiet");
    let f = Folder::base(CAP / SECTOR);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "prgquiet");
    // One test per process (nextest): the variable reaches only this run.
    std::env::set_var("VMDKIMPORT_PROGRESS_EVERY", "1");
    let mut args = stage1_stdin_args(&im, CAP);
    args.push("-q".into());
    let mut run = Running::start(&args, Stdout::Collected);
    run.feed(&base[..base.len() / 2]).unwrap();
    run.wait_in_syscall(nix::libc::SYS_read, 0);
    // Held at 50% for three periods: a run that is not quiet prints its line by then.
    std::thread::sleep(Duration::from_secs(3));
    run.feed(&base[base.len() / 2..]).unwrap();
    let out = run.finish();
    assert!(out.status.success(), "{}", show(&out));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("base upload"), "no progress under -q:\n{all}");
    assert_same(&im.read(), &base, "volume after stage 1");
}

#[test]
fn a_base_upload_on_a_terminal_draws_a_bar_naming_the_disk_and_its_bytes() {
    let tp = TestPool::new("prgbar");
    let f = Folder::base(CAP / SECTOR);
    let base = base_bytes(&f);
    let im = Import::new(&tp, "prgbar");
    let fifo = f.path("base.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let typescript = f.path("typescript");
    // The base comes through a FIFO (a terminal would not pass its bytes unchanged).
    let args: Vec<String> = stage1_stdin_args(&im, CAP)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut script = under_script(&args, Some(&fifo), &typescript);
    let (go, wait) = mpsc::channel();
    let at = fifo.clone();
    let feeder = feed_in_halves(
        move || std::fs::File::create(at).unwrap(),
        base.clone(),
        wait,
    );
    let text = wait_for(
        &[&typescript],
        &["disk sda: base upload [", "4.00 MiB of 8.00 MiB (50%)"],
    );
    assert!(text.contains("MiB/s"), "throughput on the bar:\n{text}");
    go.send(()).unwrap();
    feeder.join().unwrap();
    let status = script.wait().unwrap();
    let text = wait_for(&[&typescript], &["uploaded standard input"]);
    assert!(status.success(), "stage 1 under script:\n{text}");
    assert_same(&im.read(), &base, "volume after stage 1");
}

#[test]
fn a_plan_on_a_terminal_shows_a_line_per_running_vm_with_its_step_and_time() {
    let tp = TestPool::new("prgplan");
    let pools = [&tp];
    let vms = vms(&pools, 1, 1, None);
    // The VM's base is read through a paused FUSE export: its child run waits until the
    // test has seen the line.
    let served = FuseFile::serve(&vms[0].folder.path("base-flat.vmdk"));
    served.pause();
    let plan = write_plan(&tp.dir, &plan_text("jobs = 1\n", &pools, &vms));
    let typescript = tp.dir.join("typescript");
    let args = ["plan".into(), "stage1".into(), plan.display().to_string()];
    let mut script = under_script(&args, None, &typescript);
    let name = &vms[0].name;
    wait_for(&[&typescript], &[&format!("[{name}] stage1 running for ")]);
    served.resume();
    let status = script.wait().unwrap();
    let text = wait_for(&[&typescript], &[]);
    assert!(status.success(), "plan stage1 under script:\n{text}");
    let st = state_of(&tp, &vms[0]).expect("an import state");
    assert!(st.disks.iter().all(|d| d.base_uploaded), "{text}");
}
