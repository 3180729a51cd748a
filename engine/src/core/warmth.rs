//! Warm capacity: which of a worker's slots hold which servables warm.
//!
//! A published servable runs in a process that a slot starts, initialises
//! (imports, model load) and then keeps for batch after batch. A worker that
//! reports its slots ([`WorkerMessage::Slots`]) gets its batches for named
//! slots, and the daemon decides here, with no I/O:
//!
//! * a batch goes to a free slot warm for its servable;
//! * a free slot cold for it gets no batch while the servable is warm (or
//!   warming) in some slot anywhere: it is asked to warm in the background
//!   if the servable's queue is longer than its warm slots drain within its
//!   latency target, and gets work once it reports ready;
//! * with no slot warm for the servable anywhere (or after its warm-up
//!   failed in this worker), the batch goes cold: its first request waits
//!   for the load, once, and the slot counts as warm from then on.
//!
//! Ahead of need (every [`PLAN_PERIOD_US`], and when a worker first
//! reports), [`plan`] keeps `min_warm_slots` slots warm per servable, warms
//! the servables that are queued or were used recently in a worker that
//! just arrived, honours `flotilla servable warm`, and lets idle processes
//! go after their servable's `warm_idle_s`.
//!
//! A worker that never reports (older releases, simulated workers) is
//! treated as warm everywhere, as before.
//!
//! [`WorkerMessage::Slots`]: flotilla_protocol::interchange::WorkerMessage::Slots

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use flotilla_protocol::interchange::{
    BatchId, DaemonMessage, ReleaseOrder, SlotBatch, SlotWarmth, WarmOrder,
};

/// How often the warm plan runs on ticks, µs.
pub(super) const PLAN_PERIOD_US: u64 = 1_000_000;

/// A servable dispatched within this long counts as recently used: a new
/// worker warms it ahead of need, µs.
pub(super) const RECENT_US: u64 = 600_000_000;

/// How long `flotilla servable warm` holds its slots warm when the
/// servable sets no `warm_idle_s`, µs.
pub(super) const ASKED_HOLD_US: u64 = 600_000_000;

/// One warm process, as the daemon knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WarmEntry {
    /// Its last batch ended (or it became warm) then, µs.
    pub(super) last_used_us: u64,
    /// Resident memory as last reported, KiB (0: not reported yet).
    pub(super) rss_kb: u64,
}

/// One slot.
#[derive(Debug, Default)]
struct SlotState {
    /// The batch it runs, and of what.
    batch: Option<(BatchId, Arc<str>)>,
    /// Servables warm in it.
    warm: BTreeMap<Arc<str>, WarmEntry>,
    /// The servable it warms at the daemon's request.
    warming: Option<Arc<str>>,
    /// Warm orders sent to it.
    orders_sent: u64,
    /// Servables whose last warm-up in it failed.
    failed: BTreeSet<Arc<str>>,
}

impl SlotState {
    fn is_free(&self) -> bool {
        self.batch.is_none() && self.warming.is_none()
    }
}

/// A worker's slots as the daemon knows them.
#[derive(Debug, Default)]
pub(super) struct SlotBoard {
    /// The worker reports its slots (else: warm everywhere, any slot).
    aware: bool,
    slots: Vec<SlotState>,
    /// It has not been offered the pre-warm of a new worker yet.
    fresh: bool,
}

impl SlotBoard {
    /// The board of a worker with `slots` slots, before it reports.
    pub(super) fn new(slots: u32) -> Self {
        SlotBoard {
            aware: false,
            slots: (0..slots).map(|_| SlotState::default()).collect(),
            fresh: false,
        }
    }

    /// True once the worker has reported its slots.
    pub(super) fn is_aware(&self) -> bool {
        self.aware
    }

    /// Slots warming now (they take no batch).
    pub(super) fn warming(&self) -> u32 {
        self.slots.iter().filter(|s| s.warming.is_some()).count() as u32
    }

    /// A free slot warm for `servable`.
    pub(super) fn free_warm_slot(&self, servable: &str) -> Option<u32> {
        self.slots
            .iter()
            .position(|s| s.is_free() && s.warm.contains_key(servable))
            .map(|i| i as u32)
    }

    /// A free slot to run or warm something new in: one with nothing warm
    /// first, so warm processes stay usable.
    pub(super) fn free_slot(&self) -> Option<u32> {
        let free = |s: &&SlotState| s.is_free();
        self.slots
            .iter()
            .position(|s| s.is_free() && s.warm.is_empty())
            .or_else(|| self.slots.iter().position(|s| free(&s)))
            .map(|i| i as u32)
    }

    /// Slots warm for `servable` or warming it.
    pub(super) fn hosting(&self, servable: &str) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.warm.contains_key(servable) || s.warming.as_deref() == Some(servable))
            .count() as u32
    }

    /// Each servable per slot that holds it warm or warms it.
    pub(super) fn hosted(&self) -> Vec<Arc<str>> {
        let mut names = Vec::new();
        for s in &self.slots {
            names.extend(s.warm.keys().cloned());
            if let Some(w) = &s.warming
                && !s.warm.contains_key(w)
            {
                names.push(w.clone());
            }
        }
        names
    }

    /// True if `servable`'s last warm-up failed in some slot here.
    pub(super) fn failed(&self, servable: &str) -> bool {
        self.slots.iter().any(|s| s.failed.contains(servable))
    }

    /// Slot `slot` runs `batch` of `servable` from `now`; a cold slot
    /// counts as warm for it from now on (its process starts with the
    /// batch). `None`: any free slot. Returns the slot taken, if one was
    /// free.
    pub(super) fn start_batch(
        &mut self,
        batch: BatchId,
        servable: &Arc<str>,
        slot: Option<u32>,
        builtin: bool,
        now: u64,
    ) -> Option<u32> {
        let index = slot.or_else(|| self.free_warm_slot(servable).or_else(|| self.free_slot()))?;
        let s = self.slots.get_mut(index as usize)?;
        s.batch = Some((batch, servable.clone()));
        if !builtin {
            s.warm
                .entry(servable.clone())
                .or_insert(WarmEntry {
                    last_used_us: now,
                    rss_kb: 0,
                })
                .last_used_us = now;
        }
        Some(index)
    }

    /// `batch` ended at `now`: its slot is free.
    pub(super) fn end_batch(&mut self, batch: BatchId, now: u64) {
        for s in &mut self.slots {
            if s.batch.as_ref().is_some_and(|(b, _)| *b == batch) {
                if let Some((_, servable)) = s.batch.take()
                    && let Some(e) = s.warm.get_mut(&servable)
                {
                    e.last_used_us = now;
                }
                return;
            }
        }
    }

    /// Slot `slot` is asked to warm `servable`.
    pub(super) fn order_warm(&mut self, slot: u32, servable: &Arc<str>) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.warming = Some(servable.clone());
            s.orders_sent += 1;
            s.failed.remove(servable);
        }
    }

    /// Slot `slot` is told to let `servable`'s process go.
    pub(super) fn release(&mut self, slot: u32, servable: &str) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.warm.remove(servable);
        }
    }

    /// The worker reports its slots at `now`. Returns true if this is its
    /// first report.
    pub(super) fn report(&mut self, reported: Vec<SlotWarmth>, now: u64) -> bool {
        let first = !self.aware;
        self.aware = true;
        if first {
            self.fresh = true;
        }
        for (s, r) in self.slots.iter_mut().zip(reported) {
            let mut warm = BTreeMap::new();
            for p in r.warm {
                let name: Arc<str> = Arc::from(p.servable.as_str());
                let last = s.warm.get(&name).map_or(now, |e| e.last_used_us);
                warm.insert(
                    name,
                    WarmEntry {
                        last_used_us: last,
                        rss_kb: p.rss_kb,
                    },
                );
            }
            // The servable of the batch it runs stays warm: its process
            // starts with the batch, whatever a report sent meanwhile says.
            if let Some((_, running)) = &s.batch
                && !warm.contains_key(running)
                && let Some(e) = s.warm.get(running)
            {
                warm.insert(running.clone(), *e);
            }
            s.warm = warm;
            s.failed = r.failed.iter().map(|f| Arc::from(f.as_str())).collect();
            if r.orders_done >= s.orders_sent {
                s.warming = None;
            }
        }
        first
    }

    /// True once: the worker just reported for the first time and may be
    /// given the pre-warm of a new worker.
    pub(super) fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Idle warm processes (slot, servable, entry), for release and status.
    pub(super) fn warm_processes(&self) -> impl Iterator<Item = (u32, &Arc<str>, &WarmEntry)> {
        self.slots
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.warm.iter().map(move |(name, e)| (i as u32, name, e)))
    }

    /// True if slot `slot` runs nothing and warms nothing.
    pub(super) fn slot_idle(&self, slot: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(SlotState::is_free)
    }
}

/// What dispatch made for one worker: batches for its slots and warm-up
/// orders.
#[derive(Debug, Default)]
pub(super) struct Filled {
    /// Batches, each for a slot (the slot is ignored for a worker that
    /// does not report its slots).
    pub(super) batches: Vec<SlotBatch>,
    /// Warm-up orders.
    pub(super) warm: Vec<WarmOrder>,
    /// Releases of idle processes.
    pub(super) release: Vec<ReleaseOrder>,
}

impl Filled {
    /// True if there is nothing to send.
    pub(super) fn is_empty(&self) -> bool {
        self.batches.is_empty() && self.warm.is_empty() && self.release.is_empty()
    }

    /// The message for a worker that reports its slots (`aware`) or not.
    pub(super) fn into_message(self, aware: bool) -> DaemonMessage {
        if aware {
            DaemonMessage::Assign {
                batches: self.batches,
                warm: self.warm,
                release: self.release,
            }
        } else {
            DaemonMessage::Work {
                batches: self.batches.into_iter().map(|b| b.batch).collect(),
            }
        }
    }
}

/// How many queued tasks `warm` slots drain within the latency target:
/// each takes `max_batch` per call, `target_us / call_us` calls (at least
/// one; one when the call time is unknown).
pub(super) fn drains(warm: u32, max_batch: u32, target_us: u64, call_us: u64) -> u64 {
    let calls = target_us.checked_div(call_us).map_or(1, |n| n.max(1));
    u64::from(warm) * u64::from(max_batch.max(1)) * calls
}

/// The daemon's memory of warm capacity beyond each worker's board: when
/// servables were last used, warm-ups asked for by hand, when the plan
/// last ran.
#[derive(Debug, Default)]
pub(super) struct WarmLedger {
    /// When each servable was last dispatched, µs.
    pub(super) last_used: HashMap<Arc<str>, u64>,
    /// `flotilla servable warm`: slots to hold warm, until when (µs).
    pub(super) asked: HashMap<Arc<str>, (u32, u64)>,
    /// When the plan last ran, µs.
    pub(super) last_plan_us: u64,
}

impl WarmLedger {
    /// Servables used within [`RECENT_US`] of `now`.
    pub(super) fn recent(&self, now: u64) -> Vec<Arc<str>> {
        let mut names: Vec<Arc<str>> = self
            .last_used
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) <= RECENT_US)
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::interchange::WarmProcessInfo;

    fn warmth(warm: &[&str], orders_done: u64) -> SlotWarmth {
        SlotWarmth {
            warm: warm
                .iter()
                .map(|s| WarmProcessInfo {
                    servable: (*s).into(),
                    rss_kb: 100,
                })
                .collect(),
            warming: None,
            orders_done,
            failed: vec![],
        }
    }

    #[test]
    fn a_warming_slot_is_busy_until_the_report_counts_its_order() {
        let mut b = SlotBoard::new(2);
        let s: Arc<str> = Arc::from("m@1.0.0");
        assert!(b.report(vec![warmth(&["m@1.0.0"], 0), warmth(&[], 0)], 0));
        assert_eq!(b.free_warm_slot("m@1.0.0"), Some(0));
        b.order_warm(1, &s);
        assert_eq!(b.warming(), 1);
        // A report sent before the worker saw the order changes nothing.
        b.report(vec![warmth(&["m@1.0.0"], 0), warmth(&[], 0)], 1);
        assert_eq!(b.warming(), 1);
        assert_eq!(b.hosting("m@1.0.0"), 2);
        b.report(vec![warmth(&["m@1.0.0"], 0), warmth(&["m@1.0.0"], 1)], 2);
        assert_eq!(b.warming(), 0);
        assert_eq!(b.hosting("m@1.0.0"), 2);
    }

    #[test]
    fn a_cold_batch_makes_its_slot_warm_and_a_report_keeps_it() {
        let mut b = SlotBoard::new(1);
        let s: Arc<str> = Arc::from("m@1.0.0");
        b.report(vec![warmth(&[], 0)], 0);
        assert_eq!(b.start_batch(BatchId(1), &s, None, false, 5), Some(0));
        b.report(vec![warmth(&[], 0)], 6);
        assert_eq!(b.hosting("m@1.0.0"), 1);
        b.end_batch(BatchId(1), 9);
        assert_eq!(b.free_warm_slot("m@1.0.0"), Some(0));
        let (_, _, e) = b.warm_processes().next().unwrap();
        assert_eq!(e.last_used_us, 9);
    }

    #[test]
    fn drains_counts_calls_within_the_target() {
        assert_eq!(drains(1, 1, 100_000, 1_000), 100);
        assert_eq!(drains(2, 8, 100_000, 0), 16);
        assert_eq!(drains(1, 1, 100, 1_000), 1);
    }
}
