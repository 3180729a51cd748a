//! Watching bulk work: task lists from the indexes, waits answered as
//! each task settles, and the task event stream, each within the caller's
//! own tasks.

use super::*;
use flotilla_protocol::watch::{Settled, TaskEventFilter, TaskEventView, TaskList, TaskQuery};

fn admin() -> Caller {
    Caller::daemon_user(DAEMON_UID)
}

fn list(h: &mut Harness, caller: &Caller, query: TaskQuery) -> TaskList {
    match h.call_as(caller, ClientCall::ListTasks(query)) {
        ClientReply::TaskList(list) => list,
        other => panic!("{other:?}"),
    }
}

fn ids_of(list: &TaskList) -> Vec<TaskId> {
    list.tasks.iter().map(|t| t.id).collect()
}

fn submit_as(h: &mut Harness, caller: &Caller, servable: &str, n: usize) -> Vec<TaskId> {
    match h.call_as(
        caller,
        ClientCall::Submit {
            tasks: (0..n).map(|_| request(servable)).collect(),
            wait_ms: None,
        },
    ) {
        ClientReply::Submitted { ids } => ids,
        other => panic!("{other:?}"),
    }
}

/// Runs everything queued on one worker; tasks in `fail` fail.
fn run_all(h: &mut Harness, fail: &[TaskId]) {
    h.hello(1, "w1", 4);
    loop {
        let (poll, out) = h.poll(1);
        let batches = match worker_reply(&out, poll) {
            Some(DaemonMessage::Work { batches }) if !batches.is_empty() => batches,
            _ => break,
        };
        let results = batches
            .iter()
            .map(|b| BatchResult {
                batch: b.id,
                run_us: 1,
                received_us: 0,
                sent_us: 0,
                failure: None,
                outcomes: b
                    .items
                    .iter()
                    .map(|i| {
                        let outcome = if fail.contains(&i.task) {
                            Outcome::Error("bad input".into())
                        } else {
                            Outcome::Output(Payload::from_static(NIL))
                        };
                        (i.task, outcome)
                    })
                    .collect(),
            })
            .collect();
        h.pull(1, results, false);
    }
    h.flush();
}

#[test]
fn a_list_by_state_and_servable_is_exact_newest_first_and_paged() {
    let mut h = Harness::new();
    let noop = submit_as(&mut h, &admin(), "noop", 3);
    let echo = submit_as(&mut h, &admin(), "echo", 4);
    run_all(&mut h, &[noop[1], echo[0], echo[2]]);
    let failed_echo = list(
        &mut h,
        &admin(),
        TaskQuery {
            states: vec![TaskState::Failed],
            servable: Some("echo".into()),
            limit: 100,
            ..TaskQuery::default()
        },
    );
    assert_eq!(ids_of(&failed_echo), [echo[2], echo[0]]);
    assert!(!failed_echo.more);
    assert!(failed_echo.counts.contains(&(TaskState::Completed, 2)));
    assert!(failed_echo.counts.contains(&(TaskState::Failed, 2)));
    // Pages: two at a time, then on from the last id.
    let all = TaskQuery {
        limit: 2,
        ..TaskQuery::default()
    };
    let first = list(&mut h, &admin(), all.clone());
    assert_eq!(ids_of(&first), [echo[3], echo[2]]);
    assert!(first.more);
    let next = list(
        &mut h,
        &admin(),
        TaskQuery {
            before: Some(echo[2]),
            ..all
        },
    );
    assert_eq!(ids_of(&next), [echo[1], echo[0]]);
    // Queued and running tasks are listed under their states too.
    let fresh = submit_as(&mut h, &admin(), "noop", 1);
    let queued = list(
        &mut h,
        &admin(),
        TaskQuery {
            states: vec![TaskState::Queued, TaskState::Running],
            limit: 10,
            ..TaskQuery::default()
        },
    );
    assert_eq!(ids_of(&queued), fresh);
}

#[test]
fn a_list_shows_only_the_caller_s_tasks_and_since_cuts_old_ones() {
    let mut h = Harness::new();
    let old = submit_as(&mut h, &alice(), "noop", 2);
    h.advance(3_600 * SEC);
    let mine = submit_as(&mut h, &alice(), "noop", 1);
    let theirs = submit_as(&mut h, &admin(), "noop", 2);
    let everything = TaskQuery {
        limit: 100,
        ..TaskQuery::default()
    };
    let seen = list(&mut h, &alice(), everything.clone());
    assert_eq!(ids_of(&seen), [mine[0], old[1], old[0]]);
    assert!(seen.counts.contains(&(TaskState::Queued, 3)), "{seen:?}");
    let all = list(&mut h, &admin(), everything.clone());
    assert_eq!(all.tasks.len(), 5, "the daemon's user sees every task");
    assert_eq!(all.tasks[0].id, theirs[1]);
    let recent = list(
        &mut h,
        &alice(),
        TaskQuery {
            max_age_ms: Some(60_000),
            ..everything
        },
    );
    assert_eq!(ids_of(&recent), mine);
}

#[test]
fn the_index_is_rebuilt_from_the_store_after_a_restart() {
    let stored = |servable: &str| StoredTask {
        servable: servable.into(),
        params: Payload::new(),
        input: Payload::from_static(NIL),
        submitted_us: 5,
        owner: Some(2001),
    };
    let failed = StoredResult {
        state: TaskState::Failed,
        outcome: Outcome::Error("boom".into()),
        attempts: 1,
        worker: None,
        timings: TaskTimings::default(),
        memo: None,
    };
    let recovered = Recovered {
        tasks: vec![
            (TaskId(10), stored("noop"), Some(failed)),
            (TaskId(11), stored("noop"), None),
        ],
        reserved_until: 100_010,
        ..Recovered::default()
    };
    let mut h = Harness::with(config(), recovered);
    h.core.start(h.now, &mut Vec::new());
    let query = |state| TaskQuery {
        states: vec![state],
        limit: 10,
        ..TaskQuery::default()
    };
    let failed = list(&mut h, &alice(), query(TaskState::Failed));
    assert_eq!(ids_of(&failed), [TaskId(10)]);
    let queued = list(&mut h, &alice(), query(TaskState::Queued));
    assert_eq!(ids_of(&queued), [TaskId(11)]);
    // Recovered tasks were accepted before: no events for them.
    assert!(task_events(&mut h, &admin(), 0, TaskEventFilter::default()).is_empty());
}

fn settled(h: &mut Harness, ids: &[TaskId], wait: bool) -> (ReplyTo, Vec<Action>) {
    h.call(ClientCall::Settled {
        ids: ids.to_vec(),
        wait_ms: wait.then_some(60_000),
    })
}

fn settled_in(out: &[Action], to: ReplyTo) -> Option<Settled> {
    match client_reply(out, to) {
        Some(ClientReply::Settled(s)) => Some(s),
        None => None,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wait_on_many_tasks_is_answered_by_the_first_batch_that_settles() {
    let mut h = Harness::new();
    let mut ids = h.submit("noop", 2);
    ids.extend(h.submit("echo", 1));
    let (to, out) = settled(&mut h, &ids, true);
    assert!(settled_in(&out, to).is_none(), "held: nothing settled yet");
    h.hello(1, "w1", 2);
    let (poll, out) = h.poll(1);
    let batches = work_in(&out, poll);
    assert_eq!(batches.len(), 2, "one batch per servable");
    let noop = batches
        .iter()
        .find(|b| b.items[0].task == ids[0])
        .expect("the noop batch");
    assert_eq!(noop.items.len(), 2);
    // The noop batch's result settles two tasks: one reply carries both.
    let (_, out) = h.pull(1, vec![all_ok(noop)], false);
    let s = settled_in(&out, to).expect("answered once two settled");
    let done: Vec<TaskId> = s.done.iter().map(|t| t.id).collect();
    assert_eq!(done, ids[..2]);
    assert!(s.done.iter().all(|t| t.outcome.is_some()), "with outcomes");
    assert_eq!(s.running, 1);
    // Asked at once when something is settled; unknown ids count as
    // settled so a wait on them never hangs.
    let (to, out) = settled(&mut h, &[ids[2], TaskId(999_999)], true);
    let s = settled_in(&out, to).expect("answered at once");
    assert_eq!(s.done.len(), 1);
    assert_eq!(s.done[0].state, TaskState::Unknown);
    assert_eq!(s.running, 1);
    // A wait that passes answers with how things stand.
    let (to, out) = settled(&mut h, &[ids[2]], true);
    assert!(settled_in(&out, to).is_none());
    let out = h.advance(61 * SEC);
    let s = settled_in(&out, to).expect("answered when the wait passed");
    assert!(s.done.is_empty());
    // (Its silent worker is lost by now: the task may be queued again.)
    assert_eq!(s.queued + s.running, 1);
}

#[test]
fn an_answered_wait_leaves_nothing_behind_on_the_other_tasks() {
    let mut h = Harness::new();
    let ids = h.submit("noop", 2);
    let (to, _) = settled(&mut h, &ids, true);
    let out = h.ev(Event::Client {
        from: ReplyTo(9_999),
        caller: admin(),
        call: ClientCall::Cancel { ids: vec![ids[0]] },
    });
    assert!(settled_in(&out, to).is_some());
    // The second task's end wakes nobody: the wait was taken off it.
    let out = h.ev(Event::Client {
        from: ReplyTo(9_998),
        caller: admin(),
        call: ClientCall::Cancel { ids: vec![ids[1]] },
    });
    assert!(settled_in(&out, to).is_none());
    assert!(h.core.tasks.get(&ids[1]).is_some());
}

fn task_events(
    h: &mut Harness,
    caller: &Caller,
    after: u64,
    filter: TaskEventFilter,
) -> Vec<TaskEventView> {
    match h.call_as(
        caller,
        ClientCall::TaskEvents {
            after,
            wait_ms: None,
            filter,
        },
    ) {
        ClientReply::TaskEvents { events, .. } => events,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retried_task_shows_each_step_in_order_to_its_owner_only() {
    let mut h = Harness::new();
    let id = submit_as(&mut h, &alice(), "sleep", 1)[0];
    let other = submit_as(&mut h, &admin(), "noop", 1)[0];
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    assert!(!work_in(&out, poll).is_empty());
    h.ev(Event::PipeClosed { pipe: PipeId(1) });
    h.hello(2, "w2", 2);
    loop {
        let (poll, out) = h.poll(2);
        let batches = match worker_reply(&out, poll) {
            Some(DaemonMessage::Work { batches }) if !batches.is_empty() => batches,
            _ => break,
        };
        h.pull(2, batches.iter().map(all_ok).collect(), false);
    }
    let only_it = TaskEventFilter {
        servable: None,
        ids: vec![(id.0, id.0)],
    };
    let events = task_events(&mut h, &alice(), 0, only_it);
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "accepted",
            "dispatched",
            "retried",
            "dispatched",
            "finished"
        ]
    );
    assert_eq!(events[1].worker.as_deref(), Some("w1"));
    assert!(events[2].message.contains("w1"), "{:?}", events[2]);
    assert!(events[2].message.contains("was lost"), "{:?}", events[2]);
    assert_eq!(events[3].worker.as_deref(), Some("w2"));
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    // Alice never sees the daemon user's task; the daemon's user sees both.
    let hers = task_events(&mut h, &alice(), 0, TaskEventFilter::default());
    assert!(hers.iter().all(|e| e.task == id));
    let all = task_events(&mut h, &admin(), 0, TaskEventFilter::default());
    assert!(all.iter().any(|e| e.task == other));
    let by_servable = TaskEventFilter {
        servable: Some("noop".into()),
        ids: vec![],
    };
    let noop = task_events(&mut h, &admin(), 0, by_servable);
    assert!(!noop.is_empty() && noop.iter().all(|e| e.task == other));
}
