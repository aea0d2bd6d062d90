//! Target health: the verdict of active checks, passive outlier detection, slow start, and
//! the latency EWMA that `p2c_ewma` reads.
//!
//! All state is atomics on [`TargetHealth`], which lives with the target's pool in the registry,
//! so it survives reloads. The request path reads it lock-free: [`TargetHealth::available`] is
//! two atomic loads and a clock read. The active checks themselves (probes over the target's
//! protocol, the task that runs them) are the pool's (`pool::check`); this module only keeps
//! their verdict, and imports nothing else of portico.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the process started (monotonic); 0 is never a real time.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

/// Health and load signals of one target.
#[derive(Debug)]
pub(crate) struct TargetHealth {
    /// The active checks' verdict; `true` until they say otherwise (or when there are none).
    active_up: AtomicBool,
    /// Consecutive active results in the current direction (successes when down, failures when up).
    active_streak: AtomicU32,
    /// Passive ejection end (ms, [`now_ms`]); 0 when not ejected.
    ejected_until: AtomicU64,
    /// How many times the target was ejected in a row (for the exponential ejection time).
    ejections: AtomicU32,
    /// Consecutive failed requests.
    failures: AtomicU32,
    /// Error-rate window: start (ms), requests and errors in it.
    window_start: AtomicU64,
    window_requests: AtomicU32,
    window_errors: AtomicU32,
    /// When the target last became available (ms), for slow start; 0 = from the beginning.
    up_since: AtomicU64,
    /// Peak EWMA of response-head latency, in microseconds, and when it was last updated (ms).
    ewma_us: AtomicU64,
    ewma_stamp: AtomicU64,
}

impl Default for TargetHealth {
    fn default() -> Self {
        TargetHealth {
            active_up: AtomicBool::new(true),
            active_streak: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            window_start: AtomicU64::new(0),
            window_requests: AtomicU32::new(0),
            window_errors: AtomicU32::new(0),
            up_since: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            ewma_stamp: AtomicU64::new(0),
        }
    }
}

/// How a request ended, as passive detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response that does not count against the target.
    Success,
    /// Connection failure, reset, timeout or a 5xx the upstream counts as failure.
    Failure,
}

/// Passive outlier detection settings of an upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassivePolicy {
    /// Eject after this many consecutive failures (0 = off).
    pub(crate) consecutive_failures: u32,
    /// Eject when the error rate in `window` reaches this percentage (0 = off)…
    pub(crate) error_rate_percent: u32,
    /// …over at least this many requests.
    pub(crate) min_requests: u32,
    /// The error-rate window.
    pub(crate) window: Duration,
    /// First ejection time; doubles with each ejection in a row, up to `max_eject`.
    pub(crate) eject_for: Duration,
    /// Longest ejection.
    pub(crate) max_eject: Duration,
    /// Most targets of the upstream that may be ejected at once, in percent.
    pub(crate) max_ejected_percent: u32,
    /// Only failed connections count (any answer is a success): the policy of an upstream
    /// without `health_check.passive`.
    pub(crate) connect_only: bool,
}

impl PassivePolicy {
    /// Without `health_check.passive`: three connections in a row that cannot be made take a
    /// target out for 5 s, doubling while it stays unreachable (up to 60 s); at most half of
    /// an upstream's targets are out at once.
    pub(crate) const CONNECT_FAILURES: PassivePolicy = PassivePolicy {
        consecutive_failures: 3,
        error_rate_percent: 0,
        min_requests: 0,
        window: Duration::from_secs(10),
        eject_for: Duration::from_secs(5),
        max_eject: Duration::from_secs(60),
        max_ejected_percent: 50,
        connect_only: true,
    };
}

impl TargetHealth {
    /// No failure counted and no ejection to forget: a success has nothing to reset.
    pub(crate) fn clean(&self) -> bool {
        self.failures.load(Ordering::Relaxed) == 0
            && self.ejected_until.load(Ordering::Relaxed) == 0
    }

    /// The active checks are configured away: their verdict no longer holds the target out.
    pub(crate) fn forget_checks(&self) {
        self.active_up.store(true, Ordering::Relaxed);
        self.active_streak.store(0, Ordering::Relaxed);
    }

    /// Whether the target may take requests now.
    pub(crate) fn available(&self) -> bool {
        self.active_up.load(Ordering::Relaxed) && !self.ejected(now_ms())
    }

    /// Whether passive detection has the target out at `now`.
    pub(crate) fn ejected(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// The active checks' verdict.
    pub(crate) fn active_up(&self) -> bool {
        self.active_up.load(Ordering::Relaxed)
    }

    /// Records one active check result; returns the new state when it flips.
    pub(crate) fn record_check(
        &self,
        ok: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<bool> {
        let up = self.active_up.load(Ordering::Relaxed);
        if ok == up {
            self.active_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.active_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if up { unhealthy_after } else { healthy_after };
        if streak >= needed.max(1) {
            self.active_up.store(ok, Ordering::Relaxed);
            self.active_streak.store(0, Ordering::Relaxed);
            if ok {
                self.up_since.store(now_ms(), Ordering::Relaxed);
            }
            return Some(ok);
        }
        None
    }

    /// Records a request outcome; returns `true` when this outcome ejects the target.
    /// `may_eject` answers whether the upstream's `max_ejected_percent` allows one more.
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        policy: &PassivePolicy,
        may_eject: impl FnOnce() -> bool,
    ) -> bool {
        let now = now_ms();
        // Window bookkeeping (racy by design: an approximate rate is enough).
        let window_ms = policy.window.as_millis() as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) > window_ms.max(1) {
            self.window_start.store(now, Ordering::Relaxed);
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_errors.store(0, Ordering::Relaxed);
        }
        let requests = self.window_requests.fetch_add(1, Ordering::Relaxed) + 1;
        match outcome {
            Outcome::Success => {
                self.failures.store(0, Ordering::Relaxed);
                if !self.ejected(now) && self.ejected_until.load(Ordering::Relaxed) != 0 {
                    // Served well after an ejection: forget the streak of ejections.
                    self.ejected_until.store(0, Ordering::Relaxed);
                    self.ejections.store(0, Ordering::Relaxed);
                }
                false
            }
            Outcome::Failure => {
                let errors = self.window_errors.fetch_add(1, Ordering::Relaxed) + 1;
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let by_streak =
                    policy.consecutive_failures > 0 && failures >= policy.consecutive_failures;
                let by_rate = policy.error_rate_percent > 0
                    && requests >= policy.min_requests.max(1)
                    && errors * 100 >= policy.error_rate_percent * requests;
                if (by_streak || by_rate) && !self.ejected(now) && may_eject() {
                    let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
                    let time = policy
                        .eject_for
                        .saturating_mul(1 << n)
                        .min(policy.max_eject);
                    self.ejected_until
                        .store(now + time.as_millis() as u64, Ordering::Relaxed);
                    self.up_since
                        .store(now + time.as_millis() as u64, Ordering::Relaxed);
                    self.failures.store(0, Ordering::Relaxed);
                    self.window_requests.store(0, Ordering::Relaxed);
                    self.window_errors.store(0, Ordering::Relaxed);
                    return true;
                }
                false
            }
        }
    }

    /// Folds one latency sample into the peak EWMA (as Finagle and Linkerd do: a slower sample
    /// is taken at once, faster ones decay in with a 10 s time constant).
    pub(crate) fn observe_latency(&self, latency: Duration) {
        const TAU_MS: f64 = 10_000.0;
        let now = now_ms();
        let sample = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        let last = self.ewma_stamp.swap(now, Ordering::Relaxed);
        let next = if old == 0 || sample > old {
            sample
        } else {
            let w = (-(now.saturating_sub(last) as f64) / TAU_MS).exp();
            (old as f64 * w + sample as f64 * (1.0 - w)) as u64
        };
        self.ewma_us.store(next.max(1), Ordering::Relaxed);
    }

    /// The current latency EWMA in microseconds (0 = no sample yet).
    pub(crate) fn ewma_us(&self) -> u64 {
        self.ewma_us.load(Ordering::Relaxed)
    }

    /// The slow-start share of the target's weight now: ramps from 10% to 100% over `ramp`
    /// after it (re)joined; 1.0 without slow start.
    pub(crate) fn warmth(&self, ramp: Duration) -> f64 {
        if ramp.is_zero() {
            return 1.0;
        }
        let since = self.up_since.load(Ordering::Relaxed);
        if since == 0 {
            return 1.0;
        }
        let age = now_ms().saturating_sub(since) as f64;
        (0.1 + 0.9 * age / ramp.as_millis() as f64).min(1.0)
    }

    /// Marks the target as new, for slow start (a target added by a reload).
    pub(crate) fn joined(&self) {
        self.up_since.store(now_ms(), Ordering::Relaxed);
    }

    /// Remaining ejection in milliseconds (0 when not ejected).
    pub(crate) fn ejected_for_ms(&self) -> u64 {
        self.ejected_until
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PassivePolicy {
        PassivePolicy {
            consecutive_failures: 3,
            error_rate_percent: 0,
            min_requests: 0,
            window: Duration::from_secs(10),
            eject_for: Duration::from_millis(200),
            max_eject: Duration::from_millis(700),
            max_ejected_percent: 100,
            connect_only: false,
        }
    }

    #[test]
    fn consecutive_failures_eject_with_growing_time() {
        let h = TargetHealth::default();
        let p = policy();
        assert!(!h.record(Outcome::Failure, &p, || true));
        assert!(!h.record(Outcome::Failure, &p, || true));
        assert!(h.record(Outcome::Failure, &p, || true));
        assert!(!h.available());
        let first = h.ejected_for_ms();
        assert!((150..=200).contains(&first), "{first}");
        // Failing again right after coming back doubles the time, capped.
        h.ejected_until.store(1, Ordering::Relaxed);
        for _ in 0..3 {
            h.record(Outcome::Failure, &p, || true);
        }
        let second = h.ejected_for_ms();
        assert!((350..=400).contains(&second), "{second}");
        h.ejected_until.store(1, Ordering::Relaxed);
        for _ in 0..3 {
            h.record(Outcome::Failure, &p, || true);
        }
        assert!(h.ejected_for_ms() <= 700);
    }

    #[test]
    fn max_ejected_percent_is_respected() {
        let h = TargetHealth::default();
        for _ in 0..10 {
            assert!(!h.record(Outcome::Failure, &policy(), || false));
        }
        assert!(h.available());
    }

    #[test]
    fn error_rate_ejects() {
        let h = TargetHealth::default();
        let p = PassivePolicy {
            consecutive_failures: 0,
            error_rate_percent: 50,
            min_requests: 10,
            ..policy()
        };
        let mut ejected = false;
        for i in 0..10 {
            let outcome = if i % 2 == 1 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            ejected |= h.record(outcome, &p, || true);
        }
        assert!(ejected);
    }

    #[test]
    fn active_thresholds() {
        let h = TargetHealth::default();
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), Some(false));
        assert!(!h.available());
        assert_eq!(h.record_check(true, 2, 3), None);
        assert_eq!(h.record_check(true, 2, 3), Some(true));
        assert!(h.available());
        assert!(h.warmth(Duration::from_secs(10)) < 0.2);
    }

    #[test]
    fn peak_ewma() {
        let h = TargetHealth::default();
        h.observe_latency(Duration::from_millis(10));
        assert_eq!(h.ewma_us(), 10_000);
        h.observe_latency(Duration::from_millis(50));
        assert_eq!(h.ewma_us(), 50_000, "a slower sample is taken at once");
        h.observe_latency(Duration::from_millis(1));
        assert!(
            h.ewma_us() <= 50_000 && h.ewma_us() > 40_000,
            "faster samples decay in"
        );
    }
}
