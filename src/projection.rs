//! The outage a cutover would have now, projected from the `--sync` rounds (the final deltas' size, read and applied at the rate the rounds measured, plus the domain's start), and why `plan sync --until-outage` stops repeating rounds.

use std::time::Duration;

use crate::state::SyncRound;

const MIB: f64 = (1u64 << 20) as f64;

/// A cutover's outage as projected from the rounds, guest shutdown aside.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    /// The final deltas' size when the last round ended: what a cutover reads.
    pub bytes: u64,
    /// Bytes per second read over ssh and applied, as the newest round that read any measured.
    pub rate: f64,
    /// The domain's start (the trial start's), in milliseconds.
    pub start_ms: u64,
    /// The projected outage, in milliseconds: the read and apply, and the start.
    pub ms: u64,
}

/// The rate one round read and applied at, in bytes per second; None when it read nothing.
pub fn rate(r: &SyncRound) -> Option<f64> {
    let read = r.read?;
    (read > 0 && r.ms > 0).then(|| read as f64 * 1000.0 / r.ms as f64)
}

/// The projection after `rounds` (oldest first), the start taking `start_ms`: None before a
/// round recorded its final deltas' size, or while deltas wait with no rate measured yet.
pub fn project(rounds: &[SyncRound], start_ms: Option<u64>) -> Option<Projection> {
    let bytes = rounds.last()?.final_bytes?;
    let rate = rounds.iter().rev().find_map(rate);
    let read_ms = match rate {
        _ if bytes == 0 => 0,
        Some(r) => (bytes as f64 * 1000.0 / r).ceil() as u64,
        None => return None,
    };
    let start_ms = start_ms.unwrap_or(0);
    Some(Projection {
        bytes,
        rate: rate.unwrap_or(0.0),
        start_ms,
        ms: read_ms + start_ms,
    })
}

impl Projection {
    /// `about N s`.
    pub fn about(&self) -> String {
        format!("about {:.1} s", self.ms as f64 / 1000.0)
    }

    /// The line a round ends with.
    pub fn line(&self) -> String {
        format!(
            "a cutover now: {} ({:.1} MiB to read at {:.1} MiB/s, applied, plus the start: {:.1} s)",
            self.about(),
            self.bytes as f64 / MIB,
            self.rate / MIB,
            self.start_ms as f64 / 1000.0
        )
    }
}

/// Why `plan sync --until-outage` stopped repeating rounds for a VM.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The projection fell under the target.
    UnderTarget(Projection),
    /// The final deltas did not shrink from one round to the next (bytes before, now).
    NotShrinking(u64, u64),
    /// `--max-rounds` rounds ran.
    MaxRounds(u32),
}

/// Whether to stop after `done` rounds of this run (`max` at most), the import state's rounds
/// being `rounds`: under `target`, or not shrinking, or at the limit; None to go on.
pub fn stop(
    rounds: &[SyncRound],
    start_ms: Option<u64>,
    target: Duration,
    done: u32,
    max: u32,
) -> Option<Stop> {
    if let Some(p) = project(rounds, start_ms) {
        if u128::from(p.ms) <= target.as_millis() {
            return Some(Stop::UnderTarget(p));
        }
    }
    if let [.., before, now] = rounds {
        if let (Some(b), Some(n)) = (before.final_bytes, now.final_bytes) {
            if done >= 2 && n >= b {
                return Some(Stop::NotShrinking(b, n));
            }
        }
    }
    (done >= max).then_some(Stop::MaxRounds(done))
}

impl Stop {
    /// The reason, said (`target`: `--until-outage`).
    pub fn said(&self, target: Duration, now: Option<&Projection>) -> String {
        let t = crate::units::duration_arg(target);
        let at = now.map_or("not known".into(), Projection::about);
        match self {
            Stop::UnderTarget(p) => format!("the projected outage ({}) is under the target ({t})", p.about()),
            Stop::NotShrinking(b, n) => format!(
                "the final delta stopped shrinking ({:.1} MiB after {:.1} MiB); the projected outage is {at}, the target {t}",
                *n as f64 / MIB,
                *b as f64 / MIB
            ),
            Stop::MaxRounds(n) => format!("{n} round(s), as many as --max-rounds allows; the projected outage is {at}, the target {t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn round(read: u64, ms: u64, final_bytes: u64) -> SyncRound {
        SyncRound {
            read: Some(read),
            ms,
            final_bytes: Some(final_bytes),
            ..Default::default()
        }
    }

    #[test]
    fn the_projection_reads_the_final_deltas_at_the_measured_rate_and_adds_the_start() {
        // 40 MiB read in 2 s: 20 MiB/s; 10 MiB left: 0.5 s, and 1.2 s of start.
        let p = project(&[round(40 * M, 2000, 10 * M)], Some(1200)).unwrap();
        assert_eq!((p.bytes, p.ms, p.start_ms), (10 * M, 1700, 1200));
        assert_eq!(
            p.line(),
            "a cutover now: about 1.7 s (10.0 MiB to read at 20.0 MiB/s, applied, plus the start: 1.2 s)"
        );
        // A round that read nothing keeps the newest measured rate.
        let p = project(&[round(40 * M, 2000, 8 * M), round(0, 5, 20 * M)], None).unwrap();
        assert_eq!(p.ms, 1000);
        // Nothing left: the start alone; deltas with no rate ever measured: no projection.
        assert_eq!(project(&[round(0, 0, 0)], Some(900)).unwrap().ms, 900);
        assert!(project(&[round(0, 0, M)], Some(900)).is_none());
        let old = SyncRound::default();
        assert!(project(&[old], Some(900)).is_none());
        assert!(project(&[], None).is_none());
    }

    #[test]
    fn rounds_stop_under_the_target_when_the_delta_stops_shrinking_or_at_the_limit() {
        let secs = Duration::from_secs;
        // 10 MiB/s; 50 MiB left: 5 s.
        let r1 = round(100 * M, 10_000, 50 * M);
        assert!(matches!(
            stop(std::slice::from_ref(&r1), None, secs(6), 1, 9),
            Some(Stop::UnderTarget(_))
        ));
        assert_eq!(stop(std::slice::from_ref(&r1), None, secs(4), 1, 9), None);
        assert_eq!(
            stop(std::slice::from_ref(&r1), None, secs(4), 1, 1),
            Some(Stop::MaxRounds(1))
        );
        let shrunk = round(100 * M, 10_000, 30 * M);
        assert_eq!(
            stop(&[r1.clone(), shrunk.clone()], None, secs(1), 2, 9),
            None
        );
        let grown = round(100 * M, 10_000, 30 * M);
        assert_eq!(
            stop(&[shrunk, grown], None, secs(1), 2, 9),
            Some(Stop::NotShrinking(30 * M, 30 * M))
        );
        // The first round of a run is not compared with an older run's.
        let older = round(100 * M, 10_000, 10 * M);
        assert_eq!(stop(&[older, r1], None, secs(1), 1, 9), None);
    }

    #[test]
    fn each_stop_is_said_with_the_projection_and_the_target() {
        let p = project(&[round(10 * M, 1000, 5 * M)], Some(500)).unwrap();
        let t = Duration::from_secs(30);
        assert!(Stop::UnderTarget(p)
            .said(t, Some(&p))
            .contains("(about 1.0 s) is under the target (30s)"));
        assert!(Stop::NotShrinking(M, 2 * M)
            .said(t, Some(&p))
            .contains("stopped shrinking (2.0 MiB after 1.0 MiB)"));
        assert!(Stop::MaxRounds(3).said(t, None).contains(
            "3 round(s), as many as --max-rounds allows; the projected outage is not known"
        ));
    }
}
