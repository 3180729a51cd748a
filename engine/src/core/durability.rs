//! Replies that must wait until the store has flushed what they promise.
//!
//! Every store write the core asks for gets a sequence number. A reply that
//! tells a client "your task is accepted" is released only once the writer
//! reports that sequence number durable.

use std::collections::BTreeMap;

use flotilla_protocol::client::ClientReply;

use super::{Action, ReplyTo};

/// Sequence numbers issued and confirmed, and the replies waiting on them.
#[derive(Debug, Default)]
pub struct Durability {
    issued: u64,
    durable: u64,
    deferred: BTreeMap<u64, Vec<(ReplyTo, ClientReply)>>,
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

    /// Records that everything up to `seq` is durable (at `now`) and
    /// releases replies.
    pub fn advance(&mut self, seq: u64, now: u64, out: &mut Vec<Action>) {
        if seq <= self.durable {
            return;
        }
        self.durable = seq;
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
}
