//! Time and life: heartbeats, wait deadlines, retention, shutdown, status.

use std::collections::{BTreeMap, HashMap, VecDeque};

use flotilla_protocol::TaskId;
use flotilla_protocol::client::{DaemonStatus, QueueView, WorkerView};
use flotilla_protocol::interchange::DaemonMessage;

use super::{Action, Core, Drain, SWEEP_PERIOD_US, Task};
use super::records::StoreOp;

impl Core {
    pub(super) fn on_tick(&mut self, now: u64, out: &mut Vec<Action>) {
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
        self.events.expire(now, out);
        if !self.held.is_empty() && now >= self.hold_until_us {
            self.release_held(now);
        }
        if self.blocks.strategy_due(now) {
            self.run_strategy(now, out);
        }
        if now.saturating_sub(self.last_sweep_us) >= SWEEP_PERIOD_US {
            self.last_sweep_us = now;
            self.sweep(now, out);
        }
    }

    pub(super) fn sweep(&mut self, now: u64, out: &mut Vec<Action>) {
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

    pub(super) fn begin_drain(&mut self, now: u64, out: &mut Vec<Action>) {
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

    pub(super) fn check_drain(&mut self, now: u64, out: &mut Vec<Action>) {
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

    pub(super) fn status(&self, now: u64) -> DaemonStatus {
        let mut running: BTreeMap<String, u64> = BTreeMap::new();
        for batch in self.batches.values() {
            if let Some(first) = batch.tasks.first().and_then(|id| self.tasks.get(id)) {
                *running.entry(first.target.to_string()).or_default() += batch.tasks.len() as u64;
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
            blocks: self.blocks.views(now),
            blocks_paused: self.blocks.paused().map(str::to_owned),
            pools: vec![self.blocks.pool_view(now)],
            workers: self
                .workers
                .values()
                .map(|w| WorkerView {
                    id: w.id.to_string(),
                    block: w.block,
                    host: w.host.clone(),
                    pid: w.pid,
                    node: w.node.clone(),
                    rank: w.rank,
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
