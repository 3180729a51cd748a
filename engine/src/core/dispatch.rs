//! Dispatch: giving queued tasks to workers, as functions over the tables
//! they need, borrowed apart from the rest of the core.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use flotilla_protocol::TaskId;
use flotilla_protocol::interchange::{SlotBatch, WarmOrder, WorkBatch, WorkItem};
use flotilla_protocol::servable::ServableRecord;

use super::batches::{Batch, BatchTable};
use super::blocks::BlockPolicy;
use super::catalog::{self, Catalog};
use super::io::Action;
use super::placement;
use super::queues::QueueKey;
use super::scheduling::{Scheduling, auto_plan};
use super::tasks::{Task, TaskTable};
use super::warmth::{self, Filled, WarmLedger};
use super::work_size;
use super::worker_table::{BlockId, Registration, WorkerKey, WorkerTable};
use flotilla_protocol::peer_text;

/// Tasks that were running when their worker died, each with its worker's
/// block: each runs alone on an otherwise idle worker, so a task that kills
/// its worker takes no innocent neighbour with it and is recognised as the
/// poison it is.
pub(super) type Suspects = VecDeque<(TaskId, Option<BlockId>)>;

/// The tables dispatch changes, and what it reads.
pub(super) struct Dispatch<'a> {
    pub(super) tasks: &'a mut TaskTable,
    pub(super) workers: &'a mut WorkerTable,
    pub(super) batches: &'a mut BatchTable,
    pub(super) sched: &'a mut Scheduling,
    pub(super) catalog: &'a Catalog,
    /// Each pool's settings, for placement.
    pub(super) pools: &'a [BlockPolicy],
    /// The walltime margin of workers no pool started.
    pub(super) walltime_margin_us: u64,
    /// Batch sizes, for monitoring.
    pub(super) tally: &'a mut super::tally::Tally,
    /// When servables were used, warm-ups asked for by hand.
    pub(super) ledger: &'a mut WarmLedger,
}

impl Dispatch<'_> {
    /// The walltime margin of a worker of pool `pool`: its pool's own, or
    /// the daemon's for a worker no pool started.
    fn margin(&self, pool: Option<usize>) -> u64 {
        pool.and_then(|i| self.pools.get(i))
            .map_or(self.walltime_margin_us, |p| p.walltime_margin_us)
    }
}

/// Where a batch of a servable goes on a worker that reports its slots.
enum SlotChoice {
    /// This slot: warm for it, or cold with nothing warm for it anywhere.
    Run(u32),
    /// Not here now (its batches wait for warm slots); `warm`: ask this
    /// slot to warm it meanwhile.
    Skip { warm: Option<u32> },
}

/// Where a batch of `servable` goes on worker `key`'s free slots.
fn choose_slot(d: &Dispatch<'_>, key: WorkerKey, servable: &Arc<str>) -> SlotChoice {
    let Some(worker) = d.workers.get(key) else {
        return SlotChoice::Skip { warm: None };
    };
    let board = &worker.board;
    if let Some(slot) = board.free_warm_slot(servable) {
        return SlotChoice::Run(slot);
    }
    let Some(cold) = board.free_slot() else {
        return SlotChoice::Skip { warm: None };
    };
    if board.failed(servable) || !warm_anywhere(d, servable) {
        // Nothing warm for it anywhere (or its warm-up failed here, and
        // the batch carries the failure to its tasks): the first request
        // waits for the load, once.
        return SlotChoice::Run(cold);
    }
    let warm = needs_more_warm(d, servable).then_some(cold);
    SlotChoice::Skip { warm }
}

/// True if some worker that may run `servable` has a slot warm for it or
/// warming it.
fn warm_anywhere(d: &Dispatch<'_>, servable: &str) -> bool {
    d.workers.iter().any(|(_, w)| {
        w.board.is_aware()
            && w.board.hosting(servable) > 0
            && placement::worker_may_run(d.catalog, d.pools, w.about.pool, servable)
    })
}

/// Slots warm for `servable` or warming it, over every worker.
pub(super) fn hosting_everywhere(d: &Dispatch<'_>, servable: &str) -> u32 {
    d.workers
        .iter()
        .filter(|(_, w)| w.board.is_aware())
        .map(|(_, w)| w.board.hosting(servable))
        .sum()
}

/// True if `servable`'s queue is longer than its warm (and warming) slots
/// drain within its latency target.
fn needs_more_warm(d: &Dispatch<'_>, servable: &str) -> bool {
    let Ok(info) = d.catalog.resolve(servable) else {
        return false;
    };
    let queued = d
        .sched
        .queues
        .depth_by_servable()
        .get(servable)
        .copied()
        .unwrap_or(0);
    let call_us = d.sched.expected_duration_us(d.catalog, servable);
    let hosting = hosting_everywhere(d, servable);
    queued
        > warmth::drains(
            hosting,
            info.batch.max_batch,
            info.latency_target_us,
            call_us,
        )
}

/// A warm order for `servable` in slot `slot` of worker `key`, with its
/// record if the worker has not been sent it; the slot counts as warming.
pub(super) fn warm_order(
    d: &mut Dispatch<'_>,
    key: WorkerKey,
    slot: u32,
    servable: &Arc<str>,
) -> Option<WarmOrder> {
    let record = d.catalog.record(servable).ok()?;
    let w = d.workers.get_mut(key)?;
    let spec = (!w.specs_sent.contains(servable)).then(|| {
        w.specs_sent.insert(servable.clone());
        Box::new((*record).clone())
    });
    w.board.order_warm(slot, servable);
    tracing::info!(worker_key = %key, slot, servable = %servable, "asking a slot to warm a servable");
    Some(WarmOrder {
        slot,
        servable: servable.to_string(),
        spec,
    })
}

/// Builds batches for `key`'s free slots from the oldest queues it can run
/// (and, for a worker that reports its slots, warm-up orders for free
/// slots cold for a queued servable).
pub(super) fn fill(d: &mut Dispatch<'_>, key: WorkerKey, now: u64) -> Filled {
    let mut filled = Filled::default();
    if d.sched.queues.is_empty() {
        return filled;
    }
    let Some(worker) = d.workers.get(key) else {
        return filled;
    };
    let aware = worker.board.is_aware();
    let worker_id = worker.about.id.clone();
    // Servables whose batches wait for warm slots rather than go here now.
    let mut skipped: Vec<Arc<str>> = Vec::new();
    // Time left before the worker must leave, if its job has an end.
    let fits: HashMap<Arc<str>, bool> = match worker.time_left(d.margin(worker.about.pool), now) {
        None => HashMap::new(),
        Some(left) => d
            .sched
            .queues
            .servables()
            .into_iter()
            .map(|s| {
                let ok = left > 0 && d.sched.expected_duration_us(d.catalog, &s) <= left;
                (s, ok)
            })
            .collect(),
    };
    // Room left in the reply for this worker, which drops larger frames.
    let mut room = worker
        .about
        .max_frame_bytes
        .saturating_sub(work_size::FRAME_OVERHEAD);
    while let Some(worker) = d.workers.get(key).filter(|w| w.free_slots() > 0) {
        let adaptive = &d.sched.adaptive;
        let catalog = d.catalog;
        let pools = d.pools;
        let Some((qk, size)) = d.sched.queues.oldest(
            now,
            |s| {
                catalog::worker_can_run(catalog, &worker.about.servables, s)
                    && slots_fit(catalog, &worker.about, s)
                    && placement::worker_may_run(catalog, pools, worker.about.pool, s)
                    && fits.get(s).copied().unwrap_or(true)
                    && !skipped.iter().any(|k| &**k == s)
            },
            |s| auto_plan(adaptive, s),
        ) else {
            break;
        };
        let slot = if aware && !d.catalog.is_builtin(&qk.servable) {
            match choose_slot(d, key, &qk.servable) {
                SlotChoice::Run(slot) => Some(slot),
                SlotChoice::Skip { warm } => {
                    if let Some(slot) = warm
                        && let Some(order) = warm_order(d, key, slot, &qk.servable)
                    {
                        let size = order
                            .spec
                            .as_deref()
                            .map_or(0, |spec| work_size::batch_size(&qk.servable, 0, Some(spec)));
                        room = room.saturating_sub(size);
                        filled.warm.push(order);
                    }
                    skipped.push(qk.servable.clone());
                    continue;
                }
            }
        } else {
            None
        };
        let spec = spec_to_send(d, key, &qk.servable);
        let overhead = work_size::batch_size(&qk.servable, qk.params.len(), spec.as_deref());
        let mut budget = room.saturating_sub(overhead);
        let tasks = &*d.tasks;
        let ids = d.sched.queues.pop_batch_within(&qk, size, |id| {
            let input = tasks.get(&id).map_or(0, |t| t.input.len());
            match budget.checked_sub(work_size::item_size(input)) {
                Some(left) => {
                    budget = left;
                    true
                }
                None => false,
            }
        });
        if ids.is_empty() {
            // The next input does not fit in what is left of this reply:
            // it goes first in a later one. If this reply is still empty,
            // the input is too large for this worker at all.
            if filled.batches.is_empty() {
                tracing::debug!(
                    worker = %peer_text::shown(&worker_id),
                    servable = %qk.servable,
                    max_frame_bytes = room + work_size::FRAME_OVERHEAD,
                    "the next input is too large for this worker's frame limit"
                );
            }
            break;
        }
        room = budget.saturating_sub(SLOT_BYTES);
        let (batch, slot) = build_batch(d, key, &worker_id, &qk, ids, (false, slot), now);
        filled.batches.push(SlotBatch {
            slot: slot.unwrap_or(0),
            batch,
        });
    }
    filled
}

/// What naming its slot adds to a batch in a reply, at most.
const SLOT_BYTES: usize = 8;

/// True if every slot of the worker that registered as `about` holds the
/// accelerators one call of `servable` needs. A servable no worker's slots
/// fit stays queued, waiting for one that does.
pub(super) fn slots_fit(catalog: &Catalog, about: &Registration, servable: &str) -> bool {
    let needs = catalog::accelerators_needed(catalog, servable);
    needs == 0 || about.accelerators_per_slot() >= needs
}

/// The servable's record if worker `key` has not been sent it yet (it goes
/// with the next batch); builtins have none.
fn spec_to_send(
    d: &Dispatch<'_>,
    key: WorkerKey,
    servable: &Arc<str>,
) -> Option<Arc<ServableRecord>> {
    let worker = d.workers.get(key)?;
    if d.catalog.is_builtin(servable) || worker.specs_sent.contains(servable) {
        return None;
    }
    d.catalog.record(servable).ok()
}

/// One batch of `ids` (just taken from queue `qk`) for worker `key`, in
/// slot `slot` (`None`: any free one); with `isolating`, the worker takes
/// nothing else until it ends. Returns it with the slot it went to.
fn build_batch(
    d: &mut Dispatch<'_>,
    key: WorkerKey,
    worker_id: &Arc<str>,
    qk: &QueueKey,
    ids: Vec<TaskId>,
    (isolating, slot): (bool, Option<u32>),
    now: u64,
) -> (WorkBatch, Option<u32>) {
    let batch_id = d.batches.next_id();
    let mut items = Vec::with_capacity(ids.len());
    for &id in &ids {
        if let Some(task) = d.tasks.assign(id, batch_id, worker_id, now) {
            items.push(WorkItem {
                task: id,
                input: task.input.clone(),
            });
        }
    }
    let mut spec = None;
    let builtin = d.catalog.is_builtin(&qk.servable);
    let slot = d.workers.add_batch(
        key,
        batch_id,
        ids.len() as u32,
        isolating,
        (&qk.servable, slot, builtin),
        now,
    );
    if !builtin {
        d.ledger.last_used.insert(qk.servable.clone(), now);
    }
    if let Some(w) = d.workers.get_mut(key)
        // Builtins have no record to send.
        && !d.catalog.is_builtin(&qk.servable)
        && !w.specs_sent.contains(&qk.servable)
        && let Ok(record) = d.catalog.record(&qk.servable)
    {
        w.specs_sent.insert(qk.servable.clone());
        spec = Some(Box::new((*record).clone()));
    }
    d.tally.batch(&qk.servable, ids.len());
    d.batches.insert(
        batch_id,
        Batch {
            worker: key,
            servable: qk.servable.clone(),
            tasks: ids,
        },
    );
    let batch = WorkBatch {
        id: batch_id,
        servable: qk.servable.to_string(),
        params: qk.params.clone(),
        items,
        spec,
    };
    (batch, slot)
}

/// True if `task`, alone (with its servable's record if worker `key` has
/// not had it yet), fits in a frame of `max_frame_bytes`.
fn suspect_fits(d: &Dispatch<'_>, key: WorkerKey, task: &Task, max_frame_bytes: usize) -> bool {
    let spec = spec_to_send(d, key, &task.target);
    let frame = work_size::FRAME_OVERHEAD
        + work_size::batch_size(&task.target, task.params.len(), spec.as_deref())
        + work_size::item_size(task.input.len());
    frame <= max_frame_bytes
}

/// Gives a suspect task, alone, to an idle worker holding a long-poll.
fn dispatch_suspects(
    d: &mut Dispatch<'_>,
    suspects: &mut Suspects,
    now: u64,
    out: &mut Vec<Action>,
) {
    suspects.retain(|(id, _)| d.tasks.get(id).is_some_and(|t| t.is_queued()));
    if suspects.is_empty() {
        return;
    }
    let idle: Vec<WorkerKey> = d
        .workers
        .ready_workers(WorkerTable::first_cursor())
        .into_iter()
        .filter(|&k| d.workers.get(k).is_some_and(|w| w.is_idle()))
        .collect();
    for key in idle {
        let Some(worker) = d.workers.get(key) else {
            continue;
        };
        let left = worker.time_left(d.margin(worker.about.pool), now);
        let pick = suspects.iter().position(|(id, _)| {
            d.tasks.get(id).is_some_and(|t| {
                catalog::worker_can_run(d.catalog, &worker.about.servables, &t.target)
                    && slots_fit(d.catalog, &worker.about, &t.target)
                    && placement::worker_may_run(d.catalog, d.pools, worker.about.pool, &t.target)
                    && left.is_none_or(|l| d.sched.expected_duration_us(d.catalog, &t.target) <= l)
                    && suspect_fits(d, key, t, worker.about.max_frame_bytes)
            })
        });
        let worker_id = worker.about.id.clone();
        let Some((id, _)) = pick.and_then(|pos| suspects.remove(pos)) else {
            continue;
        };
        let Some(task) = d.tasks.get(&id) else {
            continue;
        };
        let (qk, rule) = (task.queue_key(), task.queue_rule());
        // Through the head of its queue, alone, so the batch is built like
        // any other.
        d.sched.queues.push_front(qk.clone(), vec![id], rule);
        let ids = d.sched.queues.pop_batch(&qk, 1);
        let (batch, slot) = build_batch(d, key, &worker_id, &qk, ids, (true, None), now);
        tracing::info!(task = %id, worker_key = %key, "running a suspect task alone");
        let aware = d.workers.get(key).is_some_and(|w| w.board.is_aware());
        if let Some(to) = d.workers.take_poll(key) {
            let filled = Filled {
                batches: vec![SlotBatch {
                    slot: slot.unwrap_or(0),
                    batch,
                }],
                ..Filled::default()
            };
            out.push(Action::ReplyWorker {
                to,
                message: filled.into_message(aware),
                close: false,
            });
        }
        if suspects.is_empty() {
            break;
        }
    }
}

/// Gives queued work (suspects first, each alone) to workers that hold a
/// long-poll, round-robin.
pub(super) fn dispatch(
    d: &mut Dispatch<'_>,
    suspects: &mut Suspects,
    now: u64,
    out: &mut Vec<Action>,
) {
    dispatch_suspects(d, suspects, now, out);
    if d.sched.queues.is_empty() {
        return;
    }
    let candidates = d.workers.ready_workers(d.workers.cursor());
    for key in candidates {
        if d.sched.queues.is_empty() {
            break;
        }
        let filled = fill(d, key, now);
        if filled.is_empty() {
            continue;
        }
        d.workers.advance_cursor(key);
        tracing::debug!(
            worker_key = %key,
            batches = filled.batches.len(),
            warm = filled.warm.len(),
            "dispatching to a held poll"
        );
        let aware = d.workers.get(key).is_some_and(|w| w.board.is_aware());
        if let Some(to) = d.workers.take_poll(key) {
            out.push(Action::ReplyWorker {
                to,
                message: filled.into_message(aware),
                close: false,
            });
        }
    }
}
