//! The grain directory / grain table walk shared by COWD, SEsparse and hosted sparse extents.

use std::path::Path;
use std::sync::Arc;

use super::error::{self, Error};
use super::runs::{DataFile, Source};

/// Grain directory bytes read at a time: a 64 TiB SEsparse directory is 32 MiB, so it is
/// read in pages rather than whole to keep memory bounded by the tables in use.
const GD_PAGE_BYTES: u64 = 64 * 1024;

/// Largest grain table accepted (entries): every known format uses 512 or 4096.
pub(crate) const MAX_GT_ENTRIES: u64 = 4096;

/// Largest grain accepted, in bytes (hosted sparse allows any power of two; 1 MiB is far
/// beyond the 64 KiB VMware uses and keeps a hostile header from meaning much).
pub(crate) const MAX_GRAIN_BYTES: u64 = 1 << 20;

/// Largest virtual disk accepted: SEsparse tops out at 64 TiB; 1 PiB leaves room and keeps
/// every offset sum below it far from overflowing.
pub(crate) const MAX_CAPACITY_BYTES: u64 = 1 << 50;

/// The top 32 bits of an SEsparse grain directory entry that names a table (the low 32 bits
/// are the table's index in the grain table area); 0 is "no table".
const SESPARSE_GD_TABLE_TAG: u64 = 0x1000_0000;
/// An SEsparse grain table entry's type is its top 4 bits.
const SESPARSE_GT_TYPE_SHIFT: u32 = 60;
const SESPARSE_GT_UNALLOCATED: u64 = 0x0;
/// Unmapped by the guest (TRIM/UNMAP): reads as zeros.
const SESPARSE_GT_UNMAPPED: u64 = 0x1;
const SESPARSE_GT_ZERO: u64 = 0x2;
const SESPARSE_GT_ALLOCATED: u64 = 0x3;

/// What one entry of a table says about its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grain {
    /// Unallocated: the parent's bytes show through.
    Parent,
    /// Reads as zeros and hides the parent.
    Zeros,
    /// The grain's bytes start at this byte offset in the extent file.
    Data(u64),
}

/// How the entries of one format decode.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Format {
    /// COWD: u32 sectors; 1 is a zeroed grain (see `cowd`).
    Cowd,
    /// SEsparse: typed u64 entries; tables and grains at fixed areas.
    SeSparse {
        gt_area: u64,
        gt_area_len: u64,
        grain_area: u64,
        grain_area_len: u64,
    },
    /// Hosted sparse: u32 sectors; 1 is a zeroed grain when the header says so.
    Hosted { zeroed_grain: bool },
}

/// A sparse extent's map, validated against its file's size at open.
#[derive(Debug)]
pub(crate) struct GrainMap {
    pub file: Arc<DataFile>,
    pub file_len: u64,
    /// Virtual size in bytes.
    pub capacity: u64,
    pub grain_bytes: u64,
    pub gt_entries: u64,
    pub gd_offset: u64,
    pub gd_entries: u64,
    /// 4 (u32) or 8 (u64).
    pub entry_bytes: u64,
    pub format: Format,
}

impl GrainMap {
    /// Check the header's promises against each other and the file size before anything is
    /// allocated from them.
    pub fn check(&self) -> Result<(), Error> {
        let p = self.path();
        if self.capacity == 0 {
            // QEMU skips extents of 0 sectors and then has no disk to open.
            return Err(Error::invalid(p, "capacity of 0 bytes: not a disk"));
        }
        if self.capacity > MAX_CAPACITY_BYTES {
            return Err(Error::invalid(
                p,
                format!(
                    "capacity of {} bytes exceeds the maximum of {MAX_CAPACITY_BYTES}",
                    self.capacity
                ),
            ));
        }
        if self.grain_bytes == 0 || self.grain_bytes > MAX_GRAIN_BYTES {
            return Err(Error::invalid(
                p,
                format!(
                    "grain size {} bytes is outside 512..={MAX_GRAIN_BYTES}",
                    self.grain_bytes
                ),
            ));
        }
        if self.gt_entries == 0 || self.gt_entries > MAX_GT_ENTRIES {
            return Err(Error::invalid(
                p,
                format!(
                    "{} entries per grain table is outside 1..={MAX_GT_ENTRIES}",
                    self.gt_entries
                ),
            ));
        }
        let span = self.gt_entries * self.grain_bytes;
        let needed = self.capacity.div_ceil(span);
        if self.gd_entries < needed {
            return Err(Error::invalid(
                p,
                format!(
                    "grain directory has {} entries but the capacity of {} bytes needs {needed}",
                    self.gd_entries, self.capacity
                ),
            ));
        }
        let gd_len = error::mul(p, "grain directory size", self.gd_entries, self.entry_bytes)?;
        let gd_end = error::add(p, "grain directory end", self.gd_offset, gd_len)?;
        if gd_end > self.file_len {
            return Err(Error::invalid(
                p,
                format!(
                    "truncated or corrupt: grain directory at byte {} ({} entries) ends at {gd_end}, past the end of the file ({} bytes)",
                    self.gd_offset, self.gd_entries, self.file_len
                ),
            ));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }

    fn gt_bytes(&self) -> u64 {
        self.gt_entries * self.entry_bytes
    }

    /// Decode a directory entry into the byte offset of its grain table.
    fn decode_gd(&self, index: u64, raw: u64) -> Result<Option<u64>, Error> {
        let p = self.path();
        if raw == 0 {
            return Ok(None);
        }
        let offset = match self.format {
            Format::Cowd | Format::Hosted { .. } => raw * 512,
            Format::SeSparse {
                gt_area,
                gt_area_len,
                ..
            } => {
                let Some(table) = sesparse_table_index(raw) else {
                    return Err(Error::invalid(
                        p,
                        format!("grain directory entry {index} is corrupt ({raw:#018x})"),
                    ));
                };
                let rel = table * self.gt_bytes();
                if rel + self.gt_bytes() > gt_area_len {
                    return Err(Error::invalid(
                        p,
                        format!(
                            "grain directory entry {index} names table {table} outside the grain table area"
                        ),
                    ));
                }
                gt_area + rel
            }
        };
        let end = offset.checked_add(self.gt_bytes());
        if end.is_none_or(|end| end > self.file_len) {
            return Err(Error::invalid(
                p,
                format!(
                    "grain directory entry {index} points past the end of the file (table at byte {offset}, file is {} bytes)",
                    self.file_len
                ),
            ));
        }
        Ok(Some(offset))
    }

    /// Decode a table entry.
    fn decode_gt(&self, table: u64, index: u64, raw: u64) -> Result<Grain, Error> {
        let p = self.path();
        let grain = match self.format {
            Format::Cowd => match raw {
                0 => Grain::Parent,
                1 => Grain::Zeros,
                s => Grain::Data(s * 512),
            },
            Format::Hosted { zeroed_grain } => match raw {
                0 => Grain::Parent,
                1 if zeroed_grain => Grain::Zeros,
                s => Grain::Data(s * 512),
            },
            Format::SeSparse {
                grain_area,
                grain_area_len,
                ..
            } => match sesparse_entry(raw) {
                SeSparseEntry::Parent => Grain::Parent,
                SeSparseEntry::Zeros => Grain::Zeros,
                SeSparseEntry::Cluster(cluster) => {
                    let rel = cluster.checked_mul(self.grain_bytes);
                    match rel {
                        Some(rel) if rel < grain_area_len => Grain::Data(grain_area + rel),
                        _ => {
                            return Err(Error::invalid(
                                p,
                                format!("grain table {table} entry {index} names cluster {cluster} outside the grain area"),
                            ))
                        }
                    }
                }
                SeSparseEntry::Corrupt => {
                    return Err(Error::invalid(
                        p,
                        format!("grain table {table} entry {index} is corrupt ({raw:#018x})"),
                    ))
                }
            },
        };
        Ok(grain)
    }
}

/// One answer: what is at a virtual offset, and for how many bytes.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub len: u64,
    /// `None`: read the parent.
    pub source: Option<Source>,
}

/// Walks a [`GrainMap`] front to back, holding one directory page and one grain table.
pub(crate) struct Cursor {
    map: Arc<GrainMap>,
    /// First directory index in `gd_page`, and the page.
    gd_page_start: u64,
    gd_page: Vec<u8>,
    /// Directory index of the table held in `gt`.
    gt_index: Option<u64>,
    gt: Vec<u8>,
}

fn entry(buf: &[u8], i: usize, size: u64) -> u64 {
    if size == 4 {
        u32::from_le_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap()) as u64
    } else {
        u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap())
    }
}

impl Cursor {
    pub fn new(map: Arc<GrainMap>) -> Cursor {
        Cursor {
            map,
            gd_page_start: 0,
            gd_page: Vec::new(),
            gt_index: None,
            gt: Vec::new(),
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), Error> {
        let m = &self.map;
        m.file
            .file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(m.path(), format!("reading {what} at byte {offset}"), e))
    }

    /// The raw directory entry `index`, paging the directory in.
    fn gd_entry(&mut self, index: u64) -> Result<u64, Error> {
        let m = self.map.clone();
        let per_page = GD_PAGE_BYTES / m.entry_bytes;
        let have = self.gd_page.len() as u64 / m.entry_bytes;
        if index < self.gd_page_start || index >= self.gd_page_start + have {
            let start = index - index % per_page;
            let count = per_page.min(m.gd_entries - start);
            let mut page = std::mem::take(&mut self.gd_page);
            page.resize((count * m.entry_bytes) as usize, 0);
            self.read(
                m.gd_offset + start * m.entry_bytes,
                &mut page,
                "grain directory",
            )?;
            self.gd_page = page;
            self.gd_page_start = start;
        }
        Ok(entry(
            &self.gd_page,
            (index - self.gd_page_start) as usize,
            m.entry_bytes,
        ))
    }

    /// What is at virtual byte `pos` (< capacity), and for how long (never past capacity).
    pub fn lookup(&mut self, pos: u64) -> Result<Span, Error> {
        let m = self.map.clone();
        debug_assert!(pos < m.capacity);
        let span = m.gt_entries * m.grain_bytes;
        let gdi = pos / span;
        let Some(gt_offset) = m.decode_gd(gdi, self.gd_entry(gdi)?)? else {
            // Extend over the following unallocated directory entries: a huge, nearly empty
            // delta is skipped a directory page at a time.
            let mut next = gdi + 1;
            while next * span < m.capacity && self.gd_entry(next)? == 0 {
                next += 1;
            }
            let end = (next * span).min(m.capacity);
            return Ok(Span {
                len: end - pos,
                source: None,
            });
        };
        if self.gt_index != Some(gdi) {
            let mut gt = std::mem::take(&mut self.gt);
            gt.resize(m.gt_bytes() as usize, 0);
            self.read(gt_offset, &mut gt, "grain table")?;
            self.gt = gt;
            self.gt_index = Some(gdi);
        }
        let table_end = ((gdi + 1) * span).min(m.capacity);
        let gti = (pos % span) / m.grain_bytes;
        let raw = entry(&self.gt, gti as usize, m.entry_bytes);
        let grain = m.decode_gt(gdi, gti, raw)?;
        let grain_start = gdi * span + gti * m.grain_bytes;
        let within = pos - grain_start;
        match grain {
            Grain::Data(offset) => {
                let len = (grain_start + m.grain_bytes).min(m.capacity) - pos;
                let start = offset + within;
                if start.checked_add(len).is_none_or(|end| end > m.file_len) {
                    return Err(Error::invalid(
                        m.path(),
                        format!(
                            "grain table {gdi} entry {gti} points past the end of the file (byte {offset} + {} > {})",
                            len + within,
                            m.file_len
                        ),
                    ));
                }
                Ok(Span {
                    len,
                    source: Some(Source::Data {
                        file: m.file.clone(),
                        offset: start,
                    }),
                })
            }
            same => {
                // Parent and zero runs extend over equal neighbours in this table.
                let mut next = gti + 1;
                while grain_start - gti * m.grain_bytes + next * m.grain_bytes < table_end {
                    let raw = entry(&self.gt, next as usize, m.entry_bytes);
                    if m.decode_gt(gdi, next, raw)? != same {
                        break;
                    }
                    next += 1;
                }
                let end = (gdi * span + next * m.grain_bytes).min(table_end);
                Ok(Span {
                    len: end - pos,
                    source: (same == Grain::Zeros).then_some(Source::Zeros),
                })
            }
        }
    }
}

/// The index in the grain table area of the table a nonzero SEsparse directory entry names; `None`
/// when the entry is corrupt.
fn sesparse_table_index(raw: u64) -> Option<u64> {
    (raw >> 32 == SESPARSE_GD_TABLE_TAG).then_some(raw & 0xffff_ffff)
}

/// What an SEsparse grain table entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeSparseEntry {
    /// Unallocated: read the parent.
    Parent,
    /// Zero or unmapped: reads as zeros.
    Zeros,
    /// Allocated: the grain is this cluster of the grain area.
    Cluster(u64),
    /// Any other type, or an unallocated entry with bits set.
    Corrupt,
}

/// Decode an SEsparse grain table entry by its type (top 4 bits).
fn sesparse_entry(raw: u64) -> SeSparseEntry {
    match raw >> SESPARSE_GT_TYPE_SHIFT {
        SESPARSE_GT_UNALLOCATED if raw == 0 => SeSparseEntry::Parent,
        SESPARSE_GT_UNMAPPED | SESPARSE_GT_ZERO => SeSparseEntry::Zeros,
        // The cluster number is stored with its low 12 bits on top.
        SESPARSE_GT_ALLOCATED => SeSparseEntry::Cluster(
            ((raw & 0x0fff_0000_0000_0000) >> 48) | ((raw & 0x0000_ffff_ffff_ffff) << 12),
        ),
        _ => SeSparseEntry::Corrupt,
    }
}
