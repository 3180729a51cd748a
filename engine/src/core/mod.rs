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

mod blocks;
mod durability;
mod queues;
mod servables;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use flotilla_protocol::client::{
    ApiError, ApiErrorKind, ClientCall, ClientReply, DaemonStatus, QueueView, TaskRequest, Totals,
    WorkerView,
};
use flotilla_protocol::interchange::{
    BatchId, BatchResult, DaemonMessage, Hello, WorkBatch, WorkItem, WorkerMessage,
};
use flotilla_protocol::task::{Outcome, TaskState, TaskTimings, TaskView};
use flotilla_protocol::{Payload, TaskId};

pub use blocks::{BlockEvent, BlockPolicy};
pub use servables::{ServableInfo, Servables};

use crate::store::{NewTask, Recovered, StoreOp, StoredResult};
use blocks::Blocks;
use durability::Durability;
use queues::{QueueKey, Queues};

/// Ids are reserved in the store in blocks of this size, so the high-water
/// mark is written once per this many tasks, not once per task.
const ID_RESERVATION: u64 = 100_000;

/// Retention sweeps run at most this often (µs).
const SWEEP_PERIOD_US: u64 = 1_000_000;

/// A pending request on one of the daemon's reply sockets (its context slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyTo(pub u32);

/// One connection of a worker, as the I/O layer numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipeId(pub u64);

/// Something that happened, for the core to react to.
#[derive(Debug)]
pub enum Event {
    /// A client request arrived.
    Client {
        /// Where the reply goes.
        from: ReplyTo,
        /// The request.
        call: ClientCall,
    },
    /// A worker message arrived.
    Worker {
        /// Where the reply goes.
        from: ReplyTo,
        /// Connection it came on.
        pipe: PipeId,
        /// The message.
        message: WorkerMessage,
    },
    /// A worker connection closed.
    PipeClosed {
        /// The connection.
        pipe: PipeId,
    },
    /// Store writes up to `seq` are durable.
    Durable {
        /// Highest durable sequence number.
        seq: u64,
    },
    /// The store failed; accept no more work.
    StoreFailed {
        /// What failed.
        reason: String,
    },
    /// The provider reported on a block.
    Block(BlockEvent),
    /// Time passed (heartbeats, deadlines, retention).
    Tick,
    /// Shut down gracefully (SIGTERM, SIGINT).
    Shutdown,
}

/// Something the I/O layer must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Answer a client request.
    ReplyClient {
        /// The request.
        to: ReplyTo,
        /// The answer.
        reply: ClientReply,
    },
    /// Answer a worker request; with `close`, close its connection once sent.
    ReplyWorker {
        /// The request.
        to: ReplyTo,
        /// The answer.
        message: DaemonMessage,
        /// Close the connection after sending.
        close: bool,
    },
    /// Drop a worker connection.
    ClosePipe {
        /// The connection.
        pipe: PipeId,
    },
    /// Write to the store; report [`Event::Durable`] once flushed.
    Persist {
        /// Sequence number of this write.
        seq: u64,
        /// The write.
        op: StoreOp,
    },
    /// Start block `block` through the provider.
    SubmitBlock {
        /// Block id.
        block: u32,
    },
    /// Cancel block `block`.
    CancelBlock {
        /// Block id.
        block: u32,
    },
    /// Shutdown is complete: flush the store and exit.
    Exit,
}

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
}

#[derive(Debug)]
struct Task {
    servable: Arc<str>,
    params: Payload,
    input: Payload,
    max_batch: u32,
    state: TaskState,
    attempts: u32,
    worker: Option<Arc<str>>,
    batch: Option<BatchId>,
    timings: TaskTimings,
    outcome: Option<Outcome>,
    fetched_us: Option<u64>,
    waiters: Vec<u64>,
}

impl Task {
    fn queue_key(&self) -> QueueKey {
        QueueKey {
            servable: self.servable.clone(),
            params: self.params.clone(),
        }
    }
}

#[derive(Debug)]
struct Worker {
    id: Arc<str>,
    block: Option<u32>,
    host: String,
    slots: u32,
    servables: Vec<String>,
    pipe: PipeId,
    last_seen_us: u64,
    held_poll: Option<(ReplyTo, u64)>,
    batches: HashSet<BatchId>,
    tasks: u32,
}

impl Worker {
    fn free_slots(&self) -> u32 {
        self.slots.saturating_sub(self.batches.len() as u32)
    }
}

#[derive(Debug)]
struct Batch {
    worker: u64,
    tasks: Vec<TaskId>,
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
    servables: Servables,
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
}

impl Core {
    /// A core holding everything recovered from the store: final tasks keep
    /// their results, unfinished ones are queued again in id order.
    pub fn new(cfg: CoreConfig, servables: Servables, recovered: Recovered, now_us: u64) -> Self {
        let mut core = Core {
            blocks: Blocks::new(cfg.blocks),
            cfg,
            servables,
            started_us: now_us,
            tasks: HashMap::with_capacity(recovered.tasks.len()),
            queues: Queues::default(),
            workers: BTreeMap::new(),
            worker_keys: HashMap::new(),
            worker_by_pipe: HashMap::new(),
            next_worker_key: 1,
            rr_cursor: 0,
            batches: HashMap::new(),
            next_batch: 1,
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
        };
        let mut requeued = 0u64;
        for (id, stored, result) in recovered.tasks {
            let (servable, max_batch) = match core.servables.resolve(&stored.servable) {
                Ok(info) => (info.name, info.max_batch_size),
                Err(_) => (Arc::from(stored.servable.as_str()), 1),
            };
            let mut task = Task {
                servable,
                params: stored.params,
                input: stored.input,
                max_batch,
                state: TaskState::Queued,
                attempts: 0,
                worker: None,
                batch: None,
                timings: TaskTimings {
                    submitted_us: stored.submitted_us,
                    ..TaskTimings::default()
                },
                outcome: None,
                fetched_us: None,
                waiters: Vec::new(),
            };
            match result {
                Some(r) => {
                    task.state = r.state;
                    task.attempts = r.attempts;
                    task.worker = r.worker.map(Arc::from);
                    task.timings = r.timings;
                    task.outcome = Some(r.outcome);
                    core.finished_order
                        .push_back((task.timings.finished_us, id));
                }
                None => {
                    core.queues.push_back(task.queue_key(), id, task.max_batch);
                    requeued += 1;
                }
            }
            core.totals.accepted += 1;
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

    /// Initial actions: start the configured blocks.
    pub fn start(&mut self, out: &mut Vec<Action>) {
        self.blocks.start(out);
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
                WorkerMessage::Pull { results, wait } => {
                    self.on_pull(from, pipe, results, wait, now_us, out);
                }
            },
            Event::PipeClosed { pipe } => {
                if let Some(key) = self.worker_by_pipe.get(&pipe).copied() {
                    self.lose_worker(key, "its connection closed", now_us, out);
                }
            }
            Event::Durable { seq } => self.durability.advance(seq, out),
            Event::StoreFailed { reason } => {
                self.store_failed = Some(reason);
            }
            Event::Block(ev) => self.blocks.on_event(ev, out),
            Event::Tick => self.on_tick(now_us, out),
            Event::Shutdown => self.begin_drain(now_us, out),
        }
        self.dispatch(now_us, out);
        self.check_drain(now_us, out);
    }

    /// Last store sequence number issued (the I/O layer waits for it on exit).
    pub fn issued_seq(&self) -> u64 {
        self.durability.issued()
    }

    // ----- clients -------------------------------------------------------

    fn on_client(&mut self, from: ReplyTo, call: ClientCall, now: u64, out: &mut Vec<Action>) {
        match call {
            ClientCall::Ping => out.push(Action::ReplyClient {
                to: from,
                reply: ClientReply::Pong {
                    pid: self.cfg.pid,
                    release: self.cfg.release.clone(),
                },
            }),
            ClientCall::Submit { tasks, wait_ms } => self.on_submit(from, tasks, wait_ms, now, out),
            ClientCall::Results { ids, wait_ms } => {
                let pending = ids
                    .iter()
                    .filter(|id| self.tasks.get(id).is_some_and(|t| !t.state.is_final()))
                    .count();
                match wait_ms {
                    Some(ms) if pending > 0 && self.draining.is_none() => {
                        self.add_wait(from, ids, pending, now + ms * 1000, 0);
                    }
                    _ => {
                        let reply = self.results_reply(&ids, now);
                        out.push(Action::ReplyClient { to: from, reply });
                    }
                }
            }
            ClientCall::TaskStatus { ids } => {
                let tasks = ids.iter().map(|id| self.view(*id, false)).collect();
                out.push(Action::ReplyClient {
                    to: from,
                    reply: ClientReply::TaskStatus { tasks },
                });
            }
            ClientCall::DaemonStatus => out.push(Action::ReplyClient {
                to: from,
                reply: ClientReply::DaemonStatus(Box::new(self.status(now))),
            }),
            ClientCall::Cancel { ids } => self.on_cancel(from, ids, now, out),
            ClientCall::Stop => {
                out.push(Action::ReplyClient {
                    to: from,
                    reply: ClientReply::Stopping,
                });
                self.begin_drain(now, out);
            }
        }
    }

    fn refuse(&self, kind: ApiErrorKind, message: String) -> ClientReply {
        ClientReply::Error(ApiError { kind, message })
    }

    fn on_submit(
        &mut self,
        from: ReplyTo,
        requests: Vec<TaskRequest>,
        wait_ms: Option<u64>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let refusal = if self.draining.is_some() {
            Some(self.refuse(
                ApiErrorKind::ShuttingDown,
                "the daemon is shutting down and accepts no new tasks".into(),
            ))
        } else if let Some(reason) = &self.store_failed {
            Some(self.refuse(
                ApiErrorKind::Unavailable,
                format!("the daemon cannot store new tasks: {reason}"),
            ))
        } else if requests.is_empty() {
            Some(self.refuse(ApiErrorKind::BadRequest, "no tasks in the request".into()))
        } else {
            None
        };
        if let Some(reply) = refusal {
            out.push(Action::ReplyClient { to: from, reply });
            return;
        }
        // Resolve everything first: the request is all-or-nothing.
        let mut resolved = Vec::with_capacity(requests.len());
        let mut last: Option<(String, ServableInfo)> = None;
        for (index, req) in requests.iter().enumerate() {
            let info = match &last {
                Some((name, info)) if *name == req.servable => info.clone(),
                _ => match self.servables.resolve(&req.servable) {
                    Ok(info) => {
                        last = Some((req.servable.clone(), info.clone()));
                        info
                    }
                    Err(message) => {
                        let message = if requests.len() == 1 {
                            message
                        } else {
                            format!("task {} of {}: {message}", index + 1, requests.len())
                        };
                        let reply = self.refuse(ApiErrorKind::BadRequest, message);
                        out.push(Action::ReplyClient { to: from, reply });
                        return;
                    }
                },
            };
            resolved.push(info);
        }
        let first = self.next_task;
        let n = requests.len() as u64;
        self.next_task += n;
        let mut ops = Vec::with_capacity(2);
        if self.next_task > self.reserved_until {
            self.reserved_until = self.next_task + ID_RESERVATION;
            ops.push(StoreOp::ReserveIds {
                until: self.reserved_until,
            });
        }
        let mut new = Vec::with_capacity(requests.len());
        let mut ids = Vec::with_capacity(requests.len());
        for ((offset, req), info) in requests.into_iter().enumerate().zip(resolved) {
            let id = TaskId(first + offset as u64);
            let task = Task {
                servable: info.name.clone(),
                params: req.params,
                input: req.input,
                max_batch: info.max_batch_size,
                state: TaskState::Queued,
                attempts: 0,
                worker: None,
                batch: None,
                timings: TaskTimings {
                    submitted_us: now,
                    ..TaskTimings::default()
                },
                outcome: None,
                fetched_us: None,
                waiters: Vec::new(),
            };
            new.push(NewTask {
                id,
                servable: info.name,
                params: task.params.clone(),
                input: task.input.clone(),
                submitted_us: now,
            });
            self.queues.push_back(task.queue_key(), id, task.max_batch);
            self.tasks.insert(id, task);
            ids.push(id);
        }
        self.totals.accepted += n;
        ops.push(StoreOp::PutTasks(new));
        let mut seq = 0;
        for op in ops {
            seq = self.persist(op, out);
        }
        match wait_ms {
            Some(ms) => {
                let pending = ids.len();
                self.add_wait(from, ids, pending, now + ms * 1000, seq);
            }
            None => self
                .durability
                .reply_after(seq, from, ClientReply::Submitted { ids }, out),
        }
    }

    fn persist(&mut self, op: StoreOp, out: &mut Vec<Action>) -> u64 {
        let seq = self.durability.issue();
        out.push(Action::Persist { seq, op });
        seq
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
                .reply_after(wait.min_seq, wait.to, reply, out);
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

    fn view(&self, id: TaskId, with_outcome: bool) -> TaskView {
        match self.tasks.get(&id) {
            Some(t) => TaskView {
                id,
                servable: t.servable.to_string(),
                state: t.state,
                attempts: t.attempts,
                worker: t.worker.as_deref().map(str::to_owned),
                timings: t.timings,
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
                outcome: None,
            },
        }
    }

    fn on_cancel(&mut self, from: ReplyTo, ids: Vec<TaskId>, now: u64, out: &mut Vec<Action>) {
        let mut records = Vec::new();
        let mut states = Vec::with_capacity(ids.len());
        for id in ids {
            let state = match self.tasks.get(&id) {
                None => TaskState::Unknown,
                Some(t) if t.state.is_final() => t.state,
                Some(t) => {
                    if t.state == TaskState::Queued {
                        let key = t.queue_key();
                        self.queues.remove(&key, id);
                    }
                    let outcome = Outcome::Error("cancelled by a client".into());
                    if let Some(r) =
                        self.finish(id, TaskState::Cancelled, outcome, None, 0, now, out)
                    {
                        records.push(r);
                    }
                    TaskState::Cancelled
                }
            };
            states.push((id, state));
        }
        let reply = ClientReply::Cancelled { tasks: states };
        if records.is_empty() {
            out.push(Action::ReplyClient { to: from, reply });
        } else {
            let seq = self.persist(StoreOp::PutResults(records), out);
            self.durability.reply_after(seq, from, reply, out);
        }
    }

    /// Records the first final state of a task and wakes its waiters.
    /// Returns the store record, or `None` if the task was already final.
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
    ) -> Option<(TaskId, StoredResult)> {
        let task = self.tasks.get_mut(&id)?;
        if task.state.is_final() {
            return None;
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
        let record = StoredResult {
            state,
            outcome,
            attempts: task.attempts,
            worker: task.worker.as_deref().map(str::to_owned),
            timings: task.timings,
        };
        let waiters = std::mem::take(&mut task.waiters);
        match state {
            TaskState::Completed => self.totals.completed += 1,
            TaskState::Failed => self.totals.failed += 1,
            TaskState::Cancelled => self.totals.cancelled += 1,
            _ => {}
        }
        self.finished_order.push_back((now, id));
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
        Some((id, record))
    }

    // ----- workers -------------------------------------------------------

    fn on_hello(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        hello: Hello,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if !constant_time_eq(&hello.secret, &self.cfg.secret) {
            tracing::warn!(
                worker = %hello.worker_id,
                host = %hello.host,
                pid = hello.pid,
                pipe = pipe.0,
                "worker refused: wrong secret"
            );
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Refused {
                    reason: "wrong secret: this worker was not started for this daemon (check FLOTILLA_SECRET or --secret-file)".into(),
                },
                close: true,
            });
            return;
        }
        if hello.slots == 0 {
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Refused {
                    reason: "a worker needs at least one slot".into(),
                },
                close: true,
            });
            return;
        }
        if self.draining.is_some() {
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Shutdown,
                close: false,
            });
            return;
        }
        let id: Arc<str> = Arc::from(hello.worker_id.as_str());
        let key = match self.worker_keys.get(&id).copied() {
            // The same worker process again (it reconnected): keep its batches.
            Some(key) => {
                if let Some(w) = self.workers.get_mut(&key) {
                    self.worker_by_pipe.remove(&w.pipe);
                    w.pipe = pipe;
                    w.last_seen_us = now;
                    if let Some((old, _)) = w.held_poll.take() {
                        out.push(Action::ReplyWorker {
                            to: old,
                            message: DaemonMessage::Work { batches: vec![] },
                            close: false,
                        });
                    }
                }
                tracing::info!(worker = %id, pipe = pipe.0, "worker reconnected");
                key
            }
            None => {
                let key = self.next_worker_key;
                self.next_worker_key += 1;
                tracing::info!(
                    worker = %id,
                    host = %hello.host,
                    pid = hello.pid,
                    slots = hello.slots,
                    block = ?hello.block_id,
                    pipe = pipe.0,
                    "worker registered"
                );
                if let Some(block) = hello.block_id {
                    self.blocks.worker_joined(block);
                }
                self.workers.insert(
                    key,
                    Worker {
                        id: id.clone(),
                        block: hello.block_id,
                        host: hello.host,
                        slots: hello.slots,
                        servables: hello.servables,
                        pipe,
                        last_seen_us: now,
                        held_poll: None,
                        batches: HashSet::new(),
                        tasks: 0,
                    },
                );
                self.worker_keys.insert(id, key);
                key
            }
        };
        if let Some(old_key) = self.worker_by_pipe.insert(pipe, key)
            && old_key != key
        {
            self.lose_worker(
                old_key,
                "another worker registered on its connection",
                now,
                out,
            );
            self.worker_by_pipe.insert(pipe, key);
        }
        out.push(Action::ReplyWorker {
            to: from,
            message: DaemonMessage::Welcome {
                heartbeat_period_ms: self.cfg.heartbeat_period_us / 1000,
                heartbeat_threshold_ms: self.cfg.heartbeat_threshold_us / 1000,
            },
            close: false,
        });
    }

    fn on_pull(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        results: Vec<BatchResult>,
        wait: bool,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = self.worker_by_pipe.get(&pipe).copied() else {
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Reregister,
                close: false,
            });
            return;
        };
        if let Some(w) = self.workers.get_mut(&key) {
            w.last_seen_us = now;
        }
        if !results.is_empty() {
            self.record_results(key, results, now, out);
            self.check_drain(now, out);
        }
        if self.draining.as_ref().is_some_and(|d| d.finished) {
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Shutdown,
                close: false,
            });
            return;
        }
        if wait {
            let Some(w) = self.workers.get_mut(&key) else {
                return;
            };
            if let Some((old, _)) = w.held_poll.replace((from, now)) {
                out.push(Action::ReplyWorker {
                    to: old,
                    message: DaemonMessage::Work { batches: vec![] },
                    close: false,
                });
            }
        } else {
            let batches = self.fill(key, now);
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Work { batches },
                close: false,
            });
        }
    }

    fn record_results(
        &mut self,
        key: u64,
        results: Vec<BatchResult>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let worker_id = self.workers.get(&key).map(|w| w.id.clone());
        let mut records = Vec::new();
        for result in results {
            let owned = self
                .batches
                .get(&result.batch)
                .is_some_and(|b| b.worker == key);
            let batch = if owned {
                self.batches.remove(&result.batch)
            } else {
                None
            };
            for (id, outcome) in result.outcomes {
                let Some(task) = self.tasks.get(&id) else {
                    continue;
                };
                if task.state.is_final() {
                    continue;
                }
                if task.state == TaskState::Queued {
                    // A late result for a task already put back in the queue.
                    let qk = task.queue_key();
                    self.queues.remove(&qk, id);
                }
                let state = if outcome.is_ok() {
                    TaskState::Completed
                } else {
                    TaskState::Failed
                };
                if let Some(r) = self.finish(
                    id,
                    state,
                    outcome,
                    worker_id.clone(),
                    result.run_us,
                    now,
                    out,
                ) {
                    records.push(r);
                }
            }
            if let Some(batch) = batch {
                if let Some(w) = self.workers.get_mut(&key) {
                    w.batches.remove(&result.batch);
                    w.tasks = w.tasks.saturating_sub(batch.tasks.len() as u32);
                }
                for id in batch.tasks {
                    let missing = self
                        .tasks
                        .get(&id)
                        .is_some_and(|t| !t.state.is_final() && t.batch == Some(result.batch));
                    if missing {
                        let outcome = Outcome::Error(format!(
                            "worker {} returned no result for this task",
                            worker_id.as_deref().unwrap_or("?")
                        ));
                        if let Some(r) = self.finish(
                            id,
                            TaskState::Failed,
                            outcome,
                            worker_id.clone(),
                            0,
                            now,
                            out,
                        ) {
                            records.push(r);
                        }
                    }
                }
            }
        }
        if !records.is_empty() {
            self.persist(StoreOp::PutResults(records), out);
        }
    }

    /// Builds batches for `key`'s free slots from the oldest queues it can run.
    fn fill(&mut self, key: u64, now: u64) -> Vec<WorkBatch> {
        let mut batches = Vec::new();
        if self.draining.is_some() || self.queues.is_empty() {
            return batches;
        }
        let Some(worker) = self.workers.get(&key) else {
            return batches;
        };
        let mut free = worker.free_slots();
        let worker_id = worker.id.clone();
        while free > 0 {
            let Some(worker) = self.workers.get(&key) else {
                break;
            };
            let Some(qk) = self
                .queues
                .oldest(|s| servables::worker_can_run(&worker.servables, s))
            else {
                break;
            };
            let ids = self.queues.pop_batch(&qk);
            if ids.is_empty() {
                break;
            }
            let batch_id = BatchId(self.next_batch);
            self.next_batch += 1;
            let mut items = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(task) = self.tasks.get_mut(id) {
                    task.state = TaskState::Running;
                    task.attempts += 1;
                    task.worker = Some(worker_id.clone());
                    task.batch = Some(batch_id);
                    task.timings.dispatched_us = now;
                    items.push(WorkItem {
                        task: *id,
                        input: task.input.clone(),
                    });
                }
            }
            if let Some(w) = self.workers.get_mut(&key) {
                w.batches.insert(batch_id);
                w.tasks += ids.len() as u32;
            }
            self.batches.insert(
                batch_id,
                Batch {
                    worker: key,
                    tasks: ids,
                },
            );
            batches.push(WorkBatch {
                id: batch_id,
                servable: qk.servable.to_string(),
                params: qk.params.clone(),
                items,
            });
            free -= 1;
        }
        batches
    }

    /// Gives queued work to workers that hold a long-poll, round-robin.
    fn dispatch(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.draining.is_some() || self.queues.is_empty() {
            return;
        }
        let start = self.rr_cursor;
        let candidates: Vec<u64> = self
            .workers
            .range(start + 1..)
            .chain(self.workers.range(..=start))
            .filter(|(_, w)| w.held_poll.is_some() && w.free_slots() > 0)
            .map(|(k, _)| *k)
            .collect();
        for key in candidates {
            if self.queues.is_empty() {
                break;
            }
            let batches = self.fill(key, now);
            if batches.is_empty() {
                continue;
            }
            self.rr_cursor = key;
            tracing::debug!(
                worker_key = key,
                batches = batches.len(),
                "dispatching to a held poll"
            );
            if let Some((to, _)) = self.workers.get_mut(&key).and_then(|w| w.held_poll.take()) {
                out.push(Action::ReplyWorker {
                    to,
                    message: DaemonMessage::Work { batches },
                    close: false,
                });
            }
        }
    }

    fn lose_worker(&mut self, key: u64, reason: &str, now: u64, out: &mut Vec<Action>) {
        let Some(worker) = self.workers.remove(&key) else {
            return;
        };
        self.worker_keys.remove(&worker.id);
        if self.worker_by_pipe.get(&worker.pipe) == Some(&key) {
            self.worker_by_pipe.remove(&worker.pipe);
        }
        if let Some((to, _)) = worker.held_poll {
            out.push(Action::ReplyWorker {
                to,
                message: DaemonMessage::Reregister,
                close: false,
            });
        }
        if let Some(block) = worker.block {
            self.blocks.worker_left(block);
        }
        let mut requeue: HashMap<QueueKey, (Vec<TaskId>, u32)> = HashMap::new();
        let mut records = Vec::new();
        let mut requeued = 0u64;
        for batch_id in &worker.batches {
            let Some(batch) = self.batches.remove(batch_id) else {
                continue;
            };
            for id in batch.tasks {
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                if task.state != TaskState::Running || task.batch != Some(*batch_id) {
                    continue;
                }
                if task.attempts >= self.cfg.max_attempts {
                    let outcome = Outcome::Error(format!(
                        "the worker running this task was lost {} times (last: worker {} on {}, {reason}); giving up",
                        task.attempts, worker.id, worker.host
                    ));
                    if let Some(r) = self.finish(id, TaskState::Failed, outcome, None, 0, now, out)
                    {
                        records.push(r);
                    }
                } else {
                    task.state = TaskState::Queued;
                    task.batch = None;
                    let entry = requeue
                        .entry(task.queue_key())
                        .or_insert_with(|| (Vec::new(), task.max_batch));
                    entry.0.push(id);
                    requeued += 1;
                }
            }
        }
        for (qk, (ids, max_batch)) in requeue {
            self.queues.push_front(qk, ids, max_batch);
        }
        self.totals.requeued += requeued;
        tracing::warn!(
            worker = %worker.id,
            host = %worker.host,
            reason,
            requeued,
            failed = records.len(),
            "worker lost"
        );
        if !records.is_empty() {
            self.persist(StoreOp::PutResults(records), out);
        }
    }

    // ----- time, shutdown, retention ---------------------------------------

    fn on_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        let period = self.cfg.heartbeat_period_us;
        let threshold = self.cfg.heartbeat_threshold_us;
        let mut lost = Vec::new();
        for (&key, w) in &mut self.workers {
            if let Some((to, since)) = w.held_poll
                && now.saturating_sub(since) >= period
            {
                w.held_poll = None;
                out.push(Action::ReplyWorker {
                    to,
                    message: DaemonMessage::Work { batches: vec![] },
                    close: false,
                });
            }
            if now.saturating_sub(w.last_seen_us) > threshold {
                lost.push((key, w.pipe));
            }
        }
        for (key, pipe) in lost {
            self.lose_worker(key, "it missed its heartbeats", now, out);
            out.push(Action::ClosePipe { pipe });
        }
        let expired: Vec<u64> = self
            .waits
            .iter()
            .filter(|(_, w)| w.deadline_us <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.complete_wait(id, now, out);
        }
        if now.saturating_sub(self.last_sweep_us) >= SWEEP_PERIOD_US {
            self.last_sweep_us = now;
            self.sweep(now, out);
        }
    }

    fn sweep(&mut self, now: u64, out: &mut Vec<Action>) {
        let retention = (
            self.cfg.result_retention_us,
            self.cfg.unfetched_result_retention_us,
        );
        let mut forget = Vec::new();
        for fetched in [true, false] {
            let order = if fetched {
                &mut self.fetched_order
            } else {
                &mut self.finished_order
            };
            drain_expired(order, fetched, retention, now, &mut self.tasks, &mut forget);
        }
        if !forget.is_empty() {
            tracing::debug!(count = forget.len(), "forgetting expired results");
            self.persist(StoreOp::Forget(forget), out);
        }
    }

    fn begin_drain(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.draining.is_some() {
            return;
        }
        tracing::info!(
            running_batches = self.batches.len(),
            queued = self.queues.len(),
            grace_ms = self.cfg.shutdown_grace_us / 1000,
            "shutting down: no new tasks; waiting for running batches"
        );
        self.draining = Some(Drain {
            deadline_us: now + self.cfg.shutdown_grace_us,
            finished: false,
        });
        // Idle long-polls get nothing more to do; release them now.
        for w in self.workers.values_mut() {
            if let Some((to, _)) = w.held_poll.take() {
                out.push(Action::ReplyWorker {
                    to,
                    message: DaemonMessage::Work { batches: vec![] },
                    close: false,
                });
            }
        }
    }

    fn check_drain(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(drain) = &self.draining else {
            return;
        };
        if drain.finished || (!self.batches.is_empty() && now < drain.deadline_us) {
            return;
        }
        if !self.batches.is_empty() {
            tracing::warn!(
                running_batches = self.batches.len(),
                "grace period over; unfinished tasks will run again after a restart"
            );
        }
        if let Some(d) = &mut self.draining {
            d.finished = true;
        }
        for w in self.workers.values_mut() {
            if let Some((to, _)) = w.held_poll.take() {
                out.push(Action::ReplyWorker {
                    to,
                    message: DaemonMessage::Shutdown,
                    close: false,
                });
            }
        }
        let waits: Vec<u64> = self.waits.keys().copied().collect();
        for id in waits {
            self.complete_wait(id, now, out);
        }
        self.blocks.cancel_all(out);
        out.push(Action::Exit);
    }

    // ----- status ----------------------------------------------------------

    fn status(&self, now: u64) -> DaemonStatus {
        let mut running: BTreeMap<String, u64> = BTreeMap::new();
        for batch in self.batches.values() {
            if let Some(first) = batch.tasks.first().and_then(|id| self.tasks.get(id)) {
                *running.entry(first.servable.to_string()).or_default() += batch.tasks.len() as u64;
            }
        }
        let depth = self.queues.depth_by_servable();
        let mut names: Vec<&String> = depth.keys().chain(running.keys()).collect();
        names.sort();
        names.dedup();
        let queues = names
            .into_iter()
            .map(|name| QueueView {
                servable: name.clone(),
                queued: depth.get(name).copied().unwrap_or(0),
                running: running.get(name).copied().unwrap_or(0),
            })
            .collect();
        DaemonStatus {
            pid: self.cfg.pid,
            release: self.cfg.release.clone(),
            uptime_s: now.saturating_sub(self.started_us) / 1_000_000,
            draining: self.draining.is_some(),
            interchange: self.cfg.interchange.clone(),
            blocks: self.blocks.views(),
            blocks_paused: self.blocks.paused().map(str::to_owned),
            workers: self
                .workers
                .values()
                .map(|w| WorkerView {
                    id: w.id.to_string(),
                    block: w.block,
                    host: w.host.clone(),
                    slots: w.slots,
                    running: w.tasks,
                    last_seen_ms: now.saturating_sub(w.last_seen_us) / 1000,
                })
                .collect(),
            queues,
            totals: self.totals,
        }
    }
}

/// Pops expired entries from one retention order (`fetched`: ordered by
/// first fetch, else by finish time) and removes tasks whose retention is
/// over by either rule.
fn drain_expired(
    order: &mut VecDeque<(u64, TaskId)>,
    fetched: bool,
    (fetched_ret, unfetched_ret): (u64, u64),
    now: u64,
    tasks: &mut HashMap<TaskId, Task>,
    forget: &mut Vec<TaskId>,
) {
    let ret = if fetched { fetched_ret } else { unfetched_ret };
    while let Some(&(at, id)) = order.front() {
        if now.saturating_sub(at) < ret {
            break;
        }
        order.pop_front();
        let expired = tasks.get(&id).is_some_and(|t| {
            let by_fetch = t
                .fetched_us
                .is_some_and(|f| now.saturating_sub(f) >= fetched_ret);
            let by_age = now.saturating_sub(t.timings.finished_us) >= unfetched_ret;
            t.state.is_final() && (by_fetch || by_age)
        });
        if expired {
            tasks.remove(&id);
            forget.push(id);
        }
    }
}

/// Compares secrets without an early exit, so timing does not leak how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
