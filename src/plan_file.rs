//! The migration plan file (TOML): limits, defaults, one entry per VM; checked into [`Fleet`] before anything runs.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Deserializer};
use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// VMs in flight at once over the whole plan, when the plan does not say (see the README's
/// "Many VMs": measured on this project's 2-core test host).
pub const DEFAULT_JOBS: usize = 4;
/// VMs in flight at once on one KVM host (libvirt URI): its disks take the writes.
pub const DEFAULT_MAX_PER_TARGET: usize = 2;
/// VMs in flight at once from one source (ESXi host, or the filesystem holding local files).
pub const DEFAULT_MAX_PER_SOURCE: usize = 4;

/// Time between two progress lines of a running step: often enough to see it move in a
/// terminal or a CI log, rare enough that 20 VMs in flight do not flood it.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The file as written: limits at the top, `[defaults]`, then `[[vm]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    jobs: Option<usize>,
    max_per_target: Option<usize>,
    max_per_source: Option<usize>,
    log_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "any_duration")]
    progress_every: Option<Duration>,
    #[serde(default)]
    defaults: RawVm,
    #[serde(default)]
    vm: Vec<RawVm>,
}

/// One VM's entry, or the defaults (which give no name or source).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: Option<String>,
    vmx: Option<String>,
    flat: Option<PathBuf>,
    deltas: Option<Vec<PathBuf>>,
    connect: Option<String>,
    pool: Option<String>,
    source_group: Option<String>,
    network: Option<Vec<String>>,
    bridge: Option<String>,
    mac: Option<String>,
    os: Option<String>,
    memory: Option<u64>,
    vcpus: Option<u32>,
    cpu: Option<String>,
    hyperv_passthrough: Option<bool>,
    io: Option<String>,
    allow_outside_paths: Option<bool>,
    copy_independent: Option<bool>,
    driver_disk: Option<bool>,
    no_start: Option<bool>,
    disk_jobs: Option<usize>,
    ssh_connections: Option<usize>,
    transport: Option<String>,
    nc_port: Option<u16>,
    nc_address: Option<String>,
    #[serde(default, deserialize_with = "timeout")]
    shutdown_timeout: Option<Duration>,
    hard_off: Option<bool>,
    rollback_on_failure: Option<bool>,
    remove_esx_snapshots: Option<bool>,
}

/// The checked plan.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub path: PathBuf,
    pub jobs: usize,
    pub max_per_target: usize,
    pub max_per_source: usize,
    /// Where each VM's log goes (`NAME.log`).
    pub log_dir: PathBuf,
    /// Time between two "running for" lines of a VM whose step runs on; zero: none.
    pub progress_every: Duration,
    pub vms: Vec<FleetVm>,
}

/// Where a VM's disks come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `.vmx` on this host: every disk, walked from the file it names down to its base.
    Vmx(PathBuf),
    /// `ssh://[user@]host[:port]/path.vmx` on an ESXi host.
    Esx(String),
    /// A base descriptor (or flat extent) and the deltas for the cutover, oldest first.
    Flat { base: PathBuf, deltas: Vec<PathBuf> },
}

/// One VM of the plan, every default applied, every path absolute.
#[derive(Debug, Clone)]
pub struct FleetVm {
    pub name: String,
    /// The libvirt URI (the KVM host).
    pub uri: String,
    pub pool: String,
    pub source: Source,
    /// What `max_per_source` counts: the ESXi host, or the local files' filesystem.
    pub source_group: String,
    opts: RawVm,
}

/// Steps of a plan that run a VM through the import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Stage1,
    Sync,
    Cutover,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Stage1 => "stage1",
            StepKind::Sync => "sync",
            StepKind::Cutover => "cutover",
        }
    }
}

/// The VMs `--only` names (all without it); a name not in the plan is an error.
pub fn select(fleet: &Fleet, only: &[String]) -> Result<Vec<FleetVm>> {
    if let Some(n) = only
        .iter()
        .find(|n| !fleet.vms.iter().any(|v| &v.name == *n))
    {
        bail!("--only {n}: no VM of that name in {}", fleet.path.display());
    }
    Ok(fleet
        .vms
        .iter()
        .filter(|v| only.is_empty() || only.contains(&v.name))
        .cloned()
        .collect())
}

/// Read and check the plan at `path`: unknown keys, missing sources, duplicate names and
/// option values the command line would refuse are errors naming the file (and the line).
pub fn load(path: &Path) -> Result<Fleet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{}: reading", path.display()))?;
    parse(path, &text)
}

/// [`load`] of `text` read from `path` (relative paths in it are taken from `path`'s folder).
pub fn parse(path: &Path, text: &str) -> Result<Fleet> {
    let raw: RawPlan = toml::from_str(text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let at = |what: String| format!("{}: {what}", path.display());
    let d = &raw.defaults;
    if let Some(k) = source_key(d).or(d.name.as_ref().map(|_| "name")) {
        bail!(at(format!(
            "[defaults] cannot give `{k}`: it belongs to one [[vm]]"
        )));
    }
    ensure!(!raw.vm.is_empty(), at("no [[vm]] entries".into()));
    let mut names = HashSet::new();
    let mut vms = Vec::new();
    for (i, v) in raw.vm.iter().enumerate() {
        let vm = resolve(&dir, d, v).with_context(|| at(format!("[[vm]] number {}", i + 1)))?;
        ensure!(
            names.insert(vm.name.clone()),
            at(format!("VM '{}' is named twice", vm.name))
        );
        for step in [StepKind::Stage1, StepKind::Sync, StepKind::Cutover] {
            check_args(&vm, step).with_context(|| at(format!("VM '{}'", vm.name)))?;
        }
        vms.push(vm);
    }
    if let Some(why) = shared_nc_port(&vms) {
        bail!(at(why));
    }
    let limit = |v: Option<usize>, def: usize, key: &str| -> Result<usize> {
        let n = v.unwrap_or(def);
        ensure!(n >= 1, at(format!("{key} = {n}: at least 1")));
        Ok(n)
    };
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    Ok(Fleet {
        path: path.to_path_buf(),
        jobs: limit(raw.jobs, DEFAULT_JOBS, "jobs")?,
        max_per_target: limit(raw.max_per_target, DEFAULT_MAX_PER_TARGET, "max_per_target")?,
        max_per_source: limit(raw.max_per_source, DEFAULT_MAX_PER_SOURCE, "max_per_source")?,
        log_dir: raw
            .log_dir
            .map(|p| dir.join(p))
            .unwrap_or_else(|| dir.join(format!("{stem}.logs"))),
        progress_every: raw.progress_every.unwrap_or(DEFAULT_PROGRESS_EVERY),
        vms,
    })
}

/// A duration key: seconds (`300`), or a string humantime reads (`"5m"`, `"1h 30m"`).
fn duration_key<'de, D: Deserializer<'de>>(
    d: D,
    nonzero: bool,
) -> Result<Option<Duration>, D::Error> {
    use serde::de::Error;
    let text = match toml::Value::deserialize(d)? {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(s) => s,
        other => {
            return Err(D::Error::custom(format!(
                "expected seconds or a duration like \"5m\", found {}",
                other.type_str()
            )))
        }
    };
    let parse = if nonzero {
        crate::units::parse_timeout
    } else {
        crate::units::parse_duration
    };
    parse(&text).map(Some).map_err(D::Error::custom)
}

/// A duration key where zero means none (`progress_every`).
fn any_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_key(d, false)
}

/// A time to wait (`shutdown_timeout`): longer than zero.
fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_key(d, true)
}

/// The first of the keys that name a VM's own source, when given.
fn source_key(v: &RawVm) -> Option<&'static str> {
    [
        (v.vmx.is_some(), "vmx"),
        (v.flat.is_some(), "flat"),
        (v.deltas.is_some(), "deltas"),
        (v.source_group.is_some(), "source_group"),
    ]
    .into_iter()
    .find_map(|(given, k)| given.then_some(k))
}

/// One entry with the defaults under it: each key the entry leaves out comes from `[defaults]`.
fn resolve(dir: &Path, d: &RawVm, v: &RawVm) -> Result<FleetVm> {
    let name = v.name.clone().context("no `name` (the domain's name)")?;
    ensure!(
        !name.is_empty() && !name.contains(['/', ',']) && !name.chars().any(char::is_control),
        "name {name:?}: a domain name without '/', ',' or control characters"
    );
    let abs = |p: &PathBuf| dir.join(p);
    let source = match (&v.vmx, &v.flat) {
        (Some(_), Some(_)) => bail!("VM '{name}': give `vmx` or `flat`, not both"),
        (Some(x), None) if x.starts_with("ssh://") => Source::Esx(x.clone()),
        (Some(x), None) => Source::Vmx(abs(&PathBuf::from(x))),
        (None, Some(f)) => Source::Flat {
            base: abs(f),
            deltas: v.deltas.iter().flatten().map(abs).collect(),
        },
        (None, None) => {
            bail!("VM '{name}': no source: give `vmx` (a path or ssh:// URL) or `flat`")
        }
    };
    ensure!(
        v.deltas.is_none() || matches!(source, Source::Flat { .. }),
        "VM '{name}': `deltas` go with `flat` (a .vmx names its own)"
    );
    let opts = merged(d, v);
    let source_group = match &v.source_group {
        Some(g) => g.clone(),
        None => default_group(&source),
    };
    Ok(FleetVm {
        uri: opts
            .connect
            .clone()
            .unwrap_or_else(|| "qemu:///system".into()),
        pool: opts.pool.clone().unwrap_or_else(|| "default".into()),
        name,
        source,
        source_group,
        opts,
    })
}

/// The entry's keys over the defaults' keys.
fn merged(d: &RawVm, v: &RawVm) -> RawVm {
    macro_rules! pick {
        ($($f:ident),*) => { RawVm { $($f: v.$f.clone().or_else(|| d.$f.clone()),)* } };
    }
    pick!(
        name,
        vmx,
        flat,
        deltas,
        connect,
        pool,
        source_group,
        network,
        bridge,
        mac,
        os,
        memory,
        vcpus,
        cpu,
        hyperv_passthrough,
        io,
        allow_outside_paths,
        copy_independent,
        driver_disk,
        no_start,
        disk_jobs,
        ssh_connections,
        transport,
        nc_port,
        nc_address,
        shutdown_timeout,
        hard_off,
        rollback_on_failure,
        remove_esx_snapshots
    )
}

/// The ESXi host of an ssh:// source; for local files the filesystem they are on (its device
/// number: files on one filesystem share its disks).
fn default_group(source: &Source) -> String {
    let file = match source {
        Source::Esx(url) => {
            return match crate::esx::ssh::SshUrl::parse(url) {
                Ok(u) => format!("ssh://{}", u.host),
                Err(_) => url.clone(),
            }
        }
        Source::Vmx(p) => p,
        Source::Flat { base, .. } => base,
    };
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(file) {
        Ok(m) => format!("filesystem {}:{}", m.dev() >> 8 & 0xfff, m.dev() & 0xff),
        Err(_) => file.parent().unwrap_or(file).display().to_string(),
    }
}

impl FleetVm {
    /// The arguments of the `virt-vmdkimport` run that does `step` for this VM (`dry_run`:
    /// the same run with `--dry-run`). `None` when the step does not apply to its source.
    pub fn args(&self, step: StepKind, dry_run: bool) -> Option<Vec<OsString>> {
        let o = &self.opts;
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        for s in [
            "-c", &self.uri, "--domain", &self.name, "--pool", &self.pool,
        ] {
            push(s);
        }
        let flag = |v: Option<bool>| v == Some(true);
        let mut flags = vec![("--allow-outside-paths", o.allow_outside_paths)];
        match (&self.source, step) {
            (Source::Flat { .. }, StepKind::Sync) | (Source::Vmx(_), StepKind::Sync) => {
                return None
            }
            (Source::Flat { base, .. }, StepKind::Stage1) => {
                push("--flat");
                a.push(base.into());
            }
            (Source::Flat { deltas, .. }, StepKind::Cutover) => {
                a.extend(deltas.iter().map(OsString::from));
            }
            (Source::Vmx(p), _) => {
                push("--vmx");
                a.push(p.into());
            }
            (Source::Esx(url), _) => {
                push("--vmx");
                push(url);
            }
        }
        let esx = matches!(self.source, Source::Esx(_));
        match step {
            StepKind::Stage1 => {
                self.shaping_args(&mut a);
                flags.push(("--copy-independent", o.copy_independent));
            }
            StepKind::Sync => a.push("--sync".into()),
            StepKind::Cutover if esx => {
                a.push("--cutover".into());
                if let Some(t) = o.shutdown_timeout {
                    let t = crate::units::duration_arg(t);
                    a.extend(["--shutdown-timeout".into(), t.into()]);
                }
                flags.extend([
                    ("--hard-off", o.hard_off),
                    ("--rollback-on-failure", o.rollback_on_failure),
                    ("--remove-esx-snapshots", o.remove_esx_snapshots),
                ]);
            }
            StepKind::Cutover => {
                if let Some(io) = &o.io {
                    a.extend(["--io".into(), io.into()]);
                }
                flags.extend([
                    ("--no-start", o.no_start),
                    ("--driver-disk", o.driver_disk),
                    ("--copy-independent", o.copy_independent),
                ]);
            }
        }
        if esx {
            self.transfer_args(&mut a);
        }
        if esx && step != StepKind::Stage1 {
            if let Some(j) = o.disk_jobs {
                a.extend(["--jobs".into(), j.to_string().into()]);
            }
        }
        a.extend(
            flags
                .into_iter()
                .filter(|(_, v)| flag(*v))
                .map(|(f, _)| f.into()),
        );
        if dry_run {
            a.push("--dry-run".into());
        }
        Some(a)
    }

    /// How the bytes come from ESXi: `--ssh-connections`, `--transport`, `--nc-port`,
    /// `--nc-address`.
    fn transfer_args(&self, a: &mut Vec<OsString>) {
        let o = &self.opts;
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.extend([k.into(), v.into()]);
            }
        };
        opt(
            "--ssh-connections",
            o.ssh_connections.map(|n| n.to_string()),
        );
        opt("--transport", o.transport.clone());
        opt("--nc-port", o.nc_port.map(|p| p.to_string()));
        opt("--nc-address", o.nc_address.clone());
    }

    /// The port this VM's runs listen on for nc (`transport = "nc"`), when a fixed one.
    fn nc_port(&self) -> Option<u16> {
        let o = &self.opts;
        (self.is_esx() && o.transport.as_deref() == Some("nc"))
            .then(|| o.nc_port.unwrap_or(crate::esx::transfer::DEFAULT_NC_PORT))
            .filter(|&p| p != 0)
    }

    /// The options that shape the domain, for stage 1.
    fn shaping_args(&self, a: &mut Vec<OsString>) {
        let o = &self.opts;
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                a.extend([k.into(), v.into()]);
            }
        };
        opt("--os", o.os.clone());
        opt("--memory", o.memory.map(|m| m.to_string()));
        opt("--vcpus", o.vcpus.map(|m| m.to_string()));
        opt("--cpu", o.cpu.clone());
        opt("--bridge", o.bridge.clone());
        opt("--mac", o.mac.clone());
        for n in o.network.iter().flatten() {
            opt("--network", Some(n.clone()));
        }
        if o.hyperv_passthrough == Some(true) {
            a.push("--hyperv-passthrough".into());
        }
    }

    pub fn is_esx(&self) -> bool {
        matches!(self.source, Source::Esx(_))
    }
}

/// Two VMs that would listen on one nc port: their runs may overlap, and the second would
/// find the port taken.
fn shared_nc_port(vms: &[FleetVm]) -> Option<String> {
    let mut seen = std::collections::HashMap::new();
    for vm in vms {
        let Some(port) = vm.nc_port() else { continue };
        if let Some(first) = seen.insert(port, &vm.name) {
            return Some(format!(
                "VMs '{first}' and '{}' both take nc on port {port}: runs of a plan overlap, so \
                 give each VM its own `nc_port` (and open those ports in ESXi's firewall)",
                vm.name
            ));
        }
    }
    None
}

/// The step's arguments go through the command line's own parser and checks of values, so a
/// plan with `os = "bsd"` or `io = "fast"` fails when it is read, not half way through a run.
fn check_args(vm: &FleetVm, step: StepKind) -> Result<()> {
    use clap::Parser;
    let Some(args) = vm.args(step, false) else {
        return Ok(());
    };
    let argv = std::iter::once(OsString::from("virt-vmdkimport")).chain(args);
    let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| {
        let msg = e.to_string();
        anyhow::anyhow!(
            "{}",
            msg.lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
        )
    })?;
    crate::cli::network_args(&cli.network)?;
    let t = &cli.transport;
    crate::esx::transfer::TransferOptions::check(
        cli.ssh_connections,
        t.transport == crate::cli::TransportArg::Nc,
        t.nc_port,
        t.nc_address.as_deref(),
    )?;
    if let Some(m) = &cli.mac {
        crate::cli::normalise_mac(m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Fleet> {
        parse(Path::new("/tmp/plan.toml"), text)
    }

    #[test]
    fn an_unknown_key_names_its_line() {
        let e = parse_str("jobs = 2\n[[vm]]\nname = \"a\"\nvmx = \"/a.vmx\"\nmemroy = 512\n")
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("/tmp/plan.toml"), "{msg}");
        assert!(msg.contains("line 5"), "{msg}");
        assert!(msg.contains("memroy"), "{msg}");
    }

    #[test]
    fn entries_take_the_defaults_they_leave_out() {
        let f = parse_str(
            "[defaults]\nconnect = \"qemu+tcp://h/system\"\npool = \"vg0\"\nnetwork = [\"VM Network=default\"]\n\
             [[vm]]\nname = \"a\"\nflat = \"a/a.vmdk\"\ndeltas = [\"a/a-000001.vmdk\"]\n\
             [[vm]]\nname = \"b\"\nvmx = \"ssh://root@esx1/vmfs/volumes/ds/b/b.vmx\"\npool = \"p2\"\n",
        )
        .unwrap();
        assert_eq!((f.jobs, f.max_per_target, f.max_per_source), (4, 2, 4));
        assert_eq!(f.vms[0].uri, "qemu+tcp://h/system");
        assert_eq!(f.vms[1].pool, "p2");
        assert_eq!(f.vms[1].source_group, "ssh://esx1");
        let a = f.vms[0].args(StepKind::Cutover, false).unwrap();
        assert!(a
            .iter()
            .any(|x| x.to_string_lossy().ends_with("a/a-000001.vmdk")));
        assert!(f.vms[0].args(StepKind::Sync, false).is_none());
        let s1: Vec<_> = f.vms[1].args(StepKind::Stage1, true).unwrap();
        assert!(s1.contains(&"--network".into()) && s1.contains(&"--dry-run".into()));
        let c: Vec<_> = f.vms[1].args(StepKind::Cutover, false).unwrap();
        assert!(c.contains(&"--cutover".into()) && !c.contains(&"--network".into()));
    }

    #[test]
    fn ssh_connections_go_to_every_step_of_an_esxi_source_and_are_checked() {
        let f = parse_str(
            "[defaults]\nssh_connections = 8\n\
             [[vm]]\nname = \"a\"\nflat = \"a/a.vmdk\"\n\
             [[vm]]\nname = \"b\"\nvmx = \"ssh://root@esx1/vmfs/volumes/ds/b/b.vmx\"\n",
        )
        .unwrap();
        let has = |a: Vec<OsString>| {
            a.windows(2)
                .any(|w| w[0] == "--ssh-connections" && w[1] == "8")
        };
        assert!(!has(f.vms[0].args(StepKind::Stage1, false).unwrap()));
        for step in [StepKind::Stage1, StepKind::Sync, StepKind::Cutover] {
            assert!(has(f.vms[1].args(step, false).unwrap()), "{step:?}");
        }
        let e = parse_str(
            "[[vm]]\nname = \"b\"\nvmx = \"ssh://esx1/vmfs/volumes/ds/b/b.vmx\"\nssh_connections = 17\n",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("from 1 to 16"), "{e:#}");
    }

    #[test]
    fn nc_keys_go_to_the_esxi_steps_and_two_vms_may_not_share_a_port() {
        let esx = |name: &str, port: &str| {
            format!(
                "[[vm]]\nname = \"{name}\"\nvmx = \"ssh://esx1/vmfs/volumes/ds/{name}/{name}.vmx\"\n{port}"
            )
        };
        let text = format!(
            "[defaults]\ntransport = \"nc\"\n{}{}",
            esx("a", "nc_port = 9001\n"),
            esx("b", "nc_port = 9002\nnc_address = \"10.0.0.5\"\n")
        );
        let f = parse_str(&text).unwrap();
        let b = f.vms[1].args(StepKind::Cutover, false).unwrap();
        for pair in [
            ["--transport", "nc"],
            ["--nc-port", "9002"],
            ["--nc-address", "10.0.0.5"],
        ] {
            assert!(
                b.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]),
                "{pair:?} in {b:?}"
            );
        }
        let shared = format!(
            "[defaults]\ntransport = \"nc\"\n{}{}",
            esx("a", ""),
            esx("b", "")
        );
        let e = parse_str(&shared).unwrap_err();
        assert!(
            format!("{e:#}").contains("both take nc on port 9001"),
            "{e:#}"
        );
        let any = format!(
            "[defaults]\ntransport = \"nc\"\nnc_port = 0\n{}{}",
            esx("a", ""),
            esx("b", "")
        );
        parse_str(&any).unwrap();
        let bad = format!("{}transport = \"ftp\"\n", esx("a", ""));
        assert!(parse_str(&bad).is_err());
        let stray = format!("{}nc_port = 9001\n", esx("a", ""));
        let e = parse_str(&stray).unwrap_err();
        assert!(format!("{e:#}").contains("go with --transport nc"), "{e:#}");
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        let cases = [
            ("[[vm]]\nvmx = \"/a.vmx\"\n", "no `name`"),
            ("[[vm]]\nname = \"a\"\n", "no source"),
            (
                "[defaults]\nvmx = \"/a.vmx\"\n[[vm]]\nname = \"a\"\n",
                "[defaults] cannot give `vmx`",
            ),
            (
                "[[vm]]\nname = \"a\"\nvmx = \"/a\"\n[[vm]]\nname = \"a\"\nvmx = \"/b\"\n",
                "named twice",
            ),
            ("[[vm]]\nname = \"a\"\nvmx = \"/a\"\nos = \"bsd\"\n", "bsd"),
            (
                "[[vm]]\nname = \"a\"\nvmx = \"/a\"\nmac = \"01:00:00:00:00:01\"\n",
                "multicast",
            ),
            ("jobs = 0\n[[vm]]\nname = \"a\"\nvmx = \"/a\"\n", "jobs = 0"),
            (
                "[[vm]]\nname = \"a\"\nvmx = \"/a\"\ndeltas = [\"x\"]\n",
                "`deltas` go with `flat`",
            ),
            ("", "no [[vm]]"),
            (
                "progress_every = \"soon\"\n[[vm]]\nname = \"a\"\nvmx = \"/a\"\n",
                "line 1",
            ),
            (
                "[[vm]]\nname = \"a\"\nvmx = \"/a\"\nshutdown_timeout = -5\n",
                "line 4",
            ),
            (
                "[[vm]]\nname = \"a\"\nvmx = \"/a\"\nshutdown_timeout = \"0s\"\n",
                "longer than zero",
            ),
            (
                "[[vm]]\nname = \"a\"\nvmx = \"/a\"\nshutdown_timeout = 1.5\n",
                "expected seconds or a duration",
            ),
        ];
        for (text, want) in cases {
            let msg = format!("{:#}", parse_str(text).unwrap_err());
            assert!(msg.contains(want), "{want:?} in {msg}");
        }
    }

    #[test]
    fn durations_take_seconds_or_units() {
        let f = parse_str(
            "progress_every = \"1m\"\n[defaults]\nshutdown_timeout = 90\n\
             [[vm]]\nname = \"a\"\nvmx = \"ssh://root@esx1/vmfs/volumes/ds/a/a.vmx\"\n\
             [[vm]]\nname = \"b\"\nvmx = \"ssh://root@esx1/vmfs/volumes/ds/b/b.vmx\"\nshutdown_timeout = \"1h 30m\"\n",
        )
        .unwrap();
        assert_eq!(f.progress_every, Duration::from_secs(60));
        let timeout_of = |i: usize| {
            let a = f.vms[i].args(StepKind::Cutover, false).unwrap();
            let at = a.iter().position(|x| x == "--shutdown-timeout").unwrap();
            a[at + 1].clone()
        };
        assert_eq!(timeout_of(0), "1m 30s");
        assert_eq!(timeout_of(1), "1h 30m");
        let off = parse_str("progress_every = 0\n[[vm]]\nname = \"a\"\nvmx = \"/a\"\n").unwrap();
        assert!(off.progress_every.is_zero(), "0: no progress lines");
    }
}
