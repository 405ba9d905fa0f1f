//! The SSH transport to an ESXi host: the system's OpenSSH client, one multiplexed connection for the commands and a connection of its own for each bulk read.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::image_read::ImageRead;

/// The environment variable naming an ssh config file passed as `ssh -F FILE` (tests use it
/// for their key and known_hosts; unset, the operator's ~/.ssh/config applies).
pub const CONFIG_ENV: &str = "VIRT_VMDKIMPORT_SSH_CONFIG";

/// How long the master connection outlives its last use when this process cannot close it
/// (killed): it then goes away by itself.
const PERSIST_SECS: u32 = 60;

/// `ssh://[user@]host[:port]/path`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshUrl {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

impl SshUrl {
    /// Parse an `ssh://` URL; the path must be absolute.
    pub fn parse(url: &str) -> Result<SshUrl> {
        let bad = |why: &str| {
            anyhow!("{url:?}: {why} (expected ssh://[user@]host[:port]/path/to/vm.vmx)")
        };
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("not an ssh:// URL"))?;
        let slash = rest
            .find('/')
            .ok_or_else(|| bad("no path after the host"))?;
        let (authority, path) = rest.split_at(slash);
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad("bad port"))?)),
            None => (hostport, None),
        };
        let plain = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        };
        if !plain(host) || user.as_deref().is_some_and(|u| !plain(u)) {
            return Err(bad(
                "the user and host may hold letters, digits, '-', '.', '_' only",
            ));
        }
        if path.contains('\0') || path.contains('\n') {
            return Err(bad("the path holds a NUL or a newline"));
        }
        Ok(SshUrl {
            user,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// `[user@]host`, as ssh takes it.
    pub fn destination(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.clone(),
        }
    }

    /// The URL of another file on the same host.
    pub fn with_path(&self, path: &str) -> String {
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("ssh://{}{port}{path}", self.destination())
    }
}

/// Quote `s` for the remote POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One master connection (ControlMaster in a private folder), used by every command.
pub struct Ssh {
    url: SshUrl,
    dir: PathBuf,
    config: Option<PathBuf>,
    sessions: Arc<Sessions>,
}

/// What ssh says of the master connection's sessions. A host that takes one session per
/// connection (sshd `MaxSessions 1`, as the ESXi 6.5 and 6.7 STIGs require; ESX-REAL.md
/// section 8) refuses a command that overlaps another on the master; ssh then runs it over a
/// connection of its own, and says so on stderr. That works: it is said once, as a note of how
/// the host is, and the lines are kept out of every message.
struct Sessions {
    host: String,
    said: AtomicBool,
}

/// The lines ssh prints when the master's host refuses a second session and ssh falls back to
/// a connection of its own.
const REFUSED_SESSION: [&str; 2] = ["Session open refused by peer", "disabling multiplexing"];

impl Sessions {
    /// A command's stderr as text, without the lines of a refused session (said once).
    fn stderr(&self, raw: &[u8]) -> String {
        let text = String::from_utf8_lossy(raw);
        let refused = |l: &str| REFUSED_SESSION.iter().any(|m| l.contains(m));
        if !text.lines().any(refused) {
            return text.into_owned();
        }
        if !self.said.swap(true, Ordering::Relaxed) {
            log::info!(
                "{}: the host takes one session per ssh connection (sshd MaxSessions 1): commands that overlap open connections of their own",
                self.host
            );
        }
        text.lines()
            .filter(|l| !refused(l))
            .map(|l| format!("{}\n", l.trim_end_matches('\r')))
            .collect()
    }
}

/// Why ssh itself failed (exit 255): its message; when the host refused the key, the keys and
/// methods ESXi takes (ESX-REAL.md section 8).
fn ssh_failed(destination: &str, stderr: &str) -> anyhow::Error {
    let mut why = format!("ssh {destination}: {}", stderr.trim());
    if stderr.contains("Permission denied") {
        why += "; ESXi's sshd takes ECDSA or RSA keys (in FIPS mode, on by default since ESXi 7.0, it refuses ed25519 keys even when authorized) from /etc/ssh/keys-<user>/authorized_keys, and since 8.0.1 passwords only as keyboard-interactive";
    }
    anyhow!(why)
}

impl Ssh {
    /// Prepare the connection; the master starts with the first command.
    pub fn new(url: &SshUrl) -> Result<Ssh> {
        let dir = std::env::temp_dir().join(format!("virt-vmdkimport-ssh.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("{}: creating the ssh control folder", dir.display()))?;
        let config = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        Ok(Ssh {
            url: url.clone(),
            dir,
            config,
            sessions: Arc::new(Sessions {
                host: url.host.clone(),
                said: AtomicBool::new(false),
            }),
        })
    }

    pub fn url(&self) -> &SshUrl {
        &self.url
    }

    fn control_path(&self) -> PathBuf {
        self.dir.join("master")
    }

    /// `ssh` with the multiplexing options, the config file and the port, up to the destination.
    fn command(&self) -> Command {
        self.command_over(true)
    }

    /// [`Ssh::command`]; without `shared`, over a connection of its own (no ControlMaster):
    /// ESXi's sshd spends a CPU per connection, not per channel.
    fn command_over(&self, shared: bool) -> Command {
        let mut c = Command::new("ssh");
        if let Some(cfg) = &self.config {
            c.arg("-F").arg(cfg);
        }
        if shared {
            c.arg("-o").arg("ControlMaster=auto");
            c.arg("-o")
                .arg(format!("ControlPath={}", self.control_path().display()));
            c.arg("-o").arg(format!("ControlPersist={PERSIST_SECS}"));
        } else {
            c.arg("-o").arg("ControlMaster=no");
            c.arg("-o").arg("ControlPath=none");
        }
        if let Some(p) = self.url.port {
            c.arg("-p").arg(p.to_string());
        }
        c.arg("-T").arg("--").arg(self.url.destination());
        c.stdin(Stdio::null());
        c
    }

    /// Run a shell command on the host; its exit status and both outputs.
    pub fn run(&self, cmd: &str) -> Result<Answer> {
        log::debug!("ssh {}: {cmd}", self.url.destination());
        let out = self
            .command()
            .arg(cmd)
            .output()
            .context("running ssh (is openssh-client installed?)")?;
        let answer = Answer {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: self.sessions.stderr(&out.stderr),
        };
        if answer.code == Some(255) {
            return Err(ssh_failed(&self.url.destination(), &answer.stderr));
        }
        Ok(answer)
    }

    /// Run a command that must succeed; its standard output.
    pub fn read(&self, cmd: &str) -> Result<String> {
        let a = self.run(cmd)?;
        if a.code != Some(0) {
            bail!("{}", a.failure(&self.url.host, cmd));
        }
        Ok(a.stdout)
    }

    /// Run a command that must succeed; its standard output as bytes. A failure says what
    /// the host printed; a lock is said as such, naming `what`.
    pub fn read_bytes(&self, cmd: &str, what: &str) -> Result<Vec<u8>> {
        log::debug!("ssh {}: {cmd}", self.url.destination());
        let out = self
            .command()
            .arg(cmd)
            .output()
            .context("running ssh (is openssh-client installed?)")?;
        let stderr = self.sessions.stderr(&out.stderr);
        if out.status.success() {
            return Ok(out.stdout);
        }
        let a = Answer {
            code: out.status.code(),
            stdout: String::new(),
            stderr,
        };
        if a.code == Some(255) {
            return Err(ssh_failed(&self.url.destination(), &a.stderr));
        }
        if is_lock_error(&a.stderr) {
            bail!("{}", locked_message(what, &a.stderr));
        }
        bail!("{}", a.failure(&self.url.host, cmd))
    }

    /// The first `limit` bytes of a remote file, and whether there were more: one `dd` of
    /// whole blocks past `limit` (ESXi's BusyBox may lack `head -c`; a regular file's reads
    /// come back whole but at its end).
    pub fn read_file(&self, path: &str, limit: u64) -> Result<(Vec<u8>, bool)> {
        let cmd = read_file_command(path, limit);
        let what = format!("{}:{path}", self.url.host);
        let mut bytes = self.read_bytes(&cmd, &what)?;
        let more = bytes.len() as u64 > limit;
        bytes.truncate(limit as usize);
        Ok((bytes, more))
    }

    /// `cmd` started on the host over the shared connection, its output not read (it sends
    /// its bytes elsewhere); its stderr piped, for [`Ssh::stderr_text`].
    pub fn spawn_quiet(&self, cmd: &str) -> Result<Child> {
        log::debug!("ssh {}: {cmd}", self.url.destination());
        self.command()
            .arg(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh (is openssh-client installed?)")
    }

    /// A command's stderr as text, without ssh's lines of a refused second session.
    pub fn stderr_text(&self, raw: &[u8]) -> String {
        self.sessions.stderr(raw)
    }

    /// The output of `cmd` (reading `path`) streamed over a connection of its own.
    pub fn stream_alone(&self, path: &str, cmd: &str) -> Result<RemoteRead> {
        log::debug!("ssh {} (streamed): {cmd}", self.url.destination());
        let mut child = self
            .command_over(false)
            .arg(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh (is openssh-client installed?)")?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // A larger pipe lets ssh hand over more per wake-up; where it cannot be had, the
        // default works too.
        let _ = nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
        Ok(RemoteRead {
            child,
            stdout,
            stderr: Some(stderr),
            what: format!("{}:{path}", self.url.host),
            sessions: self.sessions.clone(),
        })
    }
}

/// Bytes asked for the pipe from ssh (Linux's default is 64 KiB; 1 MiB is the unprivileged limit).
const PIPE_BYTES: i32 = 1 << 20;

/// Block size of [`Ssh::read_file`]'s `dd`.
const READ_FILE_BS: u64 = 64 << 10;

/// The command [`Ssh::read_file`] sends: enough whole blocks for `limit + 1` bytes.
pub fn read_file_command(path: &str, limit: u64) -> String {
    let count = (limit + 1).div_ceil(READ_FILE_BS);
    format!("dd if={} bs={READ_FILE_BS} count={count}", quote(path))
}

impl Drop for Ssh {
    fn drop(&mut self) {
        if self.control_path().exists() {
            // `-O exit` before the destination: after `--` ssh would send it as a command.
            let mut c = Command::new("ssh");
            if let Some(cfg) = &self.config {
                c.arg("-F").arg(cfg);
            }
            if let Some(p) = self.url.port {
                c.arg("-p").arg(p.to_string());
            }
            let _ = c
                .arg("-o")
                .arg(format!("ControlPath={}", self.control_path().display()))
                .args(["-O", "exit", "--"])
                .arg(self.url.destination())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a remote command answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Answer {
    /// Both outputs, as one text (vim-cmd's stream for faults is not known).
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// "`cmd` on host failed (exit N): output", the output as the host printed it.
    pub fn failure(&self, host: &str, cmd: &str) -> String {
        let code = self.code.map_or("a signal".to_string(), |c| c.to_string());
        format!(
            "`{cmd}` on {host} failed (exit {code}): {}",
            show_output(&self.all())
        )
    }
}

/// Output quoted for a message: trimmed, at most 2000 characters.
pub fn show_output(s: &str) -> String {
    let t = s.trim();
    if t.is_empty() {
        return "no output".into();
    }
    let cut: String = t.chars().take(2000).collect();
    format!("{cut:?}")
}

/// The text ESXi's BusyBox prints for a file another host or the VM holds locked.
pub fn is_lock_error(stderr: &str) -> bool {
    stderr.contains("Device or resource busy")
        || stderr.contains("Resource temporarily unavailable")
}

/// Why a read of `what` failed on a lock: the VM writes into it.
pub fn locked_message(what: &str, err: &str) -> String {
    format!(
        "{what}: locked on the ESXi host ({}): the VM has no snapshot over this disk, so its base is still open for writing",
        err.trim()
    )
}

/// Standard output of a remote `dd`; at its end the exit status is checked, so a failed or
/// cut-off read is an error, never a short image.
pub struct RemoteRead {
    child: Child,
    stdout: ChildStdout,
    stderr: Option<ChildStderr>,
    what: String,
    sessions: Arc<Sessions>,
}

impl RemoteRead {
    fn finish(&mut self) -> io::Result<()> {
        let mut raw = Vec::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_end(&mut raw);
        }
        let err = self.sessions.stderr(&raw);
        let status = self.child.wait()?;
        if status.success() {
            return Ok(());
        }
        let why = if is_lock_error(&err) {
            locked_message(&self.what, &err)
        } else {
            format!(
                "{}: reading over ssh failed ({status}): {}",
                self.what,
                show_output(&err)
            )
        };
        Err(io::Error::other(why))
    }
}

impl Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl ImageRead for RemoteRead {}

impl Drop for RemoteRead {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The folder part of a remote path.
pub fn folder(path: &str) -> &str {
    Path::new(path)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_user_host_port_and_path() {
        let u = SshUrl::parse("ssh://root@esx1.lan:2222/vmfs/volumes/ds 1/web/web.vmx").unwrap();
        assert_eq!(u.user.as_deref(), Some("root"));
        assert_eq!((u.host.as_str(), u.port), ("esx1.lan", Some(2222)));
        assert_eq!(u.path, "/vmfs/volumes/ds 1/web/web.vmx");
        assert_eq!(
            SshUrl::parse("ssh://esx1/a.vmx").unwrap().destination(),
            "esx1"
        );
        for bad in [
            "ssh://esx1",
            "ssh://-oProxy=x/a.vmx",
            "ssh://h:99999/a",
            "http://h/a",
        ] {
            assert!(SshUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(quote("a b'c"), r"'a b'\''c'");
    }
}
