//! The client API: what the CLI, the Python client and batch scripts say to
//! the daemon, and what it answers.
//!
//! The transport is request/reply: each [`ClientCall`] gets exactly one
//! [`ClientReply`]. Calls that wait (a synchronous run, `result --wait`) are
//! held by the daemon until their tasks finish or their wait expires, so a
//! synchronous invocation costs one round trip.

use serde::{Deserialize, Serialize};

use crate::access::Access;
use crate::servable::ServableRecord;
use crate::task::{Payload, TaskId, TaskState, TaskView};
use crate::watch::{Settled, TaskEventFilter, TaskEventView, TaskList, TaskQuery};

/// One invocation of a servable, as a client submits it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct TaskRequest {
    /// `NAME` (latest version) or `NAME@VERSION`.
    pub servable: String,
    /// msgpack-encoded input value (a slice of the request it came in,
    /// when decoded with [`crate::frame::decode_shared`]: the task keeps
    /// its input as long as the request's other tasks keep theirs).
    #[serde(deserialize_with = "crate::frame::shared_payload")]
    pub input: Payload,
    /// msgpack-encoded parameters map; empty for none. Requests with equal
    /// servable and parameters may be batched into one model call.
    pub params: Payload,
}

/// The longest wait a request may ask for (`wait_ms`): ten years, far
/// beyond any real wait and far from overflowing a clock; a longer one is
/// refused.
pub const MAX_WAIT_MS: u64 = 10 * 365 * 86_400 * 1000;

/// A request to the daemon.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum ClientCall {
    /// Liveness and version check.
    Ping,
    /// Block and worker events after sequence number `after`; with
    /// `wait_ms`, held until there is one or the wait passes.
    Events {
        /// Last sequence number already seen (0: from the oldest kept).
        /// Numbers keep growing across daemon restarts; one the daemon has
        /// not given out yet (seen before a restart) counts as 0.
        after: u64,
        /// Longest to hold the request when there is nothing new.
        wait_ms: Option<u64>,
    },
    /// Start submitting blocks again for a pool paused after failures.
    ResumePool {
        /// The pool.
        name: String,
    },
    /// Accept tasks. The reply comes once all of them are durable. With
    /// `wait_ms`, the reply is instead [`ClientReply::Results`], sent when all
    /// tasks are final or the wait expires (tasks then show their current
    /// state). The request is all-or-nothing: if any task is refused, none is
    /// accepted.
    Submit {
        /// The tasks, in order; ids come back in the same order.
        tasks: Vec<TaskRequest>,
        /// Wait for the results up to this many milliseconds.
        wait_ms: Option<u64>,
    },
    /// Fetch results. With `wait_ms`, the reply is held until every task is
    /// final or the wait expires.
    Results {
        /// Tasks to report on.
        ids: Vec<TaskId>,
        /// Wait for them up to this many milliseconds.
        wait_ms: Option<u64>,
    },
    /// State of the daemon: blocks, workers, queues.
    DaemonStatus,
    /// State of tasks, without outputs (a failed or cancelled task
    /// carries its reason).
    TaskStatus {
        /// Tasks to report on.
        ids: Vec<TaskId>,
    },
    /// Cancel tasks that are not final yet.
    Cancel {
        /// Tasks to cancel.
        ids: Vec<TaskId>,
    },
    /// Shut the daemon down gracefully (as SIGTERM does).
    Stop,
    /// Add a servable version to the catalog (its files must already be in
    /// the state directory's object store).
    Publish {
        /// The version to publish.
        record: Box<ServableRecord>,
    },
    /// The latest version of every servable.
    ListServables,
    /// One servable version: `NAME` (latest) or `NAME@VERSION`.
    ShowServable {
        /// What to show.
        name: String,
    },
    /// Every version of a servable, oldest first.
    ServableVersions {
        /// Servable name.
        name: String,
    },
    /// Free-text search over titles, descriptions, creators and domains.
    SearchServables(SearchQuery),
    /// Remove one version (refused while tasks for it are queued).
    RemoveServable {
        /// `NAME@VERSION`.
        id: String,
    },
    /// Memo store counters.
    MemoStats,
    /// Drop memo entries: all, or those of one servable (every version).
    MemoClear {
        /// Servable name (no version), or none for everything.
        servable: Option<String>,
    },
    /// Warm a servable ahead of a known burst: hold `slots` slots with its
    /// process started and initialised (for its `warm_idle_s`, or ten
    /// minutes).
    WarmServable {
        /// `NAME` (latest) or `NAME@VERSION`.
        servable: String,
        /// Slots to hold warm, over all workers that may run it.
        slots: u32,
    },
    /// Change who may see and invoke a servable (every version); only its
    /// owner (or the daemon's user) may. The owner stays: the `owner` of
    /// `access` is ignored.
    SetServableAccess {
        /// Servable name (no version).
        name: String,
        /// The new visibility, users and groups.
        access: Access,
    },
    /// The caller's tasks (every task for the daemon's user), newest
    /// first, from the daemon's indexes by state, servable and owner.
    ListTasks(TaskQuery),
    /// Which of `ids` are settled (final, or unknown to the caller), with
    /// their outcomes. With `wait_ms`, held until at least one is, or the
    /// wait passes: a client waiting on many tasks asks again for the rest
    /// and so sees each one as it finishes.
    Settled {
        /// Tasks to report on.
        ids: Vec<TaskId>,
        /// Longest to hold the request while none is settled.
        wait_ms: Option<u64>,
    },
    /// Events of the caller's tasks after sequence number `after`; with
    /// `wait_ms`, held until there is one that passes `filter` or the wait
    /// passes.
    TaskEvents {
        /// Last sequence number already seen (0: from the oldest kept).
        /// Numbers keep growing across daemon restarts; one the daemon has
        /// not given out yet (seen before a restart) counts as 0.
        after: u64,
        /// Longest to hold the request when there is nothing new.
        wait_ms: Option<u64>,
        /// Which events.
        filter: TaskEventFilter,
    },
}

/// A catalog search.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct SearchQuery {
    /// Words to look for (all optional; empty lists everything that passes
    /// the filters).
    pub text: String,
    /// Only servables with this domain.
    pub domain: Option<String>,
    /// Only servables of this model type.
    pub model_type: Option<String>,
    /// Only servables with a creator whose name contains this.
    pub author: Option<String>,
}

/// The daemon's answer to one [`ClientCall`].
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum ClientReply {
    /// Answer to [`ClientCall::Ping`].
    Pong {
        /// Daemon process id.
        pid: u32,
        /// Daemon release.
        release: String,
    },
    /// Tasks accepted and durable, ids in request order.
    Submitted {
        /// One id per submitted task.
        ids: Vec<TaskId>,
    },
    /// Task views with outcomes, in request order.
    Results {
        /// One view per requested task.
        tasks: Vec<TaskView>,
    },
    /// Task views without outcomes, in request order.
    TaskStatus {
        /// One view per requested task.
        tasks: Vec<TaskView>,
    },
    /// Daemon state.
    DaemonStatus(Box<DaemonStatus>),
    /// What cancel did to each task, in request order.
    Cancelled {
        /// Per task: its state after the cancel.
        tasks: Vec<(TaskId, TaskState)>,
    },
    /// The daemon is shutting down.
    Stopping,
    /// Events, oldest first.
    Events {
        /// The events.
        events: Vec<EventView>,
    },
    /// The pool was resumed.
    PoolResumed {
        /// The pool.
        name: String,
    },
    /// A servable version is in the catalog (`created: false` when the same
    /// content was already published).
    Published {
        /// `NAME@VERSION`.
        id: String,
        /// False when nothing changed.
        created: bool,
    },
    /// Catalog entries (latest versions, or search hits best first).
    Servables {
        /// The entries.
        servables: Vec<ServableSummary>,
    },
    /// One servable version.
    Servable(Box<ServableRecord>),
    /// Versions of a servable, oldest first.
    Versions {
        /// Version strings.
        versions: Vec<String>,
    },
    /// A servable version was removed.
    Removed {
        /// `NAME@VERSION`.
        id: String,
    },
    /// Memo store counters.
    MemoStats(MemoStats),
    /// Memo entries dropped.
    MemoCleared {
        /// How many.
        removed: u64,
    },
    /// The call was refused; nothing was changed.
    Error(ApiError),
    /// Answer to [`ClientCall::WarmServable`].
    Warming {
        /// `NAME@VERSION`.
        servable: String,
        /// Slots that hold it warm or are warming it now.
        slots: u32,
    },
    /// Who may now see and invoke a servable (the answer to
    /// [`ClientCall::SetServableAccess`]).
    Access {
        /// Servable name.
        name: String,
        /// Its owner and visibility.
        access: Access,
    },
    /// Answer to [`ClientCall::ListTasks`].
    TaskList(TaskList),
    /// Answer to [`ClientCall::Settled`].
    Settled(Settled),
    /// Answer to [`ClientCall::TaskEvents`]: events, oldest first.
    TaskEvents {
        /// The events that pass the filter.
        events: Vec<TaskEventView>,
        /// The last sequence number looked at: ask for events after it
        /// next (events that did not pass the filter are skipped too).
        last: u64,
    },
}

/// The memo store's size, bounds and counters since the daemon started.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct MemoStats {
    /// Entries held.
    pub entries: u64,
    /// Bytes held (outputs plus per-entry overhead).
    pub bytes: u64,
    /// Bound on entries.
    pub max_entries: u64,
    /// Bound on bytes.
    pub max_bytes: u64,
    /// Requests answered from a stored result.
    pub hits: u64,
    /// Memoizable requests that had to run.
    pub misses: u64,
    /// Requests that shared an identical execution in flight.
    pub coalesced: u64,
    /// Entries dropped to stay within the bounds.
    pub evictions: u64,
    /// Entries and bytes per servable version.
    pub per_servable: Vec<(String, u64, u64)>,
}

/// A catalog entry in lists and search results.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct ServableSummary {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Title.
    pub title: String,
    /// Model type.
    pub model_type: String,
    /// Domains.
    pub domains: Vec<String>,
    /// Creator names.
    pub creators: Vec<String>,
    /// Search score (0 outside searches).
    pub score: f64,
}

/// Why the daemon refused a call.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Machine-readable category.
    pub kind: ApiErrorKind,
    /// What was wrong, naming the offending input.
    pub message: String,
}

/// Categories of [`ApiError`].
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ApiErrorKind {
    /// The request itself is wrong (unknown servable, bad input).
    BadRequest,
    /// The daemon is draining and accepts no new work.
    ShuttingDown,
    /// The daemon cannot persist work (its store failed).
    Unavailable,
    /// The named servable or version does not exist.
    NotFound,
    /// The request conflicts with the catalog (republishing a version with
    /// other content, removing a servable in use).
    Conflict,
    /// The caller's token does not allow the call (expired, revoked,
    /// read-only, outside its servables, or a call only the daemon's own
    /// host may make).
    Forbidden,
}

/// A snapshot of the daemon for `flotilla status`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct DaemonStatus {
    /// Daemon process id.
    pub pid: u32,
    /// Daemon release.
    pub release: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// True while shutting down.
    pub draining: bool,
    /// Address workers dial, as `tcp://HOST:PORT`.
    pub interchange: String,
    /// Blocks (pilot jobs) the daemon manages.
    pub blocks: Vec<BlockView>,
    /// Why the daemon has stopped starting blocks, if it has.
    pub blocks_paused: Option<String>,
    /// The pools (blocks of one provider under one scaling strategy) and
    /// their scaling state.
    pub pools: Vec<PoolView>,
    /// Connected workers.
    pub workers: Vec<WorkerView>,
    /// Queue depth per servable.
    pub queues: Vec<QueueView>,
    /// Counters since the daemon started.
    pub totals: Totals,
    /// Warm servable processes, by servable, worker and slot (a status
    /// without it reads as having none).
    #[serde(default)]
    pub warm: Vec<WarmView>,
    /// True when the status is cut down for a caller other than the
    /// daemon's user: pools, blocks, workers and the interchange address
    /// are left out (the daemon user's infrastructure), and queues and warm
    /// processes are those of the servables the caller may see, their
    /// workers unnamed. Last, and left out when false, so a status without
    /// it reads as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet_hidden: bool,
}

/// One warm servable process, for `flotilla status`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct WarmView {
    /// `NAME@VERSION`.
    pub servable: String,
    /// The worker that holds it.
    pub worker: String,
    /// Its slot there.
    pub slot: u32,
    /// Resident memory as the worker last reported it, KiB (0: not
    /// reported yet).
    pub rss_kb: u64,
}

/// One block (a pilot job: nodes acquired from a provider, running the
/// block's workers).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct BlockView {
    /// Block id, unique within the daemon's life.
    pub id: u32,
    /// PENDING, RUNNING, COMPLETED, FAILED, …
    pub state: String,
    /// The provider's job id, once submitted.
    pub job_id: Option<String>,
    /// Workers of this block currently connected.
    pub workers: u32,
    /// Last message from the provider (e.g. the tail of a failed job's stderr).
    pub message: Option<String>,
    /// Seconds since it was submitted.
    pub age_s: u64,
    /// Seconds of wall time left, once it runs.
    pub walltime_left_s: Option<u64>,
    /// Seconds since one of its workers last ran a task (while running).
    pub idle_s: Option<u64>,
    /// The pool it belongs to. Last, so a status from before pools reads
    /// as naming none.
    #[serde(default)]
    pub pool: Option<String>,
}

/// One pool: the blocks of one provider and the scaling strategy that
/// sizes them.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct PoolView {
    /// Pool name (`flotilla pool resume NAME`).
    pub name: String,
    /// The provider kind.
    pub provider: String,
    /// Blocks wanted by the strategy at its last run.
    pub wanted: u32,
    /// Blocks live (pending or running, not being cancelled).
    pub active: u32,
    /// Fewest and most blocks.
    pub min_blocks: u32,
    /// Most blocks.
    pub max_blocks: u32,
    /// Blocks submitted since the daemon started.
    pub submitted: u32,
    /// Why the pool is paused, if it is.
    pub paused: Option<String>,
    /// Why blocks the strategy wants are not being submitted now, while
    /// something the pool waits out holds them back: a refused
    /// submission's backoff (the scheduler's words and the next try) or a
    /// queue limit reached.
    pub held: Option<String>,
}

/// Something that happened to a block or a worker.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct EventView {
    /// Sequence number, increasing; ask for events after it.
    pub seq: u64,
    /// When (µs since the epoch).
    pub at_us: u64,
    /// What kind (`block-submitted`, `worker-lost`, …).
    pub kind: String,
    /// The block concerned, if any.
    pub block: Option<u32>,
    /// The worker concerned, if any.
    pub worker: Option<String>,
    /// Details in words.
    pub message: String,
    /// The pool concerned, if any. Last, so events from before pools read
    /// as naming none.
    #[serde(default)]
    pub pool: Option<String>,
}

/// One connected worker.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct WorkerView {
    /// Worker id (as the worker chose it).
    pub id: String,
    /// Block it belongs to, if the daemon started it.
    pub block: Option<u32>,
    /// Host it runs on.
    pub host: String,
    /// Its process id (as seen on its host).
    pub pid: u32,
    /// Node name as the scheduler knows it, when the launcher said.
    pub node: Option<String>,
    /// Rank within its block, when the launcher said.
    pub rank: Option<u32>,
    /// Concurrent batches it runs.
    pub slots: u32,
    /// Tasks it holds now.
    pub running: u32,
    /// Milliseconds since it was last heard from.
    pub last_seen_ms: u64,
    /// The pool of its block, if the daemon started it.
    #[serde(default)]
    pub pool: Option<String>,
    /// What each of its slots holds (accelerators, cores), by slot; empty
    /// when the site shares out neither. Last, and left out when empty, so
    /// a status without it reads as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slot_resources: Vec<crate::interchange::SlotResources>,
}

/// Queue depth of one servable.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct QueueView {
    /// Servable name.
    pub servable: String,
    /// Tasks waiting for a worker.
    pub queued: u64,
    /// Tasks on workers.
    pub running: u64,
    /// Why queued tasks cannot start on any connected worker (a servable
    /// whose slots need more accelerators than any worker's slots hold),
    /// so a user sees the reason instead of a queue that never moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// Counters since the daemon started.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Totals {
    /// Tasks accepted (including those recovered at start).
    pub accepted: u64,
    /// Tasks completed.
    pub completed: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks cancelled.
    pub cancelled: u64,
    /// Tasks put back in the queue after their worker was lost.
    pub requeued: u64,
}
