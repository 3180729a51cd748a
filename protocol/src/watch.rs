//! Watching bulk work: task lists, waits on many tasks that answer as each
//! one settles, and the task event stream (`flotilla tasks`, `wait`,
//! `events --tasks`).

use serde::{Deserialize, Serialize};

use crate::task::{TaskId, TaskState, TaskView};

/// The most tasks one [`TaskQuery`] answers with; a larger `limit` is cut
/// to it (page on with `before`).
pub const MAX_LIST: u32 = 100_000;

/// Which tasks `flotilla tasks` lists, newest first.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct TaskQuery {
    /// Only tasks in one of these states (empty: every state).
    pub states: Vec<TaskState>,
    /// Only tasks of this servable: `NAME` (every version) or
    /// `NAME@VERSION`.
    pub servable: Option<String>,
    /// Only tasks submitted at most this long ago (milliseconds).
    pub max_age_ms: Option<u64>,
    /// Only tasks with an id below this one (the next page of a list that
    /// said `more`).
    pub before: Option<TaskId>,
    /// At most this many tasks (cut to [`MAX_LIST`]).
    pub limit: u32,
}

/// The answer to a [`TaskQuery`].
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct TaskList {
    /// The tasks, newest (highest id) first, without outputs (a failed or
    /// cancelled task carries its reason).
    pub tasks: Vec<TaskView>,
    /// True when more tasks matched than `limit`: ask again with `before`
    /// set to the last id listed.
    pub more: bool,
    /// How many of the caller's tasks of the servable asked for (all
    /// servables when none) are in each state, whatever the other filters.
    pub counts: Vec<(TaskState, u64)>,
}

/// What [`crate::client::ClientCall::Settled`] answers: the tasks among
/// those asked about that are settled (final, or unknown to the caller),
/// with their outcomes, and how the others stand.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug, Default)]
pub struct Settled {
    /// Settled tasks, in the order they were asked about: at most 10,000,
    /// and about half a frame of outputs, per reply (the next call
    /// answers at once with the rest).
    pub done: Vec<TaskView>,
    /// Of the others, how many wait for a worker.
    pub queued: u64,
    /// Of the others, how many are on a worker.
    pub running: u64,
}

/// Which task events a reader wants.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct TaskEventFilter {
    /// Only events of tasks of this servable: `NAME` (every version) or
    /// `NAME@VERSION`.
    pub servable: Option<String>,
    /// Only events of tasks whose id is in one of these inclusive ranges
    /// (empty: every task).
    pub ids: Vec<(u64, u64)>,
}

impl TaskEventFilter {
    /// True if an event about task `id` of servable `servable` (canonical
    /// `NAME@VERSION`) passes.
    pub fn matches(&self, id: TaskId, servable: &str) -> bool {
        let in_range =
            self.ids.is_empty() || self.ids.iter().any(|&(lo, hi)| (lo..=hi).contains(&id.0));
        in_range
            && self
                .servable
                .as_deref()
                .is_none_or(|want| servable_matches(want, servable))
    }
}

/// True if `canonical` (`NAME@VERSION`, or a builtin's `NAME`) is what a
/// user means by `wanted`: the same name, and the same version if one is
/// given.
pub fn servable_matches(wanted: &str, canonical: &str) -> bool {
    if wanted.contains('@') {
        return wanted == canonical;
    }
    canonical
        .split_once('@')
        .map_or(canonical, |(name, _)| name)
        == wanted
}

/// What happened to a task, for `flotilla events --tasks`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct TaskEventView {
    /// Sequence number, increasing; ask for events after it.
    pub seq: u64,
    /// When (µs since the epoch).
    pub at_us: u64,
    /// The task.
    pub task: TaskId,
    /// Its servable, `NAME@VERSION`.
    pub servable: String,
    /// `accepted`, `dispatched`, `retried`, `finished`, `failed` or
    /// `cancelled`.
    pub kind: String,
    /// The worker concerned (dispatched to, lost by, finished on).
    pub worker: Option<String>,
    /// Attempts so far.
    pub attempt: u32,
    /// Details in words (a failure's reason, why it was retried).
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_matches_every_version_and_a_version_only_itself() {
        assert!(servable_matches("echo", "echo@1"));
        assert!(servable_matches("echo", "echo"));
        assert!(!servable_matches("echo", "echoes@1"));
        assert!(servable_matches("echo@1", "echo@1"));
        assert!(!servable_matches("echo@2", "echo@1"));
    }

    #[test]
    fn filters_take_ranges_and_servables_together() {
        let f = TaskEventFilter {
            servable: Some("a".into()),
            ids: vec![(5, 10), (12, 12)],
        };
        assert!(f.matches(TaskId(5), "a@1"));
        assert!(f.matches(TaskId(12), "a@1"));
        assert!(!f.matches(TaskId(11), "a@1"));
        assert!(!f.matches(TaskId(6), "b@1"));
        assert!(TaskEventFilter::default().matches(TaskId(99), "z"));
    }
}
