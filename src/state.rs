//! The import's progress, kept as XML in the domain's `<metadata>` under the tool's namespace.
//!
//! In the domain XML (`virsh dumpxml`) it reads:
//!
//! ```xml
//! <vmdkimport:import xmlns:vmdkimport="https://virt-vmdkimport.example/ns/import/1" lifecycle="1">
//!   <vmdkimport:disk target-dev="sda" pool="default" volume="web1-disk0" capacity="1073741824"
//!                    base-cid="3d0c8a4f" base-uploaded="yes">
//!     <vmdkimport:source>web1.vmdk</vmdkimport:source>
//!     <vmdkimport:applied file="web1-000001.vmdk" cid="5a1e2b3c" parent-cid="3d0c8a4f" handed-over="yes"/>
//!   </vmdkimport:disk>
//!   <vmdkimport:handed-over at="2026-11-27T09:12:44Z" by="start"/>
//! </vmdkimport:import>
//! ```
//!
//! A domain this tool defined also carries `defined-by="virt-vmdkimport"` and `os` on
//! `<import>`, and after stage 1's trial start a `<trial>` element saying which CPU and
//! Hyper-V setting started, and each fallback taken with the daemon's error (see
//! [`TrialRecord`]). All three are optional: states written before them still read.
//! Each local stage 2 that wrote adds `<stage2 at bytes ms>` (see [`LocalApply`]); a state
//! without them reads its stage 2 bytes as unknown.
//!
//! virDomainSetMetadata wants that element without any namespace (libvirt 9.0 fails with
//! "failed to create a new XML namespace" when it already declares one) and puts it in
//! [`NS_URI`] under the prefix given as `key`; virDomainGetMetadata hands it back without a
//! namespace too. So [`ImportState::to_xml`] writes plain `<import>`, and
//! [`ImportState::from_xml`] reads the plain, the prefixed and the default-namespace forms.
//!
//! CIDs are written as 8 hex digits, as VMware writes them in descriptors.
//!
//! `lifecycle="1"` marks a state that records hand-overs (see [`lifecycle`]).
//! A state without it was written by an older version that did not: its applied deltas are
//! read as handed over at an unknown time, the safe reading.

use anyhow::{bail, ensure, Context, Result};

pub mod lifecycle;
pub mod metadata;

use crate::xmltree::{self, Element};

/// The namespace of the metadata element. The `.example` name is reserved (RFC 2606), so it can
/// never collide with anybody else's metadata; the trailing `1` is the format's version.
pub const NS_URI: &str = "https://virt-vmdkimport.example/ns/import/1";
/// The prefix (virDomainSetMetadata's `key`).
pub const NS_PREFIX: &str = "vmdkimport";

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ImportState {
    pub disks: Vec<DiskState>,
    /// The latest hand-over of the domain to its guest, if any.
    pub handed_over: Option<HandOver>,
    /// Who defined the domain: `Some(true)` this tool, `Some(false)` other tooling, `None` not
    /// recorded (a state written before this was kept).
    pub defined_by_tool: Option<bool>,
    /// The guest family the domain was defined for (`linux`, `windows`), when this tool defined it.
    pub os: Option<String>,
    /// What stage 1's trial start proved.
    pub trial: Option<TrialRecord>,
    /// Pre-copy rounds (`--sync` from ESXi), oldest first.
    pub syncs: Vec<SyncRound>,
    /// The outage of the cutover from ESXi, once the domain started.
    pub cutover: Option<Outage>,
    /// Local stage 2 runs (deltas read from files here) that wrote, oldest first; absent in
    /// older states, whose stage 2 bytes read as unknown.
    pub local_applies: Vec<LocalApply>,
    /// Steps run by `plan` (stage 1, sync, cutover), oldest first; absent in older states.
    pub steps: Vec<StepRecord>,
    /// The verdict of the last test boot (`test-boot`), if one ran.
    pub test_boot: Option<TestBootRecord>,
}

/// The last test boot: when it began (UTC, `YYYY-MM-DDTHH:MM:SSZ`), its verdict (`booted`,
/// `failed`, `unknown`), the evidence in one line, and how long the guest was watched.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct TestBootRecord {
    pub at: String,
    pub verdict: String,
    pub evidence: String,
    pub ms: u64,
}

/// One step of a plan run for this domain: when it began and ended (UTC with milliseconds,
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`), how it ended (`done`, `failed`, `interrupted`), and the error.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct StepRecord {
    pub name: String,
    pub began: String,
    pub ended: String,
    pub outcome: String,
    pub error: Option<String>,
}

/// One `--sync` round: the deltas it applied, with the VM still running on ESXi.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct SyncRound {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub at: String,
    /// Bytes applied (data and zeros).
    pub bytes: u64,
    /// How long reading and applying took.
    pub ms: u64,
    /// Bytes read over ssh (the frozen deltas' grains); None in states written before it.
    pub read: Option<u64>,
    /// The size of the deltas the VM writes into when the round ends: what a cutover then
    /// reads (see [`crate::projection`]); None when it could not be had.
    pub final_bytes: Option<u64>,
    /// Milliseconds since the previous round (None for the first).
    pub since_ms: Option<u64>,
}

/// The figures of a cutover from ESXi, in milliseconds: guest shutdown (the command to powered
/// off), the final deltas read and applied, the domain start, and the total from the shutdown
/// command to the domain running.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Outage {
    pub at: String,
    pub shutdown_ms: u64,
    pub apply_ms: u64,
    pub bytes: u64,
    pub start_ms: u64,
    pub total_ms: u64,
}

/// One local stage 2 run: the bytes it wrote into the volumes (the deltas' data and zeros,
/// and independent disks copied whole) and how long that took.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct LocalApply {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub at: String,
    pub bytes: u64,
    pub ms: u64,
}

/// The domain was given to its guest: started by stage 2, or stage 2 finished with `--no-start`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HandOver {
    /// UTC, `YYYY-MM-DDTHH:MM:SSZ`; None when an older version recorded no time.
    pub at: Option<String>,
    pub how: HandOverHow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOverHow {
    Started,
    NoStart,
    /// Inferred from a state written before hand-overs were recorded.
    Unknown,
}

impl HandOverHow {
    fn as_str(self) -> &'static str {
        match self {
            HandOverHow::Started => "start",
            HandOverHow::NoStart => "no-start",
            HandOverHow::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for HandOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.at.as_deref().unwrap_or("an unknown time");
        match self.how {
            HandOverHow::Started => write!(f, "started at {at}"),
            HandOverHow::NoStart => write!(f, "finished with --no-start at {at}"),
            HandOverHow::Unknown => write!(
                f,
                "handed over at {at} (recorded by an older virt-vmdkimport)"
            ),
        }
    }
}

/// The outcome of the last trial start (paused, then destroyed): the settings it started with,
/// and every fallback taken to get there, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct TrialRecord {
    /// Whether the domain started; false when stage 1 stopped with an error.
    pub started: bool,
    /// `host-passthrough`, `host-model`, `default` or `model NAME`.
    pub cpu: String,
    /// `fixed`, `passthrough` or `none`; None for a domain without Hyper-V enlightenments.
    pub hyperv: Option<String>,
    pub fallbacks: Vec<Fallback>,
    /// How long the start that succeeded took (QEMU up, paused), the figure a cutover's
    /// projection adds for the start; None in states written before it.
    pub start_ms: Option<u64>,
}

/// One step down the fallback ladder: `what` (`cpu` or `hyperv`) went `from` -> `to` because
/// the start failed with `error` (the daemon's text).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Fallback {
    pub what: String,
    pub from: String,
    pub to: String,
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DiskState {
    /// The disk's `<target dev>` in the domain (`vda`, `sda`, ...).
    pub target_dev: String,
    pub pool: String,
    pub volume: String,
    /// Bytes.
    pub capacity: u64,
    /// The base descriptor's CID; the first delta's parentCID must match it.
    #[serde(serialize_with = "hex_cid")]
    pub base_cid: Option<u32>,
    /// True only once the whole base upload finished.
    pub base_uploaded: bool,
    /// True while stage 2 writes this disk: a run that stopped half way leaves it set, and
    /// the domain is not started until a rerun completes.
    pub applying: bool,
    /// While `applying`: the index in `applied` of the first delta being written, when the
    /// run recorded it (runs from ESXi do); the ones before it were complete.
    pub applying_from: Option<usize>,
    /// The base image's file name.
    pub source: Option<String>,
    /// Deltas applied, oldest first; while `applying`, the chain being applied.
    pub applied: Vec<AppliedDelta>,
    /// The volume's modification time as libvirt reported it right after the hand-over
    /// (`<timestamps><mtime>`; file volumes only): a later one means something wrote the disk.
    pub volume_mtime: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct AppliedDelta {
    pub file: String,
    #[serde(serialize_with = "hex_cid")]
    pub cid: Option<u32>,
    #[serde(serialize_with = "hex_cid")]
    pub parent_cid: Option<u32>,
    /// The delta was in the volume when the domain was handed over: applying it again could
    /// overwrite what the guest wrote since.
    pub handed_over: bool,
    /// The delta was the VM's active one (no snapshot over it) when it was applied: if the VM
    /// ran again on ESXi it may have grown since, so it counts as not applied.
    pub active: bool,
}

fn cid_str(c: u32) -> String {
    format!("{c:08x}")
}

/// A CID in JSON as in the XML and in descriptors: 8 hex digits (or null).
fn hex_cid<S: serde::Serializer>(c: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(&cid_str(*c)),
        None => s.serialize_none(),
    }
}

impl serde::Serialize for HandOverHow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl ImportState {
    /// The metadata element, without a namespace, ready for virDomainSetMetadata (type
    /// element, key [`NS_PREFIX`], uri [`NS_URI`]; the namespace comes from the call). Characters XML 1.0 cannot carry (C0 controls other than tab, LF, CR)
    /// are written as U+FFFD; everything else round-trips.
    pub fn to_xml(&self) -> String {
        let mut root = Element::new("import").attr("lifecycle", LIFECYCLE_VERSION);
        for d in &self.disks {
            let mut el = Element::new("disk")
                .attr("target-dev", &d.target_dev)
                .attr("pool", &d.pool)
                .attr("volume", &d.volume)
                .attr("capacity", &d.capacity.to_string());
            if let Some(c) = d.base_cid {
                el = el.attr("base-cid", &cid_str(c));
            }
            el = el.attr("base-uploaded", if d.base_uploaded { "yes" } else { "no" });
            if d.applying {
                el = el.attr("applying", "yes");
            }
            if let Some(i) = d.applying_from {
                el = el.attr("applying-from", &i.to_string());
            }
            if let Some(m) = &d.volume_mtime {
                el = el.attr("volume-mtime", m);
            }
            if let Some(s) = &d.source {
                el = el.child(Element::new("source").text(s));
            }
            for a in &d.applied {
                let mut ap = Element::new("applied").attr("file", &a.file);
                if let Some(c) = a.cid {
                    ap = ap.attr("cid", &cid_str(c));
                }
                if let Some(c) = a.parent_cid {
                    ap = ap.attr("parent-cid", &cid_str(c));
                }
                if a.handed_over {
                    ap = ap.attr("handed-over", "yes");
                }
                if a.active {
                    ap = ap.attr("active", "yes");
                }
                el = el.child(ap);
            }
            root = root.child(el);
        }
        if let Some(h) = &self.handed_over {
            let mut el = Element::new("handed-over").attr("by", h.how.as_str());
            if let Some(at) = &h.at {
                el = el.attr("at", at);
            }
            root = root.child(el);
        }
        xmltree::to_string(&self.with_domain_record(root))
    }

    /// Read the element back: as virDomainGetMetadata returns it (no namespace: the URI was
    /// the lookup key), or as it sits in the domain XML (prefixed, or a default namespace).
    /// Elements are matched by local name; a namespace other than ours is refused.
    pub fn from_xml(xml: &str) -> Result<ImportState> {
        let root = xmltree::parse(xml).context("import state")?;
        check_root(&root)?;
        let mut state = ImportState::default();
        for (i, d) in root
            .elements()
            .filter(|e| e.local_name() == "disk")
            .enumerate()
        {
            state
                .disks
                .push(read_disk(d, &format!("import state: disk {}", i + 1))?);
        }
        state.handed_over = read_hand_over(&root)?;
        if root.get_attr("lifecycle").is_none() {
            infer_legacy_hand_over(&mut state);
        }
        state.read_domain_record(&root)?;
        Ok(state)
    }

    /// `defined-by`, `os` and `<trial>` added to the `<import>` element.
    fn with_domain_record(&self, mut root: Element) -> Element {
        if let Some(ours) = self.defined_by_tool {
            root = root.attr("defined-by", if ours { DEFINED_BY_US } else { "other" });
        }
        if let Some(os) = &self.os {
            root = root.attr("os", os);
        }
        if let Some(t) = &self.trial {
            let mut el = Element::new("trial")
                .attr("started", if t.started { "yes" } else { "no" })
                .attr("cpu", &t.cpu);
            if let Some(h) = &t.hyperv {
                el = el.attr("hyperv", h);
            }
            if let Some(ms) = t.start_ms {
                el = el.attr("start-ms", &ms.to_string());
            }
            for f in &t.fallbacks {
                el = el.child(
                    Element::new("fallback")
                        .attr("what", &f.what)
                        .attr("from", &f.from)
                        .attr("to", &f.to)
                        .attr("error", &f.error),
                );
            }
            root = root.child(el);
        }
        for s in &self.syncs {
            let mut el = Element::new("sync")
                .attr("at", &s.at)
                .attr("bytes", &s.bytes.to_string())
                .attr("ms", &s.ms.to_string());
            for (k, v) in [
                ("read", s.read),
                ("final-bytes", s.final_bytes),
                ("since-ms", s.since_ms),
            ] {
                if let Some(v) = v {
                    el = el.attr(k, &v.to_string());
                }
            }
            root = root.child(el);
        }
        root = self.with_steps(root);
        root = self.with_local_applies(root);
        if let Some(t) = &self.test_boot {
            root = root.child(
                Element::new("test-boot")
                    .attr("at", &t.at)
                    .attr("verdict", &t.verdict)
                    .attr("evidence", &t.evidence)
                    .attr("ms", &t.ms.to_string()),
            );
        }
        if let Some(o) = &self.cutover {
            root = root.child(
                Element::new("cutover")
                    .attr("at", &o.at)
                    .attr("shutdown-ms", &o.shutdown_ms.to_string())
                    .attr("apply-ms", &o.apply_ms.to_string())
                    .attr("bytes", &o.bytes.to_string())
                    .attr("start-ms", &o.start_ms.to_string())
                    .attr("total-ms", &o.total_ms.to_string()),
            );
        }
        root
    }

    /// The counterpart of [`Self::with_domain_record`]; absent parts stay None.
    fn read_domain_record(&mut self, root: &Element) -> Result<()> {
        self.defined_by_tool = root.get_attr("defined-by").map(|v| v == DEFINED_BY_US);
        self.os = root.get_attr("os").map(str::to_string);
        self.read_esx_records(root)?;
        self.read_steps(root)?;
        self.read_local_applies(root)?;
        let Some(t) = root.elements().find(|e| e.local_name() == "trial") else {
            return Ok(());
        };
        let attr = |e: &Element, k: &str| -> Result<String> {
            e.get_attr(k)
                .map(str::to_string)
                .with_context(|| format!("import state: <{}> has no {k} attribute", e.name))
        };
        let mut rec = TrialRecord {
            started: t.get_attr("started") != Some("no"),
            cpu: attr(t, "cpu")?,
            hyperv: t.get_attr("hyperv").map(str::to_string),
            fallbacks: Vec::new(),
            start_ms: t.get_attr("start-ms").and_then(|v| v.parse().ok()),
        };
        for f in t.elements().filter(|e| e.local_name() == "fallback") {
            rec.fallbacks.push(Fallback {
                what: attr(f, "what")?,
                from: attr(f, "from")?,
                to: attr(f, "to")?,
                error: attr(f, "error")?,
            });
        }
        self.trial = Some(rec);
        Ok(())
    }
}

impl ImportState {
    /// `<step>` records of plan runs added to `root`.
    fn with_steps(&self, mut root: Element) -> Element {
        for s in &self.steps {
            let mut el = Element::new("step")
                .attr("name", &s.name)
                .attr("began", &s.began)
                .attr("ended", &s.ended)
                .attr("outcome", &s.outcome);
            if let Some(e) = &s.error {
                el = el.attr("error", e);
            }
            root = root.child(el);
        }
        root
    }

    /// The counterpart of [`Self::with_steps`].
    fn read_steps(&mut self, root: &Element) -> Result<()> {
        for s in root.elements().filter(|e| e.local_name() == "step") {
            let attr = |k: &str| -> Result<String> {
                s.get_attr(k)
                    .map(str::to_string)
                    .with_context(|| format!("import state: <step> has no {k} attribute"))
            };
            self.steps.push(StepRecord {
                name: attr("name")?,
                began: attr("began")?,
                ended: attr("ended")?,
                outcome: attr("outcome")?,
                error: s.get_attr("error").map(str::to_string),
            });
        }
        Ok(())
    }

    /// `<sync>` and `<cutover>` records of the runs from ESXi, and the `<test-boot>` record.
    fn read_esx_records(&mut self, root: &Element) -> Result<()> {
        let num = |e: &Element, k: &str| -> Result<u64> {
            let v = e
                .get_attr(k)
                .with_context(|| format!("import state: <{}> has no {k} attribute", e.name))?;
            v.parse()
                .with_context(|| format!("import state: <{}> {k}={v:?} is not a number", e.name))
        };
        let at = |e: &Element| e.get_attr("at").unwrap_or_default().to_string();
        for s in root.elements().filter(|e| e.local_name() == "sync") {
            let opt = |k: &str| s.get_attr(k).map(|_| num(s, k)).transpose();
            self.syncs.push(SyncRound {
                at: at(s),
                bytes: num(s, "bytes")?,
                ms: num(s, "ms")?,
                read: opt("read")?,
                final_bytes: opt("final-bytes")?,
                since_ms: opt("since-ms")?,
            });
        }
        if let Some(t) = root.elements().find(|e| e.local_name() == "test-boot") {
            self.test_boot = Some(TestBootRecord {
                at: at(t),
                verdict: t.get_attr("verdict").unwrap_or("unknown").to_string(),
                evidence: t.get_attr("evidence").unwrap_or_default().to_string(),
                ms: num(t, "ms")?,
            });
        }
        if let Some(c) = root.elements().find(|e| e.local_name() == "cutover") {
            self.cutover = Some(Outage {
                at: at(c),
                shutdown_ms: num(c, "shutdown-ms")?,
                apply_ms: num(c, "apply-ms")?,
                bytes: num(c, "bytes")?,
                start_ms: num(c, "start-ms")?,
                total_ms: num(c, "total-ms")?,
            });
        }
        Ok(())
    }
}

impl ImportState {
    /// `<stage2 at bytes ms>` records of local stage 2 runs added to `root`.
    fn with_local_applies(&self, mut root: Element) -> Element {
        for a in &self.local_applies {
            root = root.child(
                Element::new("stage2")
                    .attr("at", &a.at)
                    .attr("bytes", &a.bytes.to_string())
                    .attr("ms", &a.ms.to_string()),
            );
        }
        root
    }

    /// The counterpart of [`Self::with_local_applies`]: a record whose numbers do not read is
    /// an error naming it (the state is ours; a broken one is not guessed at).
    fn read_local_applies(&mut self, root: &Element) -> Result<()> {
        for e in root.elements().filter(|e| e.local_name() == "stage2") {
            let num = |k: &str| -> Result<u64> {
                let v = e
                    .get_attr(k)
                    .with_context(|| format!("import state: <stage2> has no {k} attribute"))?;
                v.parse()
                    .with_context(|| format!("import state: <stage2> {k}={v:?} is not a number"))
            };
            self.local_applies.push(LocalApply {
                at: e.get_attr("at").unwrap_or_default().to_string(),
                bytes: num("bytes")?,
                ms: num("ms")?,
            });
        }
        Ok(())
    }
}

/// The format version of the lifecycle records (the `lifecycle` attribute of the root).
const LIFECYCLE_VERSION: &str = "1";

/// The root is `<import>` in our namespace (declared on it, by its prefix or as the default).
fn check_root(root: &Element) -> Result<()> {
    ensure!(
        root.local_name() == "import",
        "import state: root element is <{}>, not <import>",
        root.name
    );
    let ns_attr = match root.name.split_once(':') {
        Some((prefix, _)) => format!("xmlns:{prefix}"),
        None => "xmlns".to_string(),
    };
    match root.get_attr(&ns_attr) {
        Some(NS_URI) => {}
        Some(other) => bail!("import state: namespace {other:?}, expected {NS_URI:?}"),
        None if root.name.contains(':') => {
            bail!("import state: prefix of <{}> is not declared", root.name)
        }
        None => {}
    }
    Ok(())
}

/// One `<disk>` of the import state; `what` names it in errors.
fn read_disk(d: &Element, what: &str) -> Result<DiskState> {
    let attr = |k: &str| -> Result<String> {
        d.get_attr(k)
            .map(str::to_string)
            .with_context(|| format!("{what}: no {k} attribute"))
    };
    let capacity = attr("capacity")?;
    let base_uploaded = yes_no(d.get_attr("base-uploaded"), "base-uploaded", what)?;
    let applying = yes_no(d.get_attr("applying"), "applying", what)?;
    let mut applied = Vec::new();
    for a in d.elements().filter(|e| e.local_name() == "applied") {
        applied.push(AppliedDelta {
            file: a
                .get_attr("file")
                .with_context(|| format!("{what}: an applied delta has no file"))?
                .to_string(),
            cid: parse_cid(a.get_attr("cid"), what)?,
            parent_cid: parse_cid(a.get_attr("parent-cid"), what)?,
            handed_over: yes_no(a.get_attr("handed-over"), "handed-over", what)?,
            active: yes_no(a.get_attr("active"), "active", what)?,
        });
    }
    Ok(DiskState {
        target_dev: attr("target-dev")?,
        pool: attr("pool")?,
        volume: attr("volume")?,
        capacity: capacity
            .parse()
            .with_context(|| format!("{what}: capacity {capacity:?} is not a number"))?,
        base_cid: parse_cid(d.get_attr("base-cid"), what)?,
        base_uploaded,
        applying,
        applying_from: d
            .get_attr("applying-from")
            .map(|v| {
                v.parse()
                    .with_context(|| format!("{what}: applying-from={v:?} is not a number"))
            })
            .transpose()?,
        source: d
            .elements()
            .find(|e| e.local_name() == "source")
            .map(|e| e.text_content()),
        applied,
        volume_mtime: d.get_attr("volume-mtime").map(str::to_string),
    })
}

fn yes_no(v: Option<&str>, key: &str, what: &str) -> Result<bool> {
    match v {
        Some("yes") => Ok(true),
        Some("no") | None => Ok(false),
        Some(v) => bail!("{what}: {key}={v:?}: expected yes or no"),
    }
}

fn read_hand_over(root: &Element) -> Result<Option<HandOver>> {
    let Some(el) = root.elements().find(|e| e.local_name() == "handed-over") else {
        return Ok(None);
    };
    let how = match el.get_attr("by") {
        Some("start") => HandOverHow::Started,
        Some("no-start") => HandOverHow::NoStart,
        Some("unknown") | None => HandOverHow::Unknown,
        Some(v) => bail!("import state: handed-over by={v:?}: expected start, no-start or unknown"),
    };
    Ok(Some(HandOver {
        at: el.get_attr("at").map(str::to_string),
        how,
    }))
}

/// A state from before hand-overs were recorded: a disk whose deltas were all written may
/// have run since, so they count as handed over (a disk left `applying` can still be rerun).
fn infer_legacy_hand_over(state: &mut ImportState) {
    let mut any = false;
    for d in state.disks.iter_mut().filter(|d| !d.applying) {
        for a in &mut d.applied {
            a.handed_over = true;
            any = true;
        }
    }
    if any && state.handed_over.is_none() {
        state.handed_over = Some(HandOver {
            at: None,
            how: HandOverHow::Unknown,
        });
    }
}
/// `defined-by` of a domain this tool defined.
const DEFINED_BY_US: &str = "virt-vmdkimport";

/// The import state inside a whole domain XML (`virsh dumpxml`), found by its namespace;
/// None when the domain has none.
pub fn from_domain_xml(domain_xml: &str) -> Result<Option<ImportState>> {
    let dom = xmltree::parse(domain_xml).context("domain XML")?;
    let Some(meta) = dom.find("metadata") else {
        return Ok(None);
    };
    for el in meta.elements() {
        if is_ours(el) {
            return ImportState::from_xml(&xmltree::to_string(el)).map(Some);
        }
    }
    Ok(None)
}

/// Whether a `<metadata>` child is in our namespace (by its own declaration, as libvirt writes it).
pub(crate) fn is_ours(el: &Element) -> bool {
    let ns_attr = match el.name.split_once(':') {
        Some((prefix, _)) => format!("xmlns:{prefix}"),
        None => "xmlns".to_string(),
    };
    el.get_attr(&ns_attr) == Some(NS_URI)
}

fn parse_cid(v: Option<&str>, what: &str) -> Result<Option<u32>> {
    v.map(|s| u32::from_str_radix(s, 16).with_context(|| format!("{what}: CID {s:?} is not hex")))
        .transpose()
}

// ---- `--io overlay`: where each disk's qcow2 overlay stands ------------------------------

/// The namespace of the overlay records: beside the import state in the domain's metadata,
/// in an element of their own, so that a state without them reads as before.
pub const OVERLAY_NS_URI: &str = "https://virt-vmdkimport.example/ns/overlay/1";
pub const OVERLAY_NS_PREFIX: &str = "vmdkoverlay";

/// The steps of one disk's overlay, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OverlayStep {
    /// The overlay volume is being created and uploaded; the domain's disk is the raw volume.
    Uploading,
    /// The upload finished; the domain's disk is being switched to the overlay.
    Uploaded,
    /// The domain's persistent definition has the overlay as this disk (backing: the volume).
    OnOverlay,
    /// A block commit of the overlay into the volume was started.
    Committing,
    /// Pivoted back to the volume and the definition checked: the overlay can go.
    Committed,
}

impl OverlayStep {
    const ALL: [(OverlayStep, &'static str); 5] = [
        (OverlayStep::Uploading, "uploading"),
        (OverlayStep::Uploaded, "uploaded"),
        (OverlayStep::OnOverlay, "on-overlay"),
        (OverlayStep::Committing, "committing"),
        (OverlayStep::Committed, "committed"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .expect("every step")
            .1
    }
}

/// One disk's overlay: its volume, its step, and the disk element it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayRecord {
    pub target_dev: String,
    pub pool: String,
    pub volume: String,
    /// The overlay volume's path (the disk's source while on the overlay).
    pub path: String,
    pub step: OverlayStep,
    /// The commit runs in a domain started paused for it (the operator had it shut off):
    /// destroyed again once committed.
    pub offline: bool,
    /// The domain's `<disk>` element before the switch, put back after the commit.
    pub original_disk: String,
}

/// The overlay records as one metadata element (no namespace, as virDomainSetMetadata wants).
pub fn overlays_to_xml(records: &[OverlayRecord]) -> String {
    let mut root = Element::new("overlays");
    for r in records {
        let mut el = Element::new("overlay")
            .attr("target-dev", &r.target_dev)
            .attr("pool", &r.pool)
            .attr("volume", &r.volume)
            .attr("path", &r.path)
            .attr("step", r.step.as_str());
        if r.offline {
            el = el.attr("offline", "yes");
        }
        root = root.child(el.child(Element::new("original-disk").text(&r.original_disk)));
    }
    xmltree::to_string(&root)
}

/// The counterpart of [`overlays_to_xml`].
pub fn overlays_from_xml(xml: &str) -> Result<Vec<OverlayRecord>> {
    let root = xmltree::parse(xml).context("overlay records")?;
    let mut out = Vec::new();
    for el in root.elements().filter(|e| e.local_name() == "overlay") {
        let attr = |k: &str| -> Result<String> {
            el.get_attr(k)
                .map(str::to_string)
                .with_context(|| format!("overlay record: no {k} attribute"))
        };
        let step = attr("step")?;
        out.push(OverlayRecord {
            target_dev: attr("target-dev")?,
            pool: attr("pool")?,
            volume: attr("volume")?,
            path: attr("path")?,
            step: OverlayStep::ALL
                .iter()
                .find(|(_, n)| *n == step)
                .with_context(|| format!("overlay record: unknown step {step:?}"))?
                .0,
            offline: yes_no(el.get_attr("offline"), "offline", "overlay record")?,
            original_disk: el
                .elements()
                .find(|e| e.local_name() == "original-disk")
                .map(|e| e.text_content())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod overlay_tests {
    use super::*;

    #[test]
    fn overlay_records_round_trip_with_the_disk_element_they_replaced() {
        let r = OverlayRecord {
            target_dev: "vda".into(),
            pool: "p".into(),
            volume: "web1-disk0-overlay".into(),
            path: "/var/lib/libvirt/images/web1-disk0-overlay".into(),
            step: OverlayStep::Committing,
            offline: true,
            original_disk: "<disk type='volume'><source pool='p' volume='v&amp;'/></disk>".into(),
        };
        let xml = overlays_to_xml(std::slice::from_ref(&r));
        assert_eq!(overlays_from_xml(&xml).unwrap(), vec![r]);
        assert!(overlays_from_xml("<overlays/>").unwrap().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An older round without the projection's figures, and one with them.
    fn sync_rounds(nasty: &str) -> Vec<SyncRound> {
        vec![
            SyncRound {
                at: nasty.into(),
                bytes: 4096,
                ms: 12,
                ..Default::default()
            },
            SyncRound {
                at: "2026-11-27T12:00:00Z".into(),
                bytes: 8192,
                ms: 40,
                read: Some(9000),
                final_bytes: Some(1 << 20),
                since_ms: Some(60_000),
            },
        ]
    }

    fn hostile_test_boot(nasty: &str) -> TestBootRecord {
        TestBootRecord {
            at: "2026-12-07T19:00:00Z".into(),
            verdict: "failed".into(),
            evidence: nasty.into(),
            ms: 61_000,
        }
    }

    fn hostile() -> ImportState {
        let nasty = "a\"b'c<d>e&f\tg\nh\r ]]> &amp; <!-- é 日本";
        ImportState {
            disks: vec![
                DiskState {
                    target_dev: "sda".into(),
                    pool: nasty.into(),
                    volume: format!("{nasty}.raw"),
                    capacity: u64::MAX,
                    base_cid: Some(0xfffffffe),
                    base_uploaded: true,
                    applying: true,
                    applying_from: Some(1),
                    source: Some(format!("  {nasty}  ")),
                    applied: vec![
                        AppliedDelta {
                            file: nasty.into(),
                            cid: Some(1),
                            parent_cid: Some(0xfffffffe),
                            handed_over: true,
                            active: true,
                        },
                        AppliedDelta {
                            file: "x".into(),
                            cid: None,
                            parent_cid: None,
                            handed_over: false,
                            active: false,
                        },
                    ],
                    volume_mtime: Some("1795768236.038995910".into()),
                },
                DiskState::default(),
            ],
            handed_over: Some(HandOver {
                at: Some(nasty.into()),
                how: HandOverHow::NoStart,
            }),
            defined_by_tool: Some(true),
            os: Some(nasty.into()),
            syncs: sync_rounds(nasty),
            cutover: Some(Outage {
                at: "2026-11-27T12:00:00Z".into(),
                shutdown_ms: 1,
                apply_ms: 2,
                bytes: 3,
                start_ms: 4,
                total_ms: 10,
            }),
            local_applies: vec![LocalApply {
                at: nasty.into(),
                bytes: u64::MAX,
                ms: 0,
            }],
            test_boot: Some(hostile_test_boot(nasty)),
            steps: vec![StepRecord {
                name: "stage1".into(),
                began: "2026-11-27T12:00:00.001Z".into(),
                ended: "2026-11-27T12:00:02.500Z".into(),
                outcome: "failed".into(),
                error: Some(nasty.into()),
            }],
            trial: Some(TrialRecord {
                started: false,
                cpu: "default".into(),
                hyperv: Some("none".into()),
                fallbacks: vec![Fallback {
                    what: "cpu".into(),
                    from: "host-passthrough".into(),
                    to: "host-model".into(),
                    error: nasty.into(),
                }],
                start_ms: Some(345),
            }),
        }
    }

    #[test]
    fn a_state_without_the_domain_record_reads_as_not_recorded() {
        let xml = "<import><disk target-dev='vda' pool='p' volume='v' capacity='5' base-uploaded='yes'/></import>";
        let s = ImportState::from_xml(xml).unwrap();
        assert_eq!(
            (s.defined_by_tool, s.os, s.trial),
            (None, None, None),
            "older states carry none of it"
        );
    }

    #[test]
    fn hostile_strings_round_trip() {
        let s = hostile();
        assert_eq!(ImportState::from_xml(&s.to_xml()).unwrap(), s);
    }

    #[test]
    fn default_namespace_form_is_read() {
        let xml = format!(
            "<import xmlns=\"{NS_URI}\"><disk target-dev='vda' pool='p' volume='v' capacity='5' base-uploaded='no'/></import>"
        );
        let s = ImportState::from_xml(&xml).unwrap();
        assert_eq!(s.disks[0].volume, "v");
        assert_eq!(s.disks[0].capacity, 5);
    }

    #[test]
    fn prefixed_form_in_domain_xml_is_found() {
        let xml = format!(
            "<domain><name>x</name><metadata><other:x xmlns:other='urn:o'/><vi:import xmlns:vi=\"{NS_URI}\"><vi:disk target-dev='sda' pool='p' volume='v' capacity='7' base-cid='0000002a' base-uploaded='yes'><vi:source>b.vmdk</vi:source></vi:disk></vi:import></metadata></domain>"
        );
        let s = from_domain_xml(&xml).unwrap().unwrap();
        assert_eq!(s.disks[0].base_cid, Some(42));
        assert_eq!(s.disks[0].source.as_deref(), Some("b.vmdk"));
        assert_eq!(
            from_domain_xml("<domain><metadata/></domain>").unwrap(),
            None
        );
    }

    /// XML-ish fragments glued at random: Ok or Err, never a panic.
    #[test]
    fn random_fragments_never_panic() {
        const BITS: &[&str] = &[
            "<import>",
            "</import>",
            "<disk ",
            "target-dev='a' ",
            "capacity='1' ",
            "pool='p' ",
            "volume='v' ",
            "/>",
            ">",
            "</disk>",
            "<source>",
            "</source>",
            "&amp;",
            "&#0;",
            "&#x110000;",
            "&bogus;",
            "<!DOCTYPE x [<!ENTITY a 'b'>]>",
            "<![CDATA[x]]>",
            "base-cid='zz' ",
            "<applied file='f'/>",
            "<x:import xmlns:x='urn:y'>",
            "\"",
            "'",
        ];
        let mut seed: u64 = 0x2545f4914f6cdd1d;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..(seed % 16) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(BITS[(seed >> 33) as usize % BITS.len()]);
            }
            let _ = ImportState::from_xml(&text);
        }
    }

    #[test]
    fn an_older_state_reads_its_written_deltas_as_handed_over() {
        let xml = "<import><disk target-dev='sda' pool='p' volume='v' capacity='5' base-uploaded='yes'><applied file='d1.vmdk' cid='000000d1'/></disk><disk target-dev='sdb' pool='p' volume='w' capacity='5' base-uploaded='yes' applying='yes'><applied file='e1.vmdk' cid='000000e1'/></disk></import>";
        let s = ImportState::from_xml(xml).unwrap();
        assert!(s.disks[0].applied[0].handed_over);
        assert!(
            !s.disks[1].applied[0].handed_over,
            "a disk left applying can be rerun"
        );
        let h = s.handed_over.unwrap();
        assert_eq!((h.at, h.how), (None, HandOverHow::Unknown));
    }

    #[test]
    fn a_state_that_records_hand_overs_is_read_as_written() {
        let s = ImportState {
            disks: vec![DiskState {
                base_uploaded: true,
                applied: vec![AppliedDelta {
                    file: "d1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            handed_over: None,
            ..Default::default()
        };
        let back = ImportState::from_xml(&s.to_xml()).unwrap();
        assert_eq!(back, s, "applied but not yet handed over stays so");
    }

    #[test]
    fn a_state_without_local_stage2_records_reads_their_bytes_as_unknown() {
        let xml = "<import><disk target-dev='vda' pool='p' volume='v' capacity='5' base-uploaded='yes'/></import>";
        assert!(ImportState::from_xml(xml).unwrap().local_applies.is_empty());
        let bad = "<import><stage2 at='T' bytes='many' ms='1'/></import>";
        let e = ImportState::from_xml(bad).unwrap_err();
        assert!(
            format!("{e:#}").contains("<stage2> bytes=\"many\""),
            "{e:#}"
        );
    }

    #[test]
    fn foreign_namespace_is_refused() {
        let e = ImportState::from_xml("<x:import xmlns:x='urn:other'/>").unwrap_err();
        assert!(format!("{e:#}").contains("urn:other"), "{e:#}");
    }
}
