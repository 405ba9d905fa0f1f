//! The import with its inputs open ([`Request::open`]): the base image, the parsed `.vmx`, the bases on ESXi; and each disk's inputs ([`DiskInput`]) as the stages take them.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};

use super::plan::{BaseArg, ImportPlan, VmxArg};
use super::{esxone, guards};
use crate::image_read::ImageRead;
use crate::vmdk::{self, BaseImage};
use crate::vmx::{self, VmxConfig};

/// Where stage 1 reads the base image from.
pub(super) enum BaseInput {
    Image(BaseImage),
    Stdin {
        capacity: u64,
    },
    /// On an ESXi host, streamed over ssh.
    Remote(crate::esx::RemoteBase),
}

impl BaseInput {
    pub(super) fn capacity(&self) -> u64 {
        match self {
            BaseInput::Image(b) => b.capacity,
            BaseInput::Stdin { capacity } => *capacity,
            BaseInput::Remote(r) => r.capacity,
        }
    }

    pub(super) fn cid(&self) -> Option<u32> {
        match self {
            BaseInput::Image(b) => b.cid,
            BaseInput::Stdin { .. } => None,
            BaseInput::Remote(r) => r.cid,
        }
    }

    pub(super) fn name(&self) -> String {
        match self {
            BaseInput::Image(b) => b.path.display().to_string(),
            BaseInput::Stdin { .. } => "standard input".to_string(),
            BaseInput::Remote(r) => r.name(),
        }
    }

    /// Where a later run can find the base again: its absolute path (none for a pipe).
    pub(super) fn location(&self) -> Option<String> {
        match self {
            BaseInput::Image(b) => Some(
                std::fs::canonicalize(&b.path)
                    .unwrap_or_else(|_| b.path.clone())
                    .display()
                    .to_string(),
            ),
            BaseInput::Stdin { .. } => None,
            BaseInput::Remote(r) => Some(r.name()),
        }
    }

    pub(super) fn reader(&self) -> Result<Box<dyn ImageRead + Send>> {
        match self {
            BaseInput::Image(b) => b
                .reader()
                .with_context(|| format!("{}: opening for reading", b.path.display())),
            BaseInput::Stdin { .. } => Ok(Box::new(std::io::stdin())),
            // Read in ranges side by side: stage 1's upload_base.
            BaseInput::Remote(r) => bail!("{}: read in ranges, not as one stream", r.name()),
        }
    }
}

/// The import with its inputs open: the base image, the parsed `.vmx`, the bases on ESXi.
/// Reads the plan's fields through `Deref`.
pub struct Request {
    plan: ImportPlan,
    base: Option<BaseInput>,
    pub(super) vmx: Option<(PathBuf, VmxConfig)>,
    /// With `--vmx ssh://...`: every disk's base on the ESXi host.
    remote: Option<Vec<crate::esx::RemoteBase>>,
}

impl std::ops::Deref for Request {
    type Target = ImportPlan;
    fn deref(&self) -> &ImportPlan {
        &self.plan
    }
}

impl Request {
    /// Open the plan's inputs, in an order that leaves nothing behind when one is refused: local
    /// files first; for `--vmx ssh://`, every check of the libvirt side and of the VM's `.vmx`
    /// before the migration snapshot is taken.
    pub fn open(plan: ImportPlan) -> Result<Request> {
        let base = match &plan.base_arg {
            Some(BaseArg::Stdin { capacity }) => Some(BaseInput::Stdin {
                capacity: *capacity,
            }),
            Some(BaseArg::File { path, capacity }) => {
                let b = BaseImage::open(path, &plan.open)?;
                if let Some(c) = capacity {
                    ensure!(
                        *c == b.capacity,
                        "--capacity {c} differs from {}'s capacity {}",
                        path.display(),
                        b.capacity
                    );
                }
                Some(BaseInput::Image(b))
            }
            None => None,
        };
        let (vmx, remote) = match &plan.vmx_arg {
            Some(VmxArg::Local(p)) => {
                let vmx = vmx::parse_vmx(p)?;
                // What the domain will not get (CD-ROMs, ignored devices) is said, not dropped silently.
                for note in &vmx.notes {
                    crate::note!("{}: {note}", p.display());
                }
                plan.naming.check(plan.os, Some(&vmx))?;
                (Some((p.clone(), vmx)), None)
            }
            Some(VmxArg::Esx(p)) => {
                let (vmx, bases) = esxone::open_stage_one(&plan, p)?;
                (Some((p.clone(), vmx)), Some(bases))
            }
            None => (None, None),
        };
        Ok(Request {
            plan,
            base,
            vmx,
            remote,
        })
    }
}

impl Request {
    /// Whether stage 1's base was given (`--flat`), until [`take_disks`] takes it.
    pub(super) fn has_base(&self) -> bool {
        self.base.is_some()
    }
}

/// One disk of the import: where its base comes from (stage 1) and its deltas (stage 2).
pub(super) struct DiskInput {
    pub(super) base: Option<BaseInput>,
    pub(super) deltas: Vec<PathBuf>,
    /// An independent disk copied whole (it is in no snapshot).
    pub(super) copy_whole: bool,
}

/// Every disk's inputs, taken out of the request: the bases on ESXi, the `.vmx`'s disks (each
/// chain resolved to its base, which is opened), or the one disk of `--flat` and the deltas.
pub(super) fn take_disks(req: &mut Request) -> Result<Vec<DiskInput>> {
    if let Some(bases) = req.remote.take() {
        return Ok(bases
            .into_iter()
            .map(|b| DiskInput {
                base: Some(BaseInput::Remote(b)),
                deltas: Vec::new(),
                copy_whole: false,
            })
            .collect());
    }
    let Some((vmx_path, vmx)) = &req.vmx else {
        return Ok(vec![DiskInput {
            base: req.base.take(),
            deltas: req.deltas.clone(),
            copy_whole: false,
        }]);
    };
    ensure!(
        !vmx.disks.is_empty(),
        "{}: the VM has no disks",
        vmx_path.display()
    );
    let mut plans = Vec::new();
    for disk in &vmx.disks {
        if disk.independent && !req.copy_independent {
            bail!(
                "{}: disk {} ({}) is independent: it is in no snapshot, so no delta can bring it up to date; \
                 give --copy-independent to copy it whole after the VM is shut down",
                vmx_path.display(),
                disk.slot(),
                disk.file_name.display()
            );
        }
        guards::vmx_disk_inside(vmx_path, disk, req.open.allow_outside_paths)?;
        let slot = || format!("{}: disk {}", vmx_path.display(), disk.slot());
        let resolved = vmdk::resolve_chain(&disk.file_name, &req.open).with_context(slot)?;
        let base = BaseImage::open(&resolved.base, &req.open).with_context(slot)?;
        plans.push(DiskInput {
            base: Some(BaseInput::Image(base)),
            deltas: resolved.deltas,
            copy_whole: disk.independent,
        });
    }
    Ok(plans)
}
