//! Edits of a defined domain's XML: the CPU and Hyper-V steps of the trial start's ladder, and the domain-shaping options given for a domain that exists already.

use anyhow::{Context, Result};

use crate::domain_xml::{self, CpuMode, NetSource};
use crate::xmltree::{Element, Node};

/// The Hyper-V enlightenments of a (Windows) domain, in the ladder's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hyperv {
    /// The template's list (`<hyperv mode='custom'>` with relaxed, vapic, ...).
    Fixed,
    /// `<hyperv mode='passthrough'/>`: whatever the host's KVM offers.
    Passthrough,
    /// No `<hyperv>` element, no hypervclock timer.
    Off,
}

impl Hyperv {
    pub fn name(self) -> &'static str {
        match self {
            Hyperv::Fixed => "fixed",
            Hyperv::Passthrough => "passthrough",
            Hyperv::Off => "none",
        }
    }

    /// The next rung down, if any.
    pub fn next(self) -> Option<Hyperv> {
        match self {
            Hyperv::Fixed => Some(Hyperv::Passthrough),
            Hyperv::Passthrough => Some(Hyperv::Off),
            Hyperv::Off => None,
        }
    }
}

/// The model libvirt writes out for a `<cpu>` without a mode under KVM: QEMU's default.
const QEMU_DEFAULT_MODEL: &str = "qemu64";

/// `host-passthrough`, `host-model`, `default`, `model NAME`.
pub fn cpu_name(mode: &CpuMode) -> String {
    match mode {
        CpuMode::HostPassthrough => "host-passthrough".into(),
        CpuMode::HostModel => "host-model".into(),
        CpuMode::Default => "default".into(),
        CpuMode::Model(m) => format!("model {m}"),
    }
}

/// The next CPU rung down: host-passthrough, host-model, the hypervisor's default.
pub fn cpu_next(mode: &CpuMode) -> Option<CpuMode> {
    match mode {
        CpuMode::HostPassthrough => Some(CpuMode::HostModel),
        CpuMode::HostModel => Some(CpuMode::Default),
        _ => None,
    }
}

/// The CPU mode of a domain XML. No `<cpu>`, no mode, and the custom `qemu64` libvirt writes
/// for a `<cpu>` without a mode all read as the default.
pub fn cpu_mode(dom: &Element) -> CpuMode {
    let Some(cpu) = dom.find("cpu") else {
        return CpuMode::Default;
    };
    match cpu.get_attr("mode") {
        Some("host-passthrough") | Some("maximum") => CpuMode::HostPassthrough,
        Some("host-model") => CpuMode::HostModel,
        None | Some("custom") => match cpu.find("model").map(|m| m.text_content()) {
            None => CpuMode::Default,
            Some(m) if m.trim() == QEMU_DEFAULT_MODEL => CpuMode::Default,
            Some(m) => CpuMode::Model(m.trim().to_string()),
        },
        Some(other) => CpuMode::Model(other.to_string()),
    }
}

/// Set the CPU mode, keeping the topology and (but for the default, which takes none: libvirt
/// refuses "Non-empty feature list specified without CPU model") the feature policies. False
/// when it already was.
pub fn set_cpu_mode(dom: &mut Element, mode: &CpuMode) -> bool {
    if cpu_mode(dom) == *mode {
        return false;
    }
    if dom.find("cpu").is_none() {
        dom.children.push(Node::Element(Element::new("cpu")));
    }
    let cpu = dom.find_mut("cpu").expect("just made sure");
    cpu.attrs
        .retain(|(k, _)| !matches!(k.as_str(), "mode" | "match" | "check" | "migratable"));
    cpu.remove_children("model");
    let mut attrs: Vec<(&str, &str)> = Vec::new();
    match mode {
        CpuMode::HostPassthrough => attrs.extend([("mode", "host-passthrough"), ("check", "none")]),
        CpuMode::HostModel => attrs.extend([("mode", "host-model"), ("check", "partial")]),
        CpuMode::Model(m) => {
            attrs.extend([("mode", "custom"), ("match", "exact"), ("check", "partial")]);
            let model = Element::new("model").attr("fallback", "forbid").text(m);
            cpu.children.insert(0, Node::Element(model));
        }
        CpuMode::Default => cpu.remove_children("feature"),
    }
    for (k, v) in attrs {
        cpu.set_attr(k, v);
    }
    true
}

/// The domain's Hyper-V setting; None when it has none and never had (a Linux guest).
pub fn hyperv(dom: &Element) -> Option<Hyperv> {
    let hv = dom.find("features").and_then(|f| f.find("hyperv"))?;
    Some(match hv.get_attr("mode") {
        Some("passthrough") => Hyperv::Passthrough,
        _ => Hyperv::Fixed,
    })
}

/// Move a domain with Hyper-V enlightenments to `to` (Passthrough or Off; the fixed list is
/// the template's and is not written back). False when nothing changed.
pub fn set_hyperv(dom: &mut Element, to: Hyperv) -> Result<bool> {
    let now = hyperv(dom).unwrap_or(Hyperv::Off);
    if now == to {
        return Ok(false);
    }
    let features = dom.find_or_insert("features");
    match to {
        Hyperv::Passthrough => {
            features.remove_children("hyperv");
            let hv = Element::new("hyperv").attr("mode", "passthrough");
            features.children.push(Node::Element(hv));
        }
        Hyperv::Off => features.remove_children("hyperv"),
        Hyperv::Fixed => anyhow::bail!("the fixed Hyper-V list is only written by stage 1"),
    }
    // The hypervclock timer is an enlightenment too: passthrough turns it on where it exists.
    if let Some(clock) = dom.find_mut("clock") {
        clock.children.retain(|n| {
            !matches!(n, Node::Element(e) if e.name == "timer" && e.get_attr("name") == Some("hypervclock"))
        });
    }
    Ok(true)
}

/// `<memory>` in MiB (libvirt writes KiB).
fn memory_mib(dom: &Element) -> Option<u64> {
    let m = dom.find("memory")?;
    let n: u64 = m.text_content().trim().parse().ok()?;
    let kib = match m.get_attr("unit").unwrap_or("KiB") {
        "b" | "bytes" => n / 1024,
        "KiB" | "k" => n,
        "MiB" | "M" => n << 10,
        "GiB" | "G" => n << 20,
        _ => return None,
    };
    Some(kib >> 10)
}

/// Set memory (and the current memory) to `mib`. False when it already was.
pub fn set_memory(dom: &mut Element, mib: u64) -> Result<bool> {
    if memory_mib(dom) == Some(mib) {
        return Ok(false);
    }
    for name in ["memory", "currentMemory"] {
        let el = dom.find_or_insert(name);
        el.attrs.clear();
        el.set_attr("unit", "MiB");
        el.set_text(&mib.to_string());
    }
    Ok(true)
}

/// Set the vCPU count and a topology that adds up to it (cores per socket kept when they
/// divide it). False when it already was.
pub fn set_vcpus(dom: &mut Element, vcpus: u32) -> Result<bool> {
    let vcpu = dom.find_mut("vcpu").context("domain XML has no <vcpu>")?;
    if vcpu.text_content().trim().parse::<u32>().ok() == Some(vcpus) {
        return Ok(false);
    }
    vcpu.set_text(&vcpus.to_string());
    if let Some(topo) = dom.find_mut("cpu").and_then(|c| c.find_mut("topology")) {
        let cores = topo.get_attr("cores").and_then(|c| c.parse().ok());
        let (s, c, t) = domain_xml::topology(vcpus, cores);
        for (k, v) in [("sockets", s), ("cores", c), ("threads", t)] {
            topo.set_attr(k, &v.to_string());
        }
    }
    Ok(true)
}

/// The `<interface>` elements, in order.
fn interfaces(dom: &mut Element) -> Result<Vec<&mut Element>> {
    let devices = dom
        .find_mut("devices")
        .context("domain XML has no <devices>")?;
    Ok(devices
        .elements_mut()
        .filter(|e| e.name == "interface")
        .collect())
}

/// Point NIC `index` at `net`; a NIC is added (with `model`) when the domain has none at that
/// index. False when it already was.
pub fn set_nic_source(
    dom: &mut Element,
    index: usize,
    net: &NetSource,
    model: &str,
) -> Result<bool> {
    let (kind, value) = match net {
        NetSource::Network(n) => ("network", n),
        NetSource::Bridge(b) => ("bridge", b),
    };
    let mut nics = interfaces(dom)?;
    if let Some(nic) = nics.get_mut(index) {
        let now = nic.find("source").and_then(|s| s.get_attr(kind));
        if nic.get_attr("type") == Some(kind) && now == Some(value.as_str()) {
            return Ok(false);
        }
        nic.set_attr("type", kind);
        let source = Element::new("source").attr(kind, value);
        match nic.find_mut("source") {
            Some(s) => *s = source,
            None => nic.children.push(Node::Element(source)),
        }
        return Ok(true);
    }
    anyhow::ensure!(
        index == nics.len(),
        "the domain has {} NICs; NIC {} cannot be added",
        nics.len(),
        index + 1
    );
    let nic = Element::new("interface")
        .attr("type", kind)
        .child(Element::new("source").attr(kind, value))
        .child(Element::new("model").attr("type", model));
    dom.find_mut("devices")
        .expect("interfaces() found it")
        .children
        .push(Node::Element(nic));
    Ok(true)
}

/// Set the first NIC's MAC (lowercase `aa:bb:...`). False when it already was; an error
/// when the domain has no NIC.
pub fn set_first_mac(dom: &mut Element, mac: &str) -> Result<bool> {
    let mut nics = interfaces(dom)?;
    let nic = nics
        .first_mut()
        .context("the domain has no NIC to give the MAC address to")?;
    let now = nic.find("mac").and_then(|m| m.get_attr("address"));
    if now.map(str::to_ascii_lowercase).as_deref() == Some(mac) {
        return Ok(false);
    }
    nic.remove_children("mac");
    nic.children
        .insert(0, Node::Element(Element::new("mac").attr("address", mac)));
    Ok(true)
}

/// Whether the domain looks like one of this tool's Windows guests (clock in local time).
pub fn looks_windows(dom: &Element) -> bool {
    dom.find("clock").and_then(|c| c.get_attr("offset")) == Some("localtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xmltree;

    const LIBVIRT_DEFAULT_CPU: &str = "<domain><vcpu placement='static'>4</vcpu>\
        <memory unit='KiB'>131072</memory><currentMemory unit='KiB'>131072</currentMemory>\
        <features><acpi/><hyperv mode='custom'><relaxed state='on'/></hyperv></features>\
        <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>\
        <topology sockets='2' dies='1' cores='2' threads='1'/></cpu>\
        <clock offset='localtime'><timer name='hypervclock' present='yes'/></clock>\
        <devices><interface type='network'><mac address='52:54:00:AA:BB:CC'/><source network='a'/>\
        <model type='e1000e'/></interface></devices></domain>";

    fn dom() -> Element {
        xmltree::parse(LIBVIRT_DEFAULT_CPU).unwrap()
    }

    #[test]
    fn libvirts_qemu64_reads_as_the_default_cpu_and_setting_it_again_changes_nothing() {
        let mut d = dom();
        assert_eq!(cpu_mode(&d), CpuMode::Default);
        assert!(!set_cpu_mode(&mut d, &CpuMode::Default));
        assert!(set_cpu_mode(&mut d, &CpuMode::HostModel));
        let cpu = d.find("cpu").unwrap();
        assert_eq!(cpu.get_attr("mode"), Some("host-model"));
        assert!(cpu.find("model").is_none() && cpu.find("topology").is_some());
        assert_eq!(cpu_mode(&d), CpuMode::HostModel);
    }

    #[test]
    fn the_default_cpu_drops_the_feature_policies_libvirt_refuses_without_a_model() {
        let mut d = xmltree::parse(
            "<domain><cpu mode='host-passthrough' check='none'><topology sockets='1' dies='1' cores='1' threads='1'/>\
             <feature policy='disable' name='arch-capabilities'/></cpu></domain>",
        )
        .unwrap();
        assert!(set_cpu_mode(&mut d, &CpuMode::HostModel));
        assert!(d.find("cpu").unwrap().find("feature").is_some());
        assert!(set_cpu_mode(&mut d, &CpuMode::Default));
        let cpu = d.find("cpu").unwrap();
        assert!(cpu.find("feature").is_none() && cpu.find("topology").is_some());
    }

    #[test]
    fn the_ladders_end_at_the_default_cpu_and_no_hyperv() {
        let mut m = CpuMode::HostPassthrough;
        let mut seen = vec![cpu_name(&m)];
        while let Some(n) = cpu_next(&m) {
            seen.push(cpu_name(&n));
            m = n;
        }
        assert_eq!(seen, ["host-passthrough", "host-model", "default"]);
        assert_eq!(cpu_next(&CpuMode::Model("EPYC".into())), None);
        let mut d = dom();
        assert_eq!(hyperv(&d), Some(Hyperv::Fixed));
        assert!(set_hyperv(&mut d, Hyperv::Passthrough).unwrap());
        assert_eq!(hyperv(&d), Some(Hyperv::Passthrough));
        assert!(!xmltree::to_string(&d).contains("hypervclock"));
        assert!(set_hyperv(&mut d, Hyperv::Off).unwrap());
        assert_eq!(hyperv(&d), None);
    }

    #[test]
    fn memory_vcpus_and_nics_change_only_when_they_differ() {
        let mut d = dom();
        assert!(!set_memory(&mut d, 128).unwrap());
        assert!(set_memory(&mut d, 256).unwrap());
        assert_eq!(memory_mib(&d), Some(256));
        assert!(!set_vcpus(&mut d, 4).unwrap());
        assert!(set_vcpus(&mut d, 6).unwrap());
        let topo = d.find("cpu").unwrap().find("topology").unwrap();
        assert_eq!(
            (topo.get_attr("sockets"), topo.get_attr("cores")),
            (Some("3"), Some("2"))
        );
        assert!(!set_first_mac(&mut d, "52:54:00:aa:bb:cc").unwrap());
        assert!(set_first_mac(&mut d, "52:54:00:aa:bb:cd").unwrap());
        let net = NetSource::Network("a".into());
        assert!(!set_nic_source(&mut d, 0, &net, "virtio").unwrap());
        let br = NetSource::Bridge("br0".into());
        assert!(set_nic_source(&mut d, 0, &br, "virtio").unwrap());
        assert!(set_nic_source(&mut d, 1, &net, "virtio").unwrap());
        assert!(set_nic_source(&mut d, 3, &net, "virtio").is_err());
        let xml = xmltree::to_string(&d);
        assert!(
            xml.contains("<source bridge=\"br0\"/>") || xml.contains("bridge='br0'"),
            "{xml}"
        );
    }
}
