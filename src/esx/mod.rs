//! Stage 1 straight from an ESXi host over SSH: the VM found by its .vmx path, a migration snapshot taken, each base read from the host in ranges side by side.

mod files;
pub mod host;
pub mod probe;
pub mod remote;
pub mod ssh;
pub mod transfer;
pub mod vimcmd;
pub mod vm;

use anyhow::{bail, Context, Result};
use std::path::Path;

use crate::state;
use crate::vmx::VmxConfig;
use host::Taking;

pub(crate) use files::{read_vmx, refuse_independent, remote_join, walk_chain, walk_to_base};
pub use files::{RemoteBase, RemoteChain, RemoteDelta, SNAPSHOT_NAME};

/// Whether a `--vmx` value is an `ssh://` URL.
pub fn is_ssh(p: &Path) -> bool {
    p.to_str().is_some_and(|s| s.starts_with("ssh://"))
}

/// What stage 1 takes from the host: the .vmx and every disk's base.
pub struct StageOne {
    pub vmx: VmxConfig,
    pub bases: Vec<RemoteBase>,
}

/// Refuse a run that would be stage 2 (every base of the domain uploaded): not built over
/// ssh:// yet.
pub fn refuse_stage_two(conn: &crate::libvirt::Conn, domain: &str) -> Result<()> {
    let Some(dom) = conn.domain(domain)? else {
        return Ok(());
    };
    let Some(st) = state::metadata::read(&dom)? else {
        return Ok(());
    };
    if st.every_base_uploaded() {
        bail!(
            "domain '{domain}': every base is uploaded: stage 1 is done; add --sync for a pre-copy round while the VM runs, or --cutover to shut it down on ESXi and start the domain here"
        );
    }
    Ok(())
}

/// Find the VM, snapshot it unless it has one of ours, and read every disk's chain down to
/// its base. With `dry_run` nothing changes on the host (the snapshot is only said, the bases
/// are not probed); with `say` every ESXi command is printed. `before_snapshot` gets the .vmx
/// as it is before the snapshot: the caller's last word, so that what it refuses leaves
/// nothing on ESXi.
pub fn prepare_stage_one(
    url: &str,
    dry_run: bool,
    say: bool,
    outside: bool,
    transfer: transfer::TransferOptions,
    before_snapshot: impl FnOnce(&VmxConfig) -> Result<()>,
) -> Result<StageOne> {
    let vm = vm::Vm::find(url, dry_run, say, outside, transfer)?;
    let (ssh, url, id, ds_path) = (&vm.ssh, vm.url(), vm.id, &vm.ds_path);
    let host = vm.host();
    let power = host.power(id)?;
    // Disks this cannot take are refused before the snapshot: nothing changes on ESXi then.
    let before = read_vmx(ssh, url)?;
    refuse_independent(&before, url)?;
    before_snapshot(&before)?;
    let snaps = host.snapshots(id)?;
    match snaps.iter().find(|s| s.name.starts_with(SNAPSHOT_NAME)) {
        Some(s) => log::info!("{ds_path}: keeps its migration snapshot '{}'", s.name),
        None => {
            let name = format!("{SNAPSHOT_NAME}-{}", snaps.len() + 1);
            // Unchanged since its last snapshot: that one froze the bases already (or, with
            // none, the VM is off or suspended and its bases are read as they are; a locked
            // one is refused below).
            host.take_snapshot(id, ds_path, &name, &snaps, Taking::StageOne)?;
        }
    }
    let name = url.with_path(&url.path);
    // Read again: the snapshot rewrote the disks' file names.
    let cfg = read_vmx(ssh, url)?;
    for note in &cfg.notes {
        crate::note!("{name}: {note}");
    }
    refuse_independent(&cfg, url)?;
    let mut bases = Vec::new();
    for disk in &cfg.disks {
        let top = remote_join(
            ssh::folder(&url.path),
            &disk.file_name.to_string_lossy(),
            outside,
        )?;
        let base = walk_to_base(&vm.transfer, &top, outside)
            .with_context(|| format!("{name}: disk {}", disk.slot()))?;
        if !dry_run {
            host.probe(&base.path, power)?;
        } else if say {
            for r in base.ranges() {
                log::info!(
                    "{}: would run {} (over {}, written into disk {}'s volume at byte {})",
                    url.host,
                    r.dd(&base.path),
                    vm.transfer.name(),
                    disk.slot(),
                    r.offset()
                );
            }
        }
        bases.push(base);
    }
    Ok(StageOne { vmx: cfg, bases })
}
