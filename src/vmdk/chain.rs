//! A chain of delta layers, and the one view every format feeds: changed pieces, newest layer wins.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::base::BaseImage;
use super::cowd;
use super::descriptor::Descriptor;
use super::error::{show, Error};
use super::extents::{Extent, Extents, LayerKind, Role, Walk};
use super::grains::GrainMap;
use super::hosted;
use super::links::{
    check_capacity, check_cid, check_link, hinted_parent, LayerInfo, ParentLink, MAX_CHAIN_DEPTH,
};
use super::names::{self, ExtentOpener, OpenOptions};
use super::runs::{Piece, Source};
use super::sesparse;
use super::sniff::{sniff_kind, Sniffed};

struct Layer {
    info: LayerInfo,
    extents: Extents,
}

/// Delta layers, oldest first, checked to belong together.
pub struct Chain {
    layers: Vec<Layer>,
    infos: Vec<LayerInfo>,
    capacity: u64,
}

fn open_layer(path: &Path, opts: &OpenOptions) -> Result<Layer, Error> {
    let bare = |kind, map: GrainMap, d: Option<Descriptor>| Layer {
        info: LayerInfo {
            path: path.to_path_buf(),
            kind,
            cid: d.as_ref().and_then(|d| d.cid),
            parent_cid: d.as_ref().and_then(|d| d.parent_cid),
            parent_hint: d.and_then(|d| d.parent_hint),
            capacity: map.capacity,
        },
        extents: Extents::one(map.capacity, Extent::Sparse(Arc::new(map))),
    };
    match sniff_kind(path)? {
        Sniffed::Cowd => Ok(bare(
            LayerKind::Cowd,
            cowd::open(names::open_data(path, false)?)?,
            None,
        )),
        Sniffed::SeSparse => Ok(bare(
            LayerKind::SeSparse,
            sesparse::open(names::open_data(path, false)?)?,
            None,
        )),
        Sniffed::Hosted => {
            let (map, d) = hosted::open(names::open_data(path, false)?)?;
            Ok(bare(LayerKind::Hosted, map, d))
        }
        Sniffed::Descriptor => layer_from_descriptor(
            Descriptor::read(path)?,
            &mut |d: &Descriptor, name: &str| names::open_named(d, name, opts.allow_outside_paths),
        ),
        Sniffed::Other => Err(Error::invalid(
            path,
            "not a VMware delta: no COWD, SEsparse or KDMV magic, and not a descriptor",
        )),
    }
}

fn layer_from_descriptor(d: Descriptor, open_file: &mut ExtentOpener) -> Result<Layer, Error> {
    if let Some(t) = &d.create_type {
        if t.eq_ignore_ascii_case("streamOptimized") {
            return Err(Error::unsupported(
                &d.path,
                "createType streamOptimized (compressed export): convert it with qemu-img first",
            ));
        }
    }
    let (extents, kind) = Extents::open(&d, Role::Delta, open_file)?;
    Ok(Layer {
        info: LayerInfo {
            path: d.path.clone(),
            kind: kind.expect("a delta's extents are sparse"),
            cid: d.cid,
            parent_cid: d.parent_cid,
            parent_hint: d.parent_hint.clone(),
            capacity: extents.capacity(),
        },
        extents,
    })
}

impl Chain {
    /// Deltas as given on a command line, oldest first: each is a child descriptor
    /// (vm-000001.vmdk, text), a bare COWD/SEsparse extent, or a KDMV file. Checks
    /// consecutive parentCID==CID where both are known, and equal capacities.
    pub fn open_deltas(paths: &[PathBuf], opts: &OpenOptions) -> Result<Chain, Error> {
        if paths.is_empty() {
            return Err(Error::chain("no deltas given"));
        }
        if paths.len() > MAX_CHAIN_DEPTH {
            return Err(Error::chain(format!(
                "{} deltas: more than the maximum chain depth of {MAX_CHAIN_DEPTH}",
                paths.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut layers: Vec<Layer> = Vec::new();
        for path in paths {
            let real = path
                .canonicalize()
                .map_err(|e| Error::io(path, "opening", e))?;
            if !seen.insert(real) {
                return Err(Error::chain(format!(
                    "{}: given twice: a chain cannot contain a delta twice",
                    show(path)
                )));
            }
            let layer = open_layer(path, opts)?;
            if let Some(prev) = layers.last() {
                check_link(&prev.info, &layer.info)?;
            }
            layers.push(layer);
        }
        Ok(Chain::assemble(layers))
    }

    /// Deltas given as parsed descriptors, oldest first, whose extent files `open` provides
    /// (files read from elsewhere than this host); checked as [`Chain::open_deltas`] checks.
    pub fn from_descriptors(
        descriptors: Vec<Descriptor>,
        open: &mut ExtentOpener,
    ) -> Result<Chain, Error> {
        if descriptors.is_empty() {
            return Err(Error::chain("no deltas given"));
        }
        let mut layers: Vec<Layer> = Vec::new();
        for d in descriptors {
            let layer = layer_from_descriptor(d, open)?;
            if let Some(prev) = layers.last() {
                check_link(&prev.info, &layer.info)?;
            }
            layers.push(layer);
        }
        Ok(Chain::assemble(layers))
    }

    fn assemble(layers: Vec<Layer>) -> Chain {
        let infos = layers.iter().map(|l| l.info.clone()).collect();
        let capacity = layers[0].info.capacity;
        Chain {
            layers,
            infos,
            capacity,
        }
    }

    /// Virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// parentCID of the oldest delta (None for a bare extent).
    pub fn parent_cid(&self) -> Option<u32> {
        self.infos[0].parent_cid
    }

    /// CID of the newest delta.
    pub fn cid(&self) -> Option<u32> {
        self.infos.last().and_then(|l| l.cid)
    }

    /// The layers, oldest first.
    pub fn layers(&self) -> &[LayerInfo] {
        &self.infos
    }

    /// Changed pieces in ascending order, newest layer winning, merged when adjacent and
    /// source-contiguous. Streams one table per layer at a time.
    pub fn pieces(&self) -> Pieces<'_> {
        Pieces {
            walks: self.layers.iter().rev().map(|l| l.extents.walk()).collect(),
            capacity: self.capacity,
            pos: 0,
            pending: None,
            failed: false,
            _chain: std::marker::PhantomData,
        }
    }
}

/// What a chain is applied over, for [`Chain::check_parent`].
#[derive(Debug, Clone, Copy)]
pub enum Parent<'a> {
    /// What the oldest delta's parentFileNameHint names, checked when it is on this host
    /// (a raw `--target` says nothing of what it holds). A hint leading out of the delta's
    /// folder is not followed unless the options allow it.
    Hinted(&'a OpenOptions),
    /// A base on this host: the same capacity, and the oldest delta's parentCID must be its
    /// CID (both known).
    Base(&'a BaseImage),
    /// A volume filled from a base of `capacity` bytes, for disk `disk` (named in messages):
    /// the same capacity. Which CID the oldest delta continues (the base's, or that of a delta
    /// applied since) is the import's lineage, checked there.
    Volume { capacity: u64, disk: &'a str },
}

impl Chain {
    /// Check that the oldest delta sits on `parent` (see [`Parent`]): a mismatch is an error;
    /// the answer says whether the CIDs were compared.
    pub fn check_parent(&self, parent: Parent<'_>) -> Result<ParentLink, Error> {
        let first = &self.layers()[0];
        match parent {
            Parent::Hinted(opts) => hinted_parent(first, opts),
            Parent::Base(base) => {
                let there = format!("its parent {}", show(&base.path));
                check_capacity(first, base.capacity, &there)?;
                let pc = first.parent_cid.ok_or_else(|| {
                    Error::chain(format!(
                        "{}: no parentCID to hold against the CID of {}",
                        show(&first.path),
                        show(&base.path)
                    ))
                })?;
                check_cid(&first.path, pc, &base.path, base.cid)?;
                Ok(ParentLink::Checked(base.path.clone()))
            }
            Parent::Volume { capacity, disk } => {
                check_capacity(
                    first,
                    capacity,
                    &format!("the base recorded for disk {disk}"),
                )?;
                Ok(ParentLink::NotChecked(
                    "its parentCID is held against the import's lineage".into(),
                ))
            }
        }
    }
}

/// Iterator over a chain's changed pieces; see [`Chain::pieces`].
pub struct Pieces<'a> {
    /// Newest layer first.
    walks: Vec<Walk>,
    capacity: u64,
    pos: u64,
    pending: Option<Piece>,
    failed: bool,
    _chain: std::marker::PhantomData<&'a Chain>,
}

impl Pieces<'_> {
    /// The next span of the merged view: (length, source or None for "unchanged").
    fn step(&mut self) -> Result<(u64, Option<Source>), Error> {
        let mut limit = self.capacity - self.pos;
        for w in &mut self.walks {
            let span = w.lookup(self.pos)?;
            let len = span.len.min(limit);
            if span.source.is_some() {
                return Ok((len, span.source));
            }
            // A newer layer's unallocated run may end sooner; older layers only answer up to there.
            limit = len;
        }
        Ok((limit, None))
    }
}

fn extend(pending: &mut Piece, next: &Piece) -> bool {
    if pending.end() != next.offset {
        return false;
    }
    let contiguous = match (&pending.source, &next.source) {
        (Source::Zeros, Source::Zeros) => true,
        (Source::Data { file: a, offset: x }, Source::Data { file: b, offset: y }) => {
            Arc::ptr_eq(a, b) && x + pending.len == *y
        }
        _ => false,
    };
    if contiguous {
        pending.len += next.len;
    }
    contiguous
}

impl Iterator for Pieces<'_> {
    type Item = Result<Piece, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while self.pos < self.capacity {
            let (len, source) = match self.step() {
                Ok(s) => s,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            debug_assert!(len > 0);
            let offset = self.pos;
            self.pos += len;
            match source {
                None => {
                    if let Some(p) = self.pending.take() {
                        return Some(Ok(p));
                    }
                }
                Some(source) => {
                    let piece = Piece {
                        offset,
                        len,
                        source,
                    };
                    let merged = self.pending.as_mut().is_some_and(|p| extend(p, &piece));
                    if !merged {
                        if let Some(done) = self.pending.replace(piece) {
                            return Some(Ok(done));
                        }
                    }
                }
            }
        }
        self.pending.take().map(Ok)
    }
}
