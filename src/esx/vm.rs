//! The VM on the ESXi host for pre-copy rounds and the cutover: power, snapshots, every disk's chain, and its deltas opened for reading.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::SNAPSHOT_NAME;
use super::files::{remote_join, walk_chain, RemoteChain, RemoteDelta};
use super::host::{Host, Taking};
use super::remote::RemoteFile;
use super::ssh::{self, Ssh, SshUrl};
use super::transfer::{Transfer, TransferOptions};
use super::vimcmd::{Created, Power, Snapshot};
use crate::vmdk::{self, Chain};
use crate::vmx::VmxConfig;

/// How often the power state is asked while waiting for it to change: about once a second,
/// as a real host's `getstate` takes most of a second ([IDX 60104341847], ESX-REAL.md
/// section 4) and hostd is not pressed while it shuts the VM down.
const POLL: Duration = Duration::from_secs(1);
/// How long a hard power-off may take to show.
const POWER_OFF_WAIT: Duration = Duration::from_secs(60);
/// How long a delta may stay locked after the VM is off (ESX.md: when it becomes readable is
/// not documented, so opens are retried).
const UNLOCK_WAIT: Duration = Duration::from_secs(15);

/// Why a guest shutdown could not be asked for.
#[derive(Debug)]
pub enum ShutdownRefused {
    /// VMware Tools do not run in the guest.
    NoTools(String),
    Other(anyhow::Error),
}

/// The VM registered with a .vmx on an ESXi host.
pub struct Vm {
    pub ssh: Arc<Ssh>,
    /// How the bytes of its files come here.
    pub transfer: Arc<Transfer>,
    pub id: u32,
    /// `[datastore] dir/file.vmx`
    pub ds_path: String,
    url: SshUrl,
    dry_run: bool,
    say: bool,
    outside: bool,
}

impl Vm {
    /// Connect and find the VM registered with the .vmx `url` names; its files' bytes come
    /// as `transfer` says.
    pub fn find(
        url: &str,
        dry_run: bool,
        say: bool,
        outside: bool,
        transfer: TransferOptions,
    ) -> Result<Vm> {
        let url = SshUrl::parse(url)?;
        ensure!(
            url.path.ends_with(".vmx"),
            "{}: the path must name the VM's .vmx",
            url.with_path(&url.path)
        );
        let ssh = Arc::new(Ssh::new(&url)?);
        let (id, ds_path) = Host {
            ssh: &ssh,
            dry_run,
            say,
        }
        .find_vm(&url.path)?;
        let transfer = Arc::new(Transfer::new(ssh.clone(), transfer));
        if !dry_run {
            transfer.ready()?;
        }
        Ok(Vm {
            transfer,
            ssh,
            id,
            ds_path,
            url,
            dry_run,
            say,
            outside,
        })
    }

    pub(super) fn host(&self) -> Host<'_> {
        Host {
            ssh: &self.ssh,
            dry_run: self.dry_run,
            say: self.say,
        }
    }

    /// The .vmx's URL.
    pub fn url(&self) -> &SshUrl {
        &self.url
    }

    /// `host`, for messages.
    pub fn host_name(&self) -> &str {
        &self.url.host
    }

    pub fn power(&self) -> Result<Power> {
        self.host().power(self.id)
    }

    /// Whether VMware Tools run in the guest, as `get.guest` says (`guestToolsRunning`), and
    /// the status as the host gave it.
    pub fn tools(&self) -> Result<(bool, String)> {
        let status = self.host().tools_status(self.id)?;
        Ok((status == "guestToolsRunning", status))
    }

    /// The sizes of the files `paths` on the host, summed (one `stat -c %s`, a query).
    pub fn total_size(&self, paths: &[String]) -> Result<u64> {
        if paths.is_empty() {
            return Ok(0);
        }
        let quoted: Vec<String> = paths.iter().map(|p| ssh::quote(p)).collect();
        let cmd = format!("stat -c %s {}", quoted.join(" "));
        let out = self.ssh.read(&cmd)?;
        out.lines()
            .map(|l| {
                l.trim().parse::<u64>().with_context(|| {
                    format!("{}: `{cmd}` answered {l:?}, not a size", self.host_name())
                })
            })
            .sum()
    }

    /// The .vmx's text as the host has it now.
    pub fn vmx_text(&self) -> Result<Vec<u8>> {
        super::files::read_vmx_text(&self.ssh, &self.url)
    }

    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.host().snapshots(self.id)
    }

    /// Take the next migration snapshot; its name (only said under --dry-run). When ESXi
    /// takes none because the VM has not changed since its last snapshot, that snapshot's
    /// name: the deltas it froze are the ones to apply.
    pub fn take_snapshot(&self) -> Result<String> {
        let snaps = self.snapshots()?;
        let n = (1..)
            .find(|n| {
                !snaps
                    .iter()
                    .any(|s| s.name == format!("{SNAPSHOT_NAME}-{n}"))
            })
            .expect("some number is free");
        let name = format!("{SNAPSHOT_NAME}-{n}");
        let host = self.host();
        match host.take_snapshot(self.id, &self.ds_path, &name, &snaps, Taking::Sync)? {
            Created::Taken => Ok(name),
            // The newest: the deepest, the last listed of those.
            Created::Unchanged => Ok(snaps
                .iter()
                .max_by_key(|s| s.depth)
                .map_or(name, |s| s.name.clone())),
        }
    }

    /// The .vmx as the host has it now (a snapshot rewrites its disks' file names).
    pub fn config(&self) -> Result<VmxConfig> {
        super::files::read_vmx(&self.ssh, &self.url)
    }

    /// Every disk's chain, in the .vmx's disk order, each walked from the file the .vmx names.
    pub fn chains(&self, cfg: &VmxConfig) -> Result<Vec<RemoteChain>> {
        let name = self.url.with_path(&self.url.path);
        super::files::refuse_independent(cfg, &self.url)?;
        cfg.disks
            .iter()
            .map(|disk| {
                let top = remote_join(
                    ssh::folder(&self.url.path),
                    &disk.file_name.to_string_lossy(),
                    self.outside,
                )?;
                walk_chain(&self.transfer, &top, self.outside)
                    .with_context(|| format!("{name}: disk {}", disk.slot()))
            })
            .collect()
    }

    /// The delta `d` as a one-layer chain whose grains are read over ssh. A delta still locked
    /// (the VM just went off) is retried for a while.
    pub fn open_delta(&self, d: &RemoteDelta) -> Result<Chain> {
        let started = Instant::now();
        loop {
            match self.try_open_delta(d) {
                Err(e) if is_locked(&e) && started.elapsed() < UNLOCK_WAIT => {
                    crate::interrupt::check()?;
                    std::thread::sleep(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    fn try_open_delta(&self, d: &RemoteDelta) -> Result<Chain> {
        let folder = ssh::folder(&d.path).to_string();
        let mut open = |_: &vmdk::Descriptor, name: &str| {
            let path = remote_join(&folder, name, self.outside)
                .map_err(|e| vmdk::Error::invalid(Path::new(&d.shown), format!("{e:#}")))?;
            let shown = self.ssh.url().with_path(&path);
            let file = RemoteFile::open(self.ssh.clone(), &path).map_err(|e| {
                vmdk::Error::io(
                    Path::new(&shown),
                    "opening",
                    std::io::Error::other(format!("{e:#}")),
                )
            })?;
            Ok(file.into_data_file(&shown))
        };
        Ok(Chain::from_descriptors(
            vec![d.descriptor.clone()],
            &mut open,
        )?)
    }

    /// Ask VMware Tools for a guest shutdown; returns at once.
    pub fn shutdown(&self) -> Result<(), ShutdownRefused> {
        let cmd = format!("vim-cmd vmsvc/power.shutdown {}", self.id);
        let off = || -> Result<bool> { Ok(self.power()? == Power::Off) };
        let a = match self.host().power_command(&cmd, &off) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => return Err(ShutdownRefused::Other(e)),
        };
        if a.code == Some(0) {
            return Ok(());
        }
        let all = a.all();
        let why = a.failure(self.host_name(), &cmd);
        if all.contains("ToolsUnavailable") || all.contains("VMware Tools is not running") {
            return Err(ShutdownRefused::NoTools(why));
        }
        Err(ShutdownRefused::Other(anyhow::anyhow!(why)))
    }

    /// Hard power-off, then wait until the host says so.
    pub fn power_off(&self) -> Result<()> {
        let cmd = format!("vim-cmd vmsvc/power.off {}", self.id);
        let off = || -> Result<bool> { Ok(self.power()? == Power::Off) };
        if let Some(a) = self.host().power_command(&cmd, &off)? {
            if a.code != Some(0) && !off()? {
                bail!("{}", a.failure(self.host_name(), &cmd));
            }
        }
        ensure!(
            self.wait_for(Power::Off, POWER_OFF_WAIT)?,
            "{}: `{cmd}` ran, but the VM is not powered off after {}s",
            self.host_name(),
            POWER_OFF_WAIT.as_secs()
        );
        Ok(())
    }

    /// Power the VM on again (the rollback); checked with the power state, as `Power on
    /// failed` is sometimes printed for a VM that did start.
    pub fn power_on(&self) -> Result<()> {
        let cmd = format!("vim-cmd vmsvc/power.on {}", self.id);
        let on = || -> Result<bool> { Ok(self.power()? == Power::On) };
        if let Some(a) = self.host().power_command(&cmd, &on)? {
            if !on()? {
                bail!("{}", a.failure(self.host_name(), &cmd));
            }
        }
        Ok(())
    }

    /// Wait until the power state is `want`, at most `limit`; whether it got there. Polled
    /// about once a second; a poll hostd answers with a passing failure is asked again at the
    /// next, and at the limit one more answer (tried again over hiccups) decides.
    pub fn wait_for(&self, want: Power, limit: Duration) -> Result<bool> {
        let started = Instant::now();
        loop {
            let now = self.host().power_once(self.id)?;
            if now == Some(want) {
                return Ok(true);
            }
            if started.elapsed() >= limit {
                return Ok(now.is_none() && self.power()? == want);
            }
            crate::interrupt::check()?;
            std::thread::sleep(POLL.min(limit.saturating_sub(started.elapsed())));
        }
    }

    /// Remove the snapshot `snap`, confirmed by `snapshot.get`.
    pub fn remove_snapshot(&self, snap: u32) -> Result<()> {
        self.host().remove_snapshot(self.id, snap)
    }
}

/// Whether an error is a VMFS lock (the VM still holds the file).
pub fn is_locked(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("locked on the ESXi host") || ssh::is_lock_error(&text)
}
