//! Native ONNX servables: the model runs inside the worker, no process.
//!
//! A servable with `runtime.kind = "onnx"` names its model file among its
//! published files. The file reaches the worker like any servable file (the
//! object store or the interchange fetch, checked against its blake3 hash
//! before anything loads it) and is loaded once into an ONNX Runtime
//! session: by default one per slot, whose threads are the slot's cores
//! ([`crate::affinity`]), or one per worker shared by its slots, which
//! take turns ([`Layout`]). A batch of requests is one call of the model: the
//! inputs are decoded straight into one tensor stacked along a leading
//! batch axis, and the output is split back per request. A request whose
//! input does not fit fails alone ([`tensor`]).
//!
//! ONNX Runtime is loaded at run time ([`library`]), so the worker binary
//! carries no native library and runs where none is installed; only ONNX
//! servables need one.

pub mod device;
pub mod library;
mod model;
pub mod tensor;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use flotilla_protocol::interchange::{BatchFailure, FailureKind};
use flotilla_protocol::placement::SlotPlacement;
use flotilla_protocol::servable::ServableRecord;
use flotilla_protocol::task::Outcome;

pub use model::{Device, LoadError, Model, RunTimes};

/// How a worker lays out its ONNX Runtime sessions (`[worker]
/// onnx_session`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// One session per servable and slot: slots run the model at once,
    /// each on its own cores; every slot holds a copy of the weights.
    #[default]
    PerSlot,
    /// One session per servable in the worker, on all its cores: one copy
    /// of the weights. ONNX Runtime's run is not safe to call from two
    /// threads on one session (the `ort` crate makes it take the session
    /// exclusively), so slots take turns.
    Shared,
}

impl Layout {
    /// The layout named `name` (`slot` or `worker`).
    pub fn parse(name: &str) -> Option<Layout> {
        match name {
            "slot" => Some(Layout::PerSlot),
            "worker" => Some(Layout::Shared),
            _ => None,
        }
    }
}

/// How a worker runs its ONNX servables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Sessions per slot or per worker.
    pub layout: Layout,
    /// Intra-op threads of each session (`[worker] onnx_threads`); none:
    /// a per-slot session gets its slot's cores (or an even share of the
    /// worker's), a shared session all the worker's cores.
    pub threads: Option<usize>,
}

/// A loaded model, taken by one slot at a time.
type Loaded = Arc<Mutex<Model>>;

/// The loaded models of a worker, by servable and slot (none: shared).
pub struct OnnxRuntime {
    /// Models loaded, by servable and slot (`None` for a shared session).
    models: Mutex<HashMap<(String, Option<usize>), Loaded>>,
    /// Held while a shared session loads, so slots load it once.
    loading: Mutex<()>,
    /// Slots of the worker, for the threads of a slot with no core set.
    slots: usize,
    /// Layout and threads.
    settings: Settings,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Says that `servable`'s model runs on the CPU in `slot` although the
/// slot was given a GPU, and `why`.
fn warn_on_cpu(servable: &str, slot: usize, why: &str) {
    tracing::warn!(
        servable,
        slot,
        reason = why,
        "the onnx model runs on the cpu, not on the slot's gpu"
    );
}

/// The cores this worker may use.
fn worker_cores() -> usize {
    crate::affinity::available_cpus()
        .map(|c| c.len())
        .unwrap_or(1)
        .max(1)
}

impl OnnxRuntime {
    /// No model loaded yet, for a worker of `slots` slots.
    pub fn new(slots: usize, settings: Settings) -> Self {
        OnnxRuntime {
            models: Mutex::new(HashMap::new()),
            loading: Mutex::new(()),
            slots: slots.max(1),
            settings,
        }
    }

    /// Threads of a session: as set, else for a shared session the
    /// worker's cores, for a slot's its cores when the site gives slots
    /// cores, else an even share of the worker's.
    fn threads(&self, placement: &SlotPlacement) -> usize {
        if let Some(threads) = self.settings.threads {
            return threads.max(1);
        }
        match (self.settings.layout, &placement.cpus) {
            (Layout::Shared, _) => worker_cores(),
            (Layout::PerSlot, Some(cpus)) => cpus.len().max(1),
            (Layout::PerSlot, None) => (worker_cores() / self.slots).max(1),
        }
    }

    /// Runs `inputs` through `record`'s model (in `dir`, its verified
    /// files) in slot `slot`, loading the model first if need be.
    pub fn run(
        &self,
        record: &ServableRecord,
        dir: &Path,
        inputs: &[&[u8]],
        (slot, placement): (usize, &SlotPlacement),
    ) -> Result<Vec<Outcome>, BatchFailure> {
        let id = record.id();
        let model = self.model(record, dir, (slot, placement))?;
        let waited = std::time::Instant::now();
        let mut model = lock(&model);
        let waited = waited.elapsed();
        let (outcomes, times) = model.run(inputs).map_err(|message| BatchFailure {
            kind: FailureKind::Failed,
            message: format!("{id}: {message}"),
        })?;
        tracing::debug!(
            servable = %id,
            slot,
            items = inputs.len(),
            waited_us = waited.as_micros() as u64,
            decode_us = times.decode.as_micros() as u64,
            model_us = times.model.as_micros() as u64,
            split_us = times.split.as_micros() as u64,
            "onnx batch run"
        );
        Ok(outcomes)
    }

    /// The CUDA device a session for `slot` runs on: its slot's first
    /// NVIDIA device ([`device::cuda_device`]); none for a shared session,
    /// which serves slots of different devices.
    fn cuda_device(
        &self,
        servable: &str,
        slot: usize,
        placement: &SlotPlacement,
        shared: bool,
    ) -> Option<i32> {
        let visible = std::env::var(flotilla_protocol::placement::CUDA_VISIBLE_DEVICES).ok();
        match device::cuda_device(placement, visible.as_deref()) {
            Ok(Some(_)) if shared => {
                tracing::warn!(
                    servable,
                    slot,
                    "a session shared by the worker's slots runs on the cpu; set [worker] onnx_session = \"slot\" for one on each slot's gpu"
                );
                None
            }
            Ok(device) => device,
            Err(why) => {
                warn_on_cpu(servable, slot, &why);
                None
            }
        }
    }

    /// The model slot `slot` runs `record` with, loaded if it is not yet.
    fn model(
        &self,
        record: &ServableRecord,
        dir: &Path,
        (slot, placement): (usize, &SlotPlacement),
    ) -> Result<Loaded, BatchFailure> {
        let id = record.id();
        let shared = self.settings.layout == Layout::Shared;
        let key = (id.clone(), (!shared).then_some(slot));
        if let Some(model) = lock(&self.models).get(&key) {
            return Ok(model.clone());
        }
        let _loading = shared.then(|| lock(&self.loading));
        if let Some(model) = lock(&self.models).get(&key) {
            return Ok(model.clone());
        }
        if !shared && let Some(cpus) = &placement.cpus {
            // The session's threads start from this one and keep its
            // cores: the slot's. (A shared session's threads keep the
            // worker's: slot threads are not pinned.)
            crate::affinity::pin_current_thread(cpus).map_err(|e| BatchFailure {
                kind: FailureKind::Unrunnable,
                message: format!("cannot pin slot {slot} to its cores: {e}"),
            })?;
        }
        let threads = self.threads(placement);
        let cuda = self.cuda_device(&id, slot, placement, shared);
        let started = std::time::Instant::now();
        let model = Model::load(record, dir, threads, cuda).map_err(|e| {
            tracing::error!(servable = %id, slot, error = %e, "cannot load the onnx model");
            // Every cause is in the node's software or the published
            // files: trying again here cannot help.
            BatchFailure {
                kind: FailureKind::Unrunnable,
                message: format!("{id}: {e}"),
            }
        })?;
        if let Device::Cpu {
            instead_of_gpu: Some(why),
        } = model.device()
        {
            warn_on_cpu(&id, slot, why);
        }
        tracing::info!(
            servable = %id,
            slot,
            threads,
            shared,
            device = %model.device(),
            load_ms = started.elapsed().as_millis() as u64,
            "onnx model loaded"
        );
        let model = Arc::new(Mutex::new(model));
        lock(&self.models).insert(key, model.clone());
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_named_slot_or_worker() {
        assert_eq!(Layout::parse("slot"), Some(Layout::PerSlot));
        assert_eq!(Layout::parse("worker"), Some(Layout::Shared));
        assert_eq!(Layout::parse("node"), None);
    }

    #[test]
    fn threads_follow_the_layout_unless_set() {
        let cores = worker_cores();
        let none = SlotPlacement::default();
        let pinned = SlotPlacement {
            cpus: Some(vec![0, 1, 2]),
            ..SlotPlacement::default()
        };
        let per_slot = OnnxRuntime::new(2, Settings::default());
        assert_eq!(per_slot.threads(&none), (cores / 2).max(1));
        assert_eq!(per_slot.threads(&pinned), 3);
        let shared = OnnxRuntime::new(
            2,
            Settings {
                layout: Layout::Shared,
                threads: None,
            },
        );
        assert_eq!(shared.threads(&none), cores);
        assert_eq!(shared.threads(&pinned), cores);
        let set = OnnxRuntime::new(
            2,
            Settings {
                layout: Layout::PerSlot,
                threads: Some(4),
            },
        );
        assert_eq!(set.threads(&none), 4);
        assert_eq!(set.threads(&pinned), 4);
    }
}
