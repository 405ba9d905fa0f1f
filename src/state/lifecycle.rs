//! The import's lifecycle (uploading, uploaded, applying, applied, handed over) and the rules of what may follow what, so nothing is written over a guest's newer data.
//!
//! The only door to a disk's phase: every change goes through [`DiskState`]'s methods here
//! (`begin_base_upload`, `base_uploaded`, `begin_apply`, `begin_whole_copy`, `apply_done`,
//! and [`hand_over`] for the domain), which refuse a change that may not follow; stages,
//! reports and the fleet ask [`DiskState::phase`] and [`ImportState::phase`] where a disk or a
//! domain stands.

use super::{AppliedDelta, DiskState, HandOver, HandOverHow, ImportState};
use anyhow::{bail, Result};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where one disk stands, read from the import state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The base upload has not completed (never begun, or interrupted).
    Uploading,
    /// The base is in the volume; no delta written since.
    Uploaded,
    /// Stage 2 began writing deltas and has not finished: a rerun completes it.
    Applying,
    /// Deltas written, domain not handed over since (stopped before the start, or it failed).
    Applied,
    /// Given to the guest: it may have written since.
    HandedOver(HandOver),
}

impl DiskState {
    /// Where this disk stands, in a state whose latest hand-over is `handed`.
    pub fn phase(&self, handed: Option<&HandOver>) -> Phase {
        if !self.base_uploaded {
            return Phase::Uploading;
        }
        if self.applying {
            return Phase::Applying;
        }
        match handed {
            Some(h) if self.applied.iter().all(|a| a.handed_over) => Phase::HandedOver(h.clone()),
            _ if self.applied.is_empty() => Phase::Uploaded,
            _ => Phase::Applied,
        }
    }

    /// Whether the base upload completed: the disk is in any phase after [`Phase::Uploading`].
    pub fn base_done(&self) -> bool {
        self.phase(None) != Phase::Uploading
    }

    /// Whether stage 2 (or a run from ESXi) began writing this disk and has not finished.
    pub fn being_written(&self) -> bool {
        self.phase(None) == Phase::Applying
    }

    /// While the disk is being written: the index in its lineage of the first delta the
    /// unfinished apply writes (0 when the run that began it did not say).
    pub fn unfinished_from(&self) -> Option<usize> {
        self.being_written()
            .then(|| self.applying_from.unwrap_or(0))
    }

    /// A disk whose base upload begins, in volume `pool`/`volume`: [`Phase::Uploading`],
    /// nothing applied. `base_cid` and `source` say which base it is and where a later run
    /// finds it again.
    pub fn begin_base_upload(
        target_dev: &str,
        (pool, volume): (&str, &str),
        capacity: u64,
        base_cid: Option<u32>,
        source: Option<String>,
    ) -> DiskState {
        DiskState {
            target_dev: target_dev.to_string(),
            pool: pool.to_string(),
            volume: volume.to_string(),
            capacity,
            base_cid,
            base_uploaded: false,
            applying: false,
            applying_from: None,
            source,
            applied: Vec::new(),
            volume_mtime: None,
        }
    }

    /// [`Phase::Uploading`] -> [`Phase::Uploaded`]: the whole base is in the volume.
    pub fn base_uploaded(&mut self) -> Result<()> {
        self.refuse_unless(self.phase(None) == Phase::Uploading, "an ended base upload")?;
        self.base_uploaded = true;
        Ok(())
    }

    /// Any phase after the upload -> [`Phase::Applying`]: the volume is about to hold
    /// `lineage`, written from its delta `from` (runs from ESXi say where; None: a run that
    /// does not, read as from the base). Recorded before the first byte goes out, so a rerun
    /// after a failure must give the whole chain again.
    pub fn begin_apply(&mut self, lineage: Vec<AppliedDelta>, from: Option<usize>) -> Result<()> {
        self.refuse_unless(self.base_done(), "writing deltas")?;
        self.applying = true;
        self.applying_from = from;
        self.applied = lineage;
        Ok(())
    }

    /// Any phase after the upload -> [`Phase::Applying`] for an independent disk copied
    /// whole: what it records as applied stays.
    pub fn begin_whole_copy(&mut self) -> Result<()> {
        self.refuse_unless(self.base_done(), "a whole copy")?;
        self.applying = true;
        self.applying_from = None;
        Ok(())
    }

    /// [`Phase::Applying`] -> [`Phase::Applied`] (or back to the phase it had, for a disk
    /// copied whole): every byte of the apply landed.
    pub fn apply_done(&mut self) -> Result<()> {
        self.refuse_unless(self.being_written(), "an ended apply")?;
        self.applying = false;
        self.applying_from = None;
        Ok(())
    }

    /// An error for a change of phase that may not follow the one the disk is in.
    fn refuse_unless(&self, allowed: bool, change: &str) -> Result<()> {
        if !allowed {
            bail!(
                "disk {}: {change} may not follow where the import state has it ({})",
                self.target_dev,
                self.phase(None)
            );
        }
        Ok(())
    }
}

impl ImportState {
    /// Whether every disk's base upload completed (and stage 1 recorded a disk).
    pub fn every_base_uploaded(&self) -> bool {
        !self.disks.is_empty() && self.disks.iter().all(DiskState::base_done)
    }

    /// Whether every disk is completely written: its base uploaded, no apply unfinished.
    pub fn every_disk_complete(&self) -> bool {
        self.disks
            .iter()
            .all(|d| d.base_done() && !d.being_written())
    }

    /// Where the import of the domain stands, from its disks and records.
    pub fn phase(&self) -> DomainPhase {
        if self.handed_over.is_some() {
            DomainPhase::HandedOver
        } else if self.disks.iter().any(DiskState::being_written) {
            DomainPhase::Applying
        } else if !self.every_base_uploaded() {
            DomainPhase::Uploading
        } else if !self.syncs.is_empty() {
            DomainPhase::Synced(self.syncs.len())
        } else {
            DomainPhase::Staged {
                trial_ok: self.trial.as_ref().is_none_or(|t| t.started),
            }
        }
    }
}

/// Where a domain's import stands, read from its import state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPhase {
    /// Stage 1 began and some base upload is not complete.
    Uploading,
    /// Every base uploaded; `trial_ok` when the trial start passed (or the state predates it).
    Staged { trial_ok: bool },
    /// Pre-copy rounds from ESXi applied.
    Synced(usize),
    /// A disk is being written by stage 2 or a cutover that has not finished.
    Applying,
    /// Handed over to its guest (started, or stage 2 with --no-start).
    HandedOver,
}

impl DomainPhase {
    /// Whether stage 1 completed (every base uploaded).
    pub fn staged(&self) -> bool {
        *self != DomainPhase::Uploading
    }
}

impl std::fmt::Display for DomainPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainPhase::Uploading => write!(f, "stage 1 unfinished"),
            DomainPhase::Staged { trial_ok: true } => write!(f, "stage 1 done"),
            DomainPhase::Staged { trial_ok: false } => {
                write!(f, "stage 1 done, trial start failed")
            }
            DomainPhase::Synced(n) => write!(f, "synced x{n}"),
            DomainPhase::Applying => write!(f, "cutover unfinished"),
            DomainPhase::HandedOver => write!(f, "cut over"),
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Uploading => write!(f, "base uploading"),
            Phase::Uploaded => write!(f, "base uploaded"),
            Phase::Applying => write!(f, "being written"),
            Phase::Applied => write!(f, "deltas applied"),
            Phase::HandedOver(_) => write!(f, "handed over"),
        }
    }
}

/// What stage 1 does with one disk's base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseStep {
    Upload,
    /// Already uploaded and nothing written over it: kept (a rerun of an interrupted
    /// multi-disk stage 1 uploads only the disks it did not finish).
    Keep,
    /// `--reupload-base` over a disk past its upload: what that destroys, for the user.
    Reupload {
        destroys: String,
    },
}

/// The rule for stage 1 on a disk: a base whose upload completed is never uploaded again
/// unless `reupload`; `keep_uploaded` lets a disk with nothing written over its base be kept.
pub fn base_step(
    disk: &str,
    ds: Option<&DiskState>,
    handed: Option<&HandOver>,
    reupload: bool,
    keep_uploaded: bool,
) -> Result<BaseStep> {
    let Some(ds) = ds else {
        return Ok(BaseStep::Upload);
    };
    let ph = ds.phase(handed);
    if ph == Phase::Uploading {
        return Ok(BaseStep::Upload);
    }
    if reupload {
        return Ok(BaseStep::Reupload {
            destroys: destroyed_by_reupload(ds, &ph),
        });
    }
    if ph == Phase::Uploaded && keep_uploaded {
        return Ok(BaseStep::Keep);
    }
    let done = match &ph {
        Phase::Uploaded => "its base upload completed".to_string(),
        Phase::Applying => format!(
            "stage 2 began applying delta(s) {} over its base",
            files(&ds.applied)
        ),
        Phase::Applied => format!("delta(s) {} were applied over its base", files(&ds.applied)),
        Phase::HandedOver(h) => format!(
            "delta(s) {} were applied and the domain was {h}",
            files(&ds.applied)
        ),
        Phase::Uploading => unreachable!("handled above"),
    };
    bail!(
        "disk {disk} (volume '{}/{}'): {done}; uploading the base again would destroy {}. \
         Give the deltas for stage 2 instead, or --reupload-base to start the import over",
        ds.pool,
        ds.volume,
        destroyed_by_reupload(ds, &ph)
    )
}

fn destroyed_by_reupload(ds: &DiskState, ph: &Phase) -> String {
    let mut what = Vec::new();
    if !ds.applied.is_empty() {
        what.push(format!("the applied delta(s) {}", files(&ds.applied)));
    }
    match ph {
        Phase::HandedOver(h) => what.push(format!(
            "everything the guest wrote since the domain was {h}"
        )),
        _ if what.is_empty() => what.push("nothing but the uploaded base".to_string()),
        _ => {}
    }
    what.join(" and ")
}

fn files(applied: &[AppliedDelta]) -> String {
    applied
        .iter()
        .map(|a| a.file.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `given` is the delta `a` recorded as applied: by CID when both have one, else by
/// file name.
fn same_delta(a: &AppliedDelta, given: &AppliedDelta) -> bool {
    match (a.cid, given.cid) {
        (Some(x), Some(y)) => x == y,
        _ => a.file == given.file,
    }
}

/// The rule for stage 2 on a disk: after a hand-over, no delta that was in the volume then is
/// written again (the guest may have written over its grains since); after a start, nothing
/// from VMware is. A disk left `applying` by a failed run may be rerun.
pub fn may_apply(
    disk: &str,
    ds: &DiskState,
    handed: Option<&HandOver>,
    given: &[AppliedDelta],
) -> Result<()> {
    for g in given {
        if let Some(a) = ds
            .applied
            .iter()
            .find(|a| a.handed_over && same_delta(a, g))
        {
            let h = handed.map_or("handed over".to_string(), |h| h.to_string());
            bail!(
                "disk {disk}: {} (CID {}) was already applied, and the domain was {h}: applying it again would write its old grains over the guest's newer data. \
                 Give only deltas newer than {}, or rerun stage 1 with --reupload-base to start the import over",
                g.file,
                a.cid.map_or("unknown".into(), |c| format!("{c:08x}")),
                ds.applied.last().map_or(a.file.as_str(), |l| l.file.as_str())
            );
        }
    }
    if let (Phase::HandedOver(h), HandOverHow::Started) = (
        ds.phase(handed),
        handed.map(|h| h.how).unwrap_or(HandOverHow::Unknown),
    ) {
        bail!(
            "disk {disk}: the domain was {h}: its guest has run on this host, and a delta from VMware would overwrite what it wrote. \
             Rerun stage 1 with --reupload-base to start the import over"
        );
    }
    Ok(())
}

/// The rule for a newer delta after a `--no-start` hand-over: the volume must not have been
/// written since (its modification time, `now`, as recorded then). Someone who started the
/// domain in between (`virsh start`) gave it to its guest, and a delta from VMware would
/// overwrite what that guest wrote. Volumes without a time (block devices) are not checked.
pub fn unchanged_since_hand_over(
    disk: &str,
    ds: &DiskState,
    handed: Option<&HandOver>,
    now: Option<&str>,
) -> Result<()> {
    let Phase::HandedOver(h) = ds.phase(handed) else {
        return Ok(());
    };
    if let (Some(then), Some(now)) = (ds.volume_mtime.as_deref(), now) {
        if then != now {
            bail!(
                "disk {disk}: volume '{}/{}' was written after the domain was {h} (modified at {}, recorded {}): its guest may have run, and a delta from VMware would overwrite what it wrote. Rerun stage 1 with --reupload-base to start the import over",
                ds.pool,
                ds.volume,
                show_mtime(now),
                show_mtime(then)
            );
        }
    }
    Ok(())
}

/// A volume's `mtime` (`seconds.nanoseconds`) as UTC, with its fraction.
fn show_mtime(m: &str) -> String {
    let (secs, frac) = m.split_once('.').unwrap_or((m, ""));
    match secs.parse::<u64>() {
        Ok(s) if frac.is_empty() => utc(s),
        Ok(s) => utc(s).replace('Z', &format!(".{frac}Z")),
        Err(_) => m.to_string(),
    }
}

/// The rule for an independent disk copied whole in stage 2: never after a hand-over.
pub fn may_copy_whole(disk: &str, ds: &DiskState, handed: Option<&HandOver>) -> Result<()> {
    if let Phase::HandedOver(h) = ds.phase(handed) {
        bail!(
            "disk {disk}: independent disk already copied, and the domain was {h}: copying it again would overwrite the guest's newer data"
        );
    }
    Ok(())
}

/// Record the hand-over: every delta in the volumes now is one the guest may write over;
/// `mtimes` are the volumes' modification times now, disk by disk.
pub fn hand_over(st: &mut ImportState, how: HandOverHow, at: String, mtimes: Vec<Option<String>>) {
    for (d, m) in st
        .disks
        .iter_mut()
        .zip(mtimes.into_iter().chain(std::iter::repeat(None)))
    {
        for a in &mut d.applied {
            a.handed_over = true;
        }
        d.volume_mtime = m;
    }
    st.handed_over = Some(HandOver { at: Some(at), how });
}

/// The time now in UTC, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc(secs)
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = crate::units::civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(file: &str, cid: u32, handed_over: bool) -> AppliedDelta {
        AppliedDelta {
            file: file.into(),
            cid: Some(cid),
            parent_cid: None,
            handed_over,
            active: false,
        }
    }

    fn disk(applied: Vec<AppliedDelta>, applying: bool) -> DiskState {
        DiskState {
            target_dev: "sda".into(),
            pool: "p".into(),
            volume: "v".into(),
            base_uploaded: true,
            applying,
            applied,
            ..Default::default()
        }
    }

    fn at(how: HandOverHow) -> HandOver {
        HandOver {
            at: Some("2026-11-27T09:00:00Z".into()),
            how,
        }
    }

    #[test]
    fn phases_follow_the_state() {
        let up = DiskState::default();
        assert_eq!(up.phase(None), Phase::Uploading);
        assert_eq!(disk(vec![], false).phase(None), Phase::Uploaded);
        let d1 = vec![delta("d1", 0xd1, false)];
        assert_eq!(disk(d1.clone(), true).phase(None), Phase::Applying);
        assert_eq!(disk(d1, false).phase(None), Phase::Applied);
        let h = at(HandOverHow::NoStart);
        let d1h = vec![delta("d1", 0xd1, true)];
        assert_eq!(
            disk(d1h.clone(), false).phase(Some(&h)),
            Phase::HandedOver(h.clone())
        );
        // A newer delta being written after a hand-over: applying, not handed over.
        let two = vec![delta("d1", 0xd1, true), delta("d2", 0xd2, false)];
        assert_eq!(disk(two.clone(), true).phase(Some(&h)), Phase::Applying);
        assert_eq!(disk(two, false).phase(Some(&h)), Phase::Applied);
    }

    #[test]
    fn changes_of_phase_follow_the_lifecycle_and_others_are_refused() {
        let mut d = DiskState::begin_base_upload("sda", ("p", "v"), 1 << 20, Some(0xb0), None);
        assert_eq!(d.phase(None), Phase::Uploading);
        let e = d
            .begin_apply(vec![delta("d1", 0xd1, false)], None)
            .unwrap_err();
        assert!(
            e.to_string() == "disk sda: writing deltas may not follow where the import state has it (base uploading)",
            "{e}"
        );
        assert!(d.apply_done().is_err() && d.begin_whole_copy().is_err());
        d.base_uploaded().unwrap();
        assert_eq!(d.phase(None), Phase::Uploaded);
        assert!(d.base_uploaded().is_err());
        d.begin_apply(vec![delta("d1", 0xd1, false)], Some(0))
            .unwrap();
        assert_eq!((d.phase(None), d.applying_from), (Phase::Applying, Some(0)));
        d.apply_done().unwrap();
        assert_eq!((d.phase(None), d.applying_from), (Phase::Applied, None));
        assert!(d.apply_done().is_err());
        d.begin_whole_copy().unwrap();
        assert!(d.being_written());
        d.apply_done().unwrap();
        assert_eq!(d.phase(None), Phase::Applied);
    }

    #[test]
    fn a_domain_phase_follows_its_disks_and_records() {
        let mut st = ImportState {
            disks: vec![disk(vec![], false), DiskState::default()],
            ..Default::default()
        };
        assert_eq!(ImportState::default().phase(), DomainPhase::Uploading);
        assert_eq!(st.phase(), DomainPhase::Uploading);
        st.disks[1].base_uploaded().unwrap();
        assert_eq!(st.phase(), DomainPhase::Staged { trial_ok: true });
        st.disks[0].begin_apply(vec![], None).unwrap();
        assert_eq!(st.phase(), DomainPhase::Applying);
        st.handed_over = Some(at(HandOverHow::Started));
        assert_eq!(st.phase(), DomainPhase::HandedOver);
    }

    #[test]
    fn an_uploaded_base_is_not_uploaded_again_without_reupload() {
        let d = disk(vec![], false);
        let e = base_step("sda", Some(&d), None, false, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("base upload completed") && e.contains("--reupload-base"),
            "{e}"
        );
        assert_eq!(
            base_step("sda", Some(&d), None, false, true).unwrap(),
            BaseStep::Keep
        );
        assert_eq!(
            base_step("sda", None, None, false, false).unwrap(),
            BaseStep::Upload
        );
        let unfinished = DiskState::default();
        assert_eq!(
            base_step("sda", Some(&unfinished), None, false, false).unwrap(),
            BaseStep::Upload
        );
    }

    #[test]
    fn reupload_says_it_destroys_the_deltas_and_the_guests_writes() {
        let h = at(HandOverHow::Started);
        let d = disk(vec![delta("d1.vmdk", 0xd1, true)], false);
        let e = base_step("sda", Some(&d), Some(&h), false, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d1.vmdk") && e.contains("started at 2026-11-27T09:00:00Z"),
            "{e}"
        );
        match base_step("sda", Some(&d), Some(&h), true, false).unwrap() {
            BaseStep::Reupload { destroys } => {
                assert!(
                    destroys.contains("d1.vmdk") && destroys.contains("guest wrote"),
                    "{destroys}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_delta_applied_before_the_hand_over_is_refused_naming_it_and_the_time() {
        let h = at(HandOverHow::NoStart);
        let d = disk(vec![delta("d1.vmdk", 0xd1, true)], false);
        let e = may_apply("sda", &d, Some(&h), &[delta("d1.vmdk", 0xd1, false)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("d1.vmdk") && e.contains("2026-11-27T09:00:00Z"),
            "{e}"
        );
    }

    #[test]
    fn pre_copy_a_newer_delta_after_no_start_is_allowed_after_a_start_is_not() {
        let d = disk(vec![delta("d1", 0xd1, true)], false);
        let d2 = [delta("d2", 0xd2, false)];
        may_apply("sda", &d, Some(&at(HandOverHow::NoStart)), &d2).unwrap();
        let e = may_apply("sda", &d, Some(&at(HandOverHow::Started)), &d2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("guest has run"), "{e}");
    }

    #[test]
    fn a_failed_run_may_be_rerun_but_not_with_deltas_from_before_the_hand_over() {
        let h = at(HandOverHow::NoStart);
        let d = disk(
            vec![delta("d1", 0xd1, true), delta("d2", 0xd2, false)],
            true,
        );
        may_apply("sda", &d, Some(&h), &[delta("d2", 0xd2, false)]).unwrap();
        assert!(may_apply(
            "sda",
            &d,
            Some(&h),
            &[delta("d1", 0xd1, false), delta("d2", 0xd2, false)]
        )
        .is_err());
        // Before any hand-over, a rerun of the whole chain is what completes it.
        let fresh = disk(vec![delta("d1", 0xd1, false)], true);
        may_apply("sda", &fresh, None, &[delta("d1", 0xd1, false)]).unwrap();
        let applied = disk(vec![delta("d1", 0xd1, false)], false);
        may_apply("sda", &applied, None, &[delta("d1", 0xd1, false)]).unwrap();
    }

    #[test]
    fn hand_over_marks_every_delta_and_an_independent_disk_is_then_not_copied() {
        let mut st = ImportState {
            disks: vec![
                disk(vec![delta("d1", 0xd1, false)], false),
                disk(vec![], false),
            ],
            handed_over: None,
            ..Default::default()
        };
        may_copy_whole("sdb", &st.disks[1], None).unwrap();
        hand_over(&mut st, HandOverHow::Started, "T".into(), vec![]);
        assert!(st.disks[0].applied[0].handed_over);
        assert!(may_copy_whole("sdb", &st.disks[1], st.handed_over.as_ref()).is_err());
    }

    #[test]
    fn a_volume_written_since_a_no_start_hand_over_takes_no_newer_delta() {
        let mut st = ImportState {
            disks: vec![disk(vec![delta("d1", 0xd1, false)], false)],
            handed_over: None,
            ..Default::default()
        };
        hand_over(
            &mut st,
            HandOverHow::NoStart,
            "T".into(),
            vec![Some("100.5".into())],
        );
        let (ds, h) = (&st.disks[0], st.handed_over.as_ref());
        unchanged_since_hand_over("sda", ds, h, Some("100.5")).unwrap();
        unchanged_since_hand_over("sda", ds, h, None).unwrap();
        let e = unchanged_since_hand_over("sda", ds, h, Some("160.25"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("written after") && e.contains("1970-01-01T00:02:40.25Z"),
            "{e}"
        );
        // A rerun of a failed newer delta writes the volume itself: not checked then.
        let mut applying = ds.clone();
        applying.applying = true;
        unchanged_since_hand_over("sda", &applying, h, Some("160.25")).unwrap();
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_768_364), "2026-11-27T08:32:44Z");
    }
}
