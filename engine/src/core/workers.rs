//! Workers: registration, pulls, results, dispatch, loss.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use flotilla_protocol::TaskId;
use flotilla_protocol::interchange::{
    BatchFailure, BatchId, BatchResult, DaemonMessage, FailureKind, Hello, WorkBatch, WorkItem,
};
use flotilla_protocol::servable::ServableRef;
use flotilla_protocol::task::{Outcome, TaskState};

use super::queues::{BatchRule, QueueKey};
use super::{Action, Batch, Core, PipeId, ReplyTo, Worker, catalog};

/// Why a worker with another daemon's secret is turned away.
const WRONG_SECRET: &str = "wrong secret: this worker was not started for this daemon (check FLOTILLA_SECRET or --secret-file)";

impl Core {
    /// A worker asks whether this is its daemon before registering.
    pub(super) fn on_probe(&mut self, from: ReplyTo, secret: &[u8], out: &mut Vec<Action>) {
        let message = if constant_time_eq(secret, &self.cfg.secret) {
            DaemonMessage::ProbeOk
        } else {
            tracing::warn!(slot = from.0, "worker refused: wrong secret (probe)");
            DaemonMessage::Refused {
                reason: WRONG_SECRET.into(),
            }
        };
        let close = message != DaemonMessage::ProbeOk;
        out.push(Action::ReplyWorker {
            to: from,
            message,
            close,
        });
    }

    pub(super) fn on_hello(
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
                    reason: WRONG_SECRET.into(),
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
                    w.specs_sent.clear();
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
                    rank = ?hello.rank,
                    node = ?hello.node,
                    pipe = pipe.0,
                    "worker registered"
                );
                if let Some(block) = hello.block_id {
                    self.blocks.worker_joined(block, hello.slots, now);
                }
                let placed = match (&hello.node, hello.rank) {
                    (Some(node), Some(rank)) => format!(" on node {node} as rank {rank}"),
                    _ => format!(" on {}", hello.host),
                };
                self.worker_event(
                    now,
                    "worker-registered",
                    hello.block_id,
                    &hello.worker_id,
                    format!("{} slots{placed}", hello.slots),
                    out,
                );
                self.workers.insert(
                    key,
                    Worker {
                        id: id.clone(),
                        block: hello.block_id,
                        host: hello.host,
                        pid: hello.pid,
                        node: hello.node,
                        rank: hello.rank,
                        ends_at_us: hello.ends_at_unix_s.map(|s| s.saturating_mul(1_000_000)),
                        slots: hello.slots,
                        servables: offers(&id, &hello.servables),
                        pipe,
                        last_seen_us: now,
                        held_poll: None,
                        isolating: None,
                        batches: HashSet::new(),
                        tasks: 0,
                        specs_sent: HashSet::new(),
                    },
                );
                self.worker_keys.insert(id, key);
                key
            }
        };
        self.claim_running(key, hello.running, now);
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

    /// A worker that registers again (after a daemon restart) still runs
    /// the batches in `running`: they stay its, instead of running a second
    /// time elsewhere. Batches this daemon already knows are left alone.
    fn claim_running(&mut self, key: u64, running: Vec<(BatchId, Vec<TaskId>)>, now: u64) {
        let Some(worker_id) = self.workers.get(&key).map(|w| w.id.clone()) else {
            return;
        };
        let mut claimed = 0usize;
        for (batch_id, ids) in running {
            if self.batches.contains_key(&batch_id) {
                continue;
            }
            let mut mine = Vec::new();
            let mut servable = None;
            for id in ids {
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                if task.state != TaskState::Queued {
                    continue;
                }
                if !self.held.contains(&id) {
                    let qk = task.queue_key();
                    self.queues.remove(&qk, id);
                }
                task.state = TaskState::Running;
                task.attempts += 1;
                task.worker = Some(worker_id.clone());
                task.batch = Some(batch_id);
                task.timings.dispatched_us = now;
                servable.get_or_insert_with(|| task.target.clone());
                mine.push(id);
            }
            let Some(servable) = servable else {
                continue;
            };
            claimed += mine.len();
            if let Some(w) = self.workers.get_mut(&key) {
                w.batches.insert(batch_id);
                w.tasks += mine.len() as u32;
            }
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
            self.held.retain(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.state == TaskState::Queued)
            });
            tracing::info!(worker = %worker_id, tasks = claimed, "a reconnecting worker still runs tasks from before the restart");
        }
    }

    /// A worker leaves on its own (its wall time is nearly over).
    pub(super) fn on_leave(
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
        let Some(key) = self.worker_by_pipe.get(&pipe).copied() else {
            return;
        };
        let Some((id, block)) = self.workers.get(&key).map(|w| (w.id.clone(), w.block)) else {
            return;
        };
        tracing::info!(worker = %id, reason, "worker left");
        self.worker_event(now, "worker-left", block, &id, reason.to_owned(), out);
        self.lose_worker(key, &format!("it left ({reason})"), now, out);
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
            self.ready.insert(key);
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

    pub(super) fn record_results(
        &mut self,
        key: u64,
        results: Vec<BatchResult>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let worker_id = self.workers.get(&key).map(|w| w.id.clone());
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
            if let Some(batch) = &batch
                && let Some(w) = self.workers.get_mut(&key)
            {
                w.batches.remove(&result.batch);
                if w.isolating == Some(result.batch) {
                    w.isolating = None;
                }
                self.ready.insert(key);
                w.tasks = w.tasks.saturating_sub(batch.tasks.len() as u32);
            }
            if let Some(batch) = &batch {
                let size = batch.tasks.len() as u32;
                if let Some(a) = self.adaptive.get_mut(&batch.servable) {
                    a.observe(size, result.run_us);
                }
                if result.failure.is_none() {
                    self.durations
                        .entry(batch.servable.clone())
                        .or_default()
                        .observe(result.run_us);
                }
            }
            if let Some(failure) = &result.failure {
                if let Some(batch) = batch {
                    self.batch_failed(
                        result.batch,
                        batch.tasks,
                        failure,
                        worker_id.as_deref(),
                        now,
                        out,
                    );
                }
                continue;
            }
            for (id, outcome) in result.outcomes {
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                if task.state.is_final() {
                    continue;
                }
                task.timings.worker_received_us = result.received_us;
                task.timings.worker_sent_us = result.sent_us;
                task.timings.result_received_us = now;
                if task.state == TaskState::Queued {
                    // A late result for a task already put back in the queue.
                    let qk = task.queue_key();
                    self.queues.remove(&qk, id);
                }
                if self.advance_pipeline(id, &outcome, now) {
                    continue;
                }
                let (state, outcome) = self.final_outcome(id, outcome);
                self.finish(
                    id,
                    state,
                    outcome,
                    worker_id.clone(),
                    result.run_us,
                    now,
                    out,
                );
            }
            if let Some(batch) = batch {
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
                        self.finish(
                            id,
                            TaskState::Failed,
                            outcome,
                            worker_id.clone(),
                            0,
                            now,
                            out,
                        );
                    }
                }
            }
        }
    }

    /// A step of a pipeline produced `outcome`: with an output and steps
    /// left, the task moves to the next step's queue (nothing is stored; a
    /// restart runs the pipeline from its first step). Returns true if so.
    fn advance_pipeline(&mut self, id: TaskId, outcome: &Outcome, now: u64) -> bool {
        let Some(task) = self.tasks.get_mut(&id) else {
            return false;
        };
        let Some(progress) = &mut task.pipeline else {
            return false;
        };
        let Outcome::Output(output) = outcome else {
            return false;
        };
        if progress.step + 1 >= progress.steps.len() {
            return false;
        }
        progress.step += 1;
        let next = &progress.steps[progress.step];
        task.target = next.name.clone();
        task.rule = next.batch;
        task.input = output.clone();
        task.solo = false;
        task.state = TaskState::Queued;
        task.batch = None;
        task.timings.run_us = 0;
        task.timings.dispatched_us = now;
        let (key, rule) = (task.queue_key(), task.queue_rule());
        self.queues.push_back(key, id, rule, now);
        true
    }

    /// The final state for a task's last outcome; a pipeline step's error
    /// names the step.
    fn final_outcome(&self, id: TaskId, outcome: Outcome) -> (TaskState, Outcome) {
        match outcome {
            Outcome::Output(o) => (TaskState::Completed, Outcome::Output(o)),
            Outcome::Error(e) => {
                let named = match self.tasks.get(&id).and_then(|t| t.pipeline.as_ref()) {
                    Some(p) => format!(
                        "step {} of {} (`{}`) failed: {e}",
                        p.step + 1,
                        p.steps.len(),
                        p.steps[p.step].name
                    ),
                    None => e,
                };
                (TaskState::Failed, Outcome::Error(named))
            }
        }
    }

    /// A whole batch came back without per-input outcomes.
    #[allow(clippy::too_many_arguments)]
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
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|t| t.state == TaskState::Running && t.batch == Some(batch))
            })
            .collect();
        tracing::warn!(
            batch = batch.0,
            worker = worker.unwrap_or("?"),
            kind = ?failure.kind,
            tasks = live.len(),
            message = %failure.message,
            "batch failed as a whole"
        );
        let mut requeue = Vec::new();
        for id in live {
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let max_attempts = {
                let servable = task.servable.clone();
                self.max_attempts_for(&servable)
            };
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            let retry = match failure.kind {
                FailureKind::Crashed => task.attempts < max_attempts,
                // Once, on its own: a lone input's failure is its own.
                FailureKind::Failed => !task.solo && task.rule.max_batch > 1,
                FailureKind::Unrunnable => false,
            };
            if retry {
                if failure.kind == FailureKind::Failed {
                    task.solo = true;
                }
                task.state = TaskState::Queued;
                task.batch = None;
                requeue.push(id);
                continue;
            }
            let message = match failure.kind {
                FailureKind::Crashed => format!(
                    "the servable failed on each of {} attempts; last: {}",
                    task.attempts, failure.message
                ),
                _ => failure.message.clone(),
            };
            let (state, outcome) = self.final_outcome(id, Outcome::Error(message));
            let worker = worker.map(Arc::from);
            self.finish(id, state, outcome, worker, 0, now, out);
        }
        self.requeue_front(requeue);
    }

    /// Puts tasks back at the head of their queues.
    pub(super) fn requeue_front(&mut self, ids: Vec<TaskId>) {
        let mut by_queue: HashMap<QueueKey, (Vec<TaskId>, BatchRule)> = HashMap::new();
        for id in ids {
            if let Some(task) = self.tasks.get(&id) {
                by_queue
                    .entry(task.queue_key())
                    .or_insert_with(|| (Vec::new(), task.queue_rule()))
                    .0
                    .push(id);
            }
        }
        for (qk, (ids, rule)) in by_queue {
            self.queues.push_front(qk, ids, rule);
        }
    }

    /// Builds batches for `key`'s free slots from the oldest queues it can run.
    pub(super) fn fill(&mut self, key: u64, now: u64) -> Vec<WorkBatch> {
        let mut batches = Vec::new();
        if self.draining.is_some() || self.queues.is_empty() {
            return batches;
        }
        let Some(worker) = self.workers.get(&key) else {
            return batches;
        };
        let mut free = worker.free_slots();
        let worker_id = worker.id.clone();
        // Time left before the worker must leave, if its job has an end.
        let time_left = worker.ends_at_us.map(|end| {
            end.saturating_sub(self.cfg.walltime_margin_us)
                .saturating_sub(now)
        });
        let fits: HashMap<Arc<str>, bool> = match time_left {
            None => HashMap::new(),
            Some(left) => self
                .queues
                .servables()
                .into_iter()
                .map(|s| {
                    let ok = left > 0 && self.expected_duration_us(&s) <= left;
                    (s, ok)
                })
                .collect(),
        };
        while free > 0 {
            let Some(worker) = self.workers.get(&key) else {
                break;
            };
            let adaptive = &self.adaptive;
            let catalog = &self.catalog;
            let Some((qk, size)) = self.queues.oldest(
                now,
                |s| {
                    catalog::worker_can_run(catalog, &worker.servables, s)
                        && fits.get(s).copied().unwrap_or(true)
                },
                |s| super::auto_plan(adaptive, s),
            ) else {
                break;
            };
            let ids = self.queues.pop_batch(&qk, size);
            if ids.is_empty() {
                break;
            }
            batches.push(self.build_batch(key, &worker_id, &qk, ids, now));
            free -= 1;
        }
        batches
    }

    /// One batch of `ids` (just taken from queue `qk`) for worker `key`.
    fn build_batch(
        &mut self,
        key: u64,
        worker_id: &Arc<str>,
        qk: &QueueKey,
        ids: Vec<TaskId>,
        now: u64,
    ) -> WorkBatch {
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
        let mut spec = None;
        if let Some(w) = self.workers.get_mut(&key) {
            w.batches.insert(batch_id);
            w.tasks += ids.len() as u32;
            // Builtins have no record to send.
            if !self.catalog.is_builtin(&qk.servable)
                && !w.specs_sent.contains(&qk.servable)
                && let Ok(record) = self.catalog.record(&qk.servable)
            {
                w.specs_sent.insert(qk.servable.clone());
                spec = Some(Box::new((*record).clone()));
            }
        }
        self.batches.insert(
            batch_id,
            Batch {
                worker: key,
                servable: qk.servable.clone(),
                tasks: ids,
            },
        );
        WorkBatch {
            id: batch_id,
            servable: qk.servable.to_string(),
            params: qk.params.clone(),
            items,
            spec,
        }
    }

    /// Workers holding a long-poll with a free slot, round-robin from the
    /// one after `cursor`; forgets the ones in `ready` that no longer are.
    fn ready_workers(&mut self, cursor: u64) -> Vec<u64> {
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

    /// Gives a suspect task, alone, to an idle worker holding a long-poll.
    fn dispatch_suspects(&mut self, now: u64, out: &mut Vec<Action>) {
        self.suspects.retain(|(id, _)| {
            self.tasks
                .get(id)
                .is_some_and(|t| t.state == TaskState::Queued)
        });
        if self.suspects.is_empty() {
            return;
        }
        let idle: Vec<u64> = self
            .ready_workers(0)
            .into_iter()
            .filter(|k| self.workers.get(k).is_some_and(|w| w.batches.is_empty()))
            .collect();
        for key in idle {
            let Some(worker) = self.workers.get(&key) else {
                continue;
            };
            let left = worker.ends_at_us.map(|end| {
                end.saturating_sub(self.cfg.walltime_margin_us)
                    .saturating_sub(now)
            });
            let pick = self.suspects.iter().position(|(id, _)| {
                self.tasks.get(id).is_some_and(|t| {
                    catalog::worker_can_run(&self.catalog, &worker.servables, &t.target)
                        && left.is_none_or(|l| self.expected_duration_us(&t.target) <= l)
                })
            });
            let Some(pos) = pick else {
                continue;
            };
            let Some((id, _)) = self.suspects.remove(pos) else {
                continue;
            };
            let Some(task) = self.tasks.get(&id) else {
                continue;
            };
            let (qk, rule) = (task.queue_key(), task.queue_rule());
            // Through the head of its queue, alone, so the batch is built
            // like any other.
            self.queues.push_front(qk.clone(), vec![id], rule);
            let ids = self.queues.pop_batch(&qk, 1);
            let worker_id = worker.id.clone();
            let batch = self.build_batch(key, &worker_id, &qk, ids, now);
            let batch_id = batch.id;
            let batches = vec![batch];
            tracing::info!(task = %id, worker_key = key, "running a suspect task alone");
            if let Some(w) = self.workers.get_mut(&key) {
                w.isolating = Some(batch_id);
                if let Some((to, _)) = w.held_poll.take() {
                    out.push(Action::ReplyWorker {
                        to,
                        message: DaemonMessage::Work { batches },
                        close: false,
                    });
                }
            }
            if self.suspects.is_empty() {
                break;
            }
        }
    }

    /// Gives queued work to workers that hold a long-poll, round-robin.
    pub(super) fn dispatch(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.draining.is_some() {
            return;
        }
        self.dispatch_suspects(now, out);
        if self.queues.is_empty() {
            return;
        }
        let candidates = self.ready_workers(self.rr_cursor);
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

    pub(super) fn lose_worker(&mut self, key: u64, reason: &str, now: u64, out: &mut Vec<Action>) {
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
        if !reason.starts_with("it left") {
            self.worker_event(
                now,
                "worker-lost",
                worker.block,
                &worker.id,
                format!("{reason}; {} tasks were running", worker.tasks),
                out,
            );
        }
        let left_on_its_own = reason.starts_with("it left");
        // The worker process died (rather than its block ending or it
        // leaving): any of its tasks may have killed it.
        let died = !left_on_its_own && !reason.starts_with("its block");
        let mut requeue = Vec::new();
        let mut suspects = Vec::new();
        let mut failed = 0u32;
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
                if left_on_its_own {
                    // Not the task's doing: this attempt does not count.
                    task.attempts = task.attempts.saturating_sub(1);
                } else {
                    task.losses.push(format!(
                        "attempt {}: worker {} on {}{} was lost ({reason})",
                        task.attempts,
                        worker.id,
                        worker.node.as_deref().unwrap_or(&worker.host),
                        worker
                            .block
                            .map(|b| format!(", block {b}"))
                            .unwrap_or_default()
                    ));
                }
                let servable = task.servable.clone();
                let max_attempts = self.max_attempts_for(&servable);
                let Some(task) = self.tasks.get_mut(&id) else {
                    continue;
                };
                if task.attempts >= max_attempts {
                    let outcome = Outcome::Error(format!(
                        "poison task: its worker was lost on each of its {} attempts, so it is not retried again: {}",
                        task.attempts,
                        task.losses.join("; ")
                    ));
                    let (state, outcome) = self.final_outcome(id, outcome);
                    self.finish(id, state, outcome, None, 0, now, out);
                    failed += 1;
                } else {
                    task.state = TaskState::Queued;
                    task.batch = None;
                    if died {
                        suspects.push(id);
                    } else {
                        requeue.push(id);
                    }
                }
            }
        }
        suspects.sort_unstable();
        let requeued = (requeue.len() + suspects.len()) as u64;
        self.suspects
            .extend(suspects.into_iter().map(|id| (id, worker.block)));
        self.requeue_front(requeue);
        self.totals.requeued += requeued;
        tracing::warn!(
            worker = %worker.id,
            host = %worker.host,
            reason,
            requeued,
            failed,
            "worker lost"
        );
    }
}

/// The servables a worker's `Hello` offers, read once; an entry that names
/// nothing could never match a task and is left out.
fn offers(worker: &str, listed: &[String]) -> Vec<ServableRef> {
    listed
        .iter()
        .filter_map(|s| match ServableRef::parse(s) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(worker, offered = %s, error = %e, "ignoring a servable the worker offers");
                None
            }
        })
        .collect()
}

/// Compares secrets without an early exit, so timing does not leak how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
