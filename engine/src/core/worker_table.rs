//! The worker table: every registered worker, keyed by [`WorkerKey`], with
//! its indexes (by worker id and by connection), the set of workers that may
//! take work, and the round-robin dispatch cursor; and [`LossReason`], why a
//! worker is removed.
//!
//! A worker's long-poll, batches and running-task count are private to this
//! module: they change only through the table, which keeps the ready set
//! true to them (every worker that holds a long-poll with a free slot is in
//! it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use flotilla_protocol::interchange::{BatchId, SlotResources};
use flotilla_protocol::servable::ServableRef;

use super::io::{PipeId, ReplyTo};
use super::tasks::Attempt;
use super::warmth::SlotBoard;

/// A worker as the core numbers it (its process id may register again
/// under the same key after a reconnect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct WorkerKey(u64);

impl fmt::Display for WorkerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block (one provider job) as the core numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct BlockId(pub(super) u32);

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a worker is removed from the table. Scheduling decides on the
/// variant; the words (for losses lists, events and logs) come from its
/// [`fmt::Display`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LossReason {
    /// It said it leaves (its wall time is nearly over), for `reason`.
    Left {
        /// What the worker said.
        reason: String,
    },
    /// Its connection closed.
    ConnectionClosed,
    /// It stopped sending heartbeats.
    HeartbeatSilence,
    /// Its block ended.
    BlockEnded {
        /// The block.
        block: BlockId,
    },
    /// Another worker registered on its connection.
    Replaced,
}

impl LossReason {
    /// True if the attempts of the tasks it ran count (the worker did not
    /// leave on its own).
    pub(super) fn counts_attempts(&self) -> bool {
        !matches!(self, LossReason::Left { .. })
    }

    /// What the attempt of each task it ran comes to.
    pub(super) fn attempt(&self) -> Attempt {
        if self.counts_attempts() {
            Attempt::Counts
        } else {
            // Not the task's doing: this attempt does not count.
            Attempt::Forgiven
        }
    }

    /// True if the worker process may have died of one of its tasks, so its
    /// tasks run alone next ("suspects"): not when it left or its block
    /// ended.
    pub(super) fn may_be_task_fault(&self) -> bool {
        !matches!(
            self,
            LossReason::Left { .. } | LossReason::BlockEnded { .. }
        )
    }

    /// True if the loss is an event for `flotilla events` (a worker that
    /// leaves has its own).
    pub(super) fn is_loss_event(&self) -> bool {
        !matches!(self, LossReason::Left { .. })
    }
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossReason::Left { reason } => write!(f, "it left ({reason})"),
            LossReason::ConnectionClosed => f.write_str("its connection closed"),
            LossReason::HeartbeatSilence => f.write_str("it missed its heartbeats"),
            LossReason::BlockEnded { block } => write!(f, "its block {block} ended"),
            LossReason::Replaced => f.write_str("another worker registered on its connection"),
        }
    }
}

/// A worker taken out of the table, and why.
#[derive(Debug)]
pub(super) struct Lost {
    /// The worker as it was.
    pub(super) worker: Worker,
    /// Why it is gone.
    pub(super) reason: LossReason,
}

/// One registered worker.
#[derive(Debug)]
pub(super) struct Worker {
    /// What it said about itself when it registered.
    pub(super) about: Registration,
    pub(super) pipe: PipeId,
    pub(super) last_seen_us: u64,
    /// Servables whose record this worker has been sent.
    pub(super) specs_sent: HashSet<Arc<str>>,
    held_poll: Option<(ReplyTo, u64)>,
    /// A suspect task's batch it runs alone: no other work until it ends.
    isolating: Option<BatchId>,
    batches: FxHashSet<BatchId>,
    tasks: u32,
    /// Its slots: what each runs and holds warm.
    pub(super) board: SlotBoard,
}

/// What a worker says about itself when it registers.
#[derive(Debug)]
pub(super) struct Registration {
    pub(super) id: Arc<str>,
    pub(super) block: Option<BlockId>,
    /// The pool its block belongs to (an index into the core's pools);
    /// `None` for a worker no block of this daemon started.
    pub(super) pool: Option<usize>,
    pub(super) host: String,
    pub(super) pid: u32,
    pub(super) node: Option<String>,
    pub(super) rank: Option<u32>,
    /// When its job ends (µs since the epoch), if it said.
    pub(super) ends_at_us: Option<u64>,
    pub(super) slots: u32,
    /// What it can run.
    pub(super) servables: Vec<ServableRef>,
    /// The largest frame it accepts: no `Work` reply to it is larger.
    pub(super) max_frame_bytes: usize,
    /// What each of its slots holds (accelerators, cores), as it said.
    pub(super) slot_resources: Vec<SlotResources>,
}

impl Registration {
    /// Accelerators every one of its slots holds: the worker hands a batch
    /// to whichever slot is free, so a servable that needs `n` goes only
    /// to a worker whose every slot has `n` (a site shares them evenly).
    pub(super) fn accelerators_per_slot(&self) -> u32 {
        self.slot_resources
            .iter()
            .map(|s| s.devices.len() as u32)
            .min()
            .unwrap_or(0)
    }
}

impl Worker {
    /// Slots it could fill now (none while it isolates a suspect).
    pub(super) fn free_slots(&self) -> u32 {
        if self.isolating.is_some() {
            return 0;
        }
        self.about
            .slots
            .saturating_sub(self.batches.len() as u32)
            .saturating_sub(self.board.warming())
    }

    /// Tasks running on it.
    pub(super) fn tasks(&self) -> u32 {
        self.tasks
    }

    /// True if it runs no batch.
    pub(super) fn is_idle(&self) -> bool {
        self.batches.is_empty()
    }

    /// The long-poll it holds, if any.
    pub(super) fn held_poll(&self) -> Option<ReplyTo> {
        self.held_poll.map(|(to, _)| to)
    }

    /// The batches it runs.
    pub(super) fn batches(&self) -> impl Iterator<Item = &BatchId> {
        self.batches.iter()
    }

    /// Microseconds left before it must stop taking work (its job's end
    /// less `margin`), if its job has an end.
    pub(super) fn time_left(&self, margin: u64, now: u64) -> Option<u64> {
        self.about
            .ends_at_us
            .map(|end| end.saturating_sub(margin).saturating_sub(now))
    }
}

/// Every worker, its indexes, the ready set and the dispatch cursor.
#[derive(Debug)]
pub(super) struct WorkerTable {
    workers: BTreeMap<WorkerKey, Worker>,
    by_id: HashMap<Arc<str>, WorkerKey>,
    by_pipe: FxHashMap<PipeId, WorkerKey>,
    next_key: u64,
    /// Workers that may hold a long-poll with a free slot: every worker
    /// that does is here (others are dropped when dispatch meets them), so
    /// dispatch looks at the few that can take work, not at every worker.
    ready: BTreeSet<WorkerKey>,
    /// The worker dispatch last gave work to; the next round starts after.
    cursor: WorkerKey,
}

impl Default for WorkerTable {
    fn default() -> Self {
        WorkerTable {
            workers: BTreeMap::new(),
            by_id: HashMap::new(),
            by_pipe: FxHashMap::default(),
            next_key: 1,
            ready: BTreeSet::new(),
            cursor: WorkerKey(0),
        }
    }
}

impl WorkerTable {
    /// Adds a newly registered worker on `pipe`; returns its key.
    pub(super) fn register(&mut self, r: Registration, pipe: PipeId, now: u64) -> WorkerKey {
        let key = WorkerKey(self.next_key);
        self.next_key += 1;
        self.by_id.insert(r.id.clone(), key);
        let board = SlotBoard::new(r.slots);
        self.workers.insert(
            key,
            Worker {
                about: r,
                pipe,
                last_seen_us: now,
                specs_sent: HashSet::new(),
                held_poll: None,
                isolating: None,
                batches: FxHashSet::default(),
                tasks: 0,
                board,
            },
        );
        key
    }

    /// A known worker came back on `pipe`: it keeps its batches, is sent
    /// specs afresh, and its old long-poll (returned) is answered.
    pub(super) fn reconnect(&mut self, key: WorkerKey, pipe: PipeId, now: u64) -> Option<ReplyTo> {
        let w = self.workers.get_mut(&key)?;
        self.by_pipe.remove(&w.pipe);
        w.pipe = pipe;
        w.last_seen_us = now;
        w.specs_sent.clear();
        w.held_poll.take().map(|(old, _)| old)
    }

    /// Binds connection `pipe` to `key`; returns the other worker that was
    /// bound to it, if any.
    pub(super) fn bind_pipe(&mut self, pipe: PipeId, key: WorkerKey) -> Option<WorkerKey> {
        self.by_pipe.insert(pipe, key).filter(|old| *old != key)
    }

    /// The worker with process id `id`.
    pub(super) fn by_id(&self, id: &str) -> Option<WorkerKey> {
        self.by_id.get(id).copied()
    }

    /// The worker on connection `pipe`.
    pub(super) fn by_pipe(&self, pipe: PipeId) -> Option<WorkerKey> {
        self.by_pipe.get(&pipe).copied()
    }

    /// The worker `key`.
    pub(super) fn get(&self, key: WorkerKey) -> Option<&Worker> {
        self.workers.get(&key)
    }

    /// The worker `key`, to change what is not its work.
    pub(super) fn get_mut(&mut self, key: WorkerKey) -> Option<&mut Worker> {
        self.workers.get_mut(&key)
    }

    /// Every worker, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (WorkerKey, &Worker)> {
        self.workers.iter().map(|(k, w)| (*k, w))
    }

    /// Workers registered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.workers.len()
    }

    /// True if none is.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// The workers of `block`, with their connections.
    pub(super) fn in_block(&self, block: BlockId) -> Vec<(WorkerKey, PipeId)> {
        self.workers
            .iter()
            .filter(|(_, w)| w.about.block == Some(block))
            .map(|(&k, w)| (k, w.pipe))
            .collect()
    }

    /// Removes worker `key` for `reason`; its batches are the caller's to
    /// settle, as the reason says.
    pub(super) fn lose(&mut self, key: WorkerKey, reason: LossReason) -> Option<Lost> {
        let worker = self.workers.remove(&key)?;
        self.by_id.remove(&worker.about.id);
        if self.by_pipe.get(&worker.pipe) == Some(&key) {
            self.by_pipe.remove(&worker.pipe);
        }
        self.ready.remove(&key);
        Some(Lost { worker, reason })
    }

    /// Worker `key` waits for work on `to`; returns the long-poll it held
    /// before (to be answered empty).
    pub(super) fn hold_poll(&mut self, key: WorkerKey, to: ReplyTo, now: u64) -> Option<ReplyTo> {
        let w = self.workers.get_mut(&key)?;
        self.ready.insert(key);
        w.held_poll.replace((to, now)).map(|(old, _)| old)
    }

    /// Takes worker `key`'s long-poll, to answer it.
    pub(super) fn take_poll(&mut self, key: WorkerKey) -> Option<ReplyTo> {
        self.workers
            .get_mut(&key)?
            .held_poll
            .take()
            .map(|(to, _)| to)
    }

    /// Takes every long-poll, in key order.
    pub(super) fn take_all_polls(&mut self) -> Vec<ReplyTo> {
        self.workers
            .values_mut()
            .filter_map(|w| w.held_poll.take().map(|(to, _)| to))
            .collect()
    }

    /// Takes the long-polls held `period` or longer (they are answered
    /// empty, so the worker knows the daemon is alive).
    pub(super) fn take_stale_polls(&mut self, now: u64, period: u64) -> Vec<ReplyTo> {
        let mut stale = Vec::new();
        for w in self.workers.values_mut() {
            if let Some((to, since)) = w.held_poll
                && now.saturating_sub(since) >= period
            {
                w.held_poll = None;
                stale.push(to);
            }
        }
        stale
    }

    /// Workers not heard from for more than `threshold`.
    pub(super) fn silent(&self, now: u64, threshold: u64) -> Vec<(WorkerKey, PipeId)> {
        self.workers
            .iter()
            .filter(|(_, w)| now.saturating_sub(w.last_seen_us) > threshold)
            .map(|(&k, w)| (k, w.pipe))
            .collect()
    }

    /// Worker `key` runs `batch` of `tasks` tasks of `servable` now, in
    /// slot `slot` (`None`: any free one); with `isolating`, alone (it
    /// takes nothing else until the batch ends). Returns the slot taken.
    pub(super) fn add_batch(
        &mut self,
        key: WorkerKey,
        batch: BatchId,
        tasks: u32,
        isolating: bool,
        (servable, slot, builtin): (&Arc<str>, Option<u32>, bool),
        now: u64,
    ) -> Option<u32> {
        let mut taken = None;
        if let Some(w) = self.workers.get_mut(&key) {
            taken = w.board.start_batch(batch, servable, slot, builtin, now);
            w.batches.insert(batch);
            w.tasks += tasks;
            if isolating {
                w.isolating = Some(batch);
            }
        }
        taken
    }

    /// Worker `key` finished `batch` of `tasks` tasks at `now`: its slot
    /// is free.
    pub(super) fn batch_done(&mut self, key: WorkerKey, batch: BatchId, tasks: u32, now: u64) {
        if let Some(w) = self.workers.get_mut(&key) {
            w.board.end_batch(batch, now);
            w.batches.remove(&batch);
            if w.isolating == Some(batch) {
                w.isolating = None;
            }
            self.ready.insert(key);
            w.tasks = w.tasks.saturating_sub(tasks);
        }
    }

    /// Where the last dispatch round stopped.
    pub(super) fn cursor(&self) -> WorkerKey {
        self.cursor
    }

    /// Dispatch gave work to `key`: the next round starts after it.
    pub(super) fn advance_cursor(&mut self, key: WorkerKey) {
        self.cursor = key;
    }

    /// The key before every other, to start a round at the first worker.
    pub(super) fn first_cursor() -> WorkerKey {
        WorkerKey(0)
    }

    /// Workers holding a long-poll with a free slot, round-robin from the
    /// one after `cursor`; forgets the ones in the ready set that no longer
    /// are.
    pub(super) fn ready_workers(&mut self, cursor: WorkerKey) -> Vec<WorkerKey> {
        let mut found = Vec::new();
        let mut stale = Vec::new();
        for &key in self
            .ready
            .range((Bound::Excluded(cursor), Bound::Unbounded))
            .chain(self.ready.range(..=cursor))
        {
            let can_take = self
                .workers
                .get(&key)
                .is_some_and(|w| w.held_poll.is_some() && w.free_slots() > 0);
            if can_take {
                found.push(key);
            } else {
                stale.push(key);
            }
        }
        for key in stale {
            self.ready.remove(&key);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: &str, slots: u32) -> Registration {
        Registration {
            id: Arc::from(id),
            block: Some(BlockId(3)),
            pool: Some(0),
            host: "h".into(),
            pid: 1,
            node: None,
            rank: None,
            ends_at_us: None,
            slots,
            servables: vec![ServableRef::Any],
            max_frame_bytes: 1 << 20,
            slot_resources: vec![],
        }
    }

    #[test]
    fn loss_reasons_read_as_before() {
        let said = |r: LossReason| r.to_string();
        assert_eq!(
            said(LossReason::Left {
                reason: "walltime".into()
            }),
            "it left (walltime)"
        );
        assert_eq!(said(LossReason::ConnectionClosed), "its connection closed");
        assert_eq!(
            said(LossReason::HeartbeatSilence),
            "it missed its heartbeats"
        );
        assert_eq!(
            said(LossReason::BlockEnded { block: BlockId(4) }),
            "its block 4 ended"
        );
        assert_eq!(
            said(LossReason::Replaced),
            "another worker registered on its connection"
        );
    }

    #[test]
    fn only_a_worker_that_left_forgives_attempts_and_only_a_death_makes_suspects() {
        let left = LossReason::Left {
            reason: "walltime".into(),
        };
        let block = LossReason::BlockEnded { block: BlockId(1) };
        assert!(!left.counts_attempts() && !left.may_be_task_fault() && !left.is_loss_event());
        assert!(block.counts_attempts() && !block.may_be_task_fault() && block.is_loss_event());
        for died in [
            LossReason::ConnectionClosed,
            LossReason::HeartbeatSilence,
            LossReason::Replaced,
        ] {
            assert!(died.counts_attempts(), "{died}");
            assert!(died.may_be_task_fault(), "{died}");
            assert!(died.is_loss_event(), "{died}");
        }
    }

    #[test]
    fn the_ready_set_follows_polls_and_free_slots() {
        let mut t = WorkerTable::default();
        let a = t.register(registration("a", 1), PipeId(1), 0);
        let b = t.register(registration("b", 1), PipeId(2), 0);
        assert!(t.ready_workers(WorkerTable::first_cursor()).is_empty());
        assert_eq!(t.hold_poll(a, ReplyTo(1), 0), None);
        assert_eq!(t.hold_poll(b, ReplyTo(2), 0), None);
        assert_eq!(t.ready_workers(a), [b, a], "round-robin after the cursor");
        let echo: Arc<str> = Arc::from("echo");
        t.add_batch(a, BatchId(1), 2, false, (&echo, None, true), 0);
        assert_eq!(
            t.ready_workers(WorkerTable::first_cursor()),
            [b],
            "a is full"
        );
        t.batch_done(a, BatchId(1), 2, 1);
        assert_eq!(t.ready_workers(WorkerTable::first_cursor()), [a, b]);
        assert_eq!(t.take_poll(b), Some(ReplyTo(2)));
        assert_eq!(t.ready_workers(WorkerTable::first_cursor()), [a]);
        t.add_batch(a, BatchId(2), 1, true, (&echo, None, true), 2);
        assert_eq!(t.get(a).unwrap().free_slots(), 0, "isolating");
    }

    #[test]
    fn removal_and_reconnection_keep_the_indexes_true() {
        let mut t = WorkerTable::default();
        let a = t.register(registration("a", 1), PipeId(1), 0);
        assert_eq!(t.bind_pipe(PipeId(1), a), None);
        assert_eq!(t.by_pipe(PipeId(1)), Some(a));
        t.hold_poll(a, ReplyTo(9), 0);
        assert_eq!(t.reconnect(a, PipeId(2), 5), Some(ReplyTo(9)));
        assert_eq!(t.by_pipe(PipeId(1)), None);
        assert_eq!(t.bind_pipe(PipeId(2), a), None);
        let b = t.register(registration("b", 1), PipeId(2), 6);
        assert_eq!(t.bind_pipe(PipeId(2), b), Some(a), "a was on that pipe");
        assert_eq!(t.in_block(BlockId(3)), [(a, PipeId(2)), (b, PipeId(2))]);
        let lost = t.lose(a, LossReason::ConnectionClosed).expect("known");
        assert_eq!(
            (&*lost.worker.about.id, lost.reason),
            ("a", LossReason::ConnectionClosed)
        );
        assert!(t.lose(a, LossReason::ConnectionClosed).is_none(), "gone");
        assert_eq!(t.by_pipe(PipeId(2)), Some(b), "b keeps the pipe");
        assert_eq!(t.by_id("a"), None);
        assert_eq!(t.len(), 1);
    }
}
