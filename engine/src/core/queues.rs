//! Per-servable queues of waiting tasks.
//!
//! Tasks wait in one FIFO per (servable, parameters) pair, because only tasks
//! that share both can travel in one batch. The dispatcher always serves the
//! queue whose head is the oldest task a given worker can run, so no servable
//! starves another and order is submission order within a servable.

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

#[derive(Debug)]
struct Queue {
    ids: VecDeque<TaskId>,
    max_batch: u32,
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

    /// Appends a newly accepted task; `max_batch` is the servable's batch cap.
    pub fn push_back(&mut self, key: QueueKey, id: TaskId, max_batch: u32) {
        self.queues
            .entry(key)
            .or_insert_with(|| Queue {
                ids: VecDeque::new(),
                max_batch,
            })
            .ids
            .push_back(id);
        self.len += 1;
    }

    /// Puts tasks back at the head of their queue (after their worker was
    /// lost), keeping id order among them and ahead of newer tasks.
    pub fn push_front(&mut self, key: QueueKey, mut ids: Vec<TaskId>, max_batch: u32) {
        ids.sort_unstable();
        let queue = self.queues.entry(key).or_insert_with(|| Queue {
            ids: VecDeque::new(),
            max_batch,
        });
        self.len += ids.len();
        for id in ids.into_iter().rev() {
            queue.ids.push_front(id);
        }
    }

    /// The queue whose head is the oldest task among queues accepted by
    /// `can_run`.
    pub fn oldest(&self, can_run: impl Fn(&str) -> bool) -> Option<QueueKey> {
        self.queues
            .iter()
            .filter(|(key, _)| can_run(&key.servable))
            .filter_map(|(key, q)| q.ids.front().map(|head| (head, key)))
            .min_by_key(|(head, _)| **head)
            .map(|(_, key)| key.clone())
    }

    /// Takes up to the queue's batch cap of tasks from the head of `key`.
    pub fn pop_batch(&mut self, key: &QueueKey) -> Vec<TaskId> {
        let Some(queue) = self.queues.get_mut(key) else {
            return Vec::new();
        };
        let n = (queue.max_batch.max(1) as usize).min(queue.ids.len());
        let batch: Vec<TaskId> = queue.ids.drain(..n).collect();
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
        let Some(pos) = queue.ids.iter().position(|x| *x == id) else {
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

    #[test]
    fn oldest_head_wins_and_batches_respect_the_cap() {
        let mut q = Queues::default();
        q.push_back(key("b"), TaskId(2), 2);
        q.push_back(key("a"), TaskId(3), 2);
        q.push_back(key("b"), TaskId(4), 2);
        q.push_back(key("b"), TaskId(5), 2);
        assert_eq!(q.oldest(|_| true), Some(key("b")));
        assert_eq!(q.oldest(|s| s == "a"), Some(key("a")));
        assert_eq!(q.pop_batch(&key("b")), [TaskId(2), TaskId(4)]);
        assert_eq!(q.oldest(|_| true), Some(key("a")));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn requeued_tasks_go_first_in_id_order() {
        let mut q = Queues::default();
        q.push_back(key("a"), TaskId(10), 8);
        q.push_front(key("a"), vec![TaskId(7), TaskId(3)], 8);
        assert_eq!(q.pop_batch(&key("a")), [TaskId(3), TaskId(7), TaskId(10)]);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_keeps_counts_right() {
        let mut q = Queues::default();
        q.push_back(key("a"), TaskId(1), 8);
        q.push_back(key("a"), TaskId(2), 8);
        assert!(q.remove(&key("a"), TaskId(1)));
        assert!(!q.remove(&key("a"), TaskId(1)));
        assert_eq!(q.depth_by_servable()["a"], 1);
        assert!(q.remove(&key("a"), TaskId(2)));
        assert!(q.is_empty() && q.depth_by_servable().is_empty());
    }
}
