//! The stand-in ESXi host's "running VM" (tests only): keeps writing into the top of each disk.
//!
//! ```text
//! standin_vm --root STANDIN_ROOT --id VMID --vmx PATH
//! ```
//!
//! Started detached by the stand-in `vim-cmd vmsvc/power.on` (tests/fixtures/esx). It loads
//! each disk the .vmx names (qemu-img's reading of its chain) and then, every ~50 ms and holding
//! `<vm folder>/.standin-vm.lock` (the lock `snapshot.create` takes), writes one round: on disk
//! 0 a 4 KiB payload at bytes 512..4608 (the sectors the boot-sector guest hashes), different
//! each round, and on every disk 8 random 4 KiB blocks at or past byte 8192. A flat base top is
//! written in place; a sparse top (COWD or SEsparse) is rewritten whole, holding every grain
//! written since it became the top. `<top extent>.standin-lock` marks the file it holds. When
//! `standin/stop-<id>` appears it writes one last round, saves that round's payload in
//! `standin/last-payload-<id>` and powers off (see `shut_down`).

#[path = "../tests/util/fixtures.rs"]
mod fixtures;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use fixtures::{pattern, write_cowd, write_sesparse, Kind, XorShift as Rng};
use vmdkimport::vmdk::descriptor::{Descriptor, ExtentKind};

/// Bytes of the per-round payload on disk 0, and of every random block.
const BLOCK: usize = 4096;
/// Where the payload goes on disk 0: sectors 1..=8.
const PAYLOAD_AT: usize = 512;
/// Random blocks each round, per disk.
const BLOCKS_PER_ROUND: usize = 8;
/// Random blocks stay clear of the boot sector and the payload.
const RANDOM_FROM: usize = 8192;
const ROUND_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, Parser)]
struct Args {
    /// The stand-in's root (STANDIN_ROOT): its state is in ROOT/standin.
    #[arg(long)]
    root: PathBuf,
    /// The VM id (vim-cmd's Vmid).
    #[arg(long)]
    id: u32,
    /// The VM's .vmx.
    #[arg(long)]
    vmx: PathBuf,
}

/// How a top is written.
enum Layout {
    /// A flat base: data at `offset` bytes into `extent`.
    Flat { extent: PathBuf, offset: u64 },
    /// A sparse delta, rewritten whole from the image: its grain size and the grains it holds.
    Sparse {
        extent: PathBuf,
        sesparse: bool,
        grain: usize,
        dirty: BTreeSet<u64>,
    },
}

impl Layout {
    fn extent(&self) -> &Path {
        match self {
            Layout::Flat { extent, .. } | Layout::Sparse { extent, .. } => extent,
        }
    }
}

/// One disk: its virtual content and the descriptor the .vmx names for it now.
struct Disk {
    image: Vec<u8>,
    top: PathBuf,
    layout: Layout,
}

/// `<file>.standin-lock`: while it exists the stand-in dd refuses to read `file`.
fn marker(extent: &Path) -> PathBuf {
    let mut s = extent.as_os_str().to_owned();
    s.push(".standin-lock");
    PathBuf::from(s)
}

/// The disk descriptors a .vmx names (`scsiX:Y.fileName = "....vmdk"` and the sata/ide/nvme
/// ones), in file order, resolved against the .vmx's folder.
fn vmx_disks(vmx: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string(vmx).with_context(|| format!("reading {}", vmx.display()))?;
    let dir = vmx.parent().unwrap_or(Path::new("."));
    let mut disks = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        let Some(dev) = key.strip_suffix(".fileName") else {
            continue;
        };
        let bus = dev.trim_end_matches(|c: char| c.is_ascii_digit() || c == ':');
        let unit = &dev[bus.len()..];
        let numbered = unit.split_once(':').is_some_and(|(a, b)| {
            !a.is_empty() && !b.is_empty() && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit())
        });
        let file = value.trim_matches('"');
        // CD-ROM images and the like are no disks.
        if ["scsi", "sata", "ide", "nvme"].contains(&bus) && numbered && file.ends_with(".vmdk") {
            disks.push(dir.join(file));
        }
    }
    ensure!(!disks.is_empty(), "{}: no disk", vmx.display());
    Ok(disks)
}

/// `qemu-img convert` of the chain whose top is `top`, read into memory.
fn load(top: &Path, scratch: &Path) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "vmdk", "-O", "raw"])
        .arg(top)
        .arg(scratch)
        .output()
        .context("running qemu-img")?;
    ensure!(
        out.status.success(),
        "qemu-img convert {}: {}",
        top.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let image = std::fs::read(scratch)?;
    std::fs::remove_file(scratch)?;
    Ok(image)
}

/// Byte ranges qemu-img finds allocated in `top` itself (depth 0), as (start, length).
fn allocated_in_top(top: &Path) -> anyhow::Result<Vec<(u64, u64)>> {
    let out = Command::new("qemu-img")
        .args(["map", "-U", "-f", "vmdk", "--output=json"])
        .arg(top)
        .output()
        .context("running qemu-img")?;
    ensure!(
        out.status.success(),
        "qemu-img map {}: {}",
        top.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |entry: &str, key: &str| -> Option<u64> {
        let rest = &entry[entry.find(&format!("\"{key}\": "))? + key.len() + 4..];
        rest[..rest.find([',', '}'])?].trim().parse().ok()
    };
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split('{')
        .filter(|e| e.contains("\"present\": true") && number(e, "depth") == Some(0))
        .filter_map(|e| Some((number(e, "start")?, number(e, "length")?)))
        .collect())
}

/// How to write `top`: its only extent, flat or sparse.
fn layout_of(top: &Path) -> anyhow::Result<Layout> {
    let d = Descriptor::read(top)?;
    let [e] = &d.extents[..] else {
        bail!(
            "{}: the stand-in VM writes one-extent disks only",
            top.display()
        );
    };
    let extent = d
        .folder()
        .join(e.file.as_deref().context("an extent without a file")?);
    let (sesparse, grain) = match (&e.kind, d.parent_cid) {
        (ExtentKind::Flat | ExtentKind::Vmfs, None) => {
            let offset = e.offset * 512;
            return Ok(Layout::Flat { extent, offset });
        }
        (ExtentKind::VmfsSparse, Some(_)) => (false, 512),
        (ExtentKind::SeSparse, Some(_)) => (true, 4096),
        (k, _) => bail!(
            "{}: the stand-in VM cannot write a {} top",
            top.display(),
            k.name()
        ),
    };
    let mut dirty = BTreeSet::new();
    for (start, len) in allocated_in_top(top)? {
        dirty.extend(start / grain..(start + len).div_ceil(grain));
    }
    Ok(Layout::Sparse {
        extent,
        sesparse,
        grain: grain as usize,
        dirty,
    })
}

impl Disk {
    /// The .vmx names `top` now: write there from this round on, holding its extent.
    fn switch_to(&mut self, top: &Path) -> anyhow::Result<()> {
        let layout = layout_of(top)?;
        if layout.extent() != self.layout.extent() {
            remove_marker(self.layout.extent())?;
        }
        std::fs::write(marker(layout.extent()), "")?;
        self.top = top.to_path_buf();
        self.layout = layout;
        Ok(())
    }

    /// Write `blocks` (offset, bytes) into the image and into the top.
    fn write(&mut self, blocks: &[(usize, Vec<u8>)], sync: bool) -> anyhow::Result<()> {
        for (at, data) in blocks {
            self.image[*at..*at + data.len()].copy_from_slice(data);
        }
        let sectors = self.image.len() as u64 / 512;
        match &mut self.layout {
            Layout::Flat { extent, offset } => {
                let f = OpenOptions::new().write(true).open(&*extent)?;
                for (at, data) in blocks {
                    f.write_all_at(data, *offset + *at as u64)?;
                }
                if sync {
                    f.sync_all()?;
                }
            }
            Layout::Sparse {
                extent,
                sesparse,
                grain,
                dirty,
            } => {
                for (at, data) in blocks {
                    dirty.extend((at / *grain) as u64..(at + data.len()).div_ceil(*grain) as u64);
                }
                let grains: Vec<(u64, Kind)> = dirty.iter().map(|&g| (g, Kind::Data)).collect();
                let image = &self.image;
                let g = *grain;
                let mut fill = |i: u64, buf: &mut [u8]| {
                    buf.copy_from_slice(&image[i as usize * g..(i as usize + 1) * g]);
                };
                // Written aside and renamed: a power.off (SIGKILL) leaves a whole file.
                let new = extent.with_file_name(format!(
                    ".{}.standin-new",
                    extent.file_name().unwrap().to_string_lossy()
                ));
                if *sesparse {
                    write_sesparse(&new, sectors, &grains, &mut fill, &Default::default())?;
                } else {
                    write_cowd(&new, sectors, 1, &grains, &mut fill, &Default::default())?;
                }
                if sync {
                    File::open(&new)?.sync_all()?;
                }
                std::fs::rename(&new, &*extent)?;
            }
        }
        Ok(())
    }
}

fn remove_marker(extent: &Path) -> std::io::Result<()> {
    remove_if_there(&marker(extent))
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

struct Vm {
    args: Args,
    lock: File,
    disks: Vec<Disk>,
    rng: Rng,
    seed: u64,
}

impl Vm {
    /// `ROOT/standin/NAME-<id>[.EXT]`
    fn state(&self, name: &str, ext: &str) -> PathBuf {
        let dot = if ext.is_empty() { "" } else { "." };
        let file = format!("{name}-{}{dot}{ext}", self.args.id);
        self.args.root.join("standin").join(file)
    }

    /// Load every disk and hold its top.
    fn start(args: Args) -> anyhow::Result<Vm> {
        let dir = args.vmx.parent().unwrap_or(Path::new("."));
        let lock = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(".standin-vm.lock"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let seed = (nanos as u64) ^ u64::from(std::process::id()) << 32 ^ u64::from(args.id);
        let mut vm = Vm {
            args,
            lock,
            disks: Vec::new(),
            rng: Rng(seed | 1),
            seed,
        };
        vm.lock.lock()?;
        for (i, top) in vmx_disks(&vm.args.vmx)?.into_iter().enumerate() {
            let scratch = vm.state(&format!("vm-disk{i}"), "raw");
            let image = load(&top, &scratch)?;
            ensure!(
                image.len() > RANDOM_FROM,
                "{}: too small a disk",
                top.display()
            );
            let layout = layout_of(&top)?;
            std::fs::write(marker(layout.extent()), "")?;
            vm.disks.push(Disk { image, top, layout });
        }
        vm.lock.unlock()?;
        Ok(vm)
    }

    /// One round of writes, under the lock snapshot.create takes. Returns disk 0's payload.
    fn round(&mut self, n: u64, sync: bool) -> anyhow::Result<Vec<u8>> {
        self.lock.lock()?;
        let result = self.round_locked(n, sync);
        self.lock.unlock()?;
        result
    }

    fn round_locked(&mut self, n: u64, sync: bool) -> anyhow::Result<Vec<u8>> {
        let tops = vmx_disks(&self.args.vmx)?;
        ensure!(
            tops.len() == self.disks.len(),
            "{}: disks added or removed",
            self.args.vmx.display()
        );
        let mut payload = vec![0u8; BLOCK];
        pattern(self.seed)(n, &mut payload);
        for (i, (disk, top)) in self.disks.iter_mut().zip(tops).enumerate() {
            if disk.top != top {
                disk.switch_to(&top)?;
            }
            let mut blocks = Vec::new();
            if i == 0 {
                blocks.push((PAYLOAD_AT, payload.clone()));
            }
            let slots = ((disk.image.len() - RANDOM_FROM) / BLOCK) as u64;
            for k in 0..BLOCKS_PER_ROUND as u64 {
                let at = RANDOM_FROM + self.rng.below(slots) as usize * BLOCK;
                let mut data = vec![0u8; BLOCK];
                pattern(self.seed ^ 0x5a5a)(n << 8 | k << 4 | i as u64, &mut data);
                blocks.push((at, data));
            }
            disk.write(&blocks, sync)?;
        }
        Ok(payload)
    }

    /// Write rounds until `standin/stop-<id>` exists, then one last round.
    fn run(&mut self) -> anyhow::Result<Vec<u8>> {
        let log_path = self.state("vm", "log");
        let done = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .count() as u64;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        for n in done + 1.. {
            let last = self.state("stop", "").exists();
            let payload = self.round(n, last)?;
            writeln!(log, "round {n}")?;
            if last {
                return Ok(payload);
            }
            std::thread::sleep(ROUND_PAUSE);
        }
        unreachable!()
    }

    /// The guest shut down: the last payload saved, the files let go, the hook run, powered off.
    fn shut_down(&self, payload: &[u8]) -> anyhow::Result<()> {
        std::fs::write(self.state("last-payload", ""), payload)?;
        let delay = std::fs::read_to_string(self.state("shutdown-delay", ""))
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        std::thread::sleep(Duration::from_secs_f64(delay.max(0.0)));
        for d in &self.disks {
            remove_marker(d.layout.extent())?;
        }
        remove_if_there(&self.state("stop", ""))?;
        self.run_hook()?;
        std::fs::write(self.state("power", ""), "off\n")?;
        // Unless a power.on since then started the next VM process.
        let pid = self.state("vm", "pid");
        if std::fs::read_to_string(&pid)?.trim() == std::process::id().to_string() {
            std::fs::remove_file(pid)?;
        }
        Ok(())
    }

    /// `standin/on-powered-off-<id>`, when there is one; its output and a failure go to its
    /// .log: the VM powers off regardless.
    fn run_hook(&self) -> anyhow::Result<()> {
        let hook = self.state("on-powered-off", "");
        let runnable = hook
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if runnable {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(hook.with_extension("log"))?;
            let st = Command::new(&hook)
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .status()?;
            if !st.success() {
                writeln!(&log, "{st}")?;
            }
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let mut vm = Vm::start(Args::parse())?;
    // Written last, renamed in place: power.on returns once the disks are held.
    let pid = vm.state("vm", "pid");
    let tmp = pid.with_extension("pid.new");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, &pid)?;
    let payload = vm.run()?;
    vm.shut_down(&payload)
}
