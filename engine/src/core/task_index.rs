//! The task table's indexes behind `flotilla tasks`: task ids by state,
//! for every task, per servable name, per owner, and per owner and
//! servable, each an ordered set so a list is read newest first without
//! looking at a task that does not match.
//!
//! Ids are handed out in submission order, so the newest tasks are the
//! highest ids and "submitted within the last hour" is a prefix of a
//! descending walk. A query picks the one index that holds exactly the
//! caller's tasks of the servable asked for, walks the sets of the states
//! asked for from the top, and stops at the limit or at the first task
//! older than `--since`: its cost is O(limit · log n), whatever the number
//! of tasks held. Each task sits in four sets, each an [`IdSet`] (a bit per
//! id in 64-id words), so the index costs a few bytes per task and a change
//! of state a bit operation per set.

use std::sync::Arc;

use flotilla_protocol::TaskId;
use flotilla_protocol::task::TaskState;
use rustc_hash::FxHashMap;

use super::id_set::IdSet;

/// The states a task is listed under (every state but `Unknown`).
pub(super) const LISTED: [TaskState; 5] = [
    TaskState::Queued,
    TaskState::Running,
    TaskState::Completed,
    TaskState::Failed,
    TaskState::Cancelled,
];

fn slot(state: TaskState) -> Option<usize> {
    LISTED.iter().position(|s| *s == state)
}

/// Task ids by state.
#[derive(Debug, Default)]
pub(super) struct StateSets {
    sets: [IdSet; 5],
}

impl StateSets {
    fn insert(&mut self, state: TaskState, id: TaskId) {
        if let Some(i) = slot(state) {
            self.sets[i].insert(id);
        }
    }

    fn remove(&mut self, state: TaskState, id: TaskId) {
        if let Some(i) = slot(state) {
            self.sets[i].remove(id);
        }
    }

    fn is_empty(&self) -> bool {
        self.sets.iter().all(IdSet::is_empty)
    }

    /// How many tasks are in `state`.
    pub(super) fn count(&self, state: TaskState) -> u64 {
        slot(state).map_or(0, |i| self.sets[i].len())
    }

    /// The ids in any of `states` below `before`, highest first (a merge
    /// of the states' sets, each walked from the top).
    pub(super) fn descending<'a>(
        &'a self,
        states: &[TaskState],
        before: Option<TaskId>,
    ) -> impl Iterator<Item = TaskId> + 'a {
        let upper = before.unwrap_or(TaskId(u64::MAX));
        let mut heads: Vec<_> = states
            .iter()
            .filter_map(|s| slot(*s))
            .map(|i| self.sets[i].descending_below(upper).peekable())
            .collect();
        std::iter::from_fn(move || {
            let best = heads
                .iter_mut()
                .enumerate()
                .filter_map(|(i, h)| h.peek().map(|id| (i, *id)))
                .max_by_key(|(_, id)| *id)?;
            heads[best.0].next()
        })
    }
}

/// Which tasks one set of [`StateSets`] holds. Servable names are numbered
/// by the index ([`TaskIndex::key_for`]), so no key hashes a string on the
/// path every task takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum IndexKey {
    /// Every task.
    All,
    /// Tasks of a servable name (every version).
    Servable(u32),
    /// Tasks of one owner.
    Owner(u32),
    /// Tasks of one owner and servable name.
    OwnerServable(u32, u32),
}

/// The name part of a canonical `NAME@VERSION`.
pub(super) fn base_name(canonical: &str) -> &str {
    canonical
        .split_once('@')
        .map_or(canonical, |(name, _)| name)
}

/// Every index.
#[derive(Debug, Default)]
pub(super) struct TaskIndex {
    by: FxHashMap<IndexKey, StateSets>,
    /// The number of each servable id's base name, found once per id.
    number_of_id: FxHashMap<Arc<str>, u32>,
    /// The number of each base name, for queries by name.
    number_of_name: FxHashMap<Arc<str>, u32>,
    /// The owner whose queries read the whole index (the daemon's user):
    /// its tasks get no per-owner sets, which nobody would read.
    sees_all: Option<u32>,
}

impl TaskIndex {
    /// An empty index whose per-owner sets leave out `owner`, who reads
    /// the sets of every task.
    pub(super) fn seen_whole_by(owner: u32) -> TaskIndex {
        TaskIndex {
            sees_all: Some(owner),
            ..TaskIndex::default()
        }
    }

    /// The sets a task of `servable` owned by `owner` is in.
    fn keys(&mut self, servable: &str, owner: u32) -> impl Iterator<Item = IndexKey> + use<> {
        let all = self.all_keys(servable, owner);
        let sets = if self.sees_all == Some(owner) { 2 } else { 4 };
        all.into_iter().take(sets)
    }

    fn all_keys(&mut self, servable: &str, owner: u32) -> [IndexKey; 4] {
        let name = match self.number_of_id.get(servable) {
            Some(n) => *n,
            None => {
                let next = self.number_of_name.len() as u32;
                let n = *self
                    .number_of_name
                    .entry(Arc::from(base_name(servable)))
                    .or_insert(next);
                self.number_of_id.insert(Arc::from(servable), n);
                n
            }
        };
        [
            IndexKey::All,
            IndexKey::Servable(name),
            IndexKey::Owner(owner),
            IndexKey::OwnerServable(owner, name),
        ]
    }

    /// The key of the tasks of `owner` (all owners when none) and servable
    /// name `name` (all servables when none); none when no task ever had
    /// that name.
    pub(super) fn key_for(&self, owner: Option<u32>, name: Option<&str>) -> Option<IndexKey> {
        let name = match name {
            Some(n) => Some(*self.number_of_name.get(n)?),
            None => None,
        };
        Some(match (owner, name) {
            (None, None) => IndexKey::All,
            (None, Some(n)) => IndexKey::Servable(n),
            (Some(uid), None) => IndexKey::Owner(uid),
            (Some(uid), Some(n)) => IndexKey::OwnerServable(uid, n),
        })
    }

    /// Task `id` (of `servable`, owned by `owner`) entered `state`.
    pub(super) fn insert(&mut self, id: TaskId, servable: &str, owner: u32, state: TaskState) {
        for key in self.keys(servable, owner) {
            self.by.entry(key).or_default().insert(state, id);
        }
    }

    /// Task `id` left `state` (moved on or was forgotten).
    pub(super) fn remove(&mut self, id: TaskId, servable: &str, owner: u32, state: TaskState) {
        for key in self.keys(servable, owner) {
            if let Some(sets) = self.by.get_mut(&key) {
                sets.remove(state, id);
                if sets.is_empty() && key != IndexKey::All {
                    self.by.remove(&key);
                }
            }
        }
    }

    /// Task `id` moved from `from` to `to`.
    pub(super) fn moved(
        &mut self,
        id: TaskId,
        servable: &str,
        owner: u32,
        from: TaskState,
        to: TaskState,
    ) {
        if from == to {
            return;
        }
        // One lookup per index; no set ends up empty, the task moves
        // within it.
        for key in self.keys(servable, owner) {
            let sets = self.by.entry(key).or_default();
            sets.remove(from, id);
            sets.insert(to, id);
        }
    }

    /// The sets of `key` (none when no task has it).
    pub(super) fn sets(&self, key: &IndexKey) -> Option<&StateSets> {
        self.by.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_merge_states_newest_first_and_page_with_before() {
        let mut index = TaskIndex::default();
        for n in 1..=6 {
            let state = if n % 2 == 0 {
                TaskState::Failed
            } else {
                TaskState::Queued
            };
            index.insert(TaskId(n), "a@1", 7, state);
        }
        let all = index.sets(&IndexKey::All).unwrap();
        let ids: Vec<u64> = all
            .descending(&[TaskState::Queued, TaskState::Failed], None)
            .map(|t| t.0)
            .collect();
        assert_eq!(ids, [6, 5, 4, 3, 2, 1]);
        let failed: Vec<u64> = all
            .descending(&[TaskState::Failed], Some(TaskId(6)))
            .map(|t| t.0)
            .collect();
        assert_eq!(failed, [4, 2]);
        assert_eq!(all.count(TaskState::Queued), 3);
    }

    #[test]
    fn moves_and_removals_keep_every_index_exact() {
        let mut index = TaskIndex::default();
        index.insert(TaskId(1), "a@1", 7, TaskState::Queued);
        index.insert(TaskId(2), "b@1", 8, TaskState::Queued);
        index.moved(TaskId(1), "a@1", 7, TaskState::Queued, TaskState::Running);
        let a = index.key_for(Some(7), Some("a")).unwrap();
        let sets = index.sets(&a).unwrap();
        assert_eq!(sets.count(TaskState::Queued), 0);
        assert_eq!(sets.count(TaskState::Running), 1);
        assert!(index.sets(&IndexKey::Owner(8)).is_some());
        index.remove(TaskId(2), "b@1", 8, TaskState::Queued);
        assert!(index.sets(&IndexKey::Owner(8)).is_none(), "empty sets go");
        let b = index.key_for(None, Some("b")).unwrap();
        assert!(index.sets(&b).is_none());
        assert!(index.key_for(None, Some("never")).is_none());
        let all = index.sets(&IndexKey::All).unwrap();
        assert_eq!(all.count(TaskState::Queued), 0);
        assert_eq!(all.count(TaskState::Running), 1);
    }

    #[test]
    fn the_daemon_users_tasks_are_in_the_sets_of_everyone_only() {
        let mut index = TaskIndex::seen_whole_by(0);
        index.insert(TaskId(1), "a@1", 0, TaskState::Queued);
        index.insert(TaskId(2), "a@1", 9, TaskState::Queued);
        index.moved(TaskId(1), "a@1", 0, TaskState::Queued, TaskState::Running);
        assert!(index.sets(&IndexKey::Owner(0)).is_none());
        let theirs = index.key_for(Some(9), Some("a")).unwrap();
        assert_eq!(index.sets(&theirs).unwrap().count(TaskState::Queued), 1);
        let every_a = index.key_for(None, Some("a")).unwrap();
        let sets = index.sets(&every_a).unwrap();
        assert_eq!(sets.count(TaskState::Running), 1);
        assert_eq!(sets.count(TaskState::Queued), 1);
    }
}
