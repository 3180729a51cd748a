//! Start-up: a core built from what the store recovered, and its first
//! actions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use flotilla_protocol::TaskId;
use flotilla_protocol::peer_text::RateLimit;

use super::batches::BatchTable;
use super::catalog::{Catalog, ServableInfo};
use super::durability::Durability;
use super::event_log::EventLog;
use super::handshake::Handshakes;
use super::memo::{self, Memo};
use super::pools::Pools;
use super::queues::BatchRule;
use super::records::{Recovered, StoreOp, StoredResult, StoredTask};
use super::scheduling::Scheduling;
use super::tally::End;
use super::task_events::TaskEventLog;
use super::tasks::{Task, TaskTable};
use super::worker_table::WorkerTable;
use super::workers::REFUSALS_LOGGED_PER_SECOND;
use super::{Action, Admission, Core, CoreConfig, Fleet, Life, Memoization, Recovery, Replies};

impl Core {
    /// A core holding everything recovered from the store: the catalog,
    /// final tasks with their results, and unfinished tasks queued again in
    /// id order.
    pub fn new(cfg: CoreConfig, mut recovered: Recovered, now_us: u64) -> Self {
        let daemon_owner = cfg.owner_uid;
        let adopt = std::mem::take(&mut recovered.blocks);
        let hold = !adopt.is_empty();
        let catalog = Catalog::new(
            std::mem::take(&mut recovered.servables),
            cfg.overrides.clone(),
        );
        let mut store = Memo::new(cfg.memo_max_entries, cfg.memo_max_bytes);
        let mut evicted = Vec::new();
        for (key, servable, output) in std::mem::take(&mut recovered.memo) {
            evicted.extend(store.insert(key, Arc::from(servable.as_str()), output));
        }
        store.stats.evictions = 0;
        let mut core = Core {
            fleet: Fleet {
                pools: Pools::new(cfg.pools.clone(), recovered.next_block),
                placement: cfg.pools.clone(),
                events: EventLog::starting_after(now_us),
                task_events: TaskEventLog::starting_after(now_us),
            },
            recovery: Recovery {
                adopt,
                held: Vec::new(),
                hold_until_us: now_us.saturating_add(cfg.recovery_grace_us),
                suspects: VecDeque::new(),
            },
            admission: Admission {
                handshakes: Handshakes::new(&cfg.secret, &cfg.handshake_seed, cfg.ciphers.clone()),
                refusal_log: RateLimit::new(REFUSALS_LOGGED_PER_SECOND),
            },
            cfg,
            catalog,
            tasks: TaskTable::new(
                recovered.reserved_until,
                recovered.tasks.len(),
                daemon_owner,
            ),
            workers: WorkerTable::default(),
            // Batch ids from the clock: a worker that reconnects after a
            // restart holds ids no new batch will have.
            batches: BatchTable::new(now_us),
            sched: Scheduling::default(),
            memo: Memoization {
                store,
                inflight: HashMap::new(),
                startup_evictions: evicted,
            },
            replies: Replies {
                waits: rustc_hash::FxHashMap::default(),
                next_wait: 1,
                durability: Durability::default(),
                pending_records: Vec::new(),
                store_failed: None,
                ready_any: Vec::new(),
            },
            life: Life {
                started_us: now_us,
                draining: None,
                last_sweep_us: now_us,
            },
            warm: Default::default(),
            tally: Default::default(),
        };
        let mut requeued = 0u64;
        for (id, stored, result) in recovered.tasks {
            if core.recover_task(id, stored, result, hold, now_us) {
                requeued += 1;
            }
        }
        if requeued > 0 {
            tracing::info!(
                requeued,
                total = core.tasks.len(),
                "recovered unfinished tasks into the queue"
            );
        }
        core
    }

    /// Takes one task back from the store: final with its result, queued
    /// again (or held for its worker to claim, with `hold`), or failed when
    /// its servable is gone. Returns true if it is to run again.
    fn recover_task(
        &mut self,
        id: TaskId,
        stored: StoredTask,
        result: Option<StoredResult>,
        hold: bool,
        now: u64,
    ) -> bool {
        self.tasks.count_accepted(1);
        let resolved = self.catalog.resolve(&stored.servable);
        let info = match &resolved {
            Ok(info) => info.clone(),
            Err(_) => ServableInfo::plain(Arc::from(stored.servable.as_str()), BatchRule::SINGLE),
        };
        // Tasks stored before tasks had owners are the daemon user's.
        let owner = stored.owner.unwrap_or(self.cfg.owner_uid);
        let mut task = Task::new(
            &info,
            owner,
            stored.params,
            stored.input,
            stored.submitted_us,
        );
        match (result, resolved) {
            (Some(r), _) => {
                self.tasks.restore_final(id, task, r);
                false
            }
            (None, Ok(info)) => {
                // Running again: counted as accepted by this daemon.
                self.tally.accepted(&task.servable);
                self.sched.ensure_adaptive(&info);
                if info.memoize && info.steps.is_none() {
                    let scope = memo::MemoScope::of(info.record.as_deref(), owner);
                    task.memo_key = Some(memo::key(scope, &info.name, &task.input, &task.params));
                }
                if hold {
                    // Its worker may still be running it: let it claim the
                    // task when it reconnects.
                    self.tasks.enqueue(id, task);
                    self.recovery.held.push(id);
                } else {
                    self.enqueue_and_place(id, task, now);
                }
                true
            }
            (None, Err((_, why))) => {
                // Its servable was removed while the daemon was down.
                let message = format!("cannot run after a restart: {why}");
                self.tally.accepted(&task.servable);
                self.tally.ended(&task.servable, End::Failed, 0);
                if let Some(record) = self.tasks.fail_recovered(id, task, message, now) {
                    self.replies.pending_records.push((id, record));
                }
                false
            }
        }
    }

    /// Initial actions: adopt the blocks an earlier daemon left running,
    /// start the configured blocks, store results decided during recovery.
    pub fn start(&mut self, now_us: u64, out: &mut Vec<Action>) {
        // Recovered tasks were not accepted now: no events for them.
        drop(self.tasks.take_notes());
        self.flush_records(out);
        let evicted = std::mem::take(&mut self.memo.startup_evictions);
        if !evicted.is_empty() {
            self.persist(StoreOp::RemoveMemo(evicted), out);
        }
        let adopt = std::mem::take(&mut self.recovery.adopt);
        if !adopt.is_empty() {
            tracing::info!(
                blocks = adopt.len(),
                held_tasks = self.recovery.held.len(),
                grace_ms = self.cfg.recovery_grace_us / 1000,
                "adopting blocks from before the restart; their workers may claim the tasks they run"
            );
        }
        self.fleet.pools.adopt(adopt, now_us, out);
        self.fleet.pools.start(now_us, out);
        self.after_event(now_us, out);
    }
}
