//! Stage `select`: which target of an upstream gets the request.
//!
//! Every algorithm is lock-free on the request path. Smooth weighted round robin is computed
//! once per config into a fixed sequence (the order nginx's algorithm produces), and a request
//! takes the next slot with one atomic add.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::pool::TargetState;

/// A compiled balancing algorithm over an upstream's targets.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round robin: `sequence` holds target indexes for one full cycle.
    RoundRobin {
        /// One cycle of picks.
        sequence: Vec<u32>,
        /// Position in the cycle.
        next: AtomicUsize,
    },
    /// Fewest in-flight requests per unit of weight; ties go round robin.
    LeastRequest {
        /// Weight of each target.
        weights: Vec<u32>,
        /// Tie breaker.
        next: AtomicUsize,
    },
}

/// Largest sum of (reduced) weights, so one cycle stays small.
pub const MAX_WEIGHT_SUM: u64 = 1_000_000;

/// The smooth weighted round robin order for one cycle: `weights` divided by their gcd, each
/// step adds every weight to its running total and picks the largest, which then gives back
/// the sum (nginx's algorithm). Returns `None` when the cycle would exceed [`MAX_WEIGHT_SUM`].
pub fn smooth_sequence(weights: &[u32]) -> Option<Vec<u32>> {
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

impl Balancer {
    /// Picks a target index, or `None` when there are no targets.
    pub fn select(&self, targets: &[Arc<TargetState>]) -> Option<usize> {
        self.pick(targets, true)
    }

    /// The target [`Balancer::select`] would pick now, without moving on (for `explain`).
    pub fn peek(&self, targets: &[Arc<TargetState>]) -> Option<usize> {
        self.pick(targets, false)
    }

    fn pick(&self, targets: &[Arc<TargetState>], advance: bool) -> Option<usize> {
        if targets.is_empty() {
            return None;
        }
        let step = |next: &AtomicUsize| {
            if advance {
                next.fetch_add(1, Ordering::Relaxed)
            } else {
                next.load(Ordering::Relaxed)
            }
        };
        match self {
            Balancer::RoundRobin { sequence, next } => {
                let slot = step(next) % sequence.len();
                Some(sequence[slot] as usize)
            }
            Balancer::LeastRequest { weights, next } => {
                let start = step(next) % targets.len();
                let mut best = start;
                let mut best_load = f64::MAX;
                for offset in 0..targets.len() {
                    let i = (start + offset) % targets.len();
                    let load = targets[i].inflight.load(Ordering::Relaxed) as f64
                        / f64::from(weights[i].max(1));
                    if load < best_load {
                        best = i;
                        best_load = load;
                    }
                }
                Some(best)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nginx_order() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(
            smooth_sequence(&[5, 1, 1]).unwrap(),
            vec![0, 0, 1, 0, 2, 0, 0]
        );
        assert_eq!(smooth_sequence(&[2, 4]).unwrap(), vec![1, 0, 1]);
        assert!(smooth_sequence(&[0, 0]).is_none());
        assert!(smooth_sequence(&[u32::MAX, 1]).is_none());
    }

    proptest! {
        /// Each target appears exactly weight/gcd times per cycle, and no window of the cycle
        /// starves a target for longer than its fair gap.
        #[test]
        fn weights_hold(weights in prop::collection::vec(1u32..50, 1..6)) {
            let seq = smooth_sequence(&weights).unwrap();
            let g = weights.iter().fold(0u32, |a, &b| { let (mut x, mut y) = (a, b); while y != 0 { (x, y) = (y, x % y); } x });
            for (i, &w) in weights.iter().enumerate() {
                let count = seq.iter().filter(|&&t| t as usize == i).count();
                prop_assert_eq!(count as u32, w / g);
            }
            let total = seq.len();
            for (i, &w) in weights.iter().enumerate() {
                let share = (w / g) as usize;
                let positions: Vec<usize> = seq.iter().enumerate().filter(|(_, t)| **t as usize == i).map(|(p, _)| p).collect();
                for pair in positions.windows(2) {
                    prop_assert!(pair[1] - pair[0] <= 2 * total / share + 1);
                }
            }
        }
    }
}
