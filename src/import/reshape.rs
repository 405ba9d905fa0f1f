//! The domain-shaping options (`--cpu`, `--memory`, `--vcpus`, `--os`, `--mac`, `--network`, `--bridge`, `--hyperv-passthrough`, `--nic-names`, `--disk-bus`) given for a domain that exists: applied to a shut-off domain this tool defined, refused with the reason otherwise, never ignored.

use anyhow::{bail, ensure, Context, Result};

use super::request::Request;
use super::shape::{self, Hyperv};
use super::spec::os_name;
use super::trial;
use crate::domain_xml::NetSource;
use crate::libvirt::{Conn, Dom};
use crate::state::{metadata, ImportState};
use crate::vmx::OsFamily;
use crate::xmltree::{self, Element};

/// The guest family the domain was defined for: recorded, else read from the XML.
fn domain_os(xml: &Element, st: Option<&ImportState>) -> OsFamily {
    match st.and_then(|s| s.os.as_deref()) {
        Some("windows") => OsFamily::Windows,
        Some(_) => OsFamily::Linux,
        None if shape::looks_windows(xml) => OsFamily::Windows,
        None => OsFamily::Linux,
    }
}

/// Apply the given options to `xml`: what changed, one phrase each.
fn edit(req: &Request, xml: &mut Element, st: Option<&ImportState>) -> Result<Vec<String>> {
    let os = domain_os(xml, st);
    req.naming
        .check_existing(&req.domain, xml, req.vmx.as_ref().map(|(_, v)| v))?;
    let mut changed = Vec::new();
    if let Some(want) = req.os.filter(|&o| o != os) {
        bail!(
            "--os {}: domain '{}' was defined for a {} guest; the guest family decides its disk buses, NIC models and clock, which this tool does not rewrite in place: leave --os out, or undefine the domain (virsh undefine {}; its volumes stay) and run stage 1 again",
            os_name(want).to_lowercase(),
            req.domain,
            os_name(os),
            req.domain
        );
    }
    if let Some(m) = req.memory_mib {
        ensure!(m > 0, "--memory must be more than 0 MiB");
        if shape::set_memory(xml, m)? {
            changed.push(format!("memory {m} MiB"));
        }
    }
    if let Some(v) = req.vcpus {
        ensure!(v > 0, "--vcpus must be more than 0");
        if shape::set_vcpus(xml, v)? {
            changed.push(format!("{v} vCPUs"));
        }
    }
    if let Some(cpu) = &req.cpu {
        if shape::set_cpu_mode(xml, cpu) {
            changed.push(format!("CPU {}", shape::cpu_name(cpu)));
        }
    }
    if req.hyperv_passthrough {
        ensure!(
            os == OsFamily::Windows,
            "--hyperv-passthrough: domain '{}' is a Linux guest, which gets no Hyper-V enlightenments; leave the option out",
            req.domain
        );
        if shape::set_hyperv(xml, Hyperv::Passthrough)? {
            changed.push("Hyper-V passthrough".into());
        }
    }
    edit_nics(req, xml, os, &mut changed)?;
    Ok(changed)
}

fn edit_nics(
    req: &Request,
    xml: &mut Element,
    os: OsFamily,
    changed: &mut Vec<String>,
) -> Result<()> {
    let model = match os {
        OsFamily::Linux => "virtio",
        OsFamily::Windows => "e1000e",
    };
    let wanted: Vec<Option<NetSource>> = match &req.vmx {
        Some((_, vmx)) => vmx
            .nics
            .iter()
            .map(|n| req.given_net(n.network_name.as_deref()))
            .collect(),
        None => vec![req.given_net(None)],
    };
    for (i, net) in wanted.iter().enumerate() {
        let Some(net) = net else { continue };
        if shape::set_nic_source(xml, i, net, model)? {
            let (kind, name) = match net {
                NetSource::Network(n) => ("network", n),
                NetSource::Bridge(b) => ("bridge", b),
            };
            changed.push(format!("NIC {} on {kind} '{name}'", i + 1));
        }
    }
    if let Some(mac) = &req.mac {
        if req.vmx.is_none() && wanted[0].is_none() {
            // A NIC for the MAC, on the network a new domain would get.
            let net = NetSource::Network("default".into());
            if xml
                .find("devices")
                .is_some_and(|d| d.find("interface").is_none())
                && shape::set_nic_source(xml, 0, &net, model)?
            {
                changed.push("NIC 1 on network 'default'".into());
            }
        }
        if shape::set_first_mac(xml, mac)? {
            changed.push(format!("MAC {mac}"));
        }
    }
    Ok(())
}

/// Apply the shaping options given for the existing `dom`. Returns the redefined domain and
/// its XML before, or None when every option already matched (or none was given). Refused,
/// saying why, for a running domain and for one defined by other tooling.
fn apply(
    req: &Request,
    conn: &Conn,
    dom: &Dom,
    st: Option<&ImportState>,
) -> Result<Option<(Dom, String)>> {
    if !req.shapes_domain() {
        return Ok(None);
    }
    let before = dom.xml()?;
    let mut xml = xmltree::parse(&before).context("reading the domain XML")?;
    let changed = edit(req, &mut xml, st)
        .with_context(|| format!("domain '{}' exists already", req.domain))?;
    if changed.is_empty() {
        return Ok(None);
    }
    let what = changed.join(", ");
    ensure!(
        trial::defined_here(st, &req.domain),
        "domain '{}' exists and was defined by other tooling: the options asking for {what} would change its definition, which this tool leaves alone; change it with virsh -c {} edit {} (or the tooling that defined it), or leave those options out",
        req.domain,
        conn.uri(),
        req.domain
    );
    ensure!(
        !dom.is_active()?,
        "domain '{}' is running: {what} can only be applied to a shut-off domain; shut it down first",
        req.domain
    );
    if req.dry_run {
        log::info!(
            "would redefine domain '{}' with {what}, then trial-start it",
            req.domain
        );
        return Ok(None);
    }
    let new = conn
        .define_domain(&xmltree::to_string(&xml))
        .map_err(|e| trial::explain_define(conn, e))?;
    log::info!("domain '{}' redefined with {what}", req.domain);
    Ok(Some((new, before)))
}

/// The shaping options given for a domain that exists (`dom`): applied or refused, never
/// ignored. Without stage 1 they are proved by a trial start now ([`apply_and_prove`]);
/// stage 1's trial start, after the upload, proves them otherwise. The domain to go on with.
pub(super) fn existing(
    req: &Request,
    conn: &Conn,
    dom: Option<Dom>,
    st: Option<&mut ImportState>,
    stage_one: bool,
) -> Result<Option<Dom>> {
    Ok(match (dom, st) {
        (Some(d), Some(st)) if !stage_one => Some(apply_and_prove(req, conn, d, st)?),
        (Some(d), st) => match apply(req, conn, &d, st.as_deref())? {
            Some((new, _)) => Some(new),
            None => Some(d),
        },
        (None, _) => None,
    })
}

/// Apply the options, then prove the domain still starts; when it does not, the previous
/// definition is put back and the error says why. Returns the domain to go on with.
fn apply_and_prove(req: &Request, conn: &Conn, dom: Dom, st: &mut ImportState) -> Result<Dom> {
    let Some((mut new, before)) = apply(req, conn, &dom, Some(st))? else {
        return Ok(dom);
    };
    let fixed = trial::Fixed {
        cpu: req.cpu.is_some(),
        hyperv: req.hyperv_passthrough,
    };
    let saved = st.clone();
    match trial::prove(conn, &mut new, fixed, true, st) {
        Ok(()) => {
            metadata::write(&new, st)?;
            Ok(new)
        }
        Err(e) => {
            // The state goes back through the metadata call as well: a redefinition alone
            // gives it libvirt's indentation.
            let old = conn
                .define_domain(&before)
                .context("putting the previous definition back")?;
            metadata::write(&old, &saved)?;
            *st = saved;
            Err(e.context(format!(
                "domain '{}': the previous definition is back in place",
                req.domain
            )))
        }
    }
}
