//! Stage-2 upload windows: a chain's changed pieces grouped into few upload calls under a cost model measured during the run.
//!
//! Each libvirt upload call has a fixed cost that grows with the pool (every upload's close
//! starts a refresh of the whole pool, and the next call waits for the pool's lock), so one
//! call per changed piece is ruinous on a crowded pool. Two pieces separated by a gap can go
//! in one call when re-sending the gap's current bytes (downloaded from the volume, then
//! uploaded again) costs less than one more call. The fixed cost is not guessed: the
//! executor reports every call's overhead and byte throughput, and later windows follow.

use crate::vmdk::Piece;
use std::time::Duration;

/// Longest window one upload call covers. Large windows are cheap (data streams through a
/// fixed buffer), but a bound keeps the pieces list of one window small.
pub const MAX_WINDOW_BYTES: u64 = 1 << 30;
/// Most pieces held for one window (a few MiB of bookkeeping at worst).
pub const MAX_WINDOW_PIECES: usize = 1 << 16;

/// Starting guesses, outweighed by measurements within a few calls: the fixed cost of a call
/// on a small local pool, and the cost of one byte of a window (read, downloaded or not, and
/// uploaded).
const PRIOR_CALL_SECS: f64 = 0.3e-3;
const PRIOR_BYTE_SECS: f64 = 3.0e-9;
/// The guesses count as this many calls (one empty, one of `PRIOR_SPAN` bytes) at the start.
const PRIOR_WEIGHT: f64 = 1.0;
const PRIOR_SPAN: f64 = (4 << 20) as f64;
/// Each new call weighs this much more than the one before: a pool that fills up, or a
/// daemon that gets busier, is followed within tens of calls.
const FORGET: f64 = 0.95;

/// What a call costs, as measured so far in this run: the time of each call fitted as a fixed
/// part plus a part per byte of its window (weighted least squares, older calls fading).
///
/// Fitting whole calls, rather than timing their parts, catches every fixed cost wherever it
/// lands: the wait for the previous call's pool refresh, the stream setup, the daemon's sync
/// when a stream closes.
#[derive(Debug, Clone)]
pub struct CostModel {
    // Weighted sums over (bytes, seconds) observations.
    w: f64,
    sx: f64,
    sy: f64,
    sxx: f64,
    sxy: f64,
    calls_observed: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel::with_costs(Duration::from_secs_f64(PRIOR_CALL_SECS), PRIOR_BYTE_SECS)
    }
}

impl CostModel {
    /// A model that starts from the given figures (tests and benchmarks pin them).
    pub fn with_costs(call: Duration, byte_secs: f64) -> Self {
        let mut m = CostModel {
            w: 0.0,
            sx: 0.0,
            sy: 0.0,
            sxx: 0.0,
            sxy: 0.0,
            calls_observed: 0,
        };
        let a = call.as_secs_f64();
        m.add(0.0, a, PRIOR_WEIGHT);
        m.add(PRIOR_SPAN, a + byte_secs * PRIOR_SPAN, PRIOR_WEIGHT);
        m
    }

    fn add(&mut self, x: f64, y: f64, weight: f64) {
        self.w += weight;
        self.sx += weight * x;
        self.sy += weight * y;
        self.sxx += weight * x * x;
        self.sxy += weight * x * y;
    }

    /// Record one finished call that moved `bytes` (its whole window) in `elapsed`.
    pub fn observe_call(&mut self, bytes: u64, elapsed: Duration) {
        for v in [
            &mut self.w,
            &mut self.sx,
            &mut self.sy,
            &mut self.sxx,
            &mut self.sxy,
        ] {
            *v *= FORGET;
        }
        self.add(bytes as f64, elapsed.as_secs_f64(), 1.0);
        self.calls_observed += 1;
    }

    /// (fixed seconds per call, seconds per byte), both kept non-negative.
    fn fit(&self) -> (f64, f64) {
        let mean_x = self.sx / self.w;
        let mean_y = self.sy / self.w;
        let var = self.sxx / self.w - mean_x * mean_x;
        let cov = self.sxy / self.w - mean_x * mean_y;
        let b = if var > 0.0 { (cov / var).max(0.0) } else { 0.0 };
        let a = (mean_y - b * mean_x).max(0.0);
        (a, b)
    }

    /// The estimated fixed cost of one upload call.
    pub fn call_cost(&self) -> Duration {
        Duration::from_secs_f64(self.fit().0)
    }

    /// The estimated cost of one more byte in a window, in seconds.
    pub fn byte_secs(&self) -> f64 {
        self.fit().1
    }

    /// The largest gap worth re-sending rather than paying one more call.
    pub fn max_merged_gap(&self) -> u64 {
        let (a, b) = self.fit();
        if b <= 0.0 {
            return MAX_WINDOW_BYTES;
        }
        ((a / b) as u64).min(MAX_WINDOW_BYTES)
    }
}

/// One upload call: the range `[offset, offset + len)` of the volume. Inside it the pieces
/// give the new bytes; everything else (the gaps) is rewritten with the volume's own bytes.
#[derive(Debug, Clone)]
pub struct Window {
    pub offset: u64,
    pub len: u64,
    pub pieces: Vec<Piece>,
}

impl Window {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// Bytes of the window that come from the chain.
    pub fn piece_bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.len).sum()
    }

    /// Bytes of the window that must be read back from the volume.
    pub fn gap_bytes(&self) -> u64 {
        self.len - self.piece_bytes()
    }
}

/// Pulls pieces in ascending order and cuts them into windows. The cost model is passed to
/// each `next_window` call, so a plan made late in the run uses the figures measured early.
pub struct WindowPlanner<I: Iterator> {
    pieces: std::iter::Peekable<I>,
    /// The tail of a piece that did not fit the previous window.
    carry: Option<Piece>,
}

impl<E, I: Iterator<Item = Result<Piece, E>>> WindowPlanner<I> {
    pub fn new(pieces: I) -> Self {
        WindowPlanner {
            pieces: pieces.peekable(),
            carry: None,
        }
    }

    fn take_piece(&mut self) -> Option<Result<Piece, E>> {
        self.carry.take().map(Ok).or_else(|| self.pieces.next())
    }

    /// The next window, or None when every piece has been planned.
    pub fn next_window(&mut self, cost: &CostModel) -> Option<Result<Window, E>> {
        let first = match self.take_piece()? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let max_gap = cost.max_merged_gap();
        let mut window = Window {
            offset: first.offset,
            len: 0,
            pieces: Vec::new(),
        };
        let mut next = Some(first);
        while let Some(mut piece) = next.take() {
            let room = MAX_WINDOW_BYTES - (piece.offset - window.offset);
            if piece.len > room {
                // Split: the tail opens the next window.
                let (head, tail) = split_piece(piece, room);
                window.len = head.end() - window.offset;
                window.pieces.push(head);
                self.carry = Some(tail);
                return Some(Ok(window));
            }
            window.len = piece.end() - window.offset;
            window.pieces.push(piece);
            if window.pieces.len() >= MAX_WINDOW_PIECES {
                break;
            }
            let follows = match self.pieces.peek() {
                Some(Ok(p)) => {
                    let gap = p.offset.saturating_sub(window.end());
                    gap <= max_gap && p.offset - window.offset < MAX_WINDOW_BYTES
                }
                // Errors are returned with the next window, after this one is done.
                Some(Err(_)) | None => false,
            };
            if follows {
                piece = self.pieces.next().unwrap().ok().unwrap();
                next = Some(piece);
            }
        }
        Some(Ok(window))
    }
}

fn split_piece(piece: Piece, at: u64) -> (Piece, Piece) {
    use crate::vmdk::Source;
    let tail_source = match &piece.source {
        Source::Zeros => Source::Zeros,
        Source::Data { file, offset } => Source::Data {
            file: file.clone(),
            offset: offset + at,
        },
    };
    let tail = Piece {
        offset: piece.offset + at,
        len: piece.len - at,
        source: tail_source,
    };
    let head = Piece { len: at, ..piece };
    (head, tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdk::Source;

    fn zeros(offset: u64, len: u64) -> Result<Piece, ()> {
        Ok(Piece {
            offset,
            len,
            source: Source::Zeros,
        })
    }

    fn plan(pieces: Vec<Result<Piece, ()>>, cost: &CostModel) -> Vec<Window> {
        let mut planner = WindowPlanner::new(pieces.into_iter());
        let mut out = Vec::new();
        while let Some(w) = planner.next_window(cost) {
            out.push(w.unwrap());
        }
        out
    }

    #[test]
    fn gaps_below_the_break_even_merge_and_larger_ones_split() {
        // 1 ms a call, 1 ns a byte: gaps up to 1,000,000 bytes merge.
        let cost = CostModel::with_costs(Duration::from_millis(1), 1e-9);
        assert_eq!(cost.max_merged_gap(), 1_000_000);
        let w = plan(
            vec![
                zeros(0, 4096),
                zeros(4096 + 999_000, 4096),
                zeros(3_000_000, 4096),
            ],
            &cost,
        );
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].offset, w[0].len, w[0].pieces.len()),
            (0, 4096 + 999_000 + 4096, 2)
        );
        assert_eq!(w[0].gap_bytes(), 999_000);
        assert_eq!((w[1].offset, w[1].len), (3_000_000, 4096));
    }

    #[test]
    fn a_costly_call_merges_everything_a_free_call_nothing() {
        let pieces = || {
            (0..100u64)
                .map(|i| zeros(i * 1_000_000, 512))
                .collect::<Vec<_>>()
        };
        let dear = CostModel::with_costs(Duration::from_secs(1), 1e-9);
        assert_eq!(plan(pieces(), &dear).len(), 1);
        let cheap = CostModel::with_costs(Duration::ZERO, 1e-9);
        assert_eq!(plan(pieces(), &cheap).len(), 100);
    }

    #[test]
    fn windows_cover_exactly_the_pieces_in_order() {
        let cost = CostModel::with_costs(Duration::from_micros(50), 1e-9);
        let mut input = Vec::new();
        let mut off = 0u64;
        for i in 0..5000u64 {
            off += (i * 7919) % 120_000;
            let len = 512 * (1 + i % 9);
            input.push(zeros(off, len));
            off += len;
        }
        let windows = plan(input.clone(), &cost);
        let flat: Vec<(u64, u64)> = windows
            .iter()
            .flat_map(|w| w.pieces.iter().map(|p| (p.offset, p.len)))
            .collect();
        let want: Vec<(u64, u64)> = input
            .iter()
            .map(|p| p.as_ref().map(|p| (p.offset, p.len)).unwrap())
            .collect();
        assert_eq!(flat, want);
        for w in &windows {
            assert_eq!(w.offset, w.pieces[0].offset);
            assert_eq!(w.end(), w.pieces.last().unwrap().end());
            for pair in w.pieces.windows(2) {
                assert!(pair[1].offset - pair[0].end() <= cost.max_merged_gap());
            }
        }
        for pair in windows.windows(2) {
            assert!(pair[1].offset - pair[0].end() > cost.max_merged_gap());
        }
    }

    #[test]
    fn a_piece_longer_than_a_window_is_split_with_its_source_offset() {
        let cost = CostModel::default();
        let file = std::sync::Arc::new(crate::vmdk::DataFile::local(
            "x".into(),
            tempfile::tempfile().unwrap(),
        ));
        let big = Piece {
            offset: 512,
            len: MAX_WINDOW_BYTES + 4096,
            source: Source::Data {
                file,
                offset: 10_000,
            },
        };
        let w = plan(vec![Ok(big)], &cost);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].offset, w[0].len), (512, MAX_WINDOW_BYTES));
        assert_eq!((w[1].offset, w[1].len), (512 + MAX_WINDOW_BYTES, 4096));
        match &w[1].pieces[0].source {
            Source::Data { offset, .. } => assert_eq!(*offset, 10_000 + MAX_WINDOW_BYTES),
            Source::Zeros => panic!("source lost"),
        }
    }

    #[test]
    fn the_model_separates_the_fixed_cost_from_the_byte_cost() {
        // Calls of many sizes on a crowded pool: 29 ms each plus 2.5 ns a byte.
        let mut cost = CostModel::default();
        for i in 0..60u64 {
            let bytes = (i % 7) * (3 << 20) + 4096;
            cost.observe_call(
                bytes,
                Duration::from_secs_f64(0.029 + 2.5e-9 * bytes as f64),
            );
        }
        assert!(
            (cost.call_cost().as_secs_f64() - 0.029).abs() < 0.001,
            "{:?}",
            cost.call_cost()
        );
        assert!(
            (cost.byte_secs() - 2.5e-9).abs() < 0.2e-9,
            "{}",
            cost.byte_secs()
        );
        // About 11.6 MB of gap is worth one call there.
        assert!(
            (11_000_000..12_200_000).contains(&cost.max_merged_gap()),
            "{}",
            cost.max_merged_gap()
        );
        // The pool empties (another import finished): calls get cheap, the model follows.
        for i in 0..100u64 {
            let bytes = (i % 5) * (1 << 20) + 4096;
            cost.observe_call(
                bytes,
                Duration::from_secs_f64(0.0003 + 2.5e-9 * bytes as f64),
            );
        }
        assert!(
            cost.call_cost() < Duration::from_millis(1),
            "{:?}",
            cost.call_cost()
        );
    }

    #[test]
    fn calls_of_one_size_keep_the_prior_split() {
        // Every call 1 MiB in 5 ms: the data cannot split fixed and byte costs, so the prior's
        // slope stays and the line goes through the measured calls.
        let mut cost = CostModel::default();
        for _ in 0..200 {
            cost.observe_call(1 << 20, Duration::from_millis(5));
        }
        let predicted = cost.call_cost().as_secs_f64() + cost.byte_secs() * (1 << 20) as f64;
        assert!((predicted - 0.005).abs() < 0.0005, "{predicted}");
        assert!(cost.byte_secs() >= 0.0);
    }

    #[test]
    fn errors_pass_through_after_the_window_before_them() {
        let cost = CostModel::with_costs(Duration::from_secs(1), 1e-9);
        let mut planner =
            WindowPlanner::new(vec![zeros(0, 512), Err(()), zeros(4096, 512)].into_iter());
        assert_eq!(planner.next_window(&cost).unwrap().unwrap().len, 512);
        assert!(planner.next_window(&cost).unwrap().is_err());
    }
}
