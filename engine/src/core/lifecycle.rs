//! Time and life: heartbeats, wait deadlines, retention, shutdown, status.

use std::collections::BTreeMap;

use flotilla_protocol::client::{DaemonStatus, QueueView, WarmView, WorkerView};
use flotilla_protocol::interchange::DaemonMessage;
use flotilla_protocol::servable::ServableRecord;

use super::access::{self, Caller};
use super::records::StoreOp;
use super::worker_table::LossReason;
use super::{Action, Core, Drain, SWEEP_PERIOD_US};

impl Core {
    pub(super) fn on_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        let period = self.cfg.heartbeat_period_us;
        let threshold = self.cfg.heartbeat_threshold_us;
        // Before held polls are answered as heartbeats: warm-up and release
        // orders ride on them.
        self.plan_warm(now, false, out);
        for to in self.workers.take_stale_polls(now, period) {
            out.push(Action::ReplyWorker {
                to,
                message: DaemonMessage::Work { batches: vec![] },
                close: false,
            });
        }
        for (key, pipe) in self.workers.silent(now, threshold) {
            self.lose_worker(key, LossReason::HeartbeatSilence, now, out);
            out.push(Action::ClosePipe { pipe });
        }
        let expired: Vec<u64> = self
            .replies
            .waits
            .iter()
            .filter(|(_, w)| w.deadline_us <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.complete_wait(id, now, out);
        }
        self.fleet.events.expire(now, out);
        self.fleet.task_events.expire(now, out);
        if !self.recovery.held.is_empty() && now >= self.recovery.hold_until_us {
            self.release_held(now);
        }
        if self.fleet.pools.strategy_due(now) {
            self.run_due_strategies(now, out);
        }
        if now.saturating_sub(self.life.last_sweep_us) >= SWEEP_PERIOD_US {
            self.life.last_sweep_us = now;
            self.sweep(now, out);
        }
    }

    pub(super) fn sweep(&mut self, now: u64, out: &mut Vec<Action>) {
        let forget = self.tasks.sweep(
            now,
            self.cfg.result_retention_us,
            self.cfg.unfetched_result_retention_us,
        );
        if !forget.is_empty() {
            tracing::debug!(count = forget.len(), "forgetting expired results");
            self.persist(StoreOp::Forget(forget), out);
        }
    }

    pub(super) fn begin_drain(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.life.draining.is_some() {
            return;
        }
        tracing::info!(
            running_batches = self.batches.len(),
            queued = self.sched.queues.len(),
            grace_ms = self.cfg.shutdown_grace_us / 1000,
            "shutting down: no new tasks; waiting for running batches"
        );
        self.life.draining = Some(Drain {
            deadline_us: now + self.cfg.shutdown_grace_us,
            finished: false,
        });
        // Idle long-polls get nothing more to do; release them now.
        for to in self.workers.take_all_polls() {
            out.push(Action::ReplyWorker {
                to,
                message: DaemonMessage::Work { batches: vec![] },
                close: false,
            });
        }
    }

    pub(super) fn check_drain(&mut self, now: u64, out: &mut Vec<Action>) {
        let Some(drain) = &self.life.draining else {
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
        if let Some(d) = &mut self.life.draining {
            d.finished = true;
        }
        for to in self.workers.take_all_polls() {
            out.push(Action::ReplyWorker {
                to,
                message: DaemonMessage::Shutdown,
                close: false,
            });
        }
        let waits: Vec<u64> = self.replies.waits.keys().copied().collect();
        for id in waits {
            self.complete_wait(id, now, out);
        }
        self.fleet.pools.cancel_all(out);
        out.push(Action::Exit);
    }

    // ----- status ----------------------------------------------------------

    /// Why the queued tasks of `servable` cannot start on any connected
    /// worker, if that is so: no pool of the site matches its placement,
    /// the pools that do have no worker yet, or the connected slots lack
    /// the accelerators one call needs.
    fn why_waiting(&self, servable: &str) -> Option<String> {
        if let Some(placed) = super::placement::needs(&self.catalog, servable) {
            let pools = &self.fleet.placement;
            let connected = |pool: usize| {
                self.workers.iter().any(|(_, w)| {
                    w.about.pool == Some(pool)
                        && super::catalog::worker_can_run(
                            &self.catalog,
                            &w.about.servables,
                            servable,
                        )
                })
            };
            if let Some(why) = super::placement::why_waiting(pools, &placed, connected) {
                return Some(why);
            }
        }
        let needs = super::catalog::accelerators_needed(&self.catalog, servable);
        if needs == 0 {
            return None;
        }
        let fitting = self
            .workers
            .iter()
            .any(|(_, w)| super::dispatch::slots_fit(&self.catalog, &w.about, servable));
        (!fitting).then(|| {
            let most = self
                .workers
                .iter()
                .map(|(_, w)| w.about.accelerators_per_slot())
                .max();
            let have = match most {
                None => "no worker is connected".to_owned(),
                Some(n) => format!("the connected workers' slots hold at most {n}"),
            };
            format!(
                "needs {needs} accelerator{} per slot; {have} (the site's [worker] accelerators and slots)",
                if needs == 1 { "" } else { "s" }
            )
        })
    }

    /// The daemon status as `caller` may see it: all of it for the
    /// daemon's user; for anybody else (see [`access`]) the queues and warm
    /// processes of the servables it may see, with their workers unnamed,
    /// the daemon's identity and counters, and no fleet.
    pub(super) fn status_for(&self, caller: &Caller, now: u64) -> DaemonStatus {
        let owner = self.cfg.owner_uid;
        let mut status = self.status(now);
        if access::is_admin(caller, owner) {
            return status;
        }
        let sees = |r: &ServableRecord| access::may_see_record(caller, r, owner);
        let visible = |id: &str| self.catalog.sees_id(id, &sees);
        status.queues.retain(|q| visible(&q.servable));
        status.warm.retain(|w| visible(&w.servable));
        for w in &mut status.warm {
            w.worker.clear();
        }
        status.interchange.clear();
        status.blocks.clear();
        status.blocks_paused = None;
        status.pools.clear();
        status.workers.clear();
        status.fleet_hidden = true;
        status
    }

    pub(super) fn status(&self, now: u64) -> DaemonStatus {
        let mut running: BTreeMap<String, u64> = BTreeMap::new();
        for batch in self.batches.iter() {
            if let Some(first) = batch.tasks.first().and_then(|id| self.tasks.get(id)) {
                *running.entry(first.target.to_string()).or_default() += batch.tasks.len() as u64;
            }
        }
        let depth = self.sched.queues.depth_by_servable();
        let mut names: Vec<&String> = depth.keys().chain(running.keys()).collect();
        names.sort();
        names.dedup();
        let queues = names
            .into_iter()
            .map(|name| {
                let queued = depth.get(name).copied().unwrap_or(0);
                QueueView {
                    servable: name.clone(),
                    queued,
                    running: running.get(name).copied().unwrap_or(0),
                    waiting_for: (queued > 0).then(|| self.why_waiting(name)).flatten(),
                }
            })
            .collect();
        DaemonStatus {
            pid: self.cfg.pid,
            release: self.cfg.release.clone(),
            uptime_s: now.saturating_sub(self.life.started_us) / 1_000_000,
            draining: self.life.draining.is_some(),
            interchange: self.cfg.interchange.clone(),
            blocks: self.fleet.pools.views(now),
            blocks_paused: self.fleet.pools.paused(),
            pools: self.fleet.pools.pool_views(now),
            workers: self
                .workers
                .iter()
                .map(|(_, w)| WorkerView {
                    id: w.about.id.to_string(),
                    block: w.about.block.map(|b| b.0),
                    pool: w
                        .about
                        .pool
                        .and_then(|i| self.fleet.placement.get(i))
                        .map(|p| p.pool.clone()),
                    host: w.about.host.clone(),
                    pid: w.about.pid,
                    node: w.about.node.clone(),
                    rank: w.about.rank,
                    slots: w.about.slots,
                    running: w.tasks(),
                    last_seen_ms: now.saturating_sub(w.last_seen_us) / 1000,
                    slot_resources: w.about.slot_resources.clone(),
                })
                .collect(),
            queues,
            totals: self.tasks.totals(),
            warm: self.warm_views(),
            fleet_hidden: false,
        }
    }

    /// Every warm process the workers reported, by servable.
    fn warm_views(&self) -> Vec<WarmView> {
        let mut views: Vec<WarmView> = self
            .workers
            .iter()
            .flat_map(|(_, w)| {
                w.board
                    .warm_processes()
                    .map(|(slot, servable, e)| WarmView {
                        servable: servable.to_string(),
                        worker: w.about.id.to_string(),
                        slot,
                        rss_kb: e.rss_kb,
                    })
            })
            .collect();
        views.sort_by(|a, b| {
            (&a.servable, &a.worker, a.slot).cmp(&(&b.servable, &b.worker, b.slot))
        });
        views
    }
}
