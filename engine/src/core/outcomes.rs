//! Results: a task's first final outcome, what it settles (memo entries,
//! identical requests in flight, waiting clients), and where a task goes
//! when it is new or released.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_protocol::TaskId;
use flotilla_protocol::client::ClientReply;
use flotilla_protocol::task::{MemoUse, Outcome};

use super::access::TaskScope;
use super::memo::MemoKey;
use super::queues::Queues;
use super::records::StoreOp;
use super::tally::End;
use super::tasks::{Ending, Task};
use super::{Action, Core, Inflight, ReplyTo, Wait};

/// The most settled tasks one [`flotilla_protocol::client::ClientCall::Settled`]
/// reply carries.
const MAX_SETTLED_PER_REPLY: usize = 10_000;

impl Core {
    /// Records the first final state of a task, queues its result record
    /// for the store, feeds the memo store, settles identical requests that
    /// were waiting on it, and wakes its waiters. Returns false if the task
    /// was already final.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &mut self,
        id: TaskId,
        ending: Ending,
        outcome: Outcome,
        worker: Option<Arc<str>>,
        run_us: u64,
        now: u64,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(done) = self
            .tasks
            .finish(id, ending, outcome.clone(), worker, run_us, now)
        else {
            return false;
        };
        let end = match ending {
            Ending::Completed => End::Completed,
            Ending::Failed => End::Failed,
            Ending::Cancelled => End::Cancelled,
        };
        self.tally
            .ended(&done.servable, end, now.saturating_sub(done.submitted_us));
        self.replies.pending_records.push((id, done.record));
        if let Some(key) = done.memo_key {
            if done.ran
                && let Outcome::Output(output) = &outcome
            {
                let evicted = self
                    .memo
                    .store
                    .insert(key, done.servable.clone(), output.clone());
                self.persist(
                    StoreOp::PutMemo {
                        key,
                        servable: done.servable.to_string(),
                        output: output.clone(),
                    },
                    out,
                );
                if !evicted.is_empty() {
                    self.persist(StoreOp::RemoveMemo(evicted), out);
                }
            }
            self.settle_followers(id, key, ending, &outcome, done.worker, now, out);
        }
        for w in done.waiters {
            let done = match self.replies.waits.get_mut(&w) {
                Some(wait) if wait.any => {
                    if wait.pending > 0 {
                        wait.pending = 0;
                        self.replies.ready_any.push(w);
                    }
                    false
                }
                Some(wait) => {
                    wait.pending = wait.pending.saturating_sub(1);
                    wait.pending == 0
                }
                None => false,
            };
            if done {
                self.complete_wait(w, now, out);
            }
        }
        true
    }

    /// The leader of identical in-flight requests finished: completed or
    /// failed, its followers share the outcome; cancelled, the next one
    /// takes over and runs.
    #[allow(clippy::too_many_arguments)]
    fn settle_followers(
        &mut self,
        id: TaskId,
        key: MemoKey,
        ending: Ending,
        outcome: &Outcome,
        worker: Option<Arc<str>>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if self.memo.inflight.get(&key).is_none_or(|i| i.leader != id) {
            return;
        }
        let Some(Inflight { followers, .. }) = self.memo.inflight.remove(&key) else {
            return;
        };
        if ending == Ending::Cancelled {
            let mut rest = followers.into_iter();
            if let Some(next) = rest.next() {
                self.memo.inflight.insert(
                    key,
                    Inflight {
                        leader: next,
                        followers: rest.collect(),
                    },
                );
                self.sched.push_back(&self.tasks, next, now);
            }
            return;
        }
        for f in followers {
            if let Some(task) = self.tasks.get_mut(&f) {
                task.memo = Some(MemoUse::Coalesced);
            }
            self.memo.store.stats.coalesced += 1;
            self.finish(f, ending, outcome.clone(), worker.clone(), 0, now, out);
        }
    }

    /// The final state for a task's last outcome; a pipeline step's error
    /// names the step.
    pub(super) fn final_outcome(&self, id: TaskId, outcome: Outcome) -> (Ending, Outcome) {
        match outcome {
            Outcome::Output(o) => (Ending::Completed, Outcome::Output(o)),
            Outcome::Error(e) => {
                let named = match self.tasks.get(&id).and_then(|t| t.pipeline.as_ref()) {
                    Some(p) => format!(
                        "step {} of {} (`{}`) failed: {e}",
                        p.step + 1,
                        p.steps.len(),
                        p.steps[p.step].name
                    ),
                    None => e,
                };
                (Ending::Failed, Outcome::Error(named))
            }
        }
    }

    /// Puts a queued task already in the table (one held for its worker
    /// after a restart, now released) where it belongs; see [`place_in`].
    pub(super) fn place(&mut self, id: TaskId, now: u64) {
        if let Some(task) = self.tasks.get(&id) {
            place_in(
                &mut self.memo.inflight,
                &mut self.sched.queues,
                id,
                task,
                now,
            );
        }
    }

    /// Adds a new task and puts it where it belongs; see [`place_in`].
    pub(super) fn enqueue_and_place(&mut self, id: TaskId, task: Task, now: u64) {
        if self.tasks.enqueue(id, task).is_some() {
            self.place(id, now);
        }
    }

    /// A client whose scope is `scope` waits (until `deadline_us`) for
    /// `pending` of `ids` to end (those in its scope: the others are
    /// unknown to it); the reply also waits for store write `min_seq`.
    /// With `any`, the first task to end answers it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_wait(
        &mut self,
        to: ReplyTo,
        scope: TaskScope,
        ids: Vec<TaskId>,
        pending: usize,
        deadline_us: u64,
        min_seq: u64,
        any: bool,
    ) {
        let wait_id = self.replies.next_wait;
        self.replies.next_wait += 1;
        for id in &ids {
            self.tasks.add_waiter(*id, wait_id, scope);
        }
        self.replies.waits.insert(
            wait_id,
            Wait {
                to,
                scope,
                ids,
                pending,
                deadline_us,
                min_seq,
                any,
            },
        );
    }

    /// Answers the waits for any of their tasks that one settled during
    /// this event.
    pub(super) fn answer_ready_waits(&mut self, now: u64, out: &mut Vec<Action>) {
        for wait in std::mem::take(&mut self.replies.ready_any) {
            self.complete_wait(wait, now, out);
        }
    }

    /// Answers wait `wait_id` with what its tasks have now.
    pub(super) fn complete_wait(&mut self, wait_id: u64, now: u64, out: &mut Vec<Action>) {
        if let Some(wait) = self.replies.waits.remove(&wait_id) {
            let reply = if wait.any {
                for id in &wait.ids {
                    self.tasks.remove_waiter(*id, wait_id);
                }
                self.settled_reply(&wait.ids, wait.scope, now)
            } else {
                self.results_reply(&wait.ids, wait.scope, now)
            };
            self.replies
                .durability
                .reply_after(wait.min_seq, wait.to, reply, now, out);
        }
    }

    /// Which of `ids` are settled for a client whose scope is `scope`
    /// (final, or unknown to it), with their outcomes (fetched now), and
    /// how many of the rest are queued and running.
    pub(super) fn settled_reply(
        &mut self,
        ids: &[TaskId],
        scope: TaskScope,
        now: u64,
    ) -> ClientReply {
        let mut settled = flotilla_protocol::watch::Settled::default();
        // Outputs up to half a frame per reply; the rest are answered at
        // once by the client's next call.
        let room = self.cfg.max_frame_bytes / 2;
        let mut bytes = 0usize;
        for id in ids {
            match self.tasks.get_in(id, scope) {
                Some(t) if t.is_queued() => settled.queued += 1,
                Some(t) if !t.is_final() => settled.running += 1,
                _ if settled.done.len() >= MAX_SETTLED_PER_REPLY || bytes > room => {}
                _ => {
                    self.tasks.mark_fetched(*id, scope, now);
                    let view = self.tasks.view(*id, true, scope);
                    bytes += match &view.outcome {
                        Some(Outcome::Output(o)) => o.len(),
                        Some(Outcome::Error(e)) => e.len(),
                        None => 0,
                    } + 128;
                    settled.done.push(view);
                }
            }
        }
        ClientReply::Settled(settled)
    }

    /// The results of `ids` as a client whose scope is `scope` sees them
    /// (fetched now, which starts their retention).
    pub(super) fn results_reply(
        &mut self,
        ids: &[TaskId],
        scope: TaskScope,
        now: u64,
    ) -> ClientReply {
        let tasks = ids
            .iter()
            .map(|id| {
                self.tasks.mark_fetched(*id, scope, now);
                self.tasks.view(*id, true, scope)
            })
            .collect();
        ClientReply::Results { tasks }
    }
}

/// Puts queued task `id` in its queue, or behind an identical memoizable
/// request already in flight (making it the leader when there is none).
fn place_in(
    inflight: &mut HashMap<MemoKey, Inflight>,
    queues: &mut Queues,
    id: TaskId,
    task: &Task,
    now: u64,
) {
    if let Some(key) = task.memo_key {
        if let Some(running) = inflight.get_mut(&key) {
            running.followers.push(id);
            return;
        }
        inflight.insert(
            key,
            Inflight {
                leader: id,
                followers: Vec::new(),
            },
        );
    }
    queues.push_back(task.queue_key(), id, task.queue_rule(), now);
}
