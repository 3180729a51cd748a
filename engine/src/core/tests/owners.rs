//! Tasks belong to their submitter: anybody else naming one gets the answer
//! for an id never handed out, and the daemon's user sees and manages
//! everything. The status shows others only the queues of servables they
//! may see, and no fleet.

use super::*;
use flotilla_protocol::access::Visibility;
use flotilla_protocol::interchange::{SlotWarmth, WarmProcessInfo};

/// An id no test here hands out.
const NEVER: TaskId = TaskId(999_999);

fn admin() -> Caller {
    Caller::daemon_user(DAEMON_UID)
}

/// Submits one request to `servable` as `caller`; its id.
fn submit_as(h: &mut Harness, caller: &Caller, servable: &str) -> TaskId {
    match h.call_as(
        caller,
        ClientCall::Submit {
            tasks: vec![request(servable)],
            wait_ms: None,
        },
    ) {
        ClientReply::Submitted { ids } => ids[0],
        other => panic!("{other:?}"),
    }
}

/// `reply` with task id `from` written as `to`: a reply about a hidden
/// task made comparable with one about an unknown id.
fn renamed(reply: ClientReply, from: TaskId, to: TaskId) -> ClientReply {
    let fix = |mut v: TaskView| {
        if v.id == from {
            v.id = to;
        }
        v
    };
    match reply {
        ClientReply::Results { tasks } => ClientReply::Results {
            tasks: tasks.into_iter().map(fix).collect(),
        },
        ClientReply::TaskStatus { tasks } => ClientReply::TaskStatus {
            tasks: tasks.into_iter().map(fix).collect(),
        },
        ClientReply::Cancelled { tasks } => ClientReply::Cancelled {
            tasks: tasks
                .into_iter()
                .map(|(id, s)| (if id == from { to } else { id }, s))
                .collect(),
        },
        other => other,
    }
}

/// Every call that names task ids, about `id`.
fn calls_about(id: TaskId) -> Vec<ClientCall> {
    vec![
        ClientCall::Results {
            ids: vec![id],
            wait_ms: None,
        },
        // A wait on somebody else's task is answered at once (it waits on
        // nothing): `call_as` needs a reply.
        ClientCall::Results {
            ids: vec![id],
            wait_ms: Some(60_000),
        },
        ClientCall::TaskStatus { ids: vec![id] },
        ClientCall::Cancel { ids: vec![id] },
    ]
}

fn state_as(h: &mut Harness, caller: &Caller, id: TaskId) -> TaskState {
    match h.call_as(caller, ClientCall::TaskStatus { ids: vec![id] }) {
        ClientReply::TaskStatus { tasks } => tasks[0].state,
        other => panic!("{other:?}"),
    }
}

#[test]
fn another_users_task_is_answered_exactly_as_an_unknown_id() {
    let mut h = Harness::new();
    // One of Alice's tasks finishes, another stays queued.
    let done = submit_as(&mut h, &alice(), "noop");
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll)[0].clone();
    h.pull(1, vec![all_ok(&batch)], false);
    h.flush();
    let queued = submit_as(&mut h, &alice(), "echo");
    assert_eq!(state_as(&mut h, &alice(), done), TaskState::Completed);
    for id in [done, queued] {
        for call in calls_about(id) {
            let hidden = renamed(h.call_as(&bob(), call.clone()), id, NEVER);
            let unknown = h.call_as(&bob(), renamed_call(call, id, NEVER));
            assert_eq!(hidden, unknown, "task {id:?}: {hidden:?}");
        }
    }
    // Bob's cancel touched nothing, and his fetch did not take the result.
    assert_eq!(state_as(&mut h, &alice(), queued), TaskState::Queued);
    match h.call_as(
        &alice(),
        ClientCall::Results {
            ids: vec![done],
            wait_ms: None,
        },
    ) {
        ClientReply::Results { tasks } => {
            assert_eq!(tasks[0].state, TaskState::Completed);
            assert!(tasks[0].outcome.is_some(), "{tasks:?}");
        }
        other => panic!("{other:?}"),
    }
    // Alice cancels her own.
    match h.call_as(&alice(), ClientCall::Cancel { ids: vec![queued] }) {
        ClientReply::Cancelled { tasks } => assert_eq!(tasks, [(queued, TaskState::Cancelled)]),
        other => panic!("{other:?}"),
    }
}

/// `call` with task id `from` written as `to`.
fn renamed_call(call: ClientCall, from: TaskId, to: TaskId) -> ClientCall {
    let fix = |ids: Vec<TaskId>| {
        ids.into_iter()
            .map(|id| if id == from { to } else { id })
            .collect()
    };
    match call {
        ClientCall::Results { ids, wait_ms } => ClientCall::Results {
            ids: fix(ids),
            wait_ms,
        },
        ClientCall::TaskStatus { ids } => ClientCall::TaskStatus { ids: fix(ids) },
        ClientCall::Cancel { ids } => ClientCall::Cancel { ids: fix(ids) },
        other => other,
    }
}

#[test]
fn the_daemon_user_sees_and_cancels_every_task() {
    let mut h = Harness::new();
    let id = submit_as(&mut h, &bob(), "noop");
    assert_eq!(state_as(&mut h, &admin(), id), TaskState::Queued);
    assert_eq!(state_as(&mut h, &alice(), id), TaskState::Unknown);
    match h.call_as(&admin(), ClientCall::Cancel { ids: vec![id] }) {
        ClientReply::Cancelled { tasks } => assert_eq!(tasks, [(id, TaskState::Cancelled)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(state_as(&mut h, &bob(), id), TaskState::Cancelled);
}

#[test]
fn a_wait_counts_only_the_callers_own_tasks() {
    let mut h = Harness::new();
    let hers = submit_as(&mut h, &alice(), "noop");
    let his = submit_as(&mut h, &bob(), "echo");
    // Bob waits on both: only his own holds the reply.
    let from = h.reply_to();
    let out = h.ev(Event::Client {
        from,
        caller: bob(),
        call: ClientCall::Results {
            ids: vec![hers, his],
            wait_ms: Some(60_000),
        },
    });
    assert!(client_reply(&out, from).is_none(), "his task is queued");
    // Alice's task (the oldest) runs first: Bob's wait goes on.
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let first = work_in(&out, poll)[0].clone();
    assert_eq!(first.items[0].task, hers);
    let (poll, mut out) = h.pull(1, vec![all_ok(&first)], true);
    out.extend(h.flush());
    assert!(client_reply(&out, from).is_none(), "not released by hers");
    let second = work_in(&out, poll)[0].clone();
    assert_eq!(second.items[0].task, his);
    let (_, mut out) = h.pull(1, vec![all_ok(&second)], false);
    out.extend(h.flush());
    match client_reply(&out, from) {
        Some(ClientReply::Results { tasks }) => {
            // Stamped with the reply's time like every view, else unknown.
            let mut unknown = TaskView::unknown(hers);
            unknown.timings.replied_us = tasks[0].timings.replied_us;
            assert_eq!(tasks[0], unknown);
            assert_eq!(tasks[1].state, TaskState::Completed);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tasks_are_stored_with_their_submitter_and_old_ones_are_the_daemon_users() {
    let mut h = Harness::new();
    let (_, out) = h.call_as_out(
        &alice(),
        ClientCall::Submit {
            tasks: vec![request("noop")],
            wait_ms: None,
        },
    );
    let owners: Vec<u32> = out
        .iter()
        .flat_map(|a| match a {
            Action::Persist {
                op: StoreOp::PutTasks(t),
                ..
            } => t.iter().map(|t| t.owner).collect(),
            _ => vec![],
        })
        .collect();
    assert_eq!(owners, [alice().uid]);
    let stored = |owner: Option<u32>| StoredTask {
        servable: "noop".into(),
        params: Payload::new(),
        input: Payload::from_static(NIL),
        submitted_us: 5,
        owner,
    };
    let recovered = Recovered {
        tasks: vec![
            (TaskId(10), stored(None), None),
            (TaskId(11), stored(Some(alice().uid)), None),
        ],
        reserved_until: 100_010,
        ..Recovered::default()
    };
    let mut h = Harness::with(config(), recovered);
    assert_eq!(state_as(&mut h, &alice(), TaskId(10)), TaskState::Unknown);
    assert_eq!(state_as(&mut h, &bob(), TaskId(10)), TaskState::Unknown);
    assert_eq!(state_as(&mut h, &admin(), TaskId(10)), TaskState::Queued);
    assert_eq!(state_as(&mut h, &alice(), TaskId(11)), TaskState::Queued);
    assert_eq!(state_as(&mut h, &bob(), TaskId(11)), TaskState::Unknown);
}

fn status_as(h: &mut Harness, caller: &Caller) -> flotilla_protocol::client::DaemonStatus {
    match h.call_as(caller, ClientCall::DaemonStatus) {
        ClientReply::DaemonStatus(s) => *s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn others_see_the_queues_and_warm_processes_they_may_see_and_no_fleet() {
    let mut h = Harness::new();
    let publish = |h: &mut Harness, name: &str, visibility| {
        let reply = h.call_as(
            &alice(),
            ClientCall::Publish {
                record: Box::new(with_access(record(spec(name, "1.0.0")), visibility)),
            },
        );
        assert!(matches!(reply, ClientReply::Published { .. }), "{reply:?}");
    };
    publish(&mut h, "secret", Visibility::Owner);
    publish(&mut h, "open", Visibility::Public);
    submit_as(&mut h, &alice(), "secret");
    submit_as(&mut h, &alice(), "open");
    submit_as(&mut h, &bob(), "noop");
    h.exec_worker(1, "w1", 2);
    let warm = |servable: &str| SlotWarmth {
        warm: vec![WarmProcessInfo {
            servable: servable.into(),
            rss_kb: 1000,
        }],
        warming: None,
        orders_done: 0,
        failed: vec![],
    };
    let from = h.reply_to();
    h.ev(Event::Worker {
        from,
        pipe: PipeId(1),
        message: WorkerMessage::Slots {
            slots: vec![warm("secret@1.0.0"), warm("open@1.0.0")],
        },
    });
    let queues = |s: &flotilla_protocol::client::DaemonStatus| -> Vec<String> {
        s.queues.iter().map(|q| q.servable.clone()).collect()
    };
    let warm_of = |s: &flotilla_protocol::client::DaemonStatus| -> Vec<(String, String)> {
        s.warm
            .iter()
            .map(|w| (w.servable.clone(), w.worker.clone()))
            .collect()
    };

    let full = status_as(&mut h, &admin());
    assert!(!full.fleet_hidden);
    assert_eq!(queues(&full), ["noop", "open@1.0.0", "secret@1.0.0"]);
    assert_eq!(full.workers.len(), 1);
    assert_eq!(full.pools.len(), 1);
    assert!(!full.interchange.is_empty());
    assert_eq!(warm_of(&full).len(), 2);

    let theirs = status_as(&mut h, &bob());
    assert!(theirs.fleet_hidden);
    assert_eq!(queues(&theirs), ["noop", "open@1.0.0"]);
    assert!(theirs.workers.is_empty() && theirs.pools.is_empty() && theirs.blocks.is_empty());
    assert!(theirs.interchange.is_empty());
    assert_eq!(
        warm_of(&theirs),
        [("open@1.0.0".to_owned(), String::new())],
        "only what Bob may see, on no named worker"
    );
    assert_eq!(theirs.totals, full.totals);

    let owners = status_as(&mut h, &alice());
    assert_eq!(queues(&owners), ["noop", "open@1.0.0", "secret@1.0.0"]);
    assert!(
        owners.fleet_hidden,
        "a servable's owner is not the daemon's user"
    );
}

#[test]
fn the_fleets_events_are_the_daemon_users() {
    let mut h = Harness::new();
    let call = ClientCall::Events {
        after: 0,
        wait_ms: None,
    };
    let e = error_of(h.call_as(&bob(), call.clone()));
    assert_eq!(e.kind, ApiErrorKind::Forbidden);
    assert!(
        e.message
            .contains("only the daemon's user (uid 1000) may read the pool and worker events"),
        "{e}"
    );
    assert!(matches!(
        h.call_as(&admin(), call),
        ClientReply::Events { .. }
    ));
}
