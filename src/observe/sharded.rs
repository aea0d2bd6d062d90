//! Counters, gauges and histograms written per worker and summed when scraped: on the request
//! path no cache line is written by more than one worker, and the exposition is the same as
//! prometheus-client's own types give.
//!
//! A thread writes the shard of its worker (see [`crate::worker`]); the control
//! thread, the blocking pool and the admin API share shard 0. Each shard sits on its own
//! cache lines.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Shards per metric: workers beyond this share them (worker `i` writes shard `i % SHARDS`).
pub(crate) const SHARDS: usize = 8;

/// The shard the current thread writes.
fn shard() -> usize {
    crate::worker::index() % SHARDS
}

/// One cache line of counters.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Line([AtomicU64; 8]);

/// One cache line holding one signed value.
#[repr(align(64))]
#[derive(Debug, Default)]
struct SignedLine(AtomicI64);

/// A monotonic counter, one cache line per shard.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counter(Arc<[Line; SHARDS]>);

impl Counter {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n`.
    pub(crate) fn inc_by(&self, n: u64) {
        self.0[shard()].0[0].fetch_add(n, Ordering::Relaxed);
    }

    /// The sum over the shards.
    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|line| line.0[0].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Eight monotonic counters of one thing (an upstream target's outcomes), one cache line per
/// shard holding all eight: the request path adds to its own line only.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters8(Arc<[Line; SHARDS]>);

impl Counters8 {
    /// Adds one to counter `which` (0..8).
    pub(crate) fn inc(&self, which: usize) {
        if let Some(cell) = self.0[shard()].0.get(which) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The sum over the shards of counter `which`.
    pub(crate) fn get(&self, which: usize) -> u64 {
        self.0
            .iter()
            .filter_map(|line| line.0.get(which))
            .map(|cell| cell.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl TypedMetric for Counter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge moved up and down from many workers (open connections): each shard holds its
/// workers' net change, the value is their sum.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gauge(Arc<[SignedLine; SHARDS]>);

impl Gauge {
    /// Adds one.
    pub(crate) fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one away.
    pub(crate) fn dec(&self) {
        self.0[shard()].0.fetch_sub(1, Ordering::Relaxed);
    }

    /// The sum over the shards.
    pub(crate) fn get(&self) -> i64 {
        self.0
            .iter()
            .map(|line| line.0.load(Ordering::Relaxed))
            .fold(0, i64::wrapping_add)
    }
}

impl TypedMetric for Gauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Gauge {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Requests counted per second for a ratio (the retry budget): each worker counts in its
/// own line, tagged with the second it counts for; a line from an earlier second counts 0.
#[derive(Debug, Default)]
pub(crate) struct PerSecond(Box<[Line; SHARDS]>);

impl PerSecond {
    /// Counts one in second `second`.
    pub(crate) fn inc(&self, second: u64) {
        let line = &self.0[shard()].0;
        if line[0].load(Ordering::Relaxed) == second {
            line[1].fetch_add(1, Ordering::Relaxed);
        } else {
            // A new second: a worker sharing the shard may race this reset, and a count is
            // then lost. The budget is a ratio; one request more or less does not move it.
            line[1].store(1, Ordering::Relaxed);
            line[0].store(second, Ordering::Relaxed);
        }
    }

    /// The count of second `second`, over every worker.
    pub(crate) fn get(&self, second: u64) -> u64 {
        self.0
            .iter()
            .filter(|line| line.0[0].load(Ordering::Relaxed) == second)
            .map(|line| line.0[1].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// A histogram of durations. Each shard keeps its bucket counts, its count and its sum in
/// nanoseconds (an integer add, no compare-and-swap on a float) on cache lines of its own.
#[derive(Debug, Clone)]
pub(crate) struct DurationHistogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds of the buckets, in nanoseconds, ascending; `+Inf` is implied.
    bounds: Box<[u64]>,
    /// The same bounds in seconds, as exposed.
    bounds_s: Box<[f64]>,
    /// Lines per shard: bucket counts (one per bound, and `+Inf`), then count, then sum.
    stride: usize,
    lines: Box<[Line]>,
}

impl DurationHistogram {
    /// A histogram with these upper bounds, in seconds (ascending).
    pub(crate) fn new(bounds_s: impl IntoIterator<Item = f64>) -> Self {
        let bounds_s: Box<[f64]> = bounds_s.into_iter().collect();
        let bounds = bounds_s
            .iter()
            .map(|s| {
                Duration::from_secs_f64(*s)
                    .as_nanos()
                    .try_into()
                    .unwrap_or(u64::MAX)
            })
            .collect();
        // Buckets, `+Inf`, count and sum, rounded up to whole lines.
        let cells = bounds_s.len() + 3;
        let stride = cells.div_ceil(8);
        let lines = (0..stride * SHARDS).map(|_| Line::default()).collect();
        DurationHistogram(Arc::new(HistogramInner {
            bounds,
            bounds_s,
            stride,
            lines,
        }))
    }

    fn cell(&self, shard: usize, index: usize) -> &AtomicU64 {
        let inner = &*self.0;
        &inner.lines[shard * inner.stride + index / 8].0[index % 8]
    }

    /// Records one duration.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let inner = &*self.0;
        let bucket = inner.bounds.partition_point(|&bound| bound < nanos);
        let shard = shard();
        let buckets = inner.bounds.len() + 1;
        self.cell(shard, bucket).fetch_add(1, Ordering::Relaxed);
        self.cell(shard, buckets).fetch_add(1, Ordering::Relaxed);
        self.cell(shard, buckets + 1)
            .fetch_add(nanos, Ordering::Relaxed);
    }

    /// Count, sum in seconds, and the count of each bucket by its upper bound (`+Inf` last).
    fn snapshot(&self) -> (u64, f64, Vec<(f64, u64)>) {
        let inner = &*self.0;
        let buckets = inner.bounds.len() + 1;
        let mut per_bucket = vec![0u64; buckets];
        let (mut count, mut sum) = (0u64, 0u64);
        for shard in 0..SHARDS {
            for (index, slot) in per_bucket.iter_mut().enumerate() {
                *slot = slot.wrapping_add(self.cell(shard, index).load(Ordering::Relaxed));
            }
            count = count.wrapping_add(self.cell(shard, buckets).load(Ordering::Relaxed));
            sum = sum.wrapping_add(self.cell(shard, buckets + 1).load(Ordering::Relaxed));
        }
        let bounds = inner
            .bounds_s
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY));
        // Per bucket, not cumulative: the encoder sums them, as for prometheus-client's own.
        let out = bounds.zip(per_bucket).collect();
        // Precision: a sum in nanoseconds as f64 is exact below 2^53 ns (104 days).
        #[allow(clippy::cast_precision_loss)]
        let sum_s = sum as f64 / 1e9;
        (count, sum_s, out)
    }
    /// The histogram as it stands, for readers other than the exposition (the admin
    /// dashboard): a sum over the shards, no write.
    pub(crate) fn read(&self) -> HistogramReading {
        let (count, sum_s, buckets) = self.snapshot();
        HistogramReading {
            count,
            sum_s,
            buckets,
        }
    }
}

/// A histogram read at one moment: cumulative since the series was made.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HistogramReading {
    /// Observations.
    pub(crate) count: u64,
    /// Their sum, in seconds.
    pub(crate) sum_s: f64,
    /// Each bucket's upper bound in seconds (`+Inf` last) and its own count (not cumulative).
    pub(crate) buckets: Vec<(f64, u64)>,
}

impl HistogramReading {
    /// Adds `other`'s observations; its buckets must have the same bounds (those of another
    /// series of the same family), else the buckets are left as they are.
    pub(crate) fn add(&mut self, other: &HistogramReading) {
        if self.buckets.is_empty() && self.count == 0 {
            *self = other.clone();
            return;
        }
        self.count = self.count.wrapping_add(other.count);
        self.sum_s += other.sum_s;
        let same = self.buckets.len() == other.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&other.buckets)
                .all(|(a, b)| a.0.total_cmp(&b.0).is_eq());
        if same {
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                mine.1 = mine.1.wrapping_add(theirs.1);
            }
        }
    }

    /// The `q` quantile (0 to 1), in seconds, by linear interpolation within the bucket it
    /// falls in, as Prometheus' `histogram_quantile` does: the first bucket starts at 0, and
    /// a rank in the `+Inf` bucket answers the highest finite bound. `None` without
    /// observations.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().map(|b| b.1).sum();
        if total == 0 || !q.is_finite() {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        // Precision: counts beyond 2^53 are rounded; a quantile does not notice.
        #[allow(clippy::cast_precision_loss)]
        let rank = q * total as f64;
        let (mut below, mut lower) = (0u64, 0.0f64);
        for &(upper, count) in &self.buckets {
            #[allow(clippy::cast_precision_loss)]
            let reached = (below + count) as f64;
            if count > 0 && reached >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                #[allow(clippy::cast_precision_loss)]
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below += count;
            if upper.is_finite() {
                lower = upper;
            }
        }
        Some(lower)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (count, sum, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn shards_sum_at_scrape() {
        let counter = Counter::default();
        let gauge = Gauge::default();
        std::thread::scope(|s| {
            for worker in 1..=4 {
                let (counter, gauge) = (counter.clone(), gauge.clone());
                s.spawn(move || {
                    crate::worker::set(worker);
                    for _ in 0..1000 {
                        counter.inc();
                        gauge.inc();
                    }
                    gauge.dec();
                });
            }
        });
        counter.inc_by(5);
        assert_eq!(counter.get(), 4005);
        assert_eq!(gauge.get(), 3996);
        let mut registry = Registry::default();
        registry.register("things", "Things", counter);
        registry.register("open", "Open things", gauge);
        let out = text(&registry);
        assert!(
            out.contains("# TYPE things counter\nthings_total 4005\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE open gauge\nopen 3996\n"), "{out}");
    }

    #[test]
    fn histogram_matches_prometheus_clients_exposition() {
        let ours = DurationHistogram::new([0.001, 0.01, 0.1]);
        let theirs = prometheus_client::metrics::histogram::Histogram::new([0.001, 0.01, 0.1]);
        for ms in [0.5, 1.0, 3.0, 20.0, 20.0, 5000.0] {
            ours.observe(Duration::from_secs_f64(ms / 1000.0));
            theirs.observe(ms / 1000.0);
        }
        let mut a = Registry::default();
        a.register("d", "Durations", ours);
        let mut b = Registry::default();
        b.register("d", "Durations", theirs);
        assert_eq!(text(&a), text(&b));
    }

    #[test]
    fn per_second_counts_are_per_worker() {
        let counts = PerSecond::default();
        std::thread::scope(|s| {
            for worker in 1..=3 {
                let counts = &counts;
                s.spawn(move || {
                    crate::worker::set(worker);
                    for _ in 0..10 {
                        counts.inc(7);
                    }
                    counts.inc(8);
                    counts.inc(8);
                });
            }
        });
        counts.inc(7);
        assert_eq!(counts.get(8), 6);
        // Shard 0 still counts second 7; the workers moved on to 8.
        assert_eq!(counts.get(7), 1);
        assert_eq!(counts.get(9), 0);
    }

    #[test]
    fn shards_sit_on_their_own_lines() {
        assert_eq!(std::mem::align_of::<Line>(), 64);
        assert_eq!(std::mem::size_of::<SignedLine>(), 64);
        let h = DurationHistogram::new((0..17).map(|i| 0.000_25 * f64::from(1u32 << i)));
        // 17 bounds + Inf + count + sum = 20 cells: 3 lines per shard.
        assert_eq!(h.0.stride, 3);
        assert_eq!(h.0.lines.len(), 3 * SHARDS);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let h = DurationHistogram::new([0.001, 0.01, 0.1]);
        assert_eq!(h.read().quantile(0.5), None);
        // 10 in (0, 1 ms], 10 in (1 ms, 10 ms].
        for _ in 0..10 {
            h.observe(Duration::from_micros(500));
            h.observe(Duration::from_millis(5));
        }
        let r = h.read();
        assert_eq!(r.count, 20);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(r.quantile(0.25), 0.0005), "{:?}", r.quantile(0.25));
        assert!(close(r.quantile(0.5), 0.001), "{:?}", r.quantile(0.5));
        assert!(close(r.quantile(0.75), 0.0055), "{:?}", r.quantile(0.75));
        // A rank in +Inf answers the highest finite bound.
        h.observe(Duration::from_secs(3));
        h.observe(Duration::from_secs(3));
        assert!(close(h.read().quantile(0.99), 0.1));
        // Two series of one family add up.
        let mut sum = HistogramReading::default();
        sum.add(&r);
        sum.add(&r);
        assert_eq!(sum.count, 40);
        assert_eq!(sum.buckets[1], (0.01, 20));
        assert!(close(sum.quantile(0.5), 0.001));
    }
}
