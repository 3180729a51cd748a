//! Native ONNX servables: the model runs inside the worker, no process.
//!
//! A servable with `runtime.kind = "onnx"` names its model file among its
//! published files. The file reaches the worker like any servable file (the
//! object store or the interchange fetch, checked against its blake3 hash
//! before anything loads it) and each slot loads it once into its own ONNX
//! Runtime session, whose threads are the slot's cores
//! ([`crate::affinity`]). A batch of requests is one call of the model: the
//! inputs are decoded straight into one tensor stacked along a leading
//! batch axis, and the output is split back per request. A request whose
//! input does not fit fails alone ([`tensor`]).
//!
//! ONNX Runtime is loaded at run time ([`library`]), so the worker binary
//! carries no native library and runs where none is installed; only ONNX
//! servables need one.

pub mod library;
mod model;
pub mod tensor;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use flotilla_protocol::interchange::{BatchFailure, FailureKind};
use flotilla_protocol::placement::SlotPlacement;
use flotilla_protocol::servable::ServableRecord;
use flotilla_protocol::task::Outcome;

pub use model::{LoadError, Model};

/// The loaded models of a worker, one per servable and slot.
pub struct OnnxRuntime {
    /// Models waiting for their slot's next batch, by servable and slot.
    models: Mutex<HashMap<(String, usize), Model>>,
    /// Slots of the worker, for the threads of a slot with no core set.
    slots: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OnnxRuntime {
    /// No model loaded yet, for a worker of `slots` slots.
    pub fn new(slots: usize) -> Self {
        OnnxRuntime {
            models: Mutex::new(HashMap::new()),
            slots: slots.max(1),
        }
    }

    /// Threads one slot's session runs on: its cores when the site gives
    /// slots cores, else an even share of the cores this worker may use.
    fn threads(&self, placement: &SlotPlacement) -> usize {
        match &placement.cpus {
            Some(cpus) => cpus.len().max(1),
            None => {
                let available = crate::affinity::available_cpus()
                    .map(|c| c.len())
                    .unwrap_or(1);
                (available / self.slots).max(1)
            }
        }
    }

    /// Runs `inputs` through `record`'s model (in `dir`, its verified
    /// files) in slot `slot`, loading the model first if this slot has not.
    pub fn run(
        &self,
        record: &ServableRecord,
        dir: &Path,
        inputs: &[&[u8]],
        (slot, placement): (usize, &SlotPlacement),
    ) -> Result<Vec<Outcome>, BatchFailure> {
        let id = record.id();
        let key = (id.clone(), slot);
        let taken = lock(&self.models).remove(&key);
        let mut model = match taken {
            Some(model) => model,
            None => {
                if let Some(cpus) = &placement.cpus {
                    // The session's threads start from this one and keep
                    // its cores: the slot's.
                    crate::affinity::pin_current_thread(cpus).map_err(|e| BatchFailure {
                        kind: FailureKind::Unrunnable,
                        message: format!("cannot pin slot {slot} to its cores: {e}"),
                    })?;
                }
                let threads = self.threads(placement);
                let started = std::time::Instant::now();
                let model = Model::load(record, dir, threads).map_err(|e| {
                    tracing::error!(servable = %id, slot, error = %e, "cannot load the onnx model");
                    // Every cause is in the node's software or the
                    // published files: trying again here cannot help.
                    BatchFailure {
                        kind: FailureKind::Unrunnable,
                        message: format!("{id}: {e}"),
                    }
                })?;
                tracing::info!(
                    servable = %id,
                    slot,
                    threads,
                    load_ms = started.elapsed().as_millis() as u64,
                    "onnx model loaded"
                );
                model
            }
        };
        let result = model.run(inputs);
        lock(&self.models).insert(key, model);
        result.map_err(|message| BatchFailure {
            kind: FailureKind::Failed,
            message: format!("{id}: {message}"),
        })
    }
}
