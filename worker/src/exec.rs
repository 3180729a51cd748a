//! Running published servables: their files, their warm processes.
//!
//! The first batch a worker gets for a servable carries its record. Before
//! the first process starts, every file is taken from the object store,
//! checked against its published blake3 hash (a mismatch fails the task and
//! names the file) and linked into a directory of this worker's own. Idle
//! processes are kept per servable, at most one per slot, and reused batch
//! after batch; a process that dies is replaced by a fresh one on the next
//! batch.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use flotilla_protocol::interchange::{BatchFailure, FailureKind, WorkBatch};
use flotilla_protocol::servable::ServableRecord;
use flotilla_protocol::stdio::Reply;
use flotilla_protocol::task::Outcome;

use flotilla_launchers::Container;

use crate::process::WarmProcess;

/// Published servables this worker has been told about, and their processes.
pub struct ExecRuntime {
    objects: Option<PathBuf>,
    containers: Option<Container>,
    work_dir: PathBuf,
    records: Mutex<HashMap<String, Arc<ServableRecord>>>,
    prepared: Mutex<HashMap<String, Result<PathBuf, String>>>,
    /// Held while a servable's files are materialised, so two slots that
    /// get their first batch at once never write the same directory.
    preparing: Mutex<()>,
    idle: Mutex<HashMap<String, Vec<WarmProcess>>>,
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
    /// A runtime taking files from `objects` and materialising them under
    /// `work_dir` (which it owns and removes on drop); servables that name
    /// an image run in it through `containers` when the site has a runtime.
    pub fn new(objects: Option<PathBuf>, work_dir: PathBuf, containers: Option<Container>) -> Self {
        ExecRuntime {
            objects,
            containers,
            work_dir,
            records: Mutex::new(HashMap::new()),
            prepared: Mutex::new(HashMap::new()),
            preparing: Mutex::new(()),
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Remembers a servable's record (sent with its first batch).
    pub fn learn(&self, record: &ServableRecord) {
        lock(&self.records)
            .entry(record.id())
            .or_insert_with(|| Arc::new(record.clone()));
    }

    /// Runs `batch` on a warm process of its servable.
    pub fn run(&self, batch: &WorkBatch) -> Result<Vec<Outcome>, BatchFailure> {
        let Some(record) = lock(&self.records).get(&batch.servable).cloned() else {
            return failure(
                FailureKind::Unrunnable,
                format!(
                    "this worker does not know servable `{}` (it runs builtins: {}, and published servables it is sent)",
                    batch.servable,
                    crate::BUILTINS.join(", ")
                ),
            );
        };
        let dir = match self.prepare(&record) {
            Ok(dir) => dir,
            Err(message) => return failure(FailureKind::Unrunnable, message),
        };
        let taken = lock(&self.idle).get_mut(&batch.servable).and_then(Vec::pop);
        let mut process = match taken {
            Some(p) => p,
            None => match WarmProcess::start(&record, &dir, self.container_for(&record)) {
                Ok(p) => p,
                Err(broken) => return failure(FailureKind::Crashed, broken.0),
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
                lock(&self.idle)
                    .entry(batch.servable.clone())
                    .or_default()
                    .push(process);
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
    /// directory (done once per servable; the outcome is remembered).
    fn prepare(&self, record: &ServableRecord) -> Result<PathBuf, String> {
        let id = record.id();
        if let Some(done) = lock(&self.prepared).get(&id) {
            return done.clone();
        }
        let _preparing = lock(&self.preparing);
        if let Some(done) = lock(&self.prepared).get(&id) {
            return done.clone();
        }
        let outcome = self.materialise(record);
        if let Err(e) = &outcome {
            tracing::error!(servable = %id, error = %e, "cannot prepare servable");
        }
        lock(&self.prepared).insert(id, outcome.clone());
        outcome
    }

    fn materialise(&self, record: &ServableRecord) -> Result<PathBuf, String> {
        let id = record.id();
        let dir = self.work_dir.join(&id);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if record.files.is_empty() {
            return Ok(dir);
        }
        let objects = self.objects.as_ref().ok_or_else(|| {
            format!("{id} has files but this worker has no object store (start it with --state-dir or --objects-dir)")
        })?;
        for file in &record.files {
            let source = objects.join(&file.blake3);
            let actual = hash_file(&source).map_err(|e| {
                format!(
                    "file `{}` of {id} is not in the object store ({}: {e})",
                    file.path,
                    source.display()
                )
            })?;
            if actual != file.blake3 {
                return Err(format!(
                    "file `{}` of {id} does not match its published hash (expected blake3 {}, found {actual}); the copy in {} was modified after publication",
                    file.path,
                    file.blake3,
                    source.display()
                ));
            }
            let target = dir.join(&file.path);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
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
                fs::copy(&source, &fresh).map_err(|e| format!("{}: {e}", fresh.display()))?;
            }
            fs::rename(&fresh, &target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
        tracing::info!(servable = %id, files = record.files.len(), dir = %dir.display(), "servable files verified");
        Ok(dir)
    }
}

impl Drop for ExecRuntime {
    fn drop(&mut self) {
        // Ask every warm process to exit before removing their files.
        lock(&self.idle).clear();
        let _ = fs::remove_dir_all(&self.work_dir);
    }
}

/// blake3 of a file's content, lower-case hex.
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::servable::{
        FileEntry, Runtime, ServableOptions, ServableRecord, ServableSpec, TypeSpec,
    };

    fn record(blake3: &str) -> ServableRecord {
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
                options: ServableOptions::default(),
            },
            files: vec![FileEntry {
                path: "serve.py".into(),
                blake3: blake3.into(),
                size: 11,
            }],
            published_us: 0,
        }
    }

    #[test]
    fn slots_preparing_the_same_servable_at_once_never_touch_the_object_store() {
        let root = std::env::temp_dir().join(format!("flotilla-exec-test-{}", std::process::id()));
        let objects = root.join("objects");
        fs::create_dir_all(&objects).unwrap();
        let content = b"print('hi')";
        let hash = blake3::hash(content).to_hex().to_string();
        fs::write(objects.join(&hash), content).unwrap();
        let record = record(&hash);
        for round in 0..20 {
            let runtime = ExecRuntime::new(
                Some(objects.clone()),
                root.join(format!("work-{round}")),
                None,
            );
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
        let _ = fs::remove_dir_all(&root);
    }
}
