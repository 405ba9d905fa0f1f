//! A disk's extents end to end: opened from its descriptor in one walk, read through one question ("what is at this offset, and for how long?").
//!
//! A base and a delta list their extents the same way and differ only in the types they may
//! use: a base FLAT, VMFS, ZERO or hosted sparse extents, a delta sparse ones (COWD, SEsparse,
//! hosted sparse). Both are read through [`Walk::lookup`], whose answer is a [`Span`]: data
//! at (file, offset), zeros, or (source `None`) the parent's bytes, which under a base are
//! zeros.

use std::path::Path;
use std::sync::Arc;

use super::descriptor::{Descriptor, ExtentKind, ExtentLine};
use super::error::{show, Error};
use super::flat;
use super::grains::{Cursor, GrainMap, Span};
use super::names::ExtentOpener;
use super::runs::{DataFile, Source};
use super::{cowd, hosted, sesparse};

/// Which format a delta layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Cowd,
    SeSparse,
    Hosted,
}

/// One opened extent.
#[derive(Debug)]
pub(crate) enum Extent {
    /// FLAT, VMFS or ZERO: the same source throughout (bytes at an offset of a raw file, or
    /// zeros).
    Flat(Source),
    /// COWD, SEsparse or hosted sparse: a grain map.
    Sparse(Arc<GrainMap>),
}

/// An extent at its place in the virtual disk.
#[derive(Debug)]
struct Placed {
    start: u64,
    len: u64,
    extent: Extent,
}

/// A disk's extents, in order and end to end.
#[derive(Debug, Clone)]
pub(crate) struct Extents(Arc<Vec<Placed>>);

/// What a descriptor describes, and so which extent types it may list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Base,
    Delta,
}

impl Extents {
    /// One extent of `len` bytes: a bare extent file, or a bare flat image.
    pub fn one(len: u64, extent: Extent) -> Extents {
        Extents(Arc::new(vec![Placed {
            start: 0,
            len,
            extent,
        }]))
    }

    /// Open every extent line of `d`, in order, as a `role` may list them; `open_file` opens
    /// the files they name. For a delta, also the format of its first extent.
    pub fn open(
        d: &Descriptor,
        role: Role,
        open_file: &mut ExtentOpener,
    ) -> Result<(Extents, Option<LayerKind>), Error> {
        if d.extents.is_empty() {
            return Err(Error::invalid(&d.path, "descriptor lists no extents"));
        }
        let mut placed = Vec::new();
        let mut kind = None;
        let mut start = 0u64;
        for e in &d.extents {
            let len = e
                .sectors
                .checked_mul(512)
                .ok_or_else(|| at(d, e, "extent size overflows".into()))?;
            let (extent, k) = open_line(d, e, len, role, open_file)?;
            kind = kind.or(k);
            placed.push(Placed { start, len, extent });
            start = start
                .checked_add(len)
                .ok_or_else(|| at(d, e, "capacity overflows".into()))?;
        }
        Ok((Extents(Arc::new(placed)), kind))
    }

    /// The disk's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.0.last().map_or(0, |p| p.start + p.len)
    }

    /// A walk from the start.
    pub fn walk(&self) -> Walk {
        Walk {
            extents: self.clone(),
            index: 0,
            cursor: None,
        }
    }
}

/// An error about extent line `e` of `d`.
fn at(d: &Descriptor, e: &ExtentLine, msg: String) -> Error {
    Error::Descriptor {
        path: d.path.clone(),
        line: e.line,
        msg,
    }
}

/// Open extent line `e` of `d` (`len` bytes), refusing a type the `role` may not list; a
/// sparse extent must hold what the line says.
fn open_line(
    d: &Descriptor,
    e: &ExtentLine,
    len: u64,
    role: Role,
    open_file: &mut ExtentOpener,
) -> Result<(Extent, Option<LayerKind>), Error> {
    type OpenSparse = fn(Arc<DataFile>) -> Result<GrainMap, Error>;
    let (kind, open): (LayerKind, OpenSparse) = match (role, &e.kind) {
        (Role::Base, ExtentKind::Flat | ExtentKind::Vmfs | ExtentKind::Zero) => {
            return Ok((Extent::Flat(flat::open(d, e, len, open_file)?), None))
        }
        (_, ExtentKind::Sparse) => (LayerKind::Hosted, |f| hosted::open(f).map(|(m, _)| m)),
        (Role::Delta, ExtentKind::VmfsSparse) => (LayerKind::Cowd, cowd::open),
        (Role::Delta, ExtentKind::SeSparse) => (LayerKind::SeSparse, sesparse::open),
        _ => return Err(at(d, e, refusal(role, &e.kind))),
    };
    let name = e.file.as_deref().unwrap_or_default();
    let map = open(open_file(d, name)?)?;
    if map.capacity != len {
        return Err(at(
            d,
            e,
            format!(
                "extent {:?} holds {} bytes but the line says {len}",
                show(Path::new(name)),
                map.capacity
            ),
        ));
    }
    let kind = (role == Role::Delta).then_some(kind);
    Ok((Extent::Sparse(Arc::new(map)), kind))
}

/// Why a `role` may not list an extent of type `kind`.
fn refusal(role: Role, kind: &ExtentKind) -> String {
    let name = kind.name();
    match (role, kind) {
        (Role::Base, _) => format!("unsupported extent type {name} for a base disk"),
        (Role::Delta, ExtentKind::Flat | ExtentKind::Vmfs | ExtentKind::Zero) => format!(
            "{name} extent in a delta: a delta's extents must be sparse (is this the base disk?)"
        ),
        (Role::Delta, _) => format!("unsupported extent type {name}"),
    }
}

/// A walk over [`Extents`], holding the grain tables of the extent it is in.
pub(crate) struct Walk {
    extents: Extents,
    /// The extent of the last answer.
    index: usize,
    /// The cursor over that extent, when it is sparse.
    cursor: Option<Cursor>,
}

impl Walk {
    /// What is at virtual byte `pos` (< capacity), and for how long, never past the end of
    /// its extent. Front to back is the fast way; any order works.
    pub fn lookup(&mut self, pos: u64) -> Result<Span, Error> {
        let list = &self.extents.0;
        let inside = |p: &Placed| p.start <= pos && pos - p.start < p.len;
        if !list.get(self.index).is_some_and(inside) {
            self.index = list.partition_point(|p| p.start + p.len <= pos);
            self.cursor = None;
        }
        let p = &list[self.index];
        debug_assert!(inside(p), "{pos} is past the end of the disk");
        let rel = pos - p.start;
        let rest = p.len - rel;
        Ok(match &p.extent {
            Extent::Flat(Source::Zeros) => Span {
                len: rest,
                source: Some(Source::Zeros),
            },
            Extent::Flat(Source::Data { file, offset }) => Span {
                len: rest,
                source: Some(Source::Data {
                    file: file.clone(),
                    offset: offset + rel,
                }),
            },
            Extent::Sparse(map) => {
                let cursor = self.cursor.get_or_insert_with(|| Cursor::new(map.clone()));
                let span = cursor.lookup(rel)?;
                Span {
                    len: span.len.min(rest),
                    source: span.source,
                }
            }
        })
    }

    /// Whether the last answer came from a flat extent: its data is a raw file's bytes, whose
    /// holes the file system can tell.
    pub fn in_flat(&self) -> bool {
        matches!(self.extents.0[self.index].extent, Extent::Flat(_))
    }
}
