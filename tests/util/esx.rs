//! A stand-in ESXi host for the tests: OpenSSH's sshd on a free loopback port with its own
//! config, host key and an authorized test key, a datastore folder, and the stand-in
//! `vim-cmd` and `dd` of tests/fixtures/esx on the session's PATH. It imitates the behaviour
//! /work/shared/ESX.md documents; it is not ESXi.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

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
        let mkdelta = Path::new(super::BIN)
            .parent()
            .unwrap()
            .join("examples/mkdelta");
        assert!(
            mkdelta.exists(),
            "{} (cargo builds the examples with the tests)",
            mkdelta.display()
        );
        let port = free_port();
        let s = state.display();
        std::fs::write(
            state.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {s}/host_key\nPidFile {s}/sshd.pid\n\
                 AuthorizedKeysFile {s}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n\
                 SetEnv PATH={}:/usr/bin:/bin STANDIN_ROOT={} STANDIN_MKDELTA={}\n",
                fixtures.display(),
                root.display(),
                mkdelta.display()
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

    /// The sshd log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state("sshd.log")).unwrap_or_default()
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
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}
