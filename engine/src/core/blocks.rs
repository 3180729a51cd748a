//! Blocks: the pilot jobs of the pool, and the strategy that sizes it.
//!
//! Every `strategy_period` the strategy compares the work outstanding
//! (queued and running tasks) with the slots the live blocks bring, and asks
//! for blocks or gives them back:
//!
//! * wanted = ⌈outstanding × parallelism ÷ slots per block⌉, at least one
//!   while anything is outstanding, kept within `min_blocks..=max_blocks`;
//! * more blocks are submitted when fewer are live than wanted; pending
//!   blocks count as live, so a burst never asks for a block twice;
//! * when more are live than wanted, pending blocks that never connected go
//!   first (newest first), then blocks idle for `max_idle`; none is
//!   cancelled younger than `min_block_lifetime`, none is requested within
//!   `cooldown` of a cancel, and `min_blocks` always stay;
//! * a block whose wall time ends within `replace_ahead` no longer counts
//!   while work is queued, so its replacement starts before it ends (and it
//!   does not count against `max_blocks` either: it is leaving);
//! * a running block none of whose workers connected within
//!   `connect_timeout` is cancelled; it and blocks that end before any
//!   worker connected are failures, and after `max_failures` in a row the
//!   pool is paused (no block starts) until it is resumed;
//! * a submission the scheduler refuses (its submit command said no: a
//!   per-user job limit, a node count over the partition's) or that could
//!   not reach the scheduler started nothing and is no failure: the block
//!   waits as `REFUSED`, and one try at a time goes out after
//!   `strategy_period`, doubling after each refusal in a row up to
//!   `retry_max`, the scheduler's words in `flotilla status` meanwhile; no
//!   new block is asked for while one waits, and the first accepted
//!   submission ends the backoff;
//! * `max_queued_blocks` caps the blocks submitted but not yet running, and
//!   `queue_job_limit` every job of the pool the scheduler's queue holds
//!   (pending, running, leaving or being cancelled): a replacement for a
//!   block near its wall time waits for it to end when the queue is full.
//!
//! Nothing here does I/O: it turns provider reports, worker arrivals and the
//! core's demand figures into actions, events for `flotilla events`, and
//! block records for the store (so a restarted daemon adopts its blocks).

use std::collections::BTreeMap;

use flotilla_protocol::client::{BlockView, PoolView};
use flotilla_providers::{JobState, RefusedBy};

use super::Action;
use super::backoff::{Backoff, refusal_text};
use super::records::{BlockRecord, StoreOp};

/// The pool's settings, from `[provider]` and `[launcher]`, in µs.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockPolicy {
    /// Pool name.
    pub pool: String,
    /// Provider kind, for status.
    pub provider: String,
    /// Blocks started with the daemon.
    pub init_blocks: u32,
    /// Fewest blocks kept alive.
    pub min_blocks: u32,
    /// Most blocks held at once.
    pub max_blocks: u32,
    /// Consecutive failed blocks before the pool is paused.
    pub max_failures: u32,
    /// Workers each block starts (nodes × workers per node).
    pub workers_per_block: u32,
    /// Slots per worker, when configured (else learned from workers).
    pub slots_per_worker: Option<u32>,
    /// Slots requested per outstanding task.
    pub parallelism: f64,
    /// Strategy period.
    pub strategy_period_us: u64,
    /// Idle time after which a block beyond `min_blocks` is cancelled.
    pub max_idle_us: u64,
    /// Youngest age at which a block may be cancelled for scaling in.
    pub min_lifetime_us: u64,
    /// No scale-out this soon after a scale-in cancel.
    pub cooldown_us: u64,
    /// A running block with no worker after this long is a failure.
    pub connect_timeout_us: u64,
    /// A block's wall time, when its provider enforces one.
    pub walltime_us: Option<u64>,
    /// Replace blocks with less wall time left than this.
    pub replace_ahead_us: u64,
    /// Most blocks submitted but not yet running (`max_queued_blocks`).
    pub max_queued: Option<u32>,
    /// Most jobs of the pool in the scheduler's queue at once, whatever
    /// their state (`queue_job_limit`).
    pub queue_job_limit: Option<u32>,
    /// Longest wait between tries after refused submissions.
    pub retry_max_us: u64,
    /// What servables' `[resources] labels` are matched against.
    pub labels: BTreeMap<String, String>,
    /// Preference among pools that could serve the same queue (lower is
    /// preferred, after warm workers and capacity).
    pub cost: f64,
    /// Accelerators each slot of this pool's workers holds, when the site
    /// says (`[worker] accelerators` and `slots`): a servable needing more
    /// never scales this pool. `None`: not known before workers say.
    pub accelerators_per_slot: Option<u32>,
    /// This pool's workers take no task expected to end within this of
    /// their job's end (`[provider] walltime_margin_s`).
    pub walltime_margin_us: u64,
}

impl BlockPolicy {
    /// A pool that never starts a block: for a core driven without a
    /// provider (benchmarks, embedding).
    pub fn no_blocks() -> Self {
        BlockPolicy {
            pool: "none".into(),
            provider: "none".into(),
            init_blocks: 0,
            min_blocks: 0,
            max_blocks: 0,
            max_failures: 1,
            workers_per_block: 1,
            slots_per_worker: None,
            parallelism: 0.0,
            strategy_period_us: 1_000_000,
            max_idle_us: 0,
            min_lifetime_us: 0,
            cooldown_us: 0,
            connect_timeout_us: u64::MAX,
            walltime_us: None,
            replace_ahead_us: 0,
            max_queued: None,
            queue_job_limit: None,
            retry_max_us: 300_000_000,
            labels: BTreeMap::new(),
            cost: 0.0,
            accelerators_per_slot: None,
            walltime_margin_us: 0,
        }
    }
}

/// What the provider side reports about a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockEvent {
    /// The provider accepted the block under `job`.
    Submitted {
        /// Block id.
        block: u32,
        /// Provider's job id.
        job: String,
    },
    /// The block could not be submitted and retrying cannot help (its
    /// script could not be written, the scheduler's answer held no job id):
    /// a failure.
    SubmitFailed {
        /// Block id.
        block: u32,
        /// Why.
        reason: String,
    },
    /// Nothing started but a later try may succeed: the scheduler refused
    /// the job at submission, or could not be reached. No failure.
    SubmitRefused {
        /// Block id.
        block: u32,
        /// Who said no.
        by: RefusedBy,
        /// Their words.
        message: String,
    },
    /// The block's job changed state.
    State {
        /// Block id.
        block: u32,
        /// New state.
        state: JobState,
        /// The provider's explanation.
        message: Option<String>,
    },
}

/// The work the strategy sizes the pool for.
#[derive(Clone, Debug, Default)]
pub struct Demand {
    /// Tasks waiting for a worker.
    pub queued: u64,
    /// Tasks on workers.
    pub running: u64,
    /// Tasks running per block.
    pub busy: BTreeMap<u32, u32>,
}

/// Something for `flotilla events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Kind (`block-submitted`, …).
    pub kind: &'static str,
    /// The block.
    pub block: Option<u32>,
    /// Details.
    pub message: String,
}

#[derive(Debug)]
struct Block {
    state: JobState,
    job: Option<String>,
    workers: u32,
    ever_connected: bool,
    message: Option<String>,
    cancelling: bool,
    /// Refused at submission: waits for the backoff to try again.
    refused: bool,
    submitted_us: u64,
    running_since_us: Option<u64>,
    /// Since when its workers are expected (running, or adopted running):
    /// the connect timeout counts from here.
    expected_since_us: Option<u64>,
    last_busy_us: u64,
}

impl Block {
    fn live(&self) -> bool {
        !self.state.is_terminal() && !self.cancelling
    }

    /// Held by the scheduler, or on its way there: not ended and not
    /// waiting after a refusal.
    fn in_queue(&self) -> bool {
        !self.state.is_terminal() && !self.refused
    }

    /// Submitted (or on its way) and not yet running.
    fn queued(&self) -> bool {
        self.live() && !self.refused && self.running_since_us.is_none()
    }

    fn time_left_us(&self, walltime_us: Option<u64>, now: u64) -> Option<u64> {
        let since = self.running_since_us?;
        Some(walltime_us?.saturating_sub(now.saturating_sub(since)))
    }
}

/// The block table and its strategy.
#[derive(Debug)]
pub struct Blocks {
    policy: BlockPolicy,
    blocks: BTreeMap<u32, Block>,
    next_id: u32,
    consecutive_failures: u32,
    paused: Option<String>,
    /// Set while submissions are refused.
    backoff: Option<Backoff>,
    stopping: bool,
    /// No scale-out before this (a cancel's cooldown).
    cooldown_until_us: u64,
    last_strategy_us: u64,
    wanted: u32,
    /// Why wanted blocks were not submitted at the last strategy run, when
    /// a queue limit held them back.
    held: Option<String>,
    submitted: u32,
    learned_slots: Option<u32>,
    /// Blocks taken over from before a restart.
    adopted: Vec<u32>,
    notes: Vec<Note>,
    store_ops: Vec<StoreOp>,
}

impl Blocks {
    /// An empty table under `policy`; block ids start at `next_id`.
    pub fn new(policy: BlockPolicy, next_id: u32) -> Self {
        Blocks {
            policy,
            blocks: BTreeMap::new(),
            next_id,
            consecutive_failures: 0,
            paused: None,
            backoff: None,
            stopping: false,
            cooldown_until_us: 0,
            last_strategy_us: 0,
            wanted: 0,
            held: None,
            submitted: 0,
            learned_slots: None,
            adopted: Vec::new(),
            notes: Vec::new(),
            store_ops: Vec::new(),
        }
    }

    /// Takes back blocks a previous daemon left running: they are polled
    /// again, count as live, and their workers are expected back.
    pub fn adopt(&mut self, records: Vec<BlockRecord>, now: u64, out: &mut Vec<Action>) {
        for r in records {
            self.next_id = self.next_id.max(r.id + 1);
            self.adopted.push(r.id);
            self.note(
                "block-adopted",
                Some(r.id),
                format!("job {} from before the restart", r.job),
            );
            out.push(Action::AdoptBlock {
                pool: self.policy.pool.clone(),
                block: r.id,
                job: r.job.clone(),
            });
            self.blocks.insert(
                r.id,
                Block {
                    state: JobState::Unknown,
                    job: Some(r.job),
                    workers: 0,
                    ever_connected: false,
                    message: None,
                    cancelling: false,
                    refused: false,
                    submitted_us: r.submitted_us,
                    expected_since_us: r.running_since_us.map(|_| now),
                    running_since_us: r.running_since_us,
                    last_busy_us: now,
                },
            );
        }
    }

    /// Whether every adopted block still alive has all its workers back
    /// (then nothing more will be claimed after a restart).
    pub fn adopted_settled(&self) -> bool {
        self.adopted.iter().all(|id| {
            self.blocks
                .get(id)
                .is_none_or(|b| !b.live() || b.workers >= self.policy.workers_per_block)
        })
    }

    /// Starts the initial blocks (beyond those adopted).
    pub fn start(&mut self, now: u64, out: &mut Vec<Action>) {
        let want = self
            .policy
            .init_blocks
            .max(self.policy.min_blocks)
            .min(self.policy.max_blocks);
        while self.active(now, false) < want && self.paused.is_none() && self.room() > 0 {
            self.submit(now, "initial block", out);
        }
        self.last_strategy_us = now;
    }

    /// Live blocks that count as capacity (with `queued_work`, blocks about
    /// to reach their wall time do not).
    fn active(&self, now: u64, queued_work: bool) -> u32 {
        self.blocks
            .values()
            .filter(|b| b.live() && !(queued_work && self.ending(b, now)))
            .count() as u32
    }

    fn ending(&self, b: &Block, now: u64) -> bool {
        b.time_left_us(self.policy.walltime_us, now)
            .is_some_and(|left| left < self.policy.replace_ahead_us)
    }

    fn submit(&mut self, now: u64, why: &str, out: &mut Vec<Action>) {
        let id = self.next_id;
        self.next_id += 1;
        self.submitted += 1;
        self.blocks.insert(
            id,
            Block {
                state: JobState::Pending,
                job: None,
                workers: 0,
                ever_connected: false,
                message: None,
                cancelling: false,
                refused: false,
                submitted_us: now,
                running_since_us: None,
                expected_since_us: None,
                last_busy_us: now,
            },
        );
        tracing::info!(block = id, reason = why, "starting block");
        self.note("block-requested", Some(id), why.to_owned());
        out.push(Action::SubmitBlock {
            pool: self.policy.pool.clone(),
            block: id,
        });
    }

    fn cancel(&mut self, id: u32, why: String, out: &mut Vec<Action>) {
        let Some(b) = self.blocks.get_mut(&id) else {
            return;
        };
        if !b.live() {
            return;
        }
        if b.refused {
            // Nothing at the scheduler to cancel: it ends here.
            b.refused = false;
            b.state = JobState::Cancelled;
            b.message = Some(why.clone());
            tracing::info!(block = id, reason = %why, "dropping a refused block");
            self.note("block-cancelled", Some(id), why);
            return;
        }
        b.cancelling = true;
        tracing::info!(block = id, reason = %why, "cancelling block");
        self.note("block-cancelled", Some(id), why);
        out.push(Action::CancelBlock {
            pool: self.policy.pool.clone(),
            block: id,
        });
    }

    fn note(&mut self, kind: &'static str, block: Option<u32>, message: String) {
        self.notes.push(Note {
            kind,
            block,
            message,
        });
    }

    /// Events since the last call.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Store writes since the last call.
    pub fn take_store_ops(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.store_ops)
    }

    fn record(&mut self, id: u32) {
        if let Some(b) = self.blocks.get(&id)
            && let Some(job) = &b.job
        {
            self.store_ops.push(StoreOp::PutBlock(BlockRecord {
                id,
                job: job.clone(),
                submitted_us: b.submitted_us,
                running_since_us: b.running_since_us,
                pool: self.policy.pool.clone(),
            }));
        }
    }

    /// Applies a provider report; returns the block if it just ended (its
    /// workers are gone with it).
    pub fn on_event(&mut self, event: BlockEvent, now: u64) -> Option<u32> {
        match event {
            BlockEvent::Submitted { block, job } => {
                if let Some(b) = self.blocks.get_mut(&block) {
                    tracing::info!(block, job = %job, "block submitted");
                    b.job = Some(job.clone());
                    self.note("block-submitted", Some(block), format!("job {job}"));
                    self.record(block);
                }
                if let Some(backoff) = self.backoff.take() {
                    tracing::info!(
                        block,
                        refusals = backoff.refusals(),
                        "the scheduler accepts blocks again"
                    );
                }
                None
            }
            BlockEvent::SubmitRefused { block, by, message } => {
                self.refused(block, by, message, now);
                None
            }
            BlockEvent::SubmitFailed { block, reason } => {
                tracing::error!(block, reason = %reason, "block could not be started");
                if let Some(b) = self.blocks.get_mut(&block) {
                    b.state = JobState::Failed;
                    b.message = Some(reason.clone());
                }
                // A try that fails for want of a block, not of the
                // scheduler's consent, must not leave the backoff waiting
                // for an answer that came.
                if let Some(backoff) = &mut self.backoff {
                    backoff.try_lost(now);
                }
                self.note("block-failed", Some(block), reason);
                self.failed(block);
                None
            }
            BlockEvent::State {
                block,
                state,
                message,
            } => {
                let b = self.blocks.get_mut(&block)?;
                if b.state == state {
                    return None;
                }
                tracing::info!(block, from = %b.state, to = %state, message = message.as_deref().unwrap_or(""), "block state");
                let was_terminal = b.state.is_terminal();
                b.state = state;
                if message.is_some() {
                    b.message = message.clone();
                }
                let mut record = false;
                if state == JobState::Running && b.running_since_us.is_none() {
                    b.running_since_us = Some(now);
                    b.last_busy_us = now;
                    record = true;
                }
                if state == JobState::Running && b.expected_since_us.is_none() {
                    b.expected_since_us = Some(now);
                }
                let cancelling = b.cancelling;
                let ever_connected = b.ever_connected;
                let detail = message.unwrap_or_default();
                self.note(
                    "block-state",
                    Some(block),
                    if detail.is_empty() {
                        state.to_string()
                    } else {
                        format!("{state}: {detail}")
                    },
                );
                if record {
                    self.record(block);
                }
                if !state.is_terminal() || was_terminal {
                    return None;
                }
                self.store_ops.push(StoreOp::RemoveBlock(block));
                if !cancelling && !ever_connected {
                    self.failed(block);
                }
                Some(block)
            }
        }
    }

    fn failed(&mut self, block: u32) {
        self.consecutive_failures += 1;
        if self.consecutive_failures >= self.policy.max_failures && self.paused.is_none() {
            let last = self
                .blocks
                .get(&block)
                .and_then(|b| b.message.clone())
                .unwrap_or_else(|| "no message from the provider".into());
            let reason = format!(
                "{} blocks in a row failed (could not be submitted, or ended or timed out before any worker connected); not starting more until `flotilla pool resume {}`. Last block {block}: {last}",
                self.consecutive_failures, self.policy.pool
            );
            tracing::error!(pool = %self.policy.pool, reason = %reason, "pool paused");
            self.note("pool-paused", Some(block), reason.clone());
            self.paused = Some(reason);
        }
    }

    /// True when `block` ended by its scheduler's doing (cancelled from
    /// outside, out of wall time, forgotten) rather than because its
    /// processes exited: a worker that died just before could not help it.
    pub fn ended_by_scheduler(&self, block: u32) -> bool {
        self.blocks.get(&block).is_some_and(|b| {
            matches!(
                b.state,
                JobState::Cancelled | JobState::Timeout | JobState::Missing
            )
        })
    }

    /// Whether block `block` is one of this pool's and its job has ended
    /// (its workers' tasks were already handed back).
    pub fn has_ended(&self, block: u32) -> bool {
        self.blocks
            .get(&block)
            .is_some_and(|b| b.state.is_terminal())
    }

    /// Starts blocks again after a pause.
    pub fn resume(&mut self, name: &str) -> Result<(), String> {
        if name != self.policy.pool {
            return Err(format!(
                "no pool `{name}` (this daemon's pool is `{}`)",
                self.policy.pool
            ));
        }
        if self.paused.take().is_none() {
            return Err(format!("pool `{name}` is not paused"));
        }
        self.consecutive_failures = 0;
        tracing::info!(pool = name, "pool resumed");
        self.note("pool-resumed", None, format!("pool `{name}` resumed"));
        Ok(())
    }

    /// A worker of `block` registered with `slots` slots.
    pub fn worker_joined(&mut self, block: u32, slots: u32, now: u64) {
        if self.policy.slots_per_worker.is_none() {
            self.learned_slots = Some(self.learned_slots.map_or(slots, |s| s.max(slots)));
        }
        let mut record = false;
        if let Some(b) = self.blocks.get_mut(&block) {
            b.workers += 1;
            b.ever_connected = true;
            if matches!(b.state, JobState::Pending | JobState::Unknown) {
                b.state = JobState::Running;
            }
            if b.running_since_us.is_none() {
                b.running_since_us = Some(now);
                b.last_busy_us = now;
                record = true;
            }
            self.consecutive_failures = 0;
        }
        if record {
            self.record(block);
        }
    }

    /// A worker of `block` left or was lost.
    pub fn worker_left(&mut self, block: u32) {
        if let Some(b) = self.blocks.get_mut(&block) {
            b.workers = b.workers.saturating_sub(1);
        }
    }

    /// Whether the strategy is due.
    pub fn strategy_due(&self, now: u64) -> bool {
        now.saturating_sub(self.last_strategy_us) >= self.policy.strategy_period_us
    }

    /// Runs the strategy against `demand`.
    pub fn strategize(&mut self, demand: &Demand, now: u64, out: &mut Vec<Action>) {
        self.last_strategy_us = now;
        if self.stopping {
            return;
        }
        for (&id, &busy) in &demand.busy {
            if busy > 0
                && let Some(b) = self.blocks.get_mut(&id)
            {
                b.last_busy_us = now;
            }
        }
        self.enforce_connect_timeout(now, out);
        let p = &self.policy;
        let slots = p.workers_per_block.max(1)
            * p.slots_per_worker
                .or(self.learned_slots)
                .unwrap_or(1)
                .max(1);
        let outstanding = demand.queued + demand.running;
        let mut wanted = if outstanding == 0 || p.parallelism <= 0.0 {
            0
        } else {
            ((outstanding as f64 * p.parallelism) / f64::from(slots))
                .ceil()
                .max(1.0)
                .min(f64::from(u32::MAX)) as u32
        };
        wanted = wanted.clamp(p.min_blocks.min(p.max_blocks), p.max_blocks);
        self.wanted = wanted;
        let queued = demand.queued > 0;
        let active = self.active(now, queued);
        self.held = None;
        if wanted < active {
            self.scale_in(
                active - wanted.max(self.policy.min_blocks),
                demand,
                now,
                out,
            );
        }
        if self.paused.is_some() {
            return;
        }
        // Refused blocks still wanted go first.
        self.retry_refused(now, out);
        let cooling = now < self.cooldown_until_us && active >= self.policy.min_blocks;
        if wanted > active && !cooling {
            self.scale_out(wanted - active, active, now, out);
        }
    }

    /// Submits up to `need` new blocks, as the queue limits allow; none
    /// while a refused block waits, one at a time during a backoff.
    fn scale_out(&mut self, need: u32, active: u32, now: u64, out: &mut Vec<Action>) {
        if self.blocks.values().any(|b| b.live() && b.refused) {
            return;
        }
        let mut count = need.min(self.room());
        if let Some(backoff) = &self.backoff {
            if !backoff.due(now) {
                return;
            }
            count = count.min(1);
        }
        for _ in 0..count {
            let why = if self
                .blocks
                .values()
                .any(|b| b.live() && self.ending(b, now))
            {
                "replacing a block near its wall time"
            } else if active < self.policy.min_blocks {
                "keeping min_blocks"
            } else {
                "queued work"
            };
            self.submit(now, why, out);
        }
        if count < need {
            self.held = self.limit_reached();
        }
        if count > 0
            && let Some(backoff) = &mut self.backoff
        {
            backoff.try_sent();
        }
    }

    /// Submits refused blocks again, oldest first, when the backoff is due
    /// (one, as a probe) and the queue limits allow.
    fn retry_refused(&mut self, now: u64, out: &mut Vec<Action>) {
        let probe = match &self.backoff {
            None => false,
            Some(b) if b.due(now) => true,
            Some(_) => return,
        };
        let room = if probe {
            self.room().min(1)
        } else {
            self.room()
        };
        let waiting: Vec<u32> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.live() && b.refused)
            .map(|(&id, _)| id)
            .take(room as usize)
            .collect();
        for &id in &waiting {
            if let Some(b) = self.blocks.get_mut(&id) {
                b.refused = false;
            }
            tracing::info!(block = id, "submitting a refused block again");
            self.note(
                "block-requested",
                Some(id),
                "trying again after a refused submission".into(),
            );
            out.push(Action::SubmitBlock {
                pool: self.policy.pool.clone(),
                block: id,
            });
        }
        if !waiting.is_empty()
            && let Some(backoff) = &mut self.backoff
        {
            backoff.try_sent();
        }
    }

    /// How many more blocks the queue limits let out now.
    fn room(&self) -> u32 {
        let count = |f: fn(&Block) -> bool| self.blocks.values().filter(|b| f(b)).count() as u32;
        let free =
            |limit: Option<u32>, used: u32| limit.map_or(u32::MAX, |l| l.saturating_sub(used));
        free(self.policy.queue_job_limit, count(Block::in_queue))
            .min(free(self.policy.max_queued, count(Block::queued)))
    }

    /// Which queue limit holds blocks back, in words for `flotilla status`.
    fn limit_reached(&self) -> Option<String> {
        let count = |f: fn(&Block) -> bool| self.blocks.values().filter(|b| f(b)).count() as u32;
        if let Some(limit) = self.policy.queue_job_limit {
            let used = count(Block::in_queue);
            if used >= limit {
                return Some(format!(
                    "queue_job_limit = {limit} reached ({used} of this pool's jobs in the queue): the next block waits for one to end"
                ));
            }
        }
        if let Some(limit) = self.policy.max_queued {
            let used = count(Block::queued);
            if used >= limit {
                return Some(format!(
                    "max_queued_blocks = {limit} reached ({used} blocks submitted and not yet running): the next block waits for one to start"
                ));
            }
        }
        None
    }

    /// Block `block` was refused at submission: it waits, and the backoff
    /// grows.
    fn refused(&mut self, block: u32, by: RefusedBy, message: String, now: u64) {
        let Some(b) = self.blocks.get_mut(&block) else {
            return;
        };
        b.message = Some(refusal_text(by, &message));
        if b.cancelling {
            // No longer wanted, and nothing at the scheduler to cancel.
            b.state = JobState::Cancelled;
            return;
        }
        b.refused = true;
        let backoff = Backoff::refused(
            self.backoff.as_ref(),
            by,
            message,
            now,
            self.policy.strategy_period_us,
            self.policy.retry_max_us,
        );
        let text = backoff.describe(now);
        tracing::warn!(block, refusals = backoff.refusals(), reason = %text, "block submission refused");
        self.backoff = Some(backoff);
        self.note("block-refused", Some(block), text);
    }

    /// The backoff in words, while there is one.
    fn backoff_text(&self, now: u64) -> Option<String> {
        self.backoff.as_ref().map(|b| b.describe(now))
    }

    fn scale_in(&mut self, mut excess: u32, demand: &Demand, now: u64, out: &mut Vec<Action>) {
        let p = &self.policy;
        let old_enough = |b: &Block| now.saturating_sub(b.submitted_us) >= p.min_lifetime_us;
        // Pending blocks that never connected first, newest first.
        let mut pending: Vec<u32> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.live() && b.workers == 0 && !b.ever_connected && old_enough(b))
            .map(|(&id, _)| id)
            .collect();
        pending.reverse();
        let idle: Vec<u32> = self
            .blocks
            .iter()
            .filter(|(id, b)| {
                b.live()
                    && b.ever_connected
                    && demand.busy.get(id).copied().unwrap_or(0) == 0
                    && now.saturating_sub(b.last_busy_us) >= p.max_idle_us
                    && old_enough(b)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in pending.into_iter().chain(idle) {
            if excess == 0 {
                break;
            }
            let why = match self.blocks.get(&id) {
                Some(b) if b.ever_connected => format!(
                    "idle for {} s",
                    now.saturating_sub(b.last_busy_us) / 1_000_000
                ),
                _ => "no longer needed before it started".to_owned(),
            };
            self.cancel(id, why, out);
            self.cooldown_until_us = now + self.policy.cooldown_us;
            excess -= 1;
        }
    }

    fn enforce_connect_timeout(&mut self, now: u64, out: &mut Vec<Action>) {
        let limit = self.policy.connect_timeout_us;
        let late: Vec<u32> = self
            .blocks
            .iter()
            .filter(|(_, b)| {
                b.live()
                    && !b.ever_connected
                    && b.expected_since_us
                        .is_some_and(|since| now.saturating_sub(since) >= limit)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            let why = format!(
                "running for {} s and none of its workers connected (block_connect_timeout_s)",
                limit / 1_000_000
            );
            if let Some(b) = self.blocks.get_mut(&id) {
                b.message = Some(why.clone());
            }
            self.cancel(id, why, out);
            self.failed(id);
        }
    }

    /// Cancels every live block (shutdown).
    pub fn cancel_all(&mut self, out: &mut Vec<Action>) {
        self.stopping = true;
        let live: Vec<u32> = self
            .blocks
            .iter()
            .filter(|(_, b)| b.live())
            .map(|(&id, _)| id)
            .collect();
        for id in live {
            self.cancel(id, "the daemon is shutting down".into(), out);
        }
    }

    /// Why the pool is paused, if it is.
    pub fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    /// The pool for `flotilla status`.
    pub fn pool_view(&self, now: u64) -> PoolView {
        PoolView {
            name: self.policy.pool.clone(),
            provider: self.policy.provider.clone(),
            wanted: self.wanted,
            active: self.active(now, false),
            min_blocks: self.policy.min_blocks,
            max_blocks: self.policy.max_blocks,
            submitted: self.submitted,
            paused: self.paused.clone(),
            held: self.backoff_text(now).or_else(|| self.held.clone()),
        }
    }

    /// Rows for `flotilla status`.
    pub fn views(&self, now: u64) -> Vec<BlockView> {
        let secs = |us: u64| us / 1_000_000;
        self.blocks
            .iter()
            .map(|(&id, b)| BlockView {
                id,
                state: if b.refused && b.live() {
                    "REFUSED".into()
                } else if b.cancelling && !b.state.is_terminal() {
                    "CANCELLING".into()
                } else {
                    b.state.to_string()
                },
                job_id: b.job.clone(),
                workers: b.workers,
                message: if b.refused && b.live() {
                    self.backoff_text(now).or_else(|| b.message.clone())
                } else {
                    b.message.clone()
                },
                age_s: secs(now.saturating_sub(b.submitted_us)),
                walltime_left_s: if b.state.is_terminal() {
                    None
                } else {
                    b.time_left_us(self.policy.walltime_us, now).map(secs)
                },
                idle_s: (b.live() && b.ever_connected)
                    .then(|| secs(now.saturating_sub(b.last_busy_us))),
                pool: Some(self.policy.pool.clone()),
            })
            .collect()
    }

    /// The pool's settings.
    pub fn policy(&self) -> &BlockPolicy {
        &self.policy
    }

    /// The next block id this table would hand out.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Block ids are the daemon's, across pools: the next one to hand out
    /// (never lower than this table's own).
    pub fn set_next_id(&mut self, next: u32) {
        self.next_id = self.next_id.max(next);
    }

    /// Whether `block` is one of this pool's.
    pub fn has(&self, block: u32) -> bool {
        self.blocks.contains_key(&block)
    }

    /// Whether this pool could start a block for more work now: not
    /// paused, no refused submission waiting out a backoff, below
    /// `max_blocks` and the queue limits.
    pub fn has_capacity(&self, now: u64) -> bool {
        self.paused.is_none()
            && !self.stopping
            && self.backoff.is_none()
            && self.active(now, false) < self.policy.max_blocks
            && self.room() > 0
    }

    /// The blocks submitted since start.
    #[cfg(test)]
    pub fn submitted(&self) -> u32 {
        self.submitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn policy(init: u32, min: u32, max: u32) -> BlockPolicy {
        BlockPolicy {
            pool: "default".into(),
            provider: "local".into(),
            init_blocks: init,
            min_blocks: min,
            max_blocks: max,
            max_failures: 3,
            workers_per_block: 1,
            slots_per_worker: Some(4),
            parallelism: 1.0,
            strategy_period_us: S,
            max_idle_us: 10 * S,
            min_lifetime_us: 5 * S,
            cooldown_us: 20 * S,
            connect_timeout_us: 30 * S,
            walltime_us: None,
            replace_ahead_us: 60 * S,
            max_queued: None,
            queue_job_limit: None,
            retry_max_us: 300 * S,
            labels: BTreeMap::new(),
            cost: 0.0,
            accelerators_per_slot: None,
            walltime_margin_us: 0,
        }
    }

    fn submitted(out: &[Action]) -> Vec<u32> {
        out.iter()
            .filter_map(|a| match a {
                Action::SubmitBlock { block, .. } => Some(*block),
                _ => None,
            })
            .collect()
    }

    fn cancelled(out: &[Action]) -> Vec<u32> {
        out.iter()
            .filter_map(|a| match a {
                Action::CancelBlock { block, .. } => Some(*block),
                _ => None,
            })
            .collect()
    }

    fn ended(b: &mut Blocks, block: u32, state: JobState, now: u64) -> Option<u32> {
        b.on_event(
            BlockEvent::State {
                block,
                state,
                message: Some("boom".into()),
            },
            now,
        )
    }

    fn run(b: &mut Blocks, id: u32, now: u64) {
        b.on_event(
            BlockEvent::Submitted {
                block: id,
                job: format!("j{id}"),
            },
            now,
        );
        b.worker_joined(id, 4, now);
    }

    fn demand(queued: u64, running: u64, busy: &[(u32, u32)]) -> Demand {
        Demand {
            queued,
            running,
            busy: busy.iter().copied().collect(),
        }
    }

    const REFUSAL: &str =
        "sbatch: error: Batch job submission failed: Node count specification invalid";

    fn refuse(b: &mut Blocks, block: u32, now: u64) {
        b.on_event(
            BlockEvent::SubmitRefused {
                block,
                by: RefusedBy::Scheduler,
                message: REFUSAL.into(),
            },
            now,
        );
    }

    fn accept(b: &mut Blocks, block: u32, now: u64) {
        b.on_event(
            BlockEvent::Submitted {
                block,
                job: format!("j{block}"),
            },
            now,
        );
    }

    #[test]
    fn a_refused_submission_is_retried_with_a_doubling_capped_wait_and_never_pauses() {
        let mut p = policy(1, 1, 1);
        p.retry_max_us = 8 * S;
        let mut b = Blocks::new(p, 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        assert_eq!(submitted(&out), [0]);
        let mut now = 0;
        let mut tries = Vec::new();
        for refusal in 1..=10u32 {
            refuse(&mut b, 0, now);
            let wait = (1u64 << (refusal - 1).min(10)).min(8);
            let view = &b.views(now)[0];
            assert_eq!(view.state, "REFUSED");
            let message = view.message.clone().unwrap();
            assert_eq!(
                message,
                format!("submission refused by the scheduler: {REFUSAL}; next try in {wait} s")
            );
            assert_eq!(b.pool_view(now).held.as_deref(), Some(message.as_str()));
            // Nothing before the wait is over, then the same block again.
            out.clear();
            b.strategize(&demand(5, 0, &[]), now + wait * S - 1, &mut out);
            assert!(out.is_empty(), "refusal {refusal}: {out:?}");
            now += wait * S;
            b.strategize(&demand(5, 0, &[]), now, &mut out);
            assert_eq!(submitted(&out), [0], "refusal {refusal}");
            tries.push(now / S);
        }
        assert_eq!(tries, [1, 3, 7, 15, 23, 31, 39, 47, 55, 63]);
        assert!(b.paused().is_none(), "{:?}", b.paused());
        assert_eq!(b.submitted(), 1, "one block, tried again");
        let notes = b.take_notes();
        let refused: Vec<&Note> = notes.iter().filter(|n| n.kind == "block-refused").collect();
        assert_eq!(refused.len(), 10);
        assert!(
            refused[0]
                .message
                .contains("Node count specification invalid")
        );
    }

    #[test]
    fn the_pool_recovers_by_itself_when_a_later_submission_is_accepted() {
        let mut b = Blocks::new(policy(0, 0, 3), 0);
        let mut out = Vec::new();
        b.strategize(&demand(12, 0, &[]), 0, &mut out);
        assert_eq!(submitted(&out), [0, 1, 2]);
        for id in 0..3 {
            refuse(&mut b, id, 0);
        }
        // Three refusals in a row: 4 s, and then one try only.
        out.clear();
        b.strategize(&demand(12, 0, &[]), 3 * S, &mut out);
        assert!(out.is_empty(), "{out:?}");
        b.strategize(&demand(12, 0, &[]), 4 * S, &mut out);
        assert_eq!(submitted(&out), [0], "one try during the backoff");
        out.clear();
        b.strategize(&demand(12, 0, &[]), 5 * S, &mut out);
        assert!(out.is_empty(), "waits for the answer: {out:?}");
        assert!(
            b.pool_view(5 * S)
                .held
                .unwrap()
                .ends_with("; trying again now")
        );
        accept(&mut b, 0, 5 * S);
        assert_eq!(b.pool_view(5 * S).held, None);
        b.strategize(&demand(12, 0, &[]), 6 * S, &mut out);
        assert_eq!(submitted(&out), [1, 2], "the rest at once");
        accept(&mut b, 1, 6 * S);
        accept(&mut b, 2, 6 * S);
        let states: Vec<String> = b.views(6 * S).into_iter().map(|v| v.state).collect();
        assert_eq!(states, ["PENDING"; 3]);
        assert!(b.paused().is_none());
    }

    #[test]
    fn an_unreachable_scheduler_backs_off_too_and_says_so() {
        let mut b = Blocks::new(policy(1, 1, 1), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        for _ in 0..5 {
            b.on_event(
                BlockEvent::SubmitRefused {
                    block: 0,
                    by: RefusedBy::Channel,
                    message: "ssh: connect to host login1 port 22: No route to host".into(),
                },
                0,
            );
        }
        assert!(b.paused().is_none());
        let held = b.pool_view(0).held.unwrap();
        assert!(
            held.starts_with("cannot reach the scheduler: ssh: connect")
                && held.ends_with("next try in 16 s"),
            "{held}"
        );
    }

    #[test]
    fn blocks_that_start_and_die_still_pause_the_pool_between_refusals() {
        let mut b = Blocks::new(policy(1, 1, 1), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        let mut now = 0;
        for id in 0..3 {
            // Refused twice, then accepted, then it dies before a worker
            // connected.
            for _ in 0..2 {
                refuse(&mut b, id, now);
                now += 10 * S;
                out.clear();
                b.strategize(&demand(0, 0, &[]), now, &mut out);
                assert_eq!(submitted(&out), [id]);
            }
            accept(&mut b, id, now);
            assert!(b.paused().is_none(), "block {id}: {:?}", b.paused());
            ended(&mut b, id, JobState::Failed, now);
            now += S;
            out.clear();
            b.strategize(&demand(0, 0, &[]), now, &mut out);
        }
        let reason = b.paused().unwrap();
        assert!(
            reason.contains("3 blocks in a row failed") && reason.contains("boom"),
            "{reason}"
        );
        assert!(submitted(&out).is_empty());
    }

    #[test]
    fn a_refused_block_no_longer_wanted_ends_without_a_cancel_command() {
        let mut b = Blocks::new(policy(0, 0, 1), 0);
        let mut out = Vec::new();
        b.strategize(&demand(3, 0, &[]), 0, &mut out);
        refuse(&mut b, 0, S);
        out.clear();
        b.strategize(&demand(0, 0, &[]), 10 * S, &mut out);
        assert!(
            out.is_empty(),
            "nothing to cancel at the scheduler: {out:?}"
        );
        assert_eq!(b.views(10 * S)[0].state, "CANCELLED");
        // New work asks for a new block after the cooldown, and the
        // backoff still paces it.
        b.strategize(&demand(3, 0, &[]), 31 * S, &mut out);
        assert_eq!(submitted(&out), [1]);
    }

    #[test]
    fn max_queued_blocks_caps_the_blocks_not_yet_running() {
        let mut p = policy(0, 0, 5);
        p.max_queued = Some(2);
        let mut b = Blocks::new(p, 0);
        let mut out = Vec::new();
        b.strategize(&demand(20, 0, &[]), 0, &mut out);
        assert_eq!(submitted(&out), [0, 1]);
        let held = b.pool_view(0).held.unwrap();
        assert!(held.starts_with("max_queued_blocks = 2 reached"), "{held}");
        out.clear();
        b.strategize(&demand(20, 0, &[]), S, &mut out);
        assert!(out.is_empty(), "{out:?}");
        run(&mut b, 0, 2 * S);
        b.strategize(&demand(20, 0, &[]), 3 * S, &mut out);
        assert_eq!(submitted(&out), [2], "block 0 runs: room for one more");
    }

    #[test]
    fn a_replacement_waits_for_the_leaving_block_in_a_one_job_queue() {
        let mut p = policy(1, 1, 1);
        p.walltime_us = Some(100 * S);
        p.queue_job_limit = Some(1);
        let mut b = Blocks::new(p, 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        run(&mut b, 0, 0);
        out.clear();
        // 55 s left, less than replace_ahead, work queued: without the
        // limit block 1 would be submitted now (see the test above).
        b.strategize(&demand(10, 4, &[(0, 4)]), 45 * S, &mut out);
        assert!(out.is_empty(), "{out:?}");
        let held = b.pool_view(45 * S).held.unwrap();
        assert!(held.starts_with("queue_job_limit = 1 reached"), "{held}");
        // Cancelling it does not free the queue either: only its end does.
        b.strategize(&demand(10, 4, &[(0, 4)]), 99 * S, &mut out);
        assert!(out.is_empty(), "{out:?}");
        ended(&mut b, 0, JobState::Timeout, 100 * S);
        b.strategize(&demand(10, 0, &[]), 101 * S, &mut out);
        assert_eq!(submitted(&out), [1]);
        assert_eq!(b.pool_view(101 * S).held, None);
    }

    #[test]
    fn queue_job_limit_holds_the_initial_blocks_too() {
        let mut p = policy(3, 0, 3);
        p.queue_job_limit = Some(2);
        let mut b = Blocks::new(p, 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        assert_eq!(submitted(&out), [0, 1]);
    }

    #[test]
    fn scales_out_to_what_the_queue_needs_and_no_further() {
        let mut b = Blocks::new(policy(0, 0, 5), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        assert!(out.is_empty());
        // 10 tasks, 4 slots per block: 3 blocks.
        b.strategize(&demand(10, 0, &[]), S, &mut out);
        assert_eq!(submitted(&out), [0, 1, 2]);
        // Still pending: asking again submits nothing more.
        out.clear();
        b.strategize(&demand(10, 0, &[]), 2 * S, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // A flood asks for the rest, up to max_blocks.
        b.strategize(&demand(1000, 0, &[]), 3 * S, &mut out);
        assert_eq!(submitted(&out), [3, 4]);
        assert_eq!(b.submitted(), 5);
    }

    #[test]
    fn parallelism_scales_the_request() {
        let mut p = policy(0, 0, 10);
        p.parallelism = 0.5;
        let mut b = Blocks::new(p, 0);
        let mut out = Vec::new();
        b.strategize(&demand(16, 0, &[]), S, &mut out);
        assert_eq!(submitted(&out).len(), 2, "16 tasks × 0.5 ÷ 4 slots");
    }

    #[test]
    fn idle_blocks_go_back_to_min_blocks_after_max_idle_but_not_before_min_lifetime() {
        let mut b = Blocks::new(policy(0, 1, 3), 0);
        let mut out = Vec::new();
        b.strategize(&demand(12, 0, &[]), 0, &mut out);
        for id in 0..3 {
            run(&mut b, id, S);
        }
        out.clear();
        // Busy until 4 s, then nothing outstanding.
        b.strategize(&demand(0, 3, &[(0, 1), (1, 1), (2, 1)]), 4 * S, &mut out);
        b.strategize(&demand(0, 0, &[]), 10 * S, &mut out);
        assert!(cancelled(&out).is_empty(), "idle for only 6 s");
        b.strategize(&demand(0, 0, &[]), 14 * S, &mut out);
        assert_eq!(cancelled(&out).len(), 2, "down to min_blocks");
        let views = b.views(14 * S);
        assert_eq!(views.iter().filter(|v| v.state == "CANCELLING").count(), 2);
        // The cooldown: new work within 20 s uses the remaining block only.
        out.clear();
        b.strategize(&demand(12, 0, &[]), 20 * S, &mut out);
        assert!(submitted(&out).is_empty(), "{out:?}");
        b.strategize(&demand(12, 0, &[]), 35 * S, &mut out);
        assert_eq!(submitted(&out).len(), 2);
    }

    #[test]
    fn pending_blocks_no_longer_needed_are_cancelled_newest_first() {
        let mut b = Blocks::new(policy(0, 0, 3), 0);
        let mut out = Vec::new();
        b.strategize(&demand(12, 0, &[]), 0, &mut out);
        run(&mut b, 0, S);
        out.clear();
        // The work fit in block 0 after all.
        b.strategize(&demand(0, 2, &[(0, 2)]), 6 * S, &mut out);
        assert_eq!(cancelled(&out), [2, 1]);
        assert_eq!(b.pool_view(6 * S).wanted, 1);
    }

    #[test]
    fn a_block_near_its_wall_time_is_replaced_while_work_is_queued() {
        let mut p = policy(1, 1, 1);
        p.walltime_us = Some(100 * S);
        let mut b = Blocks::new(p, 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        run(&mut b, 0, 0);
        out.clear();
        b.strategize(&demand(10, 4, &[(0, 4)]), 30 * S, &mut out);
        assert!(out.is_empty(), "70 s left, more than replace_ahead");
        b.strategize(&demand(10, 4, &[(0, 4)]), 45 * S, &mut out);
        assert_eq!(submitted(&out), [1], "55 s left: replace it now");
        assert_eq!(b.views(45 * S)[0].walltime_left_s, Some(55));
        // Without queued work there is nothing to replace it for.
        let mut p = policy(1, 1, 1);
        p.walltime_us = Some(100 * S);
        let mut b = Blocks::new(p, 0);
        b.start(0, &mut out);
        run(&mut b, 0, 0);
        out.clear();
        b.strategize(&demand(0, 1, &[(0, 1)]), 45 * S, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn blocks_that_never_connect_fail_and_pause_the_pool_until_resumed() {
        let mut b = Blocks::new(policy(1, 1, 1), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        for id in 0..3 {
            assert_eq!(ended(&mut b, id, JobState::Failed, S), Some(id));
            out.clear();
            b.strategize(&demand(0, 0, &[]), (id as u64 + 2) * S, &mut out);
        }
        assert!(submitted(&out).is_empty(), "{out:?}");
        let reason = b.paused().unwrap().to_owned();
        assert!(
            reason.contains("3 blocks in a row") && reason.contains("boom"),
            "{reason}"
        );
        assert!(b.resume("other").is_err());
        b.resume("default").unwrap();
        assert!(b.resume("default").unwrap_err().contains("not paused"));
        b.strategize(&demand(0, 0, &[]), 10 * S, &mut out);
        assert_eq!(submitted(&out), [3]);
    }

    #[test]
    fn a_running_block_without_workers_times_out_as_a_failure() {
        let mut b = Blocks::new(policy(1, 1, 1), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        b.on_event(
            BlockEvent::State {
                block: 0,
                state: JobState::Running,
                message: None,
            },
            S,
        );
        out.clear();
        b.strategize(&demand(0, 0, &[]), 20 * S, &mut out);
        assert!(out.is_empty());
        b.strategize(&demand(0, 0, &[]), 31 * S, &mut out);
        assert_eq!(cancelled(&out), [0]);
        assert!(
            b.views(31 * S)[0]
                .message
                .as_deref()
                .unwrap()
                .contains("none of its workers connected")
        );
        assert_eq!(submitted(&out), [1], "replaced at once to keep min_blocks");
    }

    #[test]
    fn a_worker_connecting_resets_the_failure_count() {
        let mut b = Blocks::new(policy(1, 1, 1), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        ended(&mut b, 0, JobState::Failed, S);
        b.strategize(&demand(0, 0, &[]), 2 * S, &mut out);
        ended(&mut b, 1, JobState::Failed, 3 * S);
        b.strategize(&demand(0, 0, &[]), 4 * S, &mut out);
        b.worker_joined(2, 4, 5 * S);
        ended(&mut b, 2, JobState::Completed, 6 * S);
        b.strategize(&demand(0, 0, &[]), 7 * S, &mut out);
        ended(&mut b, 3, JobState::Failed, 8 * S);
        out.clear();
        b.strategize(&demand(0, 0, &[]), 9 * S, &mut out);
        assert!(b.paused().is_none());
        assert_eq!(submitted(&out), [4]);
    }

    #[test]
    fn cancelled_blocks_are_not_replaced_during_shutdown() {
        let mut b = Blocks::new(policy(1, 1, 1), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        b.cancel_all(&mut out);
        assert_eq!(cancelled(&out), [0]);
        out.clear();
        ended(&mut b, 0, JobState::Cancelled, S);
        b.strategize(&demand(5, 0, &[]), 2 * S, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn adopted_blocks_count_as_live_and_are_polled_again() {
        let mut b = Blocks::new(policy(1, 1, 2), 0);
        let mut out = Vec::new();
        b.adopt(
            vec![BlockRecord {
                id: 7,
                job: "4242".into(),
                submitted_us: 0,
                running_since_us: Some(S),
                pool: "default".into(),
            }],
            10 * S,
            &mut out,
        );
        assert_eq!(
            out,
            [Action::AdoptBlock {
                pool: "default".into(),
                block: 7,
                job: "4242".into()
            }]
        );
        out.clear();
        b.start(10 * S, &mut out);
        assert!(submitted(&out).is_empty(), "the adopted block is the min");
        b.worker_joined(7, 4, 11 * S);
        b.strategize(&demand(8, 0, &[]), 12 * S, &mut out);
        assert_eq!(submitted(&out), [8], "ids continue after adopted ones");
    }

    #[test]
    fn block_records_follow_submission_start_and_end() {
        let mut b = Blocks::new(policy(1, 1, 1), 0);
        let mut out = Vec::new();
        b.start(0, &mut out);
        run(&mut b, 0, S);
        let ops = b.take_store_ops();
        assert!(
            matches!(
                ops.as_slice(),
                [
                    StoreOp::PutBlock(BlockRecord {
                        id: 0,
                        running_since_us: None,
                        ..
                    }),
                    StoreOp::PutBlock(BlockRecord {
                        id: 0,
                        running_since_us: Some(_),
                        ..
                    })
                ]
            ),
            "{ops:?}"
        );
        ended(&mut b, 0, JobState::Completed, 2 * S);
        assert_eq!(b.take_store_ops(), [StoreOp::RemoveBlock(0)]);
        let kinds: Vec<&str> = b.take_notes().iter().map(|n| n.kind).collect();
        assert_eq!(kinds, ["block-requested", "block-submitted", "block-state"]);
    }
}
