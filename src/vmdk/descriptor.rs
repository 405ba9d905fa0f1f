//! Text descriptors (standalone files and the copy embedded in hosted sparse files).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::Error;

/// Largest descriptor read: real ones are under 2 KiB; cap to avoid an unbounded allocation
/// when a large binary file is handed over as a descriptor.
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

/// `parentCID` value meaning "this disk has no parent".
pub const CID_NO_PARENT: u32 = 0xffff_ffff;

/// Access mode of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
    NoAccess,
}

/// Extent type of an extent line. Types this tool cannot read are still parsed, so the
/// refusal can name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentKind {
    Flat,
    Vmfs,
    Zero,
    Sparse,
    VmfsSparse,
    SeSparse,
    VmfsRdm,
    VmfsRaw,
    VsanSparse,
}

impl ExtentKind {
    fn parse(word: &str) -> Option<ExtentKind> {
        Some(match word.to_ascii_uppercase().as_str() {
            "FLAT" => ExtentKind::Flat,
            "VMFS" => ExtentKind::Vmfs,
            "ZERO" => ExtentKind::Zero,
            "SPARSE" => ExtentKind::Sparse,
            "VMFSSPARSE" => ExtentKind::VmfsSparse,
            "SESPARSE" => ExtentKind::SeSparse,
            "VMFSRDM" => ExtentKind::VmfsRdm,
            "VMFSRAW" => ExtentKind::VmfsRaw,
            "VSANSPARSE" => ExtentKind::VsanSparse,
            _ => return None,
        })
    }

    /// The name as written in descriptors.
    pub fn name(&self) -> &'static str {
        match self {
            ExtentKind::Flat => "FLAT",
            ExtentKind::Vmfs => "VMFS",
            ExtentKind::Zero => "ZERO",
            ExtentKind::Sparse => "SPARSE",
            ExtentKind::VmfsSparse => "VMFSSPARSE",
            ExtentKind::SeSparse => "SESPARSE",
            ExtentKind::VmfsRdm => "VMFSRDM",
            ExtentKind::VmfsRaw => "VMFSRAW",
            ExtentKind::VsanSparse => "VSANSPARSE",
        }
    }
}

/// One `ACCESS SECTORS TYPE "name" [offset]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    pub access: Access,
    /// Size of the extent in 512-byte sectors.
    pub sectors: u64,
    pub kind: ExtentKind,
    /// File name relative to the descriptor's folder; `None` for ZERO extents.
    pub file: Option<String>,
    /// Start of the data in the file, in sectors (FLAT only).
    pub offset: u64,
    /// 1-based line number, for messages.
    pub line: usize,
}

/// A parsed descriptor.
#[derive(Debug, Clone)]
pub struct Descriptor {
    /// Where it was read from (for messages and to resolve extent names).
    pub path: PathBuf,
    pub version: Option<u32>,
    pub cid: Option<u32>,
    /// `None` when absent or `ffffffff` (no parent).
    pub parent_cid: Option<u32>,
    pub create_type: Option<String>,
    pub parent_hint: Option<String>,
    pub extents: Vec<ExtentLine>,
    /// `ddb.*` keys (lower-cased, without the `ddb.` prefix) and values, in file order.
    pub ddb: Vec<(String, String)>,
}

impl Descriptor {
    /// Read and parse a standalone descriptor file.
    pub fn read(path: &Path) -> Result<Descriptor, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, "opening descriptor", e))?;
        let mut text = Vec::new();
        file.take(MAX_DESCRIPTOR_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| Error::io(path, "reading descriptor", e))?;
        if text.len() as u64 > MAX_DESCRIPTOR_BYTES {
            return Err(Error::invalid(
                path,
                format!("larger than {MAX_DESCRIPTOR_BYTES} bytes: not a VMware descriptor"),
            ));
        }
        Descriptor::parse(&text, path)
    }

    /// Parse descriptor text; `path` is used for messages and extent names only.
    /// Text stops at the first NUL (standalone descriptors may be NUL-padded).
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Descriptor, Error> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|e| Error::Descriptor {
            path: path.to_path_buf(),
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            msg: "not UTF-8 text: not a VMware descriptor".into(),
        })?;
        let mut d = Descriptor {
            path: path.to_path_buf(),
            version: None,
            cid: None,
            parent_cid: None,
            create_type: None,
            parent_hint: None,
            extents: Vec::new(),
            ddb: Vec::new(),
        };
        for (i, raw) in text.split('\n').enumerate() {
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            d.take_line(i + 1, l).map_err(|msg| Error::Descriptor {
                path: path.to_path_buf(),
                line: i + 1,
                msg,
            })?;
        }
        // QEMU refuses both too: without a CID no child can be checked against this disk,
        // and without a createType nothing says how the extents are meant.
        for (missing, key) in [
            (d.cid.is_none(), "CID"),
            (d.create_type.is_none(), "createType"),
        ] {
            if missing {
                return Err(Error::invalid(
                    path,
                    format!("descriptor has no {key} line: not a complete VMware descriptor"),
                ));
            }
        }
        Ok(d)
    }

    /// Take in line number `line` (`l`, trimmed, neither blank nor a comment): an extent
    /// line or a `key=value`.
    fn take_line(&mut self, line: usize, l: &str) -> Result<(), String> {
        if let Some(ext) = parse_extent(l)? {
            self.extents.push(ExtentLine { line, ..ext });
            return Ok(());
        }
        let Some((key, value)) = l.split_once('=') else {
            return Err(format!("not a key=value or extent line: {:?}", clip(l)));
        };
        let key = key.trim().to_ascii_lowercase();
        let value = unquote(value.trim());
        if let Some(k) = key.strip_prefix("ddb.") {
            self.ddb.push((k.to_string(), value.to_string()));
            return Ok(());
        }
        match key.as_str() {
            "version" => {
                self.version = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad version {value:?}"))?,
                )
            }
            "cid" => self.cid = Some(parse_cid(value)?),
            "parentcid" => {
                let cid = parse_cid(value)?;
                self.parent_cid = (cid != CID_NO_PARENT).then_some(cid);
            }
            "createtype" => self.create_type = Some(value.to_string()),
            "parentfilenamehint" => self.parent_hint = Some(value.to_string()),
            // encoding, isNativeSnapshot and friends do not change how data is read.
            _ => {}
        }
        Ok(())
    }

    /// Total size of the extents, in bytes.
    pub fn capacity(&self) -> Result<u64, Error> {
        let mut sectors = 0u64;
        for e in &self.extents {
            sectors = sectors
                .checked_add(e.sectors)
                .ok_or_else(|| Error::Descriptor {
                    path: self.path.clone(),
                    line: e.line,
                    msg: "extent sizes overflow".into(),
                })?;
        }
        sectors.checked_mul(512).ok_or_else(|| {
            Error::invalid(&self.path, format!("capacity overflows: {sectors} sectors"))
        })
    }

    /// The folder extent and parent names are relative to.
    pub fn folder(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// A `ddb.` key's value (key without the prefix, case-insensitive).
    pub fn ddb(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.ddb
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Does this look like descriptor text rather than disk data? Used to tell a base descriptor
/// from a flat image, and a child descriptor from binary junk.
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return false;
    };
    let lower = text.to_ascii_lowercase();
    lower.starts_with("# disk descriptorfile") || lower.contains("createtype")
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// CIDs are 32-bit hex, not always 8 digits; leading zeros beyond 8 digits are harmless.
fn parse_cid(v: &str) -> Result<u32, String> {
    let digits = v.trim_start_matches('0');
    if v.is_empty() || digits.len() > 8 || !v.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "bad CID {:?}: expected up to 8 hex digits",
            clip(v)
        ));
    }
    if digits.is_empty() {
        return Ok(0);
    }
    u32::from_str_radix(digits, 16).map_err(|e| format!("bad CID {v:?}: {e}"))
}

/// Parse an extent line; `Ok(None)` when the line does not start with an access word.
fn parse_extent(l: &str) -> Result<Option<ExtentLine>, String> {
    let (first, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
    let access = match first.to_ascii_uppercase().as_str() {
        "RW" => Access::ReadWrite,
        "RDONLY" => Access::ReadOnly,
        "NOACCESS" => Access::NoAccess,
        _ => return Ok(None),
    };
    let rest = rest.trim_start();
    let (sectors, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let sectors: u64 = sectors
        .parse()
        .map_err(|_| format!("extent size {:?} is not a sector count", clip(sectors)))?;
    let rest = rest.trim_start();
    let (kind_word, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let kind = ExtentKind::parse(kind_word)
        .ok_or_else(|| format!("unknown extent type {:?}", clip(kind_word)))?;
    let rest = rest.trim_start();
    let (file, rest) = if let Some(q) = rest.strip_prefix('"') {
        let close = q
            .find('"')
            .ok_or_else(|| "extent file name has no closing quote".to_string())?;
        (Some(q[..close].to_string()), q[close + 1..].trim())
    } else if rest.is_empty() {
        (None, "")
    } else {
        return Err(format!("extent file name must be quoted: {:?}", clip(rest)));
    };
    if file.is_none() && kind != ExtentKind::Zero {
        return Err(format!("{} extent without a file name", kind.name()));
    }
    let offset = if rest.is_empty() {
        0
    } else {
        rest.parse()
            .map_err(|_| format!("extent offset {:?} is not a sector count", clip(rest)))?
    };
    Ok(Some(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
        line: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_esx_child_with_crlf_padding_and_odd_case() {
        let text = b"# Disk DescriptorFile\r\nversion=1\r\nencoding=\"UTF-8\"\r\nCid=5d2667d\r\nPARENTcid=fffffffe\r\ncreateType=\"vmfsSparse\"\r\nparentFileNameHint=\"my vm.vmdk\"\r\n# Extent description\r\nRW 16777216 VMFSSPARSE \"my vm-000001-delta.vmdk\"\r\n\r\n#DDB\r\nddb.longContentID = \"7dfb\"\r\n\0\0\0\0";
        let d = Descriptor::parse(text, Path::new("/x/my vm-000001.vmdk")).unwrap();
        assert_eq!(d.cid, Some(0x5d2667d));
        assert_eq!(d.parent_cid, Some(0xfffffffe));
        assert_eq!(d.create_type.as_deref(), Some("vmfsSparse"));
        assert_eq!(d.parent_hint.as_deref(), Some("my vm.vmdk"));
        assert_eq!(d.extents.len(), 1);
        let e = &d.extents[0];
        assert_eq!(
            (e.sectors, e.kind.clone()),
            (16777216, ExtentKind::VmfsSparse)
        );
        assert_eq!(e.file.as_deref(), Some("my vm-000001-delta.vmdk"));
        assert_eq!(e.line, 9);
        assert_eq!(d.ddb("longContentID"), Some("7dfb"));
        assert_eq!(d.capacity().unwrap(), 16777216 * 512);
    }

    #[test]
    fn parent_cid_all_ones_means_no_parent_and_flat_offsets_parse() {
        let text = "CID=0000000000abc\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 100 FLAT \"a b-f001.vmdk\" 7\nRDONLY 5 ZERO\n";
        let d = Descriptor::parse(text.as_bytes(), Path::new("d.vmdk")).unwrap();
        assert_eq!(d.cid, Some(0xabc));
        assert_eq!(d.parent_cid, None);
        assert_eq!(d.extents[0].offset, 7);
        assert_eq!(d.extents[1].kind, ExtentKind::Zero);
        assert_eq!(d.extents[1].file, None);
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "CID=1\nRW 10 FLATISH \"x\"\n";
        let e = Descriptor::parse(text.as_bytes(), Path::new("bad.vmdk")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("bad.vmdk: line 2: unknown extent type"),
            "{msg}"
        );
        let e = Descriptor::parse(b"CID=123456789\n", Path::new("c.vmdk")).unwrap_err();
        assert!(e.to_string().contains("c.vmdk: line 1: bad CID"), "{e}");
        let e = Descriptor::parse(b"junk line\n", Path::new("j.vmdk")).unwrap_err();
        assert!(e.to_string().contains("line 1: not a key=value"), "{e}");
    }
}
