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
//!
//! The state is kept in typed tables, each the only writer of what it owns:
//! the task table (`tasks.rs`: a task's phase moves only through its
//! mutators), the worker table (`worker_table.rs`: workers by
//! key, the ready set, the dispatch cursor; a worker leaves it with a typed
//! loss reason), running batches (`batches.rs`) and the queues with what
//! sizes their batches (`scheduling.rs`). Dispatch (`dispatch.rs`) is a set
//! of functions over borrows of just the tables it needs. The handlers of
//! each kind of event live beside them: client calls (`clients.rs`), worker
//! messages (`workers.rs`), results and waits (`outcomes.rs`), time and
//! shutdown (`lifecycle.rs`), start-up and recovery (`startup.rs`).

pub mod access;
mod adaptive;
mod backoff;
mod batches;
mod blocks;
mod catalog;
mod clients;
mod dispatch;
mod durability;
mod event_log;
mod handshake;
mod id_set;
mod io;
mod lifecycle;
mod memo;
mod outcomes;
mod placement;
mod pools;
mod queues;
pub mod records;
mod scheduling;
mod search;
mod startup;
mod store_trouble;
pub mod tally;
mod task_events;
mod task_index;
mod tasks;
#[cfg(test)]
mod tests;
mod warm_plan;
mod warmth;
mod work_size;
mod worker_table;
mod workers;

use std::collections::HashMap;

use flotilla_protocol::TaskId;
use flotilla_protocol::servable::ServableRef;

pub use access::Caller;
pub use blocks::{BlockEvent, BlockPolicy, Demand};
pub use catalog::{Catalog, ServableInfo};
pub use io::{Action, Event, PipeId, ReplyTo};
pub use memo::{MemoScope, canonical as canonical_msgpack, key as memo_key};

use batches::BatchTable;
use dispatch::{Dispatch, Suspects};
use durability::Durability;
use event_log::EventLog;
use memo::{Memo, MemoKey};
use pools::Pools;
use records::{BlockRecord, StoreOp, StoredResult};
use scheduling::Scheduling;
use tasks::TaskTable;
use worker_table::{BlockId, LossReason, WorkerKey, WorkerTable};

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
    /// Workers no pool started (attached by hand) take no task that would
    /// end within this of their job's end; a pool's workers use their
    /// pool's [`BlockPolicy::walltime_margin_us`].
    pub walltime_margin_us: u64,
    /// After a restart with live blocks, how long recovered tasks wait for
    /// their workers to claim them.
    pub recovery_grace_us: u64,
    /// The secret workers must prove they know (it never crosses the wire).
    pub secret: Vec<u8>,
    /// Random bytes, fresh at each start, from which the daemon's handshake
    /// nonces are drawn (the core itself has no source of randomness).
    pub handshake_seed: [u8; 32],
    /// The ciphers this machine seals fast, best first
    /// ([`flotilla_protocol::secure::Cipher::fast_here`]): a worker's
    /// connection is sealed with the first it offers that is among them.
    pub ciphers: Vec<flotilla_protocol::secure::Cipher>,
    /// `[daemon] max_frame_bytes`: the largest frame any worker can be
    /// sent, so an input that makes a larger one is refused at submission.
    pub max_frame_bytes: usize,
    /// Each pool's blocks and scaling, in the site file's order (at least
    /// one; [`BlockPolicy::no_blocks`] for a core without a provider).
    pub pools: Vec<BlockPolicy>,
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
    /// The daemon's user (the uid it runs as): it administers the daemon
    /// and owns servables published before visibility existed.
    pub owner_uid: u32,
}

/// Identical memoizable requests in flight: one runs, the others wait.
#[derive(Debug)]
struct Inflight {
    leader: TaskId,
    followers: Vec<TaskId>,
}

/// The memo store and the identical requests in flight.
#[derive(Debug)]
struct Memoization {
    store: Memo,
    inflight: HashMap<MemoKey, Inflight>,
    /// Entries recovered beyond today's bounds, deleted by `start`.
    startup_evictions: Vec<MemoKey>,
}

/// A client waiting for results.
#[derive(Debug)]
struct Wait {
    to: ReplyTo,
    /// Whose tasks the waiting client may see.
    scope: access::TaskScope,
    ids: Vec<TaskId>,
    pending: usize,
    deadline_us: u64,
    min_seq: u64,
    /// Answered as soon as any of `ids` settles, with just the settled
    /// ones ([`flotilla_protocol::client::ClientCall::Settled`]), rather
    /// than once all are final.
    any: bool,
}

/// Client waits, and what holds replies back until the store has what
/// they promise.
#[derive(Debug)]
struct Replies {
    waits: rustc_hash::FxHashMap<u64, Wait>,
    next_wait: u64,
    durability: Durability,
    /// Results recorded but not yet handed to the store.
    pending_records: Vec<(TaskId, StoredResult)>,
    /// Why the store cannot write, while it cannot: no new tasks are
    /// accepted.
    store_failed: Option<String>,
    /// Waits for any of their tasks whose first task settled during this
    /// event: answered once the event is handled, so one reply carries
    /// every task a worker's result settled.
    ready_any: Vec<u64>,
}

/// The pools' blocks, and the event stream about them and their workers
/// (for `flotilla events`).
#[derive(Debug)]
struct Fleet {
    pools: Pools,
    /// Each pool's settings, in order, for placement (what dispatch reads).
    placement: Vec<BlockPolicy>,
    events: EventLog,
    /// What happened to tasks (for `flotilla events --tasks`).
    task_events: task_events::TaskEventLog,
}

/// What a restart left to settle, and the tasks suspected of killing
/// their workers.
#[derive(Debug)]
struct Recovery {
    /// Blocks recovered from the store, adopted by `start`.
    adopt: Vec<BlockRecord>,
    /// Recovered tasks waiting for reconnecting workers to claim them.
    held: Vec<TaskId>,
    /// When `held` tasks are queued regardless.
    hold_until_us: u64,
    /// Tasks that were running when their worker died (see
    /// [`dispatch::Suspects`]), with the block their worker belonged to: if
    /// that block turns out to have been ended by its scheduler, they are
    /// innocent after all.
    suspects: Suspects,
}

/// A graceful shutdown in progress.
#[derive(Debug)]
struct Drain {
    deadline_us: u64,
    finished: bool,
}

/// Workers on their way in: outstanding handshakes, and the rate at which
/// refusals are logged.
#[derive(Debug)]
struct Admission {
    handshakes: handshake::Handshakes,
    refusal_log: flotilla_protocol::peer_text::RateLimit,
}

/// The daemon's own life.
#[derive(Debug)]
struct Life {
    started_us: u64,
    draining: Option<Drain>,
    last_sweep_us: u64,
}

/// The daemon's scheduling state. See the module documentation.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    catalog: Catalog,
    tasks: TaskTable,
    workers: WorkerTable,
    batches: BatchTable,
    sched: Scheduling,
    memo: Memoization,
    replies: Replies,
    fleet: Fleet,
    recovery: Recovery,
    admission: Admission,
    life: Life,
    /// Warm capacity beyond each worker's slots (see `warmth.rs`).
    warm: warmth::WarmLedger,
    /// Counts for monitoring (see `tally.rs`).
    tally: tally::Tally,
}

impl Core {
    /// When (after `now_us`) the core next needs an [`Event::Tick`] to send
    /// a batch whose delay runs out, µs since the epoch.
    pub fn next_deadline(&self, now_us: u64) -> Option<u64> {
        if self.life.draining.is_some() {
            return None;
        }
        [
            self.sched.next_deadline(now_us),
            self.fleet.events.next_deadline(),
            self.fleet.task_events.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Reacts to one event at time `now_us` (µs since the epoch).
    pub fn handle(&mut self, event: Event, now_us: u64, out: &mut Vec<Action>) {
        match event {
            Event::Client { from, caller, call } => {
                self.on_client(from, &caller, call, now_us, out);
            }
            Event::Worker {
                from,
                pipe,
                message,
            } => self.on_worker(from, pipe, message, now_us, out),
            Event::PipeClosed { pipe } => {
                if let Some(key) = self.workers.by_pipe(pipe) {
                    self.lose_worker(key, LossReason::ConnectionClosed, now_us, out);
                }
            }
            Event::Durable { seq } => self.replies.durability.advance(seq, now_us, out),
            Event::StoreFailed { through, reason } => {
                self.on_store_failed(through, reason, now_us, out);
            }
            Event::StoreRecovered => self.on_store_recovered(out),
            Event::Block(ev) => {
                if let Some((_, block)) = self.fleet.pools.on_event(ev, now_us) {
                    self.block_ended(BlockId(block), now_us, out);
                }
                self.run_strategy(now_us, out);
            }
            Event::Tick => self.on_tick(now_us, out),
            Event::Shutdown => self.begin_drain(now_us, out),
        }
        if !self.recovery.held.is_empty() && self.fleet.pools.adopted_settled() {
            // Every worker of the adopted blocks is back (or they ended):
            // nothing more will be claimed.
            self.release_held(now_us);
        }
        self.dispatch(now_us, out);
        self.check_drain(now_us, out);
        self.after_event(now_us, out);
        self.answer_ready_waits(now_us, out);
        self.flush_records(out);
    }

    /// What the metrics endpoint shows now: counts since start, the memo
    /// store, and the daemon's status (queues, blocks, workers).
    pub fn metrics(&self, now_us: u64) -> tally::MetricsSnapshot {
        tally::MetricsSnapshot {
            servables: self.tally.snapshot(),
            memo: self.memo.store.summary(),
            status: self.status(now_us),
        }
    }

    /// Last store sequence number issued (the I/O layer waits for it on exit).
    pub fn issued_seq(&self) -> u64 {
        self.replies.durability.issued()
    }

    /// Last store sequence number the core heard was durable.
    pub fn durable_seq(&self) -> u64 {
        self.replies.durability.durable()
    }

    /// The dispatch tables, borrowed apart from the rest of the core.
    fn dispatcher(&mut self) -> (Dispatch<'_>, &mut Suspects) {
        let d = Dispatch {
            tasks: &mut self.tasks,
            workers: &mut self.workers,
            batches: &mut self.batches,
            sched: &mut self.sched,
            catalog: &self.catalog,
            pools: &self.fleet.placement,
            walltime_margin_us: self.cfg.walltime_margin_us,
            ledger: &mut self.warm,
            tally: &mut self.tally,
        };
        (d, &mut self.recovery.suspects)
    }

    /// Gives queued work to workers that hold a long-poll.
    fn dispatch(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.life.draining.is_some() {
            return;
        }
        let (mut d, suspects) = self.dispatcher();
        dispatch::dispatch(&mut d, suspects, now, out);
    }

    /// Batches for worker `key`'s free slots, now (none while draining).
    fn fill(&mut self, key: WorkerKey, now: u64) -> warmth::Filled {
        if self.life.draining.is_some() {
            return warmth::Filled::default();
        }
        let (mut d, _) = self.dispatcher();
        dispatch::fill(&mut d, key, now)
    }

    /// Carries the block table's news out: events for `flotilla events`,
    /// block records for the store.
    fn after_event(&mut self, now: u64, out: &mut Vec<Action>) {
        for (pool, note) in self.fleet.pools.take_notes() {
            let about = event_log::Subject {
                block: note.block,
                worker: None,
                pool: pool.as_deref(),
            };
            self.fleet
                .events
                .push(now, note.kind, about, note.message, out);
        }
        for op in self.fleet.pools.take_store_ops() {
            self.persist(op, out);
        }
        let notes = self.tasks.take_notes();
        self.fleet.task_events.push(now, notes, out);
    }

    /// Records an event about a worker.
    fn worker_event(
        &mut self,
        now: u64,
        kind: &str,
        block: Option<BlockId>,
        worker: &str,
        message: String,
        out: &mut Vec<Action>,
    ) {
        let pool = block.and_then(|b| self.fleet.pools.name_of_block(b.0));
        let pool = pool.map(str::to_owned);
        let about = event_log::Subject {
            block: block.map(|b| b.0),
            worker: Some(worker),
            pool: pool.as_deref(),
        };
        self.fleet.events.push(now, kind, about, message, out);
    }

    /// The work outstanding, split between the pools (see
    /// [`placement`]), for their scaling strategies.
    fn demands(&self, now: u64) -> Vec<Demand> {
        let count = self.fleet.pools.len();
        let mut work = placement::Work {
            waiting: self.sched.queues.depth_by_servable(),
            running: vec![0; count],
            busy: std::collections::BTreeMap::new(),
        };
        let recovery = &self.recovery;
        let waiting = recovery
            .held
            .iter()
            .chain(recovery.suspects.iter().map(|(id, _)| id));
        for id in waiting {
            if let Some(task) = self.tasks.get(id) {
                *work.waiting.entry(task.target.to_string()).or_default() += 1;
            }
        }
        for (_, w) in self.workers.iter() {
            if let Some(slot) = w.about.pool.and_then(|i| work.running.get_mut(i)) {
                *slot += u64::from(w.tasks());
            }
            if let Some(block) = w.about.block {
                *work.busy.entry(block.0).or_insert(0) += w.tasks();
            }
        }
        let servables: Vec<String> = work.waiting.keys().cloned().collect();
        let states: Vec<placement::PoolState> = (0..count)
            .map(|i| placement::PoolState {
                capacity: self.fleet.pools.has_capacity(i, now),
                // With one pool there is nothing to choose between.
                warm: if count > 1 {
                    servables.iter().map(|s| self.warm(i, s)).collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        placement::demands(
            &self.catalog,
            &self.fleet.placement,
            &states,
            &servables,
            &work,
        )
    }

    /// Whether pool `pool` has a connected worker that can run `servable`.
    fn warm(&self, pool: usize, servable: &str) -> bool {
        self.workers.iter().any(|(_, w)| {
            w.about.pool == Some(pool)
                && catalog::worker_can_run(&self.catalog, &w.about.servables, servable)
                && dispatch::slots_fit(&self.catalog, &w.about, servable)
                && placement::worker_may_run(
                    &self.catalog,
                    &self.fleet.placement,
                    w.about.pool,
                    servable,
                )
        })
    }

    /// Runs every pool's scaling strategy now: after a block event or a
    /// resumed pool, which may move work from one pool to another.
    fn run_strategy(&mut self, now: u64, out: &mut Vec<Action>) {
        self.strategize(false, now, out);
    }

    /// Runs the strategies of the pools whose own period has passed.
    fn run_due_strategies(&mut self, now: u64, out: &mut Vec<Action>) {
        self.strategize(true, now, out);
    }

    fn strategize(&mut self, only_due: bool, now: u64, out: &mut Vec<Action>) {
        if self.life.draining.is_some() {
            return;
        }
        let demands = self.demands(now);
        self.fleet.pools.strategize(&demands, only_due, now, out);
    }

    /// A block ended: its workers are gone with it, whether or not their
    /// connections have said so yet.
    fn block_ended(&mut self, block: BlockId, now: u64, out: &mut Vec<Action>) {
        for (key, pipe) in self.workers.in_block(block) {
            self.lose_worker(key, LossReason::BlockEnded { block }, now, out);
            out.push(Action::ClosePipe { pipe });
        }
        // Workers whose connection dropped just before the scheduler's word
        // came did not die of their tasks: those go back to the queue. A
        // block that merely failed or completed may have ended because its
        // worker died (a local block is its worker), so its suspects stay.
        if !self.fleet.pools.ended_by_scheduler(block.0) {
            return;
        }
        let (innocent, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.recovery.suspects)
            .into_iter()
            .partition(|(_, b)| *b == Some(block));
        self.recovery.suspects = rest.into();
        let innocent = innocent.into_iter().map(|(id, _)| id).collect();
        self.sched.requeue_front(&self.tasks, innocent);
    }

    /// Queues the recovered tasks no reconnecting worker claimed.
    fn release_held(&mut self, now: u64) {
        let held = std::mem::take(&mut self.recovery.held);
        let mut released = 0u64;
        for id in held {
            if self.tasks.get(&id).is_some_and(|t| t.is_queued()) {
                self.place(id, now);
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
        if self.replies.pending_records.is_empty() {
            return self.replies.durability.issued();
        }
        let records = std::mem::take(&mut self.replies.pending_records);
        self.persist(StoreOp::PutResults(records), out)
    }

    fn persist(&mut self, op: StoreOp, out: &mut Vec<Action>) -> u64 {
        let seq = self.replies.durability.issue();
        if let StoreOp::PutTasks(new) = &op {
            // Withdrawn if this write fails (see `store_trouble.rs`).
            let ids = new.iter().map(|t| t.id).collect();
            self.replies.durability.track_tasks(seq, ids);
        }
        out.push(Action::Persist { seq, op });
        seq
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
}
