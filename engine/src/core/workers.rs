//! Worker messages: registration, pulls, results, leaving; and what a lost
//! worker leaves behind.

use std::sync::Arc;

use flotilla_protocol::interchange::{
    BatchFailure, BatchId, BatchResult, DaemonMessage, FailureKind, Hello, WorkerMessage,
};
use flotilla_protocol::launch::{SECRET_ENV, flag};
use flotilla_protocol::peer_text::{check_field, shown};
use flotilla_protocol::secure::Cipher;
use flotilla_protocol::servable::ServableRef;
use flotilla_protocol::task::Outcome;
use flotilla_protocol::{MIN_FRAME_BYTES, Payload, TaskId};

use super::batches::Batch;
use super::handshake::HandshakeError;
use super::tasks::{Attempt, Ending};
use super::worker_table::{BlockId, LossReason, Lost, Registration, Worker, WorkerKey};
use super::{Action, Core, PipeId, ReplyTo};
use flotilla_protocol::secure::SessionKeys;

/// At most this many refused probes and hellos are logged per second; the
/// rest are counted and the count logged with the next one.
pub(super) const REFUSALS_LOGGED_PER_SECOND: u32 = 10;

/// Longest worker id a hello may carry, in bytes.
const MAX_WORKER_ID: usize = 200;

/// Longest host or node name a hello may carry, in bytes.
const MAX_HOST: usize = 255;

/// Longest servable name a hello may offer, in bytes.
const MAX_SERVABLE_NAME: usize = 200;

/// Most servables a hello may offer.
const MAX_OFFERED: usize = 4096;

/// Why a worker with another daemon's secret is turned away.
fn wrong_secret() -> String {
    format!(
        "wrong secret: this worker was not started for this daemon (check {SECRET_ENV} or {})",
        flag::SECRET_FILE
    )
}

/// Checks what a hello says about its worker before any of it is used or
/// logged: the reason for the refusal, if it is malformed.
fn check_hello(hello: &Hello) -> Result<(), String> {
    check_field("worker id", &hello.worker_id, MAX_WORKER_ID)?;
    if hello.worker_id.is_empty() {
        return Err("the worker id is empty".into());
    }
    check_field("host", &hello.host, MAX_HOST)?;
    if let Some(node) = &hello.node {
        check_field("node", node, MAX_HOST)?;
    }
    if hello.servables.len() > MAX_OFFERED {
        return Err(format!(
            "the hello offers {} servables; at most {MAX_OFFERED} are allowed",
            hello.servables.len()
        ));
    }
    for name in &hello.servables {
        check_field("an offered servable name", name, MAX_SERVABLE_NAME)?;
    }
    if hello.slots == 0 {
        return Err("a worker needs at least one slot".into());
    }
    check_slot_resources(hello)?;
    if hello.max_frame_bytes < MIN_FRAME_BYTES as u64 {
        return Err(format!(
            "the worker accepts frames of at most {} bytes; at least {MIN_FRAME_BYTES} are needed",
            hello.max_frame_bytes
        ));
    }
    Ok(())
}

/// Longest accelerator name or core list a hello may give a slot, in bytes.
const MAX_SLOT_TEXT: usize = 4096;

/// Most accelerators a hello may give one slot.
const MAX_SLOT_DEVICES: usize = 1024;

/// What a hello says each slot holds: one entry per slot (or none at all),
/// names and core lists that are safe to show.
fn check_slot_resources(hello: &Hello) -> Result<(), String> {
    let held = &hello.slot_resources;
    if !held.is_empty() && held.len() != hello.slots as usize {
        return Err(format!(
            "the hello describes {} slots of its {}",
            held.len(),
            hello.slots
        ));
    }
    for slot in held {
        if slot.devices.len() > MAX_SLOT_DEVICES {
            return Err(format!(
                "a slot holds {} accelerators; at most {MAX_SLOT_DEVICES} are allowed",
                slot.devices.len()
            ));
        }
        for device in &slot.devices {
            check_field("an accelerator name", device, MAX_SLOT_TEXT)?;
        }
        check_field("a slot's core list", &slot.cpus, MAX_SLOT_TEXT)?;
    }
    Ok(())
}

/// An empty answer to a long-poll.
fn no_work(to: ReplyTo) -> Action {
    Action::ReplyWorker {
        to,
        message: DaemonMessage::Work { batches: vec![] },
        close: false,
    }
}

impl Core {
    /// Routes a worker's message.
    pub(super) fn on_worker(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        message: WorkerMessage,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        match message {
            WorkerMessage::Hello(hello) => self.on_hello(from, pipe, *hello, now, out),
            WorkerMessage::Probe {
                nonce,
                public,
                ciphers,
            } => {
                self.on_probe(from, pipe, (&nonce, &public, &ciphers), now, out);
            }
            WorkerMessage::Leave { reason } => self.on_leave(from, pipe, &reason, now, out),
            WorkerMessage::Pull { results, wait } => {
                self.on_pull(from, pipe, results, wait, now, out);
            }
            WorkerMessage::Slots { slots } => self.on_slots(from, pipe, slots, now, out),
            // The daemon answers fetches of servable files beside the core
            // (`crate::object_server`): the core holds no files. One that
            // reaches it anyway is answered, never left hanging.
            WorkerMessage::Fetch { object, .. } => out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::ObjectUnavailable {
                    object,
                    reason: "the scheduling core serves no files".into(),
                },
                close: false,
            }),
        }
    }

    /// A worker asks this daemon to prove it knows the secret, before it
    /// registers: the answer is the proof and a nonce for its hello.
    fn on_probe(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        (nonce, public, ciphers): (&[u8], &[u8], &[Cipher]),
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let message = match self.admission.handshakes.probe(nonce, public, ciphers, now) {
            Ok(answer) => DaemonMessage::ProbeOk {
                nonce: Payload::copy_from_slice(&answer.nonce),
                public: Payload::copy_from_slice(&answer.public),
                proof: Payload::copy_from_slice(&answer.proof),
                cipher: answer.cipher,
            },
            Err(e) => {
                let reason = e.to_string();
                self.log_refusal(pipe, None, "probe", &reason, now);
                DaemonMessage::Refused { reason }
            }
        };
        let close = matches!(message, DaemonMessage::Refused { .. });
        out.push(Action::ReplyWorker {
            to: from,
            message,
            close,
        });
    }

    /// Logs a refused probe or hello, at most
    /// [`REFUSALS_LOGGED_PER_SECOND`] a second (by the core's clock).
    fn log_refusal(
        &mut self,
        pipe: PipeId,
        hello: Option<&Hello>,
        what: &str,
        reason: &str,
        now: u64,
    ) {
        let Some(suppressed) = self.admission.refusal_log.admit(now) else {
            return;
        };
        match hello {
            Some(h) => tracing::warn!(
                worker = %shown(&h.worker_id),
                host = %shown(&h.host),
                pid = h.pid,
                pipe = pipe.0,
                reason = %shown(reason),
                suppressed,
                "worker refused ({what})"
            ),
            None => tracing::warn!(
                pipe = pipe.0,
                reason = %shown(reason),
                suppressed,
                "worker refused ({what})"
            ),
        }
    }

    /// The connection's keys if `hello` is taken; else the refusal to send
    /// (in clear: the worker proved nothing), after which the connection
    /// closes. Its proof is checked (and its challenge used up) first:
    /// nothing else it says counts before that.
    fn admit_hello(
        &mut self,
        hello: &Hello,
        pipe: PipeId,
        now: u64,
    ) -> Result<SessionKeys, DaemonMessage> {
        let refusal = match self.admission.handshakes.redeem(hello, now) {
            Err(HandshakeError::WrongProof) => Err(wrong_secret()),
            Err(e) => Err(e.to_string()),
            Ok(keys) => check_hello(hello)
                .and_then(|()| self.check_block_alive(hello))
                .map(|()| keys),
        };
        refusal.map_err(|reason| {
            self.log_refusal(pipe, Some(hello), "hello", &reason, now);
            DaemonMessage::Refused { reason }
        })
    }

    /// A worker of a block whose job has ended is not taken back: the
    /// block's tasks were requeued when it ended, and a worker outliving
    /// its job (an evicted pod reconnecting, a job the scheduler no longer
    /// lists) would be capacity nobody accounts for.
    fn check_block_alive(&self, hello: &Hello) -> Result<(), String> {
        match hello.block_id {
            Some(block) if self.fleet.pools.has_ended(block) => Err(format!(
                "block {block} has ended; its workers are not taken back"
            )),
            _ => Ok(()),
        }
    }

    fn on_hello(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        mut hello: Hello,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let keys = match self.admit_hello(&hello, pipe, now) {
            Ok(keys) => keys,
            Err(message) => {
                out.push(Action::ReplyWorker {
                    to: from,
                    message,
                    close: true,
                });
                return;
            }
        };
        let cipher = keys.cipher();
        // From the answer to this hello on, the connection is sealed.
        out.push(Action::Secure {
            to: from,
            keys: Box::new(keys),
        });
        if self.life.draining.is_some() {
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Shutdown,
                close: false,
            });
            return;
        }
        let running = std::mem::take(&mut hello.running);
        let key = match self.workers.by_id(&hello.worker_id) {
            // The same worker process again (it reconnected): keep its batches.
            Some(key) => {
                if let Some(old) = self.workers.reconnect(key, pipe, now) {
                    out.push(no_work(old));
                }
                if let Some(w) = self.workers.get_mut(key) {
                    w.about.max_frame_bytes = frame_limit(hello.max_frame_bytes);
                }
                tracing::info!(worker = %shown(&hello.worker_id), pipe = pipe.0, %cipher, "worker reconnected");
                key
            }
            None => self.register(hello, pipe, cipher, now, out),
        };
        self.claim_running(key, running, now);
        if let Some(old_key) = self.workers.bind_pipe(pipe, key) {
            self.lose_worker(old_key, LossReason::Replaced, now, out);
            self.workers.bind_pipe(pipe, key);
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

    /// A worker registers for the first time.
    fn register(
        &mut self,
        hello: Hello,
        pipe: PipeId,
        cipher: Cipher,
        now: u64,
        out: &mut Vec<Action>,
    ) -> WorkerKey {
        let id: Arc<str> = Arc::from(hello.worker_id.as_str());
        tracing::info!(
            worker = %shown(&id),
            host = %shown(&hello.host),
            pid = hello.pid,
            slots = hello.slots,
            block = ?hello.block_id,
            rank = ?hello.rank,
            node = ?hello.node.as_deref().map(shown),
            max_frame_bytes = hello.max_frame_bytes,
            pipe = pipe.0,
            %cipher,
            "worker registered"
        );
        let block = hello.block_id.map(BlockId);
        if let Some(block) = block {
            self.fleet.pools.worker_joined(block.0, hello.slots, now);
        }
        // Its block's pool: block ids are the daemon's, across pools.
        let pool = block.and_then(|b| self.fleet.pools.of_block(b.0));
        let placed = match (&hello.node, hello.rank) {
            (Some(node), Some(rank)) => format!(" on node {node} as rank {rank}"),
            _ => format!(" on {}", hello.host),
        };
        self.worker_event(
            now,
            "worker-registered",
            block,
            &id,
            format!("{} slots{placed}", hello.slots),
            out,
        );
        let servables = offers(&id, &hello.servables);
        let registration = Registration {
            id,
            block,
            pool,
            host: hello.host,
            pid: hello.pid,
            node: hello.node,
            rank: hello.rank,
            ends_at_us: hello.ends_at_unix_s.map(|s| s.saturating_mul(1_000_000)),
            slots: hello.slots,
            servables,
            max_frame_bytes: frame_limit(hello.max_frame_bytes),
            slot_resources: hello.slot_resources,
        };
        self.workers.register(registration, pipe, now)
    }

    /// A worker that registers again (after a daemon restart) still runs
    /// the batches in `running`: they stay its, instead of running a second
    /// time elsewhere. Batches this daemon already knows are left alone.
    fn claim_running(&mut self, key: WorkerKey, running: Vec<(BatchId, Vec<TaskId>)>, now: u64) {
        let Some(worker_id) = self.workers.get(key).map(|w| w.about.id.clone()) else {
            return;
        };
        let mut claimed = 0usize;
        for (batch_id, ids) in running {
            if self.batches.contains(&batch_id) {
                continue;
            }
            let mut mine = Vec::new();
            let mut servable = None;
            for id in ids {
                let Some(task) = self.tasks.get(&id) else {
                    continue;
                };
                if !task.is_queued() {
                    continue;
                }
                let target = task.target.clone();
                if !self.recovery.held.contains(&id) {
                    self.sched.unqueue(&self.tasks, id);
                }
                self.tasks.assign(id, batch_id, &worker_id, now);
                servable.get_or_insert(target);
                mine.push(id);
            }
            let Some(servable) = servable else {
                continue;
            };
            claimed += mine.len();
            let builtin = self.catalog.is_builtin(&servable);
            self.workers.add_batch(
                key,
                batch_id,
                mine.len() as u32,
                false,
                (&servable, None, builtin),
                now,
            );
            self.batches.insert(
                batch_id,
                Batch {
                    worker: key,
                    servable,
                    tasks: mine,
                },
            );
        }
        if claimed > 0 {
            let tasks = &self.tasks;
            self.recovery
                .held
                .retain(|id| tasks.get(id).is_some_and(|t| t.is_queued()));
            tracing::info!(worker = %shown(&worker_id), tasks = claimed, "a reconnecting worker still runs tasks from before the restart");
        }
    }

    /// A worker leaves on its own (its wall time is nearly over).
    fn on_leave(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        reason: &str,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::ReplyWorker {
            to: from,
            message: DaemonMessage::Shutdown,
            close: false,
        });
        let Some(key) = self.workers.by_pipe(pipe) else {
            return;
        };
        let Some((id, block)) = self
            .workers
            .get(key)
            .map(|w| (w.about.id.clone(), w.about.block))
        else {
            return;
        };
        // The peer's words, bounded and escaped wherever they go on.
        let reason = shown(reason).to_string();
        tracing::info!(worker = %shown(&id), reason = %reason, "worker left");
        self.worker_event(now, "worker-left", block, &id, reason.clone(), out);
        self.lose_worker(key, LossReason::Left { reason }, now, out);
    }

    pub(super) fn on_pull(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        results: Vec<BatchResult>,
        wait: bool,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = self.workers.by_pipe(pipe) else {
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Reregister,
                close: false,
            });
            return;
        };
        if let Some(w) = self.workers.get_mut(key) {
            w.last_seen_us = now;
        }
        if !results.is_empty() {
            self.record_results(key, results, now, out);
            self.check_drain(now, out);
        }
        if self.life.draining.as_ref().is_some_and(|d| d.finished) {
            out.push(Action::ReplyWorker {
                to: from,
                message: DaemonMessage::Shutdown,
                close: false,
            });
            return;
        }
        if wait {
            if let Some(old) = self.workers.hold_poll(key, from, now) {
                out.push(no_work(old));
            }
        } else {
            let filled = self.fill(key, now);
            let aware = self.workers.get(key).is_some_and(|w| w.board.is_aware());
            out.push(Action::ReplyWorker {
                to: from,
                message: filled.into_message(aware),
                close: false,
            });
        }
    }

    fn record_results(
        &mut self,
        key: WorkerKey,
        results: Vec<BatchResult>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let worker_id = self.workers.get(key).map(|w| w.about.id.clone());
        for result in results {
            let batch = self.batches.take_if_on(&result.batch, key);
            if let Some(batch) = &batch {
                let size = batch.tasks.len() as u32;
                self.workers.batch_done(key, result.batch, size, now);
                let ok = result.failure.is_none();
                self.sched.observe(&batch.servable, size, result.run_us, ok);
            }
            if let Some(failure) = &result.failure {
                if let Some(batch) = batch {
                    let worker = worker_id.as_deref();
                    self.batch_failed(result.batch, batch.tasks, failure, worker, now, out);
                }
                continue;
            }
            let batch_id = result.batch;
            self.record_outcomes(result, worker_id.as_ref(), now, out);
            if let Some(batch) = batch {
                self.fail_missing(batch_id, batch.tasks, worker_id.as_ref(), now, out);
            }
        }
    }

    /// The per-input outcomes of one batch (or a late copy of them): the
    /// first outcome of each task wins; a pipeline step's output moves the
    /// task on to the next step.
    fn record_outcomes(
        &mut self,
        result: BatchResult,
        worker_id: Option<&Arc<str>>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        for (id, outcome) in result.outcomes {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            if task.is_final() {
                continue;
            }
            task.timings.worker_received_us = result.received_us;
            task.timings.worker_sent_us = result.sent_us;
            task.timings.result_received_us = now;
            if task.is_queued() {
                // A late result for a task already put back in the queue.
                self.sched.unqueue(&self.tasks, id);
            }
            if let Outcome::Output(output) = &outcome
                && let Some((qk, rule)) = self.tasks.advance(id, output, now)
            {
                // A restart runs the pipeline from its first step: nothing
                // is stored between steps.
                self.sched.queues.push_back(qk, id, rule, now);
                continue;
            }
            let (ending, outcome) = self.final_outcome(id, outcome);
            let worker = worker_id.cloned();
            self.finish(id, ending, outcome, worker, result.run_us, now, out);
        }
    }

    /// Tasks of a batch that came back without their outcome fail.
    fn fail_missing(
        &mut self,
        batch: BatchId,
        ids: Vec<TaskId>,
        worker_id: Option<&Arc<str>>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        for id in ids {
            let missing = self.tasks.get(&id).is_some_and(|t| t.runs_in(batch));
            if missing {
                let outcome = Outcome::Error(format!(
                    "worker {} returned no result for this task",
                    worker_id.map_or("?", |w| &**w)
                ));
                let worker = worker_id.cloned();
                self.finish(id, Ending::Failed, outcome, worker, 0, now, out);
            }
        }
    }

    /// A whole batch came back without per-input outcomes.
    fn batch_failed(
        &mut self,
        batch: BatchId,
        tasks: Vec<TaskId>,
        failure: &BatchFailure,
        worker: Option<&str>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let live: Vec<TaskId> = tasks
            .into_iter()
            .filter(|id| self.tasks.get(id).is_some_and(|t| t.runs_in(batch)))
            .collect();
        tracing::warn!(
            batch = batch.0,
            worker = %shown(worker.unwrap_or("?")),
            kind = ?failure.kind,
            tasks = live.len(),
            message = %shown(&failure.message),
            "batch failed as a whole"
        );
        let mut requeue = Vec::new();
        for id in live {
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            let max_attempts = self.max_attempts_for(&task.servable);
            let retry = match failure.kind {
                FailureKind::Crashed => task.attempts() < max_attempts,
                // Once, on its own: a lone input's failure is its own.
                FailureKind::Failed => !task.solo && task.rule.max_batch > 1,
                FailureKind::Unrunnable => false,
            };
            let attempts = task.attempts();
            if retry {
                if failure.kind == FailureKind::Failed
                    && let Some(task) = self.tasks.get_mut(&id)
                {
                    task.solo = true;
                }
                let why = format!("its batch failed as a whole: {}", failure.message);
                self.tasks.requeue(id, batch, Attempt::Counts, &why);
                requeue.push(id);
                continue;
            }
            let message = match failure.kind {
                FailureKind::Crashed => format!(
                    "the servable failed on each of {attempts} attempts; last: {}",
                    failure.message
                ),
                _ => failure.message.clone(),
            };
            let (ending, outcome) = self.final_outcome(id, Outcome::Error(message));
            let worker = worker.map(Arc::from);
            self.finish(id, ending, outcome, worker, 0, now, out);
        }
        self.sched.requeue_front(&self.tasks, requeue);
    }

    /// Removes worker `key` for `reason`: its long-poll is told to register
    /// again, and each task it ran goes back to the queue (a suspect, to
    /// run alone, if the worker may have died of it) or, after too many
    /// lost attempts, fails as poison.
    pub(super) fn lose_worker(
        &mut self,
        key: WorkerKey,
        reason: LossReason,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(lost) = self.workers.lose(key, reason) else {
            return;
        };
        let Lost { worker, reason } = &lost;
        if let Some(to) = worker.held_poll() {
            out.push(Action::ReplyWorker {
                to,
                message: DaemonMessage::Reregister,
                close: false,
            });
        }
        if let Some(block) = worker.about.block {
            self.fleet.pools.worker_left(block.0);
        }
        if reason.is_loss_event() {
            let message = format!("{reason}; {} tasks were running", worker.tasks());
            self.worker_event(
                now,
                "worker-lost",
                worker.about.block,
                &worker.about.id,
                message,
                out,
            );
        }
        let tasks = self.settle_lost_batches(&lost, now, out);
        let requeued = (tasks.requeue.len() + tasks.suspects.len()) as u64;
        self.recovery.suspects.extend(
            tasks
                .suspects
                .into_iter()
                .map(|id| (id, worker.about.block)),
        );
        self.sched.requeue_front(&self.tasks, tasks.requeue);
        self.tasks.count_requeued(requeued);
        tracing::warn!(
            worker = %shown(&worker.about.id),
            host = %shown(&worker.about.host),
            reason = %shown(&reason.to_string()),
            requeued,
            failed = tasks.failed,
            "worker lost"
        );
    }

    /// The tasks of a lost worker's batches: each back to the queue, a
    /// suspect, or failed after its last attempt.
    fn settle_lost_batches(&mut self, lost: &Lost, now: u64, out: &mut Vec<Action>) -> LostTasks {
        let Lost { worker, reason } = lost;
        let mut settled = LostTasks::default();
        let attempt = reason.attempt();
        for &batch_id in worker.batches() {
            let Some(batch) = self.batches.remove(&batch_id) else {
                continue;
            };
            for id in batch.tasks {
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                if !task.runs_in(batch_id) {
                    continue;
                }
                let note = loss_note(task.attempts(), worker, reason);
                if attempt == Attempt::Counts {
                    task.losses.push(note.clone());
                }
                self.tasks.requeue(id, batch_id, attempt, &note);
                let Some(task) = self.tasks.get(&id) else {
                    continue;
                };
                if task.attempts() >= self.max_attempts_for(&task.servable) {
                    let outcome = Outcome::Error(format!(
                        "poison task: its worker was lost on each of its {} attempts, so it is not retried again: {}",
                        task.attempts(),
                        task.losses.join("; ")
                    ));
                    let (ending, outcome) = self.final_outcome(id, outcome);
                    self.finish(id, ending, outcome, None, 0, now, out);
                    settled.failed += 1;
                } else if reason.may_be_task_fault() {
                    settled.suspects.push(id);
                } else {
                    settled.requeue.push(id);
                }
            }
        }
        settled.suspects.sort_unstable();
        settled
    }
}

/// What became of a lost worker's tasks.
#[derive(Debug, Default)]
struct LostTasks {
    /// Back to the head of their queues.
    requeue: Vec<TaskId>,
    /// To run alone next.
    suspects: Vec<TaskId>,
    /// Failed: it was their last attempt.
    failed: u32,
}

/// One line of a task's losses list.
fn loss_note(attempt: u32, worker: &Worker, reason: &LossReason) -> String {
    format!(
        "attempt {attempt}: worker {} on {}{} was lost ({reason})",
        worker.about.id,
        worker.about.node.as_deref().unwrap_or(&worker.about.host),
        worker
            .about
            .block
            .map(|b| format!(", block {b}"))
            .unwrap_or_default()
    )
}

/// The frame limit a worker announced, as the daemon's own counting type.
fn frame_limit(announced: u64) -> usize {
    usize::try_from(announced).unwrap_or(usize::MAX)
}

/// The servables a worker's `Hello` offers, read once; an entry that names
/// nothing could never match a task and is left out.
fn offers(worker: &str, listed: &[String]) -> Vec<ServableRef> {
    listed
        .iter()
        .filter_map(|s| match ServableRef::parse(s) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(worker = %shown(worker), offered = %shown(s), error = %shown(&e.to_string()), "ignoring a servable the worker offers");
                None
            }
        })
        .collect()
}
