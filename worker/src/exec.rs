//! Running published servables: their files, their warm processes.
//!
//! The first batch a worker gets for a servable carries its record. Before
//! the first process starts, every file is taken from the object store,
//! checked against its published blake3 hash (a mismatch fails the task and
//! names the file; the next batch checks again, so a store repaired by
//! publishing again is used) and linked into a private directory of this
//! worker's own (made afresh, mode 0700, never one that existed). A file
//! the object store does not show this worker (no such directory on this
//! node, or not the file) is fetched from the daemon into the node's cache
//! ([`crate::fetch`], [`crate::cache`]) and linked from there. Idle
//! processes are kept per servable, at most one per slot, and reused batch
//! after batch; a process that dies is replaced by a fresh one on the next
//! batch. An ONNX servable's files are prepared the same way, and its model
//! then runs in the worker itself ([`crate::onnx`]), with no process.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flotilla_protocol::interchange::{BatchFailure, FailureKind, WorkBatch};
use flotilla_protocol::placement::SlotPlacement;
use flotilla_protocol::servable::{FileEntry, Runtime, ServableRecord};
use flotilla_protocol::stdio::Reply;
use flotilla_protocol::task::Outcome;

use flotilla_launchers::Container;

use crate::cache::NodeCache;
use crate::environment::{Environments, Prepared};
use crate::fetch::{ObjectSource, fetch_into};
use crate::onnx::OnnxRuntime;
use crate::process::WarmProcess;
use crate::verified::Verified;
use crate::work_dir::WorkDir;

/// How a worker that cannot read the object store gets servable files.
struct Fetcher {
    /// The daemon.
    source: Arc<dyn ObjectSource>,
    /// The node's cache (see [`crate::cache`]).
    cache_dir: PathBuf,
    /// Bytes asked for at a time.
    chunk_len: u32,
}

/// Why a servable's files could not be prepared, and what that makes of
/// its batch.
type PrepareError = (FailureKind, String);

/// How long a slot waits for the record of a batch's servable that came in
/// ahead of it before failing the batch as unrunnable.
const RECORD_WAIT: Duration = Duration::from_secs(10);

/// Published servables this worker has been told about, and their processes.
pub struct ExecRuntime {
    objects: Option<PathBuf>,
    /// Where files missing from `objects` come from; none: nowhere.
    fetcher: Option<Fetcher>,
    containers: Option<Container>,
    /// Servables' declared Python environments; none: servables run with
    /// the Python on the worker's PATH whatever they declare.
    environments: Option<Environments>,
    /// Removed (with everything in it) when the runtime is dropped, after
    /// its processes.
    work_dir: WorkDir,
    records: Mutex<HashMap<String, Arc<ServableRecord>>>,
    /// Signalled when a record is learned, for a slot whose batch came in
    /// ahead of the batch that carried its servable's record.
    learned: Condvar,
    /// Servables whose files are in place; a failed preparation is not
    /// remembered, so the next batch tries again.
    prepared: Mutex<HashMap<String, PathBuf>>,
    /// Held while a servable's files are materialised, so two slots that
    /// get their first batch at once never write the same directory.
    preparing: Mutex<()>,
    /// What each slot holds; empty: nothing (every slot alike).
    slots: Vec<SlotPlacement>,
    /// Idle processes by servable and slot: a process keeps the devices
    /// and cores of the slot that started it, so only that slot reuses it.
    idle: IdleProcesses<WarmProcess>,
    /// ONNX servables' models, loaded in the worker (`runtime.kind = "onnx"`).
    onnx: OnnxRuntime,
    /// The node's cache directory, where templates of servables that fork
    /// listen (see [`crate::template`]); none: no templates.
    templates: Option<PathBuf>,
    /// When this worker last started each template.
    templates_started: Mutex<HashMap<PathBuf, std::time::Instant>>,
    /// Resident memory, KiB, the idle warm processes may hold; none: no
    /// limit.
    memory_budget_kb: Option<u64>,
    /// Idle processes let go for the budget since last asked (servable,
    /// slot), for the slots' reports.
    evicted: Mutex<Vec<(String, usize)>>,
    /// Held through a warm-up under a memory budget, so the next one sees
    /// what this one holds.
    warming: Mutex<()>,
    /// Hashes of object store files this node has checked already.
    verified: Verified,
}

/// How long a slot waits for a template it started to listen.
const TEMPLATE_START_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A template this worker started is not started again for this long (it
/// may still be importing).
const TEMPLATE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Warm processes waiting for their next batch, by servable and by the
/// slot that started them: a process keeps that slot's devices and cores
/// for life, so no other slot may take it (two slots would otherwise end
/// up with processes on the same device). Each is kept with when it was
/// last put back, for letting the least recently used go first.
struct IdleProcesses<P> {
    by_slot: Mutex<ByServableAndSlot<P>>,
}

/// Idle processes, each with when it was put back, by servable and slot.
type ByServableAndSlot<P> = HashMap<(String, usize), Vec<(P, std::time::Instant)>>;

/// What [`IdleProcesses::shed`] did: the memory still held (KiB) and the
/// processes let go (servable, slot, KiB).
type Shed = (u64, Vec<(String, usize, u64)>);

impl<P> IdleProcesses<P> {
    fn new() -> Self {
        IdleProcesses {
            by_slot: Mutex::new(HashMap::new()),
        }
    }

    /// An idle process of `servable` that slot `slot` started, if any.
    fn take(&self, servable: &str, slot: usize) -> Option<P> {
        lock(&self.by_slot)
            .get_mut(&(servable.to_owned(), slot))
            .and_then(Vec::pop)
            .map(|(p, _)| p)
    }

    /// Lets idle processes go, least recently used first, until those left
    /// hold at most `budget_kb` as `rss_kb` measures them; never one of
    /// `keep`'s servable (a slot never pushes out its own servable's
    /// processes: that would only move the load around).
    fn shed(&self, budget_kb: u64, keep: (&str, usize), rss_kb: impl Fn(&P) -> u64) -> Shed {
        let mut dropped = Vec::new();
        let mut gone = Vec::new();
        let held = {
            let mut map = lock(&self.by_slot);
            let rss_kb = &rss_kb;
            let mut all: Vec<(std::time::Instant, (String, usize), u64)> = map
                .iter()
                .flat_map(|(k, list)| list.iter().map(move |(p, t)| (*t, k.clone(), rss_kb(p))))
                .collect();
            let mut held: u64 = all.iter().map(|(_, _, kb)| kb).sum();
            all.sort_by_key(|(t, _, _)| *t);
            for (_, key, kb) in all {
                if held <= budget_kb {
                    break;
                }
                if key.0 == keep.0 {
                    continue;
                }
                if let Some(list) = map.get_mut(&key)
                    && !list.is_empty()
                {
                    let (p, _) = list.remove(0);
                    gone.push(p);
                    held = held.saturating_sub(kb);
                    dropped.push((key.0.clone(), key.1, kb));
                }
            }
            held
        };
        // Dropped (asked to exit) outside the lock.
        drop(gone);
        (held, dropped)
    }

    /// True if slot `slot` holds an idle process of `servable`.
    fn has(&self, servable: &str, slot: usize) -> bool {
        lock(&self.by_slot)
            .get(&(servable.to_owned(), slot))
            .is_some_and(|l| !l.is_empty())
    }

    /// Keeps `process` of `servable`, started by slot `slot`, for its next
    /// batch there.
    fn put(&self, servable: &str, slot: usize, process: P) {
        lock(&self.by_slot)
            .entry((servable.to_owned(), slot))
            .or_default()
            .push((process, std::time::Instant::now()));
    }

    /// Servables with an idle process that slot `slot` started, each with
    /// what `describe` says of its process, by name.
    fn in_slot<T>(&self, slot: usize, describe: impl Fn(&P) -> T) -> Vec<(String, T)> {
        let mut found: Vec<(String, T)> = lock(&self.by_slot)
            .iter()
            .filter(|((_, s), list)| *s == slot && !list.is_empty())
            .filter_map(|((name, _), list)| list.last().map(|(p, _)| (name.clone(), describe(p))))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Drops every idle process.
    fn clear(&self) {
        lock(&self.by_slot).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Numbers the temporary names files are materialised under.
static FRESH_NAMES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A batch's result without per-input outcomes.
fn failure(kind: FailureKind, message: String) -> Result<Vec<Outcome>, BatchFailure> {
    Err(BatchFailure { kind, message })
}

impl ExecRuntime {
    /// Removes the private directory (servable files, scratch space) now,
    /// for a worker about to exit while slot threads still hold the runtime.
    pub fn remove_work_dir(&self) -> std::io::Result<()> {
        match fs::remove_dir_all(self.work_dir.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// A runtime taking files from `objects` and materialising them under
    /// `work_dir` (removed on drop); servables that name an image run in it
    /// through `containers` when the site has a runtime.
    pub fn new(objects: Option<PathBuf>, work_dir: WorkDir, containers: Option<Container>) -> Self {
        ExecRuntime {
            objects,
            fetcher: None,
            containers,
            environments: None,
            work_dir,
            records: Mutex::new(HashMap::new()),
            learned: Condvar::new(),
            prepared: Mutex::new(HashMap::new()),
            preparing: Mutex::new(()),
            slots: Vec::new(),
            idle: IdleProcesses::new(),
            onnx: OnnxRuntime::new(1, crate::onnx::Settings::default()),
            templates: None,
            templates_started: Mutex::new(HashMap::new()),
            memory_budget_kb: None,
            evicted: Mutex::new(Vec::new()),
            warming: Mutex::new(()),
            verified: Verified::none(),
        }
    }

    /// Idle processes let go for the memory budget since the last call
    /// (servable, slot).
    pub fn take_evicted(&self) -> Vec<(String, usize)> {
        std::mem::take(&mut *lock(&self.evicted))
    }

    /// The same runtime, its warm processes holding at most `mb` MiB of
    /// resident memory (none: no limit): over it, idle processes of other
    /// servables are let go, least recently used first, and warm-ups
    /// ahead of need are refused.
    pub fn with_memory_budget(mut self, mb: Option<u64>) -> Self {
        self.memory_budget_kb = mb.map(|mb| mb.saturating_mul(1024));
        self
    }

    /// Lets idle processes go, least recently used first, until the idle
    /// processes hold at most the budget, keeping `keep` (a servable and
    /// slot). Returns what they hold then, KiB, if there is a budget.
    fn within_budget(&self, keep: (&str, usize)) -> Option<u64> {
        let budget = self.memory_budget_kb?;
        let dropped = self.idle.shed(budget, keep, |p: &WarmProcess| {
            crate::memory::rss_kb(p.pid()).unwrap_or(0)
        });
        lock(&self.evicted).extend(dropped.1.iter().map(|(s, slot, _)| (s.clone(), *slot)));
        for (servable, slot, rss_kb) in &dropped.1 {
            tracing::info!(servable = %servable, slot, rss_kb, budget_kb = budget, "letting an idle warm process go: over the worker's memory budget ([worker] warm_memory_mb)");
        }
        Some(dropped.0)
    }

    /// The same runtime, remembering the hashes of object store files it
    /// has checked in the node's cache directory `cache_dir`, so the next
    /// worker on the node does not read an unchanged file again.
    pub fn with_verified_hashes(mut self, cache_dir: &Path) -> Self {
        self.verified = Verified::in_cache(cache_dir);
        self
    }

    /// The same runtime, forking servables that allow it from templates
    /// listening in the node's cache directory `cache_dir`.
    pub fn with_templates(mut self, cache_dir: PathBuf) -> Self {
        self.templates = Some(cache_dir);
        self
    }

    /// The same runtime, fetching files it cannot find in its object store
    /// from `source`, `chunk_len` bytes at a time, into the node's cache in
    /// `cache_dir`.
    pub fn with_fetcher(
        mut self,
        source: Arc<dyn ObjectSource>,
        cache_dir: PathBuf,
        chunk_len: u32,
    ) -> Self {
        self.fetcher = Some(Fetcher {
            source,
            cache_dir,
            chunk_len,
        });
        self
    }

    /// The same runtime, preparing servables' declared environments with
    /// `environments`.
    pub fn with_environments(mut self, environments: Environments) -> Self {
        self.environments = Some(environments);
        self
    }

    /// The same runtime, its slots holding `slots` (one entry per slot).
    pub fn with_slots(mut self, slots: Vec<SlotPlacement>) -> Self {
        self.slots = slots;
        self
    }

    /// The same runtime for a worker of `slots` slots (how many threads an
    /// ONNX model gets in a slot without a core set of its own), running
    /// ONNX servables with `onnx`.
    pub fn with_slot_count(mut self, slots: usize, onnx: crate::onnx::Settings) -> Self {
        self.onnx = OnnxRuntime::new(slots, onnx);
        self
    }

    /// Remembers a servable's record (sent with its first batch).
    pub fn learn(&self, record: &ServableRecord) {
        lock(&self.records)
            .entry(record.id())
            .or_insert_with(|| Arc::new(record.clone()));
        self.learned.notify_all();
    }

    /// The record of servable `id`, waiting up to `wait` for it: the daemon
    /// sends a record once, with the first batch, and a second batch that
    /// came over the other lane can reach a slot first.
    fn record_of(&self, id: &str, wait: Duration) -> Option<Arc<ServableRecord>> {
        let deadline = Instant::now() + wait;
        let mut records = lock(&self.records);
        loop {
            if let Some(record) = records.get(id) {
                return Some(record.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            records = self
                .learned
                .wait_timeout(records, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Runs `batch` on a warm process of its servable in slot `slot`.
    pub fn run(&self, batch: &WorkBatch, slot: usize) -> Result<Vec<Outcome>, BatchFailure> {
        let Some(record) = self.record_of(&batch.servable, RECORD_WAIT) else {
            return failure(
                FailureKind::Unrunnable,
                format!(
                    "this worker does not know servable `{}` (it runs builtins: {}, and published servables it is sent)",
                    batch.servable,
                    crate::BUILTINS.join(", ")
                ),
            );
        };
        let nothing = SlotPlacement::default();
        let placement = self.slots.get(slot).unwrap_or(&nothing);
        let needs = record.spec.resources.gpus as usize;
        if needs > placement.devices.len() {
            return failure(
                FailureKind::Unrunnable,
                format!(
                    "{} needs {needs} accelerators and this worker's slot {slot} holds {} (set [worker] accelerators in the site file)",
                    record.id(),
                    placement.devices.len()
                ),
            );
        }
        if matches!(record.spec.runtime, Runtime::Onnx { .. }) {
            // Models run in this process: no servable process to warm.
            let dir = match self.prepare(&record) {
                Ok(dir) => dir,
                Err((kind, message)) => return failure(kind, message),
            };
            let inputs: Vec<&[u8]> = batch.items.iter().map(|i| &i.input[..]).collect();
            return self.onnx.run(&record, &dir, &inputs, (slot, placement));
        }
        let taken = self.idle.take(&batch.servable, slot);
        let mut process = match taken {
            Some(p) => p,
            None => match self.start_process(&record, slot, placement) {
                Ok(p) => p,
                Err((kind, message)) => return failure(kind, message),
            },
        };
        let tasks = batch
            .items
            .iter()
            .map(|i| i.task.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let inputs: Vec<&[u8]> = batch.items.iter().map(|i| &i.input[..]).collect();
        match process.run(&tasks, &inputs, &batch.params) {
            Ok(reply) => {
                self.idle.put(&batch.servable, slot, process);
                self.within_budget((&batch.servable, slot));
                match reply {
                    Reply::Outputs(outputs) => Ok(outputs
                        .into_iter()
                        .map(|o| match o {
                            Ok(payload) => Outcome::Output(payload),
                            Err(message) => Outcome::Error(message),
                        })
                        .collect()),
                    Reply::Failed(message) => failure(FailureKind::Failed, message),
                    Reply::Ready => failure(FailureKind::Crashed, "unexpected ready".into()),
                }
            }
            // The process is gone (dropped here); the next batch starts anew.
            Err(broken) => failure(FailureKind::Crashed, broken.0),
        }
    }

    /// Prepares `record`'s files and starts and initialises a process of
    /// it for slot `slot`.
    fn start_process(
        &self,
        record: &ServableRecord,
        slot: usize,
        placement: &SlotPlacement,
    ) -> Result<WarmProcess, PrepareError> {
        let dir = self.prepare(record)?;
        let (container, venv) = self.runs_in(record)?;
        if record.spec.options.fork
            && container.is_none()
            && let Some(process) =
                self.fork_from_template(record, &dir, venv.as_deref(), slot, placement)
        {
            return Ok(process);
        }
        WarmProcess::start(record, &dir, container, venv.as_deref(), (slot, placement))
            .map_err(|broken| (FailureKind::Crashed, broken.0))
    }

    /// A process of `record` for slot `slot` forked by the node's template,
    /// if one answers; if none does, one is started for the next time.
    fn fork_from_template(
        &self,
        record: &ServableRecord,
        dir: &Path,
        venv: Option<&Path>,
        slot: usize,
        placement: &SlotPlacement,
    ) -> Option<WarmProcess> {
        let cache = NodeCache::open(self.templates.as_ref()?).ok()?;
        let templates = match crate::template::directory(cache.dir()) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(dir = %cache.dir().display(), error = %e, "no directory for servable templates");
                return None;
            }
        };
        let launch =
            crate::process::Launch::new(record, dir, None, venv, (slot, placement)).ok()?;
        let socket = crate::template::socket_path(&templates, record, &launch);
        let started = std::time::Instant::now();
        match crate::template::fork(&socket, &launch) {
            Ok(forked) => match WarmProcess::from_template(record, &launch, forked) {
                Ok(process) => {
                    tracing::info!(servable = %launch.id, slot, ms = started.elapsed().as_millis() as u64, "servable process forked from the node's template");
                    Some(process)
                }
                Err(broken) => {
                    tracing::warn!(servable = %launch.id, slot, error = %broken.0, "a process forked from the template failed; starting one afresh");
                    None
                }
            },
            Err(why) => {
                tracing::debug!(servable = %launch.id, socket = %socket.display(), reason = %why, "no template answers");
                let pid = {
                    let mut tried = lock(&self.templates_started);
                    if tried
                        .get(&socket)
                        .is_some_and(|t| t.elapsed() < TEMPLATE_RETRY)
                    {
                        return None;
                    }
                    tried.insert(socket.clone(), std::time::Instant::now());
                    match crate::template::start(&socket, &launch) {
                        Ok(pid) => pid,
                        Err(e) => {
                            tracing::warn!(servable = %launch.id, error = %e, "cannot start the node's template");
                            return None;
                        }
                    }
                };
                // Forked from it once it listens: starting the slot's own
                // process meanwhile would compete with it for the cores.
                if !crate::template::wait_ready(&socket, pid, TEMPLATE_START_LIMIT) {
                    tracing::warn!(servable = %launch.id, socket = %socket.display(), "the node's template did not come up; starting the process afresh");
                    return None;
                }
                let forked = crate::template::fork(&socket, &launch).ok()?;
                match WarmProcess::from_template(record, &launch, forked) {
                    Ok(process) => {
                        tracing::info!(servable = %launch.id, slot, ms = started.elapsed().as_millis() as u64, "servable process forked from the node's template");
                        Some(process)
                    }
                    Err(broken) => {
                        tracing::warn!(servable = %launch.id, slot, error = %broken.0, "a process forked from the template failed; starting one afresh");
                        None
                    }
                }
            }
        }
    }

    /// Starts and initialises a process of `servable` for slot `slot`
    /// ahead of its batches (the daemon asked), unless the slot has one
    /// idle already.
    pub fn warm(&self, servable: &str, slot: usize) -> Result<(), String> {
        let Some(record) = lock(&self.records).get(servable).cloned() else {
            let message = format!("this worker was not sent servable `{servable}`");
            tracing::warn!(servable = %servable, slot, error = %message, "cannot warm a servable");
            return Err(message);
        };
        if matches!(record.spec.runtime, Runtime::Onnx { .. }) {
            // Its model runs inside this worker and loads with the slot's
            // first batch: there is no process to start ahead.
            return Err(format!(
                "{servable} runs in the worker (onnx); its model loads with the slot's first batch"
            ));
        }
        if self.idle.has(servable, slot) {
            return Ok(());
        }
        // Under a budget, one warm-up at a time: each sees what the last
        // one started.
        let _one_at_a_time = self.memory_budget_kb.map(|_| lock(&self.warming));
        if let Some(held) = self.within_budget((servable, slot))
            && let Some(budget) = self.memory_budget_kb
            && held >= budget
        {
            let message = format!(
                "not warming {servable}: the worker's warm processes hold {} MiB of its {} MiB budget ([worker] warm_memory_mb)",
                held / 1024,
                budget / 1024
            );
            tracing::warn!(servable = %servable, slot, held_kb = held, budget_kb = budget, "warm-up refused: over the memory budget");
            return Err(message);
        }
        let nothing = SlotPlacement::default();
        let placement = self.slots.get(slot).unwrap_or(&nothing);
        let started = std::time::Instant::now();
        match self.start_process(&record, slot, placement) {
            Ok(process) => {
                tracing::info!(servable = %servable, slot, ms = started.elapsed().as_millis() as u64, "servable warm");
                self.idle.put(servable, slot, process);
                Ok(())
            }
            Err((_, message)) => {
                tracing::warn!(servable = %servable, slot, error = %message, "warming a servable failed");
                Err(message)
            }
        }
    }

    /// Lets slot `slot`'s idle process of `servable` go.
    pub fn release(&self, servable: &str, slot: usize) {
        if let Some(process) = self.idle.take(servable, slot) {
            tracing::info!(servable = %servable, slot, "letting an idle warm process go");
            drop(process);
        }
    }

    /// The servables slot `slot` holds an idle process of, with its pid.
    pub fn warm_in(&self, slot: usize) -> Vec<(String, u32)> {
        self.idle.in_slot(slot, WarmProcess::pid)
    }

    /// What `record`'s processes run in: a container (its image with the
    /// site's runtime), or a venv prepared for it on this node, or neither.
    fn runs_in(
        &self,
        record: &ServableRecord,
    ) -> Result<(Option<Container>, Option<PathBuf>), PrepareError> {
        let declared = record.spec.environment.as_ref();
        if let Some(image) = declared.and_then(|e| e.image.as_ref()) {
            let Some(site) = &self.containers else {
                return Err((
                    FailureKind::Unrunnable,
                    format!(
                        "{} runs in the image {image} ([environment] image) and this worker has no container runtime: set [container] runtime in the site file",
                        record.id()
                    ),
                ));
            };
            return Ok((
                Some(Container {
                    image: image.clone(),
                    ..site.clone()
                }),
                None,
            ));
        }
        let venv = match &self.environments {
            Some(envs) => {
                let id = record.id();
                match envs.prepare(record, &|wheel| self.locate(&id, wheel))? {
                    Some(Prepared::Venv(dir)) => Some(dir),
                    Some(Prepared::Node) | None => None,
                }
            }
            None => None,
        };
        Ok((self.container_for(record), venv))
    }

    /// The container `record`'s processes run in: its image with the
    /// site's runtime, or none (no image, or no runtime here).
    fn container_for(&self, record: &ServableRecord) -> Option<Container> {
        let image = &record.spec.container.as_ref()?.image;
        let Some(site) = &self.containers else {
            tracing::warn!(servable = %record.id(), image = %image, "the servable names an image but this worker has no container runtime; running it on the host");
            return None;
        };
        Some(Container {
            image: image.clone(),
            ..site.clone()
        })
    }

    /// The servable's files, verified and linked into this worker's
    /// directory. Done once per servable when it succeeds; a failure (a
    /// file missing or not matching its hash) is tried again by the next
    /// batch, since publishing again repairs the object store.
    fn prepare(&self, record: &ServableRecord) -> Result<PathBuf, PrepareError> {
        let id = record.id();
        if let Some(done) = lock(&self.prepared).get(&id) {
            return Ok(done.clone());
        }
        let _preparing = lock(&self.preparing);
        if let Some(done) = lock(&self.prepared).get(&id) {
            return Ok(done.clone());
        }
        match self.materialise(record) {
            Ok(dir) => {
                lock(&self.prepared).insert(id, dir.clone());
                Ok(dir)
            }
            Err((kind, e)) => {
                tracing::error!(servable = %id, error = %e, "cannot prepare servable");
                Err((kind, e))
            }
        }
    }

    fn materialise(&self, record: &ServableRecord) -> Result<PathBuf, PrepareError> {
        let id = record.id();
        let unrunnable = |message: String| (FailureKind::Unrunnable, message);
        let dir = self.work_dir.path().join(&id);
        fs::create_dir_all(&dir).map_err(|e| unrunnable(format!("{}: {e}", dir.display())))?;
        for file in &record.files {
            let source = self.locate(&id, file)?;
            let target = dir.join(&file.path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| unrunnable(format!("{}: {e}", parent.display())))?;
            }
            // Link (or copy) under a fresh name, then rename over the target:
            // writing through an existing target could write through a link
            // into the object store itself.
            let fresh = target.with_file_name(format!(
                ".{}.{}.{}.tmp",
                target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                std::process::id(),
                FRESH_NAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = fs::remove_file(&fresh);
            if fs::hard_link(&source, &fresh).is_err() {
                fs::copy(&source, &fresh)
                    .map_err(|e| unrunnable(format!("{}: {e}", fresh.display())))?;
            }
            fs::rename(&fresh, &target)
                .map_err(|e| unrunnable(format!("{}: {e}", target.display())))?;
        }
        if !record.files.is_empty() {
            tracing::info!(servable = %id, files = record.files.len(), dir = %dir.display(), "servable files verified");
        }
        Ok(dir)
    }

    /// Where `file` of servable `id` is, checked against its hash: the
    /// object store when this worker can read the file there, else the
    /// node's cache, fetching it from the daemon if it is not there yet.
    fn locate(&self, id: &str, file: &FileEntry) -> Result<PathBuf, PrepareError> {
        let unrunnable = |message: String| (FailureKind::Unrunnable, message);
        let unreadable = match &self.objects {
            Some(objects) => {
                let source = objects.join(&file.blake3);
                match self.verified.hash(&source) {
                    Ok(actual) if actual == file.blake3 => return Ok(source),
                    Ok(actual) => {
                        return Err(unrunnable(format!(
                            "file `{}` of {id} does not match its published hash (expected blake3 {}, found {actual}); the copy in {} was modified after publication",
                            file.path,
                            file.blake3,
                            source.display()
                        )));
                    }
                    Err(e) => format!("{}: {e}", source.display()),
                }
            }
            None => "this worker has no object store".to_owned(),
        };
        let Some(fetcher) = &self.fetcher else {
            return Err(unrunnable(format!(
                "file `{}` of {id} is not in the object store ({unreadable})",
                file.path
            )));
        };
        tracing::debug!(servable = %id, file = %file.path, reason = %unreadable, "servable file not readable here; using the node's cache");
        let failed = |e: crate::cache::CacheError| {
            let kind = if e.is_transient() {
                FailureKind::Crashed
            } else {
                FailureKind::Unrunnable
            };
            (
                kind,
                format!(
                    "file `{}` of {id} could not be fetched from the daemon: {e}",
                    file.path
                ),
            )
        };
        let cache = NodeCache::open(&fetcher.cache_dir).map_err(failed)?;
        let cached = cache
            .get(&file.blake3, |out| {
                fetch_into(
                    fetcher.source.as_ref(),
                    &file.blake3,
                    file.size,
                    fetcher.chunk_len,
                    out,
                )
            })
            .map_err(failed)?;
        match cached.fetched {
            Some(stats) => tracing::info!(
                servable = %id,
                file = %file.path,
                object = %file.blake3,
                bytes = stats.bytes,
                chunks = stats.chunks,
                cache = %cache.dir().display(),
                "servable file fetched from the daemon"
            ),
            None => tracing::info!(
                servable = %id,
                file = %file.path,
                object = %file.blake3,
                cache = %cache.dir().display(),
                "servable file found in the node cache"
            ),
        }
        Ok(cached.path)
    }
}

impl Drop for ExecRuntime {
    fn drop(&mut self) {
        // Ask every warm process to exit before their files are removed
        // (with `work_dir`, dropped after this).
        self.idle.clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flotilla_protocol::servable::{
        FileEntry, Runtime, ServableOptions, ServableRecord, ServableSpec, TypeSpec,
    };

    /// A record of one file, `serve.py`, with hash `blake3`.
    pub(crate) fn record(blake3: &str) -> ServableRecord {
        let any = TypeSpec::Any {
            description: String::new(),
        };
        ServableRecord {
            spec: ServableSpec {
                name: "raced".into(),
                version: "1.0.0".into(),
                title: "Raced".into(),
                description: String::new(),
                creators: vec![],
                domains: vec![],
                license: "MIT".into(),
                doi: None,
                related_identifiers: vec![],
                model_type: "python-function".into(),
                input: any.clone(),
                output: any,
                runtime: Runtime::Exec {
                    command: "python3".into(),
                    args: vec!["serve.py".into()],
                    working_dir: None,
                    env: Default::default(),
                },
                container: None,
                files: vec!["serve.py".into()],
                build: None,
                resources: Default::default(),
                environment: None,
                options: ServableOptions::default(),
            },
            files: vec![FileEntry {
                path: "serve.py".into(),
                blake3: blake3.into(),
                size: 11,
            }],
            published_us: 0,
            lock: None,
            access: None,
        }
    }

    #[test]
    fn a_batch_ahead_of_its_servables_record_waits_for_it() {
        let root = tempfile::tempdir().unwrap();
        let work = WorkDir::create(root.path(), "w", "h").unwrap();
        let runtime = ExecRuntime::new(None, work, None);
        let record = record("00");
        let id = record.id();
        assert!(runtime.record_of(&id, Duration::ZERO).is_none());
        std::thread::scope(|s| {
            let waiting = s.spawn(|| runtime.record_of(&id, Duration::from_secs(60)));
            runtime.learn(&record);
            assert_eq!(waiting.join().unwrap().map(|r| r.id()), Some(id.clone()));
        });
        assert!(
            runtime
                .record_of("never-sent@1", Duration::from_millis(20))
                .is_none()
        );
    }

    #[test]
    fn slots_preparing_the_same_servable_at_once_never_touch_the_object_store() {
        let root = tempfile::tempdir().unwrap();
        let objects = root.path().join("objects");
        fs::create_dir_all(&objects).unwrap();
        let content = b"print('hi')";
        let hash = blake3::hash(content).to_hex().to_string();
        fs::write(objects.join(&hash), content).unwrap();
        let record = record(&hash);
        for round in 0..20 {
            let work = WorkDir::create(root.path(), &format!("w{round}"), "h").unwrap();
            let runtime = ExecRuntime::new(Some(objects.clone()), work, None);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        let dir = runtime.prepare(&record).unwrap();
                        assert_eq!(fs::read(dir.join("serve.py")).unwrap(), content);
                    });
                }
            });
            // Preparing again over files that are already there is harmless too.
            runtime.materialise(&record).unwrap();
            assert_eq!(fs::read(objects.join(&hash)).unwrap(), content);
        }
    }

    /// A file that failed its check is checked again by the next batch:
    /// once the object store holds the right bytes again, the servable
    /// runs.
    #[test]
    fn a_failed_check_is_not_remembered() {
        let root = tempfile::tempdir().unwrap();
        let objects = root.path().join("objects");
        fs::create_dir_all(&objects).unwrap();
        let content = b"print('hi')";
        let hash = blake3::hash(content).to_hex().to_string();
        fs::write(objects.join(&hash), b"tampered").unwrap();
        let work = WorkDir::create(root.path(), "w", "h").unwrap();
        let runtime = ExecRuntime::new(Some(objects.clone()), work, None);
        let record = record(&hash);
        let (kind, e) = runtime.prepare(&record).unwrap_err();
        assert_eq!(kind, FailureKind::Unrunnable);
        assert!(e.contains("does not match its published hash"), "{e}");
        fs::write(objects.join(&hash), content).unwrap();
        let dir = runtime.prepare(&record).unwrap();
        assert_eq!(fs::read(dir.join("serve.py")).unwrap(), content);
    }

    /// A worker whose object store does not exist fetches the files into
    /// the node's cache; a second worker on the node finds them there.
    #[test]
    fn files_missing_from_the_object_store_are_fetched_once_per_node() {
        use crate::fetch::tests::MemorySource;
        use std::sync::atomic::Ordering;
        let root = tempfile::tempdir().unwrap();
        let content = b"print('hi')".to_vec();
        let hash = blake3::hash(&content).to_hex().to_string();
        let source = Arc::new(MemorySource::new(vec![content.clone()]));
        let record = record(&hash);
        let cache = root.path().join("node-cache");
        for worker in 0..2 {
            let work = WorkDir::create(root.path(), &format!("w{worker}"), "h").unwrap();
            let runtime = ExecRuntime::new(Some(root.path().join("no-such-store")), work, None)
                .with_fetcher(source.clone(), cache.clone(), 4);
            let dir = runtime.prepare(&record).unwrap();
            assert_eq!(fs::read(dir.join("serve.py")).unwrap(), content);
        }
        assert_eq!(
            source.requests.load(Ordering::SeqCst),
            3,
            "11 bytes in chunks of 4, fetched once"
        );
        // Without a fetcher, the missing file is named.
        let work = WorkDir::create(root.path(), "w", "h").unwrap();
        let runtime = ExecRuntime::new(None, work, None);
        let (kind, e) = runtime.prepare(&record).unwrap_err();
        assert_eq!(kind, FailureKind::Unrunnable);
        assert!(e.contains("is not in the object store"), "{e}");
    }

    /// The daemon sends a servable that needs accelerators only to workers
    /// whose slots hold them; should one reach a slot without, it is not
    /// run there.
    #[test]
    fn a_servable_needing_accelerators_never_runs_on_a_slot_without() {
        use flotilla_protocol::TaskId;
        use flotilla_protocol::interchange::{BatchId, WorkItem};
        let root = tempfile::tempdir().unwrap();
        let work = WorkDir::create(root.path(), "w", "h").unwrap();
        let with_gpu = SlotPlacement {
            devices: vec!["3".into()],
            ..SlotPlacement::default()
        };
        let runtime =
            ExecRuntime::new(None, work, None).with_slots(vec![SlotPlacement::default(), with_gpu]);
        let mut needy = record(&"ab".repeat(32));
        needy.spec.resources.gpus = 1;
        runtime.learn(&needy);
        let batch = WorkBatch {
            id: BatchId(1),
            servable: needy.id(),
            params: Default::default(),
            items: vec![WorkItem {
                task: TaskId(1),
                input: Default::default(),
            }],
            spec: None,
        };
        let refused = runtime.run(&batch, 0).unwrap_err();
        assert_eq!(refused.kind, FailureKind::Unrunnable);
        assert!(
            refused
                .message
                .contains("needs 1 accelerators and this worker's slot 0 holds 0"),
            "{}",
            refused.message
        );
        // Slot 1 holds one: it goes on to fetch the files (none here).
        let other = runtime.run(&batch, 1).unwrap_err();
        assert!(!other.message.contains("accelerators"), "{}", other.message);
    }

    #[test]
    fn over_the_memory_budget_the_least_recently_used_idle_processes_go_first() {
        let idle = IdleProcesses::new();
        idle.put("a@1.0.0", 0, 300u64);
        idle.put("b@1.0.0", 1, 300u64);
        idle.put("a@1.0.0", 1, 300u64);
        idle.put("c@1.0.0", 0, 300u64);
        // 1200 KiB held, 700 allowed; `a`, the servable kept, never goes.
        let (held, dropped) = idle.shed(700, ("a@1.0.0", 0), |kb| *kb);
        assert_eq!(held, 600);
        let names: Vec<&str> = dropped.iter().map(|(s, _, _)| s.as_str()).collect();
        assert_eq!(names, ["b@1.0.0", "c@1.0.0"], "oldest first, never `a`");
        assert!(idle.has("a@1.0.0", 0) && idle.has("a@1.0.0", 1));
        let (held, dropped) = idle.shed(700, ("x", 9), |kb| *kb);
        assert_eq!(
            (held, dropped.len()),
            (600, 0),
            "within budget: nothing goes"
        );
    }

    #[test]
    fn an_idle_process_is_taken_only_by_the_slot_that_started_it() {
        let idle = IdleProcesses::new();
        idle.put("gpu@1.0.0", 0, "started by slot 0");
        assert_eq!(idle.take("gpu@1.0.0", 1), None);
        assert_eq!(idle.take("other@1.0.0", 0), None);
        assert_eq!(idle.take("gpu@1.0.0", 0), Some("started by slot 0"));
        assert_eq!(idle.take("gpu@1.0.0", 0), None);
    }
}
