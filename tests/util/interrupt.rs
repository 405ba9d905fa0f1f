//! Interrupting the running binary for real: signals at a point it is known to wait at (a pipe the test holds), a stdout nobody reads, a small loop-mounted filesystem, a libvirtd killed and restarted.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::fixtures::Kind;
use super::import::{cowd_child, show, state_elem, Import};
use super::libvirt::{LoopDev, TestPool};
use super::{Folder, BASE_CID, BIN};

/// How long a wait for the binary (or the daemon) to reach a state may take before the test
/// fails: far longer than any of these steps takes, only there so a broken run ends.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The binary running with a standard input the test writes to, and its output collected
/// by threads (so it never blocks on them unless the test wants it to).
pub struct Running {
    child: Child,
    pub stdin: Option<std::process::ChildStdin>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// Lets the reader of a [`Stdout::Full`] pipe start.
    drain: Option<std::sync::mpsc::Sender<()>>,
}

/// Where the binary's standard output goes.
pub enum Stdout {
    /// Read by the test as it comes.
    Collected,
    /// A pipe the test filled before the start: the binary's first line blocks until
    /// [`Running::drain_stdout`].
    Full(FullPipe),
    /// A pipe whose reading end is closed (`| head` after head exited).
    Closed,
}

impl Running {
    /// Start the binary with `args`; standard input a pipe (see [`Running::stdin`]).
    pub fn start<S: AsRef<OsStr>>(args: &[S], stdout: Stdout) -> Running {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::piped()).stderr(Stdio::piped());
        let mut full = None;
        match stdout {
            Stdout::Collected => {
                cmd.stdout(Stdio::piped());
            }
            Stdout::Full(p) => {
                cmd.stdout(Stdio::from(p.write.try_clone().unwrap()));
                full = Some(p);
            }
            Stdout::Closed => {
                let (r, w) = nix::unistd::pipe().unwrap();
                drop(r);
                cmd.stdout(Stdio::from(w));
            }
        }
        let mut child = cmd.spawn().expect("binary runs");
        // Only the child holds the writing end now: its exit ends the reader's file.
        let (go, drain) = std::sync::mpsc::channel();
        let stdout = match (child.stdout.take(), full) {
            (Some(mut o), _) => Some(std::thread::spawn(move || collect(&mut o))),
            (None, Some(p)) => Some(p.reader(drain)),
            (None, None) => None,
        };
        let mut e = child.stderr.take().unwrap();
        Running {
            stdin: child.stdin.take(),
            stdout,
            stderr: Some(std::thread::spawn(move || collect(&mut e))),
            drain: Some(go),
            child,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Send `sig` to the binary's pid.
    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signalling the binary");
    }

    /// Write `bytes` to its standard input (returns once the pipe took them all, or with
    /// the error of a binary that stopped reading).
    pub fn feed(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stdin
            .as_mut()
            .expect("standard input still open")
            .write_all(bytes)
    }

    /// Start reading a [`Stdout::Full`] pipe: the binary's blocked write goes through.
    pub fn drain_stdout(&mut self) {
        if let Some(go) = self.drain.take() {
            let _ = go.send(());
        }
    }

    /// Close its standard input (the end of the image).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Wait until the binary's main thread sits in `read(fd)` or `write(fd)` (`syscall` is
    /// `SYS_read` or `SYS_write`): it waits for the test there.
    pub fn wait_in_syscall(&self, syscall: i64, fd: i32) {
        let file = format!("/proc/{}/syscall", self.child.id());
        let want = format!("{syscall} {fd:#x} ");
        let start = Instant::now();
        loop {
            let now = std::fs::read_to_string(&file).unwrap_or_default();
            if now.starts_with(&want) {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "the binary never waited in syscall {syscall} on fd {fd} (last: {now:?})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until no signal is pending for the binary: the last one sent was handled.
    pub fn wait_signals_handled(&self) {
        let file = format!("/proc/{}/status", self.child.id());
        let start = Instant::now();
        loop {
            let status = std::fs::read_to_string(&file).unwrap_or_default();
            let pending = status
                .lines()
                .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
                .any(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .is_some_and(|m| !m.trim_start_matches('0').is_empty())
                });
            if !pending {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "a signal stays pending: {status}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until one of the binary's threads sits in `pread64` on `file` (one served by a
    /// paused [`FuseFile`]: it waits there until the test resumes it).
    pub fn wait_reading(&self, file: &Path) {
        let pid = self.child.id();
        let start = Instant::now();
        while !threads_reading(pid, file) {
            assert!(
                start.elapsed() < PATIENCE,
                "the binary never waited reading {}",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the binary has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait for the exit; status and both outputs.
    pub fn finish(mut self) -> Output {
        self.stdin = None;
        self.drain_stdout();
        let status = self.child.wait().expect("waiting for the binary");
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that failed half-way leaves no binary behind.
        self.drain_stdout();
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a thread of process `pid` is in `pread64` on a descriptor of `file`.
fn threads_reading(pid: u32, file: &Path) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let now = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
        let mut f = now.split_whitespace();
        let (Some(nr), Some(fd)) = (f.next(), f.next()) else {
            return false;
        };
        let fd = i64::from_str_radix(fd.trim_start_matches("0x"), 16).unwrap_or(-1);
        nr == nix::libc::SYS_pread64.to_string()
            && std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|p| p == file)
    })
}

/// Whether process `pid` holds `file` open (the daemon, while a stream on a volume is open).
pub fn holds_open(pid: Pid, file: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == file))
}

/// A file whose reads the test can hold up: the bytes of another file, served at `path`
/// through a FUSE export of qemu-storage-daemon. While [`FuseFile::pause`]d (the daemon
/// stopped), a read waits; on drop the daemon ends and unmounts.
pub struct FuseFile {
    pid: Pid,
    pub path: PathBuf,
}

impl FuseFile {
    /// Move `path` aside and serve its bytes at `path` from now on.
    pub fn serve(path: &Path) -> FuseFile {
        let data = path.with_extension("served");
        std::fs::rename(path, &data).unwrap();
        File::create(path).unwrap();
        let pidfile = path.with_extension("pid");
        // --daemonize returns once the export is mounted.
        run_ok(
            Command::new("qemu-storage-daemon")
                .arg("--daemonize")
                .arg("--pidfile")
                .arg(&pidfile)
                .arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=served,filename={},read-only=on",
                    data.display()
                ))
                .arg("--export")
                .arg(format!(
                    "type=fuse,id=served,node-name=served,mountpoint={},writable=off",
                    path.display()
                )),
        );
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        FuseFile {
            pid: Pid::from_raw(pid.trim().parse().unwrap()),
            path: path.to_owned(),
        }
    }

    /// Stop serving: reads wait from now on.
    pub fn pause(&self) {
        kill(self.pid, Signal::SIGSTOP).unwrap();
    }

    /// Serve again: waiting reads complete.
    pub fn resume(&self) {
        kill(self.pid, Signal::SIGCONT).unwrap();
    }
}

impl Drop for FuseFile {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGCONT);
        let _ = kill(self.pid, Signal::SIGTERM);
        let start = Instant::now();
        while kill(self.pid, None).is_ok() && start.elapsed() < PATIENCE {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Normally unmounted by the daemon as it ends; never leave a mount behind.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .stderr(Stdio::null())
            .status();
    }
}

fn collect(r: &mut dyn Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// A pipe already full to its capacity: a writer blocks at its first byte until the test
/// starts reading.
pub struct FullPipe {
    read: File,
    write: OwnedFd,
    filler: usize,
}

impl FullPipe {
    pub fn new() -> FullPipe {
        let (r, w) = nix::unistd::pipe().unwrap();
        let size = nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap() as usize;
        let mut wf = File::from(w);
        // Blocking writes into an empty pipe of `size` bytes: they all fit at once.
        wf.write_all(&vec![b'#'; size]).unwrap();
        FullPipe {
            read: File::from(r),
            write: OwnedFd::from(wf),
            filler: size,
        }
    }

    /// A thread that reads everything once `go` says so (or is dropped).
    fn reader(self, go: std::sync::mpsc::Receiver<()>) -> JoinHandle<Vec<u8>> {
        let FullPipe {
            mut read,
            write,
            filler,
        } = self;
        drop(write);
        std::thread::spawn(move || {
            let _ = go.recv();
            let mut v = collect(&mut read);
            v.drain(..filler.min(v.len()));
            v
        })
    }
}

/// A small ext4 filesystem on a loop device, mounted on a directory (a test pool's): a
/// pool that runs out of space. Unmounted (lazily when busy) and detached on drop, before
/// anything removes the directory.
pub struct SmallFs {
    pub dir: PathBuf,
    _dev: LoopDev,
}

impl SmallFs {
    /// `bytes` of filesystem in the file `image` (outside `dir`), mounted on `dir`.
    pub fn mount(image: &Path, bytes: u64, dir: &Path) -> SmallFs {
        File::create(image).unwrap().set_len(bytes).unwrap();
        let dev = LoopDev::attach(image).expect("a loop device (losetup)");
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&dev.dev),
        );
        run_ok(
            Command::new("mount")
                .args(["-o", "noatime"])
                .arg(&dev.dev)
                .arg(dir),
        );
        SmallFs {
            dir: dir.to_owned(),
            _dev: dev,
        }
    }

    /// Fill the filesystem: a file that grows until the disk is full.
    pub fn fill(&self) {
        let mut f = File::create(self.dir.join("filler")).unwrap();
        let block = vec![0x5au8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        // Whatever the page cache held back must hit the disk (and fail) now.
        let _ = f.sync_all();
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(out.status.success(), "{cmd:?}:\n{}", show(&out));
}

/// The pid of the running libvirtd, from its pid file (the daemon's short-lived children
/// carry its name too).
pub fn libvirtd_pid() -> Option<Pid> {
    let text = std::fs::read_to_string("/run/libvirtd.pid").ok()?;
    text.trim().parse().ok().map(Pid::from_raw)
}

/// Whether `virsh version` answers on the local daemon.
fn daemon_answers() -> bool {
    Command::new("virsh")
        .args(["-c", super::libvirt::LOCAL_URI, "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Holds libvirtd down between [`DaemonDown::kill`] and its drop, which starts it again the
/// way scripts/setup-host.sh does (`libvirtd -d --listen`) and waits until `virsh version`
/// answers: other tests on this machine use the same daemon, so it is never left down,
/// even when the test fails.
pub struct DaemonDown {
    up: bool,
}

impl DaemonDown {
    /// SIGKILL libvirtd and wait until it is gone.
    pub fn kill() -> DaemonDown {
        let pid = libvirtd_pid().expect("libvirtd runs");
        kill(pid, Signal::SIGKILL).expect("killing libvirtd");
        let start = Instant::now();
        while kill(pid, None).is_ok() {
            assert!(start.elapsed() < PATIENCE, "libvirtd {pid} did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        DaemonDown { up: false }
    }

    /// Start libvirtd again and wait for it to answer.
    pub fn restart(&mut self) {
        if self.up {
            return;
        }
        self.up = true;
        run_ok(Command::new("libvirtd").args(["-d", "--listen"]));
        let start = Instant::now();
        while !daemon_answers() {
            assert!(start.elapsed() < PATIENCE, "libvirtd did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DaemonDown {
    fn drop(&mut self) {
        if !self.up {
            self.up = true;
            let _ = Command::new("libvirtd").args(["-d", "--listen"]).status();
            let start = Instant::now();
            while !daemon_answers() && start.elapsed() < PATIENCE {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---- the imports these tests interrupt -------------------------------------------------

/// Arguments of a stage 1 that reads the base from standard input.
pub fn stage1_stdin_args(im: &Import, capacity: u64) -> Vec<OsString> {
    let mut a = im.common();
    for s in ["--flat", "-", "--capacity", &capacity.to_string()] {
        a.push(s.into());
    }
    a
}

/// Arguments of a stage 2 of `deltas` through `--io io`, domain left shut off.
pub fn stage2_args(im: &Import, deltas: &[&Path], io: &str) -> Vec<OsString> {
    let mut a = im.common();
    a.extend(deltas.iter().map(OsString::from));
    for s in ["--no-start", "--io", io] {
        a.push(s.into());
    }
    a
}

pub fn base_bytes(f: &Folder) -> Vec<u8> {
    std::fs::read(f.path("base-flat.vmdk")).unwrap()
}

/// A COWD delta over the folder's base with data grains spread over the whole disk.
pub fn spread_delta(f: &Folder) -> PathBuf {
    let grains: Vec<(u64, Kind)> = (0..f.capacity_sectors / 64)
        .map(|g| (g * 8, Kind::Data))
        .collect();
    cowd_child(f, "d1", 0xd1, (BASE_CID, "base.vmdk"), 8, &grains)
}

/// One attribute of the import state (`base-uploaded`, `applying`), `None` when absent.
pub fn state_attr(im: &Import, name: &str) -> Option<String> {
    let meta = im.state();
    let st = state_elem(&meta).unwrap_or_else(|| panic!("no import state in {meta}"));
    st.attr(name).map(str::to_owned)
}

/// The file behind the import's volume (a dir pool's volume is a file).
pub fn volume_file(tp: &TestPool, im: &Import) -> PathBuf {
    tp.pool_dir().join(im.volume_name())
}

/// The one stderr line of a failed run, checked to start with the program's name.
pub fn one_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{}", show(out));
    assert!(lines[0].starts_with("virt-vmdkimport: "), "{}", show(out));
    lines[0].to_owned()
}

/// Two deltas over the folder's base: `d1` changes grains in the first half of the disk,
/// `d2` (its child) grains in the second half, so stage 2 writes d1's bytes before it reads
/// any of d2's. Returns their descriptors; d2's extent is `d2-delta.vmdk`.
pub fn halves_chain(f: &Folder) -> (PathBuf, PathBuf) {
    let grains = f.capacity_sectors / 8;
    let every_4th = |from: u64, to: u64| -> Vec<(u64, Kind)> {
        (from..to).step_by(4).map(|g| (g, Kind::Data)).collect()
    };
    let d1 = cowd_child(
        f,
        "d1",
        0xd1,
        (BASE_CID, "base.vmdk"),
        8,
        &every_4th(0, grains / 2),
    );
    let d2 = cowd_child(
        f,
        "d2",
        0xd2,
        (0xd1, "d1.vmdk"),
        8,
        &every_4th(grains / 2, grains),
    );
    (d1, d2)
}

/// Holds libvirtd stopped (SIGSTOP) until dropped: every call and stream on it waits, as on a
/// daemon or link that hangs. Dropped, even by a failing test, it runs again (SIGCONT).
pub struct DaemonStopped {
    pid: Pid,
}

impl DaemonStopped {
    pub fn stop() -> DaemonStopped {
        let pid = libvirtd_pid().expect("libvirtd runs");
        kill(pid, Signal::SIGSTOP).expect("stopping libvirtd");
        DaemonStopped { pid }
    }
}

impl Drop for DaemonStopped {
    fn drop(&mut self) {
        let _ = kill(self.pid, Signal::SIGCONT);
        let start = Instant::now();
        while !daemon_answers() && start.elapsed() < PATIENCE {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
