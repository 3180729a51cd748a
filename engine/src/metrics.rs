//! The metrics endpoint's page: the core's counts and state, in
//! Prometheus's text exposition format (version 0.0.4).
//!
//! Nothing is counted here. The core keeps its counts as plain numbers
//! (`core::tally`); on each scrape the daemon reads them and the status at
//! one instant ([`crate::core::Core::metrics`]) and this module writes them
//! out through `prometheus-client`, the Prometheus project's Rust client,
//! which owns the format's details (names, `HELP`/`TYPE` lines, label
//! escaping, cumulative `le` buckets). Counters restart from zero when the
//! daemon does, as Prometheus expects. `docs/metrics.md` lists the series.

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::tally::{Histogram, MetricsSnapshot};

/// The `Content-Type` of [`render`]'s page.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label of workers and blocks no pool owns (workers attached by hand).
const NO_POOL: &str = "none";

/// `snapshot` as a metrics page, plus the store's flush times.
pub fn render(snapshot: MetricsSnapshot, store_flush: Histogram) -> String {
    let mut registry = Registry::with_prefix("flotilla");
    registry.register_collector(Box::new(Page {
        snapshot,
        store_flush,
    }));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::error!(error = %e, "cannot write the metrics page");
    }
    text
}

/// One scrape's numbers, written out by [`prometheus_client`].
#[derive(Debug)]
struct Page {
    snapshot: MetricsSnapshot,
    store_flush: Histogram,
}

/// A number and how it is exposed: every one here is a whole count.
enum Value {
    /// Only grows (until a restart).
    Counter(u64),
    /// Goes up and down.
    Gauge(u64),
}

impl EncodeMetric for Value {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Counter(n) => encoder.encode_counter::<NoLabelSet, _, u64>(n, None),
            Value::Gauge(n) => encoder.encode_gauge(&i64::try_from(*n).unwrap_or(i64::MAX)),
        }
    }

    fn metric_type(&self) -> MetricType {
        match self {
            Value::Counter(_) => MetricType::Counter,
            Value::Gauge(_) => MetricType::Gauge,
        }
    }
}

impl EncodeMetric for &Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect();
        buckets.truncate(self.bounds.len() + 1);
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Writes one family: `rows` of (label values, metric) under `labels`.
fn family<'r, M: EncodeMetric + 'r>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    labels: &[&str],
    rows: impl IntoIterator<Item = (Vec<&'r str>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (values, m) in rows {
        let set: Vec<(&str, &str)> = labels.iter().copied().zip(values).collect();
        m.encode(metric.encode_family(&set)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Page {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Histogram as Hist};
        let s = &self.snapshot;
        let per = |get: fn(&crate::core::tally::ServableTally) -> u64| {
            s.servables
                .iter()
                .map(move |(name, t)| (vec![name.as_str()], Value::Counter(get(t))))
        };
        let servable = &["servable"];
        family(
            &mut e,
            "tasks_accepted",
            "Tasks accepted, by servable requested.",
            Counter,
            servable,
            per(|t| t.accepted),
        )?;
        family(
            &mut e,
            "tasks_completed",
            "Tasks that produced an output (memo answers included).",
            Counter,
            servable,
            per(|t| t.completed),
        )?;
        family(
            &mut e,
            "tasks_failed",
            "Tasks that failed.",
            Counter,
            servable,
            per(|t| t.failed),
        )?;
        family(
            &mut e,
            "tasks_cancelled",
            "Tasks cancelled by a client.",
            Counter,
            servable,
            per(|t| t.cancelled),
        )?;
        family(
            &mut e,
            "memo_hits",
            "Requests answered from the memo store.",
            Counter,
            servable,
            per(|t| t.memo_hits),
        )?;
        family(
            &mut e,
            "memo_misses",
            "Requests to a memoizing servable that had to run.",
            Counter,
            servable,
            per(|t| t.memo_misses),
        )?;
        family(
            &mut e,
            "batch_size",
            "Inputs per batch sent to a worker, by servable run.",
            Hist,
            servable,
            s.servables
                .iter()
                .map(|(n, t)| (vec![n.as_str()], &t.batch_sizes)),
        )?;
        family(
            &mut e,
            "task_latency_seconds",
            "Seconds from a task's acceptance to its result (completed and failed tasks).",
            Hist,
            servable,
            s.servables
                .iter()
                .map(|(n, t)| (vec![n.as_str()], &t.latency_s)),
        )?;
        let queues = queue_counts(s);
        family(
            &mut e,
            "queue_depth",
            "Tasks waiting for a worker, by servable.",
            Gauge,
            servable,
            queues
                .iter()
                .map(|(name, (queued, _))| (vec![name.as_str()], Value::Gauge(*queued))),
        )?;
        family(
            &mut e,
            "tasks_running",
            "Tasks on workers, by servable.",
            Gauge,
            servable,
            queues
                .iter()
                .map(|(name, (_, running))| (vec![name.as_str()], Value::Gauge(*running))),
        )?;
        let memo = &s.memo;
        family(
            &mut e,
            "memo_entries",
            "Entries in the memo store.",
            Gauge,
            &[],
            [(vec![], Value::Gauge(memo.entries))],
        )?;
        family(
            &mut e,
            "memo_bytes",
            "Bytes in the memo store.",
            Gauge,
            &[],
            [(vec![], Value::Gauge(memo.bytes))],
        )?;
        family(
            &mut e,
            "memo_coalesced",
            "Requests that shared an identical execution in flight.",
            Counter,
            &[],
            [(vec![], Value::Counter(memo.coalesced))],
        )?;
        family(
            &mut e,
            "memo_evictions",
            "Memo entries dropped to stay within the bounds.",
            Counter,
            &[],
            [(vec![], Value::Counter(memo.evictions))],
        )?;
        let (workers, slots) = worker_counts(s);
        family(
            &mut e,
            "workers",
            "Connected workers, by pool and state (busy: running a task; idle).",
            Gauge,
            &["pool", "state"],
            workers
                .iter()
                .map(|((pool, state), n)| (vec![pool.as_str(), *state], Value::Gauge(*n))),
        )?;
        family(
            &mut e,
            "worker_slots",
            "Task slots of connected workers, by pool.",
            Gauge,
            &["pool"],
            slots
                .iter()
                .map(|(pool, n)| (vec![pool.as_str()], Value::Gauge(*n))),
        )?;
        let blocks = block_counts(s);
        family(
            &mut e,
            "blocks",
            "Blocks the daemon knows, by pool and state.",
            Gauge,
            &["pool", "state"],
            blocks
                .iter()
                .map(|((pool, state), n)| (vec![pool.as_str(), state.as_str()], Value::Gauge(*n))),
        )?;
        family(
            &mut e,
            "store_flush_seconds",
            "Seconds each group commit of the store took to write and flush.",
            Hist,
            &[],
            [(vec![], &self.store_flush)],
        )?;
        family(
            &mut e,
            "uptime_seconds",
            "Seconds since the daemon started.",
            Gauge,
            &[],
            [(vec![], Value::Gauge(s.status.uptime_s))],
        )?;
        Ok(())
    }
}

/// (queued, running) by servable: every servable counted since the start,
/// at 0 when nothing of it waits or runs (a series that vanished would
/// read as "no data", not as an empty queue).
fn queue_counts(s: &MetricsSnapshot) -> BTreeMap<String, (u64, u64)> {
    let mut queues: BTreeMap<String, (u64, u64)> = s
        .servables
        .keys()
        .map(|name| (name.clone(), (0, 0)))
        .collect();
    for q in &s.status.queues {
        queues.insert(q.servable.clone(), (q.queued, q.running));
    }
    queues
}

/// Workers by (pool, busy or idle), and slots by pool.
type WorkerCounts = (BTreeMap<(String, &'static str), u64>, BTreeMap<String, u64>);

fn worker_counts(s: &MetricsSnapshot) -> WorkerCounts {
    let mut workers = BTreeMap::new();
    let mut slots = BTreeMap::new();
    for pool in &s.status.pools {
        for state in ["busy", "idle"] {
            workers.insert((pool.name.clone(), state), 0);
        }
        slots.insert(pool.name.clone(), 0);
    }
    for w in &s.status.workers {
        let pool = w.pool.clone().unwrap_or_else(|| NO_POOL.to_owned());
        let state = if w.running > 0 { "busy" } else { "idle" };
        *workers.entry((pool.clone(), state)).or_insert(0) += 1;
        *slots.entry(pool).or_insert(0) += u64::from(w.slots);
    }
    (workers, slots)
}

/// Blocks by (pool, state in lower case).
fn block_counts(s: &MetricsSnapshot) -> BTreeMap<(String, String), u64> {
    let mut blocks = BTreeMap::new();
    for b in &s.status.blocks {
        let pool = b.pool.clone().unwrap_or_else(|| NO_POOL.to_owned());
        *blocks.entry((pool, b.state.to_lowercase())).or_insert(0) += 1;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tally::{BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S, ServableTally};
    use flotilla_protocol::client::{DaemonStatus, MemoStats, QueueView, WorkerView};

    fn status() -> DaemonStatus {
        DaemonStatus {
            pid: 1,
            release: "0".into(),
            uptime_s: 7,
            draining: false,
            interchange: String::new(),
            blocks: Vec::new(),
            blocks_paused: None,
            pools: Vec::new(),
            workers: vec![WorkerView {
                id: "w".into(),
                block: None,
                host: "h".into(),
                pid: 2,
                node: None,
                rank: None,
                slots: 4,
                running: 1,
                last_seen_ms: 0,
                pool: None,
                slot_resources: Vec::new(),
            }],
            queues: vec![QueueView {
                servable: "echo@1.0.0".into(),
                queued: 3,
                running: 1,
                waiting_for: None,
            }],
            totals: Default::default(),
            warm: Vec::new(),
            fleet_hidden: false,
        }
    }

    #[test]
    fn the_page_is_prometheus_text_with_every_series() {
        let mut t = ServableTally {
            accepted: 5,
            completed: 3,
            failed: 1,
            ..ServableTally::default()
        };
        t.batch_sizes.observe(2.0);
        t.latency_s.observe(0.003);
        let idle = ServableTally {
            accepted: 1,
            completed: 1,
            ..ServableTally::default()
        };
        let snapshot = MetricsSnapshot {
            servables: [("echo@1.0.0".to_owned(), t), ("idle".to_owned(), idle)]
                .into_iter()
                .collect(),
            memo: MemoStats::default(),
            status: status(),
        };
        let mut flush = Histogram::new(&LATENCY_BUCKETS_S);
        flush.observe(0.0002);
        let page = render(snapshot, flush);
        for line in [
            "# TYPE flotilla_tasks_accepted_total counter",
            "flotilla_tasks_accepted_total{servable=\"echo@1.0.0\"} 5",
            "flotilla_tasks_completed_total{servable=\"echo@1.0.0\"} 3",
            "flotilla_tasks_failed_total{servable=\"echo@1.0.0\"} 1",
            "flotilla_batch_size_bucket{servable=\"echo@1.0.0\",le=\"2\"} 1",
            "flotilla_batch_size_bucket{servable=\"echo@1.0.0\",le=\"+Inf\"} 1",
            "flotilla_batch_size_count{servable=\"echo@1.0.0\"} 1",
            "flotilla_task_latency_seconds_bucket{servable=\"echo@1.0.0\",le=\"0.005\"} 1",
            "flotilla_queue_depth{servable=\"echo@1.0.0\"} 3",
            "flotilla_queue_depth{servable=\"idle\"} 0",
            "flotilla_workers{pool=\"none\",state=\"busy\"} 1",
            "flotilla_worker_slots{pool=\"none\"} 4",
            "flotilla_store_flush_seconds_count 1",
            "flotilla_uptime_seconds 7",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "missing {line:?} in\n{page}"
            );
        }
        assert_eq!(BATCH_SIZE_BUCKETS[1], 2.0);
    }
}
