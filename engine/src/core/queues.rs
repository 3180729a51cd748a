//! Per-servable queues of waiting tasks, and when each is ready to go.
//!
//! Tasks wait in one FIFO per (servable, parameters) pair, because only tasks
//! that share both can travel in one batch. A queue is *ready* when it holds
//! a full batch, or when its oldest task has waited the servable's batch
//! delay; the dispatcher then serves the ready queue whose head is the oldest
//! task a given worker can run, so no servable starves another and order is
//! submission order within a servable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use flotilla_protocol::{Payload, TaskId};

/// Which queue a task waits in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QueueKey {
    /// Canonical servable name.
    pub servable: Arc<str>,
    /// msgpack parameters (empty: none).
    pub params: Payload,
    /// Tasks retried on their own after their batch failed as a whole.
    pub solo: bool,
}

/// How long a queue may hold tasks back to fill a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delay {
    /// At most this many µs after the oldest task arrived.
    Fixed(u64),
    /// As the servable's adaptive controller says.
    Auto,
}

/// A servable's batching rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRule {
    /// Most inputs per call.
    pub max_batch: u32,
    /// How long to wait for a full batch.
    pub delay: Delay,
}

impl BatchRule {
    /// One input per call, no waiting.
    pub const SINGLE: BatchRule = BatchRule {
        max_batch: 1,
        delay: Delay::Fixed(0),
    };
}

#[derive(Debug)]
struct Queue {
    /// Task and the time it joined the queue (0: ready at once).
    ids: VecDeque<(TaskId, u64)>,
    rule: BatchRule,
}

impl Queue {
    /// Batch size to take and how long to wait for it to fill; in auto
    /// mode the controller's target, without waiting.
    fn plan(&self, servable: &str, auto: &impl Fn(&str) -> u32) -> (usize, u64) {
        match self.rule.delay {
            Delay::Fixed(us) => (self.rule.max_batch.max(1) as usize, us),
            Delay::Auto => (
                auto(servable).clamp(1, self.rule.max_batch.max(1)) as usize,
                0,
            ),
        }
    }

    fn ready_at(&self, servable: &str, auto: &impl Fn(&str) -> u32) -> Option<u64> {
        let &(_, head) = self.ids.front()?;
        let (size, delay) = self.plan(servable, auto);
        // Requeued tasks (arrival 0) and full batches go at once.
        if head == 0 || self.ids.len() >= size {
            Some(0)
        } else {
            Some(head.saturating_add(delay))
        }
    }
}

/// All queues.
#[derive(Debug, Default)]
pub struct Queues {
    queues: HashMap<QueueKey, Queue>,
    len: usize,
}

impl Queues {
    /// Tasks waiting in all queues.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no task waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The servables with tasks waiting.
    pub fn servables(&self) -> Vec<std::sync::Arc<str>> {
        let mut names: Vec<_> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.ids.is_empty())
            .map(|(k, _)| k.servable.clone())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Appends a task that arrived at `now`.
    pub fn push_back(&mut self, key: QueueKey, id: TaskId, rule: BatchRule, now: u64) {
        self.queues
            .entry(key)
            .or_insert_with(|| Queue {
                ids: VecDeque::new(),
                rule,
            })
            .ids
            .push_back((id, now));
        self.len += 1;
    }

    /// Puts tasks back at the head of their queue (after their worker was
    /// lost), in id order, ahead of newer tasks, ready at once.
    pub fn push_front(&mut self, key: QueueKey, mut ids: Vec<TaskId>, rule: BatchRule) {
        ids.sort_unstable();
        let queue = self.queues.entry(key).or_insert_with(|| Queue {
            ids: VecDeque::new(),
            rule,
        });
        self.len += ids.len();
        for id in ids.into_iter().rev() {
            queue.ids.push_front((id, 0));
        }
    }

    /// The ready queue (at `now`) whose head is the oldest task among queues
    /// accepted by `can_run`, with the number of tasks to take from it.
    /// `auto` gives the target batch size of servables in auto mode.
    pub fn oldest(
        &self,
        now: u64,
        can_run: impl Fn(&str) -> bool,
        auto: impl Fn(&str) -> u32,
    ) -> Option<(QueueKey, usize)> {
        self.queues
            .iter()
            .filter(|(key, _)| can_run(&key.servable))
            .filter(|(key, q)| q.ready_at(&key.servable, &auto).is_some_and(|t| t <= now))
            .filter_map(|(key, q)| q.ids.front().map(|(head, _)| (head, key, q)))
            .min_by_key(|(head, _, _)| **head)
            .map(|(_, key, q)| (key.clone(), q.plan(&key.servable, &auto).0))
    }

    /// When the earliest queue that is not ready at `now` becomes ready.
    /// Queues ready already need no timer: a worker asking for work takes
    /// them.
    pub fn next_deadline(&self, now: u64, auto: impl Fn(&str) -> u32) -> Option<u64> {
        self.queues
            .iter()
            .filter_map(|(key, q)| q.ready_at(&key.servable, &auto))
            .filter(|t| *t > now)
            .min()
    }

    /// Takes up to `n` tasks from the head of `key`.
    pub fn pop_batch(&mut self, key: &QueueKey, n: usize) -> Vec<TaskId> {
        let Some(queue) = self.queues.get_mut(key) else {
            return Vec::new();
        };
        let n = n.max(1).min(queue.ids.len());
        let batch: Vec<TaskId> = queue.ids.drain(..n).map(|(id, _)| id).collect();
        self.len -= batch.len();
        if queue.ids.is_empty() {
            self.queues.remove(key);
        }
        batch
    }

    /// Takes up to `n` tasks from the head of `key`'s queue, stopping before
    /// the first one `fits` refuses (`fits` is asked once per task, in
    /// order, and may keep a running total). Empty if the head itself does
    /// not fit.
    pub fn pop_batch_within(
        &mut self,
        key: &QueueKey,
        n: usize,
        mut fits: impl FnMut(TaskId) -> bool,
    ) -> Vec<TaskId> {
        let Some(queue) = self.queues.get_mut(key) else {
            return Vec::new();
        };
        let limit = n.max(1).min(queue.ids.len());
        let take = queue
            .ids
            .iter()
            .take(limit)
            .take_while(|(id, _)| fits(*id))
            .count();
        let batch: Vec<TaskId> = queue.ids.drain(..take).map(|(id, _)| id).collect();
        self.len -= batch.len();
        if queue.ids.is_empty() {
            self.queues.remove(key);
        }
        batch
    }

    /// Removes one task (cancelled, or finished by a late result) wherever it
    /// is in `key`'s queue. Linear, but only used on those rare paths.
    pub fn remove(&mut self, key: &QueueKey, id: TaskId) -> bool {
        let Some(queue) = self.queues.get_mut(key) else {
            return false;
        };
        let Some(pos) = queue.ids.iter().position(|(x, _)| *x == id) else {
            return false;
        };
        queue.ids.remove(pos);
        self.len -= 1;
        if queue.ids.is_empty() {
            self.queues.remove(key);
        }
        true
    }

    /// Waiting tasks per servable.
    pub fn depth_by_servable(&self) -> BTreeMap<String, u64> {
        let mut depth = BTreeMap::new();
        for (key, q) in &self.queues {
            *depth.entry(key.servable.to_string()).or_insert(0) += q.ids.len() as u64;
        }
        depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> QueueKey {
        QueueKey {
            servable: Arc::from(s),
            params: Payload::new(),
            solo: false,
        }
    }

    fn rule(max_batch: u32, delay_us: u64) -> BatchRule {
        BatchRule {
            max_batch,
            delay: Delay::Fixed(delay_us),
        }
    }

    const NO_AUTO: fn(&str) -> u32 = |_| 1;

    #[test]
    fn oldest_head_wins_and_batches_respect_the_cap() {
        let mut q = Queues::default();
        q.push_back(key("b"), TaskId(2), rule(2, 0), 0);
        q.push_back(key("a"), TaskId(3), rule(2, 0), 0);
        q.push_back(key("b"), TaskId(4), rule(2, 0), 0);
        q.push_back(key("b"), TaskId(5), rule(2, 0), 0);
        assert_eq!(q.oldest(0, |_| true, NO_AUTO), Some((key("b"), 2)));
        assert_eq!(q.oldest(0, |s| s == "a", NO_AUTO), Some((key("a"), 2)));
        assert_eq!(q.pop_batch(&key("b"), 2), [TaskId(2), TaskId(4)]);
        assert_eq!(q.oldest(0, |_| true, NO_AUTO).unwrap().0, key("a"));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_queue_waits_for_a_full_batch_or_its_delay() {
        let mut q = Queues::default();
        q.push_back(key("m"), TaskId(1), rule(3, 1_000), 100);
        q.push_back(key("m"), TaskId(2), rule(3, 1_000), 400);
        assert_eq!(q.oldest(500, |_| true, NO_AUTO), None, "not full, not due");
        assert_eq!(
            q.next_deadline(500, NO_AUTO),
            Some(1_100),
            "due 1 ms after the oldest"
        );
        assert_eq!(
            q.next_deadline(1_100, NO_AUTO),
            None,
            "due now: no timer needed"
        );
        assert!(q.oldest(1_100, |_| true, NO_AUTO).is_some());
        q.push_back(key("m"), TaskId(3), rule(3, 1_000), 600);
        assert_eq!(
            q.oldest(600, |_| true, NO_AUTO),
            Some((key("m"), 3)),
            "full: at once"
        );
        assert_eq!(q.next_deadline(600, NO_AUTO), None);
    }

    #[test]
    fn auto_queues_never_wait_and_take_up_to_the_target() {
        let mut q = Queues::default();
        let auto_rule = BatchRule {
            max_batch: 8,
            delay: Delay::Auto,
        };
        for i in 0..3 {
            q.push_back(key("m"), TaskId(i), auto_rule, 10);
        }
        assert_eq!(
            q.oldest(10, |_| true, |_| 4),
            Some((key("m"), 4)),
            "ready at once"
        );
        assert_eq!(q.next_deadline(10, |_| 4), None);
        assert_eq!(q.oldest(10, |_| true, |_| 2), Some((key("m"), 2)));
        assert_eq!(
            q.oldest(10, |_| true, |_| 50),
            Some((key("m"), 8)),
            "capped by max_batch"
        );
    }

    #[test]
    fn requeued_tasks_go_first_in_id_order_and_ready() {
        let mut q = Queues::default();
        q.push_back(key("a"), TaskId(10), rule(8, 1_000_000), 5);
        q.push_front(key("a"), vec![TaskId(7), TaskId(3)], rule(8, 1_000_000));
        assert!(q.oldest(6, |_| true, NO_AUTO).is_some());
        assert_eq!(
            q.pop_batch(&key("a"), 8),
            [TaskId(3), TaskId(7), TaskId(10)]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_batch_within_a_budget_stops_at_the_first_input_that_does_not_fit() {
        let mut q = Queues::default();
        for id in 1..=4 {
            q.push_back(key("a"), TaskId(id), rule(10, 0), 0);
        }
        let mut left = 25u64;
        let sizes = |id: TaskId| id.0 * 10;
        let batch = q.pop_batch_within(&key("a"), 10, |id| {
            let fits = sizes(id) <= left;
            left = left.saturating_sub(sizes(id));
            fits
        });
        assert_eq!(batch, [TaskId(1)]);
        assert!(q.pop_batch_within(&key("a"), 10, |_| false).is_empty());
        assert_eq!(q.len(), 3);
        assert_eq!(
            q.pop_batch_within(&key("a"), 2, |_| true),
            [TaskId(2), TaskId(3)]
        );
        assert_eq!(q.pop_batch_within(&key("a"), 2, |_| true), [TaskId(4)]);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_keeps_counts_right() {
        let mut q = Queues::default();
        q.push_back(key("a"), TaskId(1), rule(8, 0), 0);
        q.push_back(key("a"), TaskId(2), rule(8, 0), 0);
        assert!(q.remove(&key("a"), TaskId(1)));
        assert!(!q.remove(&key("a"), TaskId(1)));
        assert_eq!(q.depth_by_servable()["a"], 1);
        assert!(q.remove(&key("a"), TaskId(2)));
        assert!(q.is_empty() && q.depth_by_servable().is_empty());
    }
}
