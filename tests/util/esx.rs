//! A stand-in ESXi host for the tests: OpenSSH's sshd on a free loopback port with its own
//! config, host key and an authorized test key, a datastore folder, and the stand-in
//! `vim-cmd` and `dd` of tests/fixtures/esx on the session's PATH, and a "running VM" process
//! (examples/standin_vm.rs) that `power.on` starts. It imitates the behaviour
//! /work/shared/ESX.md documents; it is not ESXi.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::libvirt::TestPool;
use super::vmximport::{wait_for_line, Run};

/// The datastore every stand-in VM lives on.
pub const DATASTORE: &str = "datastore1";

pub struct StandIn {
    pub dir: tempfile::TempDir,
    pub port: u16,
    sshd: Child,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client; scripts/setup-host.sh installs it)");
    assert!(st.success(), "ssh-keygen {}", path.display());
}

/// An example cargo builds with the tests (`target/debug/examples/NAME`).
fn example(name: &str) -> PathBuf {
    let p = Path::new(super::BIN)
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} (cargo builds the examples with the tests)",
        p.display()
    );
    p
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit_once(") ").map(|(_, r)| r.chars().next());
        !matches!(state, None | Some(Some('Z' | 'X')))
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl StandIn {
    /// Start the stand-in's sshd; it stops when the value is dropped.
    pub fn start() -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = root.join("standin");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(root.join("vmfs/volumes").join(DATASTORE)).unwrap();
        std::fs::write(state.join("vms.tsv"), "").unwrap();
        keygen(&state.join("host_key"));
        keygen(&state.join("client_key"));
        std::fs::copy(state.join("client_key.pub"), state.join("authorized_keys")).unwrap();
        // sshd running as root wants its privilege separation folder.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/esx");
        let (mkdelta, vm) = (example("mkdelta"), example("standin_vm"));
        let port = free_port();
        let s = state.display();
        std::fs::write(
            state.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {s}/host_key\nPidFile {s}/sshd.pid\n\
                 AuthorizedKeysFile {s}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n\
                 SetEnv PATH={}:/usr/bin:/bin STANDIN_ROOT={} STANDIN_MKDELTA={} STANDIN_VM={}\n",
                fixtures.display(),
                root.display(),
                mkdelta.display(),
                vm.display()
            ),
        )
        .unwrap();
        let host_pub = std::fs::read_to_string(state.join("host_key.pub")).unwrap();
        std::fs::write(
            state.join("known_hosts"),
            format!("[127.0.0.1]:{port} {host_pub}"),
        )
        .unwrap();
        std::fs::write(
            state.join("ssh_config"),
            format!(
                "Host *\n  IdentityFile {s}/client_key\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {s}/known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
            ),
        )
        .unwrap();
        let log = state.join("sshd.log");
        let sshd = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(state.join("sshd_config"))
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("/usr/sbin/sshd (openssh-server; scripts/setup-host.sh installs it)");
        let standin = StandIn { dir, port, sshd };
        assert!(
            wait_for_line(&log, "Server listening", Duration::from_secs(30)).is_some(),
            "the stand-in's sshd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        standin
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self, name: &str) -> PathBuf {
        self.root().join("standin").join(name)
    }

    /// The datastore folder `dir`, created.
    pub fn vm_dir(&self, dir: &str) -> PathBuf {
        let p = self.root().join("vmfs/volumes").join(DATASTORE).join(dir);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Register a VM: `vmx` is `dir/file.vmx` in the datastore; `format` is the kind of delta
    /// its snapshots add (`cowd`: VMFS5-style, `sesparse`: VMFS6-style).
    pub fn register(
        &self,
        id: u32,
        name: &str,
        vmx: &str,
        powered_on: bool,
        format: &str,
        note: &str,
    ) {
        let line = format!(
            "{id}\t{name}\t[{DATASTORE}] {vmx}\tubuntu64Guest\t{}\t{note}\n",
            if powered_on { "on" } else { "off" }
        );
        let mut reg = std::fs::read_to_string(self.state("vms.tsv")).unwrap();
        reg.push_str(&line);
        std::fs::write(self.state("vms.tsv"), reg).unwrap();
        std::fs::write(self.state(&format!("format-{id}")), format).unwrap();
    }

    /// Record snapshots the VM already has (id, name), as vim-cmd lists them.
    pub fn add_snapshot_record(&self, vm: u32, snap: u32, name: &str) {
        let p = self.state(&format!("snaps-{vm}.tsv"));
        let mut s = std::fs::read_to_string(&p).unwrap_or_default();
        s.push_str(&format!("{snap}\t{name}\ttheirs\n"));
        std::fs::write(p, s).unwrap();
    }

    /// Hold `file` locked, as the running VM holds the disk it writes into.
    pub fn lock(&self, file: &Path) {
        std::fs::write(format!("{}.standin-lock", file.display()), "").unwrap();
    }

    pub fn is_locked(&self, file: &Path) -> bool {
        Path::new(&format!("{}.standin-lock", file.display())).exists()
    }

    /// Make vim-cmd answer `subcommand` (e.g. `power.getstate`) with garbage.
    pub fn hostile(&self, subcommand: &str) {
        std::fs::write(self.state("hostile"), subcommand).unwrap();
    }

    /// Run the stand-in `vim-cmd ARGS...` here, with the environment sshd gives it.
    pub fn vim_cmd(&self, args: &[&str]) -> Run {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/esx");
        let path = format!(
            "{}:{}",
            fixtures.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(fixtures.join("vim-cmd"))
            .args(args)
            .env("PATH", path)
            .env("STANDIN_ROOT", self.root())
            .env("STANDIN_MKDELTA", example("mkdelta"))
            .env("STANDIN_VM", example("standin_vm"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            what: format!("(stand-in) vim-cmd {}", args.join(" ")),
            out,
        }
    }

    /// Power the VM on (`vim-cmd vmsvc/power.on`): its process holds and writes its disks'
    /// tops from now on, until a `power.shutdown` or `power.off`.
    pub fn power_on(&self, id: u32) {
        let run = self.vim_cmd(&["vmsvc/power.on", &id.to_string()]).ok();
        assert_eq!(run.stdout(), "Powering on VM:\n", "{run}");
    }

    /// "on" or "off", as `vim-cmd vmsvc/power.getstate` answers.
    pub fn power_state(&self, id: u32) -> String {
        let run = self
            .vim_cmd(&["vmsvc/power.getstate", &id.to_string()])
            .ok();
        match run.stdout().lines().nth(1) {
            Some("Powered on") => "on".into(),
            Some("Powered off") => "off".into(),
            _ => panic!("{run}"),
        }
    }

    /// Wait (bounded: 120 s) until `power_state(id)` is `want`.
    pub fn wait_power_state(&self, id: u32, want: &str) {
        let until = Instant::now() + Duration::from_secs(120);
        while self.power_state(id) != want {
            assert!(Instant::now() < until, "VM {id} never got {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The guest never acts on `power.shutdown` (it answers, nothing happens).
    pub fn ignore_shutdown(&self, id: u32) {
        std::fs::write(self.state(&format!("ignore-shutdown-{id}")), "").unwrap();
    }

    /// The VM has no VMware Tools: `power.shutdown` fails with ToolsUnavailable.
    pub fn no_tools(&self, id: u32) {
        std::fs::write(self.state(&format!("no-tools-{id}")), "").unwrap();
    }

    /// How long the guest takes to shut down after its last round of writes (default 1 s).
    pub fn shutdown_delay(&self, id: u32, secs: impl Into<f64>) {
        let path = self.state(&format!("shutdown-delay-{id}"));
        std::fs::write(path, format!("{}\n", secs.into())).unwrap();
    }

    /// A sh script run when the VM powers off, after it let go of its files and before
    /// `power.getstate` says `Powered off` (by `power.shutdown` or `power.off`). Its output
    /// goes to `standin/on-powered-off-<id>.log`.
    pub fn on_powered_off(&self, id: u32, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.state(&format!("on-powered-off-{id}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The next `dd if=...SUFFIX` passes `bytes` bytes on, then its ssh connection is cut.
    pub fn drop_read(&self, suffix: &str, bytes: u64) {
        std::fs::write(self.state("drop-read"), format!("{suffix} {bytes}")).unwrap();
    }

    /// The payload the VM wrote at bytes 512..4608 of its first disk in its last round before
    /// a guest shutdown.
    pub fn last_payload(&self, id: u32) -> Vec<u8> {
        std::fs::read(self.state(&format!("last-payload-{id}"))).unwrap()
    }

    /// How many rounds of writes the VM made so far (over all its power-ons).
    pub fn vm_rounds(&self, id: u32) -> usize {
        std::fs::read_to_string(self.state(&format!("vm-{id}.log")))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Wait (bounded: 120 s) until the VM made `more` rounds more than now.
    pub fn wait_rounds(&self, id: u32, more: usize) {
        let want = self.vm_rounds(id) + more;
        let until = Instant::now() + Duration::from_secs(120);
        while self.vm_rounds(id) < want {
            assert!(Instant::now() < until, "VM {id} stopped writing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The path of `dir/file.vmx` in the datastore.
    pub fn vmx_path(&self, vmx: &str) -> PathBuf {
        self.root().join("vmfs/volumes").join(DATASTORE).join(vmx)
    }

    /// `ssh -F CONFIG -p PORT root@127.0.0.1 COMMAND`: one command on the stand-in.
    pub fn ssh(&self, command: &str) -> Run {
        let out = Command::new("ssh")
            .arg("-F")
            .arg(self.ssh_config())
            .args(["-p", &self.port.to_string(), "root@127.0.0.1", command])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            what: format!("ssh ... {command}"),
            out,
        }
    }

    /// Kill every VM process still running (no final round), and wait until they are gone.
    fn kill_vms(&self) {
        let Ok(entries) = std::fs::read_dir(self.root().join("standin")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("vm-") && name.ends_with(".pid")) {
                continue;
            }
            let Some(pid) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let until = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// `ssh://root@127.0.0.1:PORT/.../vmfs/volumes/datastore1/VMX`
    pub fn url(&self, vmx: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/vmfs/volumes/{DATASTORE}/{vmx}",
            self.port,
            self.root().display()
        )
    }

    /// The ssh config file the tool is given (test key, known_hosts).
    pub fn ssh_config(&self) -> PathBuf {
        self.state("ssh_config")
    }

    /// How many ssh connections the stand-in accepted so far.
    pub fn connections(&self) -> usize {
        std::fs::read_to_string(self.state("sshd.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Accepted publickey"))
            .count()
    }

    /// Every vim-cmd command the tool sent so far, one per line (`vmsvc/snapshot.create 4 ...`).
    pub fn commands(&self) -> String {
        std::fs::read_to_string(self.state("commands.log")).unwrap_or_default()
    }

    /// The sshd log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state("sshd.log")).unwrap_or_default()
    }

    /// `virt-vmdkimport -c qemu:///system --domain DOMAIN --pool POOL --vmx URL EXTRA...`, the
    /// .vmx `vmx` (`dir/file.vmx`) read over ssh from the stand-in.
    pub fn import(&self, tp: &TestPool, domain: &str, vmx: &str, extra: &[&str]) -> Run {
        let url = self.url(vmx);
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
        self.tool(&args)
    }

    /// `virt-vmdkimport ARGS...` with the stand-in's ssh config.
    pub fn tool(&self, args: &[&str]) -> Run {
        let out: Output = Command::new(super::BIN)
            .args(args)
            .env("VIRT_VMDKIMPORT_SSH_CONFIG", self.ssh_config())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Run {
            what: format!(
                "VIRT_VMDKIMPORT_SSH_CONFIG=... virt-vmdkimport {}",
                args.join(" ")
            ),
            out,
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.kill_vms();
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

/// A .vmx with no NIC and the given disk file names on scsi0 (pvscsi).
pub fn vmx_text(name: &str, disks: &[&str]) -> String {
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
