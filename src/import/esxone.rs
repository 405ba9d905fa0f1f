//! Stage 1 from an ESXi host, up to the migration snapshot: the libvirt side and the VM's .vmx checked first, so that a refusal leaves nothing on ESXi.

use std::path::Path;

use anyhow::{Context, Result};

use super::plan::ImportPlan;
use super::trial;
use crate::domain_xml::NetSource;
use crate::esx::RemoteBase;
use crate::libvirt::{self, Conn};
use crate::vmx::VmxConfig;

/// The VM's .vmx and every disk's base on ESXi, the migration snapshot taken (said only, with
/// `--dry-run` or `--print-xml`) once everything that can refuse the import has passed: the
/// domain's stage, the pool, the guest's naming options, the networks and bridges its NICs
/// will use.
pub(super) fn open_stage_one(
    plan: &ImportPlan,
    vmx: &Path,
) -> Result<(VmxConfig, Vec<RemoteBase>)> {
    let conn = libvirt::connect(plan.uri.as_deref())?;
    if !plan.reupload_base {
        crate::esx::refuse_stage_two(&conn, &plan.domain)?;
    }
    if !plan.print_xml {
        conn.pool(&plan.pool)?;
    }
    let one = crate::esx::prepare_stage_one(
        &vmx.to_string_lossy(),
        plan.dry_run || plan.print_xml,
        plan.dry_run,
        plan.open.allow_outside_paths,
        plan.transfer.clone(),
        |cfg| {
            plan.naming.check(plan.os, Some(cfg))?;
            if plan.print_xml {
                return Ok(());
            }
            let wanted = cfg
                .nics
                .iter()
                .map(|nic| plan.net_source(nic.network_name.as_deref()));
            check_nic_backends(&conn, wanted)
                .context("stage 1: nothing was changed on ESXi (no snapshot taken)")
        },
    )?;
    Ok((one.vmx, one.bases))
}

/// Every libvirt network the NICs name exists and is active, and every bridge exists (looked
/// for only when the daemon is on this host): what the trial start would refuse after the
/// upload, refused before it.
fn check_nic_backends(conn: &Conn, wanted: impl Iterator<Item = NetSource>) -> Result<()> {
    for source in wanted {
        if let Some(p) = nic_problem(conn, &source) {
            anyhow::bail!(
                "{}",
                trial::host_cause(&p, conn.uri()).expect("a host problem")
            );
        }
    }
    Ok(())
}

/// What the trial start would refuse about a NIC's `source` on this host: a libvirt network
/// missing or not active, a bridge missing (looked for only when the daemon is on this host).
pub(crate) fn nic_problem(conn: &Conn, source: &NetSource) -> Option<trial::Problem> {
    match source {
        NetSource::Network(n) => match conn.raw().lookup_network_by_name(n) {
            Err(_) => Some(trial::Problem::NoNetwork(n.clone())),
            Ok(net) if !net.is_active().unwrap_or(false) => {
                Some(trial::Problem::NetworkInactive(n.clone()))
            }
            Ok(_) => None,
        },
        NetSource::Bridge(b) if conn.is_local() => (!Path::new("/sys/class/net").join(b).exists())
            .then(|| trial::Problem::NoBridge(b.clone())),
        NetSource::Bridge(_) => None,
    }
}
