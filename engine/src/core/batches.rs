//! The batches running on workers, by id.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use flotilla_protocol::TaskId;
use flotilla_protocol::interchange::BatchId;

use super::worker_table::WorkerKey;

/// One batch out on a worker.
#[derive(Debug)]
pub(super) struct Batch {
    /// The worker running it.
    pub(super) worker: WorkerKey,
    /// The servable it runs (its adaptive controller learns from it).
    pub(super) servable: Arc<str>,
    /// Its tasks.
    pub(super) tasks: Vec<TaskId>,
}

/// Running batches and the next batch id.
#[derive(Debug)]
pub(super) struct BatchTable {
    running: FxHashMap<BatchId, Batch>,
    next: u64,
}

impl BatchTable {
    /// No batches; ids start at `first` (from the clock, so a worker that
    /// reconnects after a restart holds ids no new batch will have).
    pub(super) fn new(first: u64) -> Self {
        BatchTable {
            running: FxHashMap::default(),
            next: first.max(1),
        }
    }

    /// A fresh batch id.
    pub(super) fn next_id(&mut self) -> BatchId {
        let id = BatchId(self.next);
        self.next += 1;
        id
    }

    /// Records a batch sent out.
    pub(super) fn insert(&mut self, id: BatchId, batch: Batch) {
        self.running.insert(id, batch);
    }

    /// True if `id` is running.
    pub(super) fn contains(&self, id: &BatchId) -> bool {
        self.running.contains_key(id)
    }

    /// Removes batch `id` if `worker` runs it.
    pub(super) fn take_if_on(&mut self, id: &BatchId, worker: WorkerKey) -> Option<Batch> {
        if self.running.get(id).is_some_and(|b| b.worker == worker) {
            self.running.remove(id)
        } else {
            None
        }
    }

    /// Removes batch `id`.
    pub(super) fn remove(&mut self, id: &BatchId) -> Option<Batch> {
        self.running.remove(id)
    }

    /// Running batches.
    pub(super) fn len(&self) -> usize {
        self.running.len()
    }

    /// True if none runs.
    pub(super) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Every running batch.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Batch> {
        self.running.values()
    }
}
