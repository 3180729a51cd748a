//! Workers: registration, pulls, results, dispatch, loss.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use flotilla_protocol::TaskId;
use flotilla_protocol::interchange::{
    BatchFailure, BatchId, BatchResult, DaemonMessage, FailureKind, Hello, WorkBatch, WorkItem,
};
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
                    self.blocks.worker_joined(block);
                }
                self.workers.insert(
                    key,
                    Worker {
                        id: id.clone(),
                        block: hello.block_id,
                        host: hello.host,
                        pid: hello.pid,
                        node: hello.node,
                        rank: hello.rank,
                        slots: hello.slots,
                        servables: hello.servables,
                        pipe,
                        last_seen_us: now,
                        held_poll: None,
                        batches: HashSet::new(),
                        tasks: 0,
                        specs_sent: HashSet::new(),
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
                w.tasks = w.tasks.saturating_sub(batch.tasks.len() as u32);
            }
            if let Some(batch) = &batch {
                let size = batch.tasks.len() as u32;
                if let Some(a) = self.adaptive.get_mut(&batch.servable) {
                    a.observe(size, result.run_us);
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
            let retry = match failure.kind {
                FailureKind::Crashed => task.attempts < self.cfg.max_attempts,
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
    fn requeue_front(&mut self, ids: Vec<TaskId>) {
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
        while free > 0 {
            let Some(worker) = self.workers.get(&key) else {
                break;
            };
            let adaptive = &self.adaptive;
            let Some((qk, size)) = self.queues.oldest(
                now,
                |s| catalog::worker_can_run(&worker.servables, s),
                |s| super::auto_plan(adaptive, s),
            ) else {
                break;
            };
            let ids = self.queues.pop_batch(&qk, size);
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
            let mut spec = None;
            if let Some(w) = self.workers.get_mut(&key) {
                w.batches.insert(batch_id);
                w.tasks += ids.len() as u32;
                // Builtins have no record; published servables are `NAME@VERSION`.
                if qk.servable.contains('@')
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
            batches.push(WorkBatch {
                id: batch_id,
                servable: qk.servable.to_string(),
                params: qk.params.clone(),
                items,
                spec,
            });
            free -= 1;
        }
        batches
    }

    /// Gives queued work to workers that hold a long-poll, round-robin.
    pub(super) fn dispatch(&mut self, now: u64, out: &mut Vec<Action>) {
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
        let mut requeue = Vec::new();
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
                if task.attempts >= self.cfg.max_attempts {
                    let outcome = Outcome::Error(format!(
                        "the worker running this task was lost {} times (last: worker {} on {}, {reason}); giving up",
                        task.attempts, worker.id, worker.host
                    ));
                    let (state, outcome) = self.final_outcome(id, outcome);
                    self.finish(id, state, outcome, None, 0, now, out);
                    failed += 1;
                } else {
                    task.state = TaskState::Queued;
                    task.batch = None;
                    requeue.push(id);
                }
            }
        }
        let requeued = requeue.len() as u64;
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

/// Compares secrets without an early exit, so timing does not leak how much
/// of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
