//! Load shedding: a limit on requests in flight per listener, fixed or adaptive, with a
//! bounded wait for a place.
//!
//! The adaptive limit is the gradient method of Netflix's concurrency-limits and Envoy's
//! `adaptive_concurrency`: the mean latency of the requests that ended in the last `interval`
//! (`sample_rtt`) is compared with the lowest such mean seen (`min_rtt`), and the limit becomes
//! `limit × clamp(min_rtt × tolerance / sample_rtt, 0.5, 1) + √(that)`, within
//! `[min_limit, max_in_flight]`. The `√` headroom lets the limit grow while latency holds;
//! it does not grow while fewer than half its places are used (the demand, not the upstream,
//! is what limits then). Every `min_rtt_interval` the limit is held at `min_limit` for one
//! `interval` and `min_rtt` is measured afresh from it, so a lasting change of the upstream's
//! own speed is learnt. The recomputation runs on the first request admitted after an
//! `interval` has passed: no timer task, and a few atomic operations per request otherwise.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::{Adaptive, Admission, Overload, now_ns};

/// The in-flight state of one listener.
#[derive(Debug, Default)]
pub(super) struct Shed {
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    /// The adaptive limit; 0 until first used.
    adaptive_limit: AtomicUsize,
    /// Woken when a place may have opened.
    opened: Notify,
    /// Latency sum (ns) and count of the requests that ended in this interval.
    sum_ns: AtomicU64,
    count: AtomicU64,
    /// The most requests in flight at once in this interval.
    peak: AtomicUsize,
    /// When the limit is next recomputed (ns, [`now_ns`]).
    next_update: AtomicU64,
    gradient: Mutex<Gradient>,
}

#[derive(Debug, Default)]
struct Gradient {
    /// The lowest interval mean latency, in seconds.
    min_rtt: Option<f64>,
    /// When `min_rtt` is measured again (ns).
    next_probe: u64,
    /// While measuring `min_rtt`: the limit to go back to.
    probing: Option<usize>,
}

/// A request's place in flight; given back (and its latency sampled) on drop.
#[derive(Debug)]
pub(crate) struct InFlight {
    admission: Arc<Admission>,
    /// When it was admitted ([`now_ns`]); held in every request's future, so kept small.
    started: u64,
    /// Whether its latency is sampled (an adaptive limit).
    sampled: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let shed = &self.admission.shed;
        shed.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.admission.metrics.in_flight().dec();
        if self.sampled {
            let elapsed = now_ns().saturating_sub(self.started);
            shed.sum_ns.fetch_add(elapsed, Ordering::Relaxed);
            shed.count.fetch_add(1, Ordering::Relaxed);
        }
        if shed.queued.load(Ordering::Acquire) > 0 {
            shed.opened.notify_one();
        }
    }
}

/// Leaves the queue count on drop, however the wait ended.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One step of the gradient: the next limit after `limit`, given the interval's mean latency
/// `sample` and the no-load latency `min_rtt` (seconds). `app_limited`: fewer than half the
/// places were used, so the limit may fall but not grow.
pub(crate) fn next_limit(
    limit: usize,
    min_rtt: f64,
    sample: f64,
    tolerance: f64,
    (min_limit, max_limit): (usize, usize),
    app_limited: bool,
) -> usize {
    let gradient = if sample > 0.0 {
        (min_rtt * tolerance / sample).clamp(0.5, 1.0)
    } else {
        1.0
    };
    let scaled = limit as f64 * gradient;
    let mut next = (scaled + scaled.sqrt()) as usize;
    if app_limited && next > limit {
        next = limit;
    }
    next.clamp(min_limit, max_limit.max(min_limit))
}

impl Shed {
    /// The limit in force now.
    pub(super) fn limit(&self, overload: &Overload) -> usize {
        let Some(adaptive) = &overload.adaptive else {
            return overload.max_in_flight;
        };
        let mut limit = self.adaptive_limit.load(Ordering::Acquire);
        if limit == 0 {
            let initial = adaptive.initial_limit;
            limit = match self.adaptive_limit.compare_exchange(
                0,
                initial,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => initial,
                Err(now) => now,
            };
        }
        limit.clamp(
            adaptive.min_limit,
            overload.max_in_flight.max(adaptive.min_limit),
        )
    }

    fn take(&self, admission: &Arc<Admission>, overload: &Overload) -> Option<InFlight> {
        if let Some(adaptive) = &overload.adaptive {
            self.update(admission, adaptive, overload.max_in_flight);
        }
        let limit = self.limit(overload);
        let gauge = admission.metrics.limit();
        if gauge.get() != limit as i64 {
            gauge.set(limit as i64);
        }
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        admission.metrics.in_flight().inc();
        let sampled = overload.adaptive.is_some();
        if sampled {
            self.peak.fetch_max(current + 1, Ordering::Relaxed);
        }
        Some(InFlight {
            admission: Arc::clone(admission),
            started: now_ns(),
            sampled,
        })
    }

    /// A place now, unless others are already waiting (they go first) or none is free.
    pub(super) fn admit(
        &self,
        admission: &Arc<Admission>,
        overload: &Overload,
    ) -> Option<InFlight> {
        if self.queued.load(Ordering::Acquire) > 0 && !overload.queue_timeout.is_zero() {
            return None;
        }
        self.take(admission, overload)
    }

    /// Waits up to the queue timeout for a place.
    pub(super) async fn queue(admission: &Arc<Admission>, overload: &Overload) -> Option<InFlight> {
        let shed = &admission.shed;
        if overload.queue_timeout.is_zero() {
            return shed.take(admission, overload);
        }
        let deadline = tokio::time::Instant::now() + overload.queue_timeout;
        shed.queued.fetch_add(1, Ordering::AcqRel);
        let _queued = Queued(&shed.queued);
        loop {
            let opened = shed.opened.notified();
            let mut opened = std::pin::pin!(opened);
            // Registered before the check, so a place given back in between still wakes us.
            opened.as_mut().enable();
            if let Some(in_flight) = shed.take(admission, overload) {
                return Some(in_flight);
            }
            if tokio::time::timeout_at(deadline, opened).await.is_err() {
                // One last look: a place may have opened as the time ran out.
                return shed.take(admission, overload);
            }
        }
    }

    /// Recomputes the adaptive limit when an interval has passed.
    fn update(&self, admission: &Admission, adaptive: &Adaptive, max: usize) {
        if self.adaptive_limit.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = now_ns();
        let due = self.next_update.load(Ordering::Acquire);
        if now < due {
            return;
        }
        let interval = u64::try_from(adaptive.interval.as_nanos()).unwrap_or(u64::MAX);
        if self
            .next_update
            .compare_exchange(
                due,
                now.saturating_add(interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return;
        }
        let Ok(mut gradient) = self.gradient.try_lock() else {
            return;
        };
        let count = self.count.swap(0, Ordering::AcqRel);
        let sum = self.sum_ns.swap(0, Ordering::AcqRel);
        let peak = self
            .peak
            .swap(self.in_flight.load(Ordering::Acquire), Ordering::AcqRel);
        if count == 0 {
            return;
        }
        let sample = sum as f64 / count as f64 / 1e9;
        let current = self.adaptive_limit.load(Ordering::Acquire).max(1);
        let probe_every = u64::try_from(adaptive.min_rtt_interval.as_nanos()).unwrap_or(u64::MAX);
        let next = if let Some(restore) = gradient.probing.take() {
            // The interval at the floor: its latency is the no-load latency.
            gradient.min_rtt = Some(sample);
            restore
        } else if gradient.min_rtt.is_some() && now >= gradient.next_probe {
            gradient.next_probe = now.saturating_add(probe_every);
            gradient.probing = Some(current);
            adaptive.min_limit
        } else {
            let min_rtt = match gradient.min_rtt {
                Some(min) => min.min(sample),
                None => {
                    gradient.next_probe = now.saturating_add(probe_every);
                    sample
                }
            };
            gradient.min_rtt = Some(min_rtt);
            next_limit(
                current,
                min_rtt,
                sample,
                adaptive.tolerance,
                (adaptive.min_limit, max),
                peak < current.div_ceil(2),
            )
        };
        drop(gradient);
        self.adaptive_limit.store(next, Ordering::Release);
        admission.metrics.limit().set(next as i64);
        if next > current {
            self.opened.notify_waiters();
        }
    }
}
