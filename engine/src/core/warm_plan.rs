//! Warm capacity ahead of need: slots reports from workers, and the plan
//! that keeps `min_warm_slots`, pre-warms new workers, honours `flotilla
//! servable warm` and lets idle processes go (see `warmth.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_protocol::client::{ApiError, ApiErrorKind, ClientReply};
use flotilla_protocol::interchange::{ReleaseOrder, SlotWarmth};

use super::io::{PipeId, ReplyTo};
use super::placement;
use super::warmth::{self, Filled, PLAN_PERIOD_US};
use super::worker_table::WorkerKey;
use super::{Action, Core, dispatch};

/// How many slots hold a servable warm (or warm it), over every worker.
type Hosting = BTreeMap<Arc<str>, u32>;

impl Core {
    /// A worker reports what its slots hold warm; answered like a pull
    /// without results (with work for its free slots, if any).
    pub(super) fn on_slots(
        &mut self,
        from: ReplyTo,
        pipe: PipeId,
        slots: Vec<SlotWarmth>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if let Some(key) = self.workers.by_pipe(pipe)
            && let Some(w) = self.workers.get_mut(key)
            && w.board.report(slots, now)
        {
            tracing::info!(worker = %w.about.id, "worker reports its slots' warm servables");
            // Pre-warm it at the next tick.
            self.warm.last_plan_us = 0;
        }
        self.on_pull(from, pipe, Vec::new(), false, now, out);
    }

    /// Slots each servable should have warm now: its `min_warm_slots`,
    /// or more if `flotilla servable warm` asked.
    fn warm_targets(&self, now: u64) -> BTreeMap<Arc<str>, u32> {
        let mut targets = BTreeMap::new();
        for (name, o) in &self.cfg.overrides {
            let Some(n) = o.min_warm_slots.filter(|n| *n > 0) else {
                continue;
            };
            if let Ok(info) = self.catalog.resolve(name)
                && info.record.is_some()
                && info.steps.is_none()
            {
                targets.insert(info.name, n);
            }
        }
        for (servable, &(n, until)) in &self.warm.asked {
            if until > now {
                let t = targets.entry(servable.clone()).or_insert(0);
                *t = (*t).max(n);
            }
        }
        targets
    }

    /// Slots warm for (or warming) each servable, over every worker.
    fn hosting(&self) -> Hosting {
        let mut hosting = Hosting::new();
        for (_, w) in self.workers.iter() {
            for name in w.board.hosted() {
                *hosting.entry(name).or_insert(0) += 1;
            }
        }
        hosting
    }

    /// Runs the warm plan at most every [`PLAN_PERIOD_US`] (or at once
    /// when `force`): orders and releases go on the long-polls held by
    /// workers that report their slots.
    pub(super) fn plan_warm(&mut self, now: u64, force: bool, out: &mut Vec<Action>) {
        if self.life.draining.is_some()
            || (!force && now.saturating_sub(self.warm.last_plan_us) < PLAN_PERIOD_US)
        {
            return;
        }
        self.warm.last_plan_us = now;
        self.warm.asked.retain(|_, (_, until)| *until > now);
        let targets = self.warm_targets(now);
        let mut hosting = self.hosting();
        let queued: Vec<Arc<str>> = self.sched.queues.servables();
        let recent = self.warm.recent(now);
        let keys: Vec<WorkerKey> = self
            .workers
            .iter()
            .filter(|(_, w)| w.board.is_aware() && w.held_poll().is_some())
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let mut filled = Filled::default();
            self.plan_releases(key, &targets, &mut hosting, now, &mut filled);
            let fresh = self
                .workers
                .get_mut(key)
                .is_some_and(|w| w.board.take_fresh());
            if fresh {
                let mut wanted: Vec<Arc<str>> = queued.iter().chain(&recent).cloned().collect();
                wanted.sort();
                wanted.dedup();
                for servable in wanted {
                    // One slot of this worker, whatever others hold.
                    let here = self
                        .workers
                        .get(key)
                        .map_or(1, |w| w.board.hosting(&servable));
                    if here == 0 {
                        let want = hosting.get(&servable).copied().unwrap_or(0) + 1;
                        self.order_on(key, &servable, want, &mut hosting, &mut filled);
                    }
                }
            }
            for (servable, &want) in &targets {
                self.order_on(key, servable, want, &mut hosting, &mut filled);
            }
            if filled.is_empty() {
                continue;
            }
            if let Some(to) = self.workers.take_poll(key) {
                out.push(Action::ReplyWorker {
                    to,
                    message: filled.into_message(true),
                    close: false,
                });
            }
        }
    }

    /// Releases of worker `key`'s idle processes idle longer than their
    /// servable's `warm_idle_s`, keeping each servable's target.
    fn plan_releases(
        &mut self,
        key: WorkerKey,
        targets: &BTreeMap<Arc<str>, u32>,
        hosting: &mut Hosting,
        now: u64,
        filled: &mut Filled,
    ) {
        let Some(w) = self.workers.get(key) else {
            return;
        };
        let mut release = Vec::new();
        for (slot, name, entry) in w.board.warm_processes() {
            if !w.board.slot_idle(slot) {
                continue;
            }
            let Some(idle_us) = self
                .catalog
                .resolve(name)
                .ok()
                .and_then(|info| info.warm_idle_us)
            else {
                continue;
            };
            let count = hosting.get(name).copied().unwrap_or(0);
            let keep = targets.get(name).copied().unwrap_or(0);
            if now.saturating_sub(entry.last_used_us) >= idle_us && count > keep {
                hosting.insert(name.clone(), count - 1);
                release.push((slot, name.clone()));
            }
        }
        if let Some(w) = self.workers.get_mut(key) {
            for (slot, name) in release {
                tracing::info!(worker = %w.about.id, slot, servable = %name, "letting an idle warm process go");
                w.board.release(slot, &name);
                filled.release.push(ReleaseOrder {
                    slot,
                    servable: name.to_string(),
                });
            }
        }
    }

    /// Orders warm-ups of `servable` on worker `key`'s free slots until
    /// `want` slots host it everywhere (as far as this worker may run it).
    fn order_on(
        &mut self,
        key: WorkerKey,
        servable: &Arc<str>,
        want: u32,
        hosting: &mut Hosting,
        filled: &mut Filled,
    ) {
        if self.catalog.is_builtin(servable) || self.catalog.record(servable).is_err() {
            return;
        }
        {
            let Some(w) = self.workers.get(key) else {
                return;
            };
            let runs = super::catalog::worker_can_run(&self.catalog, &w.about.servables, servable)
                && dispatch::slots_fit(&self.catalog, &w.about, servable)
                && placement::worker_may_run(
                    &self.catalog,
                    &self.fleet.placement,
                    w.about.pool,
                    servable,
                )
                && !w.board.failed(servable);
            if !runs {
                return;
            }
        }
        let (mut d, _) = self.dispatcher();
        loop {
            let have = hosting.get(servable).copied().unwrap_or(0);
            if have >= want {
                break;
            }
            let Some(slot) = d.workers.get(key).and_then(|w| w.board.free_slot()) else {
                break;
            };
            let Some(order) = dispatch::warm_order(&mut d, key, slot, servable) else {
                break;
            };
            hosting.insert(servable.clone(), have + 1);
            filled.warm.push(order);
        }
    }

    /// `flotilla servable warm NAME --slots N`: checks the call, then
    /// [`Core::ask_warm`].
    pub(super) fn on_warm_servable(
        &mut self,
        servable: &str,
        slots: u32,
        now: u64,
        out: &mut Vec<Action>,
    ) -> ClientReply {
        let refuse = |kind, message: String| ClientReply::Error(ApiError { kind, message });
        let info = match self.catalog.resolve(servable) {
            Ok(info) => info,
            Err((kind, message)) => return refuse(kind, message),
        };
        if info.record.is_none() || info.steps.is_some() {
            return refuse(
                ApiErrorKind::BadRequest,
                format!(
                    "{} has no process to warm (builtins and pipelines run in none of their own)",
                    info.name
                ),
            );
        }
        if slots == 0 {
            return refuse(
                ApiErrorKind::BadRequest,
                "--slots must be at least 1".into(),
            );
        }
        let hosting = self.ask_warm(info.name.clone(), slots, info.warm_idle_us, now, out);
        ClientReply::Warming {
            servable: info.name.to_string(),
            slots: hosting,
        }
    }

    /// `flotilla servable warm`: hold `slots` slots of `servable`
    /// (canonical) warm for its `warm_idle_s` (or ten minutes), starting
    /// now. Returns the slots that host it now, with the orders just sent.
    pub(super) fn ask_warm(
        &mut self,
        servable: Arc<str>,
        slots: u32,
        hold_us: Option<u64>,
        now: u64,
        out: &mut Vec<Action>,
    ) -> u32 {
        let until = now.saturating_add(hold_us.unwrap_or(warmth::ASKED_HOLD_US));
        self.warm.asked.insert(servable.clone(), (slots, until));
        self.plan_warm(now, true, out);
        self.hosting().get(&servable).copied().unwrap_or(0)
    }
}
