//! When the store cannot write.
//!
//! The writer reports a failed write with the last sequence number it
//! covered ([`Event::StoreFailed`](super::Event::StoreFailed)). Nothing
//! that waited on it may be acknowledged: the tasks it was to store are
//! withdrawn (cancelled with the reason, so no worker result revives them
//! and no client sees them accepted), the replies held for it are answered
//! at once with the reason, and new tasks are refused until the writer
//! reports that it writes again
//! ([`Event::StoreRecovered`](super::Event::StoreRecovered)).

use flotilla_protocol::TaskId;
use flotilla_protocol::client::{ApiError, ApiErrorKind, ClientReply};
use flotilla_protocol::task::Outcome;

use super::records::StoreOp;
use super::tasks::Ending;
use super::{Action, Core};

impl Core {
    /// Store writes up to `through` failed for `reason`.
    pub(super) fn on_store_failed(
        &mut self,
        through: u64,
        reason: String,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if self.replies.store_failed.is_none() {
            tracing::error!(%reason, "the store cannot write: new tasks are refused until it can");
        }
        let unstored = self.replies.durability.fail(through);
        let withdrawn = unstored.tasks.len();
        for id in unstored.tasks {
            self.withdraw(id, &reason, now, out);
        }
        // Replies the withdrawals just completed (a run's results) were
        // held for the same writes.
        let mut replies = unstored.replies;
        replies.extend(self.replies.durability.fail(through).replies);
        if withdrawn > 0 || !replies.is_empty() {
            tracing::warn!(
                through,
                withdrawn,
                answered = replies.len(),
                "requests the store could not record were answered with its error"
            );
        }
        for (to, held) in replies {
            let reply = not_stored(&held, &reason);
            out.push(Action::ReplyClient { to, reply });
        }
        self.replies.store_failed = Some(reason);
    }

    /// The store writes again.
    pub(super) fn on_store_recovered(&mut self, out: &mut Vec<Action>) {
        if let Some(reason) = self.replies.store_failed.take() {
            tracing::info!(after = %reason, "the store writes again: new tasks are accepted");
        }
        // The id reservation may have been among the writes that failed.
        let until = self.tasks.reserved_until();
        self.persist(StoreOp::ReserveIds { until }, out);
    }

    /// Takes back task `id`, whose record was not stored: it ends cancelled
    /// with `reason`, wherever it was (queued, behind an identical request,
    /// or already on a worker, whose result will then be ignored).
    fn withdraw(&mut self, id: TaskId, reason: &str, now: u64, out: &mut Vec<Action>) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        if task.is_final() {
            return;
        }
        if task.is_queued() {
            self.sched.queues.remove(&task.queue_key(), id);
        }
        if let Some(inflight) = task.memo_key.and_then(|k| self.memo.inflight.get_mut(&k)) {
            inflight.followers.retain(|f| *f != id);
        }
        let outcome = Outcome::Error(format!(
            "not accepted: the daemon could not store this task ({reason})"
        ));
        self.finish(id, Ending::Cancelled, outcome, None, 0, now, out);
    }
}

/// The answer to a request whose reply `held` waited on a write that
/// failed for `reason`.
fn not_stored(held: &ClientReply, reason: &str) -> ClientReply {
    let message = match held {
        ClientReply::Submitted { .. } | ClientReply::Results { .. } => {
            format!("not accepted: the daemon could not store the tasks ({reason})")
        }
        _ => format!(
            "the daemon could not store this change ({reason}); it holds only until the daemon restarts"
        ),
    };
    ClientReply::Error(ApiError {
        kind: ApiErrorKind::Unavailable,
        message,
    })
}
