//! `virt-vmdkimport probe ssh://host/path.vmx`: a bounded part of the VM's largest base read by each transport and connection count, bytes discarded, the rates printed and the flags to use recommended; nothing changes on ESXi.

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::json;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use super::files::RemoteBase;
use super::ssh::{self, quote};
use super::transfer::{Range, Transfer, TransferOptions, Transport};
use super::vm::Vm;

/// Block size of the probe's `dd` ranges (as stage 1's).
const BS: u64 = 4 << 20;
/// Connection counts tried over ssh.
const SSH_COUNTS: [usize; 4] = [1, 2, 4, 8];
/// Connection counts tried over nc.
const NC_COUNTS: [usize; 2] = [1, 4];

/// `probe`, checked: the .vmx's URL, the bytes each setting reads, and nc's settings when nc
/// is tried too (`--transport nc` or `--nc-port`).
#[derive(Debug)]
pub struct ProbePlan {
    pub url: String,
    pub bytes: u64,
    pub json: bool,
    pub nc: Option<TransferOptions>,
}

impl ProbePlan {
    /// Check `probe`'s arguments. Pure.
    pub fn check(
        url: &str,
        bytes: u64,
        json: bool,
        nc: bool,
        nc_port: Option<u16>,
        nc_address: Option<&str>,
    ) -> Result<ProbePlan> {
        let u = ssh::SshUrl::parse(url)?;
        ensure!(
            u.path.ends_with(".vmx"),
            "{url}: the path must name the VM's .vmx"
        );
        ensure!(bytes >= 1 << 20, "--bytes {bytes}: at least 1 MiB");
        let nc = nc || nc_port.is_some();
        let opts = TransferOptions::check(1, nc, nc_port, nc_address)?;
        Ok(ProbePlan {
            url: url.to_string(),
            bytes,
            json,
            nc: nc.then_some(opts),
        })
    }
}

/// One setting's figure.
struct Rate {
    transport: &'static str,
    connections: usize,
    bytes: u64,
    secs: f64,
}

impl Rate {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }
}

/// Read part of the VM's largest base by every setting; print the table and the flags.
pub fn run(p: &ProbePlan) -> Result<()> {
    let vm = Vm::find(&p.url, false, false, false, TransferOptions::default())?;
    let cfg = vm.config()?;
    let chains = vm.chains(&cfg)?;
    let base = chains
        .iter()
        .map(|c| &c.base)
        .max_by_key(|b| b.capacity)
        .ok_or_else(|| anyhow!("{}: the VM has no disks", p.url))?;
    readable(&vm, base)?;
    let len = probe_len(base.capacity, p.bytes);
    let ssh = Transfer::new(vm.ssh.clone(), TransferOptions::default());
    let mut settings: Vec<Transfer> = SSH_COUNTS
        .iter()
        .map(|&n| ssh.with_connections(n))
        .collect();
    if let Some(nc) = &p.nc {
        // One listener for every nc setting, started before any is timed.
        let nc = Transfer::new(vm.ssh.clone(), nc.clone());
        nc.ready()?;
        settings.extend(NC_COUNTS.iter().map(|&n| nc.with_connections(n)));
    }
    let mut rates = Vec::new();
    for (k, t) in settings.iter().enumerate() {
        crate::interrupt::check()?;
        // Each setting reads bytes of its own, so none is served from the host's cache.
        let start = start_block(base.capacity, len, k);
        rates.push(measure(t, base, start, len)?);
    }
    report(p, base, &rates);
    Ok(())
}

/// A base the VM holds open (running with no snapshot over it) cannot be read: said so,
/// with when it can.
fn readable(vm: &Vm, base: &RemoteBase) -> Result<()> {
    let cmd = format!("dd if={} bs=512 count=1", quote(&base.path));
    vm.ssh
        .read_bytes(&cmd, &base.name())
        .map(drop)
        .map_err(|e| {
            if format!("{e:#}").contains("locked on the ESXi host") {
                anyhow!(
                    "{e:#}: probe reads a base no VM holds: run it after stage 1 (whose snapshot frees the base) or with the VM off"
                )
            } else {
                e
            }
        })
}

/// Bytes each setting reads: `want` in whole blocks, at most the base (the whole base when
/// it is shorter than a block).
fn probe_len(capacity: u64, want: u64) -> u64 {
    if capacity <= BS {
        return capacity;
    }
    (want.min(capacity) / BS).max(1) * BS
}

/// The first block setting `k` reads: past the ones before it, wrapping round the base.
fn start_block(capacity: u64, len: u64, k: usize) -> u64 {
    let blocks = capacity / BS;
    let span = len.div_ceil(BS);
    let room = blocks.saturating_sub(span) + 1;
    (k as u64 * span) % room
}

/// `len` bytes of `base` from block `start`, over `t`'s connections side by side, discarded.
fn measure(t: &Transfer, base: &RemoteBase, start: u64, len: u64) -> Result<Rate> {
    let ranges: Vec<Range> = super::transfer::split(len, BS, t.connections())
        .into_iter()
        .map(|r| Range {
            skip: r.skip + start,
            ..r
        })
        .collect();
    let label = format!("probe: {} x{}", t.name(), t.connections());
    let bar = Arc::new(crate::progress::Transfer::new(label, len));
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = ranges
            .iter()
            .map(|&r| {
                let bar = bar.clone();
                scope.spawn(move || -> Result<()> {
                    let mut rd = t.read(&base.path, r)?;
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = rd.read(&mut buf)?;
                        if n == 0 {
                            return Ok(());
                        }
                        bar.add(n as u64);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow!("a probe thread panicked"))??;
        }
        Ok(())
    })
    .with_context(|| {
        format!(
            "probe over {} with {} connections",
            t.name(),
            t.connections()
        )
    })?;
    Ok(Rate {
        transport: t.name(),
        connections: t.connections(),
        bytes: len,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// The flags of the fastest setting.
fn flags(best: &Rate, nc: Option<&TransferOptions>) -> String {
    let mut f = format!("--ssh-connections {}", best.connections);
    if best.transport == "nc" {
        f += " --transport nc";
        if let Some(Transport::Nc { port, address }) = nc.map(|o| &o.transport) {
            f += &format!(" --nc-port {port}");
            if let Some(a) = address {
                f += &format!(" --nc-address {a}");
            }
        }
    }
    f
}

fn report(p: &ProbePlan, base: &RemoteBase, rates: &[Rate]) {
    let best = rates
        .iter()
        .max_by(|a, b| a.mb_s().total_cmp(&b.mb_s()))
        .expect("ssh settings are always tried");
    let flags = flags(best, p.nc.as_ref());
    if p.json {
        let doc = json!({
            "vmx": p.url,
            "base": base.name(),
            "bytes": best.bytes,
            "rates": rates.iter().map(|r| json!({
                "transport": r.transport,
                "connections": r.connections,
                "bytes": r.bytes,
                "seconds": r.secs,
                "mb_per_s": r.mb_s(),
            })).collect::<Vec<_>>(),
            "recommended": flags,
        });
        crate::say_raw!("{doc}\n");
        return;
    }
    let mut t = format!(
        "{}: {} read by each setting\ntransport  connections      MB/s   seconds\n",
        base.name(),
        crate::units::human_bytes_exact(best.bytes)
    );
    for r in rates {
        t += &format!(
            "{:<9}  {:>11}  {:>8.1}  {:>8.2}\n",
            r.transport,
            r.connections,
            r.mb_s(),
            r.secs
        );
    }
    t += &format!("recommended: {flags}\n");
    crate::say_raw!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setting_reads_whole_blocks_of_its_own_within_the_base() {
        let m = 1 << 20;
        assert_eq!(probe_len(2 * m, 1 << 30), 2 * m);
        assert_eq!(probe_len(64 * m, 1 << 30), 64 * m);
        assert_eq!(probe_len(64 * m, 10 * m), 8 * m);
        assert_eq!(probe_len(64 * m, m), 4 * m);
        // 64 MiB, 8 MiB a setting: blocks 0, 2, 4, ... and never past the end.
        let starts: Vec<u64> = (0..6).map(|k| start_block(64 * m, 8 * m, k)).collect();
        assert_eq!(starts, [0, 2, 4, 6, 8, 10]);
        for k in 0..40 {
            assert!(start_block(64 * m, 8 * m, k) + 2 <= 16);
            assert_eq!(start_block(64 * m, 64 * m, k), 0);
        }
    }

    #[test]
    fn the_plan_refuses_what_cannot_be_probed() {
        let ok = "ssh://root@esx1/vmfs/volumes/ds/vm/vm.vmx";
        assert!(ProbePlan::check(ok, 1 << 30, false, false, None, None)
            .unwrap()
            .nc
            .is_none());
        let nc = ProbePlan::check(ok, 1 << 30, false, false, Some(0), None).unwrap();
        assert!(matches!(
            nc.nc.unwrap().transport,
            Transport::Nc { port: 0, .. }
        ));
        let refused = |r: Result<ProbePlan>, want: &str| {
            let e = format!("{:#}", r.unwrap_err());
            assert!(e.contains(want), "{want:?} in {e}");
        };
        refused(
            ProbePlan::check("ssh://esx1/vm/disk.vmdk", 1 << 30, false, false, None, None),
            "must name the VM's .vmx",
        );
        refused(
            ProbePlan::check("/local/vm.vmx", 1 << 30, false, false, None, None),
            "ssh://",
        );
        refused(
            ProbePlan::check(ok, 1000, false, false, None, None),
            "at least 1 MiB",
        );
        refused(
            ProbePlan::check(ok, 1 << 30, false, false, None, Some("10.0.0.1")),
            "go with --transport nc",
        );
    }
}
