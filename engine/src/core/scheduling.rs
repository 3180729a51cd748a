//! What decides which tasks go together and when: the queues, each
//! auto-batched servable's adaptive controller, and how long calls take.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_protocol::TaskId;

use super::adaptive::Adaptive;
use super::catalog::{Catalog, ServableInfo};
use super::queues::{self, BatchRule, QueueKey, Queues};
use super::tasks::TaskTable;

/// A running estimate of a servable call's duration (µs): mean and mean
/// deviation, exponentially weighted.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CallDuration {
    mean: f64,
    dev: f64,
}

impl CallDuration {
    /// Learns from one call that took `us`.
    pub(super) fn observe(&mut self, us: u64) {
        let x = us as f64;
        if self.mean == 0.0 {
            self.mean = x;
            return;
        }
        let err = x - self.mean;
        self.mean += 0.25 * err;
        self.dev += 0.25 * (err.abs() - self.dev);
    }

    /// A pessimistic guess: the mean plus twice the deviation.
    pub(super) fn estimate_us(&self) -> u64 {
        (self.mean + 2.0 * self.dev) as u64
    }
}

/// The queues and what sizes and fits their batches.
#[derive(Debug, Default)]
pub(super) struct Scheduling {
    /// Tasks waiting, per servable and parameters.
    pub(super) queues: Queues,
    /// Controllers of servables batched in auto mode.
    pub(super) adaptive: HashMap<Arc<str>, Adaptive>,
    /// How long a call of each servable takes, learned.
    pub(super) durations: HashMap<Arc<str>, CallDuration>,
}

impl Scheduling {
    /// Makes sure servables batched in auto mode (and pipeline steps that
    /// are) have a controller.
    pub(super) fn ensure_adaptive(&mut self, info: &ServableInfo) {
        if info.batch.delay == queues::Delay::Auto {
            self.adaptive
                .entry(info.name.clone())
                .or_insert_with(|| Adaptive::new(info.batch.max_batch, info.latency_target_us));
        }
        if let Some(steps) = &info.steps {
            for step in steps.iter() {
                self.ensure_adaptive(step);
            }
        }
    }

    /// A batch of `size` calls of `servable` ran in `run_us`; `ok` if it
    /// did not fail as a whole.
    pub(super) fn observe(&mut self, servable: &Arc<str>, size: u32, run_us: u64, ok: bool) {
        if let Some(a) = self.adaptive.get_mut(servable) {
            a.observe(size, run_us);
        }
        if ok {
            self.durations
                .entry(servable.clone())
                .or_default()
                .observe(run_us);
        }
    }

    /// The longest a call of `servable` is expected to take (µs): its
    /// declared bound, else what history says (0 when unknown).
    pub(super) fn expected_duration_us(&self, catalog: &Catalog, servable: &str) -> u64 {
        let declared = catalog
            .record(servable)
            .ok()
            .and_then(|r| r.spec.options.max_duration_s)
            .map_or(0, |s| s.saturating_mul(1_000_000));
        let learned = self
            .durations
            .get(servable)
            .map_or(0, CallDuration::estimate_us);
        declared.max(learned)
    }

    /// When (after `now`) a queue's batch delay runs out, if one will.
    pub(super) fn next_deadline(&self, now: u64) -> Option<u64> {
        let adaptive = &self.adaptive;
        self.queues.next_deadline(now, |s| auto_plan(adaptive, s))
    }

    /// Puts tasks back at the head of their queues.
    pub(super) fn requeue_front(&mut self, tasks: &TaskTable, ids: Vec<TaskId>) {
        let mut by_queue: HashMap<QueueKey, (Vec<TaskId>, BatchRule)> = HashMap::new();
        for id in ids {
            if let Some(task) = tasks.get(&id) {
                by_queue
                    .entry(task.queue_key())
                    .or_insert_with(|| (Vec::new(), task.queue_rule()))
                    .0
                    .push(id);
            }
        }
        for (qk, (ids, rule)) in by_queue {
            self.queues.push_front(qk, ids, rule);
        }
    }

    /// Appends task `id` (already in `tasks`) to its queue.
    pub(super) fn push_back(&mut self, tasks: &TaskTable, id: TaskId, now: u64) {
        if let Some(task) = tasks.get(&id) {
            self.queues
                .push_back(task.queue_key(), id, task.queue_rule(), now);
        }
    }

    /// Takes task `id` out of its queue, if it waits in one.
    pub(super) fn unqueue(&mut self, tasks: &TaskTable, id: TaskId) {
        if let Some(task) = tasks.get(&id) {
            self.queues.remove(&task.queue_key(), id);
        }
    }
}

/// The target batch size of `servable`'s adaptive controller (1 before it
/// has measured anything).
pub(super) fn auto_plan(adaptive: &HashMap<Arc<str>, Adaptive>, servable: &str) -> u32 {
    adaptive.get(servable).map_or(1, Adaptive::target)
}
