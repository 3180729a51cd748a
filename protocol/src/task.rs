//! The task vocabulary shared by clients, the daemon and workers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Opaque msgpack bytes: a servable's input, output or parameters.
///
/// An empty payload means "nothing" (no parameters); a servable's `null`
/// output is the one-byte msgpack nil, `0xc0`.
pub type Payload = bytes::Bytes;

/// The msgpack encoding of `nil`, the output of servables that return nothing.
pub const NIL: &[u8] = &[0xc0];

/// A task's identity, unique for the life of a daemon's state directory.
///
/// Ids are handed out in increasing order, so ordering by id is ordering by
/// submission time and the store's keys stay sequential.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[serde(transparent)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A task id given on a command line or in a file could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a task id (task ids are non-negative integers, as printed by `flotilla submit`)"
)]
pub struct BadTaskId(pub String);

impl FromStr for TaskId {
    type Err = BadTaskId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u64>()
            .map(TaskId)
            .map_err(|_| BadTaskId(s.to_owned()))
    }
}

/// Where a task is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TaskState {
    /// Durable in the store, waiting for a worker.
    Queued,
    /// Handed to a worker; no result yet.
    Running,
    /// Finished with an output.
    Completed,
    /// Finished with an error (the servable's, or the infrastructure's after
    /// the retry policy gave up).
    Failed,
    /// Cancelled by a client before it finished.
    Cancelled,
    /// The daemon has no such task for the caller: never submitted, another
    /// user's, or its result was fetched and the retention period has passed.
    Unknown,
}

impl TaskState {
    /// True once the task can no longer change.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Lower-case name used in CLI output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What running one input produced.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum Outcome {
    /// The servable's output, msgpack-encoded.
    Output(Payload),
    /// The servable (or the infrastructure) failed this input; the message
    /// says why in words a user can act on.
    Error(String),
}

impl Outcome {
    /// True for [`Outcome::Output`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Output(_))
    }
}

/// When things happened to a task, in microseconds since the Unix epoch.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct TaskTimings {
    /// Accepted by the daemon.
    pub submitted_us: u64,
    /// Last handed to a worker (0 if never).
    pub dispatched_us: u64,
    /// Result recorded (0 if not yet).
    pub finished_us: u64,
    /// Time the servable spent on the batch that held this task, as the worker
    /// measured it (0 if unknown).
    pub run_us: u64,
    /// The worker received the batch that held this task (worker's clock;
    /// 0 if unknown).
    #[serde(default)]
    pub worker_received_us: u64,
    /// The worker sent that batch's result (worker's clock; 0 if unknown).
    #[serde(default)]
    pub worker_sent_us: u64,
    /// The daemon received the result from the worker (0 if not yet); the
    /// result is recorded at `finished_us`, after its duplicates and memo
    /// bookkeeping.
    #[serde(default)]
    pub result_received_us: u64,
    /// The daemon released the reply that carries this view: once what the
    /// reply promises was durable (0 in views not sent as a held reply).
    #[serde(default)]
    pub replied_us: u64,
}

/// How the memo store answered a task.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemoUse {
    /// Answered from a stored result of an identical earlier request; no
    /// worker ran it.
    Stored,
    /// Shared the one execution of an identical request in flight at the
    /// same time.
    Coalesced,
}

impl MemoUse {
    /// Lower-case name used in CLI output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoUse::Stored => "stored",
            MemoUse::Coalesced => "coalesced",
        }
    }
}

/// Everything a client may learn about one task.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct TaskView {
    /// The task.
    pub id: TaskId,
    /// Servable it invokes (empty when the task is unknown).
    pub servable: String,
    /// Current state.
    pub state: TaskState,
    /// How many times it was handed to a worker.
    pub attempts: u32,
    /// Worker that ran (or is running) it.
    pub worker: Option<String>,
    /// Timestamps.
    pub timings: TaskTimings,
    /// Set when the memo store answered it.
    pub memo: Option<MemoUse>,
    /// The result, once final. `None` while queued or running, and in status
    /// replies (which never carry outputs).
    pub outcome: Option<Outcome>,
}

impl TaskView {
    /// The view of a task the daemon does not know (never submitted, or
    /// forgotten after its retention), or keeps from the caller (another
    /// user's).
    pub fn unknown(id: TaskId) -> TaskView {
        TaskView {
            id,
            servable: String::new(),
            state: TaskState::Unknown,
            attempts: 0,
            worker: None,
            timings: TaskTimings::default(),
            memo: None,
            outcome: None,
        }
    }
}
