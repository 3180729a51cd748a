//! Placement: which pools' workers may run a servable, and which pool a
//! queue's work scales.
//!
//! A servable says what it needs in `[resources]`: accelerators per call
//! (`gpus`), the pools that may run it by name (`pools`), and labels a pool
//! must carry (`labels`). A pool is *eligible* for it when it is named (or
//! none is), carries every label with the same value, and, when the site
//! says how many accelerators its slots hold, holds enough. Dispatch gives
//! a servable's batches only to workers of eligible pools; a worker no pool
//! started (attached by hand) runs only servables that name no pool or
//! label.
//!
//! Scaling: each queue's work (queued and held tasks) counts toward one
//! pool, the eligible one that can serve it soonest: one with warm workers
//! able to run it first, then one that can start a block now (not paused,
//! not waiting out refused submissions, below its limits), then the
//! cheaper, then the first in the site file. Running tasks count toward the
//! pool they run in. So a queue only one pool can serve grows only that
//! pool, and work whose pool is paused or cannot reach its scheduler
//! scales another eligible pool if there is one.

use std::collections::BTreeMap;

use flotilla_protocol::servable::Resources;

use super::blocks::{BlockPolicy, Demand};
use super::catalog::Catalog;

/// What `servable` (canonical) asks of a pool: `None` when nothing (a
/// builtin, or a servable that names no pool, label or accelerator).
pub(super) fn needs(catalog: &Catalog, servable: &str) -> Option<Resources> {
    if catalog.is_builtin(servable) {
        return None;
    }
    let record = catalog.record(servable).ok()?;
    let r = &record.spec.resources;
    (!r.is_nothing()).then(|| r.clone())
}

/// Whether pool `policy` matches the pools and labels `needs` names.
fn matches(policy: &BlockPolicy, needs: &Resources) -> bool {
    (needs.pools.is_empty() || needs.pools.contains(&policy.pool))
        && needs
            .labels
            .iter()
            .all(|(k, v)| policy.labels.get(k) == Some(v))
}

/// Whether pool `policy` may serve a servable that needs `needs` (its
/// slots hold enough accelerators, as far as the site says).
pub(super) fn pool_serves(policy: &BlockPolicy, needs: Option<&Resources>) -> bool {
    let Some(needs) = needs else {
        return true;
    };
    matches(policy, needs)
        && policy
            .accelerators_per_slot
            .is_none_or(|held| needs.gpus <= held)
}

/// Whether a worker of pool `pool` (an index into `pools`; `None` for a
/// worker no pool started) may run `servable`. Accelerators are the
/// worker's own business ([`super::dispatch::slots_fit`]).
pub(super) fn worker_may_run(
    catalog: &Catalog,
    pools: &[BlockPolicy],
    pool: Option<usize>,
    servable: &str,
) -> bool {
    let Some(needs) = needs(catalog, servable) else {
        return true;
    };
    if !needs.places() {
        return true;
    }
    pool.and_then(|i| pools.get(i))
        .is_some_and(|p| matches(p, &needs))
}

/// What each pool looks like to the router now.
#[derive(Debug, Clone)]
pub(super) struct PoolState {
    /// Could start a block for more work now.
    pub(super) capacity: bool,
    /// Servables its connected workers can run (warm).
    pub(super) warm: Vec<bool>,
}

/// The work outstanding, split by servable, for the router.
#[derive(Debug, Default)]
pub(super) struct Work {
    /// Tasks waiting (queued, held for reclaim, suspects), by servable.
    pub(super) waiting: BTreeMap<String, u64>,
    /// Tasks running, by pool (index), and per block.
    pub(super) running: Vec<u64>,
    /// Tasks running per block.
    pub(super) busy: BTreeMap<u32, u32>,
}

/// Which pool a servable's waiting work scales: among the eligible ones,
/// warm first, then with capacity, then the cheaper, then the first.
/// `None` when no pool may serve it (it waits, and says so in status).
pub(super) fn route(
    pools: &[BlockPolicy],
    states: &[PoolState],
    needs: Option<&Resources>,
    servable_index: usize,
) -> Option<usize> {
    pools
        .iter()
        .enumerate()
        .filter(|(_, p)| pool_serves(p, needs))
        .min_by(|(a, pa), (b, pb)| {
            let warm = |i: usize| {
                states
                    .get(i)
                    .and_then(|s| s.warm.get(servable_index))
                    .copied()
                    .unwrap_or(false)
            };
            let capacity = |i: usize| states.get(i).is_some_and(|s| s.capacity);
            warm(*b)
                .cmp(&warm(*a))
                .then(capacity(*b).cmp(&capacity(*a)))
                .then(pa.cost.total_cmp(&pb.cost))
                .then(a.cmp(b))
        })
        .map(|(i, _)| i)
}

/// Each pool's share of the work: `waiting` routed servable by servable,
/// running where it runs. `servables` is the order `states[_].warm` uses.
pub(super) fn demands(
    catalog: &Catalog,
    pools: &[BlockPolicy],
    states: &[PoolState],
    servables: &[String],
    work: &Work,
) -> Vec<Demand> {
    let mut demands: Vec<Demand> = (0..pools.len())
        .map(|i| Demand {
            queued: 0,
            running: work.running.get(i).copied().unwrap_or(0),
            busy: work.busy.clone(),
        })
        .collect();
    for (index, servable) in servables.iter().enumerate() {
        let Some(&count) = work.waiting.get(servable) else {
            continue;
        };
        let needs = needs(catalog, servable);
        if let Some(pool) = route(pools, states, needs.as_ref(), index)
            && let Some(d) = demands.get_mut(pool)
        {
            d.queued += count;
        }
    }
    demands
}
