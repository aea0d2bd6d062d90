//! Stage `select`: which target of an upstream gets the request.
//!
//! Every algorithm is lock-free on the request path and skips targets that health checks or
//! outlier detection took out. Smooth weighted round robin is computed once per config into a
//! fixed sequence (the order nginx's algorithm produces), and a request takes the next slot with
//! one atomic add. Consistent hashing (`ring_hash`, `maglev`, `ip_hash`) is a binary search or a
//! table index. `p2c_ewma` compares two random targets by latency EWMA × load.

pub(crate) mod hash;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub(crate) use crate::view::RequestView;
pub(crate) use hash::HashKey;

use crate::pool::TargetState;

/// A compiled balancing algorithm over an upstream's targets.
#[derive(Debug)]
pub(crate) enum Algorithm {
    /// Smooth weighted round robin: `sequence` holds target indexes for one full cycle.
    RoundRobin {
        /// One cycle of picks.
        sequence: Vec<u32>,
        /// Position in the cycle. Shared by the workers (one atomic add per pick): clients see
        /// one rotation over the targets, whichever worker their connection landed on.
        next: AtomicUsize,
    },
    /// Fewest in-flight requests per unit of weight; ties go round robin.
    LeastRequest {
        /// Tie breaker.
        next: AtomicUsize,
    },
    /// Weighted random.
    Random,
    /// Power of two choices over peak-EWMA latency × (in-flight + 1) / weight.
    P2cEwma,
    /// Consistent hashing on a weighted ring.
    RingHash {
        /// The ring.
        ring: hash::Ring,
        /// What is hashed.
        key: HashKey,
    },
    /// Maglev consistent hashing.
    Maglev {
        /// The lookup table.
        table: hash::Maglev,
        /// What is hashed.
        key: HashKey,
    },
}

/// An upstream's balancer: algorithm, weights, slow start and what to do when all are down.
#[derive(Debug)]
pub(crate) struct Balancer {
    /// The algorithm.
    pub(crate) algorithm: Algorithm,
    /// Target weights, indexed like the targets.
    pub(crate) weights: Vec<u32>,
    /// Ramp for targets that (re)join; zero = none.
    pub(crate) slow_start: Duration,
    /// When every target is out, spread over all of them instead of answering 503.
    pub(crate) panic: bool,
}

/// Largest sum of (reduced) weights, so one cycle stays small.
pub(crate) const MAX_WEIGHT_SUM: u64 = 1_000_000;

/// The smooth weighted round robin order for one cycle: `weights` divided by their gcd, each
/// step adds every weight to its running total and picks the largest, which then gives back
/// the sum (nginx's algorithm). Returns `None` when the cycle would exceed [`MAX_WEIGHT_SUM`].
pub(crate) fn smooth_sequence(weights: &[u32]) -> Option<Vec<u32>> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let divisor = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let reduced: Vec<i64> = weights
        .iter()
        .map(|&w| (u64::from(w) / divisor) as i64)
        .collect();
    let total: i64 = reduced.iter().sum();
    if total <= 0 || total as u64 > MAX_WEIGHT_SUM {
        return None;
    }
    let mut current = vec![0i64; reduced.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        sequence.push(best as u32);
    }
    Some(sequence)
}

pub(crate) use crate::random::{chance, random_u64};

impl Balancer {
    /// Picks a target for a request, skipping unavailable ones and those in `exclude` (already
    /// tried). `None` when nothing is left (the caller answers 503).
    pub(crate) fn select(
        &self,
        targets: &[Arc<TargetState>],
        ctx: &RequestView<'_>,
        exclude: &[usize],
    ) -> Option<usize> {
        self.pick(targets, ctx, exclude, true)
    }

    /// The target [`Balancer::select`] would pick now, without moving on (for `explain`).
    pub(crate) fn peek(
        &self,
        targets: &[Arc<TargetState>],
        ctx: &RequestView<'_>,
    ) -> Option<usize> {
        self.pick(targets, ctx, &[], false)
    }

    /// The algorithm's config name.
    pub(crate) fn name(&self) -> &'static str {
        match &self.algorithm {
            Algorithm::RoundRobin { .. } => "round_robin",
            Algorithm::LeastRequest { .. } => "least_request",
            Algorithm::Random => "random",
            Algorithm::P2cEwma => "p2c_ewma",
            Algorithm::RingHash { .. } => "ring_hash",
            Algorithm::Maglev { .. } => "maglev",
        }
    }

    fn pick(
        &self,
        targets: &[Arc<TargetState>],
        ctx: &RequestView<'_>,
        exclude: &[usize],
        advance: bool,
    ) -> Option<usize> {
        if targets.is_empty() {
            return None;
        }
        let healthy = |i: usize| !exclude.contains(&i) && targets[i].health.available();
        if (0..targets.len()).any(healthy) {
            self.pick_among(targets, ctx, advance, &healthy)
        } else if self.panic {
            // Panic mode: every target is out, so health is ignored rather than failing all.
            let untried = |i: usize| !exclude.contains(&i);
            self.pick_among(targets, ctx, advance, &untried)
        } else {
            None
        }
    }

    fn warmth(&self, target: &TargetState) -> f64 {
        target.health.warmth(self.slow_start)
    }

    fn pick_among(
        &self,
        targets: &[Arc<TargetState>],
        ctx: &RequestView<'_>,
        advance: bool,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let step = |next: &AtomicUsize| {
            if advance {
                next.fetch_add(1, Ordering::Relaxed)
            } else {
                next.load(Ordering::Relaxed)
            }
        };
        let weight = |i: usize| f64::from(self.weights[i].max(1)) * self.warmth(&targets[i]);
        match &self.algorithm {
            Algorithm::RoundRobin { sequence, next } => {
                // A slot whose target is out (or still warming up, by chance) passes to the next.
                for _ in 0..sequence.len() {
                    let t = sequence[step(next) % sequence.len()] as usize;
                    if usable(t) && (!advance || chance(self.warmth(&targets[t]))) {
                        return Some(t);
                    }
                    if !advance {
                        break;
                    }
                }
                (0..targets.len()).find(|&i| usable(i))
            }
            Algorithm::LeastRequest { next } => {
                let start = step(next) % targets.len();
                (0..targets.len())
                    .map(|offset| (start + offset) % targets.len())
                    .filter(|&i| usable(i))
                    .min_by(|&a, &b| {
                        let cost = |i: usize| {
                            (targets[i].inflight.load(Ordering::Relaxed) as f64 + 1.0) / weight(i)
                        };
                        cost(a).total_cmp(&cost(b))
                    })
            }
            Algorithm::Random => self.random(targets.len(), usable, &weight),
            Algorithm::P2cEwma => {
                let a = self.random(targets.len(), usable, &weight)?;
                let b = self
                    .random(targets.len(), &|i| usable(i) && i != a, &weight)
                    .unwrap_or(a);
                let cost = |i: usize| {
                    // No sample yet: assume 1 ms, so new targets get tried.
                    let ewma = match targets[i].health.ewma_us() {
                        0 => 1_000.0,
                        us => us as f64,
                    };
                    ewma * (targets[i].inflight.load(Ordering::Relaxed) as f64 + 1.0) / weight(i)
                };
                Some(if cost(b) < cost(a) { b } else { a })
            }
            Algorithm::RingHash { ring, key } => ring.pick(key.hash(ctx), usable),
            Algorithm::Maglev { table, key } => table.pick(key.hash(ctx), usable),
        }
    }

    /// A weighted random usable target.
    fn random(
        &self,
        n: usize,
        usable: &dyn Fn(usize) -> bool,
        weight: &dyn Fn(usize) -> f64,
    ) -> Option<usize> {
        let total: f64 = (0..n).filter(|&i| usable(i)).map(weight).sum();
        if total <= 0.0 {
            return None;
        }
        let mut r = (random_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut last = None;
        for i in (0..n).filter(|&i| usable(i)) {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
            last = Some(i);
        }
        last
    }
}

#[cfg(test)]
mod tests;
