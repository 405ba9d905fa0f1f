//! Where layers meet: a child's parentCID against its parent's CID and its capacity against its parent's, in one place for every way a chain is put together.
//!
//! The links between deltas are checked as a chain is opened; the link between the oldest
//! delta and what it is applied over by `Chain::check_parent`, which every caller names (a
//! `Parent`); the walk down parentFileNameHint by [`resolve_chain`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::descriptor::Descriptor;
use super::error::{show, Error};
use super::extents::LayerKind;
use super::hosted;
use super::names::{self, OpenOptions};
use super::sniff::{sniff_kind, Sniffed};

/// Deepest chain accepted: ESXi allows 32 snapshots per disk; a deeper chain is a loop or junk.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// What is known about one delta layer.
#[derive(Debug, Clone)]
pub struct LayerInfo {
    /// The path as given (descriptor, or bare extent).
    pub path: PathBuf,
    pub kind: LayerKind,
    pub cid: Option<u32>,
    pub parent_cid: Option<u32>,
    pub parent_hint: Option<String>,
    /// Virtual size in bytes.
    pub capacity: u64,
}

/// What a disk is known by where a chain meets it: its CID (`None`: it has none, as a raw
/// image) and its capacity in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskId {
    pub cid: Option<u32>,
    pub capacity: u64,
}

impl DiskId {
    /// Whether `found` is the disk recorded as `self`: the same capacity, and the same CID
    /// unless the recorded one is unknown (a raw image or standard input has none).
    pub fn admits(&self, found: DiskId) -> bool {
        self.capacity == found.capacity && (self.cid.is_none() || self.cid == found.cid)
    }
}

/// What is known of the link between the oldest delta and its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentLink {
    /// The parent is here and its CID is the delta's parentCID.
    Checked(PathBuf),
    /// The CIDs could not be compared, and why.
    NotChecked(String),
}

/// A delta must sit on the one before it: the same capacity, and its parentCID the parent's
/// CID where both are known (a bare extent has neither).
pub(crate) fn check_link(parent: &LayerInfo, child: &LayerInfo) -> Result<(), Error> {
    check_capacity(
        child,
        parent.capacity,
        &format!("its parent {}", show(&parent.path)),
    )?;
    match (child.parent_cid, parent.cid) {
        (Some(pc), Some(cid)) => check_cid(&child.path, pc, &parent.path, Some(cid)),
        _ => Ok(()),
    }
}

/// `child` must have the `capacity` of what it sits on (`there`, for the message).
pub(crate) fn check_capacity(child: &LayerInfo, capacity: u64, there: &str) -> Result<(), Error> {
    if child.capacity == capacity {
        return Ok(());
    }
    Err(Error::chain(format!(
        "{}: capacity {} bytes differs from {there} ({capacity} bytes)",
        show(&child.path),
        child.capacity
    )))
}

/// `child`'s parentCID `pc` must be the CID of `parent`.
pub(crate) fn check_cid(
    child: &Path,
    pc: u32,
    parent: &Path,
    cid: Option<u32>,
) -> Result<(), Error> {
    if cid == Some(pc) {
        return Ok(());
    }
    Err(Error::chain(format!(
        "{}: parentCID {pc:08x} does not match the CID {} of its parent {}: the delta belongs to another disk or the parent changed",
        show(child),
        cid.map_or("(none)".into(), |c| format!("{c:08x}")),
        show(parent)
    )))
}

/// [`Parent::Hinted`]: the parent `child`'s hint names, when it is on this host.
pub(crate) fn hinted_parent(child: &LayerInfo, opts: &OpenOptions) -> Result<ParentLink, Error> {
    let (Some(pc), Some(hint)) = (child.parent_cid, child.parent_hint.as_deref()) else {
        return Ok(ParentLink::NotChecked(
            "it has no descriptor naming a parent (parentCID and parentFileNameHint)".into(),
        ));
    };
    let folder = match child.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.join(hint).exists() {
        return Ok(ParentLink::NotChecked(format!(
            "its parent {:?} is not on this host",
            show(Path::new(hint))
        )));
    }
    let parent = match names::resolve(&folder, hint, &child.path, opts.allow_outside_paths) {
        Ok(p) => p,
        Err(e) => return Ok(ParentLink::NotChecked(e.to_string())),
    };
    let Some(cid) = read_meta(&parent)?.cid else {
        return Ok(ParentLink::NotChecked(format!(
            "its parent {} has no CID",
            show(&parent)
        )));
    };
    check_cid(&child.path, pc, &parent, Some(cid))?;
    Ok(ParentLink::Checked(parent))
}

/// A chain found by walking parentFileNameHint from a top descriptor.
#[derive(Debug, Clone)]
pub struct ResolvedChain {
    /// The base's descriptor (or hosted sparse file).
    pub base: PathBuf,
    /// Deltas, oldest first; the top is last. Empty when the top is the base.
    pub deltas: Vec<PathBuf>,
}

/// CID, parentCID, parent hint and folder of a descriptor or KDMV file, for the chain walk.
struct Meta {
    cid: Option<u32>,
    parent_cid: Option<u32>,
    hint: Option<String>,
    folder: PathBuf,
}

fn read_meta(path: &Path) -> Result<Meta, Error> {
    let d = match sniff_kind(path)? {
        Sniffed::Descriptor => Descriptor::read(path)?,
        Sniffed::Hosted => hosted::open(names::open_data(path, false)?)?
            .1
            .ok_or_else(|| {
                Error::invalid(path, "hosted sparse file without an embedded descriptor")
            })?,
        Sniffed::Cowd | Sniffed::SeSparse => {
            return Err(Error::invalid(
                path,
                "a bare delta extent: give the descriptor that names it to follow the chain",
            ))
        }
        Sniffed::Other => return Err(Error::invalid(path, "not a VMware descriptor")),
    };
    Ok(Meta {
        cid: d.cid,
        parent_cid: d.parent_cid,
        hint: d.parent_hint.clone(),
        folder: d.folder(),
    })
}

/// Walk from a top descriptor (what a .vmx fileName names after snapshots) down
/// parentFileNameHint to the base, checking each parentCID against its parent's CID; returns
/// the base and the deltas oldest first.
pub fn resolve_chain(top: &Path, opts: &OpenOptions) -> Result<ResolvedChain, Error> {
    let mut deltas = Vec::new();
    let mut seen = HashSet::new();
    let mut current = top.to_path_buf();
    let mut expected_cid: Option<(u32, PathBuf)> = None;
    loop {
        let real = current
            .canonicalize()
            .map_err(|e| Error::io(&current, "opening", e))?;
        if !seen.insert(real) {
            return Err(Error::chain(format!(
                "{}: the chain loops back to {}",
                show(top),
                show(&current)
            )));
        }
        let meta = read_meta(&current)?;
        if let Some((want, child)) = &expected_cid {
            check_cid(child, *want, &current, meta.cid)?;
        }
        let Some(parent_cid) = meta.parent_cid else {
            deltas.reverse();
            return Ok(ResolvedChain {
                base: current,
                deltas,
            });
        };
        if deltas.len() >= MAX_CHAIN_DEPTH {
            return Err(Error::chain(format!(
                "{}: chain deeper than the maximum of {MAX_CHAIN_DEPTH} deltas",
                show(top)
            )));
        }
        let hint = meta
            .hint
            .ok_or_else(|| Error::invalid(&current, "has a parentCID but no parentFileNameHint"))?;
        let parent = names::resolve(&meta.folder, &hint, &current, opts.allow_outside_paths)?;
        deltas.push(current.clone());
        expected_cid = Some((parent_cid, current));
        current = parent;
    }
}
