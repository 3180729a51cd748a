//! What the core counts for monitoring: tasks by servable and how they
//! ended, memo answers, batch sizes and task latencies.
//!
//! Plain numbers, updated where the core decides (a task accepted, a batch
//! sent, a task final) and read whole by the daemon when its metrics
//! endpoint is scraped ([`super::Core::metrics`]); nothing here knows the
//! exposition format. Histograms have fixed buckets so that reading them is
//! a copy, and the counts only grow (a restart starts them again, as
//! Prometheus expects of a counter).

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

/// Upper bounds of the batch-size buckets (inputs per batch).
pub const BATCH_SIZE_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Upper bounds of the latency buckets, seconds from acceptance to the
/// result (memo answers are near 0, model calls milliseconds to minutes).
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    300.0,
];

/// Observations sorted into fixed buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Each bucket's upper bound.
    pub bounds: &'static [f64],
    /// Observations in each bucket (not cumulative); one more than
    /// `bounds`, the last for what exceeds every bound.
    pub counts: Vec<u64>,
    /// Sum of every observation.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts `value`.
    pub fn observe(&mut self, value: f64) {
        let i = self.bounds.partition_point(|b| *b < value);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += value;
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// One servable's counts.
#[derive(Clone, Debug, PartialEq)]
pub struct ServableTally {
    /// Tasks accepted (submitted, or recovered at start).
    pub accepted: u64,
    /// Tasks that produced an output (memo answers included).
    pub completed: u64,
    /// Tasks that failed.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Requests answered from the memo store.
    pub memo_hits: u64,
    /// Requests to a memoizing servable the memo store could not answer.
    pub memo_misses: u64,
    /// Inputs per batch sent to a worker.
    pub batch_sizes: Histogram,
    /// Seconds from acceptance to the final state, of completed and
    /// failed tasks.
    pub latency_s: Histogram,
}

impl Default for ServableTally {
    fn default() -> Self {
        ServableTally {
            accepted: 0,
            completed: 0,
            failed: 0,
            cancelled: 0,
            memo_hits: 0,
            memo_misses: 0,
            batch_sizes: Histogram::new(&BATCH_SIZE_BUCKETS),
            latency_s: Histogram::new(&LATENCY_BUCKETS_S),
        }
    }
}

/// What the metrics endpoint shows, read from the core at one instant.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    /// Each servable's counts since the daemon started.
    pub servables: BTreeMap<String, ServableTally>,
    /// The memo store's counters and size.
    pub memo: flotilla_protocol::client::MemoStats,
    /// Queues, blocks, pools and workers now (the daemon's status).
    pub status: flotilla_protocol::client::DaemonStatus,
}

/// How a task ended, as the tally counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    Completed,
    Failed,
    Cancelled,
}

/// The counts of every servable seen since the daemon started.
#[derive(Debug, Default)]
pub(super) struct Tally {
    servables: FxHashMap<Arc<str>, ServableTally>,
}

impl Tally {
    fn of(&mut self, servable: &Arc<str>) -> &mut ServableTally {
        self.servables.entry(servable.clone()).or_default()
    }

    /// A task for `servable` was accepted.
    pub(super) fn accepted(&mut self, servable: &Arc<str>) {
        self.of(servable).accepted += 1;
    }

    /// The memo store answered a request (`hit`) or could not.
    pub(super) fn memo(&mut self, servable: &Arc<str>, hit: bool) {
        let t = self.of(servable);
        if hit {
            t.memo_hits += 1;
        } else {
            t.memo_misses += 1;
        }
    }

    /// A batch of `size` inputs went to a worker.
    pub(super) fn batch(&mut self, servable: &Arc<str>, size: usize) {
        self.of(servable).batch_sizes.observe(size as f64);
    }

    /// A task ended `latency_us` after it was accepted.
    pub(super) fn ended(&mut self, servable: &Arc<str>, end: End, latency_us: u64) {
        let t = self.of(servable);
        match end {
            End::Completed => t.completed += 1,
            End::Failed => t.failed += 1,
            End::Cancelled => {
                t.cancelled += 1;
                return;
            }
        }
        t.latency_s.observe(latency_us as f64 / 1e6);
    }

    /// Every servable's counts, by name.
    pub(super) fn snapshot(&self) -> BTreeMap<String, ServableTally> {
        self.servables
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = Histogram::new(&BATCH_SIZE_BUCKETS);
        for v in [1.0, 1.0, 3.0, 4.0, 5000.0] {
            h.observe(v);
        }
        assert_eq!(&h.counts[..4], &[2, 0, 2, 0]);
        assert_eq!(h.counts.last(), Some(&1));
        assert_eq!((h.count(), h.sum), (5, 5009.0));
    }

    #[test]
    fn each_servable_is_counted_apart() {
        let mut t = Tally::default();
        let a: Arc<str> = Arc::from("a@1.0.0");
        let b: Arc<str> = Arc::from("b@1.0.0");
        t.accepted(&a);
        t.accepted(&a);
        t.accepted(&b);
        t.ended(&a, End::Completed, 2_000);
        t.ended(&a, End::Failed, 1_000_000);
        t.ended(&b, End::Cancelled, 5);
        t.memo(&b, true);
        t.batch(&a, 2);
        let s = t.snapshot();
        let (sa, sb) = (&s["a@1.0.0"], &s["b@1.0.0"]);
        assert_eq!((sa.accepted, sa.completed, sa.failed), (2, 1, 1));
        assert_eq!(sa.latency_s.count(), 2);
        assert_eq!(sa.batch_sizes.count(), 1);
        assert_eq!((sb.accepted, sb.cancelled, sb.memo_hits), (1, 1, 1));
        assert_eq!(sb.latency_s.count(), 0, "cancelled tasks have no latency");
    }
}
