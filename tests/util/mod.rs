//! Shared helpers for the integration tests: fixture folders, the qemu-img oracle, running the binary.
#![allow(dead_code)]

pub mod bootimg;
pub mod esx;
pub mod fixtures;
pub mod import;
pub mod interrupt;
pub mod ladder;
pub mod libvirt;
pub mod overlay;
pub mod plan;
pub mod testboot;
pub mod vmximport;
pub mod xml;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fixtures::{
    descriptor, pattern, write_cowd, write_sesparse, CowdOptions, Kind, SeSparseOptions, SECTOR,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_virt-vmdkimport");

/// CID of every base written by [`Folder::base`].
pub const BASE_CID: u32 = 0x5d2667d;

/// A temporary folder holding a base disk and its deltas.
pub struct Folder {
    pub dir: tempfile::TempDir,
    pub capacity_sectors: u64,
}

impl Folder {
    /// A folder with `base-flat.vmdk` (patterned, with a zero stretch) and `base.vmdk`
    /// (createType vmfs, one VMFS extent).
    pub fn base(capacity_sectors: u64) -> Folder {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; (capacity_sectors * SECTOR) as usize];
        let mut fill = pattern(0xba5e);
        for (i, s) in data.chunks_mut(SECTOR as usize).enumerate() {
            if i % 7 != 3 {
                fill(i as u64, s);
            }
        }
        std::fs::write(dir.path().join("base-flat.vmdk"), &data).unwrap();
        let d = descriptor(
            BASE_CID,
            None,
            "vmfs",
            &[format!("RW {capacity_sectors} VMFS \"base-flat.vmdk\"")],
        );
        std::fs::write(dir.path().join("base.vmdk"), d).unwrap();
        Folder {
            dir,
            capacity_sectors,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A COWD child (descriptor + `-delta.vmdk` extent) of `parent` (cid, file name) at the
    /// folder's capacity; returns (descriptor, extent).
    pub fn cowd_child(
        &self,
        name: &str,
        cid: u32,
        parent: (u32, &str),
        grain_sectors: u64,
        grains: &[(u64, Kind)],
    ) -> (PathBuf, PathBuf) {
        self.cowd_child_sized(
            name,
            cid,
            parent,
            grain_sectors,
            grains,
            self.capacity_sectors,
        )
    }

    /// [`Folder::cowd_child`] of another capacity (for capacity-mismatch cases).
    pub fn cowd_child_sized(
        &self,
        name: &str,
        cid: u32,
        parent: (u32, &str),
        grain_sectors: u64,
        grains: &[(u64, Kind)],
        capacity_sectors: u64,
    ) -> (PathBuf, PathBuf) {
        let extent = format!("{name}-delta.vmdk");
        let ep = self.path(&extent);
        write_cowd(
            &ep,
            capacity_sectors,
            grain_sectors,
            grains,
            &mut pattern(cid as u64),
            &CowdOptions::default(),
        )
        .unwrap();
        let d = descriptor(
            cid,
            Some(parent),
            "vmfsSparse",
            &[format!("RW {capacity_sectors} VMFSSPARSE \"{extent}\"")],
        );
        (self.write(&format!("{name}.vmdk"), &d), ep)
    }

    /// An SEsparse child (descriptor + `-sesparse.vmdk` extent) of `parent`; returns
    /// (descriptor, extent).
    pub fn sesparse_child(
        &self,
        name: &str,
        cid: u32,
        parent: (u32, &str),
        grains: &[(u64, Kind)],
        opts: &SeSparseOptions,
    ) -> (PathBuf, PathBuf) {
        let extent = format!("{name}-sesparse.vmdk");
        let ep = self.path(&extent);
        write_sesparse(
            &ep,
            self.capacity_sectors,
            grains,
            &mut pattern(cid as u64),
            opts,
        )
        .unwrap();
        let d = descriptor(
            cid,
            Some(parent),
            "seSparse",
            &[format!(
                "RW {} SESPARSE \"{extent}\"",
                self.capacity_sectors
            )],
        );
        (self.write(&format!("{name}.vmdk"), &d), ep)
    }

    /// A fresh target holding the base's bytes.
    pub fn target(&self) -> PathBuf {
        let t = self.path("target.raw");
        std::fs::copy(self.path("base-flat.vmdk"), &t).unwrap();
        t
    }
}

/// What qemu-img reads for the chain whose top is `top`.
pub fn qemu_read(top: &Path) -> Vec<u8> {
    let out = top.with_extension("expected.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "vmdk", "-O", "raw"])
        .arg(top)
        .arg(&out)
        .output()
        .expect("qemu-img runs");
    assert!(
        st.status.success(),
        "qemu-img convert {}: {}",
        top.display(),
        String::from_utf8_lossy(&st.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(out).unwrap();
    bytes
}

/// Run `virt-vmdkimport --target TARGET ARGS...`.
pub fn apply<A: AsRef<std::ffi::OsStr>>(target: &Path, args: &[A]) -> Output {
    Command::new(BIN)
        .arg("--target")
        .arg(target)
        .args(args)
        .output()
        .expect("binary runs")
}

/// Apply `deltas` to a copy of the base and check the target equals qemu-img's reading of `top`.
pub fn assert_matches_qemu(f: &Folder, top: &Path, deltas: &[&Path]) -> Vec<u8> {
    let expected = qemu_read(top);
    let target = f.target();
    assert!(
        std::fs::read(&target).unwrap() != expected,
        "fixture changes nothing: the test would prove nothing"
    );
    let out = apply(&target, deltas);
    assert!(
        out.status.success(),
        "apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&target).unwrap();
    assert_eq!(got.len(), expected.len(), "target size");
    if let Some(i) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "target differs from qemu-img at byte {i} (sector {})",
            i / 512
        );
    }
    got
}

/// Tiny deterministic PRNG (xorshift64*), so tests need no extra crates.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Compare two images without printing megabytes: the first differing byte and its sector.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if got == want {
        // memcmp: quick even in a debug build.
        return;
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i} (sector {}): got {:#04x}, want {:#04x}",
            i / 512,
            got[i],
            want[i]
        );
    }
}

/// Random grain list over `capacity_grains`: `n` distinct grains, kinds chosen by `kinds`,
/// stored in shuffled order. Always includes the first and the last grain.
pub fn scatter(rng: &mut Rng, capacity_grains: u64, n: usize, kinds: &[Kind]) -> Vec<(u64, Kind)> {
    let mut set = std::collections::BTreeSet::new();
    set.insert(0);
    set.insert(capacity_grains - 1);
    while set.len() < n {
        let g = rng.below(capacity_grains);
        // Sometimes a short run, so contiguous grains get merged.
        for k in 0..=rng.below(4) {
            if g + k < capacity_grains {
                set.insert(g + k);
            }
        }
    }
    let mut v: Vec<_> = set
        .into_iter()
        .map(|g| (g, kinds[rng.below(kinds.len() as u64) as usize]))
        .collect();
    rng.shuffle(&mut v);
    v
}
