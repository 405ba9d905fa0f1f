//! A stand-in ESXi host for the tests: OpenSSH's sshd on a free loopback port, configured as
//! ESXi 8.0.2's (ESX-REAL.md section 8: its ciphers, key exchanges, MACs, ECDSA and RSA host
//! keys, ed25519 user keys refused as FIPS mode does), every command run by `busybox sh` with
//! only applets ESXi is known to have on its PATH, a datastore folder under its UUID with the
//! datastore's name a symlink to it, the stand-in `vim-cmd`, `dd` and `head` of
//! tests/fixtures/esx, and a "running VM" process (examples/standin_vm.rs) that `power.on`
//! starts. It imitates what /work/shared/ESX.md and ESX-REAL.md document; it is not ESXi.
//! Faults real hosts show are switched on by the methods below (and [`Setup`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::bootimg;
use super::fixtures::{pattern, patterned, Kind, SECTOR};
use super::libvirt::TestPool;
use super::vmximport::{cowd_child, flat_base, volume_bytes, wait_for_line, Run};
use super::{assert_same, qemu_read};

const MIB: usize = 1 << 20;

/// The datastore every stand-in VM lives on, unless [`Setup::datastore`] names another.
pub const DATASTORE: &str = "datastore1";
/// The datastore's VMFS UUID: its folder under /vmfs/volumes, which the name links to (ESXi
/// 6.x/7.x `ls -l /vmfs/volumes`: `datastore1 -> 5ae37d98-00f6a405-5382-6c416a1ecb66`, a
/// relative link; ESX-REAL.md section 10).
pub const UUID: &str = "5ae37d98-00f6a405-5382-6c416a1ecb66";

/// The ESXi shell's applets the stand-in puts on the session's PATH (links to the host's
/// BusyBox): those of the one `busybox --list` found (ESXi 5.x [BBL], ESX-REAL.md section 7)
/// that a tool reading disks could use, nothing that changes the host (no halt, reboot, fdisk).
/// Not there, as on ESXi: `tr` ([MK] #282), `comm`; `head` is tests/fixtures/esx/head (no
/// `-c`), `dd` tests/fixtures/esx/dd. One name a line, shared with scripts/lib/esx-standin.sh.
const APPLETS: &str = include_str!("../fixtures/esx/applets");

/// What a stand-in starts with: the faults that sshd or the datastore's layout hold.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The datastore's name (`datastore2 (1)`: spaces and brackets, ESX-REAL.md section 6).
    pub datastore: String,
    /// sshd `MaxSessions 1`, as the ESXi 6.5 and 6.7 STIGs require (ESX-REAL.md section 8).
    pub one_session: bool,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            datastore: DATASTORE.into(),
            one_session: false,
        }
    }
}

pub struct StandIn {
    pub dir: tempfile::TempDir,
    pub port: u16,
    datastore: String,
    sshd: Child,
}

fn keygen(path: &Path, kind: &str) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let mut bits = Vec::new();
    if kind == "rsa" {
        bits = vec!["-b", "2048"];
    }
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", ""])
        .args(bits)
        .arg("-f")
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

/// The folder of the stand-in's commands.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/esx")
}

/// The session's PATH: ESXi's applets (BusyBox's) and the stand-in's commands, nothing else.
fn esxi_path(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    let busybox = Path::new("/usr/bin/busybox");
    assert!(
        busybox.exists(),
        "/usr/bin/busybox (busybox; scripts/setup-host.sh installs it)"
    );
    for a in APPLETS.lines() {
        std::os::unix::fs::symlink(busybox, bin.join(a)).unwrap();
    }
    // ESXi's `nc` is no BusyBox applet but a separate binary, default since vSphere 4.1 and
    // used as `dd ... | nc IP 9001` on ESXi 8 ([GV] [PB], ESX-REAL.md section 7). BusyBox's
    // serves here; it closes the socket at the end of its input, which ESXi's is not known to
    // do (UNCONFIRMED): the tool reads each range's length and trailer, never waits for EOF.
    std::os::unix::fs::symlink(busybox, bin.join("nc")).unwrap();
    for c in ["vim-cmd", "dd", "head"] {
        std::os::unix::fs::symlink(fixtures().join(c), bin.join(c)).unwrap();
    }
}

/// sshd's configuration: ESXi 8.0.2's active lines (ESX-REAL.md section 8 [N8]) where OpenSSH
/// takes them, and the stand-in's own (port, keys, the session's environment).
fn sshd_config(state: &Path, port: u16, root: &Path, setup: &Setup) -> String {
    let s = state.display();
    let mut c = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {s}/host_rsa_key\nHostKey {s}/host_ecdsa_key\n\
         PidFile {s}/sshd.pid\nAuthorizedKeysFile {s}/authorized_keys\nStrictModes no\nUsePAM no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\nLogLevel VERBOSE\n\
         Ciphers aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr\n\
         HostKeyAlgorithms ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-256,rsa-sha2-512\n\
         KexAlgorithms ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256\n\
         MACs hmac-sha2-256,hmac-sha2-512\nMaxStartups 10:30:100\nAllowTcpForwarding no\n\
         AllowStreamLocalForwarding no\nPermitTunnel no\nCompression no\n\
         ClientAliveInterval 200\nClientAliveCountMax 3\n"
    );
    // ESXi's `fipsmode yes` refuses ed25519 user keys (8.0.2 [N8]; on by default since 7.0
    // [STIG7]); OpenSSH has no such switch, so the key types are listed.
    c += "PubkeyAcceptedAlgorithms ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-256,rsa-sha2-512\n";
    if setup.one_session {
        c += "MaxSessions 1\n";
    }
    c += &format!(
        "SetEnv PATH={s}/bin STANDIN_ROOT={} STANDIN_MKDELTA={} STANDIN_VM={}\n",
        root.display(),
        example("mkdelta").display(),
        example("standin_vm").display()
    );
    c
}

impl StandIn {
    /// Start the stand-in's sshd; it stops when the value is dropped.
    pub fn start() -> StandIn {
        StandIn::start_with(Setup::default())
    }

    /// [`StandIn::start`] with the datastore and sshd of `setup`.
    pub fn start_with(setup: Setup) -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let state = root.join("standin");
        std::fs::create_dir_all(&state).unwrap();
        let volumes = root.join("vmfs/volumes");
        std::fs::create_dir_all(volumes.join(UUID)).unwrap();
        std::os::unix::fs::symlink(UUID, volumes.join(&setup.datastore)).unwrap();
        std::fs::write(state.join("vms.tsv"), "").unwrap();
        keygen(&state.join("host_rsa_key"), "rsa");
        keygen(&state.join("host_ecdsa_key"), "ecdsa");
        keygen(&state.join("client_key"), "ecdsa");
        std::fs::copy(state.join("client_key.pub"), state.join("authorized_keys")).unwrap();
        esxi_path(&state.join("bin"));
        // sshd running as root wants its privilege separation folder.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        std::fs::write(
            state.join("sshd_config"),
            sshd_config(&state, port, root, &setup),
        )
        .unwrap();
        let s = state.display();
        let host_pub = std::fs::read_to_string(state.join("host_ecdsa_key.pub")).unwrap();
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
        // ESXi's root shell is BusyBox's ash (ESX.md section 5): sshd runs every command as
        // `sh -c COMMAND` with the user's login shell, so root's is made `bin/sh` (BusyBox) in
        // a passwd of sshd's own, bind-mounted in a mount namespace of its own. The host's
        // bash would read its ~/.bashrc even for a command (Debian builds it so for sshd).
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let passwd: String = passwd
            .lines()
            .map(|l| match l.strip_prefix("root:") {
                Some(rest) => {
                    let mut f: Vec<&str> = rest.split(':').collect();
                    let shell = format!("{s}/bin/sh");
                    *f.last_mut().unwrap() = &shell;
                    format!("root:{}\n", f.join(":"))
                }
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(state.join("passwd"), passwd).unwrap();
        let sshd = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$1\" /etc/passwd && exec /usr/sbin/sshd -D -f \"$2\" -E \"$3\"")
            .arg("sh")
            .arg(state.join("passwd"))
            .arg(state.join("sshd_config"))
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let standin = StandIn {
            dir,
            port,
            datastore: setup.datastore,
            sshd,
        };
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
        let p = self
            .root()
            .join("vmfs/volumes")
            .join(&self.datastore)
            .join(dir);
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
            "{id}\t{name}\t[{}] {vmx}\tubuntu64Guest\t{}\t{note}\n",
            self.datastore,
            if powered_on { "on" } else { "off" }
        );
        let mut reg = std::fs::read_to_string(self.state("vms.tsv")).unwrap();
        reg.push_str(&line);
        std::fs::write(self.state("vms.tsv"), reg).unwrap();
        std::fs::write(self.state(&format!("format-{id}")), format).unwrap();
    }

    /// Record snapshots the VM already has (id, name), as vim-cmd lists them.
    pub fn add_snapshot_record(&self, vm: u32, snap: u32, name: &str) {
        self.add_snapshot_described(vm, snap, name, "theirs");
    }

    /// [`StandIn::add_snapshot_record`] with a description, which may hold line breaks:
    /// `snapshot.get` prints its later lines raw (ESX-REAL.md section 1).
    pub fn add_snapshot_described(&self, vm: u32, snap: u32, name: &str, description: &str) {
        let p = self.state(&format!("snaps-{vm}.tsv"));
        let mut s = std::fs::read_to_string(&p).unwrap_or_default();
        let d = description.replace('\n', "\\n");
        s.push_str(&format!("{snap}\t{name}\t{d}\tpowered on\n"));
        std::fs::write(p, s).unwrap();
    }

    /// The names of VM `id`'s snapshots, as the stand-in keeps them (in tree order).
    pub fn snapshot_names(&self, id: u32) -> Vec<String> {
        std::fs::read_to_string(self.state(&format!("snaps-{id}.tsv")))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\t').nth(1).unwrap_or_default().to_string())
            .collect()
    }

    /// `getallvms` prints `Skipping invalid VM '6'` before its header and a vCLS VM with an
    /// empty datastore (ESX-REAL.md section 6).
    pub fn invalid_vms(&self) {
        std::fs::write(self.state("invalid-vms"), "").unwrap();
    }

    /// `snapshot.remove` prints the tree left after `Remove Snapshot:`, and returns before the
    /// snapshot is gone from `snapshot.get` (ESX-REAL.md section 2).
    pub fn remove_prints_tree(&self) {
        std::fs::write(self.state("remove-tree"), "").unwrap();
    }

    /// The next `snapshot.create` of VM `id` is refused: "Snapshot not taken since the state of
    /// the virtual machine has not changed since the last snapshot operation." (ESX-REAL.md
    /// section 3).
    pub fn unchanged_once(&self, id: u32) {
        std::fs::write(self.state(&format!("unchanged-{id}")), "").unwrap();
    }

    /// The `nth` call of `vmsvc/SUBCOMMAND` from now on (1: the next) answers hostd's `text`
    /// (`\n` for line breaks) with exit 1, as hostd's hiccups do (ESX-REAL.md section 4).
    pub fn transient(&self, subcommand: &str, nth: usize, text: &str) {
        let sent = self
            .commands()
            .lines()
            .filter(|l| l.split(' ').next() == Some(&format!("vmsvc/{subcommand}")))
            .count();
        let p = self.state("transient");
        let mut s = std::fs::read_to_string(&p).unwrap_or_default();
        s.push_str(&format!("{subcommand} {} {text}\n", sent + nth));
        std::fs::write(p, s).unwrap();
    }

    /// The client's key is an ed25519 one, in authorized_keys too: refused, as ESXi's FIPS
    /// mode refuses it (ESX-REAL.md section 8).
    pub fn client_key_ed25519(&self) {
        let key = self.state("client_key");
        keygen(&key, "ed25519");
        std::fs::copy(self.state("client_key.pub"), self.state("authorized_keys")).unwrap();
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
        self.root()
            .join("vmfs/volumes")
            .join(&self.datastore)
            .join(vmx)
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

    /// `ssh://root@127.0.0.1:PORT/.../vmfs/volumes/DATASTORE/VMX`
    pub fn url(&self, vmx: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/vmfs/volumes/{}/{vmx}",
            self.port,
            self.root().display(),
            self.datastore
        )
    }

    /// `ssh://root@127.0.0.1:PORT/.../vmfs/volumes/UUID/VMX`: the same .vmx by the datastore's
    /// UUID, as the ESXi shell shows it after a `cd` (ESX-REAL.md section 10).
    pub fn url_by_uuid(&self, vmx: &str) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}/vmfs/volumes/{UUID}/{vmx}",
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
        self.import_url(tp, domain, &self.url(vmx), extra)
    }

    /// [`StandIn::import`] of the .vmx `url` (such as [`StandIn::url_by_uuid`]'s).
    pub fn import_url(&self, tp: &TestPool, domain: &str, url: &str, extra: &[&str]) -> Run {
        self.import_env(tp, domain, url, extra, &[])
    }

    /// [`StandIn::import_url`] with `env` added to the tool's environment.
    pub fn import_env(
        &self,
        tp: &TestPool,
        domain: &str,
        url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Run {
        let mut args = vec![
            "-c",
            "qemu:///system",
            "--domain",
            domain,
            "--pool",
            &tp.name,
            "--vmx",
            url,
        ];
        args.extend_from_slice(extra);
        self.tool_env(&args, env)
    }

    /// `virt-vmdkimport ARGS...` with the stand-in's ssh config.
    pub fn tool(&self, args: &[&str]) -> Run {
        self.tool_env(args, &[])
    }

    /// [`StandIn::tool`] with `env` added to the tool's environment.
    pub fn tool_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out: Output = Command::new(super::BIN)
            .args(args)
            .env("VIRT_VMDKIMPORT_SSH_CONFIG", self.ssh_config())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        Run {
            what: format!(
                "{}VIRT_VMDKIMPORT_SSH_CONFIG=... virt-vmdkimport {}",
                shown.concat(),
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

/// A VM folder `dir` on the stand-in with `disks` flat bases of 8 MiB (the first bootable),
/// registered as VM `id` with deltas of `format`, and powered on: its process writes into
/// every disk from now on. With `nic`, the .vmx has a vmxnet3 NIC on "VM Network".
pub fn running_vm(
    esx: &StandIn,
    dir: &str,
    id: u32,
    format: &str,
    disks: usize,
    nic: bool,
) -> String {
    let folder = esx.vm_dir(dir);
    let mut names = Vec::new();
    for i in 0..disks {
        let stem = if i == 0 {
            dir.to_string()
        } else {
            format!("{dir}_{i}")
        };
        let data = if i == 0 {
            bootimg::boot_disk(&patterned(0x100 + id as u64, bootimg::PAYLOAD_LEN), 8 * MIB)
        } else {
            patterned(0x200 + id as u64 + i as u64, 8 * MIB)
        };
        flat_base(&folder, &stem, &data, 0x10000000 + id * 16 + i as u32);
        names.push(format!("{stem}.vmdk"));
    }
    let mut vmx = vmx_text(dir, &names.iter().map(String::as_str).collect::<Vec<_>>());
    if nic {
        vmx += "ethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vmxnet3\"\n\
                ethernet0.networkName = \"VM Network\"\nethernet0.addressType = \"static\"\n\
                ethernet0.address = \"00:50:56:3f:00:21\"\n";
    }
    let rel = format!("{dir}/{dir}.vmx");
    std::fs::write(esx.vmx_path(&rel), vmx).unwrap();
    esx.register(id, dir, &rel, false, format, "");
    esx.power_on(id);
    esx.wait_rounds(id, 2);
    rel
}

/// The descriptor each disk's .vmx line names now (the top of its chain).
pub fn tops(esx: &StandIn, vmx: &str) -> Vec<PathBuf> {
    let path = esx.vmx_path(vmx);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| l.contains(".fileName"))
        .map(|l| path.parent().unwrap().join(l.split('"').nth(1).unwrap()))
        .collect()
}

/// Every volume of the domain against qemu-img's reading of its disk's descriptor `tops`.
pub fn assert_volumes(tp: &TestPool, domain: &str, tops: &[PathBuf], what: &str) {
    for (i, top) in tops.iter().enumerate() {
        assert_same(
            &volume_bytes(tp, &format!("{domain}-disk{i}")),
            &qemu_read(top),
            &format!("{what}: disk {i} against {}", top.display()),
        );
    }
}

/// The programs of the commands the tool ran on the host, from its `-v` lines (`debug: ssh
/// root@127.0.0.1: COMMAND`), each command split at `&&`; sorted, each once.
pub fn programs_sent(run: &Run) -> Vec<String> {
    let mut sent: Vec<String> = run
        .stderr()
        .lines()
        .filter_map(|l| l.strip_prefix("debug: ssh root@127.0.0.1"))
        .filter_map(|l| l.split_once(": ").map(|(_, c)| c.to_string()))
        .flat_map(|c| {
            c.split("&&")
                .map(|p| p.split_whitespace().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    sent.sort();
    sent.dedup();
    sent
}

/// A powered-off VM `stem` (id `id`) whose base holds `data` (CID `cid`), with a COWD
/// snapshot of its own, "nightly" (id 1), holding data at the grains `at` (bytes from the
/// pattern `seed`); its .vmx names that snapshot's descriptor. The base's and the snapshot's
/// descriptors.
pub fn off_vm_with_snapshot(
    esx: &StandIn,
    stem: &str,
    id: u32,
    (data, cid): (&[u8], u32),
    at: &[u64],
    seed: u64,
) -> (PathBuf, PathBuf) {
    let dir = esx.vm_dir(stem);
    let base = flat_base(&dir, stem, data, cid);
    let grains: Vec<(u64, Kind)> = at.iter().map(|&g| (g, Kind::Data)).collect();
    let theirs = cowd_child(
        &dir,
        &format!("{stem}-000001"),
        &format!("{stem}.vmdk"),
        cid,
        cid + 0x100,
        data.len() as u64 / SECTOR,
        &grains,
        &mut pattern(seed),
    );
    let vmx = format!("{stem}/{stem}.vmx");
    std::fs::write(
        esx.vmx_path(&vmx),
        vmx_text(stem, &[&format!("{stem}-000001.vmdk")]),
    )
    .unwrap();
    esx.register(id, stem, &vmx, false, "cowd", "");
    esx.add_snapshot_record(id, 1, "nightly");
    (base, theirs)
}
