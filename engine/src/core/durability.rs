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

    /// Sends `reply` now if `seq` is durable, else once it is.
    pub fn reply_after(
        &mut self,
        seq: u64,
        to: ReplyTo,
        reply: ClientReply,
        out: &mut Vec<Action>,
    ) {
        if self.is_durable(seq) {
            out.push(Action::ReplyClient { to, reply });
        } else {
            self.deferred.entry(seq).or_default().push((to, reply));
        }
    }

    /// Records that everything up to `seq` is durable and releases replies.
    pub fn advance(&mut self, seq: u64, out: &mut Vec<Action>) {
        if seq <= self.durable {
            return;
        }
        self.durable = seq;
        let later = self.deferred.split_off(&(seq + 1));
        for (_, replies) in std::mem::replace(&mut self.deferred, later) {
            out.extend(
                replies
                    .into_iter()
                    .map(|(to, reply)| Action::ReplyClient { to, reply }),
            );
        }
    }
}
