//! The daemon's pools: one block table (and scaling strategy) each, under
//! one numbering of blocks.
//!
//! Block ids are the daemon's, not a pool's: a worker's `Hello` names its
//! block, and the block names the pool, so nothing else has to. Each
//! pool's table hands out ids from the same sequence ([`Pools::sync_ids`]
//! after every call that may submit), provider reports go to the pool
//! holding the block, and a pool that is paused or cannot reach its
//! scheduler changes nothing for the others.

use flotilla_protocol::client::{BlockView, PoolView};

use super::Action;
use super::blocks::{BlockEvent, BlockPolicy, Blocks, Demand, Note};
use super::records::{BlockRecord, StoreOp};

/// The pools, in the site file's order.
#[derive(Debug)]
pub(super) struct Pools {
    pools: Vec<Blocks>,
    /// Notes about no single pool's block table (adoption of a block of a
    /// pool that is gone).
    notes: Vec<(Option<usize>, Note)>,
    store_ops: Vec<StoreOp>,
}

impl Pools {
    /// A table per policy; block ids start at `next_block`.
    pub(super) fn new(policies: Vec<BlockPolicy>, next_block: u32) -> Self {
        let pools = policies
            .into_iter()
            .map(|p| Blocks::new(p, next_block))
            .collect();
        Pools {
            pools,
            notes: Vec::new(),
            store_ops: Vec::new(),
        }
    }

    /// After a pool may have handed out ids: every pool goes on from the
    /// highest.
    fn sync_ids(&mut self) {
        let next = self.pools.iter().map(Blocks::next_id).max().unwrap_or(0);
        for p in &mut self.pools {
            p.set_next_id(next);
        }
    }

    /// How many pools there are.
    pub(super) fn len(&self) -> usize {
        self.pools.len()
    }

    /// Pool `index`'s settings.
    pub(super) fn policy(&self, index: usize) -> Option<&BlockPolicy> {
        self.pools.get(index).map(Blocks::policy)
    }

    /// Every pool's settings, in order.
    pub(super) fn policies(&self) -> impl Iterator<Item = &BlockPolicy> {
        self.pools.iter().map(Blocks::policy)
    }

    /// The pool holding `block`.
    pub(super) fn of_block(&self, block: u32) -> Option<usize> {
        self.pools.iter().position(|p| p.has(block))
    }

    /// The name of the pool holding `block`.
    pub(super) fn name_of_block(&self, block: u32) -> Option<&str> {
        self.of_block(block)
            .and_then(|i| self.policy(i))
            .map(|p| p.pool.as_str())
    }

    /// Takes back the blocks a previous daemon left running, each into
    /// its pool (records from before pools into the first). A block of a
    /// pool this site no longer has cannot be watched: it is forgotten,
    /// and said so.
    pub(super) fn adopt(&mut self, records: Vec<BlockRecord>, now: u64, out: &mut Vec<Action>) {
        let mut by_pool: Vec<Vec<BlockRecord>> = vec![Vec::new(); self.pools.len()];
        for r in records {
            let index = if r.pool.is_empty() {
                Some(0)
            } else {
                self.pools.iter().position(|p| p.policy().pool == r.pool)
            };
            match index.and_then(|i| by_pool.get_mut(i)) {
                Some(list) => list.push(r),
                None => {
                    let message = format!(
                        "job {} of pool `{}`, which this site no longer has: not watched; cancel it by hand if it still runs",
                        r.job, r.pool
                    );
                    tracing::warn!(block = r.id, job = %r.job, pool = %r.pool, "a block of a pool that is gone");
                    self.notes.push((
                        None,
                        Note {
                            kind: "block-forgotten",
                            block: Some(r.id),
                            message,
                        },
                    ));
                    self.store_ops.push(StoreOp::RemoveBlock(r.id));
                }
            }
        }
        for (pool, records) in self.pools.iter_mut().zip(by_pool) {
            pool.adopt(records, now, out);
        }
        self.sync_ids();
    }

    /// Starts every pool's initial blocks.
    pub(super) fn start(&mut self, now: u64, out: &mut Vec<Action>) {
        for i in 0..self.pools.len() {
            self.pools[i].start(now, out);
            self.sync_ids();
        }
    }

    /// A provider report, for the pool holding its block; returns the
    /// pool and the block if it just ended.
    pub(super) fn on_event(&mut self, event: BlockEvent, now: u64) -> Option<(usize, u32)> {
        let block = match &event {
            BlockEvent::Submitted { block, .. }
            | BlockEvent::SubmitFailed { block, .. }
            | BlockEvent::SubmitRefused { block, .. }
            | BlockEvent::State { block, .. } => *block,
        };
        let index = self.of_block(block)?;
        let ended = self.pools[index].on_event(event, now);
        ended.map(|b| (index, b))
    }

    /// Whether every adopted block of every pool has its workers back.
    pub(super) fn adopted_settled(&self) -> bool {
        self.pools.iter().all(Blocks::adopted_settled)
    }

    /// A worker of `block` registered with `slots` slots.
    pub(super) fn worker_joined(&mut self, block: u32, slots: u32, now: u64) {
        if let Some(i) = self.of_block(block) {
            self.pools[i].worker_joined(block, slots, now);
        }
    }

    /// A worker of `block` left or was lost.
    pub(super) fn worker_left(&mut self, block: u32) {
        if let Some(i) = self.of_block(block) {
            self.pools[i].worker_left(block);
        }
    }

    /// See [`Blocks::ended_by_scheduler`].
    pub(super) fn ended_by_scheduler(&self, block: u32) -> bool {
        self.of_block(block)
            .is_some_and(|i| self.pools[i].ended_by_scheduler(block))
    }

    /// See [`Blocks::has_ended`].
    pub(super) fn has_ended(&self, block: u32) -> bool {
        self.of_block(block)
            .is_some_and(|i| self.pools[i].has_ended(block))
    }

    /// Resumes the pool named `name`.
    pub(super) fn resume(&mut self, name: &str) -> Result<(), String> {
        match self.pools.iter_mut().find(|p| p.policy().pool == name) {
            Some(p) => p.resume(name),
            None => {
                let names: Vec<&str> = self.policies().map(|p| p.pool.as_str()).collect();
                Err(format!(
                    "no pool `{name}` (this daemon's pools: {})",
                    names.join(", ")
                ))
            }
        }
    }

    /// Whether any pool's strategy is due.
    pub(super) fn strategy_due(&self, now: u64) -> bool {
        self.pools.iter().any(|p| p.strategy_due(now))
    }

    /// Runs each pool's strategy against its share of the demand
    /// (`demands[i]` for pool `i`); with `only_due`, only the pools whose
    /// own `strategy_period` has passed.
    pub(super) fn strategize(
        &mut self,
        demands: &[Demand],
        only_due: bool,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        for (i, demand) in demands.iter().enumerate().take(self.pools.len()) {
            if only_due && !self.pools[i].strategy_due(now) {
                continue;
            }
            self.pools[i].strategize(demand, now, out);
            self.sync_ids();
        }
    }

    /// Whether pool `index` could start a block for more work now.
    pub(super) fn has_capacity(&self, index: usize, now: u64) -> bool {
        self.pools.get(index).is_some_and(|p| p.has_capacity(now))
    }

    /// Cancels every live block of every pool (shutdown).
    pub(super) fn cancel_all(&mut self, out: &mut Vec<Action>) {
        for p in &mut self.pools {
            p.cancel_all(out);
        }
    }

    /// Events since the last call, each with the pool it concerns.
    pub(super) fn take_notes(&mut self) -> Vec<(Option<String>, Note)> {
        let mut notes: Vec<(Option<String>, Note)> = std::mem::take(&mut self.notes)
            .into_iter()
            .map(|(i, n)| (i.and_then(|i| self.policy(i)).map(|p| p.pool.clone()), n))
            .collect();
        for p in &mut self.pools {
            let name = p.policy().pool.clone();
            notes.extend(p.take_notes().into_iter().map(|n| (Some(name.clone()), n)));
        }
        notes
    }

    /// Store writes since the last call.
    pub(super) fn take_store_ops(&mut self) -> Vec<StoreOp> {
        let mut ops = std::mem::take(&mut self.store_ops);
        for p in &mut self.pools {
            ops.extend(p.take_store_ops());
        }
        ops
    }

    /// Every pool's blocks, for `flotilla status`, pool by pool.
    pub(super) fn views(&self, now: u64) -> Vec<BlockView> {
        self.pools.iter().flat_map(|p| p.views(now)).collect()
    }

    /// Every pool, for `flotilla status`.
    pub(super) fn pool_views(&self, now: u64) -> Vec<PoolView> {
        self.pools.iter().map(|p| p.pool_view(now)).collect()
    }

    /// Why pools are paused, in one line, if any is.
    pub(super) fn paused(&self) -> Option<String> {
        let paused: Vec<String> = self
            .pools
            .iter()
            .filter_map(|p| p.paused().map(|why| (p.policy().pool.as_str(), why)))
            .map(|(name, why)| {
                if self.pools.len() == 1 {
                    why.to_owned()
                } else {
                    format!("pool `{name}`: {why}")
                }
            })
            .collect();
        (!paused.is_empty()).then(|| paused.join("; "))
    }
}
