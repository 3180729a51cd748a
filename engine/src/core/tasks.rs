//! The task table: every task the core knows, the order in which results
//! expire, the task ids handed out, and the totals.
//!
//! A task's life is its [`Phase`]: queued, running one batch on one worker,
//! or final with its outcome. The phase is private to this module and
//! changes only through the table's mutators ([`TaskTable::enqueue`],
//! [`TaskTable::assign`], [`TaskTable::requeue`], [`TaskTable::advance`],
//! [`TaskTable::finish`]), each of which refuses a transition that does not
//! start from the phase it needs, so a queued task cannot carry a batch and
//! a final task cannot run again. The protocol's [`TaskState`] is derived
//! from the phase for views and records.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use flotilla_protocol::client::Totals;
use flotilla_protocol::interchange::BatchId;
use flotilla_protocol::task::{MemoUse, Outcome, TaskState, TaskTimings, TaskView};
use flotilla_protocol::{Payload, TaskId};

use super::access::TaskScope;
use super::catalog::ServableInfo;
use super::memo::MemoKey;
use super::queues::{BatchRule, QueueKey};
use super::records::StoredResult;
use super::task_index::{LISTED, StateSets, TaskIndex, base_name};

/// How a final task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
    /// It produced an output.
    Completed,
    /// It failed (its servable's error, a lost worker too often, ...).
    Failed,
    /// A client cancelled it.
    Cancelled,
}

impl Ending {
    /// The protocol's state for it.
    pub(super) fn state(self) -> TaskState {
        match self {
            Ending::Completed => TaskState::Completed,
            Ending::Failed => TaskState::Failed,
            Ending::Cancelled => TaskState::Cancelled,
        }
    }

    /// How a stored result ended (a record is only ever written for a final
    /// state; anything else reads as a failure).
    fn of_state(state: TaskState) -> Ending {
        match state {
            TaskState::Completed => Ending::Completed,
            TaskState::Cancelled => Ending::Cancelled,
            _ => Ending::Failed,
        }
    }
}

/// Where a task is in its life.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Phase {
    /// Waiting in a queue (or held for a reconnecting worker, or behind an
    /// identical request in flight).
    Queued,
    /// In `batch`, on `worker`.
    Running {
        /// The batch it is part of.
        batch: BatchId,
        /// The worker running that batch.
        worker: Arc<str>,
    },
    /// Done, with the first outcome that arrived.
    Final {
        /// How it ended.
        ending: Ending,
        /// Output or error.
        outcome: Outcome,
    },
}

/// Whether an attempt that ended without a result counts towards the
/// task's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    /// It counts (the task may have caused it).
    Counts,
    /// It does not (its worker left on its own).
    Forgiven,
}

/// A pipeline's position.
#[derive(Debug, Clone)]
pub(super) struct PipelineProgress {
    /// Its steps, resolved.
    pub(super) steps: Arc<[ServableInfo]>,
    /// The step running or queued now.
    pub(super) step: usize,
}

/// One task.
#[derive(Debug)]
pub(super) struct Task {
    /// What the client asked for (canonical name).
    pub(super) servable: Arc<str>,
    /// The uid that submitted it: only they and the daemon's user see it
    /// (see [`super::access::TaskScope`]).
    pub(super) owner: u32,
    pub(super) params: Payload,
    /// The input of the next call: the request's, or for a pipeline the
    /// previous step's output.
    pub(super) input: Payload,
    /// What runs next: the servable itself, or the pipeline's current step.
    pub(super) target: Arc<str>,
    /// How the target batches.
    pub(super) rule: BatchRule,
    /// Dispatched alone (retried input by input after a batch failed).
    pub(super) solo: bool,
    /// Set for requests to memoizing servables.
    pub(super) memo_key: Option<MemoKey>,
    /// How the memo store answered it, if it did.
    pub(super) memo: Option<MemoUse>,
    pub(super) pipeline: Option<PipelineProgress>,
    /// Why each earlier attempt ended without a result (worker losses).
    pub(super) losses: Vec<String>,
    pub(super) timings: TaskTimings,
    phase: Phase,
    attempts: u32,
    /// The worker that last ran it (kept after it ends or goes back to
    /// the queue, for views).
    last_worker: Option<Arc<str>>,
    fetched_us: Option<u64>,
    waiters: Vec<u64>,
}

impl Task {
    /// A new task for `info`, submitted by uid `owner`, queued.
    pub(super) fn new(
        info: &ServableInfo,
        owner: u32,
        params: Payload,
        input: Payload,
        submitted_us: u64,
    ) -> Task {
        let pipeline = info.steps.as_ref().map(|steps| PipelineProgress {
            steps: steps.clone(),
            step: 0,
        });
        let (target, rule) = match &pipeline {
            Some(p) => (p.steps[0].name.clone(), p.steps[0].batch),
            None => (info.name.clone(), info.batch),
        };
        Task {
            servable: info.name.clone(),
            owner,
            params,
            input,
            target,
            rule,
            solo: false,
            memo_key: None,
            memo: None,
            pipeline,
            losses: Vec::new(),
            timings: TaskTimings {
                submitted_us,
                ..TaskTimings::default()
            },
            phase: Phase::Queued,
            attempts: 0,
            last_worker: None,
            fetched_us: None,
            waiters: Vec::new(),
        }
    }

    /// The protocol's state, derived from the phase.
    pub(super) fn state(&self) -> TaskState {
        match &self.phase {
            Phase::Queued => TaskState::Queued,
            Phase::Running { .. } => TaskState::Running,
            Phase::Final { ending, .. } => ending.state(),
        }
    }

    /// True once it has its outcome.
    pub(super) fn is_final(&self) -> bool {
        matches!(self.phase, Phase::Final { .. })
    }

    /// True while it waits for a worker.
    pub(super) fn is_queued(&self) -> bool {
        matches!(self.phase, Phase::Queued)
    }

    /// True if it runs in `batch` now.
    pub(super) fn runs_in(&self, batch: BatchId) -> bool {
        matches!(&self.phase, Phase::Running { batch: b, .. } if *b == batch)
    }

    /// Dispatches so far (less those forgiven).
    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The queue it belongs in.
    pub(super) fn queue_key(&self) -> QueueKey {
        QueueKey {
            servable: self.target.clone(),
            params: self.params.clone(),
            solo: self.solo,
        }
    }

    /// How that queue batches.
    pub(super) fn queue_rule(&self) -> BatchRule {
        if self.solo {
            BatchRule::SINGLE
        } else {
            self.rule
        }
    }

    /// True if the task needs `id` (a servable it runs or will run).
    pub(super) fn uses(&self, id: &str) -> bool {
        &*self.target == id
            || self
                .pipeline
                .as_ref()
                .is_some_and(|p| p.steps[p.step..].iter().any(|s| &*s.name == id))
    }

    /// The store record of its final state (none before it has one).
    fn result_record(&self) -> Option<StoredResult> {
        let Phase::Final { ending, outcome } = &self.phase else {
            return None;
        };
        Some(StoredResult {
            state: ending.state(),
            outcome: outcome.clone(),
            attempts: self.attempts,
            worker: self.last_worker.as_deref().map(str::to_owned),
            timings: self.timings,
            memo: self.memo,
        })
    }
}

/// What [`TaskTable::finish`] leaves for the rest of the core to do.
#[derive(Debug)]
pub(super) struct Finished {
    /// The store record of the result.
    pub(super) record: StoredResult,
    /// Client waits to tell.
    pub(super) waiters: Vec<u64>,
    /// Its memo key, for memoizing servables.
    pub(super) memo_key: Option<MemoKey>,
    /// True if a worker ran it (the memo store did not answer it).
    pub(super) ran: bool,
    /// Its servable.
    pub(super) servable: Arc<str>,
    /// The worker that ran it last.
    pub(super) worker: Option<Arc<str>>,
    /// When it was accepted (µs since the epoch).
    pub(super) submitted_us: u64,
}

/// Something that happened to a task, for the task event stream: the
/// table notes it, the core carries it to the log after each event.
#[derive(Debug, Clone)]
pub(super) struct TaskNote {
    /// The task.
    pub(super) id: TaskId,
    /// Its servable.
    pub(super) servable: Arc<str>,
    /// Its owner (who may read the event).
    pub(super) owner: u32,
    /// `accepted`, `dispatched`, `retried`, `finished`, `failed`,
    /// `cancelled`.
    pub(super) kind: &'static str,
    /// The worker concerned.
    pub(super) worker: Option<Arc<str>>,
    /// Attempts so far.
    pub(super) attempt: u32,
    /// Details.
    pub(super) message: String,
}

impl TaskNote {
    fn of(id: TaskId, task: &Task, kind: &'static str, message: String) -> TaskNote {
        TaskNote {
            id,
            servable: task.servable.clone(),
            owner: task.owner,
            kind,
            worker: task.last_worker.clone(),
            attempt: task.attempts,
            message,
        }
    }
}

/// Every task, plus the orders results expire in, task ids and totals.
#[derive(Debug, Default)]
pub(super) struct TaskTable {
    /// Boxed: a task is a few hundred bytes, and a million-task table
    /// grown by rehashing would move (and have the kernel zero) every one
    /// of them at each doubling; boxed, a rehash moves two words per task.
    tasks: FxHashMap<TaskId, Box<Task>>,
    /// Task ids by state, servable and owner (see `task_index.rs`).
    index: TaskIndex,
    /// What happened since the core last took the notes.
    notes: Vec<TaskNote>,
    /// Final tasks by the time they ended.
    finished_order: VecDeque<(u64, TaskId)>,
    /// Final tasks by their first fetch.
    fetched_order: VecDeque<(u64, TaskId)>,
    totals: Totals,
    next_id: u64,
    reserved_until: u64,
}

impl TaskTable {
    /// An empty table whose ids start above `reserved_until` (what the
    /// store says was handed out before).
    /// `daemon_owner` sees every task, so its own tasks need no index of
    /// their own.
    pub(super) fn new(reserved_until: u64, capacity: usize, daemon_owner: u32) -> Self {
        TaskTable {
            tasks: FxHashMap::with_capacity_and_hasher(capacity, Default::default()),
            index: TaskIndex::seen_whole_by(daemon_owner),
            next_id: reserved_until.max(1),
            reserved_until,
            ..TaskTable::default()
        }
    }

    /// Hands out `n` consecutive ids; the first, and the new high-water
    /// mark to store when the reservation ran out.
    pub(super) fn allocate(&mut self, n: u64, reservation: u64) -> (u64, Option<u64>) {
        let first = self.next_id;
        self.next_id += n;
        let mut reserve = None;
        if self.next_id > self.reserved_until {
            self.reserved_until = self.next_id + reservation;
            reserve = Some(self.reserved_until);
        }
        (first, reserve)
    }

    /// Ids below this are reserved (the high-water mark the store should
    /// hold).
    pub(super) fn reserved_until(&self) -> u64 {
        self.reserved_until
    }

    /// The task `id`.
    pub(super) fn get(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id).map(|t| &**t)
    }

    /// The task `id` if it is in `scope`: a client's way to a task, for
    /// which a task out of its scope does not exist.
    pub(super) fn get_in(&self, id: &TaskId, scope: TaskScope) -> Option<&Task> {
        self.get(id).filter(|t| scope.covers(t.owner))
    }

    /// The task `id`, to change what is not its phase.
    pub(super) fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(id).map(|t| &mut **t)
    }

    /// Every task.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values().map(|t| &**t)
    }

    /// Tasks held.
    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// How many of `ids` in `scope` are not final yet.
    pub(super) fn unfinished(&self, ids: &[TaskId], scope: TaskScope) -> usize {
        ids.iter()
            .filter(|id| self.get_in(id, scope).is_some_and(|t| !t.is_final()))
            .count()
    }

    /// Counters since start.
    pub(super) fn totals(&self) -> Totals {
        self.totals
    }

    /// Counts `n` accepted tasks.
    pub(super) fn count_accepted(&mut self, n: u64) {
        self.totals.accepted += n;
    }

    /// Counts `n` tasks sent back to the queue after a worker loss.
    pub(super) fn count_requeued(&mut self, n: u64) {
        self.totals.requeued += n;
    }

    /// Adds a new task (queued); none if the id is taken, else the task.
    /// A task outside the table is always queued: only [`Task::new`] makes
    /// one, and only the table moves a phase.
    pub(super) fn enqueue(&mut self, id: TaskId, task: Task) -> Option<&Task> {
        debug_assert!(task.is_queued());
        match self.tasks.entry(id) {
            Entry::Occupied(_) => None,
            Entry::Vacant(vacant) => {
                self.index
                    .insert(id, &task.servable, task.owner, TaskState::Queued);
                self.notes
                    .push(TaskNote::of(id, &task, "accepted", String::new()));
                Some(vacant.insert(Box::new(task)))
            }
        }
    }

    /// Adds a task recovered from the store with its result.
    pub(super) fn restore_final(&mut self, id: TaskId, mut task: Task, stored: StoredResult) {
        task.phase = Phase::Final {
            ending: Ending::of_state(stored.state),
            outcome: stored.outcome,
        };
        task.memo = stored.memo;
        task.attempts = stored.attempts;
        task.last_worker = stored.worker.map(Arc::from);
        task.timings = stored.timings;
        self.finished_order
            .push_back((task.timings.finished_us, id));
        self.index
            .insert(id, &task.servable, task.owner, task.state());
        self.tasks.insert(id, Box::new(task));
    }

    /// Queued → running `batch` on `worker`: one more attempt. Refused
    /// (none) unless the task is queued; else the task, for its input.
    pub(super) fn assign(
        &mut self,
        id: TaskId,
        batch: BatchId,
        worker: &Arc<str>,
        now: u64,
    ) -> Option<&Task> {
        let task = self.tasks.get_mut(&id)?;
        if !task.is_queued() {
            return None;
        }
        task.phase = Phase::Running {
            batch,
            worker: worker.clone(),
        };
        task.attempts += 1;
        task.last_worker = Some(worker.clone());
        task.timings.dispatched_us = now;
        self.index.moved(
            id,
            &task.servable,
            task.owner,
            TaskState::Queued,
            TaskState::Running,
        );
        self.notes
            .push(TaskNote::of(id, task, "dispatched", String::new()));
        Some(task)
    }

    /// Running `batch` → queued again, the attempt counted or forgiven,
    /// `why` told in the task's `retried` event. Refused (false) unless
    /// the task runs in `batch`.
    pub(super) fn requeue(
        &mut self,
        id: TaskId,
        batch: BatchId,
        attempt: Attempt,
        why: &str,
    ) -> bool {
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        if !task.runs_in(batch) {
            return false;
        }
        task.phase = Phase::Queued;
        if attempt == Attempt::Forgiven {
            task.attempts = task.attempts.saturating_sub(1);
        }
        self.index.moved(
            id,
            &task.servable,
            task.owner,
            TaskState::Running,
            TaskState::Queued,
        );
        let why = match attempt {
            Attempt::Forgiven => format!("{why} (the attempt is not counted)"),
            Attempt::Counts => why.to_owned(),
        };
        self.notes.push(TaskNote::of(id, task, "retried", why));
        true
    }

    /// A pipeline step produced `output` and another step follows: the
    /// task is queued for it with that output as input. Returns the queue
    /// it goes to; none (nothing changed) if the task is final, not a
    /// pipeline, or at its last step.
    pub(super) fn advance(
        &mut self,
        id: TaskId,
        output: &Payload,
        now: u64,
    ) -> Option<(QueueKey, BatchRule)> {
        let task = self.tasks.get_mut(&id)?;
        if task.is_final() {
            return None;
        }
        let before = task.state();
        let progress = task.pipeline.as_mut()?;
        if progress.step + 1 >= progress.steps.len() {
            return None;
        }
        progress.step += 1;
        let next = &progress.steps[progress.step];
        task.target = next.name.clone();
        task.rule = next.batch;
        task.input = output.clone();
        task.solo = false;
        task.phase = Phase::Queued;
        task.timings.run_us = 0;
        task.timings.dispatched_us = now;
        self.index
            .moved(id, &task.servable, task.owner, before, TaskState::Queued);
        Some((task.queue_key(), task.queue_rule()))
    }

    /// Any unfinished phase → final. Records the time (and the run time
    /// and worker when given), counts it, and returns what the rest of the
    /// core must do about it; none (nothing changed) if it was final
    /// already or is unknown.
    pub(super) fn finish(
        &mut self,
        id: TaskId,
        ending: Ending,
        outcome: Outcome,
        worker: Option<Arc<str>>,
        run_us: u64,
        now: u64,
    ) -> Option<Finished> {
        let task = self.tasks.get_mut(&id)?;
        if task.is_final() {
            return None;
        }
        let before = task.state();
        let message = match &outcome {
            Outcome::Error(e) => e.clone(),
            Outcome::Output(_) if task.memo.is_some() => "answered by the memo store".into(),
            Outcome::Output(_) => String::new(),
        };
        task.phase = Phase::Final { ending, outcome };
        task.timings.finished_us = now;
        if run_us > 0 {
            task.timings.run_us = run_us;
        }
        if worker.is_some() {
            task.last_worker = worker;
        }
        self.index
            .moved(id, &task.servable, task.owner, before, ending.state());
        let kind = match ending {
            Ending::Completed => "finished",
            Ending::Failed => "failed",
            Ending::Cancelled => "cancelled",
        };
        self.notes.push(TaskNote::of(id, task, kind, message));
        let record = task.result_record()?;
        let finished = Finished {
            record,
            waiters: std::mem::take(&mut task.waiters),
            memo_key: task.memo_key,
            ran: task.memo.is_none(),
            servable: task.servable.clone(),
            worker: task.last_worker.clone(),
            submitted_us: task.timings.submitted_us,
        };
        match ending {
            Ending::Completed => self.totals.completed += 1,
            Ending::Failed => self.totals.failed += 1,
            Ending::Cancelled => self.totals.cancelled += 1,
        }
        self.finished_order.push_back((now, id));
        Some(finished)
    }

    /// A task that failed without running (its servable is gone): its
    /// result record, for the store. Counts it as failed.
    pub(super) fn fail_recovered(
        &mut self,
        id: TaskId,
        mut task: Task,
        message: String,
        now: u64,
    ) -> Option<StoredResult> {
        task.phase = Phase::Final {
            ending: Ending::Failed,
            outcome: Outcome::Error(message),
        };
        task.timings.finished_us = now;
        self.totals.failed += 1;
        let record = task.result_record();
        self.index
            .insert(id, &task.servable, task.owner, TaskState::Failed);
        self.tasks.insert(id, Box::new(task));
        record
    }

    /// Registers client wait `wait` with task `id` unless it is final or
    /// out of `scope`.
    pub(super) fn add_waiter(&mut self, id: TaskId, wait: u64, scope: TaskScope) {
        if let Some(task) = self.tasks.get_mut(&id)
            && !task.is_final()
            && scope.covers(task.owner)
        {
            task.waiters.push(wait);
        }
    }

    /// A client whose scope is `scope` fetched `id`'s result: the first
    /// fetch in scope starts the shorter retention.
    pub(super) fn mark_fetched(&mut self, id: TaskId, scope: TaskScope, now: u64) {
        if let Some(task) = self.tasks.get_mut(&id)
            && scope.covers(task.owner)
            && task.is_final()
            && task.fetched_us.is_none()
        {
            task.fetched_us = Some(now);
            self.fetched_order.push_back((now, id));
        }
    }

    /// What a client whose scope is `scope` sees of `id`: a task out of
    /// its scope is as unknown as an id never handed out.
    pub(super) fn view(&self, id: TaskId, with_outcome: bool, scope: TaskScope) -> TaskView {
        match self.get_in(&id, scope) {
            Some(t) => TaskView {
                id,
                servable: t.servable.to_string(),
                state: t.state(),
                attempts: t.attempts,
                worker: t.last_worker.as_deref().map(str::to_owned),
                timings: t.timings,
                memo: t.memo,
                outcome: match &t.phase {
                    Phase::Final { outcome, .. } if with_outcome => Some(outcome.clone()),
                    _ => None,
                },
            },
            None => TaskView::unknown(id),
        }
    }

    /// Takes what happened to tasks since the last call (for the task
    /// event stream).
    pub(super) fn take_notes(&mut self) -> Vec<TaskNote> {
        std::mem::take(&mut self.notes)
    }

    /// Removes client wait `wait` from task `id` (a wait answered before
    /// this task ended).
    pub(super) fn remove_waiter(&mut self, id: TaskId, wait: u64) {
        if let Some(task) = self.tasks.get_mut(&id) {
            task.waiters.retain(|w| *w != wait);
        }
    }

    /// The index set that holds exactly the tasks in `scope` of servable
    /// name `name` (every servable when none).
    fn index_for(&self, scope: TaskScope, name: Option<&str>) -> Option<&StateSets> {
        let owner = match scope {
            TaskScope::All => None,
            TaskScope::Of(uid) => Some(uid),
        };
        let key = self.index.key_for(owner, name)?;
        self.index.sets(&key)
    }

    /// The tasks in `scope` that `query` asks for, newest first, read from
    /// the indexes (see `task_index.rs`); `now` dates `max_age_ms`.
    pub(super) fn list(
        &self,
        query: &flotilla_protocol::watch::TaskQuery,
        scope: TaskScope,
        now: u64,
    ) -> flotilla_protocol::watch::TaskList {
        let wanted = query.servable.as_deref();
        let sets = self.index_for(scope, wanted.map(base_name));
        let counts = LISTED
            .iter()
            .map(|s| (*s, sets.map_or(0, |x| x.count(*s))))
            .collect();
        let states: Vec<TaskState> = if query.states.is_empty() {
            LISTED.to_vec()
        } else {
            query.states.clone()
        };
        let limit = query.limit.min(flotilla_protocol::watch::MAX_LIST) as usize;
        let oldest = query
            .max_age_ms
            .map(|ms| now.saturating_sub(ms.saturating_mul(1000)));
        let mut tasks = Vec::new();
        let mut more = false;
        if let Some(sets) = sets {
            for id in sets.descending(&states, query.before) {
                let Some(task) = self.tasks.get(&id) else {
                    continue;
                };
                if oldest.is_some_and(|o| task.timings.submitted_us < o) {
                    // Ids follow submission order: the rest are older.
                    break;
                }
                if wanted.is_some_and(|w| w.contains('@') && *task.servable != *w) {
                    continue;
                }
                if tasks.len() == limit {
                    more = true;
                    break;
                }
                tasks.push(self.view_with_reason(id, scope));
            }
        }
        flotilla_protocol::watch::TaskList {
            tasks,
            more,
            counts,
        }
    }

    /// What a client whose scope is `scope` sees of `id` without its
    /// output, but with a failure's reason.
    pub(super) fn view_with_reason(&self, id: TaskId, scope: TaskScope) -> TaskView {
        let mut view = self.view(id, true, scope);
        if matches!(view.outcome, Some(Outcome::Output(_))) {
            view.outcome = None;
        }
        view
    }

    /// Removes final tasks whose retention is over (`fetched_ret` after
    /// their first fetch, `unfetched_ret` after they ended); returns them.
    pub(super) fn sweep(&mut self, now: u64, fetched_ret: u64, unfetched_ret: u64) -> Vec<TaskId> {
        let mut forget = Vec::new();
        for fetched in [true, false] {
            let (order, ret) = if fetched {
                (&mut self.fetched_order, fetched_ret)
            } else {
                (&mut self.finished_order, unfetched_ret)
            };
            while let Some(&(at, id)) = order.front() {
                if now.saturating_sub(at) < ret {
                    break;
                }
                order.pop_front();
                let expired = self.tasks.get(&id).is_some_and(|t| {
                    let by_fetch = t
                        .fetched_us
                        .is_some_and(|f| now.saturating_sub(f) >= fetched_ret);
                    let by_age = now.saturating_sub(t.timings.finished_us) >= unfetched_ret;
                    t.is_final() && (by_fetch || by_age)
                });
                if expired && let Some(task) = self.tasks.remove(&id) {
                    self.index
                        .remove(id, &task.servable, task.owner, task.state());
                    forget.push(id);
                }
            }
        }
        forget
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::queues::Delay;

    fn info() -> ServableInfo {
        ServableInfo::plain(
            Arc::from("noop"),
            BatchRule {
                max_batch: 4,
                delay: Delay::Fixed(0),
            },
        )
    }

    fn table_with(id: TaskId) -> TaskTable {
        let mut table = TaskTable::new(0, 1, 0);
        let task = Task::new(&info(), 7, Payload::new(), Payload::new(), 1);
        assert!(table.enqueue(id, task).is_some());
        table
    }

    fn worker() -> Arc<str> {
        Arc::from("w1")
    }

    #[test]
    fn a_task_runs_and_finishes_once() {
        let id = TaskId(1);
        let mut t = table_with(id);
        assert_eq!(t.get(&id).unwrap().state(), TaskState::Queued);
        assert!(t.assign(id, BatchId(7), &worker(), 10).is_some());
        let task = t.get(&id).unwrap();
        assert_eq!(task.state(), TaskState::Running);
        assert!(task.runs_in(BatchId(7)));
        assert_eq!((task.attempts(), task.timings.dispatched_us), (1, 10));
        let out = Outcome::Output(Payload::new());
        let done = t.finish(id, Ending::Completed, out.clone(), None, 5, 20);
        let done = done.expect("a running task finishes");
        assert_eq!(done.record.state, TaskState::Completed);
        assert_eq!(done.record.worker.as_deref(), Some("w1"));
        assert_eq!(t.totals().completed, 1);
        // Final is final: nothing moves it again.
        assert!(t.finish(id, Ending::Failed, out, None, 0, 30).is_none());
        assert!(t.assign(id, BatchId(8), &worker(), 30).is_none());
        assert!(!t.requeue(id, BatchId(7), Attempt::Counts, "lost"));
        assert!(t.advance(id, &Payload::new(), 30).is_none());
        assert_eq!(t.get(&id).unwrap().state(), TaskState::Completed);
        assert_eq!(t.totals().failed, 0);
    }

    #[test]
    fn a_running_task_is_not_assigned_again_and_requeues_only_from_its_batch() {
        let id = TaskId(1);
        let mut t = table_with(id);
        assert!(
            !t.requeue(id, BatchId(7), Attempt::Counts, "lost"),
            "queued: no batch"
        );
        assert!(t.assign(id, BatchId(7), &worker(), 10).is_some());
        assert!(
            t.assign(id, BatchId(8), &worker(), 11).is_none(),
            "already running"
        );
        assert!(
            !t.requeue(id, BatchId(8), Attempt::Counts, "lost"),
            "another batch"
        );
        assert!(t.requeue(id, BatchId(7), Attempt::Counts, "lost"));
        let task = t.get(&id).unwrap();
        assert!(task.is_queued());
        assert_eq!(task.attempts(), 1, "a counted attempt stays");
        assert!(t.assign(id, BatchId(9), &worker(), 12).is_some());
        assert!(t.requeue(id, BatchId(9), Attempt::Forgiven, "lost"));
        assert_eq!(t.get(&id).unwrap().attempts(), 1, "a forgiven one does not");
        // The view still names the worker that ran it last.
        assert_eq!(
            t.view(id, false, TaskScope::All).worker.as_deref(),
            Some("w1")
        );
    }

    #[test]
    fn a_queued_task_can_be_cancelled_and_unknown_ids_are_refused() {
        let id = TaskId(1);
        let mut t = table_with(id);
        let cancelled = Outcome::Error("cancelled".into());
        let done = t
            .finish(id, Ending::Cancelled, cancelled, None, 0, 5)
            .unwrap();
        assert_eq!(done.record.state, TaskState::Cancelled);
        assert_eq!(t.view(id, true, TaskScope::All).state, TaskState::Cancelled);
        assert!(t.view(id, true, TaskScope::All).outcome.is_some());
        assert!(t.view(id, false, TaskScope::All).outcome.is_none());
        let other = TaskId(2);
        assert!(t.assign(other, BatchId(1), &worker(), 5).is_none());
        assert!(
            t.finish(
                other,
                Ending::Failed,
                Outcome::Error(String::new()),
                None,
                0,
                5
            )
            .is_none()
        );
        assert_eq!(
            t.view(other, false, TaskScope::All).state,
            TaskState::Unknown
        );
        let task = Task::new(&info(), 7, Payload::new(), Payload::new(), 1);
        assert!(t.enqueue(id, task).is_none(), "ids are not reused");
    }

    #[test]
    fn a_task_out_of_scope_reads_as_unknown_and_is_not_touched() {
        let id = TaskId(1);
        let mut t = table_with(id);
        t.finish(
            id,
            Ending::Completed,
            Outcome::Output(Payload::new()),
            None,
            0,
            5,
        );
        let stranger = TaskScope::Of(8);
        assert!(t.get_in(&id, stranger).is_none());
        assert_eq!(t.view(id, true, stranger), TaskView::unknown(id));
        assert!(t.get_in(&id, TaskScope::Of(7)).is_some(), "its submitter");
        assert!(t.get_in(&id, TaskScope::All).is_some(), "the daemon's user");
        // A stranger's fetch does not start the shorter retention.
        t.mark_fetched(id, stranger, 10);
        assert!(t.sweep(20, 5, 100).is_empty());
        t.mark_fetched(id, TaskScope::Of(7), 10);
        assert_eq!(t.sweep(20, 5, 100), [id]);
        // Nor does a stranger count or wait on an unfinished one.
        let mut t = table_with(id);
        assert_eq!(t.unfinished(&[id], stranger), 0);
        assert_eq!(t.unfinished(&[id], TaskScope::Of(7)), 1);
        t.add_waiter(id, 3, stranger);
        t.add_waiter(id, 4, TaskScope::Of(7));
        let done = t.finish(
            id,
            Ending::Completed,
            Outcome::Output(Payload::new()),
            None,
            0,
            5,
        );
        assert_eq!(done.unwrap().waiters, [4]);
    }

    #[test]
    fn results_expire_by_fetch_or_by_age() {
        let mut t = TaskTable::new(0, 2, 0);
        for n in [1, 2] {
            let task = Task::new(&info(), 7, Payload::new(), Payload::new(), 1);
            t.enqueue(TaskId(n), task);
            t.finish(
                TaskId(n),
                Ending::Completed,
                Outcome::Output(Payload::new()),
                None,
                0,
                10,
            );
        }
        t.mark_fetched(TaskId(1), TaskScope::All, 20);
        assert!(t.sweep(29, 10, 100).is_empty());
        assert_eq!(t.sweep(30, 10, 100), [TaskId(1)]);
        assert_eq!(t.sweep(110, 10, 100), [TaskId(2)]);
        assert_eq!(t.len(), 0);
    }
}
