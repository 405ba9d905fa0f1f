//! The hand-over of the domain to its guest, recorded in the import state before it happens: with `--no-start`, or by starting the domain (put back when the start fails).

use anyhow::Result;

use super::{guards, trial};
use crate::libvirt::{Conn, Dom};
use crate::state::{lifecycle, metadata, HandOverHow, ImportState};

/// Record that stage 2 finished with `--no-start`: the deltas in the volumes are not written
/// again, since whoever starts the domain next hands the disk to its guest.
pub(super) fn no_start(conn: &Conn, dom: &Dom, st: &mut ImportState) -> Result<()> {
    let mtimes = volume_mtimes(conn, st)?;
    lifecycle::hand_over(st, HandOverHow::NoStart, lifecycle::utc_now(), mtimes);
    metadata::write(dom, st)?;
    log::info!(
        "handed over (--no-start): the deltas applied are final; only newer deltas can follow"
    );
    Ok(())
}

/// Record the hand-over, then start: recorded first, so a guest never runs on a disk the
/// state would let stage 2 write again. A start that fails puts the record back.
pub(super) fn start(conn: &Conn, dom: &Dom, st: &mut ImportState) -> Result<()> {
    let span = crate::report::begin("start");
    let before = st.clone();
    let mtimes = volume_mtimes(conn, st)?;
    lifecycle::hand_over(st, HandOverHow::Started, lifecycle::utc_now(), mtimes);
    metadata::write(dom, st)?;
    if let Err(e) = trial::start_after_stage_two(conn, dom) {
        *st = before;
        metadata::write(dom, st)?;
        return Err(e);
    }
    span.done(None, None);
    Ok(())
}

/// Every disk's volume modification time now, for the hand-over record.
fn volume_mtimes(conn: &Conn, st: &ImportState) -> Result<Vec<Option<String>>> {
    st.disks
        .iter()
        .map(|d| guards::volume_mtime(&conn.pool(&d.pool)?.volume(&d.volume)?))
        .collect()
}
