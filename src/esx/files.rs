//! The VM's files on the ESXi host: its .vmx read and checked, every disk's snapshot chain walked down to its base.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::path::Path;
use std::sync::Arc;

use super::ssh::{self, Ssh, SshUrl};
use super::transfer::{self, Range, RangeRead, Transfer};
use crate::vmdk::descriptor::{ExtentKind, MAX_DESCRIPTOR_BYTES};
use crate::vmdk::Descriptor;
use crate::vmx::{self, VmxConfig};
/// Snapshots whose name starts with this are the tool's own.
pub const SNAPSHOT_NAME: &str = "virt-vmdkimport";
/// Longest snapshot chain walked (ESXi allows 32 snapshots).
const MAX_CHAIN: usize = 64;

/// Block size of the `dd` reading a base's ranges.
const BASE_BS: u64 = 4 << 20;

/// A base disk on the ESXi host: one flat extent, read as ranges side by side.
pub struct RemoteBase {
    transfer: Arc<Transfer>,
    /// The flat extent's path on the host.
    pub path: String,
    pub capacity: u64,
    pub cid: Option<u32>,
}

impl RemoteBase {
    /// `ssh://host/path-flat.vmdk`, for messages and the import state.
    pub fn name(&self) -> String {
        self.transfer.ssh().url().with_path(&self.path)
    }

    /// The extent cut into one range per connection; it must be as long as the disk.
    pub fn ranges(&self) -> Vec<Range> {
        transfer::split_to_end(self.capacity, BASE_BS, self.transfer.connections())
    }

    /// Range `r` of the extent, read by the run's transport.
    pub fn read(&self, r: Range) -> Result<RangeRead> {
        self.transfer.read(&self.path, r)
    }

    /// The transport the base is read by.
    pub fn transfer(&self) -> &Transfer {
        &self.transfer
    }
}

/// The .vmx as the host has it now.
pub(crate) fn read_vmx(ssh: &Ssh, url: &SshUrl) -> Result<VmxConfig> {
    let name = url.with_path(&url.path);
    let text = read_vmx_text(ssh, url)?;
    let cfg = vmx::parse_vmx_str(&text, &name)?;
    ensure!(!cfg.disks.is_empty(), "{name}: the VM has no disks");
    Ok(cfg)
}

/// The .vmx's bytes as the host has them now, refused when too large for a .vmx.
pub(crate) fn read_vmx_text(ssh: &Ssh, url: &SshUrl) -> Result<Vec<u8>> {
    let (text, more) = ssh.read_file(&url.path, vmx::MAX_VMX_BYTES)?;
    ensure!(
        !more,
        "{}: larger than {} bytes: not a .vmx",
        url.with_path(&url.path),
        vmx::MAX_VMX_BYTES
    );
    Ok(text)
}

/// Independent disks are in no snapshot and stay locked while the VM runs: refused.
pub(crate) fn refuse_independent(cfg: &VmxConfig, url: &SshUrl) -> Result<()> {
    match cfg.disks.iter().find(|d| d.independent) {
        Some(disk) => bail!(
            "{}: disk {} ({}) is independent: it is in no snapshot and stays locked while the VM runs; \
             independent disks over ssh:// are not built yet (copy the VM's files and import the local .vmx)",
            url.with_path(&url.path),
            disk.slot(),
            disk.file_name.display()
        ),
        None => Ok(()),
    }
}

/// `name` (relative to `folder`, or absolute) as one path on the host. Names that leave the
/// folder (absolute, `..`) are followed only with `outside` (--allow-outside-paths), as for
/// local files: a hostile descriptor must not make the tool read another file of the host.
pub(crate) fn remote_join(folder: &str, name: &str, outside: bool) -> Result<String> {
    let leaves = name.starts_with('/') || name.split('/').any(|c| c == "..");
    ensure!(
        outside || !leaves,
        "{name:?} (named in {folder}) is outside that folder: give --allow-outside-paths to follow it"
    );
    if name.starts_with('/') {
        Ok(name.to_string())
    } else {
        Ok(format!("{}/{name}", folder.trim_end_matches('/')))
    }
}

/// A delta of a disk's chain on the host: its descriptor, read and parsed.
#[derive(Debug, Clone)]
pub struct RemoteDelta {
    /// The descriptor's path on the host.
    pub path: String,
    /// `ssh://host/path`, for messages and the import state.
    pub shown: String,
    pub descriptor: Descriptor,
}

/// One disk's chain on the host: its base, and its deltas oldest first (the top last).
pub struct RemoteChain {
    pub base: RemoteBase,
    pub deltas: Vec<RemoteDelta>,
}

/// Follow `parentFileNameHint` from the descriptor `top` down to the base, checking each
/// parent's CID against its child's parentCID; the base must be one flat extent.
pub(crate) fn walk_to_base(t: &Arc<Transfer>, top: &str, outside: bool) -> Result<RemoteBase> {
    Ok(walk_chain(t, top, outside)?.base)
}

/// [`walk_to_base`], keeping every delta on the way.
pub(crate) fn walk_chain(t: &Arc<Transfer>, top: &str, outside: bool) -> Result<RemoteChain> {
    let ssh = t.ssh();
    let mut path = top.to_string();
    let mut want_cid: Option<(u32, String)> = None;
    let mut deltas = Vec::new();
    for _ in 0..MAX_CHAIN {
        let (text, more) = ssh.read_file(&path, MAX_DESCRIPTOR_BYTES)?;
        let shown = ssh.url().with_path(&path);
        ensure!(
            !more,
            "{shown}: larger than {MAX_DESCRIPTOR_BYTES} bytes: not a descriptor"
        );
        let d = Descriptor::parse(&text, Path::new(&shown))?;
        if let Some((pcid, child)) = &want_cid {
            ensure!(
                d.cid == Some(*pcid),
                "{shown}: its CID {} is not the parentCID {pcid:08x} of its child {child}: the chain is broken",
                d.cid.map_or("(none)".into(), |c| format!("{c:08x}"))
            );
        }
        let Some(pcid) = d.parent_cid else {
            deltas.reverse();
            return Ok(RemoteChain {
                base: flat_base(t, &path, &shown, &d, outside)?,
                deltas,
            });
        };
        let hint = d
            .parent_hint
            .clone()
            .ok_or_else(|| anyhow!("{shown}: has a parentCID but no parentFileNameHint"))?;
        want_cid = Some((pcid, shown.clone()));
        let parent = remote_join(ssh::folder(&path), &hint, outside)?;
        deltas.push(RemoteDelta {
            path,
            shown,
            descriptor: d,
        });
        path = parent;
    }
    bail!("{top}: more than {MAX_CHAIN} descriptors above the base")
}

fn flat_base(
    t: &Arc<Transfer>,
    path: &str,
    shown: &str,
    d: &Descriptor,
    outside: bool,
) -> Result<RemoteBase> {
    let capacity = d.capacity()?;
    match d.extents.as_slice() {
        [e] if matches!(e.kind, ExtentKind::Flat | ExtentKind::Vmfs) && e.offset == 0 => {
            let file = e.file.as_deref().expect("flat extents name a file");
            Ok(RemoteBase {
                transfer: t.clone(),
                path: remote_join(ssh::folder(path), file, outside)
                    .with_context(|| shown.to_string())?,
                capacity,
                cid: d.cid,
            })
        }
        _ => bail!(
            "{shown}: the base is not one flat extent (createType {}): only flat bases can be streamed over ssh:// for now",
            d.create_type.as_deref().unwrap_or("unknown")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_leaving_the_folder_need_allow_outside_paths() {
        let j = |n: &str, o| remote_join("/vmfs/volumes/ds/vm", n, o);
        assert_eq!(
            j("vm-flat.vmdk", false).unwrap(),
            "/vmfs/volumes/ds/vm/vm-flat.vmdk"
        );
        assert!(j("/etc/shadow", false).is_err());
        assert!(j("../other/x.vmdk", false).is_err());
        assert_eq!(
            j("/vmfs/volumes/ds2/x.vmdk", true).unwrap(),
            "/vmfs/volumes/ds2/x.vmdk"
        );
    }
}
