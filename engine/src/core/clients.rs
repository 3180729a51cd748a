//! Client calls: submissions, results, status, cancellation, the catalog.

use flotilla_protocol::TaskId;
use flotilla_protocol::client::{
    ApiError, ApiErrorKind, ClientCall, ClientReply, MAX_WAIT_MS, TaskRequest,
};
use flotilla_protocol::servable::{ANY_SERVABLE_WIRE, ServableRecord, ServableRef, TypeSpec};
use flotilla_protocol::task::{MemoUse, Outcome, TaskState};

use super::access::{self, Caller, TaskScope};
use super::catalog::{Refusal, ServableInfo};
use super::records::{NewTask, StoreOp};
use super::tasks::{Ending, Task};
use super::{Action, Core, ID_RESERVATION, ReplyTo, memo, search, task_events, work_size};

fn refuse(kind: ApiErrorKind, message: String) -> ClientReply {
    ClientReply::Error(ApiError { kind, message })
}

fn refusal((kind, message): Refusal) -> ClientReply {
    refuse(kind, message)
}

/// A refusal for a call whose `wait_ms` is longer than any wait taken
/// ([`MAX_WAIT_MS`]).
fn wait_out_of_range(call: &ClientCall) -> Option<ClientReply> {
    let wait_ms = match call {
        ClientCall::Submit { wait_ms, .. }
        | ClientCall::Results { wait_ms, .. }
        | ClientCall::Events { wait_ms, .. }
        | ClientCall::Settled { wait_ms, .. }
        | ClientCall::TaskEvents { wait_ms, .. } => (*wait_ms)?,
        _ => return None,
    };
    (wait_ms > MAX_WAIT_MS).then(|| {
        refuse(
            ApiErrorKind::BadRequest,
            format!("wait_ms must be at most {MAX_WAIT_MS} (ten years), got {wait_ms}"),
        )
    })
}

/// The time `wait_ms` after `now` (µs), saturating.
fn deadline(now: u64, wait_ms: u64) -> u64 {
    now.saturating_add(wait_ms.saturating_mul(1000))
}

impl Core {
    pub(super) fn on_client(
        &mut self,
        from: ReplyTo,
        caller: &Caller,
        call: ClientCall,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if let Some(reply) = wait_out_of_range(&call) {
            out.push(Action::ReplyClient { to: from, reply });
            return;
        }
        if let Some(reply) = self.admin_only(caller, &call) {
            out.push(Action::ReplyClient { to: from, reply });
            return;
        }
        let owner = self.cfg.owner_uid;
        let sees = |r: &ServableRecord| access::may_see_record(caller, r, owner);
        let scope = TaskScope::of(caller, owner);
        let reply = match call {
            ClientCall::Ping => ClientReply::Pong {
                pid: self.cfg.pid,
                release: self.cfg.release.clone(),
            },
            ClientCall::Submit { tasks, wait_ms } => {
                return self.on_submit(from, caller, tasks, wait_ms, now, out);
            }
            ClientCall::Results { ids, wait_ms } => {
                let pending = self.tasks.unfinished(&ids, scope);
                match wait_ms {
                    Some(ms) if pending > 0 && self.life.draining.is_none() => {
                        let until = deadline(now, ms);
                        return self.add_wait(from, scope, ids, pending, until, 0, false);
                    }
                    _ => self.results_reply(&ids, scope, now),
                }
            }
            ClientCall::TaskStatus { ids } => ClientReply::TaskStatus {
                tasks: ids
                    .iter()
                    .map(|id| self.tasks.view_with_reason(*id, scope))
                    .collect(),
            },
            ClientCall::DaemonStatus => {
                ClientReply::DaemonStatus(Box::new(self.status_for(caller, now)))
            }
            ClientCall::Events { after, wait_ms } => {
                let wait = wait_ms.map(|ms| ms.saturating_mul(1000));
                return self.fleet.events.query(from, after, wait, now, out);
            }
            ClientCall::ResumePool { name } => match self.fleet.pools.resume(&name) {
                Ok(()) => {
                    self.run_strategy(now, out);
                    ClientReply::PoolResumed { name }
                }
                Err(message) => refuse(ApiErrorKind::NotFound, message),
            },
            ClientCall::Cancel { ids } => return self.on_cancel(from, scope, ids, now, out),
            ClientCall::WarmServable { servable, slots } => {
                self.on_warm_servable(&servable, slots, now, out)
            }
            ClientCall::Stop => {
                out.push(Action::ReplyClient {
                    to: from,
                    reply: ClientReply::Stopping,
                });
                return self.begin_drain(now, out);
            }
            ClientCall::Publish { record } => {
                return self.on_publish(from, caller, *record, now, out);
            }
            ClientCall::ListServables => ClientReply::Servables {
                servables: self
                    .catalog
                    .latest()
                    .filter(|r| sees(r))
                    .map(|r| search::summary(r, 0.0))
                    .collect(),
            },
            ClientCall::ShowServable { name } => match self.catalog.record_for(&name, &sees) {
                Ok(r) => ClientReply::Servable(Box::new((*r).clone())),
                Err(e) => refusal(e),
            },
            ClientCall::ServableVersions { name } => match self.catalog.versions(&name, &sees) {
                Ok(versions) => ClientReply::Versions { versions },
                Err(e) => refusal(e),
            },
            ClientCall::SearchServables(query) => ClientReply::Servables {
                servables: search::search(
                    self.catalog.latest().filter(|r| sees(r)).map(|r| &**r),
                    &query,
                ),
            },
            ClientCall::RemoveServable { id } => return self.on_remove(from, caller, &id, out),
            ClientCall::SetServableAccess { name, access } => {
                return self.on_set_access(from, caller, &name, &access, out);
            }
            ClientCall::MemoStats => {
                let mut stats = self.memo.store.report();
                // Entries of servables the caller may not see are neither
                // named nor counted.
                stats
                    .per_servable
                    .retain(|(id, _, _)| self.catalog.sees_id(id, &sees));
                if !access::is_admin(caller, owner) {
                    stats.entries = stats.per_servable.iter().map(|(_, n, _)| n).sum();
                    stats.bytes = stats.per_servable.iter().map(|(_, _, b)| b).sum();
                }
                ClientReply::MemoStats(stats)
            }
            ClientCall::MemoClear { servable } => {
                return self.on_memo_clear(from, servable.as_deref(), out);
            }
            ClientCall::ListTasks(query) => {
                ClientReply::TaskList(self.tasks.list(&query, scope, now))
            }
            ClientCall::Settled { ids, wait_ms } => {
                let pending = self.tasks.unfinished(&ids, scope);
                match wait_ms {
                    Some(ms)
                        if pending == ids.len()
                            && !ids.is_empty()
                            && self.life.draining.is_none() =>
                    {
                        let until = deadline(now, ms);
                        return self.add_wait(from, scope, ids, 1, until, 0, true);
                    }
                    _ => self.settled_reply(&ids, scope, now),
                }
            }
            ClientCall::TaskEvents {
                after,
                wait_ms,
                filter,
            } => {
                let wait = wait_ms.map(|ms| ms.saturating_mul(1000));
                let query = task_events::Query {
                    after,
                    scope,
                    filter,
                };
                return self.fleet.task_events.query(from, query, wait, now, out);
            }
        };
        out.push(Action::ReplyClient { to: from, reply });
    }

    /// The refusal of a call only the daemon's user may make (stop, pool
    /// resume, memo clear, the fleet's events) from anybody else.
    fn admin_only(&self, caller: &Caller, call: &ClientCall) -> Option<ClientReply> {
        let what = match call {
            ClientCall::Stop => "stop the daemon",
            ClientCall::ResumePool { .. } => "resume a pool",
            ClientCall::MemoClear { .. } => "clear memo entries",
            ClientCall::Events { .. } => "read the pool and worker events",
            _ => return None,
        };
        (!access::is_admin(caller, self.cfg.owner_uid)).then(|| {
            refuse(
                ApiErrorKind::Forbidden,
                format!(
                    "only the daemon's user (uid {}) may {what}; you are uid {}",
                    self.cfg.owner_uid, caller.uid
                ),
            )
        })
    }

    fn on_submit(
        &mut self,
        from: ReplyTo,
        caller: &Caller,
        requests: Vec<TaskRequest>,
        wait_ms: Option<u64>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let refusal = if self.life.draining.is_some() {
            Some(refuse(
                ApiErrorKind::ShuttingDown,
                "the daemon is shutting down and accepts no new tasks".into(),
            ))
        } else if let Some(reason) = &self.replies.store_failed {
            Some(refuse(
                ApiErrorKind::Unavailable,
                format!("the daemon cannot store new tasks: {reason}"),
            ))
        } else if requests.is_empty() {
            Some(refuse(
                ApiErrorKind::BadRequest,
                "no tasks in the request".into(),
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            out.push(Action::ReplyClient { to: from, reply });
            return;
        }
        // Check everything first: the request is all-or-nothing.
        let resolved = match self.check_requests(caller, &requests) {
            Ok(r) => r,
            Err(reply) => {
                out.push(Action::ReplyClient { to: from, reply });
                return;
            }
        };
        let n = requests.len() as u64;
        let (first, reserve) = self.tasks.allocate(n, ID_RESERVATION);
        let mut seq = 0;
        if let Some(until) = reserve {
            seq = self.persist(StoreOp::ReserveIds { until }, out);
        }
        let mut new = Vec::with_capacity(requests.len());
        let mut ids = Vec::with_capacity(requests.len());
        let mut hits = Vec::new();
        for ((offset, req), info) in requests.into_iter().enumerate().zip(resolved) {
            let id = TaskId(first + offset as u64);
            self.sched.ensure_adaptive(&info);
            self.tally.accepted(&info.name);
            let mut task = Task::new(&info, caller.uid, req.params, req.input, now);
            new.push(NewTask {
                id,
                servable: info.name.clone(),
                params: task.params.clone(),
                input: task.input.clone(),
                submitted_us: now,
                owner: caller.uid,
            });
            ids.push(id);
            if info.memoize {
                let scope = memo::MemoScope::of(info.record.as_deref(), caller.uid);
                let key = memo::key(scope, &info.name, &task.input, &task.params);
                task.memo_key = Some(key);
                if let Some(output) = self.memo.store.get(&key) {
                    self.memo.store.stats.hits += 1;
                    self.tally.memo(&info.name, true);
                    task.memo = Some(MemoUse::Stored);
                    self.tasks.enqueue(id, task);
                    hits.push((id, output));
                    continue;
                }
                self.memo.store.stats.misses += 1;
                self.tally.memo(&info.name, false);
            }
            self.enqueue_and_place(id, task, now);
        }
        self.tasks.count_accepted(n);
        seq = seq.max(self.persist(StoreOp::PutTasks(new), out));
        // Memo hits are final at once: no worker touches them.
        for (id, output) in hits {
            self.finish(
                id,
                Ending::Completed,
                Outcome::Output(output),
                None,
                0,
                now,
                out,
            );
        }
        seq = seq.max(self.flush_records(out));
        match wait_ms {
            Some(ms) => {
                let scope = TaskScope::of(caller, self.cfg.owner_uid);
                let pending = self.tasks.unfinished(&ids, scope);
                if pending == 0 {
                    let reply = self.results_reply(&ids, scope, now);
                    self.replies
                        .durability
                        .reply_after(seq, from, reply, now, out);
                } else {
                    self.add_wait(from, scope, ids, pending, deadline(now, ms), seq, false);
                }
            }
            None => {
                let reply = ClientReply::Submitted { ids };
                self.replies
                    .durability
                    .reply_after(seq, from, reply, now, out)
            }
        }
    }

    /// Resolves every request's servable and checks inputs where the
    /// servable asks for it; the first problem (in the requests' order)
    /// refuses the whole request.
    fn check_requests(
        &self,
        caller: &Caller,
        requests: &[TaskRequest],
    ) -> Result<Vec<ServableInfo>, ClientReply> {
        let owner = self.cfg.owner_uid;
        let sees = |r: &ServableRecord| access::may_see_record(caller, r, owner);
        let many = requests.len() > 1;
        let place = |index: usize| {
            if many {
                format!("task {} of {}: ", index + 1, requests.len())
            } else {
                String::new()
            }
        };
        let mut resolved: Vec<ServableInfo> = Vec::with_capacity(requests.len());
        let mut last: Option<(&str, ServableInfo, usize)> = None;
        // Resolving stops at the first request that cannot be taken; inputs
        // before it are still checked, since one of them may fail first.
        let mut refused: Option<ClientReply> = None;
        for (index, req) in requests.iter().enumerate() {
            let (info, room) = match &last {
                Some((name, info, room)) if *name == req.servable => (info.clone(), *room),
                _ => match self.catalog.resolve_for(&req.servable, &sees) {
                    Ok(info) => {
                        let room = self.room_for_one_input(&info);
                        last = Some((&req.servable, info.clone(), room));
                        (info, room)
                    }
                    Err((kind, m)) => {
                        refused = Some(refuse(
                            kind_for_submit(kind),
                            format!("{}{m}", place(index)),
                        ));
                        break;
                    }
                },
            };
            let size = work_size::item_size(req.input.len()) + req.params.len();
            if size > room {
                refused = Some(refuse(
                    ApiErrorKind::BadRequest,
                    format!(
                        "{}input of {} bytes{} exceeds the daemon's frame limit of {} bytes ([daemon] max_frame_bytes): no worker could be sent it",
                        place(index),
                        req.input.len(),
                        if req.params.is_empty() {
                            String::new()
                        } else {
                            format!(" (with {} bytes of parameters)", req.params.len())
                        },
                        self.cfg.max_frame_bytes
                    ),
                ));
                break;
            }
            if info.steps.is_some() && !req.params.is_empty() {
                refused = Some(refuse(
                    ApiErrorKind::BadRequest,
                    format!(
                        "{}pipeline `{}` takes no parameters",
                        place(index),
                        info.name
                    ),
                ));
                break;
            }
            resolved.push(info);
        }
        let checks: Vec<(usize, &TypeSpec, &[u8])> = resolved
            .iter()
            .zip(requests)
            .enumerate()
            .filter_map(|(index, (info, req))| {
                let spec = info.input_check.as_deref().or_else(|| {
                    info.steps
                        .as_ref()
                        .and_then(|s| s[0].input_check.as_deref())
                })?;
                Some((index, spec, &req.input[..]))
            })
            .collect();
        if let Some((index, e)) = flotilla_protocol::servable::first_mismatch(&checks) {
            return Err(refuse(
                ApiErrorKind::BadRequest,
                format!("{}{}: {e}", place(index), resolved[index].name),
            ));
        }
        match refused {
            Some(reply) => Err(reply),
            None => Ok(resolved),
        }
    }

    /// Bytes left for one input and its parameters in the largest `Work`
    /// frame any worker can be sent (`[daemon] max_frame_bytes`), with the
    /// batch around it and the servable's record that goes with a worker's
    /// first batch of it.
    fn room_for_one_input(&self, info: &ServableInfo) -> usize {
        let first = info.steps.as_ref().and_then(|s| s.first()).unwrap_or(info);
        let batch = work_size::batch_size(&first.name, 0, first.record.as_deref());
        self.cfg
            .max_frame_bytes
            .saturating_sub(work_size::FRAME_OVERHEAD + batch)
    }

    /// Cancels those of `ids` in `scope` that are not final yet; the others
    /// of the caller's keep their state, and the rest are unknown to it.
    fn on_cancel(
        &mut self,
        from: ReplyTo,
        scope: TaskScope,
        ids: Vec<TaskId>,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let mut states = Vec::with_capacity(ids.len());
        let mut changed = false;
        for id in ids {
            let state = match self.tasks.get_in(&id, scope) {
                None => TaskState::Unknown,
                Some(t) if t.is_final() => t.state(),
                Some(t) => {
                    if t.is_queued() {
                        self.sched.queues.remove(&t.queue_key(), id);
                    }
                    if let Some(inflight) = t.memo_key.and_then(|k| self.memo.inflight.get_mut(&k))
                    {
                        inflight.followers.retain(|f| *f != id);
                    }
                    let outcome = Outcome::Error("cancelled by a client".into());
                    self.finish(id, Ending::Cancelled, outcome, None, 0, now, out);
                    changed = true;
                    TaskState::Cancelled
                }
            };
            states.push((id, state));
        }
        let reply = ClientReply::Cancelled { tasks: states };
        if changed {
            let seq = self.flush_records(out);
            self.replies
                .durability
                .reply_after(seq, from, reply, now, out);
        } else {
            out.push(Action::ReplyClient { to: from, reply });
        }
    }

    fn on_memo_clear(&mut self, from: ReplyTo, servable: Option<&str>, out: &mut Vec<Action>) {
        let removed = self.memo.store.clear(servable);
        let reply = ClientReply::MemoCleared {
            removed: removed.len() as u64,
        };
        tracing::info!(
            servable = servable.unwrap_or(ANY_SERVABLE_WIRE),
            removed = removed.len(),
            "memo cleared"
        );
        if removed.is_empty() {
            out.push(Action::ReplyClient { to: from, reply });
        } else {
            let seq = self.persist(StoreOp::RemoveMemo(removed), out);
            self.replies
                .durability
                .reply_after(seq, from, reply, 0, out);
        }
    }

    fn on_publish(
        &mut self,
        from: ReplyTo,
        caller: &Caller,
        mut record: ServableRecord,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        if let Err(e) = crate::servable_spec::check_record(&record) {
            let reply = refuse(ApiErrorKind::BadRequest, e.to_string());
            return out.push(Action::ReplyClient { to: from, reply });
        }
        let owner = self.cfg.owner_uid;
        let name = record.spec.name.clone();
        let existing = self
            .catalog
            .latest_of(&name)
            .map(|r| r.access_or_default(owner));
        let granted = match access::on_publish(
            caller,
            &name,
            existing.as_ref(),
            record.access.as_ref(),
            owner,
        ) {
            Ok(a) => a,
            Err(denial) => {
                tracing::info!(servable = %name, uid = caller.uid, reason = %denial, "publication refused");
                let reply = refuse(ApiErrorKind::Forbidden, denial.to_string());
                return out.push(Action::ReplyClient { to: from, reply });
            }
        };
        record.published_us = now;
        record.access = Some(granted.clone());
        let id = record.id();
        let stored = record.clone();
        let sees = |r: &ServableRecord| access::may_see_record(caller, r, owner);
        let created = match self.catalog.publish(record, &sees) {
            Ok(created) => created,
            Err(e) => {
                return out.push(Action::ReplyClient {
                    to: from,
                    reply: refusal(e),
                });
            }
        };
        let mut seq = None;
        if created {
            tracing::info!(servable = %id, owner = ?granted.owner, visibility = granted.visibility.as_str(), "published");
            seq = Some(self.persist(StoreOp::PutServable(Box::new(stored)), out));
        }
        // The access is the servable's: the other versions take it too.
        if let Some(last) = self.apply_access(&name, &granted, out) {
            seq = Some(last);
        }
        let reply = ClientReply::Published { id, created };
        match seq {
            Some(seq) => self
                .replies
                .durability
                .reply_after(seq, from, reply, now, out),
            None => out.push(Action::ReplyClient { to: from, reply }),
        }
    }

    /// Gives every version of `name` the access `granted` (persisting
    /// those that change); the sequence number of the last write, if any.
    fn apply_access(
        &mut self,
        name: &str,
        granted: &flotilla_protocol::access::Access,
        out: &mut Vec<Action>,
    ) -> Option<u64> {
        let mut seq = None;
        for version in self.catalog.versions_of(name) {
            if version.access.as_ref() == Some(granted) {
                continue;
            }
            let mut changed = (*version).clone();
            changed.access = Some(granted.clone());
            if self.catalog.replace(changed.clone()) {
                seq = Some(self.persist(StoreOp::PutServable(Box::new(changed)), out));
            }
        }
        seq
    }

    /// The record of `requested` if `caller` may change it: refused as
    /// unknown when the caller may not see it, as forbidden when it may see
    /// but not change it.
    fn managed_record(
        &self,
        caller: &Caller,
        requested: &str,
        what: &str,
    ) -> Result<std::sync::Arc<ServableRecord>, ClientReply> {
        let owner = self.cfg.owner_uid;
        let sees = |r: &ServableRecord| access::may_see_record(caller, r, owner);
        let record = self.catalog.record_for(requested, &sees).map_err(refusal)?;
        let current = record.access_or_default(owner);
        if !access::may_manage(caller, &current, owner) {
            tracing::info!(servable = %record.id(), uid = caller.uid, "change refused: not the owner");
            return Err(refuse(
                ApiErrorKind::Forbidden,
                format!(
                    "only the owner of `{}` (uid {}) may {what} it; you are uid {}",
                    record.spec.name,
                    current.owner.unwrap_or(owner),
                    caller.uid
                ),
            ));
        }
        Ok(record)
    }

    fn on_set_access(
        &mut self,
        from: ReplyTo,
        caller: &Caller,
        name: &str,
        requested: &flotilla_protocol::access::Access,
        out: &mut Vec<Action>,
    ) {
        let base = name.split_once('@').map_or(name, |(base, _)| base);
        let record = match self.managed_record(caller, base, "change the access of") {
            Ok(r) => r,
            Err(reply) => return out.push(Action::ReplyClient { to: from, reply }),
        };
        let owner = self.cfg.owner_uid;
        let granted = access::changed(&record.access_or_default(owner), requested, owner);
        tracing::info!(servable = base, visibility = granted.visibility.as_str(), users = ?granted.users, groups = ?granted.groups, shared_memo = granted.shared_memo, "access changed");
        let reply = ClientReply::Access {
            name: base.to_owned(),
            access: granted.clone(),
        };
        match self.apply_access(base, &granted, out) {
            Some(seq) => self
                .replies
                .durability
                .reply_after(seq, from, reply, 0, out),
            None => out.push(Action::ReplyClient { to: from, reply }),
        }
    }

    fn on_remove(&mut self, from: ReplyTo, caller: &Caller, id: &str, out: &mut Vec<Action>) {
        let record = match self.managed_record(caller, id, "remove") {
            Ok(r) if matches!(ServableRef::parse(id), Ok(ServableRef::Exact { .. })) => r,
            Ok(_) => {
                let reply = refuse(
                    ApiErrorKind::BadRequest,
                    format!("say which version to remove: `{id}@VERSION`"),
                );
                return out.push(Action::ReplyClient { to: from, reply });
            }
            Err(reply) => return out.push(Action::ReplyClient { to: from, reply }),
        };
        let canonical = record.id();
        let waiting = self
            .tasks
            .iter()
            .filter(|t| !t.is_final() && t.uses(&canonical))
            .count();
        let users = self.catalog.pipelines_using(&canonical);
        let reply = if waiting > 0 {
            refuse(
                ApiErrorKind::Conflict,
                format!(
                    "{canonical} has {waiting} unfinished task(s); cancel them or wait before removing it"
                ),
            )
        } else if !users.is_empty() {
            refuse(
                ApiErrorKind::Conflict,
                format!(
                    "{canonical} is a step of {}; remove those pipelines first",
                    users.join(", ")
                ),
            )
        } else {
            match self.catalog.remove(&canonical) {
                Ok(_) => {
                    tracing::info!(servable = %canonical, "removed");
                    let seq = self.persist(StoreOp::RemoveServable(canonical.clone()), out);
                    let reply = ClientReply::Removed { id: canonical };
                    return self
                        .replies
                        .durability
                        .reply_after(seq, from, reply, 0, out);
                }
                Err(e) => refusal(e),
            }
        };
        out.push(Action::ReplyClient { to: from, reply });
    }
}

/// An unknown servable in a submission is the client's mistake.
fn kind_for_submit(kind: ApiErrorKind) -> ApiErrorKind {
    match kind {
        ApiErrorKind::NotFound => ApiErrorKind::BadRequest,
        other => other,
    }
}
