//! The records the core exchanges with the store: what it asks to be
//! written ([`StoreOp`]) and what a restart reads back ([`Recovered`]).
//!
//! They belong to the core, which decides what is durable; the store only
//! knows how to lay them out in sled.

use std::sync::Arc;

use flotilla_protocol::servable::ServableRecord;
use flotilla_protocol::task::{MemoUse, Outcome, Payload, TaskId, TaskState, TaskTimings};
use serde::{Deserialize, Serialize};

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
    /// The uid that submitted it; none in records written before tasks had
    /// owners, which belong to the daemon's user. Last, so those records
    /// read.
    #[serde(default)]
    pub owner: Option<u32>,
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
    /// Set when the memo store answered it.
    #[serde(default)]
    pub memo: Option<MemoUse>,
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
    /// The uid that submitted it.
    pub owner: u32,
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
    /// Add a published servable version to the catalog.
    PutServable(Box<ServableRecord>),
    /// Remove `NAME@VERSION` from the catalog.
    RemoveServable(String),
    /// Store a memo entry.
    PutMemo {
        /// The request's memo key.
        key: [u8; 32],
        /// Canonical servable name.
        servable: String,
        /// The output.
        output: Payload,
    },
    /// Delete memo entries (evicted or cleared).
    RemoveMemo(Vec<[u8; 32]>),
    /// Record (or update) a live block, so a restarted daemon adopts it
    /// instead of submitting another.
    PutBlock(BlockRecord),
    /// Forget a block that ended.
    RemoveBlock(u32),
}

/// A block the provider accepted, as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockRecord {
    /// Block id.
    pub id: u32,
    /// The provider's job id.
    pub job: String,
    /// When it was submitted (µs since the epoch).
    pub submitted_us: u64,
    /// When it started running, once known.
    pub running_since_us: Option<u64>,
    /// The pool it belongs to; empty in records written before pools (a
    /// daemon of one pool), which go to the first pool. Last, so those
    /// records read.
    #[serde(default)]
    pub pool: String,
}

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// All stored tasks in id order, each with its result if it has one.
    pub tasks: Vec<(TaskId, StoredTask, Option<StoredResult>)>,
    /// Id high-water mark.
    pub reserved_until: u64,
    /// The servable catalog.
    pub servables: Vec<ServableRecord>,
    /// Memo entries: key, canonical servable name, output.
    pub memo: Vec<([u8; 32], String, Payload)>,
    /// Blocks that were live when the daemon last stopped.
    pub blocks: Vec<BlockRecord>,
    /// The next block id never handed out.
    pub next_block: u32,
}
