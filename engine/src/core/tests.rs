//! Scenario tests of the scheduling core: events in, actions out, no I/O.

use super::*;
use crate::store::StoredTask;
use flotilla_protocol::task::NIL;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const SEC: u64 = 1_000_000;

fn config() -> CoreConfig {
    CoreConfig {
        heartbeat_period_us: 5 * SEC,
        heartbeat_threshold_us: 20 * SEC,
        shutdown_grace_us: 30 * SEC,
        result_retention_us: 600 * SEC,
        unfetched_result_retention_us: 3600 * SEC,
        max_attempts: 3,
        secret: SECRET.to_vec(),
        blocks: BlockPolicy {
            init_blocks: 0,
            min_blocks: 0,
            max_blocks: 1,
            max_failures: 3,
        },
        pid: 1,
        release: "test".into(),
        interchange: "tcp://127.0.0.1:1".into(),
    }
}

/// Drives a core and keeps the clock and the reply slots.
struct Harness {
    core: Core,
    now: u64,
    next_slot: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), Recovered::default())
    }

    fn with(cfg: CoreConfig, recovered: Recovered) -> Self {
        let now = 1_000 * SEC;
        Harness {
            core: Core::new(cfg, Servables::builtins(), recovered, now),
            now,
            next_slot: 0,
        }
    }

    fn slot(&mut self) -> ReplyTo {
        self.next_slot += 1;
        ReplyTo(self.next_slot)
    }

    fn ev(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.core.handle(event, self.now, &mut out);
        out
    }

    fn advance(&mut self, us: u64) -> Vec<Action> {
        self.now += us;
        self.ev(Event::Tick)
    }

    /// Confirms every store write so far and returns the released replies.
    fn flush(&mut self) -> Vec<Action> {
        let seq = self.core.issued_seq();
        self.ev(Event::Durable { seq })
    }

    fn call(&mut self, call: ClientCall) -> (ReplyTo, Vec<Action>) {
        let from = self.slot();
        let out = self.ev(Event::Client { from, call });
        (from, out)
    }

    fn submit(&mut self, servable: &str, n: usize) -> Vec<TaskId> {
        let (from, mut out) = self.call(ClientCall::Submit {
            tasks: (0..n).map(|_| request(servable)).collect(),
            wait_ms: None,
        });
        assert!(client_reply(&out, from).is_none(), "replied before durable");
        out.extend(self.flush());
        match client_reply(&out, from) {
            Some(ClientReply::Submitted { ids }) => ids,
            other => panic!("expected Submitted, got {other:?}"),
        }
    }

    fn hello(&mut self, pipe: u64, worker: &str, slots: u32) -> Vec<Action> {
        let from = self.slot();
        self.ev(Event::Worker {
            from,
            pipe: PipeId(pipe),
            message: WorkerMessage::Hello(hello(worker, slots, SECRET)),
        })
    }

    /// Sends a long-poll and returns (its slot, the actions).
    fn poll(&mut self, pipe: u64) -> (ReplyTo, Vec<Action>) {
        self.pull(pipe, vec![], true)
    }

    fn pull(&mut self, pipe: u64, results: Vec<BatchResult>, wait: bool) -> (ReplyTo, Vec<Action>) {
        let from = self.slot();
        let out = self.ev(Event::Worker {
            from,
            pipe: PipeId(pipe),
            message: WorkerMessage::Pull { results, wait },
        });
        (from, out)
    }

    fn state(&mut self, id: TaskId) -> TaskState {
        let (from, out) = self.call(ClientCall::TaskStatus { ids: vec![id] });
        match client_reply(&out, from) {
            Some(ClientReply::TaskStatus { tasks }) => tasks[0].state,
            other => panic!("{other:?}"),
        }
    }
}

fn request(servable: &str) -> TaskRequest {
    TaskRequest {
        servable: servable.into(),
        input: Payload::from_static(NIL),
        params: Payload::new(),
    }
}

fn hello(worker: &str, slots: u32, secret: &[u8]) -> Hello {
    Hello {
        worker_id: worker.into(),
        block_id: None,
        host: "localhost".into(),
        pid: 42,
        slots,
        servables: vec!["noop".into(), "echo".into(), "sleep".into()],
        secret: Payload::copy_from_slice(secret),
    }
}

fn client_reply(out: &[Action], to: ReplyTo) -> Option<ClientReply> {
    out.iter().find_map(|a| match a {
        Action::ReplyClient { to: t, reply } if *t == to => Some(reply.clone()),
        _ => None,
    })
}

fn worker_reply(out: &[Action], to: ReplyTo) -> Option<DaemonMessage> {
    out.iter().find_map(|a| match a {
        Action::ReplyWorker { to: t, message, .. } if *t == to => Some(message.clone()),
        _ => None,
    })
}

fn work_in(out: &[Action], to: ReplyTo) -> Vec<WorkBatch> {
    match worker_reply(out, to) {
        Some(DaemonMessage::Work { batches }) => batches,
        other => panic!("expected Work on {to:?}, got {other:?} in {out:#?}"),
    }
}

fn all_ok(batch: &WorkBatch) -> BatchResult {
    BatchResult {
        batch: batch.id,
        run_us: 7,
        outcomes: batch
            .items
            .iter()
            .map(|i| (i.task, Outcome::Output(Payload::from_static(NIL))))
            .collect(),
    }
}

fn persisted_results(out: &[Action]) -> Vec<TaskId> {
    out.iter()
        .flat_map(|a| match a {
            Action::Persist {
                op: StoreOp::PutResults(r),
                ..
            } => r.iter().map(|(id, _)| *id).collect(),
            _ => vec![],
        })
        .collect()
}

#[test]
fn accepted_is_only_said_after_the_store_flushed() {
    let mut h = Harness::new();
    let (from, out) = h.call(ClientCall::Submit {
        tasks: vec![request("noop"), request("echo")],
        wait_ms: None,
    });
    let persisted: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Persist {
                op: StoreOp::PutTasks(t),
                ..
            } => Some(t.len()),
            _ => None,
        })
        .collect();
    assert_eq!(persisted, [2], "one group write for the whole request");
    assert!(client_reply(&out, from).is_none());
    let out = h.flush();
    assert_eq!(
        client_reply(&out, from),
        Some(ClientReply::Submitted {
            ids: vec![TaskId(1), TaskId(2)]
        })
    );
}

#[test]
fn a_bad_task_refuses_the_whole_request_and_names_it() {
    let mut h = Harness::new();
    let (from, out) = h.call(ClientCall::Submit {
        tasks: vec![request("noop"), request("nope"), request("noop")],
        wait_ms: None,
    });
    match client_reply(&out, from) {
        Some(ClientReply::Error(e)) => {
            assert_eq!(e.kind, ApiErrorKind::BadRequest);
            assert!(
                e.message.contains("task 2 of 3") && e.message.contains("`nope`"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!out.iter().any(|a| matches!(a, Action::Persist { .. })));
    assert!(h.core.queues.is_empty());
}

#[test]
fn work_goes_to_a_polling_worker_in_batches_capped_by_servable_and_slots() {
    let mut h = Harness::new();
    h.submit("noop", 3000);
    h.submit("sleep", 3);
    h.hello(1, "w1", 2);
    let (poll, out) = h.poll(1);
    let batches = work_in(&out, poll);
    assert_eq!(batches.len(), 2, "one batch per free slot");
    assert_eq!(batches[0].servable, "noop");
    assert_eq!(batches[0].items.len(), 1024);
    assert_eq!(batches[1].items.len(), 1024);
    // Slots are full: the next poll is held.
    let (poll2, out) = h.poll(1);
    assert!(worker_reply(&out, poll2).is_none());
    // Reporting one batch frees a slot; the held poll gets the next batch.
    let (report, out) = h.pull(1, vec![all_ok(&batches[0])], false);
    let direct = work_in(&out, report);
    assert_eq!(direct.len(), 1, "the report's reply carries the next batch");
    assert_eq!(direct[0].items.len(), 952);
    assert_eq!(persisted_results(&out).len(), 1024);
}

#[test]
fn sync_run_replies_with_the_result_once_done_and_durable() {
    let mut h = Harness::new();
    h.hello(1, "w1", 1);
    let (poll, _) = h.poll(1);
    let (client, out) = h.call(ClientCall::Submit {
        tasks: vec![request("echo")],
        wait_ms: Some(10_000),
    });
    let batches = work_in(&out, poll);
    assert!(client_reply(&out, client).is_none());
    let (_, out) = h.pull(1, vec![all_ok(&batches[0])], false);
    assert!(client_reply(&out, client).is_none(), "task not yet durable");
    let out = h.flush();
    match client_reply(&out, client) {
        Some(ClientReply::Results { tasks }) => {
            assert_eq!(tasks[0].state, TaskState::Completed);
            assert_eq!(tasks[0].worker.as_deref(), Some("w1"));
            assert_eq!(
                tasks[0].outcome,
                Some(Outcome::Output(Payload::from_static(NIL)))
            );
            assert_eq!(tasks[0].timings.run_us, 7);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_lost_worker_s_tasks_are_completed_by_another() {
    let mut h = Harness::new();
    let ids = h.submit("sleep", 2);
    h.hello(1, "w1", 2);
    let (poll, out) = h.poll(1);
    assert_eq!(work_in(&out, poll).len(), 2);
    h.hello(2, "w2", 2);
    let (poll2, out) = h.poll(2);
    assert!(
        worker_reply(&out, poll2).is_none(),
        "nothing left to give w2"
    );
    // w1 dies: its connection closes.
    let out = h.ev(Event::PipeClosed { pipe: PipeId(1) });
    let batches = work_in(&out, poll2);
    let got: Vec<TaskId> = batches
        .iter()
        .flat_map(|b| b.items.iter().map(|i| i.task))
        .collect();
    assert_eq!(got, ids, "requeued in order, to w2");
    let (_, out) = h.pull(2, batches.iter().map(all_ok).collect(), false);
    assert_eq!(persisted_results(&out), ids);
    let (from, out) = h.call(ClientCall::Results {
        ids: ids.clone(),
        wait_ms: None,
    });
    match client_reply(&out, from) {
        Some(ClientReply::Results { tasks }) => {
            for t in tasks {
                assert_eq!(t.state, TaskState::Completed);
                assert_eq!(t.attempts, 2);
                assert_eq!(t.worker.as_deref(), Some("w2"));
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_first_result_wins_and_late_duplicates_are_ignored() {
    let mut h = Harness::new();
    let ids = h.submit("echo", 1);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let first = work_in(&out, poll);
    // w1 goes silent past the threshold: lost, task requeued.
    let out = h.advance(21 * SEC);
    assert!(out.contains(&Action::ClosePipe { pipe: PipeId(1) }));
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    h.hello(2, "w2", 1);
    let (poll2, out) = h.poll(2);
    let second = work_in(&out, poll2);
    // w1 comes back (same process, new connection) with its old result.
    h.hello(3, "w1", 1);
    let (_, out) = h.pull(3, vec![all_ok(&first[0])], false);
    assert_eq!(persisted_results(&out), ids, "w1's result is first");
    let (_, out) = h.pull(2, vec![all_ok(&second[0])], false);
    assert!(
        persisted_results(&out).is_empty(),
        "w2's result is a duplicate"
    );
    assert_eq!(h.core.totals.completed, 1);
}

#[test]
fn a_late_result_for_a_requeued_task_takes_it_out_of_the_queue() {
    let mut h = Harness::new();
    let ids = h.submit("echo", 1);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    h.advance(21 * SEC);
    assert_eq!(h.core.queues.len(), 1);
    h.hello(2, "w1", 1);
    let (_, out) = h.pull(2, vec![all_ok(&batch[0])], false);
    assert_eq!(persisted_results(&out), ids);
    assert!(h.core.queues.is_empty());
}

#[test]
fn tasks_fail_after_max_attempts_worker_losses() {
    let mut h = Harness::new();
    let ids = h.submit("sleep", 1);
    for attempt in 1..=3u64 {
        h.hello(attempt, &format!("w{attempt}"), 1);
        let (poll, out) = h.poll(attempt);
        assert_eq!(work_in(&out, poll).len(), 1);
        let out = h.ev(Event::PipeClosed {
            pipe: PipeId(attempt),
        });
        if attempt == 3 {
            assert_eq!(persisted_results(&out), ids);
        }
    }
    let (from, out) = h.call(ClientCall::Results { ids, wait_ms: None });
    match client_reply(&out, from) {
        Some(ClientReply::Results { tasks }) => {
            assert_eq!(tasks[0].state, TaskState::Failed);
            match &tasks[0].outcome {
                Some(Outcome::Error(m)) => assert!(m.contains("lost 3 times"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_worker_with_the_wrong_secret_is_refused_and_others_are_served() {
    let mut h = Harness::new();
    let from = h.slot();
    let out = h.ev(Event::Worker {
        from,
        pipe: PipeId(9),
        message: WorkerMessage::Hello(hello("intruder", 4, b"guess")),
    });
    match out.as_slice() {
        [
            Action::ReplyWorker {
                message: DaemonMessage::Refused { reason },
                close: true,
                ..
            },
        ] => assert!(reason.contains("wrong secret")),
        other => panic!("{other:?}"),
    }
    // Its pulls are not served.
    let (p, out) = h.pull(9, vec![], true);
    assert_eq!(worker_reply(&out, p), Some(DaemonMessage::Reregister));
    h.submit("noop", 1);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    assert_eq!(work_in(&out, poll).len(), 1);
}

#[test]
fn idle_polls_are_answered_every_heartbeat_and_silent_workers_are_lost() {
    let mut h = Harness::new();
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    assert!(out.is_empty());
    let out = h.advance(5 * SEC);
    assert_eq!(work_in(&out, poll), vec![], "heartbeat: an empty Work");
    assert!(!out.iter().any(|a| matches!(a, Action::ClosePipe { .. })));
    let out = h.advance(16 * SEC);
    assert!(out.contains(&Action::ClosePipe { pipe: PipeId(1) }));
    assert!(h.core.workers.is_empty());
}

#[test]
fn recovery_requeues_unfinished_tasks_and_keeps_results() {
    let stored = |servable: &str| StoredTask {
        servable: servable.into(),
        params: Payload::new(),
        input: Payload::from_static(NIL),
        submitted_us: 5,
    };
    let done = StoredResult {
        state: TaskState::Completed,
        outcome: Outcome::Output(Payload::from_static(NIL)),
        attempts: 1,
        worker: Some("old".into()),
        timings: TaskTimings::default(),
    };
    let recovered = Recovered {
        tasks: vec![
            (TaskId(10), stored("noop"), Some(done)),
            (TaskId(11), stored("noop"), None),
            (TaskId(12), stored("noop"), None),
        ],
        reserved_until: 100_010,
        ..Recovered::default()
    };
    let mut h = Harness::with(config(), recovered);
    assert_eq!(h.state(TaskId(10)), TaskState::Completed);
    assert_eq!(h.state(TaskId(11)), TaskState::Queued);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let batch = &work_in(&out, poll)[0];
    let ids: Vec<_> = batch.items.iter().map(|i| i.task).collect();
    assert_eq!(ids, [TaskId(11), TaskId(12)]);
    // New ids never reuse reserved ones.
    let new = h.submit("noop", 1);
    assert!(new[0].0 >= 100_010, "{new:?}");
}

#[test]
fn ids_are_reserved_in_blocks_not_per_task() {
    let mut h = Harness::new();
    let (_, out) = h.call(ClientCall::Submit {
        tasks: vec![request("noop")],
        wait_ms: None,
    });
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Persist {
            op: StoreOp::ReserveIds { .. },
            ..
        }
    )));
    let (_, out) = h.call(ClientCall::Submit {
        tasks: vec![request("noop")],
        wait_ms: None,
    });
    assert!(!out.iter().any(|a| matches!(
        a,
        Action::Persist {
            op: StoreOp::ReserveIds { .. },
            ..
        }
    )));
}

#[test]
fn shutdown_waits_for_running_batches_then_exits() {
    let mut h = Harness::new();
    h.submit("sleep", 2);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    let out = h.ev(Event::Shutdown);
    assert!(!out.contains(&Action::Exit), "a batch is still running");
    // New work is refused while draining; queued work is not dispatched.
    let (from, out) = h.call(ClientCall::Submit {
        tasks: vec![request("noop")],
        wait_ms: None,
    });
    assert!(matches!(
        client_reply(&out, from),
        Some(ClientReply::Error(ApiError {
            kind: ApiErrorKind::ShuttingDown,
            ..
        }))
    ));
    let (poll2, out) = h.poll(1);
    assert!(worker_reply(&out, poll2).is_none());
    // The running batch finishes: its result is kept, workers are told to go.
    let (report, out) = h.pull(1, vec![all_ok(&batch[0])], false);
    assert_eq!(persisted_results(&out).len(), 1);
    assert!(out.contains(&Action::Exit));
    assert_eq!(worker_reply(&out, poll2), Some(DaemonMessage::Shutdown));
    assert_eq!(worker_reply(&out, report), Some(DaemonMessage::Shutdown));
}

#[test]
fn shutdown_exits_at_the_grace_deadline_even_with_work_running() {
    let mut h = Harness::new();
    let ids = h.submit("sleep", 1);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    assert_eq!(work_in(&out, poll).len(), 1);
    h.ev(Event::Shutdown);
    // The worker stays alive (it keeps polling) but its batch never ends.
    for _ in 0..5 {
        h.poll(1);
        let out = h.advance(5 * SEC);
        assert!(!out.contains(&Action::Exit));
    }
    h.poll(1);
    let out = h.advance(4 * SEC);
    assert!(
        !out.contains(&Action::Exit),
        "29 s into a 30 s grace period"
    );
    let out = h.advance(2 * SEC);
    assert!(out.contains(&Action::Exit));
    assert_eq!(
        h.state(ids[0]),
        TaskState::Running,
        "no result: runs again after restart"
    );
}

#[test]
fn cancelled_queued_tasks_are_never_dispatched() {
    let mut h = Harness::new();
    let ids = h.submit("sleep", 2);
    let (from, mut out) = h.call(ClientCall::Cancel {
        ids: vec![ids[0], TaskId(999_999)],
    });
    out.extend(h.flush());
    assert_eq!(
        client_reply(&out, from),
        Some(ClientReply::Cancelled {
            tasks: vec![
                (ids[0], TaskState::Cancelled),
                (TaskId(999_999), TaskState::Unknown)
            ]
        })
    );
    h.hello(1, "w1", 4);
    let (poll, out) = h.poll(1);
    let got: Vec<_> = work_in(&out, poll)
        .iter()
        .flat_map(|b| b.items.iter().map(|i| i.task))
        .collect();
    assert_eq!(got, [ids[1]]);
}

#[test]
fn a_result_wait_expires_with_the_current_states() {
    let mut h = Harness::new();
    let ids = h.submit("sleep", 1);
    let (from, out) = h.call(ClientCall::Results {
        ids: ids.clone(),
        wait_ms: Some(2_000),
    });
    assert!(client_reply(&out, from).is_none());
    let out = h.advance(SEC);
    assert!(client_reply(&out, from).is_none());
    let out = h.advance(2 * SEC);
    match client_reply(&out, from) {
        Some(ClientReply::Results { tasks }) => assert_eq!(tasks[0].state, TaskState::Queued),
        other => panic!("{other:?}"),
    }
}

#[test]
fn fetched_results_are_forgotten_after_the_retention_period() {
    let mut h = Harness::new();
    let ids = h.submit("noop", 1);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    h.pull(1, vec![all_ok(&batch[0])], false);
    h.call(ClientCall::Results {
        ids: ids.clone(),
        wait_ms: None,
    });
    h.hello(1, "w1", 1);
    let out = h.advance(599 * SEC);
    assert!(!out.iter().any(|a| matches!(
        a,
        Action::Persist {
            op: StoreOp::Forget(_),
            ..
        }
    )));
    h.hello(1, "w1", 1);
    let out = h.advance(2 * SEC);
    assert!(
        out.iter()
            .any(|a| matches!(a, Action::Persist { op: StoreOp::Forget(f), .. } if *f == ids))
    );
    assert_eq!(h.state(ids[0]), TaskState::Unknown);
}

#[test]
fn work_is_spread_round_robin_over_polling_workers() {
    let mut h = Harness::new();
    h.hello(1, "w1", 4);
    h.hello(2, "w2", 4);
    let (p1, _) = h.poll(1);
    let (p2, _) = h.poll(2);
    let (_, out) = h.call(ClientCall::Submit {
        tasks: vec![request("sleep"); 2],
        wait_ms: None,
    });
    assert_eq!(
        work_in(&out, p1).len(),
        2,
        "first worker fills its free slots"
    );
    assert!(worker_reply(&out, p2).is_none());
    let (p1, _) = h.poll(1);
    let (_, out) = h.call(ClientCall::Submit {
        tasks: vec![request("sleep")],
        wait_ms: None,
    });
    assert_eq!(
        work_in(&out, p2).len(),
        1,
        "next submission starts at the next worker"
    );
    assert!(worker_reply(&out, p1).is_none());
}

#[test]
fn workers_only_get_servables_they_offer() {
    let mut h = Harness::new();
    h.submit("sleep", 1);
    let from = h.slot();
    let mut only_noop = hello("w1", 1, SECRET);
    only_noop.servables = vec!["noop".into()];
    h.ev(Event::Worker {
        from,
        pipe: PipeId(1),
        message: WorkerMessage::Hello(only_noop),
    });
    let (poll, out) = h.poll(1);
    assert!(worker_reply(&out, poll).is_none());
    h.submit("noop", 1);
    let out = h.advance(1);
    let _ = out;
    let (from, out) = h.call(ClientCall::DaemonStatus);
    match client_reply(&out, from) {
        Some(ClientReply::DaemonStatus(s)) => {
            let sleep = s.queues.iter().find(|q| q.servable == "sleep").unwrap();
            assert_eq!(sleep.queued, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn blocks_are_started_and_their_workers_counted() {
    let mut cfg = config();
    cfg.blocks = BlockPolicy {
        init_blocks: 1,
        min_blocks: 1,
        max_blocks: 1,
        max_failures: 3,
    };
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(&mut out);
    assert_eq!(out, [Action::SubmitBlock { block: 0 }]);
    h.ev(Event::Block(BlockEvent::Submitted {
        block: 0,
        job: "4242".into(),
    }));
    let from = h.slot();
    let mut hi = hello("w1", 2, SECRET);
    hi.block_id = Some(0);
    h.ev(Event::Worker {
        from,
        pipe: PipeId(1),
        message: WorkerMessage::Hello(hi),
    });
    let (from, out) = h.call(ClientCall::DaemonStatus);
    match client_reply(&out, from) {
        Some(ClientReply::DaemonStatus(s)) => {
            assert_eq!(s.blocks[0].state, "RUNNING");
            assert_eq!(s.blocks[0].job_id.as_deref(), Some("4242"));
            assert_eq!(s.blocks[0].workers, 1);
        }
        other => panic!("{other:?}"),
    }
    let out = h.ev(Event::Shutdown);
    assert!(out.contains(&Action::CancelBlock { block: 0 }));
    assert!(out.contains(&Action::Exit));
}
