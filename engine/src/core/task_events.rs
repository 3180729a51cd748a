//! The task event stream behind `flotilla events --tasks`: what happened
//! to each task (accepted, dispatched, retried, finished, failed,
//! cancelled), in a bounded log with sequence numbers, read by each client
//! for its own tasks through a filter, and long-polls waiting for the next
//! event that passes theirs.
//!
//! Separate from the block and worker log so that a burst of a million
//! tasks does not push the fleet's events out.

use std::collections::VecDeque;

use flotilla_protocol::client::ClientReply;
use flotilla_protocol::watch::{TaskEventFilter, TaskEventView};

use super::access::TaskScope;
use super::tasks::TaskNote;
use super::{Action, ReplyTo};

/// Events kept for late readers.
const KEPT: usize = 200_000;

/// The most events one reply carries (a reader asks again for the rest).
const MAX_REPLY: usize = 10_000;

#[derive(Debug)]
struct Reader {
    to: ReplyTo,
    after: u64,
    scope: TaskScope,
    filter: TaskEventFilter,
    deadline_us: u64,
}

/// One event as noted: shared names and no copies, so that keeping a
/// task's events costs no allocation on the path every task takes; made
/// into a [`TaskEventView`] only when a reader asks.
#[derive(Debug)]
struct Kept {
    seq: u64,
    at_us: u64,
    note: TaskNote,
}

impl Kept {
    fn view(&self) -> TaskEventView {
        TaskEventView {
            seq: self.seq,
            at_us: self.at_us,
            task: self.note.id,
            servable: self.note.servable.to_string(),
            kind: self.note.kind.to_owned(),
            worker: self.note.worker.as_deref().map(str::to_owned),
            attempt: self.note.attempt,
            message: self.note.message.clone(),
        }
    }
}

/// The log.
#[derive(Debug, Default)]
pub(super) struct TaskEventLog {
    events: VecDeque<Kept>,
    last_seq: u64,
    readers: Vec<Reader>,
}

/// What a reader asks for.
#[derive(Debug, Clone)]
pub(super) struct Query {
    /// Last sequence number seen.
    pub(super) after: u64,
    /// Whose tasks it may see.
    pub(super) scope: TaskScope,
    /// Which events.
    pub(super) filter: TaskEventFilter,
}

impl TaskEventLog {
    /// An empty log whose events are numbered after `base`, the daemon's
    /// start time in microseconds, as [`super::event_log::EventLog`]'s.
    pub(super) fn starting_after(base: u64) -> Self {
        TaskEventLog {
            last_seq: base,
            ..TaskEventLog::default()
        }
    }

    /// Appends what happened to tasks at `now` and answers each waiting
    /// reader that now has an event passing its filter.
    pub(super) fn push(&mut self, now: u64, notes: Vec<TaskNote>, out: &mut Vec<Action>) {
        if notes.is_empty() {
            return;
        }
        for note in notes {
            self.last_seq += 1;
            if self.events.len() == KEPT {
                self.events.pop_front();
            }
            self.events.push_back(Kept {
                seq: self.last_seq,
                at_us: now,
                note,
            });
        }
        for reader in std::mem::take(&mut self.readers) {
            let query = Query {
                after: reader.after,
                scope: reader.scope,
                filter: reader.filter.clone(),
            };
            let (events, last) = self.after(&query);
            if events.is_empty() {
                self.readers.push(Reader {
                    after: last,
                    ..reader
                });
            } else {
                out.push(Action::ReplyClient {
                    to: reader.to,
                    reply: ClientReply::TaskEvents { events, last },
                });
            }
        }
    }

    /// The events after `query.after` that pass it (at most
    /// [`MAX_REPLY`]), and the last sequence number looked at. Sequence
    /// numbers are consecutive, so the first one to look at is found by
    /// arithmetic, not by a scan.
    fn after(&self, query: &Query) -> (Vec<TaskEventView>, u64) {
        let first = self.events.front().map_or(self.last_seq + 1, |e| e.seq);
        let skip = query.after.saturating_add(1).saturating_sub(first) as usize;
        let mut events = Vec::new();
        let mut last = query.after.max(first.saturating_sub(1));
        for kept in self.events.iter().skip(skip) {
            if events.len() == MAX_REPLY {
                break;
            }
            last = kept.seq;
            if query.scope.covers(kept.note.owner)
                && query.filter.matches(kept.note.id, &kept.note.servable)
            {
                events.push(kept.view());
            }
        }
        (events, last.max(query.after.min(self.last_seq)))
    }

    /// Answers a reader: at once if something after `after` passes its
    /// filter (or no wait was asked for), else when such an event comes or
    /// the wait ends.
    pub(super) fn query(
        &mut self,
        to: ReplyTo,
        query: Query,
        wait_us: Option<u64>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let mut query = query;
        // A number this log has not given out was seen in an earlier
        // daemon's log (its clock ran ahead): that reader gets all kept.
        if query.after > self.last_seq {
            query.after = 0;
        }
        let (events, last) = self.after(&query);
        match wait_us {
            Some(wait) if events.is_empty() => self.readers.push(Reader {
                to,
                after: last,
                scope: query.scope,
                filter: query.filter,
                deadline_us: now.saturating_add(wait),
            }),
            _ => out.push(Action::ReplyClient {
                to,
                reply: ClientReply::TaskEvents { events, last },
            }),
        }
    }

    /// Answers readers whose wait is over (with nothing).
    pub(super) fn expire(&mut self, now: u64, out: &mut Vec<Action>) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.readers)
            .into_iter()
            .partition(|r| r.deadline_us <= now);
        self.readers = keep;
        for reader in due {
            out.push(Action::ReplyClient {
                to: reader.to,
                reply: ClientReply::TaskEvents {
                    events: Vec::new(),
                    last: reader.after,
                },
            });
        }
    }

    /// The earliest wait deadline, for the timer.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.readers.iter().map(|r| r.deadline_us).min()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use flotilla_protocol::TaskId;

    use super::*;

    fn note(id: u64, owner: u32, servable: &str, kind: &'static str) -> TaskNote {
        TaskNote {
            id: TaskId(id),
            servable: Arc::from(servable),
            owner,
            kind,
            worker: None,
            attempt: 0,
            message: String::new(),
        }
    }

    fn replies(out: &[Action]) -> Vec<(Vec<(u64, String)>, u64)> {
        out.iter()
            .filter_map(|a| match a {
                Action::ReplyClient {
                    reply: ClientReply::TaskEvents { events, last },
                    ..
                } => Some((
                    events.iter().map(|e| (e.task.0, e.kind.clone())).collect(),
                    *last,
                )),
                _ => None,
            })
            .collect()
    }

    fn everything(after: u64, scope: TaskScope) -> Query {
        Query {
            after,
            scope,
            filter: TaskEventFilter::default(),
        }
    }

    #[test]
    fn readers_see_their_own_tasks_in_order_and_filters_skip_the_rest() {
        let mut log = TaskEventLog::default();
        let mut out = Vec::new();
        log.push(
            1,
            vec![
                note(1, 7, "a@1", "accepted"),
                note(2, 8, "b@1", "accepted"),
                note(1, 7, "a@1", "dispatched"),
            ],
            &mut out,
        );
        log.query(
            ReplyTo(1),
            everything(0, TaskScope::Of(7)),
            None,
            2,
            &mut out,
        );
        let got = replies(&out);
        assert_eq!(
            got,
            [(vec![(1, "accepted".into()), (1, "dispatched".into())], 3)]
        );
        out.clear();
        log.query(ReplyTo(2), everything(0, TaskScope::All), None, 2, &mut out);
        assert_eq!(replies(&out)[0].0.len(), 3, "the daemon's user sees all");
        out.clear();
        // A filtered reader waits past events it does not want.
        let b_only = Query {
            after: 3,
            scope: TaskScope::All,
            filter: TaskEventFilter {
                servable: Some("b".into()),
                ids: vec![],
            },
        };
        log.query(ReplyTo(3), b_only, Some(1_000), 3, &mut out);
        log.push(4, vec![note(1, 7, "a@1", "finished")], &mut out);
        assert!(out.is_empty(), "still held: nothing of b");
        log.push(5, vec![note(2, 8, "b@1", "failed")], &mut out);
        assert_eq!(replies(&out), [(vec![(2, "failed".into())], 5)]);
        out.clear();
        log.query(
            ReplyTo(4),
            everything(5, TaskScope::All),
            Some(10),
            6,
            &mut out,
        );
        log.expire(15, &mut out);
        assert!(out.is_empty());
        log.expire(16, &mut out);
        assert_eq!(replies(&out), [(vec![], 5)]);
    }

    #[test]
    fn a_reader_behind_the_kept_window_starts_at_the_oldest_kept() {
        let mut log = TaskEventLog::default();
        let mut out = Vec::new();
        let notes = (0..KEPT as u64 + 5)
            .map(|n| note(n, 1, "a@1", "accepted"))
            .collect();
        log.push(1, notes, &mut out);
        let mut query = everything(0, TaskScope::All);
        log.query(ReplyTo(1), query.clone(), None, 2, &mut out);
        let (events, last) = replies(&out).remove(0);
        assert_eq!(events.len(), MAX_REPLY);
        assert_eq!(events[0].0, 5, "the first five were pushed out");
        assert_eq!(last, 5 + MAX_REPLY as u64);
        query.after = last;
        out.clear();
        log.query(ReplyTo(1), query, None, 2, &mut out);
        assert_eq!(replies(&out)[0].0[0].0, 5 + MAX_REPLY as u64);
    }

    #[test]
    fn a_reader_from_before_a_restart_misses_nothing_after_it() {
        let started = 1_700_000_000_000_000;
        let mut before = TaskEventLog::starting_after(started);
        let mut out = Vec::new();
        before.push(started, vec![note(1, 7, "a@1", "accepted")], &mut out);
        before.query(
            ReplyTo(1),
            everything(0, TaskScope::All),
            None,
            started,
            &mut out,
        );
        let seen = replies(&out)[0].1;
        assert_eq!(seen, started + 1);
        // A second later a new daemon numbers its events after its start:
        // the reader, asking on after what it saw, gets them.
        out.clear();
        let mut after = TaskEventLog::starting_after(started + 1_000_000);
        after.push(
            started + 1_000_001,
            vec![note(2, 7, "a@1", "accepted")],
            &mut out,
        );
        after.query(
            ReplyTo(2),
            everything(seen, TaskScope::All),
            Some(10),
            started + 1_000_002,
            &mut out,
        );
        assert_eq!(
            replies(&out),
            [(vec![(2, "accepted".into())], started + 1_000_001)]
        );
        // A number this log never gave is from an earlier log (whose clock
        // was ahead): the reader gets everything kept.
        out.clear();
        let ahead = everything(started + 9_000_000, TaskScope::All);
        after.query(ReplyTo(3), ahead, Some(10), started + 1_000_003, &mut out);
        assert_eq!(
            replies(&out),
            [(vec![(2, "accepted".into())], started + 1_000_001)]
        );
    }
}
