//! The ESXi host's `vim-cmd`, as real hosts answer it (ESX-REAL.md): each call tried again over hostd's passing failures, the VM found by its datastore's name or UUID, snapshots taken only while the chain is two below ESXi's limit, a removal confirmed by `snapshot.get`.

use anyhow::{anyhow, bail, ensure, Result};
use std::time::{Duration, Instant};

use super::ssh::{self, quote, Answer, Ssh};
use super::vimcmd::{self, Created, Power, Snapshot};

/// Tries of one `vim-cmd` call while hostd answers with a passing failure, and the first wait
/// between them (doubled after each): 1 + 2 + 4 + 8 = 15 s in all, about [VCL]'s five tries
/// five seconds apart (ESX-REAL.md section 4).
const ATTEMPTS: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// How long a snapshot.create may take to show in snapshot.get (it may run as a task).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(120);
/// How long a removed snapshot may stay listed: whether `snapshot.remove` returns before the
/// snapshot is gone is not known (ESX-REAL.md section 2), and consolidating a large delta
/// takes a while ([VCL] gives `removeall` 7200 s). The domain runs by then; this only bounds
/// the wait for the confirmation.
const REMOVE_WAIT: Duration = Duration::from_secs(300);
/// The longest snapshot chain ESXi allows: "a maximum of 32 snapshots in a chain" (VMware KB
/// 1025279) or a tree depth of 31 (William Lam, Dell's PowerStore guide); the smaller
/// (ESX-REAL.md section 3).
pub const ESXI_MAX_CHAIN: usize = 31;
/// No snapshot is taken over a chain this deep: two below ESXi's limit, so that the migration
/// stops with a way out before ESXi refuses a snapshot (or a backup tool's) in its middle.
pub const MAX_CHAIN_BEFORE_OURS: usize = ESXI_MAX_CHAIN - 2;

/// Which run takes a snapshot: what a refusal at the chain's limit says to do instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taking {
    StageOne,
    Sync,
}

/// The ESXi host's vim-cmd, each query said under --dry-run.
pub(crate) struct Host<'a> {
    pub ssh: &'a Ssh,
    pub dry_run: bool,
    pub say: bool,
}

/// How deep the snapshot chain of `snaps` is: the levels of its deepest branch (the one a new
/// snapshot goes under is not told by `snapshot.get`).
pub fn chain_depth(snaps: &[Snapshot]) -> usize {
    snaps.iter().map(|s| s.depth + 1).max().unwrap_or(0)
}

impl Host<'_> {
    fn name(&self) -> &str {
        &self.ssh.url().host
    }

    /// Run `cmd`, again while hostd answers with a passing failure ([`vimcmd::transient`]),
    /// waiting 1, 2, 4, 8 s, at most [`ATTEMPTS`] times. For a command that changes something,
    /// `settled` says before each new try whether the change happened anyway; then None.
    fn vim(&self, cmd: &str, settled: Option<&dyn Fn() -> Result<bool>>) -> Result<Option<Answer>> {
        let mut wait = FIRST_WAIT;
        for attempt in 1.. {
            let a = self.ssh.run(cmd)?;
            let failed = a.code != Some(0);
            let Some(why) = vimcmd::transient(&a.all(), failed).map(str::to_string) else {
                return Ok(Some(a));
            };
            ensure!(
                attempt < ATTEMPTS,
                "`{cmd}` on {}: hostd answered {why:?} {ATTEMPTS} times in a row: its management agent does not answer; check it on the host (`/etc/init.d/hostd status`), then rerun",
                self.name()
            );
            log::info!(
                "{}: `{cmd}` answered {why:?} (hostd busy or restarting): trying again in {} s",
                self.name(),
                wait.as_secs()
            );
            crate::interrupt::check()?;
            std::thread::sleep(wait);
            wait *= 2;
            if let Some(done) = settled {
                if done()? {
                    return Ok(None);
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Run a query that changes nothing; its output, checked for success.
    fn query(&self, cmd: &str) -> Result<String> {
        if self.say {
            log::info!("{}: running {cmd}", self.name());
        }
        let a = self.vim(cmd, None)?.expect("a query is never settled");
        if a.code != Some(0) {
            bail!("{}", a.failure(self.name(), cmd));
        }
        Ok(a.stdout)
    }

    /// The Vmid of the VM registered with the .vmx at `path` (`/vmfs/volumes/DS/DIR/F.vmx`),
    /// and its datastore path as getallvms lists it (`[NAME] DIR/F.vmx`). DS is the
    /// datastore's name, or its UUID (the folder its name links to).
    pub fn find_vm(&self, path: &str) -> Result<(u32, String)> {
        let (root, ds, file) = vmfs_parts(path)?;
        let cmd = "vim-cmd vmsvc/getallvms";
        let rows = vimcmd::parse_getallvms(cmd, &self.query(cmd)?)?;
        let holding = |ds: &str| -> Vec<u32> {
            rows.iter()
                .filter(|r| r.datastores_of(file).iter().any(|d| d == ds))
                .map(|r| r.id)
                .collect()
        };
        let mut ds_name = ds.to_string();
        let mut ids = holding(ds);
        if ids.is_empty() {
            if let Some(name) = self.datastore_named(root, ds, file, &rows)? {
                ids = holding(&name);
                ds_name = name;
            }
        }
        let ds_path = format!("[{ds_name}] {file}");
        match ids.as_slice() {
            [id] => Ok((*id, ds_path)),
            [] => bail!(
                "no VM on {} is registered with {ds_path} (`{cmd}` lists {})",
                self.name(),
                rows.iter()
                    .filter_map(|r| r.file())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => bail!("`{cmd}` lists {ds_path} for several Vmids: {ids:?}"),
        }
    }

    /// The datastore whose name links to the folder `uuid` (`/vmfs/volumes/NAME ->
    /// UUID`, ESX-REAL.md section 10), among those getallvms lists `file` on: each name's link
    /// read with `readlink`.
    fn datastore_named(
        &self,
        root: &str,
        uuid: &str,
        file: &str,
        rows: &[vimcmd::VmRow],
    ) -> Result<Option<String>> {
        let mut names: Vec<String> = rows
            .iter()
            .flat_map(|r| r.datastores_of(file))
            .filter(|d| !d.is_empty() && !d.contains(['\n', '/']))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            return Ok(None);
        }
        let volumes = format!("{root}/vmfs/volumes/");
        let cmd = format!(
            "for d in {}; do readlink {}\"$d\" || echo; done",
            names.iter().map(|n| quote(n)).collect::<Vec<_>>().join(" "),
            quote(&volumes)
        );
        if self.say {
            log::info!("{}: running {cmd}", self.name());
        }
        let out = self.ssh.read(&cmd)?;
        let linked: Vec<&String> = names
            .iter()
            .zip(out.lines())
            .filter(|(_, target)| target.trim_end_matches('/').rsplit('/').next() == Some(uuid))
            .map(|(name, _)| name)
            .collect();
        match linked.as_slice() {
            [name] => {
                log::info!(
                    "{}: /vmfs/volumes/{uuid} is datastore '{name}' (the link /vmfs/volumes/{name})",
                    self.name()
                );
                Ok(Some(name.to_string()))
            }
            _ => Ok(None),
        }
    }

    pub fn power(&self, id: u32) -> Result<Power> {
        let cmd = format!("vim-cmd vmsvc/power.getstate {id}");
        vimcmd::parse_power(&cmd, &self.query(&cmd)?)
    }

    /// One `power.getstate`, not tried again: None when hostd answered with a passing
    /// failure (said), for a poll that asks again anyway.
    pub fn power_once(&self, id: u32) -> Result<Option<Power>> {
        let cmd = format!("vim-cmd vmsvc/power.getstate {id}");
        let a = self.ssh.run(&cmd)?;
        if let Some(why) = vimcmd::transient(&a.all(), a.code != Some(0)) {
            log::info!(
                "{}: `{cmd}` answered {why:?} (hostd busy or restarting): asked again at the next poll",
                self.name()
            );
            return Ok(None);
        }
        if a.code != Some(0) {
            bail!("{}", a.failure(self.name(), &cmd));
        }
        vimcmd::parse_power(&cmd, &a.stdout).map(Some)
    }

    /// `toolsRunningStatus` of `vim-cmd vmsvc/get.guest` (ESX-REAL.md section 5), a query.
    pub fn tools_status(&self, id: u32) -> Result<String> {
        let cmd = format!("vim-cmd vmsvc/get.guest {id}");
        vimcmd::parse_tools_status(&cmd, &self.query(&cmd)?)
    }

    pub fn snapshots(&self, id: u32) -> Result<Vec<Snapshot>> {
        let cmd = format!("vim-cmd vmsvc/snapshot.get {id}");
        vimcmd::parse_snapshots(&cmd, &self.query(&cmd)?)
    }

    /// Run a command that changes the VM's power (shutdown, off, on); when hostd hiccups,
    /// `settled` says first whether the VM got there anyway. Its answer, None if it did.
    pub fn power_command(
        &self,
        cmd: &str,
        settled: &dyn Fn() -> Result<bool>,
    ) -> Result<Option<Answer>> {
        self.vim(cmd, Some(settled))
    }

    /// Refuse a snapshot over a chain [`MAX_CHAIN_BEFORE_OURS`] deep, saying the way out.
    fn check_chain(
        &self,
        id: u32,
        ds_path: &str,
        snaps: &[Snapshot],
        taking: Taking,
    ) -> Result<()> {
        let depth = chain_depth(snaps);
        if depth < MAX_CHAIN_BEFORE_OURS {
            return Ok(());
        }
        Err(limit_error(self.name(), id, ds_path, depth, taking))
    }

    /// Take the snapshot `name` (no memory, not quiesced) over the VM's snapshots `snaps` (as
    /// just listed), and wait until ESXi lists it; or nothing, when ESXi says that the VM has
    /// not changed since its last snapshot (said).
    pub fn take_snapshot(
        &self,
        id: u32,
        ds_path: &str,
        name: &str,
        snaps: &[Snapshot],
        taking: Taking,
    ) -> Result<Created> {
        self.check_chain(id, ds_path, snaps, taking)?;
        let cmd = format!(
            "vim-cmd vmsvc/snapshot.create {id} {} {} 0 0",
            quote(name),
            quote("taken by virt-vmdkimport: the base disks are copied to KVM from under it")
        );
        let host = self.name();
        if self.dry_run {
            if self.say {
                log::info!("{host}: would run {cmd}");
            }
            return Ok(Created::Taken);
        }
        let listed = || -> Result<bool> { Ok(self.snapshots(id)?.iter().any(|s| s.name == name)) };
        if let Some(a) = self.vim(&cmd, Some(&listed))? {
            let all = a.all();
            if all.contains(vimcmd::LIMIT_TEXT) {
                return Err(limit_error(host, id, ds_path, chain_depth(snaps), taking)
                    .context(a.failure(host, &cmd)));
            }
            ensure!(
                a.code == Some(0) || all.contains(vimcmd::UNCHANGED_TEXT),
                "{}",
                a.failure(host, &cmd)
            );
            if vimcmd::check_created(&cmd, &all)? == Created::Unchanged {
                let said = all.lines().find(|l| l.contains(vimcmd::UNCHANGED_TEXT));
                log::info!(
                    "{ds_path}: ESXi took no snapshot: the VM has not changed since its last snapshot ({:?}); the chain as that snapshot froze it is used",
                    said.unwrap_or_default().trim()
                );
                return Ok(Created::Unchanged);
            }
        }
        let waited = Instant::now();
        while !listed()? {
            ensure!(
                waited.elapsed() < SNAPSHOT_WAIT,
                "{host}: `{cmd}` said `Create Snapshot:` but `vim-cmd vmsvc/snapshot.get {id}` has not listed '{name}' after {}s",
                SNAPSHOT_WAIT.as_secs()
            );
            crate::interrupt::check()?;
            std::thread::sleep(Duration::from_secs(1));
        }
        log::info!("{ds_path}: took snapshot '{name}' on {host}");
        Ok(Created::Taken)
    }

    /// Remove snapshot `snap` of VM `id` (the ESXi 5.0+ form, by id), confirmed by
    /// `snapshot.get` no longer listing it: what `snapshot.remove` prints after `Remove
    /// Snapshot:` (the tree left, on 5.5) is not read.
    pub fn remove_snapshot(&self, id: u32, snap: u32) -> Result<()> {
        let cmd = format!("vim-cmd vmsvc/snapshot.remove {id} {snap}");
        let gone =
            || -> Result<bool> { Ok(!self.snapshots(id)?.iter().any(|s| s.id == Some(snap))) };
        let Some(a) = self.vim(&cmd, Some(&gone))? else {
            return Ok(());
        };
        if a.code != Some(0) || !vimcmd::removal_started(&a.stdout) {
            // Refused, or gone already (NotFound): snapshot.get tells which.
            return match gone()? {
                true => Ok(()),
                false => Err(anyhow!("{}", a.failure(self.name(), &cmd))),
            };
        }
        let waited = Instant::now();
        while !gone()? {
            ensure!(
                waited.elapsed() < REMOVE_WAIT,
                "`{cmd}` on {} said `Remove Snapshot:`, but `vim-cmd vmsvc/snapshot.get {id}` still lists snapshot {snap} after {}s: ESXi may still be consolidating its delta; look again later",
                self.name(),
                REMOVE_WAIT.as_secs()
            );
            crate::interrupt::check()?;
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok(())
    }

    /// Read the first sector of a base, so a locked one is refused before anything is made.
    pub fn probe(&self, path: &str, power: Power) -> Result<()> {
        let cmd = format!("dd if={} bs=512 count=1 of=/dev/null", quote(path));
        let a = self.ssh.run(&cmd)?;
        if a.code == Some(0) {
            return Ok(());
        }
        let what = format!("{}:{path}", self.name());
        if ssh::is_lock_error(&a.stderr) {
            bail!(
                "{} (the VM is {})",
                ssh::locked_message(&what, &a.stderr),
                match power {
                    Power::On => "powered on",
                    Power::Off => "powered off",
                    Power::Suspended => "suspended",
                }
            );
        }
        bail!("{}", a.failure(self.name(), &cmd))
    }
}

/// Why no snapshot is taken over a chain `depth` deep, and the way out.
fn limit_error(host: &str, id: u32, ds_path: &str, depth: usize, taking: Taking) -> anyhow::Error {
    let consolidate = format!(
        "consolidate the VM's snapshots on ESXi (`vim-cmd vmsvc/snapshot.removeall {id}`, which merges them into the base disks)"
    );
    let way_out = match taking {
        Taking::StageOne => format!("{consolidate}, then run stage 1 again"),
        Taking::Sync => format!(
            "cut over now (--cutover takes no snapshot), or {consolidate} and start over: stage 1 with --reupload-base"
        ),
    };
    anyhow!(
        "{ds_path}: its snapshot chain on {host} is {depth} snapshots deep; ESXi allows {ESXI_MAX_CHAIN} (32 by some accounts) and this tool takes no snapshot over a chain {MAX_CHAIN_BEFORE_OURS} deep, two below that: none was taken; {way_out}"
    )
}

/// `/vmfs/volumes/<datastore>/<dir>/<file>`: what comes before `/vmfs/volumes` (nothing on
/// ESXi), the datastore (a name or a UUID) and the path in it.
pub fn vmfs_parts(path: &str) -> Result<(&str, &str, &str)> {
    const ROOT: &str = "/vmfs/volumes/";
    let at = path
        .rfind(ROOT)
        .ok_or_else(|| anyhow!("{path}: not under /vmfs/volumes/<datastore>/"))?;
    match path[at + ROOT.len()..].split_once('/') {
        Some((ds, file)) if !ds.is_empty() && !file.is_empty() => Ok((&path[..at], ds, file)),
        _ => bail!("{path}: not under /vmfs/volumes/<datastore>/<folder>/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmfs_paths_give_the_datastore_and_the_path_in_it() {
        assert_eq!(
            vmfs_parts("/vmfs/volumes/datastore1/web 1/web 1.vmx").unwrap(),
            ("", "datastore1", "web 1/web 1.vmx")
        );
        assert_eq!(
            vmfs_parts("/tmp/x/vmfs/volumes/5ae37d98-00f6a405-5382-6c416a1ecb66/w/w.vmx").unwrap(),
            ("/tmp/x", "5ae37d98-00f6a405-5382-6c416a1ecb66", "w/w.vmx")
        );
        assert!(vmfs_parts("/home/x/web.vmx").is_err());
        assert!(vmfs_parts("/vmfs/volumes/ds1").is_err());
    }

    fn chain(n: usize) -> Vec<Snapshot> {
        (0..n)
            .map(|d| Snapshot {
                name: format!("s{d}"),
                id: Some(d as u32 + 1),
                depth: d,
                description: String::new(),
            })
            .collect()
    }

    #[test]
    fn the_chain_stops_two_below_esxis_limit_with_the_way_out() {
        assert_eq!(chain_depth(&[]), 0);
        assert_eq!(chain_depth(&chain(28)), 28);
        assert_eq!(MAX_CHAIN_BEFORE_OURS, 29);
        let e = limit_error("esx1", 7, "[ds] w/w.vmx", 29, Taking::Sync).to_string();
        for want in [
            "29 snapshots deep",
            "ESXi allows 31",
            "--cutover",
            "vim-cmd vmsvc/snapshot.removeall 7",
            "--reupload-base",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = limit_error("esx1", 7, "[ds] w/w.vmx", 30, Taking::StageOne).to_string();
        assert!(
            !e.contains("--cutover") && e.contains("run stage 1 again"),
            "{e}"
        );
    }
}
