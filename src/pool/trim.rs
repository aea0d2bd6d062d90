//! Trimming a worker's idle list to recent demand.
//!
//! A worker's slot counts the connections its requests hold right now and remembers the peak
//! of that count over the pool's `demand_window`, in quarters of it: the peak of the current
//! quarter and of the four before it. The slot keeps at most that peak of connections, in use
//! and idle together; an idle connection beyond it is surplus and closed, the oldest first.
//! After a burst, the pool so shrinks to the load of the last window instead of keeping the
//! burst's connections until their idle timeout, and a steady load keeps what it uses.
//!
//! The bookkeeping is a few integer stores under the slot's lock, which check-out and check-in
//! take anyway, and it does not look at what an idle entry is: [`surplus`] trims any list
//! kept oldest first.

/// Quarters of the window a peak is remembered in.
const SLICES: u64 = 4;
/// The current quarter and the four before it.
const BUCKETS: usize = SLICES as usize + 1;

/// The connections a worker's requests hold, and their recent peak.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    in_use: usize,
    /// Peak of `in_use` per quarter of the window, indexed by quarter number mod [`BUCKETS`].
    peaks: [usize; BUCKETS],
    /// The quarter `peaks` was last written in.
    quarter: u64,
}

impl Demand {
    /// A request took a connection (a reused or a new one).
    pub(crate) fn took(&mut self, now_ms: u64, window_ms: u64) {
        self.in_use += 1;
        self.note(now_ms, window_ms);
    }

    /// A request gave its connection back (to the idle list or closed).
    pub(crate) fn returned(&mut self, now_ms: u64, window_ms: u64) {
        self.in_use = self.in_use.saturating_sub(1);
        self.note(now_ms, window_ms);
    }

    /// How many idle connections the slot may keep now: the recent peak less those in use.
    /// `None` when trimming is off (a zero window).
    pub(crate) fn keep_idle(&mut self, now_ms: u64, window_ms: u64) -> Option<usize> {
        if window_ms == 0 {
            return None;
        }
        self.note(now_ms, window_ms);
        let peak = self.peaks.iter().copied().max().unwrap_or(0);
        Some(peak.saturating_sub(self.in_use))
    }

    /// Moves to the quarter of `now_ms` (forgetting quarters older than the window) and
    /// counts the current use in it.
    fn note(&mut self, now_ms: u64, window_ms: u64) {
        if window_ms == 0 {
            return;
        }
        let slice = (window_ms / SLICES).max(1);
        let quarter = now_ms / slice;
        if quarter != self.quarter {
            let passed = quarter.saturating_sub(self.quarter).min(BUCKETS as u64);
            for step in 1..=passed {
                let at = (self.quarter.wrapping_add(step) % BUCKETS as u64) as usize;
                self.peaks[at] = 0;
            }
            self.quarter = quarter;
        }
        let at = (quarter % BUCKETS as u64) as usize;
        self.peaks[at] = self.peaks[at].max(self.in_use);
    }
}

/// Removes the oldest entries of `list` (kept oldest first) beyond `keep`, for the caller to
/// close once it has let go of the list's lock.
pub(crate) fn surplus<T>(list: &mut Vec<T>, keep: Option<usize>) -> Vec<T> {
    match keep {
        Some(keep) if list.len() > keep => {
            let extra = list.len() - keep;
            list.drain(..extra).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = 1_000;

    #[test]
    fn keeps_the_peak_of_the_window_then_forgets_it() {
        let mut demand = Demand::default();
        let mut now = 10_000;
        for _ in 0..20 {
            demand.took(now, WINDOW);
        }
        for _ in 0..20 {
            demand.returned(now, WINDOW);
        }
        assert_eq!(demand.keep_idle(now, WINDOW), Some(20));
        // One request at a time from now on: the burst is remembered for the window…
        for _ in 0..4 {
            now += 240;
            demand.took(now, WINDOW);
            demand.returned(now, WINDOW);
            assert_eq!(demand.keep_idle(now, WINDOW), Some(20), "at {now}");
        }
        // …and forgotten within a quarter after it.
        now += 300;
        demand.took(now, WINDOW);
        assert_eq!(demand.keep_idle(now, WINDOW), Some(0), "one in use");
        demand.returned(now, WINDOW);
        assert_eq!(demand.keep_idle(now, WINDOW), Some(1));
    }

    #[test]
    fn a_long_pause_forgets_everything_and_a_zero_window_trims_nothing() {
        let mut demand = Demand::default();
        demand.took(5_000, WINDOW);
        demand.took(5_000, WINDOW);
        demand.returned(5_000, WINDOW);
        demand.returned(5_000, WINDOW);
        assert_eq!(demand.keep_idle(5_000, WINDOW), Some(2));
        assert_eq!(demand.keep_idle(5_000 + 60_000, WINDOW), Some(0));
        assert_eq!(demand.keep_idle(5_000, 0), None);
    }

    #[test]
    fn surplus_takes_the_oldest_first() {
        let mut list = vec![1, 2, 3, 4, 5];
        assert_eq!(surplus(&mut list, Some(2)), vec![1, 2, 3]);
        assert_eq!(list, vec![4, 5]);
        assert!(surplus(&mut list, Some(9)).is_empty());
        assert!(surplus(&mut list, None).is_empty());
        assert_eq!(list, vec![4, 5]);
    }
}
