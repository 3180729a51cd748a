//! The scheduling core: every decision the daemon makes, with no I/O in it.
//!
//! The core is a state machine. The daemon's I/O layer turns socket
//! messages, store acknowledgements, provider reports, signals and timer
//! ticks into [`Event`]s and feeds them to [`Core::handle`] together with the
//! current time; the core updates its state and appends [`Action`]s (replies
//! to send, store writes to make, blocks to start) to an outbox that the I/O
//! layer carries out. Nothing here reads a clock, touches a socket or waits.
//!
//! That makes every fault scenario (a worker lost mid-batch, a daemon restart
//! with a full queue, a late duplicate result, a shutdown with tasks still
//! running) a plain, deterministic unit test: see `tests.rs` beside this file.
//!
//! The request path through the core:
//!
//! 1. `Submit`: tasks get ids, enter their servable's queue, and one
//!    [`StoreOp::PutTasks`] is emitted. The "accepted" reply is held until the
//!    store reports that write durable ([`Event::Durable`]).
//! 2. Dispatch: a worker holding a long-poll with free slots gets batches
//!    from the queues with the oldest heads, up to each servable's
//!    `max_batch_size` per batch and one batch per free slot.
//! 3. Results ride on the worker's next pull; the first result for a task
//!    wins, is written with [`StoreOp::PutResults`], and releases any client
//!    waiting on that task.

mod adaptive;
mod blocks;
mod catalog;
mod clients;
mod durability;
mod event_log;
mod io;
mod lifecycle;
mod memo;
mod queues;
pub mod records;
mod search;
#[cfg(test)]
mod tests;
mod workers;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use flotilla_protocol::client::{ClientReply, Totals};
use flotilla_protocol::interchange::{BatchId, WorkerMessage};
use flotilla_protocol::task::{MemoUse, Outcome, TaskState, TaskTimings, TaskView};
use flotilla_protocol::servable::ServableRef;
use flotilla_protocol::{Payload, TaskId};

pub use blocks::{BlockEvent, BlockPolicy, Demand};
pub use io::{Action, Event, PipeId, ReplyTo};
pub use catalog::{Catalog, ServableInfo};

use records::{BlockRecord, Recovered, StoreOp, StoredResult};
use adaptive::Adaptive;
use blocks::Blocks;
use durability::Durability;
use event_log::EventLog;
use memo::{Memo, MemoKey};
use queues::{BatchRule, QueueKey, Queues};

pub use memo::{canonical as canonical_msgpack, key as memo_key};

/// Ids are reserved in the store in blocks of this size, so the high-water
/// mark is written once per this many tasks, not once per task.
const ID_RESERVATION: u64 = 100_000;

/// Retention sweeps run at most this often (µs).
const SWEEP_PERIOD_US: u64 = 1_000_000;

/// Settings the core needs, in the core's units (microseconds).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Longest a worker's long-poll is held.
    pub heartbeat_period_us: u64,
    /// Silence after which a worker is lost.
    pub heartbeat_threshold_us: u64,
    /// Time running batches get on shutdown.
    pub shutdown_grace_us: u64,
    /// Retention after first fetch.
    pub result_retention_us: u64,
    /// Retention without a fetch.
    pub unfetched_result_retention_us: u64,
    /// Dispatches before worker losses fail a task.
    pub max_attempts: u32,
    /// Workers take no task that would end within this of their job's end.
    pub walltime_margin_us: u64,
    /// After a restart with live blocks, how long recovered tasks wait for
    /// their workers to claim them.
    pub recovery_grace_us: u64,
    /// The secret workers must present.
    pub secret: Vec<u8>,
    /// Block policy.
    pub blocks: BlockPolicy,
    /// Daemon pid, for status.
    pub pid: u32,
    /// Daemon release, for status.
    pub release: String,
    /// Interchange URL, for status.
    pub interchange: String,
    /// Memo store bound on entries.
    pub memo_max_entries: u64,
    /// Memo store bound on bytes.
    pub memo_max_bytes: u64,
    /// The site's serving-option overrides by servable name.
    pub overrides: std::collections::BTreeMap<String, crate::config::ServableOverride>,
}

#[derive(Debug)]
struct Task {
    /// What the client asked for (canonical name).
    servable: Arc<str>,
    params: Payload,
    /// The input of the next call: the request's, or for a pipeline the
    /// previous step's output.
    input: Payload,
    /// What runs next: the servable itself, or the pipeline's current step.
    target: Arc<str>,
    /// How the target batches.
    rule: BatchRule,
    /// Dispatched alone (retried input by input after a batch failed).
    solo: bool,
    /// Set for requests to memoizing servables.
    memo_key: Option<MemoKey>,
    /// How the memo store answered it, if it did.
    memo: Option<MemoUse>,
    pipeline: Option<PipelineProgress>,
    state: TaskState,
    attempts: u32,
    /// Why each earlier attempt ended without a result (worker losses).
    losses: Vec<String>,
    worker: Option<Arc<str>>,
    batch: Option<BatchId>,
    timings: TaskTimings,
    outcome: Option<Outcome>,
    fetched_us: Option<u64>,
    waiters: Vec<u64>,
}

#[derive(Debug, Clone)]
struct PipelineProgress {
    steps: Arc<[ServableInfo]>,
    step: usize,
}

impl Task {
    fn new(info: &ServableInfo, params: Payload, input: Payload, submitted_us: u64) -> Task {
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
            params,
            input,
            target,
            rule,
            solo: false,
            memo_key: None,
            memo: None,
            pipeline,
            state: TaskState::Queued,
            attempts: 0,
            losses: Vec::new(),
            worker: None,
            batch: None,
            timings: TaskTimings {
                submitted_us,
                ..TaskTimings::default()
            },
            outcome: None,
            fetched_us: None,
            waiters: Vec::new(),
        }
    }

    fn queue_key(&self) -> QueueKey {
        QueueKey {
            servable: self.target.clone(),
            params: self.params.clone(),
            solo: self.solo,
        }
    }

    fn queue_rule(&self) -> BatchRule {
        if self.solo {
            BatchRule::SINGLE
        } else {
            self.rule
        }
    }

    /// True if the task needs `id` (a servable it runs or will run).
    fn uses(&self, id: &str) -> bool {
        &*self.target == id
            || self
                .pipeline
                .as_ref()
                .is_some_and(|p| p.steps[p.step..].iter().any(|s| &*s.name == id))
    }
}

#[derive(Debug)]
struct Worker {
    id: Arc<str>,
    block: Option<u32>,
    host: String,
    pid: u32,
    node: Option<String>,
    rank: Option<u32>,
    /// When its job ends (µs since the epoch), if it said.
    ends_at_us: Option<u64>,
    slots: u32,
    servables: Vec<ServableRef>,
    pipe: PipeId,
    last_seen_us: u64,
    held_poll: Option<(ReplyTo, u64)>,
    /// A suspect task's batch it runs alone: no other work until it ends.
    isolating: Option<BatchId>,
    batches: HashSet<BatchId>,
    tasks: u32,
    /// Servables whose record this worker has been sent.
    specs_sent: HashSet<Arc<str>>,
}

impl Worker {
    fn free_slots(&self) -> u32 {
        if self.isolating.is_some() {
            return 0;
        }
        self.slots.saturating_sub(self.batches.len() as u32)
    }
}

#[derive(Debug)]
struct Batch {
    worker: u64,
    /// The servable it runs (its adaptive controller learns from it).
    servable: Arc<str>,
    tasks: Vec<TaskId>,
}

/// Identical memoizable requests in flight: one runs, the others wait.
#[derive(Debug)]
struct Inflight {
    leader: TaskId,
    followers: Vec<TaskId>,
}

#[derive(Debug)]
struct Wait {
    to: ReplyTo,
    ids: Vec<TaskId>,
    pending: usize,
    deadline_us: u64,
    min_seq: u64,
}

#[derive(Debug)]
struct Drain {
    deadline_us: u64,
    finished: bool,
}

/// The daemon's scheduling state. See the module documentation.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    catalog: Catalog,
    started_us: u64,
    tasks: HashMap<TaskId, Task>,
    queues: Queues,
    workers: BTreeMap<u64, Worker>,
    worker_keys: HashMap<Arc<str>, u64>,
    worker_by_pipe: HashMap<PipeId, u64>,
    next_worker_key: u64,
    rr_cursor: u64,
    batches: HashMap<BatchId, Batch>,
    next_batch: u64,
    next_task: u64,
    reserved_until: u64,
    waits: HashMap<u64, Wait>,
    next_wait: u64,
    durability: Durability,
    blocks: Blocks,
    draining: Option<Drain>,
    store_failed: Option<String>,
    totals: Totals,
    finished_order: VecDeque<(u64, TaskId)>,
    fetched_order: VecDeque<(u64, TaskId)>,
    last_sweep_us: u64,
    /// Results recorded but not yet handed to the store.
    pending_records: Vec<(TaskId, StoredResult)>,
    /// Memo entries recovered beyond today's bounds, deleted by `start`.
    startup_memo_evictions: Vec<MemoKey>,
    memo: Memo,
    inflight: HashMap<MemoKey, Inflight>,
    adaptive: HashMap<Arc<str>, Adaptive>,
    /// Block and worker events for `flotilla events`.
    events: EventLog,
    /// Blocks recovered from the store, adopted by `start`.
    adopt: Vec<BlockRecord>,
    /// Recovered tasks waiting for reconnecting workers to claim them.
    held: Vec<TaskId>,
    /// Tasks that were running when their worker died: each runs alone on
    /// an otherwise idle worker, so a task that kills its worker takes no
    /// innocent neighbour with it and is recognised as the poison it is.
    /// (With the block their worker belonged to: if that block turns out
    /// to have been ended by its scheduler, they are innocent after all.)
    suspects: VecDeque<(TaskId, Option<u32>)>,
    /// Workers that may hold a long-poll with a free slot: every worker
    /// that does is here (others are dropped when dispatch meets them), so
    /// dispatch looks at the few that can take work, not at every worker.
    ready: BTreeSet<u64>,
    /// When `held` tasks are queued regardless.
    hold_until_us: u64,
    /// How long a call of each servable takes, learned.
    durations: HashMap<Arc<str>, CallDuration>,
}

/// A running estimate of a servable call's duration (µs): mean and mean
/// deviation, exponentially weighted.
#[derive(Debug, Clone, Copy, Default)]
struct CallDuration {
    mean: f64,
    dev: f64,
}

impl CallDuration {
    fn observe(&mut self, us: u64) {
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
    fn estimate_us(&self) -> u64 {
        (self.mean + 2.0 * self.dev) as u64
    }
}

impl Core {
    /// A core holding everything recovered from the store: the catalog,
    /// final tasks with their results, and unfinished tasks queued again in
    /// id order.
    pub fn new(cfg: CoreConfig, mut recovered: Recovered, now_us: u64) -> Self {
        let adopt = std::mem::take(&mut recovered.blocks);
        let hold = !adopt.is_empty();
        let catalog = Catalog::new(
            std::mem::take(&mut recovered.servables),
            cfg.overrides.clone(),
        );
        let mut memo = Memo::new(cfg.memo_max_entries, cfg.memo_max_bytes);
        let mut evicted = Vec::new();
        for (key, servable, output) in std::mem::take(&mut recovered.memo) {
            evicted.extend(memo.insert(key, Arc::from(servable.as_str()), output));
        }
        memo.stats.evictions = 0;
        let mut core = Core {
            blocks: Blocks::new(cfg.blocks.clone(), recovered.next_block),
            events: EventLog::default(),
            adopt,
            held: Vec::new(),
            suspects: VecDeque::new(),
            ready: BTreeSet::new(),
            hold_until_us: now_us.saturating_add(cfg.recovery_grace_us),
            durations: HashMap::new(),
            cfg,
            catalog,
            started_us: now_us,
            tasks: HashMap::with_capacity(recovered.tasks.len()),
            queues: Queues::default(),
            workers: BTreeMap::new(),
            worker_keys: HashMap::new(),
            worker_by_pipe: HashMap::new(),
            next_worker_key: 1,
            rr_cursor: 0,
            batches: HashMap::new(),
            // Batch ids from the clock: a worker that reconnects after a
            // restart holds ids no new batch will have.
            next_batch: now_us.max(1),
            next_task: recovered.reserved_until.max(1),
            reserved_until: recovered.reserved_until,
            waits: HashMap::new(),
            next_wait: 1,
            durability: Durability::default(),
            draining: None,
            store_failed: None,
            totals: Totals::default(),
            finished_order: VecDeque::new(),
            fetched_order: VecDeque::new(),
            last_sweep_us: now_us,
            pending_records: Vec::new(),
            memo,
            inflight: HashMap::new(),
            adaptive: HashMap::new(),
            startup_memo_evictions: evicted,
        };
        let mut requeued = 0u64;
        for (id, stored, result) in recovered.tasks {
            core.totals.accepted += 1;
            let resolved = core.catalog.resolve(&stored.servable);
            let info = match &resolved {
                Ok(info) => info.clone(),
                Err(_) => ServableInfo {
                    name: Arc::from(stored.servable.as_str()),
                    batch: BatchRule::SINGLE,
                    latency_target_us: 100_000,
                    memoize: false,
                    input_check: None,
                    record: None,
                    steps: None,
                },
            };
            let mut task = Task::new(&info, stored.params, stored.input, stored.submitted_us);
            match (result, resolved) {
                (Some(r), _) => {
                    task.state = r.state;
                    task.memo = r.memo;
                    task.attempts = r.attempts;
                    task.worker = r.worker.map(Arc::from);
                    task.timings = r.timings;
                    task.outcome = Some(r.outcome);
                    core.finished_order
                        .push_back((task.timings.finished_us, id));
                }
                (None, Ok(info)) => {
                    core.ensure_adaptive(&info);
                    if info.memoize && info.steps.is_none() {
                        task.memo_key = Some(memo::key(&info.name, &task.input, &task.params));
                    }
                    if hold {
                        // Its worker may still be running it: let it claim
                        // the task when it reconnects.
                        core.tasks.insert(id, task);
                        core.held.push(id);
                    } else {
                        core.enqueue_or_follow(id, task, now_us);
                    }
                    requeued += 1;
                    continue;
                }
                (None, Err((_, why))) => {
                    // Its servable was removed while the daemon was down.
                    task.state = TaskState::Failed;
                    task.timings.finished_us = now_us;
                    let outcome = Outcome::Error(format!("cannot run after a restart: {why}"));
                    task.outcome = Some(outcome.clone());
                    core.totals.failed += 1;
                    core.pending_records
                        .push((id, result_record(&task, outcome)));
                }
            }
            core.tasks.insert(id, task);
        }
        if requeued > 0 {
            tracing::info!(
                requeued,
                total = core.tasks.len(),
                "recovered unfinished tasks into the queue"
            );
        }
        core
    }

    /// Initial actions: adopt the blocks an earlier daemon left running,
    /// start the configured blocks, store results decided during recovery.
    pub fn start(&mut self, now_us: u64, out: &mut Vec<Action>) {
        self.flush_records(out);
        let evicted = std::mem::take(&mut self.startup_memo_evictions);
        if !evicted.is_empty() {
            self.persist(StoreOp::RemoveMemo(evicted), out);
        }
        let adopt = std::mem::take(&mut self.adopt);
        if !adopt.is_empty() {
            tracing::info!(
                blocks = adopt.len(),
                held_tasks = self.held.len(),
                grace_ms = self.cfg.recovery_grace_us / 1000,
                "adopting blocks from before the restart; their workers may claim the tasks they run"
            );
        }
        self.blocks.adopt(adopt, now_us, out);
        self.blocks.start(now_us, out);
        self.after_event(now_us, out);
    }

    /// When (after `now_us`) the core next needs an [`Event::Tick`] to send
    /// a batch whose delay runs out, µs since the epoch.
    pub fn next_deadline(&self, now_us: u64) -> Option<u64> {
        if self.draining.is_some() {
            return None;
        }
        let adaptive = &self.adaptive;
        let batch = self
            .queues
            .next_deadline(now_us, |s| auto_plan(adaptive, s));
        match (batch, self.events.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reacts to one event at time `now_us` (µs since the epoch).
    pub fn handle(&mut self, event: Event, now_us: u64, out: &mut Vec<Action>) {
        match event {
            Event::Client { from, call } => self.on_client(from, call, now_us, out),
            Event::Worker {
                from,
                pipe,
                message,
            } => match message {
                WorkerMessage::Hello(hello) => self.on_hello(from, pipe, hello, now_us, out),
                WorkerMessage::Probe { secret } => self.on_probe(from, &secret, out),
                WorkerMessage::Leave { reason } => self.on_leave(from, pipe, &reason, now_us, out),
                WorkerMessage::Pull { results, wait } => {
                    self.on_pull(from, pipe, results, wait, now_us, out);
                }
            },
            Event::PipeClosed { pipe } => {
                if let Some(key) = self.worker_by_pipe.get(&pipe).copied() {
                    self.lose_worker(key, "its connection closed", now_us, out);
                }
            }
            Event::Durable { seq } => self.durability.advance(seq, now_us, out),
            Event::StoreFailed { reason } => {
                self.store_failed = Some(reason);
            }
            Event::Block(ev) => {
                if let Some(block) = self.blocks.on_event(ev, now_us) {
                    self.block_ended(block, now_us, out);
                }
                self.run_strategy(now_us, out);
            }
            Event::Tick => self.on_tick(now_us, out),
            Event::Shutdown => self.begin_drain(now_us, out),
        }
        if !self.held.is_empty() && self.blocks.adopted_settled() {
            // Every worker of the adopted blocks is back (or they ended):
            // nothing more will be claimed.
            self.release_held(now_us);
        }
        self.dispatch(now_us, out);
        self.check_drain(now_us, out);
        self.after_event(now_us, out);
        self.flush_records(out);
    }

    /// Carries the block table's news out: events for `flotilla events`,
    /// block records for the store.
    fn after_event(&mut self, now: u64, out: &mut Vec<Action>) {
        for note in self.blocks.take_notes() {
            self.events
                .push(now, note.kind, note.block, None, note.message, out);
        }
        for op in self.blocks.take_store_ops() {
            self.persist(op, out);
        }
    }

    /// Records an event about a worker.
    fn worker_event(
        &mut self,
        now: u64,
        kind: &str,
        block: Option<u32>,
        worker: &str,
        message: String,
        out: &mut Vec<Action>,
    ) {
        self.events
            .push(now, kind, block, Some(worker), message, out);
    }

    /// The work outstanding, for the scaling strategy.
    fn demand(&self) -> Demand {
        let mut busy = std::collections::BTreeMap::new();
        let mut running = 0u64;
        for w in self.workers.values() {
            running += u64::from(w.tasks);
            if let Some(block) = w.block {
                *busy.entry(block).or_insert(0) += w.tasks;
            }
        }
        Demand {
            queued: (self.queues.len() + self.held.len() + self.suspects.len()) as u64,
            running,
            busy,
        }
    }

    /// Runs the scaling strategy now.
    fn run_strategy(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.draining.is_some() {
            return;
        }
        let demand = self.demand();
        self.blocks.strategize(&demand, now, out);
    }

    /// A block ended: its workers are gone with it, whether or not their
    /// connections have said so yet.
    fn block_ended(&mut self, block: u32, now: u64, out: &mut Vec<Action>) {
        let gone: Vec<(u64, PipeId)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.block == Some(block))
            .map(|(&k, w)| (k, w.pipe))
            .collect();
        for (key, pipe) in gone {
            self.lose_worker(key, &format!("its block {block} ended"), now, out);
            out.push(Action::ClosePipe { pipe });
        }
        // Workers whose connection dropped just before the scheduler's word
        // came did not die of their tasks: those go back to the queue. A
        // block that merely failed or completed may have ended because its
        // worker died (a local block is its worker), so its suspects stay.
        if !self.blocks.ended_by_scheduler(block) {
            return;
        }
        let (innocent, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.suspects)
            .into_iter()
            .partition(|(_, b)| *b == Some(block));
        self.suspects = rest.into();
        self.requeue_front(innocent.into_iter().map(|(id, _)| id).collect());
    }

    /// Queues the recovered tasks no reconnecting worker claimed.
    fn release_held(&mut self, now: u64) {
        let held = std::mem::take(&mut self.held);
        let mut released = 0u64;
        for id in held {
            let unclaimed = self
                .tasks
                .get(&id)
                .is_some_and(|t| t.state == TaskState::Queued && t.batch.is_none());
            if unclaimed && let Some(task) = self.tasks.remove(&id) {
                self.enqueue_or_follow(id, task, now);
                released += 1;
            }
        }
        if released > 0 {
            tracing::info!(released, "recovered tasks nobody claimed are queued again");
        }
    }

    /// Hands results recorded during this event to the store in one write;
    /// returns the sequence number that covers them (or the last issued).
    fn flush_records(&mut self, out: &mut Vec<Action>) -> u64 {
        if self.pending_records.is_empty() {
            return self.durability.issued();
        }
        let records = std::mem::take(&mut self.pending_records);
        self.persist(StoreOp::PutResults(records), out)
    }

    /// Last store sequence number issued (the I/O layer waits for it on exit).
    pub fn issued_seq(&self) -> u64 {
        self.durability.issued()
    }

    fn persist(&mut self, op: StoreOp, out: &mut Vec<Action>) -> u64 {
        let seq = self.durability.issue();
        out.push(Action::Persist { seq, op });
        seq
    }

    /// The longest a call of `servable` is expected to take (µs): its
    /// declared bound, else what history says (0 when unknown).
    fn expected_duration_us(&self, servable: &str) -> u64 {
        let declared = self
            .catalog
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

    /// Dispatches before worker losses fail a task of `servable`.
    fn max_attempts_for(&self, servable: &str) -> u32 {
        let parsed = ServableRef::parse(servable);
        let name = parsed.as_ref().ok().and_then(ServableRef::name);
        self.cfg
            .overrides
            .get(name.unwrap_or(servable))
            .and_then(|o| o.max_attempts)
            .unwrap_or(self.cfg.max_attempts)
            .max(1)
    }

    fn view(&self, id: TaskId, with_outcome: bool) -> TaskView {
        match self.tasks.get(&id) {
            Some(t) => TaskView {
                id,
                servable: t.servable.to_string(),
                state: t.state,
                attempts: t.attempts,
                worker: t.worker.as_deref().map(str::to_owned),
                timings: t.timings,
                memo: t.memo,
                outcome: if with_outcome {
                    t.outcome.clone()
                } else {
                    None
                },
            },
            None => TaskView {
                id,
                servable: String::new(),
                state: TaskState::Unknown,
                attempts: 0,
                worker: None,
                timings: TaskTimings::default(),
                memo: None,
                outcome: None,
            },
        }
    }

    /// Records the first final state of a task, queues its result record
    /// for the store, feeds the memo store, settles identical requests that
    /// were waiting on it, and wakes its waiters. Returns false if the task
    /// was already final.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        id: TaskId,
        state: TaskState,
        outcome: Outcome,
        worker: Option<Arc<str>>,
        run_us: u64,
        now: u64,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        if task.state.is_final() {
            return false;
        }
        task.state = state;
        task.timings.finished_us = now;
        if run_us > 0 {
            task.timings.run_us = run_us;
        }
        if worker.is_some() {
            task.worker = worker;
        }
        task.batch = None;
        task.outcome = Some(outcome.clone());
        self.pending_records
            .push((id, result_record(task, outcome.clone())));
        let waiters = std::mem::take(&mut task.waiters);
        let memo_key = task.memo_key;
        let ran = task.memo.is_none();
        let servable = task.servable.clone();
        let worker = task.worker.clone();
        match state {
            TaskState::Completed => self.totals.completed += 1,
            TaskState::Failed => self.totals.failed += 1,
            TaskState::Cancelled => self.totals.cancelled += 1,
            _ => {}
        }
        self.finished_order.push_back((now, id));
        if let Some(key) = memo_key {
            if ran && let Outcome::Output(output) = &outcome {
                let evicted = self.memo.insert(key, servable.clone(), output.clone());
                self.persist(
                    StoreOp::PutMemo {
                        key,
                        servable: servable.to_string(),
                        output: output.clone(),
                    },
                    out,
                );
                if !evicted.is_empty() {
                    self.persist(StoreOp::RemoveMemo(evicted), out);
                }
            }
            self.settle_followers(id, key, state, &outcome, worker, now, out);
        }
        for w in waiters {
            let done = match self.waits.get_mut(&w) {
                Some(wait) => {
                    wait.pending = wait.pending.saturating_sub(1);
                    wait.pending == 0
                }
                None => false,
            };
            if done {
                self.complete_wait(w, now, out);
            }
        }
        true
    }

    /// The leader of identical in-flight requests finished: completed or
    /// failed, its followers share the outcome; cancelled, the next one
    /// takes over and runs.
    #[allow(clippy::too_many_arguments)]
    fn settle_followers(
        &mut self,
        id: TaskId,
        key: MemoKey,
        state: TaskState,
        outcome: &Outcome,
        worker: Option<Arc<str>>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if self.inflight.get(&key).is_none_or(|i| i.leader != id) {
            return;
        }
        let Some(Inflight { followers, .. }) = self.inflight.remove(&key) else {
            return;
        };
        if state == TaskState::Cancelled {
            let mut rest = followers.into_iter();
            if let Some(next) = rest.next() {
                self.inflight.insert(
                    key,
                    Inflight {
                        leader: next,
                        followers: rest.collect(),
                    },
                );
                if let Some(task) = self.tasks.get(&next) {
                    let (qk, rule) = (task.queue_key(), task.queue_rule());
                    self.queues.push_back(qk, next, rule, now);
                }
            }
            return;
        }
        for f in followers {
            if let Some(task) = self.tasks.get_mut(&f) {
                task.memo = Some(MemoUse::Coalesced);
            }
            self.memo.stats.coalesced += 1;
            self.finish(f, state, outcome.clone(), worker.clone(), 0, now, out);
        }
    }

    /// Makes sure servables batched in auto mode (and pipeline steps that
    /// are) have a controller.
    fn ensure_adaptive(&mut self, info: &ServableInfo) {
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

    /// Puts a new (or recovered) task where it belongs: queued, or behind an
    /// identical memoizable request already in flight.
    fn enqueue_or_follow(&mut self, id: TaskId, task: Task, now: u64) {
        if let Some(key) = task.memo_key {
            if let Some(inflight) = self.inflight.get_mut(&key) {
                inflight.followers.push(id);
                self.tasks.insert(id, task);
                return;
            }
            self.inflight.insert(
                key,
                Inflight {
                    leader: id,
                    followers: Vec::new(),
                },
            );
        }
        let (qk, rule) = (task.queue_key(), task.queue_rule());
        self.queues.push_back(qk, id, rule, now);
        self.tasks.insert(id, task);
    }

    fn add_wait(
        &mut self,
        to: ReplyTo,
        ids: Vec<TaskId>,
        pending: usize,
        deadline_us: u64,
        min_seq: u64,
    ) {
        let wait_id = self.next_wait;
        self.next_wait += 1;
        for id in &ids {
            if let Some(task) = self.tasks.get_mut(id)
                && !task.state.is_final()
            {
                task.waiters.push(wait_id);
            }
        }
        self.waits.insert(
            wait_id,
            Wait {
                to,
                ids,
                pending,
                deadline_us,
                min_seq,
            },
        );
    }

    fn complete_wait(&mut self, wait_id: u64, now: u64, out: &mut Vec<Action>) {
        if let Some(wait) = self.waits.remove(&wait_id) {
            let reply = self.results_reply(&wait.ids, now);
            self.durability
                .reply_after(wait.min_seq, wait.to, reply, now, out);
        }
    }

    fn results_reply(&mut self, ids: &[TaskId], now: u64) -> ClientReply {
        let tasks = ids
            .iter()
            .map(|id| {
                if let Some(task) = self.tasks.get_mut(id)
                    && task.state.is_final()
                    && task.fetched_us.is_none()
                {
                    task.fetched_us = Some(now);
                    self.fetched_order.push_back((now, *id));
                }
                self.view(*id, true)
            })
            .collect();
        ClientReply::Results { tasks }
    }
}

/// The target batch size of `servable`'s adaptive controller (1 before it
/// has measured anything).
fn auto_plan(adaptive: &HashMap<Arc<str>, Adaptive>, servable: &str) -> u32 {
    adaptive.get(servable).map_or(1, Adaptive::target)
}

/// The store record of a task's final state.
fn result_record(task: &Task, outcome: Outcome) -> StoredResult {
    StoredResult {
        state: task.state,
        outcome,
        attempts: task.attempts,
        worker: task.worker.as_deref().map(str::to_owned),
        timings: task.timings,
        memo: task.memo,
    }
}
