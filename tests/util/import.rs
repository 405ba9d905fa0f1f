//! Driving the CLI's libvirt import (stages 1 and 2) against a test pool, and reading back what it did.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::fixtures::{Kind, SeSparseOptions};
use super::libvirt::{read_volume, unique_name, TestPool};
use super::xml::El;
use super::{Folder, BIN};
use vmdkimport::libvirt::Vol;

pub const MIB: u64 = 1 << 20;

/// Run the binary with `args`; standard input is empty.
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_env(args, &[])
}

/// [`run`] with `env` added to the binary's environment.
pub fn run_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("binary runs")
}

/// Run the binary with `args`, writing `input` to its standard input through a pipe, then
/// closing it (a short `input` is a source that ends early).
pub fn run_with_stdin<S: AsRef<OsStr>>(args: &[S], input: &[u8]) -> Output {
    run_with_stdin_env(args, input, &[])
}

fn run_with_stdin_env<S: AsRef<OsStr>>(args: &[S], input: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A writer thread: the child may stop reading (and fail) before it took everything.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("waiting for the binary");
    writer.join().unwrap();
    out
}

/// Both output streams, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Assert success; the standard output.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed:\n{}", show(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert a refusal: exit code 1 and exactly one stderr line, `virt-vmdkimport: ...`, that
/// contains (case-insensitively) at least one of `any_of`. Returns that line.
pub fn refused(out: &Output, any_of: &[&str]) -> String {
    assert_eq!(out.status.code(), Some(1), "exit code:\n{}", show(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{}", show(out));
    let line = lines[0];
    assert!(
        line.starts_with("virt-vmdkimport: "),
        "stderr line starts with the program name:\n{}",
        show(out)
    );
    let lower = line.to_lowercase();
    assert!(
        any_of.iter().any(|w| lower.contains(&w.to_lowercase())),
        "message names the problem (one of {any_of:?}): {line}"
    );
    line.to_owned()
}

/// `virsh -c URI ARGS...`; its standard output, asserting success.
pub fn virsh(uri: &str, args: &[&str]) -> String {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("virsh runs");
    assert!(out.status.success(), "virsh {args:?}:\n{}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One import through the CLI: a domain named after `tag` on the pool's daemon at `uri`,
/// removed with the pool.
pub struct Import<'a> {
    pub tp: &'a TestPool,
    pub uri: String,
    pub domain: String,
    /// The first CPU rung that starts in this import's trial starts, forced (see
    /// [`super::ladder`]); None: as the whole run says.
    pub forced_cpu: Option<&'static str>,
}

impl<'a> Import<'a> {
    /// An import into `tp` through the same URI the pool was made on.
    pub fn new(tp: &'a TestPool, tag: &str) -> Import<'a> {
        let uri = tp.conn.uri().to_owned();
        Self::with_uri(tp, &uri, tag)
    }

    pub fn with_uri(tp: &'a TestPool, uri: &str, tag: &str) -> Import<'a> {
        let domain = unique_name(tag);
        tp.track_domain(&domain);
        Import {
            tp,
            uri: uri.to_owned(),
            domain,
            forced_cpu: None,
        }
    }

    /// For a domain defined some other way (it is already tracked by the pool).
    pub fn existing(tp: &'a TestPool, domain: &str) -> Import<'a> {
        tp.track_domain(domain);
        Import {
            tp,
            uri: tp.conn.uri().to_owned(),
            domain: domain.to_owned(),
            forced_cpu: None,
        }
    }

    /// Every command of this import runs with the trial start's CPU ladder forced: `rung`
    /// (one of [`super::ladder::RUNGS`]) is the first that starts, whatever the host.
    pub fn cpu_starts(mut self, rung: &'static str) -> Self {
        assert!(super::ladder::RUNGS.contains(&rung), "no rung {rung}");
        self.forced_cpu = Some(rung);
        self
    }

    /// The environment this import's commands add.
    fn env(&self) -> Vec<(&str, &str)> {
        self.forced_cpu
            .map(|r| (super::ladder::ENV, r))
            .into_iter()
            .collect()
    }

    /// The binary with `args`, in this import's environment.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        run_env(args, &self.env())
    }

    /// `-c URI --domain D --pool P`.
    pub fn common(&self) -> Vec<OsString> {
        [
            "-c",
            &self.uri,
            "--domain",
            &self.domain,
            "--pool",
            &self.tp.name,
        ]
        .iter()
        .map(OsString::from)
        .collect()
    }

    fn args(&self, flat: Option<&Path>, deltas: &[&Path], extra: &[&str]) -> Vec<OsString> {
        let mut a = self.common();
        if let Some(f) = flat {
            a.push("--flat".into());
            a.push(f.into());
        }
        a.extend(deltas.iter().map(OsString::from));
        a.extend(extra.iter().map(OsString::from));
        a
    }

    /// Stage 1: `--flat FLAT EXTRA...`.
    pub fn stage1(&self, flat: &Path, extra: &[&str]) -> Output {
        self.run(&self.args(Some(flat), &[], extra))
    }

    /// Stage 1 from standard input: `--flat - --capacity CAP EXTRA...`.
    pub fn stage1_stdin(&self, input: &[u8], capacity: u64, extra: &[&str]) -> Output {
        let cap = capacity.to_string();
        let mut e = vec!["--capacity", cap.as_str()];
        e.extend_from_slice(extra);
        run_with_stdin_env(
            &self.args(Some(Path::new("-")), &[], &e),
            input,
            &self.env(),
        )
    }

    /// Stage 2: `DELTAS... EXTRA...`.
    pub fn stage2(&self, deltas: &[&Path], extra: &[&str]) -> Output {
        self.run(&self.args(None, deltas, extra))
    }

    /// Both stages in one command (a cold migration).
    pub fn both(&self, flat: &Path, deltas: &[&Path], extra: &[&str]) -> Output {
        self.run(&self.args(Some(flat), deltas, extra))
    }

    /// The name of the volume stage 1 creates: `<domain>-disk0`.
    pub fn volume_name(&self) -> String {
        format!("{}-disk0", self.domain)
    }

    pub fn volume(&self) -> Vol {
        self.tp
            .pool
            .volume(&self.volume_name())
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The volume's bytes, downloaded through libvirt.
    pub fn read(&self) -> Vec<u8> {
        read_volume(&self.volume())
    }

    pub fn exists(&self) -> bool {
        self.tp.conn.domain(&self.domain).unwrap().is_some()
    }

    pub fn is_active(&self) -> bool {
        self.tp
            .conn
            .domain(&self.domain)
            .unwrap()
            .expect("domain defined")
            .is_active()
            .unwrap()
    }

    /// `virsh dumpxml` (inactive config).
    pub fn xml(&self) -> String {
        virsh(&self.uri, &["dumpxml", "--inactive", &self.domain])
    }

    /// The `<metadata>` section of the domain XML (the tool keeps its state there).
    pub fn metadata(&self) -> String {
        section(&self.xml(), "metadata").unwrap_or_default()
    }

    /// The tool's state as `virsh metadata D NS_URI` shows it.
    pub fn state(&self) -> String {
        virsh(
            &self.uri,
            &["metadata", &self.domain, vmdkimport::state::NS_URI],
        )
    }

    /// Replace the domain's serial ports and consoles with one serial port logging to `log`,
    /// and redefine it (the tool has no option for a console log; tests that boot need one).
    pub fn add_serial_log(&self, log: &Path) {
        let mut xml = self.xml();
        for tag in ["serial", "console"] {
            xml = remove_elements(&xml, tag);
        }
        let serial = format!(
            "<serial type='file'><source path='{}'/><target port='0'/></serial>\n</devices>",
            log.display()
        );
        assert!(xml.contains("</devices>"), "no <devices> in:\n{xml}");
        let xml = xml.replacen("</devices>", &serial, 1);
        let file = self.tp.path(&format!("{}.xml", self.domain));
        std::fs::write(&file, &xml).unwrap();
        virsh(&self.uri, &["define", file.to_str().unwrap()]);
    }
}

/// The text between `<tag ...>` and `</tag>` (first occurrence), or `None`.
pub fn section(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut from = 0;
    loop {
        let start = from + xml[from..].find(&open)?;
        let after = &xml[start + open.len()..];
        // `<metadata>` but not `<metadataX>`.
        if after.starts_with('>') || after.starts_with(char::is_whitespace) {
            let end = start + xml[start..].find(&close)? + close.len();
            return Some(xml[start..end].to_owned());
        }
        from = start + open.len();
    }
}

/// `xml` without any `<tag .../>` or `<tag ...>...</tag>` element (not nested in itself).
pub fn remove_elements(xml: &str, tag: &str) -> String {
    let open = format!("<{tag} ");
    let open_bare = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = String::new();
    let mut rest = xml;
    loop {
        let start = match (rest.find(&open), rest.find(&open_bare)) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        out.push_str(&rest[..start]);
        let gt = start + rest[start..].find('>').expect("unterminated tag");
        if rest[..gt].ends_with('/') {
            rest = &rest[gt + 1..];
        } else {
            let end = start + rest[start..].find(&close).expect("element closed") + close.len();
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// One XML element: its path from the root (`domain/devices/disk/target`) and attributes.
#[derive(Debug, Clone)]
pub struct Elem {
    pub path: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
}

impl Elem {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every element of `xml` in document order, named without namespace prefixes (read by
/// the shared [`El`] reader, so quoting and escaping do not matter).
pub fn elements(xml: &str) -> Vec<Elem> {
    fn local(name: &str) -> String {
        name.rsplit(':').next().unwrap_or(name).to_owned()
    }
    fn walk(e: &El, parent: &str, out: &mut Vec<Elem>) {
        let path = if parent.is_empty() {
            local(&e.name)
        } else {
            format!("{parent}/{}", local(&e.name))
        };
        out.push(Elem {
            path: path.clone(),
            attrs: e.attrs.iter().map(|(k, v)| (local(k), v.clone())).collect(),
            text: e.text.clone(),
        });
        for c in &e.children {
            walk(c, &path, out);
        }
    }
    let mut out = Vec::new();
    walk(&El::parse(xml), "", &mut out);
    out
}

/// The elements at `path`.
pub fn find<'e>(elems: &'e [Elem], path: &str) -> Vec<&'e Elem> {
    elems.iter().filter(|e| e.path == path).collect()
}

/// The tool's state element in a `<metadata>` section: the element carrying `base-uploaded`.
pub fn state_elem(metadata: &str) -> Option<Elem> {
    if metadata.is_empty() {
        return None;
    }
    elements(metadata)
        .into_iter()
        .find(|e| e.attr("base-uploaded").is_some())
}

/// Number of `<applied>` elements in a `<metadata>` section.
pub fn applied_count(metadata: &str) -> usize {
    if metadata.is_empty() {
        return 0;
    }
    elements(metadata)
        .iter()
        .filter(|e| e.path.rsplit('/').next() == Some("applied"))
        .count()
}

/// The `key=value` fields of the `disk vdX: ...` line stage 2 prints, or `None`.
pub fn disk_stats(stdout: &str) -> Option<Vec<(String, String)>> {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("disk "))?;
    let (_, fields) = line.split_once(':')?;
    Some(
        fields
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// One field of the stats line, e.g. `io`.
pub fn stat<'s>(stats: &'s [(String, String)], key: &str) -> &'s str {
    stats
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}= in {stats:?}"))
}

/// Wait up to `timeout` for a whole line (ended by its newline: the guest writes a character
/// at a time) containing `marker` in the file `log`.
pub fn wait_for_line(log: &Path, marker: &str, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(text) = std::fs::read_to_string(log) {
            let whole = text.split_inclusive('\n').filter(|l| l.ends_with('\n'));
            if let Some(line) = whole.into_iter().find(|l| l.contains(marker)) {
                return Some(line.trim().to_owned());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

// ---- deltas over a Folder's base -------------------------------------------------------

/// A COWD child of `parent` (cid, hint) over the folder's capacity: descriptor and extent.
pub fn cowd_child(
    f: &Folder,
    name: &str,
    cid: u32,
    parent: (u32, &str),
    grain_sectors: u64,
    grains: &[(u64, Kind)],
) -> PathBuf {
    cowd_child_sized(
        f,
        name,
        cid,
        parent,
        grain_sectors,
        grains,
        f.capacity_sectors,
    )
}

/// A COWD child whose capacity is `capacity_sectors` (may differ from its parent's).
pub fn cowd_child_sized(
    f: &Folder,
    name: &str,
    cid: u32,
    parent: (u32, &str),
    grain_sectors: u64,
    grains: &[(u64, Kind)],
    capacity_sectors: u64,
) -> PathBuf {
    f.cowd_child_sized(name, cid, parent, grain_sectors, grains, capacity_sectors)
        .0
}

/// An SEsparse child (4 KiB grains) of `parent`: descriptor and extent.
pub fn sesparse_child(
    f: &Folder,
    name: &str,
    cid: u32,
    parent: (u32, &str),
    grains: &[(u64, Kind)],
) -> PathBuf {
    f.sesparse_child(name, cid, parent, grains, &SeSparseOptions::default())
        .0
}

/// A hosted sparse (KDMV, monolithicSparse) child of the folder's `base.vmdk`, made by
/// qemu-img and written by qemu-io: each command is one qemu-io `-c` argument.
pub fn qemu_child(f: &Folder, name: &str, qemu_io: &[&str]) -> PathBuf {
    qemu_child_of(f, "base.vmdk", name, qemu_io)
}

/// [`qemu_child`] of the folder's `parent`.
pub fn qemu_child_of(f: &Folder, parent: &str, name: &str, qemu_io: &[&str]) -> PathBuf {
    // Run in the folder with relative names, so the child's parentFileNameHint stays inside it.
    let file = format!("{name}.vmdk");
    let child = f.path(&file);
    let out = Command::new("qemu-img")
        .current_dir(f.dir.path())
        .args(["create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on"])
        .args(["-b", parent, "-F", "vmdk", &file])
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "qemu-img create:\n{}", show(&out));
    let mut io = Command::new("qemu-io");
    io.args(["-f", "vmdk"]);
    for c in qemu_io {
        io.args(["-c", c]);
    }
    let out = io.arg(&child).output().expect("qemu-io runs");
    assert!(out.status.success(), "qemu-io:\n{}", show(&out));
    child
}

/// The folder's base as a monolithicSparse (KDMV) image `name`, as VMware Workstation keeps
/// disks, converted by qemu-img.
pub fn sparse_base(f: &Folder, name: &str) -> PathBuf {
    let out = Command::new("qemu-img")
        .current_dir(f.dir.path())
        .args(["convert", "-q", "-f", "vmdk", "-O", "vmdk"])
        .args(["-o", "subformat=monolithicSparse", "base.vmdk", name])
        .output()
        .expect("qemu-img runs");
    assert!(out.status.success(), "qemu-img convert:\n{}", show(&out));
    f.path(name)
}
