//! The worker's slots: threads that each run one batch at a time.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, unbounded};
use flotilla_protocol::interchange::{BatchResult, WorkBatch};
use flotilla_protocol::task::Outcome;

use crate::builtin;
use crate::exec::ExecRuntime;

/// `slots` threads, one per slot, running batches.
#[derive(Debug)]
pub struct Executor {
    tx: crossbeam_channel::Sender<(WorkBatch, u64)>,
}

impl Executor {
    /// Starts `slots` threads running builtins and `runtime`'s servables;
    /// each calls `done` with every batch it finishes, on its own thread.
    pub fn start(
        slots: u32,
        runtime: Arc<ExecRuntime>,
        done: impl Fn(BatchResult) + Send + Sync + 'static,
    ) -> std::io::Result<Executor> {
        let (tx, rx) = unbounded::<(WorkBatch, u64)>();
        let done = Arc::new(done);
        for slot in 0..slots {
            let rx: Receiver<(WorkBatch, u64)> = rx.clone();
            let done = done.clone();
            let runtime = runtime.clone();
            thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || {
                    for (batch, received_us) in rx {
                        done(run(&batch, received_us, &runtime, slot as usize));
                    }
                })?;
        }
        Ok(Executor { tx })
    }

    /// Queues a batch, received at `received_us` (µs since the Unix epoch),
    /// for the next free slot.
    pub fn submit(&self, batch: WorkBatch, received_us: u64) {
        let _ = self.tx.send((batch, received_us));
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
