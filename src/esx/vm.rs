//! The VM on the ESXi host for pre-copy rounds and the cutover: power, snapshots, every disk's chain, and its deltas opened for reading.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::remote::RemoteFile;
use super::ssh::{self, Ssh, SshUrl};
use super::vimcmd::{self, Power, Snapshot};
use super::SNAPSHOT_NAME;
use super::{datastore_path, remote_join, walk_chain, Host, RemoteChain, RemoteDelta};
use crate::vmdk::{self, Chain};
use crate::vmx::VmxConfig;

/// How often the power state is asked while waiting for it to change: each second of the
/// wait after the VM is off is outage, and one `getstate` costs a command on the open connection.
const POLL: Duration = Duration::from_millis(250);
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
    pub id: u32,
    /// `[datastore] dir/file.vmx`
    pub ds_path: String,
    url: SshUrl,
    dry_run: bool,
    say: bool,
    outside: bool,
}

impl Vm {
    /// Connect and find the VM registered with the .vmx `url` names.
    pub fn find(url: &str, dry_run: bool, say: bool, outside: bool) -> Result<Vm> {
        let url = SshUrl::parse(url)?;
        ensure!(
            url.path.ends_with(".vmx"),
            "{}: the path must name the VM's .vmx",
            url.with_path(&url.path)
        );
        let ds_path = datastore_path(&url.path)?;
        let ssh = Arc::new(Ssh::new(&url)?);
        let id = Host {
            ssh: &ssh,
            dry_run,
            say,
        }
        .find_vm(&ds_path)?;
        Ok(Vm {
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

    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.host().snapshots(self.id)
    }

    /// Take the next migration snapshot; its name (only said under --dry-run).
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
        self.host().take_snapshot(self.id, &self.ds_path, &name)?;
        Ok(name)
    }

    /// The .vmx as the host has it now (a snapshot rewrites its disks' file names).
    pub fn config(&self) -> Result<VmxConfig> {
        super::read_vmx(&self.ssh, &self.url)
    }

    /// Every disk's chain, in the .vmx's disk order, each walked from the file the .vmx names.
    pub fn chains(&self, cfg: &VmxConfig) -> Result<Vec<RemoteChain>> {
        let name = self.url.with_path(&self.url.path);
        super::refuse_independent(cfg, &self.url)?;
        cfg.disks
            .iter()
            .map(|disk| {
                let top = remote_join(
                    ssh::folder(&self.url.path),
                    &disk.file_name.to_string_lossy(),
                    self.outside,
                )?;
                walk_chain(&self.ssh, &top, self.outside)
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
        let a = self.ssh.run(&cmd).map_err(ShutdownRefused::Other)?;
        if a.code == Some(0) {
            return Ok(());
        }
        let all = format!("{}{}", a.stdout, a.stderr);
        let why = a.failure(self.host_name(), &cmd);
        if all.contains("ToolsUnavailable") || all.contains("VMware Tools is not running") {
            return Err(ShutdownRefused::NoTools(why));
        }
        Err(ShutdownRefused::Other(anyhow::anyhow!(why)))
    }

    /// Hard power-off, then wait until the host says so.
    pub fn power_off(&self) -> Result<()> {
        let cmd = format!("vim-cmd vmsvc/power.off {}", self.id);
        let a = self.ssh.run(&cmd)?;
        if a.code != Some(0) && self.power()? != Power::Off {
            bail!("{}", a.failure(self.host_name(), &cmd));
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
        let a = self.ssh.run(&cmd)?;
        if self.power()? != Power::On {
            bail!("{}", a.failure(self.host_name(), &cmd));
        }
        Ok(())
    }

    /// Wait until the power state is `want`, at most `limit`; whether it got there.
    pub fn wait_for(&self, want: Power, limit: Duration) -> Result<bool> {
        let started = Instant::now();
        loop {
            if self.power()? == want {
                return Ok(true);
            }
            if started.elapsed() >= limit {
                return Ok(false);
            }
            crate::interrupt::check()?;
            std::thread::sleep(POLL.min(limit.saturating_sub(started.elapsed())));
        }
    }

    /// Remove the snapshot `snap` (ESXi 5.0+ form: by id).
    pub fn remove_snapshot(&self, snap: u32) -> Result<()> {
        let cmd = format!("vim-cmd vmsvc/snapshot.remove {} {snap}", self.id);
        let out = self.ssh.read(&cmd)?;
        vimcmd::check_removed(&cmd, &out)
    }
}

/// Whether an error is a VMFS lock (the VM still holds the file).
pub fn is_locked(e: &anyhow::Error) -> bool {
    let text = format!("{e:#}");
    text.contains("locked on the ESXi host") || ssh::is_lock_error(&text)
}
