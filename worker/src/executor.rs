//! The worker's slots: threads that each run one batch at a time.

use std::sync::mpsc::Sender;
use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, unbounded};
use flotilla_protocol::interchange::{BatchResult, WorkBatch};
use flotilla_protocol::task::Outcome;

use crate::builtin;

/// A pool of `slots` threads running batches.
#[derive(Debug)]
pub struct Executor {
    tx: crossbeam_channel::Sender<WorkBatch>,
}

impl Executor {
    /// Starts `slots` threads; each finished batch is sent to `done`.
    pub fn start<T: From<BatchResult> + Send + 'static>(
        slots: u32,
        done: Sender<T>,
    ) -> std::io::Result<Executor> {
        let (tx, rx) = unbounded::<WorkBatch>();
        for slot in 0..slots {
            let rx: Receiver<WorkBatch> = rx.clone();
            let done = done.clone();
            thread::Builder::new()
                .name(format!("slot-{slot}"))
                .spawn(move || {
                    for batch in rx {
                        if done.send(T::from(run(&batch))).is_err() {
                            return;
                        }
                    }
                })?;
        }
        Ok(Executor { tx })
    }

    /// Queues a batch for the next free slot.
    pub fn submit(&self, batch: WorkBatch) {
        let _ = self.tx.send(batch);
    }
}

fn run(batch: &WorkBatch) -> BatchResult {
    let started = Instant::now();
    let outcomes = builtin::run_batch(&batch.servable, &batch.items).unwrap_or_else(|| {
        let error = format!(
            "this worker cannot run servable `{}` (it runs: {})",
            batch.servable,
            crate::SERVABLES.join(", ")
        );
        vec![Outcome::Error(error); batch.items.len()]
    });
    let run_us = started.elapsed().as_micros() as u64;
    for (item, outcome) in batch.items.iter().zip(&outcomes) {
        if let Outcome::Error(message) = outcome {
            tracing::info!(task = item.task.0, servable = %batch.servable, error = %message, "task failed");
        }
    }
    BatchResult {
        batch: batch.id,
        run_us,
        outcomes: batch.items.iter().map(|i| i.task).zip(outcomes).collect(),
    }
}
