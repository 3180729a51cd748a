//! The worker's slots: threads that each run one batch at a time, and warm
//! servables in the background when the daemon asks.
//!
//! A batch the daemon sent for a named slot goes to that slot's own queue;
//! one sent for no slot (by a daemon that does not place batches) goes to
//! the queue every slot takes from. After each job a slot reports what it
//! holds warm when that changed ([`SlotWarmth`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, select, unbounded};
use flotilla_protocol::interchange::{BatchResult, SlotWarmth, WarmProcessInfo, WorkBatch};
use flotilla_protocol::task::Outcome;

use crate::builtin;
use crate::exec::ExecRuntime;

/// Something for a slot to do.
#[derive(Debug)]
enum Job {
    /// Run a batch received at this time (µs since the Unix epoch).
    Run(WorkBatch, u64),
    /// Start and initialise a servable's process.
    Warm(String),
    /// Let a servable's idle process go.
    Release(String),
}

/// `slots` threads, one per slot, running batches.
#[derive(Debug)]
pub struct Executor {
    any: Sender<Job>,
    own: Vec<Sender<Job>>,
}

/// What every slot holds warm, as last reported.
type Board = Arc<Mutex<Vec<SlotWarmth>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Executor {
    /// Starts `slots` threads running builtins and `runtime`'s servables;
    /// each calls `done` with every batch it finishes, and `warmth` with
    /// every slot's state whenever what a slot holds warm changes, on its
    /// own thread.
    pub fn start(
        slots: u32,
        runtime: Arc<ExecRuntime>,
        done: impl Fn(BatchResult) + Send + Sync + 'static,
        warmth: impl Fn(Vec<SlotWarmth>) + Send + Sync + 'static,
    ) -> std::io::Result<Executor> {
        let (any, any_rx) = unbounded::<Job>();
        let done = Arc::new(done);
        let warmth = Arc::new(warmth);
        let board: Board = Arc::new(Mutex::new(vec![SlotWarmth::default(); slots as usize]));
        let mut own = Vec::new();
        for slot in 0..slots as usize {
            let (tx, rx) = unbounded::<Job>();
            own.push(tx);
            let any_rx: Receiver<Job> = any_rx.clone();
            let done = done.clone();
            let warmth = warmth.clone();
            let runtime = runtime.clone();
            let board = board.clone();
            thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || {
                    let report = |change: &dyn Fn(&mut SlotWarmth)| {
                        let snapshot = {
                            let mut b = lock(&board);
                            let Some(mine) = b.get_mut(slot) else {
                                return;
                            };
                            let before = mine.clone();
                            change(mine);
                            // Other slots' idle processes let go to keep
                            // within the memory budget.
                            let mut others = false;
                            for (servable, other) in runtime.take_evicted() {
                                if other != slot
                                    && let Some(s) = b.get_mut(other)
                                {
                                    s.warm.retain(|p| p.servable != servable);
                                    others = true;
                                }
                            }
                            let Some(mine) = b.get_mut(slot) else {
                                return;
                            };
                            let warm = runtime.warm_in(slot);
                            let same_names = warm.len() == before.warm.len()
                                && warm
                                    .iter()
                                    .zip(&before.warm)
                                    .all(|((name, _), p)| *name == p.servable);
                            if same_names
                                && !others
                                && mine.warming == before.warming
                                && mine.orders_done == before.orders_done
                                && mine.failed == before.failed
                            {
                                return;
                            }
                            mine.warm = warm
                                .into_iter()
                                .map(|(servable, pid)| WarmProcessInfo {
                                    servable,
                                    rss_kb: crate::memory::rss_kb(pid).unwrap_or(0),
                                })
                                .collect();
                            b.clone()
                        };
                        warmth(snapshot);
                    };
                    loop {
                        // Its own queue first: the daemon placed those here.
                        let job = match rx.try_recv() {
                            Ok(job) => job,
                            Err(_) => select! {
                                recv(rx) -> job => match job { Ok(j) => j, Err(_) => break },
                                recv(any_rx) -> job => match job { Ok(j) => j, Err(_) => break },
                            },
                        };
                        match job {
                            Job::Run(batch, received_us) => {
                                done(run(&batch, received_us, &runtime, slot));
                                report(&|_| {});
                            }
                            Job::Warm(servable) => {
                                let name = servable.clone();
                                report(&|s| s.warming = Some(name.clone()));
                                let outcome = runtime.warm(&servable, slot);
                                report(&|s| {
                                    s.warming = None;
                                    s.orders_done += 1;
                                    s.failed.retain(|f| *f != servable);
                                    if outcome.is_err() {
                                        s.failed.push(servable.clone());
                                    }
                                });
                            }
                            Job::Release(servable) => {
                                runtime.release(&servable, slot);
                                report(&|_| {});
                            }
                        }
                    }
                })?;
        }
        Ok(Executor { any, own })
    }

    /// Queues a batch, received at `received_us` (µs since the Unix epoch),
    /// for slot `slot`, or for the next free slot.
    pub fn submit(&self, batch: WorkBatch, received_us: u64, slot: Option<u32>) {
        self.send(slot, Job::Run(batch, received_us));
    }

    /// Asks slot `slot` to warm `servable` (start and initialise its
    /// process) when it is free.
    pub fn warm(&self, slot: u32, servable: String) {
        self.send(Some(slot), Job::Warm(servable));
    }

    /// Asks slot `slot` to let `servable`'s idle process go.
    pub fn release(&self, slot: u32, servable: String) {
        self.send(Some(slot), Job::Release(servable));
    }

    fn send(&self, slot: Option<u32>, job: Job) {
        let queue = slot
            .and_then(|s| self.own.get(s as usize))
            .unwrap_or(&self.any);
        let _ = queue.send(job);
    }
}

fn run(batch: &WorkBatch, received_us: u64, runtime: &ExecRuntime, slot: usize) -> BatchResult {
    let started = Instant::now();
    let result = match builtin::run_batch(&batch.servable, &batch.items) {
        Some(outcomes) => Ok(outcomes),
        None => runtime.run(batch, slot),
    };
    let run_us = started.elapsed().as_micros() as u64;
    match result {
        Ok(outcomes) => {
            for (item, outcome) in batch.items.iter().zip(&outcomes) {
                if let Outcome::Error(message) = outcome {
                    tracing::info!(task = item.task.0, servable = %batch.servable, error = %message, "task failed");
                }
            }
            BatchResult {
                batch: batch.id,
                run_us,
                received_us,
                sent_us: 0,
                outcomes: batch.items.iter().map(|i| i.task).zip(outcomes).collect(),
                failure: None,
            }
        }
        Err(failure) => BatchResult {
            batch: batch.id,
            run_us,
            received_us,
            sent_us: 0,
            outcomes: Vec::new(),
            failure: Some(failure),
        },
    }
}
