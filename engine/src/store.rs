//! The durable store: tasks and results in sled, written by one thread with
//! group commit.
//!
//! Layout (six sled trees; tasks and results have big-endian u64 keys so
//! iteration is in order and inserts are sequential):
//!
//! * `tasks`: accepted tasks in *chunks*: one record per (part of a) submit
//!   request, keyed by its first task id, holding up to [`TASKS_PER_CHUNK`]
//!   tasks (servable, parameters, input, time).
//! * `results`: result records in chunks: one record per group of results
//!   the core persists together (typically one worker batch), keyed by a
//!   chunk counter. A task's result is the first one found for it in key
//!   order (completed, failed or cancelled); having one is what makes a task
//!   final. The core never persists a second result for a task, so there is
//!   exactly one.
//! * `meta`: the task-id high-water mark, so ids are never reused even after
//!   old tasks are forgotten, and the next block id.
//! * `servables`: the published catalog, one record per `NAME@VERSION`.
//! * `memo`: memoized outputs by their 32-byte request key (with the
//!   servable that produced them).
//! * `blocks`: live blocks by id, so a restarted daemon adopts them instead
//!   of submitting more.
//!
//! Chunks keep the sled cost per task near zero: a bulk submit of 100,000
//! tasks is about 25 inserts, not 100,000 (sled manages roughly 100–200k
//! inserts/s here, which would otherwise cap throughput). A chunk is deleted
//! once every task in it has been forgotten.
//!
//! There is deliberately no "queue" or "dispatched" record: a task with no
//! result is unfinished, and on restart every unfinished task goes back to the
//! queue in id order. That makes execution at-least-once.
//!
//! ## Durability
//!
//! The records themselves ([`StoreOp`], [`Recovered`] and what they carry)
//! are the core's (`core::records`); this module only lays them out.
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

use flotilla_protocol::task::{Payload, TaskId};
use serde::Serialize;

pub use crate::core::records::{
    BlockRecord, NewTask, Recovered, StoreOp, StoredResult, StoredTask,
};
pub use crate::store_writer::{Settled, StoreWriter, WriterReport};

/// Metadata key of the id high-water mark.
const RESERVED_KEY: &[u8] = b"task_ids_reserved_until";

/// Most tasks in one `tasks` record.
pub const TASKS_PER_CHUNK: usize = 4096;

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

#[derive(Serialize)]
struct StoredTaskRef<'a> {
    servable: &'a str,
    params: &'a Payload,
    input: &'a Payload,
    submitted_us: u64,
    owner: Option<u32>,
}

/// Which chunks hold each live task and its result, and how many live tasks
/// each chunk still has, so forgetting tasks can delete emptied chunks.
#[derive(Debug, Default)]
pub struct ChunkIndex {
    chunks_of: rustc_hash::FxHashMap<TaskId, (u64, Option<u64>)>,
    live_tasks: rustc_hash::FxHashMap<u64, u32>,
    live_results: rustc_hash::FxHashMap<u64, u32>,
    next_result_chunk: u64,
}

impl ChunkIndex {
    fn add_task(&mut self, id: TaskId, chunk: u64) {
        self.chunks_of.insert(id, (chunk, None));
        *self.live_tasks.entry(chunk).or_default() += 1;
    }

    fn add_result(&mut self, id: TaskId, chunk: u64) {
        if let Some(entry) = self.chunks_of.get_mut(&id)
            && entry.1.is_none()
        {
            entry.1 = Some(chunk);
            *self.live_results.entry(chunk).or_default() += 1;
        }
    }

    /// Drops `id`; returns the task and result chunks that became empty.
    fn forget(&mut self, id: TaskId) -> (Option<u64>, Option<u64>) {
        let Some((task_chunk, result_chunk)) = self.chunks_of.remove(&id) else {
            return (None, None);
        };
        let drop_one = |live: &mut rustc_hash::FxHashMap<u64, u32>, chunk: u64| {
            let count = live.entry(chunk).or_default();
            *count = count.saturating_sub(1);
            (*count == 0).then(|| {
                live.remove(&chunk);
                chunk
            })
        };
        let empty_task = drop_one(&mut self.live_tasks, task_chunk);
        let empty_result = result_chunk.and_then(|c| drop_one(&mut self.live_results, c));
        (empty_task, empty_result)
    }
}

/// The open database.
#[derive(Clone, Debug)]
pub struct Store {
    path: String,
    db: sled::Db,
    tasks: sled::Tree,
    results: sled::Tree,
    meta: sled::Tree,
    servables: sled::Tree,
    memo: sled::Tree,
    blocks: sled::Tree,
}

/// Meta key of the next block id.
const NEXT_BLOCK_KEY: &[u8] = b"next_block_id";

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
        let servables = db.open_tree("servables").map_err(sled_err)?;
        let memo = db.open_tree("memo").map_err(sled_err)?;
        let blocks = db.open_tree("blocks").map_err(sled_err)?;
        Ok(Store {
            blocks,
            path: name,
            db,
            tasks,
            results,
            meta,
            servables,
            memo,
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
        self.recover_indexed().map(|(recovered, _)| recovered)
    }

    /// Reads every task and result, with the chunk index the writer needs
    /// to keep forgetting tasks after a restart.
    pub fn recover_indexed(&self) -> Result<(Recovered, ChunkIndex), StoreError> {
        let reserved_until = match self.meta.get(RESERVED_KEY).map_err(|e| self.sled_err(e))? {
            Some(v) => decode_u64(&v).ok_or_else(|| StoreError::Corrupt {
                tree: "meta",
                key: String::from_utf8_lossy(RESERVED_KEY).into_owned(),
                message: format!("expected 8 bytes, found {}", v.len()),
            })?,
            None => 0,
        };
        let mut index = ChunkIndex::default();
        let mut results: std::collections::HashMap<TaskId, (u64, StoredResult)> =
            std::collections::HashMap::new();
        for entry in self.results.iter() {
            let (key, value) = entry.map_err(|e| self.sled_err(e))?;
            let chunk = chunk_key_of(&key, "results")?;
            let list: Vec<(TaskId, StoredResult)> =
                rmp_serde::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    tree: "results",
                    key: chunk.to_string(),
                    message: e.to_string(),
                })?;
            for (id, result) in list {
                // The first result in key order wins.
                results.entry(id).or_insert((chunk, result));
            }
            index.next_result_chunk = chunk + 1;
        }
        let mut tasks = Vec::new();
        for entry in self.tasks.iter() {
            let (key, value) = entry.map_err(|e| self.sled_err(e))?;
            let chunk = chunk_key_of(&key, "tasks")?;
            let list: Vec<(TaskId, StoredTask)> =
                rmp_serde::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    tree: "tasks",
                    key: chunk.to_string(),
                    message: e.to_string(),
                })?;
            for (id, task) in list {
                index.add_task(id, chunk);
                let result = results.remove(&id).map(|(result_chunk, r)| {
                    index.add_result(id, result_chunk);
                    r
                });
                tasks.push((id, task, result));
            }
        }
        let reserved_until = reserved_until.max(tasks.last().map_or(0, |(id, _, _)| id.0 + 1));
        let mut servables = Vec::new();
        for entry in self.servables.iter() {
            let (key, value) = entry.map_err(|e| self.sled_err(e))?;
            servables.push(
                rmp_serde::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    tree: "servables",
                    key: String::from_utf8_lossy(&key).into_owned(),
                    message: e.to_string(),
                })?,
            );
        }
        let mut memo = Vec::new();
        for entry in self.memo.iter() {
            let (key, value) = entry.map_err(|e| self.sled_err(e))?;
            let Ok(key) = <[u8; 32]>::try_from(&key[..]) else {
                continue;
            };
            let (servable, output): (String, Payload) =
                rmp_serde::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    tree: "memo",
                    key: format!("{key:?}"),
                    message: e.to_string(),
                })?;
            memo.push((key, servable, output));
        }
        let mut blocks = Vec::new();
        for entry in self.blocks.iter() {
            let (key, value) = entry.map_err(|e| self.sled_err(e))?;
            let record: BlockRecord =
                rmp_serde::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    tree: "blocks",
                    key: String::from_utf8_lossy(&key).into_owned(),
                    message: e.to_string(),
                })?;
            blocks.push(record);
        }
        let next_block = self
            .meta
            .get(NEXT_BLOCK_KEY)
            .map_err(|e| self.sled_err(e))?
            .and_then(|v| decode_u64(&v))
            .unwrap_or(0) as u32;
        let next_block = blocks.iter().map(|b| b.id + 1).fold(next_block, u32::max);
        let recovered = Recovered {
            tasks,
            reserved_until,
            servables,
            memo,
            blocks,
            next_block,
        };
        Ok((recovered, index))
    }

    /// Number of tasks with a result record (for tests and diagnostics).
    pub fn result_count(&self) -> Result<usize, StoreError> {
        Ok(self
            .recover()?
            .tasks
            .iter()
            .filter(|(_, _, r)| r.is_some())
            .count())
    }

    /// Applies `ops` (not yet flushed), keeping `index` up to date.
    pub fn apply(&self, ops: &[StoreOp], index: &mut ChunkIndex) -> Result<(), StoreError> {
        let mut tasks = sled::Batch::default();
        let mut results = sled::Batch::default();
        let mut reserved = None;
        for op in ops {
            match op {
                StoreOp::PutTasks(new) => {
                    for chunk in contiguous_chunks(new) {
                        let key = chunk[0].id.0;
                        let records: Vec<(TaskId, StoredTaskRef<'_>)> = chunk
                            .iter()
                            .map(|t| {
                                index.add_task(t.id, key);
                                (
                                    t.id,
                                    StoredTaskRef {
                                        servable: &t.servable,
                                        params: &t.params,
                                        input: &t.input,
                                        submitted_us: t.submitted_us,
                                        owner: Some(t.owner),
                                    },
                                )
                            })
                            .collect();
                        tasks.insert(&key.to_be_bytes(), encode(&records)?);
                    }
                }
                StoreOp::PutResults(list) => {
                    if list.is_empty() {
                        continue;
                    }
                    let key = index.next_result_chunk;
                    index.next_result_chunk += 1;
                    for (id, _) in list {
                        index.add_result(*id, key);
                    }
                    results.insert(&key.to_be_bytes(), encode(list)?);
                }
                StoreOp::Forget(ids) => {
                    // Writes queued so far go first: the chunks read below
                    // must include them.
                    self.apply_batches(&mut tasks, &mut results)?;
                    self.forget(ids, index)?;
                }
                StoreOp::ReserveIds { until } => {
                    reserved = Some(reserved.map_or(*until, |r: u64| r.max(*until)));
                }
                StoreOp::PutServable(record) => {
                    self.servables
                        .insert(record.id().as_bytes(), encode(record)?)
                        .map_err(|e| self.sled_err(e))?;
                }
                StoreOp::RemoveServable(id) => {
                    self.servables
                        .remove(id.as_bytes())
                        .map_err(|e| self.sled_err(e))?;
                }
                StoreOp::PutMemo {
                    key,
                    servable,
                    output,
                } => {
                    self.memo
                        .insert(key, encode(&(servable, output))?)
                        .map_err(|e| self.sled_err(e))?;
                }
                StoreOp::RemoveMemo(keys) => {
                    for key in keys {
                        self.memo.remove(key).map_err(|e| self.sled_err(e))?;
                    }
                }
                StoreOp::PutBlock(record) => {
                    self.blocks
                        .insert(record.id.to_be_bytes(), encode(record)?)
                        .map_err(|e| self.sled_err(e))?;
                    let next = u64::from(record.id) + 1;
                    let stored = self
                        .meta
                        .get(NEXT_BLOCK_KEY)
                        .map_err(|e| self.sled_err(e))?
                        .and_then(|v| decode_u64(&v))
                        .unwrap_or(0);
                    if next > stored {
                        self.meta
                            .insert(NEXT_BLOCK_KEY, &next.to_be_bytes())
                            .map_err(|e| self.sled_err(e))?;
                    }
                }
                StoreOp::RemoveBlock(id) => {
                    self.blocks
                        .remove(id.to_be_bytes())
                        .map_err(|e| self.sled_err(e))?;
                }
            }
        }
        if let Some(until) = reserved {
            self.meta
                .insert(RESERVED_KEY, &until.to_be_bytes())
                .map_err(|e| self.sled_err(e))?;
        }
        self.apply_batches(&mut tasks, &mut results)
    }

    fn apply_batches(
        &self,
        tasks: &mut sled::Batch,
        results: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        self.tasks
            .apply_batch(std::mem::take(tasks))
            .map_err(|e| self.sled_err(e))?;
        self.results
            .apply_batch(std::mem::take(results))
            .map_err(|e| self.sled_err(e))
    }

    /// Removes `ids` from their chunks: a chunk left empty is deleted, any
    /// other is rewritten without them (so they stay gone after a restart).
    fn forget(&self, ids: &[TaskId], index: &mut ChunkIndex) -> Result<(), StoreError> {
        use std::collections::{BTreeMap, HashSet};
        let mut touched: BTreeMap<(bool, u64), HashSet<TaskId>> = BTreeMap::new();
        let mut emptied: HashSet<(bool, u64)> = HashSet::new();
        for id in ids {
            let chunks = index.chunks_of.get(id).copied();
            let (empty_task, empty_result) = index.forget(*id);
            if let Some((task_chunk, result_chunk)) = chunks {
                touched.entry((true, task_chunk)).or_default().insert(*id);
                if let Some(c) = result_chunk {
                    touched.entry((false, c)).or_default().insert(*id);
                }
            }
            emptied.extend(empty_task.map(|c| (true, c)));
            emptied.extend(empty_result.map(|c| (false, c)));
        }
        for ((is_task, chunk), gone) in touched {
            let (tree, name) = if is_task {
                (&self.tasks, "tasks")
            } else {
                (&self.results, "results")
            };
            let key = chunk.to_be_bytes();
            if emptied.contains(&(is_task, chunk)) {
                tree.remove(key).map_err(|e| self.sled_err(e))?;
                continue;
            }
            let Some(bytes) = tree.get(key).map_err(|e| self.sled_err(e))? else {
                continue;
            };
            let corrupt = |e: rmp_serde::decode::Error| StoreError::Corrupt {
                tree: name,
                key: chunk.to_string(),
                message: e.to_string(),
            };
            let kept = if is_task {
                let mut list: Vec<(TaskId, StoredTask)> =
                    rmp_serde::from_slice(&bytes).map_err(corrupt)?;
                list.retain(|(id, _)| !gone.contains(id));
                encode(&list)?
            } else {
                let mut list: Vec<(TaskId, StoredResult)> =
                    rmp_serde::from_slice(&bytes).map_err(corrupt)?;
                list.retain(|(id, _)| !gone.contains(id));
                encode(&list)?
            };
            tree.insert(key, kept).map_err(|e| self.sled_err(e))?;
        }
        Ok(())
    }

    /// The database directory.
    pub fn path(&self) -> &str {
        &self.path
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

fn chunk_key_of(key: &[u8], tree: &'static str) -> Result<u64, StoreError> {
    decode_u64(key).ok_or_else(|| StoreError::Corrupt {
        tree,
        key: format!("{key:?}"),
        message: "key is not an 8-byte chunk key".into(),
    })
}

/// Splits `tasks` into runs of consecutive ids of at most
/// [`TASKS_PER_CHUNK`], so a chunk's key (its first id) says where it starts.
fn contiguous_chunks(tasks: &[NewTask]) -> Vec<&[NewTask]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for i in 1..=tasks.len() {
        let split = i == tasks.len()
            || i - start == TASKS_PER_CHUNK
            || tasks[i].id.0 != tasks[i - 1].id.0 + 1;
        if split {
            chunks.push(&tasks[start..i]);
            start = i;
        }
    }
    chunks
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flotilla_protocol::task::{Outcome, TaskState, TaskTimings};
    use std::sync::Arc;

    /// A `noop` task with id `id`, for the store's tests and the writer's.
    pub(crate) fn new_task(id: u64) -> NewTask {
        NewTask {
            id: TaskId(id),
            servable: Arc::from("noop"),
            params: Payload::new(),
            input: Payload::from_static(&[0xc0]),
            submitted_us: 1000 + id,
            owner: 1000 + (id as u32 % 2),
        }
    }

    fn done(worker: &str) -> StoredResult {
        StoredResult {
            state: TaskState::Completed,
            outcome: Outcome::Output(Payload::from_static(&[0xc0])),
            attempts: 1,
            worker: Some(worker.into()),
            timings: TaskTimings::default(),
            memo: None,
        }
    }

    /// Opens the store at `path` once the last one there is gone: sled's
    /// background threads can hold its file lock a moment after the
    /// database is dropped (seen under CPU load).
    fn open_once_released(path: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Store::open(path) {
                Ok(store) => return store,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("cannot open the store again: {e}"),
            }
        }
    }

    #[test]
    fn tasks_and_results_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut index = ChunkIndex::default();
            store
                .apply(
                    &[
                        StoreOp::ReserveIds { until: 100 },
                        StoreOp::PutTasks((1..=3).map(new_task).collect()),
                        StoreOp::PutResults(vec![(TaskId(2), done("w"))]),
                    ],
                    &mut index,
                )
                .unwrap();
            store.flush().unwrap();
        }
        let store = open_once_released(dir.path());
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
    fn tasks_keep_their_submitter_and_records_from_before_owners_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut index = ChunkIndex::default();
        store
            .apply(&[StoreOp::PutTasks(vec![new_task(1)])], &mut index)
            .unwrap();
        // A chunk as written before tasks had owners.
        #[derive(Serialize)]
        struct Old<'a> {
            servable: &'a str,
            params: &'a Payload,
            input: &'a Payload,
            submitted_us: u64,
        }
        let (params, input) = (Payload::new(), Payload::from_static(&[0xc0]));
        let old = vec![(
            TaskId(2),
            Old {
                servable: "noop",
                params: &params,
                input: &input,
                submitted_us: 7,
            },
        )];
        store
            .tasks
            .insert(2u64.to_be_bytes(), encode(&old).unwrap())
            .unwrap();
        let rec = store.recover().unwrap();
        let owners: Vec<_> = rec.tasks.iter().map(|t| (t.0.0, t.1.owner)).collect();
        assert_eq!(owners, [(1, Some(1001)), (2, None)]);
        assert_eq!(rec.tasks[1].1.submitted_us, 7);
    }

    #[test]
    fn a_bulk_submit_is_a_few_records_not_one_per_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut index = ChunkIndex::default();
        let n = 3 * TASKS_PER_CHUNK as u64 + 5;
        store
            .apply(
                &[StoreOp::PutTasks((1..=n).map(new_task).collect())],
                &mut index,
            )
            .unwrap();
        assert_eq!(store.tasks.len(), 4);
        assert_eq!(store.recover().unwrap().tasks.len() as u64, n);
    }

    #[test]
    fn the_first_result_in_the_store_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut index = ChunkIndex::default();
        store
            .apply(
                &[
                    StoreOp::PutTasks(vec![new_task(1)]),
                    StoreOp::PutResults(vec![(TaskId(1), done("first"))]),
                    StoreOp::PutResults(vec![(TaskId(1), done("second"))]),
                ],
                &mut index,
            )
            .unwrap();
        let rec = store.recover().unwrap();
        assert_eq!(
            rec.tasks[0].2.as_ref().unwrap().worker.as_deref(),
            Some("first")
        );
        assert_eq!(store.result_count().unwrap(), 1);
    }

    #[test]
    fn chunks_are_deleted_once_all_their_tasks_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut index = ChunkIndex::default();
        store
            .apply(
                &[
                    StoreOp::PutTasks((1..=2).map(new_task).collect()),
                    StoreOp::PutResults(vec![(TaskId(1), done("w")), (TaskId(2), done("w"))]),
                ],
                &mut index,
            )
            .unwrap();
        store
            .apply(&[StoreOp::Forget(vec![TaskId(2)])], &mut index)
            .unwrap();
        assert_eq!((store.tasks.len(), store.results.len()), (1, 1));
        // A forgotten task stays gone after a restart, and recovery rebuilds
        // the index so forgetting keeps working.
        let (rec, mut index) = store.recover_indexed().unwrap();
        let ids: Vec<_> = rec.tasks.iter().map(|t| (t.0, t.2.is_some())).collect();
        assert_eq!(ids, [(TaskId(1), true)]);
        store
            .apply(&[StoreOp::Forget(vec![TaskId(1)])], &mut index)
            .unwrap();
        assert_eq!((store.tasks.len(), store.results.len()), (0, 0));
        let rec = store.recover().unwrap();
        assert!(rec.tasks.is_empty());
        assert_eq!(rec.reserved_until, 0, "no tasks, no reservation written");
    }
}
