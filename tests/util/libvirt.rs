//! Test pools on the real libvirtd: a dir pool per test under /var/tmp, removed with everything in it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vmdkimport::libvirt::{connect, download, upload_at, Conn, Dom, Pool, Vol};

/// The local system daemon the tests use.
pub const LOCAL_URI: &str = "qemu:///system";
/// The same daemon over loopback TCP without auth (scripts/setup-host.sh enables it).
pub const REMOTE_URI: &str = "qemu+tcp://127.0.0.1/system";

/// A name no other test (in this process or another) uses: prefix, tag, pid, counter.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "vmdkimport-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A started, transient dir pool in its own directory; its volumes, the domains defined
/// through it and the directory go away on drop, even when the test failed.
pub struct TestPool {
    pub conn: Conn,
    pub pool: Pool,
    pub name: String,
    /// The test's directory: holds the pool's directory `pool/` and any other test files.
    pub dir: PathBuf,
    domains: RefCell<Vec<String>>,
}

impl TestPool {
    /// A pool on the local daemon (`qemu:///system`).
    pub fn new(tag: &str) -> TestPool {
        Self::on(LOCAL_URI, tag)
    }

    /// A pool on the daemon at `uri`.
    pub fn on(uri: &str, tag: &str) -> TestPool {
        let conn = connect(Some(uri))
            .unwrap_or_else(|e| panic!("{e:#} (is libvirtd running? see scripts/setup-host.sh)"));
        let name = unique_name(tag);
        let dir = PathBuf::from("/var/tmp").join(&name);
        let pool_dir = dir.join("pool");
        std::fs::create_dir_all(&pool_dir).expect("creating the test pool directory");
        let xml = format!(
            "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
            pool_dir.display()
        );
        // Transient: it leaves no definition behind once destroyed.
        if let Err(e) = conn.raw().create_storage_pool_xml(&xml, 0) {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("creating test pool {name}: {e}");
        }
        let pool = conn.pool(&name).expect("looking up the new test pool");
        TestPool {
            conn,
            pool,
            name,
            dir,
            domains: RefCell::new(Vec::new()),
        }
    }

    /// The same pool through a new connection, after the daemon restarted (the old one is
    /// dead, and cleanup needs a live one).
    pub fn reconnected(self) -> TestPool {
        let old = std::mem::ManuallyDrop::new(self);
        let conn = connect(Some(old.conn.uri())).unwrap_or_else(|e| panic!("{e:#}"));
        let pool = conn.pool(&old.name).unwrap_or_else(|e| panic!("{e:#}"));
        let domains = RefCell::new(old.domains.borrow().clone());
        TestPool {
            conn,
            pool,
            name: old.name.clone(),
            dir: old.dir.clone(),
            domains,
        }
    }

    /// Create a volume (named uniquely from `tag`) of `capacity` bytes.
    pub fn volume(&self, tag: &str, capacity: u64) -> Vol {
        let name = format!("{tag}.img");
        self.pool
            .create_volume(&name, capacity)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Define a domain from `xml` and remove it when the pool goes.
    pub fn define_domain(&self, xml: &str) -> Dom {
        let dom = self
            .conn
            .define_domain(xml)
            .unwrap_or_else(|e| panic!("{e:#}"));
        self.domains.borrow_mut().push(dom.name().to_owned());
        dom
    }

    /// Remember a domain defined some other way (by the code under test) for cleanup.
    pub fn track_domain(&self, name: &str) {
        self.domains.borrow_mut().push(name.to_owned());
    }

    /// A path inside the test's directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The pool's directory (where its volumes' files are).
    pub fn pool_dir(&self) -> PathBuf {
        self.dir.join("pool")
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // Best effort throughout: a failure here must not hide the test's own failure.
        for name in self.domains.borrow().iter() {
            if let Ok(Some(dom)) = self.conn.domain(name) {
                if dom.is_active().unwrap_or(false) {
                    let _ = dom.destroy();
                }
                if let Err(e) = dom.undefine() {
                    eprintln!("cleanup: {e:#}");
                }
            }
        }
        if let Ok(vols) = self.pool.raw().list_all_volumes(0) {
            for vol in vols {
                let _ = vol.delete(0);
            }
        }
        if let Err(e) = self.pool.raw().destroy() {
            eprintln!("cleanup: destroying pool {}: {e}", self.name);
        }
        remove_dir(&self.dir);
    }
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("cleanup: removing {}: {e}", dir.display());
        }
    }
}

/// A loop device over a file, detached (and the file removed) on drop.
pub struct LoopDev {
    pub dev: PathBuf,
    pub backing: PathBuf,
}

impl LoopDev {
    /// Attach `backing` (which must exist) to a free loop device; `None` where this machine
    /// has no usable loop devices (an unprivileged container, for example).
    pub fn attach(backing: &Path) -> Option<LoopDev> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(backing)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(LoopDev {
            dev,
            backing: backing.to_owned(),
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

/// Every byte of `vol`, through a libvirt download stream.
pub fn read_volume(vol: &Vol) -> Vec<u8> {
    let cap = vol.capacity().unwrap();
    let mut out = Vec::with_capacity(cap as usize);
    let n = download(vol, 0, cap, &mut out).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(n, cap);
    out
}

/// Overwrite every byte of `vol` with `byte`.
pub fn fill_volume(vol: &Vol, byte: u8) {
    let cap = vol.capacity().unwrap();
    upload_at(vol, 0, cap, &mut |_, buf| {
        buf.fill(byte);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}
