//! Replies that must wait until the store has flushed what they promise.
//!
//! Every store write the core asks for gets a sequence number. A reply that
//! tells a client "your task is accepted" is released only once the writer
//! reports that sequence number durable. If the writer reports it failed
//! instead, the replies held for it and the tasks it carried are handed
//! back (see [`Durability::fail`]), so nothing is acknowledged that was not
//! stored.

use std::collections::BTreeMap;

use flotilla_protocol::TaskId;
use flotilla_protocol::client::ClientReply;

use super::{Action, ReplyTo};

/// Sequence numbers issued and confirmed, and the replies waiting on them.
#[derive(Debug, Default)]
pub struct Durability {
    issued: u64,
    durable: u64,
    deferred: BTreeMap<u64, Vec<(ReplyTo, ClientReply)>>,
    /// New tasks by the sequence number of the write that stores them,
    /// until it is durable.
    unstored: BTreeMap<u64, Vec<TaskId>>,
}

/// What a failed store write leaves to settle.
#[derive(Debug, Default, PartialEq)]
pub struct Unstored {
    /// Replies that were waiting for it.
    pub replies: Vec<(ReplyTo, ClientReply)>,
    /// Tasks it was to store.
    pub tasks: Vec<TaskId>,
}

impl Durability {
    /// A fresh sequence number for the next store write.
    pub fn issue(&mut self) -> u64 {
        self.issued += 1;
        self.issued
    }

    /// The last sequence number issued.
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// The last sequence number reported durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// True when everything up to `seq` is durable.
    pub fn is_durable(&self, seq: u64) -> bool {
        seq <= self.durable
    }

    /// Sends `reply` now (`now`) if `seq` is durable, else once it is.
    pub fn reply_after(
        &mut self,
        seq: u64,
        to: ReplyTo,
        mut reply: ClientReply,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if self.is_durable(seq) {
            stamp(&mut reply, now);
            out.push(Action::ReplyClient { to, reply });
        } else {
            self.deferred.entry(seq).or_default().push((to, reply));
        }
    }

    /// Remembers that write `seq` stores the new tasks `ids`.
    pub fn track_tasks(&mut self, seq: u64, ids: Vec<TaskId>) {
        if !self.is_durable(seq) && !ids.is_empty() {
            self.unstored.entry(seq).or_default().extend(ids);
        }
    }

    /// The writes after the last durable one up to `through` failed: hands
    /// back the replies that waited on them and the tasks they carried.
    pub fn fail(&mut self, through: u64) -> Unstored {
        let later = self.deferred.split_off(&(through + 1));
        let replies = std::mem::replace(&mut self.deferred, later)
            .into_values()
            .flatten()
            .collect();
        let later = self.unstored.split_off(&(through + 1));
        let tasks = std::mem::replace(&mut self.unstored, later)
            .into_values()
            .flatten()
            .collect();
        Unstored { replies, tasks }
    }

    /// Records that everything up to `seq` is durable (at `now`) and
    /// releases replies.
    pub fn advance(&mut self, seq: u64, now: u64, out: &mut Vec<Action>) {
        if seq <= self.durable {
            return;
        }
        self.durable = seq;
        self.unstored = self.unstored.split_off(&(seq + 1));
        let later = self.deferred.split_off(&(seq + 1));
        for (_, replies) in std::mem::replace(&mut self.deferred, later) {
            out.extend(replies.into_iter().map(|(to, mut reply)| {
                stamp(&mut reply, now);
                Action::ReplyClient { to, reply }
            }));
        }
    }
}

/// Records in the task views a reply carries when it was released, so a
/// client can tell the store's flush from the trip back.
fn stamp(reply: &mut ClientReply, now: u64) {
    if let ClientReply::Results { tasks } | ClientReply::TaskStatus { tasks } = reply {
        for task in tasks {
            task.timings.replied_us = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::TaskId;
    use flotilla_protocol::task::{TaskState, TaskTimings, TaskView};

    fn results() -> ClientReply {
        ClientReply::Results {
            tasks: vec![TaskView {
                id: TaskId(1),
                servable: "noop".into(),
                state: TaskState::Completed,
                attempts: 1,
                worker: None,
                timings: TaskTimings::default(),
                memo: None,
                outcome: None,
            }],
        }
    }

    fn replied_at(out: &[Action]) -> Vec<u64> {
        out.iter()
            .filter_map(|a| match a {
                Action::ReplyClient {
                    reply: ClientReply::Results { tasks },
                    ..
                } => Some(tasks[0].timings.replied_us),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_held_reply_leaves_when_durable_stamped_with_that_time() {
        let mut d = Durability::default();
        let seq = d.issue();
        let mut out = Vec::new();
        d.reply_after(seq, ReplyTo(1), results(), 10, &mut out);
        assert!(out.is_empty(), "not durable yet");
        d.advance(seq, 25, &mut out);
        assert_eq!(replied_at(&out), [25]);
        // Already durable: out at once, stamped now.
        out.clear();
        d.reply_after(seq, ReplyTo(2), results(), 40, &mut out);
        assert_eq!(replied_at(&out), [40]);
    }

    #[test]
    fn a_failed_write_hands_back_its_replies_and_tasks_and_nothing_later() {
        let mut d = Durability::default();
        let mut out = Vec::new();
        let first = d.issue();
        d.track_tasks(first, vec![TaskId(1)]);
        d.reply_after(first, ReplyTo(1), results(), 10, &mut out);
        d.advance(first, 11, &mut out);
        assert_eq!(out.len(), 1, "the first write is durable");

        let failed = d.issue();
        d.track_tasks(failed, vec![TaskId(2), TaskId(3)]);
        d.reply_after(failed, ReplyTo(2), results(), 12, &mut out);
        let later = d.issue();
        d.track_tasks(later, vec![TaskId(4)]);
        d.reply_after(later, ReplyTo(3), results(), 13, &mut out);

        let unstored = d.fail(failed);
        assert_eq!(unstored.tasks, [TaskId(2), TaskId(3)]);
        let to: Vec<_> = unstored.replies.iter().map(|(to, _)| *to).collect();
        assert_eq!(to, [ReplyTo(2)]);
        assert_eq!(d.fail(failed), Unstored::default(), "settled once");

        // The later write still goes out when durable, and then nothing of
        // it is left to withdraw.
        out.clear();
        d.advance(later, 20, &mut out);
        assert_eq!(replied_at(&out), [20]);
        assert_eq!(d.fail(later), Unstored::default());
    }
}
