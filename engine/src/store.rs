//! The durable store: tasks and results in sled, written by one thread with
//! group commit.
//!
//! Layout (three sled trees, keys are big-endian task ids so iteration is in
//! submission order and inserts are sequential):
//!
//! * `tasks`: every accepted task (servable, parameters, input, time).
//! * `results`: at most one record per task, the first result (completed,
//!   failed or cancelled). Its presence is what makes a task final.
//! * `meta`: the task-id high-water mark, so ids are never reused even after
//!   old tasks are forgotten.
//!
//! There is deliberately no "queue" or "dispatched" record: a task with no
//! result is unfinished, and on restart every unfinished task goes back to the
//! queue in id order. That makes execution at-least-once and keeps the write
//! cost at two inserts per task.
//!
//! ## Durability
//!
//! The scheduling core never writes: it emits [`StoreOp`]s with increasing
//! sequence numbers. [`StoreWriter`] applies everything queued since its last
//! flush, calls `flush()` once, and reports the highest sequence number now
//! durable; the core only then tells clients their tasks were accepted
//! (group commit: one flush per batch of accepted tasks, never one per task).
//!
//! sled 0.34's `flush()` writes its log with `sync_file_range`, so data it
//! reported durable survives the daemon being killed (SIGKILL, OOM, panic).
//! It does not call `fsync`: after a machine crash or power loss, sled's own
//! background sync (every 500 ms) bounds what can be lost to roughly the last
//! half second of accepted tasks and results.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use flotilla_protocol::task::{Outcome, Payload, TaskId, TaskState, TaskTimings};
use serde::{Deserialize, Serialize};

/// Metadata key of the id high-water mark.
const RESERVED_KEY: &[u8] = b"task_ids_reserved_until";

/// Most ops applied between two flushes, bounding the latency of a flush.
const MAX_OPS_PER_FLUSH: usize = 4096;

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (disk full, I/O error, corruption, already locked).
    #[error("store {path}: {source}")]
    Sled {
        /// Database directory.
        path: String,
        /// The error.
        source: sled::Error,
    },
    /// A record could not be decoded.
    #[error("store record {key} in tree `{tree}` is unreadable: {message}")]
    Corrupt {
        /// Tree name.
        tree: &'static str,
        /// Task id or key.
        key: String,
        /// Decoder message.
        message: String,
    },
}

/// A task as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StoredTask {
    /// Servable requested.
    pub servable: String,
    /// msgpack parameters.
    pub params: Payload,
    /// msgpack input.
    pub input: Payload,
    /// Acceptance time, µs since the epoch.
    pub submitted_us: u64,
}

#[derive(Serialize)]
struct StoredTaskRef<'a> {
    servable: &'a str,
    params: &'a Payload,
    input: &'a Payload,
    submitted_us: u64,
}

/// A task's one and only result record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StoredResult {
    /// Completed, Failed or Cancelled.
    pub state: TaskState,
    /// Output or error (a cancelled task carries an error saying so).
    pub outcome: Outcome,
    /// Dispatches it took.
    pub attempts: u32,
    /// Worker that produced it.
    pub worker: Option<String>,
    /// Timestamps.
    pub timings: TaskTimings,
}

/// A new task to persist, sharing its buffers with the core.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    /// Id.
    pub id: TaskId,
    /// Servable requested.
    pub servable: Arc<str>,
    /// msgpack parameters.
    pub params: Payload,
    /// msgpack input.
    pub input: Payload,
    /// Acceptance time.
    pub submitted_us: u64,
}

/// One change to the store, as the scheduling core asks for it.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// Insert newly accepted tasks.
    PutTasks(Vec<NewTask>),
    /// Insert result records.
    PutResults(Vec<(TaskId, StoredResult)>),
    /// Delete tasks and their results (retention expired).
    Forget(Vec<TaskId>),
    /// Raise the id high-water mark.
    ReserveIds {
        /// No id below this will be handed out again.
        until: u64,
    },
}

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// All stored tasks in id order, each with its result if it has one.
    pub tasks: Vec<(TaskId, StoredTask, Option<StoredResult>)>,
    /// Id high-water mark.
    pub reserved_until: u64,
}

/// The open database.
#[derive(Clone, Debug)]
pub struct Store {
    path: String,
    db: sled::Db,
    tasks: sled::Tree,
    results: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    /// Opens (creating if needed) the database at `path`. Fails if another
    /// process has it open.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let name = path.display().to_string();
        let sled_err = |source| StoreError::Sled {
            path: name.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            .open()
            .map_err(sled_err)?;
        let tasks = db.open_tree("tasks").map_err(sled_err)?;
        let results = db.open_tree("results").map_err(sled_err)?;
        let meta = db.open_tree("meta").map_err(sled_err)?;
        Ok(Store {
            path: name,
            db,
            tasks,
            results,
            meta,
        })
    }

    fn sled_err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// Reads every task and result.
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        let reserved_until = match self.meta.get(RESERVED_KEY).map_err(|e| self.sled_err(e))? {
            Some(v) => decode_u64(&v).ok_or_else(|| StoreError::Corrupt {
                tree: "meta",
                key: String::from_utf8_lossy(RESERVED_KEY).into_owned(),
                message: format!("expected 8 bytes, found {}", v.len()),
            })?,
            None => 0,
        };
        let mut tasks = Vec::new();
        for entry in self.tasks.iter() {
            let (key, value) = entry.map_err(|e| self.sled_err(e))?;
            let id = task_id_of(&key, "tasks")?;
            let task: StoredTask =
                rmp_serde::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    tree: "tasks",
                    key: id.to_string(),
                    message: e.to_string(),
                })?;
            let result = match self.results.get(key).map_err(|e| self.sled_err(e))? {
                Some(bytes) => {
                    Some(rmp_serde::from_slice::<StoredResult>(&bytes).map_err(|e| {
                        StoreError::Corrupt {
                            tree: "results",
                            key: id.to_string(),
                            message: e.to_string(),
                        }
                    })?)
                }
                None => None,
            };
            tasks.push((id, task, result));
        }
        let reserved_until = reserved_until.max(tasks.last().map_or(0, |(id, _, _)| id.0 + 1));
        Ok(Recovered {
            tasks,
            reserved_until,
        })
    }

    /// Number of result records (for tests and `flotilla status`).
    pub fn result_count(&self) -> usize {
        self.results.len()
    }

    /// Applies `ops` (not yet flushed).
    pub fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut tasks = sled::Batch::default();
        let mut results = sled::Batch::default();
        let mut reserved = None;
        for op in ops {
            match op {
                StoreOp::PutTasks(new) => {
                    for t in new {
                        let record = StoredTaskRef {
                            servable: &t.servable,
                            params: &t.params,
                            input: &t.input,
                            submitted_us: t.submitted_us,
                        };
                        tasks.insert(&t.id.0.to_be_bytes(), encode(&record)?);
                    }
                }
                StoreOp::PutResults(list) => {
                    for (id, r) in list {
                        results.insert(&id.0.to_be_bytes(), encode(r)?);
                    }
                }
                StoreOp::Forget(ids) => {
                    for id in ids {
                        tasks.remove(&id.0.to_be_bytes());
                        results.remove(&id.0.to_be_bytes());
                    }
                }
                StoreOp::ReserveIds { until } => {
                    reserved = Some(reserved.map_or(*until, |r: u64| r.max(*until)));
                }
            }
        }
        if let Some(until) = reserved {
            self.meta
                .insert(RESERVED_KEY, &until.to_be_bytes())
                .map_err(|e| self.sled_err(e))?;
        }
        self.tasks
            .apply_batch(tasks)
            .map_err(|e| self.sled_err(e))?;
        self.results
            .apply_batch(results)
            .map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// Makes everything applied so far durable (see the module docs).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(|e| self.sled_err(e))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec(value).map_err(|e| StoreError::Corrupt {
        tree: "encode",
        key: String::new(),
        message: e.to_string(),
    })
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn task_id_of(key: &[u8], tree: &'static str) -> Result<TaskId, StoreError> {
    decode_u64(key)
        .map(TaskId)
        .ok_or_else(|| StoreError::Corrupt {
            tree,
            key: format!("{key:?}"),
            message: "key is not an 8-byte task id".into(),
        })
}

/// What the writer thread reports.
#[derive(Debug)]
pub enum WriterReport {
    /// Every op with a sequence number up to this one is durable.
    Durable(u64),
    /// The store failed; nothing after the last `Durable` is safe.
    Failed(String),
}

enum WriterMsg {
    Op(u64, StoreOp),
    Barrier(mpsc::Sender<()>),
}

/// The group-commit writer: owns the only thread that writes to the store.
#[derive(Debug)]
pub struct StoreWriter {
    tx: mpsc::Sender<WriterMsg>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StoreWriter {
    /// Starts the writer on `store`; `report` is called from the writer
    /// thread after every flush.
    pub fn spawn(
        store: Store,
        report: impl Fn(WriterReport) + Send + 'static,
    ) -> std::io::Result<StoreWriter> {
        let (tx, rx) = mpsc::channel::<WriterMsg>();
        let thread = thread::Builder::new()
            .name("flotilla-store".into())
            .spawn(move || writer_loop(&store, &rx, &report))?;
        Ok(StoreWriter {
            tx,
            thread: Some(thread),
        })
    }

    /// Queues `op` as sequence number `seq` (numbers must increase).
    pub fn submit(&self, seq: u64, op: StoreOp) {
        if self.tx.send(WriterMsg::Op(seq, op)).is_err() {
            tracing::error!(seq, "store writer is gone; op dropped");
        }
    }

    /// Blocks until everything submitted before this call is flushed.
    pub fn sync(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(WriterMsg::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(store: &Store, rx: &mpsc::Receiver<WriterMsg>, report: &dyn Fn(WriterReport)) {
    let mut ops = Vec::new();
    let mut barriers = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut last_seq = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Op(seq, op) => {
                    last_seq = Some(seq);
                    ops.push(op);
                }
                WriterMsg::Barrier(done) => barriers.push(done),
            }
            if ops.len() < MAX_OPS_PER_FLUSH {
                next = rx.try_recv().ok();
            }
        }
        let outcome = store.apply(&ops).and_then(|()| store.flush());
        ops.clear();
        match outcome {
            Ok(()) => {
                if let Some(seq) = last_seq {
                    report(WriterReport::Durable(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed; no further work is accepted");
                report(WriterReport::Failed(e.to_string()));
                for b in barriers.drain(..) {
                    let _ = b.send(());
                }
                return;
            }
        }
        for b in barriers.drain(..) {
            let _ = b.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_task(id: u64) -> NewTask {
        NewTask {
            id: TaskId(id),
            servable: Arc::from("noop"),
            params: Payload::new(),
            input: Payload::from_static(&[0xc0]),
            submitted_us: 1000 + id,
        }
    }

    #[test]
    fn tasks_and_results_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .apply(&[
                    StoreOp::ReserveIds { until: 100 },
                    StoreOp::PutTasks((1..=3).map(new_task).collect()),
                    StoreOp::PutResults(vec![(
                        TaskId(2),
                        StoredResult {
                            state: TaskState::Completed,
                            outcome: Outcome::Output(Payload::from_static(&[0xc0])),
                            attempts: 1,
                            worker: Some("w".into()),
                            timings: TaskTimings::default(),
                        },
                    )]),
                ])
                .unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(rec.reserved_until, 100);
        let ids: Vec<_> = rec.tasks.iter().map(|t| t.0.0).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(rec.tasks[1].2.is_some());
        assert!(rec.tasks[0].2.is_none());
        assert_eq!(rec.tasks[2].1.servable, "noop");
        assert_eq!(rec.tasks[2].1.submitted_us, 1003);
    }

    #[test]
    fn forget_removes_task_and_result_but_not_the_high_water_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .apply(&[StoreOp::PutTasks((1..=2).map(new_task).collect())])
            .unwrap();
        store.apply(&[StoreOp::Forget(vec![TaskId(2)])]).unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(rec.tasks.len(), 1);
        assert_eq!(rec.reserved_until, 2);
    }

    #[test]
    fn writer_reports_durable_sequence_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (tx, rx) = mpsc::channel();
        let writer = StoreWriter::spawn(store.clone(), move |r| {
            let _ = tx.send(r);
        })
        .unwrap();
        for seq in 1..=50 {
            writer.submit(seq, StoreOp::PutTasks(vec![new_task(seq)]));
        }
        writer.sync();
        let mut last = 0;
        while let Ok(WriterReport::Durable(seq)) = rx.try_recv() {
            assert!(seq > last);
            last = seq;
        }
        assert_eq!(last, 50);
        assert_eq!(store.recover().unwrap().tasks.len(), 50);
    }
}
