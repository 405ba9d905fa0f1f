//! Helpers for the end-to-end .vmx import tests: VM folders as ESX leaves them after a
//! snapshot (flat bases with vmfs descriptors, COWD and SEsparse children), the CLI and virsh
//! run as subprocesses, a transient isolated libvirt network, console-log plumbing and a small
//! independent XML reader for the domain XML libvirt hands back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::fixtures::{descriptor, write_cowd, write_sesparse, Grains, SeSparseOptions, SECTOR};
use super::libvirt::{unique_name, TestPool, LOCAL_URI};
use super::BIN;

// ---------------------------------------------------------------------------------------------
// VM folders

/// Write `STEM-flat.vmdk` (the bytes of `data`) and its descriptor `STEM.vmdk` (createType
/// vmfs, one VMFS extent, CID `cid`), as ESX lays out a base disk. Returns the descriptor.
pub fn flat_base(dir: &Path, stem: &str, data: &[u8], cid: u32) -> PathBuf {
    assert_eq!(data.len() as u64 % SECTOR, 0, "a disk is whole sectors");
    let sectors = data.len() as u64 / SECTOR;
    std::fs::write(dir.join(format!("{stem}-flat.vmdk")), data).unwrap();
    let d = descriptor(
        cid,
        None,
        "vmfs",
        &[format!("RW {sectors} VMFS \"{stem}-flat.vmdk\"")],
    );
    let p = dir.join(format!("{stem}.vmdk"));
    std::fs::write(&p, d).unwrap();
    p
}

/// A snapshot child `NAME.vmdk` (createType vmfsSparse) over the descriptor `parent`
/// (parentCID `parent_cid`) with its COWD extent `NAME-delta.vmdk` (grain size 1 sector, as
/// ESX writes them). Returns the child descriptor.
#[allow(clippy::too_many_arguments)]
pub fn cowd_child(
    dir: &Path,
    name: &str,
    parent: &str,
    parent_cid: u32,
    cid: u32,
    capacity_sectors: u64,
    grains: &Grains,
    fill: &mut dyn FnMut(u64, &mut [u8]),
) -> PathBuf {
    let extent = format!("{name}-delta.vmdk");
    write_cowd(
        &dir.join(&extent),
        capacity_sectors,
        1,
        grains,
        fill,
        &Default::default(),
    )
    .unwrap();
    let d = descriptor(
        cid,
        Some((parent_cid, parent)),
        "vmfsSparse",
        &[format!("RW {capacity_sectors} VMFSSPARSE \"{extent}\"")],
    );
    let p = dir.join(format!("{name}.vmdk"));
    std::fs::write(&p, d).unwrap();
    p
}

/// Set or clear the uncleanShutdown field of a COWD extent, as ESX keeps it set while the
/// delta is open (the VM still running on it).
pub fn set_cowd_unclean(extent: &Path, unclean: bool) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(extent)
        .unwrap();
    f.write_all_at(&u32::from(unclean).to_le_bytes(), 1648)
        .unwrap();
}

/// A snapshot child `NAME.vmdk` (createType seSparse) over `parent` with its SEsparse extent
/// `NAME-sesparse.vmdk` (4 KiB grains). Returns the child descriptor.
#[allow(clippy::too_many_arguments)]
pub fn sesparse_child(
    dir: &Path,
    name: &str,
    parent: &str,
    parent_cid: u32,
    cid: u32,
    capacity_sectors: u64,
    grains: &Grains,
    fill: &mut dyn FnMut(u64, &mut [u8]),
) -> PathBuf {
    let extent = format!("{name}-sesparse.vmdk");
    write_sesparse(
        &dir.join(&extent),
        capacity_sectors,
        grains,
        fill,
        &SeSparseOptions::default(),
    )
    .unwrap();
    let d = descriptor(
        cid,
        Some((parent_cid, parent)),
        "seSparse",
        &[format!("RW {capacity_sectors} SESPARSE \"{extent}\"")],
    );
    let p = dir.join(format!("{name}.vmdk"));
    std::fs::write(&p, d).unwrap();
    p
}

/// A `uuid.bios` value no other test run uses, as VMware writes it, and the canonical form
/// libvirt shows: (`56 4d 12 ... bc-de f0 ... bc`, `564d12..-....`).
pub fn unique_bios_uuid() -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut b = [0u8; 16];
    b[0] = 0x56;
    b[1] = 0x4d;
    b[2..6].copy_from_slice(&std::process::id().to_be_bytes());
    b[6..8].copy_from_slice(&(NEXT.fetch_add(1, Ordering::Relaxed) as u16).to_be_bytes());
    b[8..16].copy_from_slice(&nanos.to_be_bytes());
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    let vmware = format!("{}-{}", hex[..8].join(" "), hex[8..].join(" "));
    let all = hex.concat();
    let canonical = format!(
        "{}-{}-{}-{}-{}",
        &all[0..8],
        &all[8..12],
        &all[12..16],
        &all[16..20],
        &all[20..32]
    );
    (vmware, canonical)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The finished run of a command, printable in assertion messages.
pub struct Run {
    pub what: String,
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }
    /// Panic with everything it printed unless it exited 0.
    pub fn ok(self) -> Run {
        assert!(self.out.status.success(), "{self}");
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {:?}\n--- stdout\n{}--- stderr\n{}",
            self.what,
            self.out.status.code(),
            self.stdout(),
            self.stderr()
        )
    }
}

fn run(program: &str, args: &[&str]) -> Run {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let run = Run {
        what: format!(
            "{} {}",
            Path::new(program).file_name().unwrap().to_string_lossy(),
            shell_words(args)
        ),
        out,
    };
    eprintln!("{}", run.what);
    run
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `virt-vmdkimport ARGS...`
pub fn tool(args: &[&str]) -> Run {
    run(BIN, args)
}

/// `virt-vmdkimport -c qemu:///system --domain DOMAIN --pool POOL --vmx VMX EXTRA...`
pub fn import(tp: &TestPool, domain: &str, vmx: &Path, extra: &[&str]) -> Run {
    import_on(LOCAL_URI, tp, domain, vmx, extra)
}

/// `virt-vmdkimport -c URI --domain DOMAIN --pool POOL --vmx VMX EXTRA...`
pub fn import_on(uri: &str, tp: &TestPool, domain: &str, vmx: &Path, extra: &[&str]) -> Run {
    let vmx = vmx.to_str().unwrap();
    let mut args = vec![
        "-c", uri, "--domain", domain, "--pool", &tp.name, "--vmx", vmx,
    ];
    args.extend_from_slice(extra);
    tool(&args)
}

/// `virsh -c qemu:///system ARGS...`
pub fn virsh(args: &[&str]) -> Run {
    let mut a = vec!["-c", LOCAL_URI];
    a.extend_from_slice(args);
    run("virsh", &a)
}

/// The domain's persistent XML as `virsh dumpxml --inactive` prints it.
pub fn dumpxml(domain: &str) -> String {
    virsh(&["dumpxml", "--inactive", domain]).ok().stdout()
}

pub fn domain_exists(domain: &str) -> bool {
    let r = virsh(&["dominfo", domain]);
    if r.out.status.success() {
        return true;
    }
    assert!(
        r.stderr().contains("failed to get domain") || r.stderr().contains("Domain not found"),
        "{r}"
    );
    false
}

pub fn domstate(domain: &str) -> String {
    virsh(&["domstate", domain])
        .ok()
        .stdout()
        .trim()
        .to_string()
}

/// Check `xml` against libvirt's domain schema with virt-xml-validate.
pub fn validate_domain_xml(xml: &str) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), xml).unwrap();
    let r = run("virt-xml-validate", &[f.path().to_str().unwrap(), "domain"]);
    assert!(r.out.status.success(), "{r}\n{xml}");
}

/// Log the domain's pty console (COM1) to `log` too: add `<log file=... append='off'/>` to its
/// `<serial type='pty'>` and define the domain again. Everything else (the import state in
/// the metadata included) stays as it was.
pub fn add_console_log(domain: &str, log: &Path) {
    let xml = dumpxml(domain);
    let open = "<serial type='pty'>";
    assert_eq!(
        xml.matches(open).count(),
        1,
        "expected one pty serial in:\n{xml}"
    );
    let with_log = xml.replacen(
        open,
        &format!("{open}\n      <log file='{}' append='off'/>", log.display()),
        1,
    );
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &with_log).unwrap();
    virsh(&["define", f.path().to_str().unwrap()]).ok();
    assert!(
        dumpxml(domain).contains(&log.display().to_string()),
        "the log element did not stick"
    );
}

/// Wait up to `timeout` for a line containing `marker` in the file `log`; polls.
pub fn wait_for_line(log: &Path, marker: &str, timeout: Duration) -> Option<String> {
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(log) {
            let text = String::from_utf8_lossy(&bytes);
            if let Some(line) = text.lines().find(|l| l.contains(marker)) {
                // Only a complete line: the hash digits may still be on their way.
                if text.contains(&format!("{line}\n")) || text.contains(&format!("{line}\r")) {
                    return Some(line.trim().to_string());
                }
            }
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A transient libvirt network over a host bridge of its own (`<forward mode='bridge'/>`: no
/// DHCP, no firewall rules, which this host could not apply without iptables); the network
/// and the bridge go away on drop.
pub struct TestNet {
    pub name: String,
    pub bridge: String,
}

impl TestNet {
    pub fn isolated(tag: &str) -> TestNet {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = unique_name(tag);
        // Interface names have at most 15 characters.
        let bridge = format!(
            "vkbr{:x}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        assert!(bridge.len() <= 15, "{bridge}");
        run("ip", &["link", "add", &bridge, "type", "bridge"]).ok();
        let net = TestNet { name, bridge };
        run("ip", &["link", "set", &net.bridge, "up"]).ok();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            format!(
                "<network><name>{}</name><forward mode='bridge'/><bridge name='{}'/></network>",
                net.name, net.bridge
            ),
        )
        .unwrap();
        virsh(&["net-create", f.path().to_str().unwrap()]).ok();
        net
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let r = virsh(&["net-destroy", &self.name]);
        if !r.out.status.success() && !r.stderr().contains("no network with matching name") {
            eprintln!("cleanup: {r}");
        }
        let r = run("ip", &["link", "del", &self.bridge]);
        if !r.out.status.success() {
            eprintln!("cleanup: {r}");
        }
    }
}

/// The whole content of volume `name` in the test pool.
pub fn volume_bytes(tp: &TestPool, name: &str) -> Vec<u8> {
    let vol = tp
        .pool
        .volume(name)
        .unwrap_or_else(|e| panic!("volume {name}: {e:#}"));
    let cap = vol.capacity().unwrap();
    let mut out = Vec::with_capacity(cap as usize);
    let n = vmdkimport::libvirt::download(&vol, 0, cap, &mut out)
        .unwrap_or_else(|e| panic!("downloading {name}: {e:#}"));
    assert_eq!(n, cap, "downloaded length of {name}");
    out
}

/// Names of the volumes in the test pool, sorted.
pub fn volume_names(tp: &TestPool) -> Vec<String> {
    tp.pool.refresh().unwrap();
    let mut v: Vec<String> = tp
        .pool
        .raw()
        .list_all_volumes(0)
        .unwrap()
        .iter()
        .map(|v| v.name().unwrap())
        .collect();
    v.sort();
    v
}

pub use super::xml::El;

/// What a test checks of a domain's disks: (device, target dev, bus, source pool, source volume).
pub fn disks_of(dom: &El) -> Vec<(String, String, String, String, String)> {
    dom.one("devices")
        .all("disk")
        .into_iter()
        .map(|d| {
            let s = |e: Option<&El>, k: &str| e.and_then(|e| e.at(k)).unwrap_or("").to_string();
            (
                d.at("device").unwrap_or("").to_string(),
                s(d.opt("target"), "dev"),
                s(d.opt("target"), "bus"),
                s(d.opt("source"), "pool"),
                s(d.opt("source"), "volume"),
            )
        })
        .collect()
}

/// Each NIC: (type, source network or bridge, model, MAC).
pub fn nics_of(dom: &El) -> Vec<(String, String, String, String)> {
    dom.one("devices")
        .all("interface")
        .into_iter()
        .map(|i| {
            let s = |e: Option<&El>, k: &str| e.and_then(|e| e.at(k)).unwrap_or("").to_string();
            let src = i.opt("source");
            (
                i.at("type").unwrap_or("").to_string(),
                s(src, "network") + &s(src, "bridge"),
                s(i.opt("model"), "type"),
                s(i.opt("mac"), "address"),
            )
        })
        .collect()
}

/// `<memory>` in MiB, whatever unit libvirt wrote it in.
pub fn memory_mib(dom: &El) -> u64 {
    mib_of(dom.one("memory"))
}

/// An element holding a memory size (text and `unit`) in MiB.
pub fn mib_of(m: &El) -> u64 {
    let n: u64 = m.text.trim().parse().unwrap();
    match m.at("unit").unwrap_or("KiB") {
        "KiB" | "k" | "K" => n / 1024,
        "MiB" | "M" => n,
        "GiB" | "G" => n * 1024,
        "b" | "bytes" => n >> 20,
        u => panic!("memory unit {u}"),
    }
}
