//! Migration plans for the tests: VMs with 8 MiB bases and COWD deltas, spread over two URIs of the local daemon; reading back each step's times from the import state.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vmdkimport::state::{ImportState, NS_URI};
use vmdkimport::units::parse_utc_ms;

use super::fixtures::Kind;
use super::import::{cowd_child, MIB};
use super::libvirt::{unique_name, TestPool};
use super::{Folder, BASE_CID, BIN};

pub const CAP: u64 = 8 * MIB;

/// One VM of a test plan: its domain, pool, folder and delta.
pub struct PlanVm {
    pub name: String,
    pub uri: String,
    pub group: String,
    pub folder: Folder,
    pub delta: PathBuf,
}

/// `n` VMs alternating between the two pools (each with its own URI), in `groups` source
/// groups (VM i in group i % groups); VM `bad` (if any) gets a delta whose parentCID is not
/// its base's CID.
pub fn vms(pools: &[&TestPool], n: usize, groups: usize, bad: Option<usize>) -> Vec<PlanVm> {
    (0..n)
        .map(|i| {
            let tp = pools[i % pools.len()];
            let name = unique_name(&format!("plan{i}"));
            tp.track_domain(&name);
            let folder = Folder::base(CAP / 512);
            let grains: Vec<(u64, Kind)> =
                (0..16).map(|g| (g * 97 + i as u64, Kind::Data)).collect();
            let parent = if bad == Some(i) {
                0x00ba_dc1d
            } else {
                BASE_CID
            };
            let delta = cowd_child(
                &folder,
                "d1",
                0xd1 + i as u32,
                (parent, "base.vmdk"),
                8,
                &grains,
            );
            PlanVm {
                name,
                uri: tp.conn.uri().to_string(),
                group: format!("nas{}", i % groups),
                folder,
                delta,
            }
        })
        .collect()
}

/// The plan file's text: `head` (limits), defaults for small test domains, one entry per VM.
pub fn plan_text(head: &str, pools: &[&TestPool], vms: &[PlanVm]) -> String {
    let mut t = format!(
        "{head}\n[defaults]\nmemory = 64\ncpu = \"default\"\nos = \"linux\"\nno_start = true\n"
    );
    for (i, v) in vms.iter().enumerate() {
        t += &format!(
            "\n[[vm]]\nname = \"{}\"\nconnect = \"{}\"\npool = \"{}\"\nsource_group = \"{}\"\nflat = \"{}\"\ndeltas = [\"{}\"]\n",
            v.name,
            v.uri,
            pools[i % pools.len()].name,
            v.group,
            v.folder.path("base.vmdk").display(),
            v.delta.display()
        );
    }
    t
}

/// Write the plan into `dir`; its path.
pub fn write_plan(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("migration.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `virt-vmdkimport plan ACTION PLAN EXTRA...`, in a process group of its own.
pub fn plan_cmd(action: &str, plan: &Path, extra: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(BIN);
    c.args(["plan", action])
        .arg(plan)
        .args(extra)
        .stdin(Stdio::null())
        .process_group(0);
    c
}

pub fn run_plan(action: &str, plan: &Path, extra: &[&str]) -> Output {
    plan_cmd(action, plan, extra).output().expect("binary runs")
}

/// The import state of `vm`'s domain, if it has one.
pub fn state_of(tp: &TestPool, vm: &PlanVm) -> Option<ImportState> {
    let dom = tp.conn.domain(&vm.name).unwrap()?;
    let xml = dom.metadata(NS_URI).unwrap()?;
    Some(ImportState::from_xml(&xml).unwrap())
}

/// One recorded step: (VM index, began ms, ended ms).
pub type Span = (usize, i64, i64);

/// The `step` records of every VM, as spans.
pub fn spans(pools: &[&TestPool], vms: &[PlanVm], step: &str) -> Vec<Span> {
    let mut out = Vec::new();
    for (i, v) in vms.iter().enumerate() {
        let st =
            state_of(pools[i % pools.len()], v).unwrap_or_else(|| panic!("{}: no state", v.name));
        for s in st.steps.iter().filter(|s| s.name == step) {
            let b = parse_utc_ms(&s.began).expect("began parses");
            let e = parse_utc_ms(&s.ended).expect("ended parses");
            assert!(b <= e, "{}: {s:?}", v.name);
            out.push((i, b, e));
        }
    }
    out
}

/// The most spans of `spans` that `key` puts in one group running at one instant.
pub fn max_overlap(spans: &[Span], key: impl Fn(usize) -> String) -> usize {
    let mut best = 0;
    for &(_, b, _) in spans {
        // At each span's start, count the spans of each group that run then.
        let mut counts = std::collections::HashMap::new();
        for &(j, b2, e2) in spans {
            if b2 <= b && b < e2 {
                *counts.entry(key(j)).or_insert(0) += 1;
            }
        }
        best = best.max(counts.values().copied().max().unwrap_or(0));
    }
    best
}
