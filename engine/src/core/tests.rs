//! Scenario tests of the scheduling core: events in, actions out, no I/O.

use super::records::{Recovered, StoredResult, StoredTask};
use super::*;
use flotilla_protocol::client::ClientReply;
use flotilla_protocol::client::{ApiError, ApiErrorKind, ClientCall, TaskRequest};
use flotilla_protocol::interchange::{
    BatchId, BatchResult, DaemonMessage, Hello, WorkBatch, WorkerMessage,
};
use flotilla_protocol::secure::Cipher;
use flotilla_protocol::task::{NIL, Outcome, TaskState, TaskTimings, TaskView};
use flotilla_protocol::{Payload, TaskId};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const SEC: u64 = 1_000_000;

/// The uid the daemon under test runs as.
const DAEMON_UID: u32 = 1000;

fn config() -> CoreConfig {
    CoreConfig {
        heartbeat_period_us: 5 * SEC,
        heartbeat_threshold_us: 20 * SEC,
        shutdown_grace_us: 30 * SEC,
        result_retention_us: 600 * SEC,
        unfetched_result_retention_us: 3600 * SEC,
        max_attempts: 3,
        walltime_margin_us: 10 * SEC,
        recovery_grace_us: 5 * SEC,
        secret: SECRET.to_vec(),
        handshake_seed: [9; 32],
        ciphers: vec![Cipher::Aes256Gcm, Cipher::Chacha20Poly1305],
        max_frame_bytes: 1 << 20,
        pools: vec![policy(0, 0, 1)],
        pid: 1,
        release: "test".into(),
        interchange: "tcp://127.0.0.1:1".into(),
        memo_max_entries: 1000,
        memo_max_bytes: 1 << 20,
        overrides: Default::default(),
        owner_uid: DAEMON_UID,
    }
}

fn policy(init: u32, min: u32, max: u32) -> BlockPolicy {
    BlockPolicy {
        pool: "default".into(),
        provider: "local".into(),
        init_blocks: init,
        min_blocks: min,
        max_blocks: max,
        max_failures: 3,
        workers_per_block: 1,
        slots_per_worker: None,
        parallelism: 1.0,
        strategy_period_us: SEC,
        max_idle_us: 60 * SEC,
        min_lifetime_us: 0,
        cooldown_us: 0,
        connect_timeout_us: 600 * SEC,
        walltime_us: None,
        replace_ahead_us: 60 * SEC,
        max_queued: None,
        queue_job_limit: None,
        retry_max_us: 300 * SEC,
        labels: Default::default(),
        cost: 0.0,
        accelerators_per_slot: None,
        walltime_margin_us: 10 * SEC,
    }
}

/// Drives a core and keeps the clock and numbers the pending requests.
struct Harness {
    core: Core,
    now: u64,
    next_reply_to: u32,
    /// Worker nonces of the probes it makes.
    nonces: flotilla_protocol::handshake::NonceSource,
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), Recovered::default())
    }

    fn with(cfg: CoreConfig, recovered: Recovered) -> Self {
        let now = 1_000 * SEC;
        Harness {
            core: Core::new(cfg, recovered, now),
            now,
            next_reply_to: 0,
            nonces: flotilla_protocol::handshake::NonceSource::new(&[3; 32], "test worker"),
        }
    }

    fn reply_to(&mut self) -> ReplyTo {
        self.next_reply_to += 1;
        ReplyTo(self.next_reply_to)
    }

    /// Feeds `event`. A hello without a proof is first signed with the
    /// daemon's secret after a probe on its pipe, as a real worker does.
    fn ev(&mut self, event: Event) -> Vec<Action> {
        let event = match event {
            Event::Worker {
                from,
                pipe,
                message: WorkerMessage::Hello(hi),
            } if hi.proof.is_empty() => Event::Worker {
                from,
                pipe,
                message: WorkerMessage::Hello(Box::new(self.signed(pipe, *hi, SECRET))),
            },
            other => other,
        };
        let mut out = Vec::new();
        self.core.handle(event, self.now, &mut out);
        out
    }

    /// Probes on `pipe` and returns the daemon's nonce and proof, and the
    /// handshake's transcript.
    fn probe(
        &mut self,
        pipe: PipeId,
    ) -> (Payload, Payload, flotilla_protocol::handshake::Transcript) {
        use flotilla_protocol::handshake::{Transcript, nonce, public_key};
        let worker_nonce = self.nonces.next_nonce();
        let worker_public =
            flotilla_protocol::secure::Ephemeral::from_random(self.nonces.next_nonce()).public();
        let from = self.reply_to();
        let mut out = Vec::new();
        let probe = WorkerMessage::Probe {
            nonce: Payload::copy_from_slice(&worker_nonce),
            public: Payload::copy_from_slice(&worker_public),
            ciphers: vec![Cipher::Aes256Gcm, Cipher::Chacha20Poly1305],
        };
        self.core.handle(
            Event::Worker {
                from,
                pipe,
                message: probe,
            },
            self.now,
            &mut out,
        );
        match worker_reply(&out, from) {
            Some(DaemonMessage::ProbeOk {
                nonce: daemon_nonce,
                public,
                proof,
                cipher,
            }) => {
                assert_eq!(cipher, Cipher::Aes256Gcm, "both ends offer AES-256-GCM");
                let transcript = Transcript {
                    worker_nonce,
                    daemon_nonce: nonce(&daemon_nonce).unwrap(),
                    worker_public,
                    daemon_public: public_key(&public).unwrap(),
                };
                (daemon_nonce, proof, transcript)
            }
            other => panic!("expected ProbeOk, got {other:?}"),
        }
    }

    /// `hi` with a challenge from a probe on `pipe`, signed with `secret`.
    fn signed(&mut self, pipe: PipeId, mut hi: Hello, secret: &[u8]) -> Hello {
        use flotilla_protocol::handshake::HandshakeKey;
        let (daemon_nonce, _, transcript) = self.probe(pipe);
        hi.challenge = daemon_nonce;
        let proof = HandshakeKey::from_secret(secret).worker_proof(&transcript, &hi);
        hi.proof = Payload::copy_from_slice(&proof);
        hi
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
        let from = self.reply_to();
        let out = self.ev(Event::Client {
            from,
            caller: Caller::daemon_user(DAEMON_UID),
            call,
        });
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
        let from = self.reply_to();
        self.ev(Event::Worker {
            from,
            pipe: PipeId(pipe),
            message: WorkerMessage::Hello(Box::new(hello(worker, slots))),
        })
    }

    /// Sends a long-poll and returns (where its reply goes, the actions).
    fn poll(&mut self, pipe: u64) -> (ReplyTo, Vec<Action>) {
        self.pull(pipe, vec![], true)
    }

    fn pull(&mut self, pipe: u64, results: Vec<BatchResult>, wait: bool) -> (ReplyTo, Vec<Action>) {
        let from = self.reply_to();
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

/// A hello the harness signs when it is sent (see [`Harness::ev`]).
fn hello(worker: &str, slots: u32) -> Hello {
    Hello {
        worker_id: worker.into(),
        block_id: None,
        host: "localhost".into(),
        node: None,
        rank: None,
        pid: 42,
        slots,
        servables: vec!["noop".into(), "echo".into(), "sleep".into()],
        challenge: Payload::new(),
        proof: Payload::new(),
        max_frame_bytes: 1 << 20,
        ends_at_unix_s: None,
        running: Vec::new(),
        slot_resources: Vec::new(),
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
        received_us: 0,
        sent_us: 0,
        failure: None,
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
    assert!(h.core.sched.queues.is_empty());
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
    // w1 dies: its connection closes. Either task may have killed it, so
    // each now runs alone on an otherwise idle worker.
    let out = h.ev(Event::PipeClosed { pipe: PipeId(1) });
    let mut got = Vec::new();
    let mut batches = work_in(&out, poll2);
    for _ in 0..2 {
        assert_eq!(batches.len(), 1, "one suspect at a time");
        assert_eq!(batches[0].items.len(), 1);
        got.push(batches[0].items[0].task);
        let (_, out) = h.pull(2, vec![all_ok(&batches[0])], false);
        assert_eq!(persisted_results(&out), [batches[0].items[0].task]);
        let (poll, out) = h.poll(2);
        batches = match worker_reply(&out, poll) {
            Some(DaemonMessage::Work { batches }) => batches,
            _ => Vec::new(),
        };
    }
    assert_eq!(got, ids, "in order, to w2");
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
fn a_task_that_kills_its_worker_does_not_take_its_neighbours_with_it() {
    let mut h = Harness::new();
    let ids = h.submit("sleep", 2);
    // A worker with two slots runs both and dies.
    h.hello(1, "w1", 2);
    let (poll, out) = h.poll(1);
    assert_eq!(work_in(&out, poll).len(), 2);
    h.ev(Event::PipeClosed { pipe: PipeId(1) });
    // Each suspect now runs alone on its own idle worker.
    h.hello(2, "w2", 2);
    let (poll2, out) = h.poll(2);
    let on_w2 = work_in(&out, poll2);
    assert_eq!(on_w2.len(), 1);
    assert_eq!(on_w2[0].items[0].task, ids[0]);
    h.hello(3, "w3", 2);
    let (poll3, out) = h.poll(3);
    let on_w3 = work_in(&out, poll3);
    assert_eq!(on_w3[0].items[0].task, ids[1]);
    // The first kills w2 again; the second completes on w3.
    h.ev(Event::PipeClosed { pipe: PipeId(2) });
    h.pull(3, vec![all_ok(&on_w3[0])], false);
    assert_eq!(h.state(ids[1]), TaskState::Completed);
    h.hello(4, "w4", 2);
    let (poll4, out) = h.poll(4);
    assert_eq!(work_in(&out, poll4)[0].items[0].task, ids[0]);
    h.ev(Event::PipeClosed { pipe: PipeId(4) });
    assert_eq!(h.state(ids[0]), TaskState::Failed);
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
    assert_eq!(h.core.tasks.totals().completed, 1);
}

#[test]
fn a_late_result_for_a_requeued_task_takes_it_out_of_the_queue() {
    let mut h = Harness::new();
    let ids = h.submit("echo", 1);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    h.advance(21 * SEC);
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    h.hello(2, "w1", 1);
    let (_, out) = h.pull(2, vec![all_ok(&batch[0])], false);
    assert_eq!(persisted_results(&out), ids);
    assert!(h.core.sched.queues.is_empty());
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
                Some(Outcome::Error(m)) => {
                    assert!(m.starts_with("poison task"), "{m}");
                    for attempt in 1..=3 {
                        assert!(
                            m.contains(&format!("attempt {attempt}: worker w{attempt} on localhost was lost (its connection closed)")),
                            "{m}"
                        );
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
}

/// The reason of a refusal that closes the connection, from `out`.
fn refusal(out: &[Action]) -> String {
    match out {
        [
            Action::ReplyWorker {
                message: DaemonMessage::Refused { reason },
                close: true,
                ..
            },
        ] => reason.clone(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Sends `hi` as it is (signed or not) on `pipe`.
fn send_hello(h: &mut Harness, pipe: u64, hi: Hello) -> Vec<Action> {
    let from = h.reply_to();
    let mut out = Vec::new();
    h.core.handle(
        Event::Worker {
            from,
            pipe: PipeId(pipe),
            message: WorkerMessage::Hello(Box::new(hi)),
        },
        h.now,
        &mut out,
    );
    out
}

#[test]
fn a_worker_with_the_wrong_secret_is_refused_and_others_are_served() {
    let mut h = Harness::new();
    let intruder = h.signed(PipeId(9), hello("intruder", 4), b"guess");
    let reason = refusal(&send_hello(&mut h, 9, intruder));
    assert!(reason.contains("wrong secret"), "{reason}");
    // Its pulls are not served.
    let (p, out) = h.pull(9, vec![], true);
    assert_eq!(worker_reply(&out, p), Some(DaemonMessage::Reregister));
    h.submit("noop", 1);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    assert_eq!(work_in(&out, poll).len(), 1);
}

#[test]
fn probes_prove_the_daemon_knows_the_secret_and_register_nothing() {
    use flotilla_protocol::handshake::HandshakeKey;
    let mut h = Harness::new();
    let (_, proof, transcript) = h.probe(PipeId(3));
    let daemon_nonce = transcript.daemon_nonce;
    assert!(HandshakeKey::from_secret(SECRET).check_daemon(&transcript, &proof));
    assert!(!HandshakeKey::from_secret(b"guess").check_daemon(&transcript, &proof));
    assert!(h.core.workers.is_empty());
    // Nothing of the secret in the answer.
    let (again, proof2, _) = h.probe(PipeId(3));
    assert_ne!(again.as_ref(), &daemon_nonce[..], "a fresh nonce per probe");
    assert!(!proof2.windows(8).any(|w| SECRET.windows(8).any(|s| s == w)));
    // A probe with a malformed nonce is refused.
    let from = h.reply_to();
    let out = h.ev(Event::Worker {
        from,
        pipe: PipeId(4),
        message: WorkerMessage::Probe {
            nonce: Payload::from_static(b"short"),
            public: Payload::from(vec![9u8; 32]),
            ciphers: vec![],
        },
    });
    assert!(refusal(&out).contains("not 32"), "{out:?}");
    // The probed connection then registers like any other.
    h.hello(3, "w1", 1);
    assert_eq!(h.core.workers.len(), 1);
}

#[test]
fn a_replayed_or_late_or_unasked_hello_is_refused() {
    let mut h = Harness::new();
    let hi = h.signed(PipeId(1), hello("w1", 1), SECRET);
    let out = send_hello(&mut h, 1, hi.clone());
    // The connection is sealed from the welcome on, with the cipher the
    // probe's answer named.
    assert!(matches!(
        out.as_slice(),
        [
            Action::Secure { keys, .. },
            Action::ReplyWorker {
                message: DaemonMessage::Welcome { .. },
                ..
            }
        ] if keys.cipher() == Cipher::Aes256Gcm
    ));
    // The same hello again, on another connection: its challenge is used.
    let reason = refusal(&send_hello(&mut h, 2, hi));
    assert!(reason.contains("replayed"), "{reason}");
    assert_eq!(h.core.workers.len(), 1);
    // A hello whose challenge the daemon never issued.
    let mut forged = h.signed(PipeId(3), hello("w3", 1), SECRET);
    forged.challenge = Payload::from(vec![0u8; 32]);
    assert!(refusal(&send_hello(&mut h, 3, forged)).contains("no outstanding challenge"));
    // A hello signed in time but sent too late.
    let late = h.signed(PipeId(4), hello("w4", 1), SECRET);
    h.now += handshake::CHALLENGE_TTL_US + SEC;
    let reason = refusal(&send_hello(&mut h, 4, late));
    assert!(reason.contains("expired"), "{reason}");
    // A signed hello whose fields were changed on the way.
    let mut changed = h.signed(PipeId(5), hello("w5", 1), SECRET);
    changed.slots = 100;
    assert!(refusal(&send_hello(&mut h, 5, changed)).contains("wrong secret"));
    assert_eq!(h.core.workers.len(), 1);
}

#[test]
fn outstanding_challenges_are_bounded() {
    let mut h = Harness::new();
    for _ in 0..handshake::MAX_OUTSTANDING {
        h.probe(PipeId(1));
    }
    let from = h.reply_to();
    let out = h.ev(Event::Worker {
        from,
        pipe: PipeId(2),
        message: WorkerMessage::Probe {
            nonce: Payload::from(vec![1u8; 32]),
            public: Payload::from(vec![9u8; 32]),
            ciphers: vec![],
        },
    });
    assert!(refusal(&out).contains("too many workers are registering"));
    // Once they expire there is room again.
    h.now += handshake::CHALLENGE_TTL_US + SEC;
    h.hello(3, "w1", 1);
    assert_eq!(h.core.workers.len(), 1);
}

/// What a malformed hello's refusal says, and how the hello is spoiled.
type Spoiled = (&'static str, fn(&mut Hello));

#[test]
fn a_malformed_hello_is_refused_with_its_reason() {
    let mut h = Harness::new();
    let cases: [Spoiled; 8] = [
        ("worker id holds the control", |hi| {
            hi.worker_id = "w\nINFO worker registered".into()
        }),
        ("host is 4000000 bytes long", |hi| {
            hi.host = "h".repeat(4_000_000)
        }),
        ("node holds the control", |hi| {
            hi.node = Some("n\x1b[2J".into())
        }),
        ("at least one slot", |hi| hi.slots = 0),
        ("the worker id is empty", |hi| hi.worker_id = String::new()),
        ("frames of at most 100 bytes", |hi| hi.max_frame_bytes = 100),
        ("describes 2 slots of its 1", |hi| {
            hi.slot_resources = vec![SlotResources::default(); 2]
        }),
        ("accelerator name holds the control", |hi| {
            hi.slot_resources = vec![SlotResources {
                devices: vec!["0\x1b[2J".into()],
                cpus: String::new(),
            }]
        }),
    ];
    for (pipe, (expected, spoil)) in cases.into_iter().enumerate() {
        let mut hi = hello("w", 1);
        spoil(&mut hi);
        let out = h.ev(Event::Worker {
            from: ReplyTo(1000 + pipe as u32),
            pipe: PipeId(pipe as u64),
            message: WorkerMessage::Hello(Box::new(hi)),
        });
        let reason = refusal(&out);
        assert!(reason.contains(expected), "{expected}: {reason}");
        assert!(reason.len() < 300, "{reason}");
    }
    assert!(h.core.workers.is_empty());
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
        owner: None,
    };
    let done = StoredResult {
        state: TaskState::Completed,
        outcome: Outcome::Output(Payload::from_static(NIL)),
        attempts: 1,
        worker: Some("old".into()),
        timings: TaskTimings::default(),
        memo: None,
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

/// A wait longer than any taken is refused with a message naming it; it
/// once wrapped the deadline (and panicked in a debug build).
#[test]
fn a_wait_out_of_range_is_refused_not_wrapped() {
    let mut h = Harness::new();
    let ids = h.submit("sleep", 1);
    for call in [
        ClientCall::Results {
            ids: ids.clone(),
            wait_ms: Some(u64::MAX),
        },
        ClientCall::Submit {
            tasks: vec![request("echo")],
            wait_ms: Some(u64::MAX),
        },
        ClientCall::Events {
            after: 0,
            wait_ms: Some(u64::MAX),
        },
    ] {
        let (from, out) = h.call(call);
        match client_reply(&out, from) {
            Some(ClientReply::Error(e)) => {
                assert_eq!(e.kind, ApiErrorKind::BadRequest);
                assert!(e.message.starts_with("wait_ms must be at most"), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The longest wait taken is held, not answered at once.
    let (from, out) = h.call(ClientCall::Results {
        ids,
        wait_ms: Some(flotilla_protocol::client::MAX_WAIT_MS),
    });
    assert!(client_reply(&out, from).is_none());
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
    let from = h.reply_to();
    let mut only_noop = hello("w1", 1);
    only_noop.servables = vec!["noop".into()];
    h.ev(Event::Worker {
        from,
        pipe: PipeId(1),
        message: WorkerMessage::Hello(Box::new(only_noop)),
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
    cfg.pools[0] = policy(1, 1, 1);
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    assert_eq!(
        out,
        [Action::SubmitBlock {
            pool: "default".into(),
            block: 0
        }]
    );
    h.ev(Event::Block(BlockEvent::Submitted {
        block: 0,
        job: "4242".into(),
    }));
    let from = h.reply_to();
    let mut hi = hello("w1", 2);
    hi.block_id = Some(0);
    h.ev(Event::Worker {
        from,
        pipe: PipeId(1),
        message: WorkerMessage::Hello(Box::new(hi)),
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
    assert!(out.contains(&Action::CancelBlock {
        pool: "default".into(),
        block: 0
    }));
    assert!(out.contains(&Action::Exit));
}

// ----- servables, pipelines, batch failures -------------------------------

use flotilla_protocol::client::SearchQuery;
use flotilla_protocol::interchange::{BatchFailure, FailureKind};
use flotilla_protocol::servable::{
    Creator, FileEntry, Runtime, ServableOptions, ServableRecord, ServableSpec, TypeSpec,
};

fn spec(name: &str, version: &str) -> ServableSpec {
    ServableSpec {
        name: name.into(),
        version: version.into(),
        title: format!("The {name} model"),
        description: String::new(),
        creators: vec![Creator {
            name: "Grace Hopper".into(),
            affiliation: Some("Navy".into()),
            orcid: None,
        }],
        domains: vec!["chemistry".into()],
        license: "MIT".into(),
        doi: None,
        related_identifiers: vec![],
        model_type: "sklearn".into(),
        input: TypeSpec::Any {
            description: String::new(),
        },
        output: TypeSpec::Any {
            description: String::new(),
        },
        runtime: Runtime::Exec {
            command: "python3".into(),
            args: vec!["model.py".into()],
            working_dir: None,
            env: Default::default(),
        },
        container: None,
        files: vec!["model.py".into()],
        build: None,
        resources: Default::default(),
        environment: None,
        options: ServableOptions {
            max_batch_size: 8,
            ..ServableOptions::default()
        },
    }
}

fn record(spec: ServableSpec) -> ServableRecord {
    let files = spec
        .files
        .iter()
        .map(|f| FileEntry {
            path: f.clone(),
            blake3: "ab".repeat(32),
            size: 1,
        })
        .collect();
    ServableRecord {
        spec,
        files,
        published_us: 0,
        lock: None,
        access: None,
    }
}

fn pipeline(name: &str, steps: &[&str]) -> ServableRecord {
    let mut s = spec(name, "1.0.0");
    s.model_type = "pipeline".into();
    s.files = vec![];
    s.runtime = Runtime::Pipeline {
        steps: steps.iter().map(|x| (*x).to_owned()).collect(),
    };
    record(s)
}

impl Harness {
    fn publish(&mut self, record: ServableRecord) -> ClientReply {
        let (from, mut out) = self.call(ClientCall::Publish {
            record: Box::new(record),
        });
        out.extend(self.flush());
        client_reply(&out, from).expect("a reply to publish")
    }

    fn submit_to(&mut self, servable: &str, input: Payload) -> Result<TaskId, ApiError> {
        let (from, mut out) = self.call(ClientCall::Submit {
            tasks: vec![TaskRequest {
                servable: servable.into(),
                input,
                params: Payload::new(),
            }],
            wait_ms: None,
        });
        out.extend(self.flush());
        match client_reply(&out, from) {
            Some(ClientReply::Submitted { ids }) => Ok(ids[0]),
            Some(ClientReply::Error(e)) => Err(e),
            other => panic!("{other:?}"),
        }
    }

    fn exec_worker(&mut self, pipe: u64, name: &str, slots: u32) {
        let from = self.reply_to();
        let mut h = hello(name, slots);
        h.servables.push("*".into());
        self.ev(Event::Worker {
            from,
            pipe: PipeId(pipe),
            message: WorkerMessage::Hello(Box::new(h)),
        });
    }

    fn result_of(&mut self, id: TaskId) -> TaskView {
        let (from, out) = self.call(ClientCall::Results {
            ids: vec![id],
            wait_ms: None,
        });
        match client_reply(&out, from) {
            Some(ClientReply::Results { mut tasks }) => tasks.remove(0),
            other => panic!("{other:?}"),
        }
    }
}

fn outputs(batch: &WorkBatch, f: impl Fn(&Payload) -> Outcome) -> BatchResult {
    BatchResult {
        batch: batch.id,
        run_us: 10,
        received_us: 0,
        sent_us: 0,
        outcomes: batch.items.iter().map(|i| (i.task, f(&i.input))).collect(),
        failure: None,
    }
}

fn failed(batch: &WorkBatch, kind: FailureKind, message: &str) -> BatchResult {
    BatchResult {
        batch: batch.id,
        run_us: 10,
        received_us: 0,
        sent_us: 0,
        outcomes: vec![],
        failure: Some(BatchFailure {
            kind,
            message: message.into(),
        }),
    }
}

#[test]
fn names_resolve_to_the_latest_version_and_versions_are_immutable() {
    let mut h = Harness::new();
    assert_eq!(
        h.publish(record(spec("digits", "1.2.0"))),
        ClientReply::Published {
            id: "digits@1.2.0".into(),
            created: true
        }
    );
    h.publish(record(spec("digits", "1.10.0")));
    // Same content again: accepted, nothing changes.
    assert_eq!(
        h.publish(record(spec("digits", "1.10.0"))),
        ClientReply::Published {
            id: "digits@1.10.0".into(),
            created: false
        }
    );
    // Different content under a published version: refused.
    let mut changed = spec("digits", "1.10.0");
    changed.title = "Another model".into();
    match h.publish(record(changed)) {
        ClientReply::Error(e) => {
            assert_eq!(e.kind, ApiErrorKind::Conflict);
            assert!(e.message.contains("new version"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Latest by semantic version, not by text: 1.10.0 > 1.2.0.
    let id = h.submit_to("digits", Payload::from_static(NIL)).unwrap();
    assert_eq!(h.result_of(id).servable, "digits@1.10.0");
    let id = h
        .submit_to("digits@1.2.0", Payload::from_static(NIL))
        .unwrap();
    assert_eq!(h.result_of(id).servable, "digits@1.2.0");
    let e = h
        .submit_to("digits@9.9.9", Payload::from_static(NIL))
        .unwrap_err();
    assert!(
        e.message.contains("no version 9.9.9") && e.message.contains("1.10.0"),
        "{e}"
    );
    let (from, out) = h.call(ClientCall::ServableVersions {
        name: "digits".into(),
    });
    assert_eq!(
        client_reply(&out, from),
        Some(ClientReply::Versions {
            versions: vec!["1.2.0".into(), "1.10.0".into()]
        })
    );
}

#[test]
fn a_worker_gets_a_servable_s_record_with_its_first_batch_only() {
    let mut h = Harness::new();
    h.publish(record(spec("digits", "1.0.0")));
    h.exec_worker(1, "w1", 1);
    for round in 0..2 {
        h.submit_to("digits", Payload::from_static(NIL)).unwrap();
        let (poll, out) = h.poll(1);
        let batch = work_in(&out, poll).remove(0);
        assert_eq!(batch.servable, "digits@1.0.0");
        assert_eq!(batch.spec.is_some(), round == 0, "round {round}");
        h.pull(1, vec![all_ok(&batch)], false);
    }
    // A reconnected worker process may have lost it: it is sent again.
    h.exec_worker(2, "w1", 1);
    h.submit_to("digits", Payload::from_static(NIL)).unwrap();
    let (poll, out) = h.poll(2);
    assert!(work_in(&out, poll)[0].spec.is_some());
}

#[test]
fn inputs_are_checked_when_the_servable_asks_and_errors_name_the_field() {
    let mut h = Harness::new();
    let mut s = spec("sizes", "1.0.0");
    s.options.validate_input = true;
    s.input = TypeSpec::List {
        item: Box::new(TypeSpec::Integer {
            description: String::new(),
        }),
        description: String::new(),
    };
    h.publish(record(s));
    let good = Payload::from(rmp_serde::to_vec(&[1, 2, 3]).unwrap());
    assert!(h.submit_to("sizes", good).is_ok());
    let bad = Payload::from(rmp_serde::to_vec(&(1, "two", 3)).unwrap());
    let e = h.submit_to("sizes", bad).unwrap_err();
    assert_eq!(e.kind, ApiErrorKind::BadRequest);
    assert_eq!(
        e.message,
        "sizes@1.0.0: input[1]: expected an integer, got string \"two\""
    );
}

#[test]
fn a_submission_is_refused_for_its_first_problem_in_order_however_it_is_checked() {
    let mut h = Harness::new();
    let mut s = spec("images", "1.0.0");
    s.options.validate_input = true;
    s.input = TypeSpec::Ndarray {
        dtype: "float32".into(),
        shape: vec![32, 32, 3],
        description: String::new(),
    };
    h.publish(record(s));
    let image = |x: f32| Payload::from(rmp_serde::to_vec(&vec![vec![[x; 3]; 32]; 32]).unwrap());
    let odd = Payload::from(rmp_serde::to_vec(&vec![vec![[0.5f32; 3]; 32]; 31]).unwrap());
    let submit = |h: &mut Harness, tasks: Vec<(&str, Payload)>| {
        let (from, mut out) = h.call(ClientCall::Submit {
            tasks: tasks
                .into_iter()
                .map(|(servable, input)| TaskRequest {
                    servable: servable.into(),
                    input,
                    params: Payload::new(),
                })
                .collect(),
            wait_ms: None,
        });
        out.extend(h.flush());
        client_reply(&out, from)
    };
    // 64 images as nested lists are over a megabyte, checked in parallel;
    // a few are checked one after another. Either way the first misfit in
    // the submission's order is named, and nothing is accepted.
    for n in [4usize, 64] {
        let mut tasks: Vec<(&str, Payload)> = (0..n).map(|i| ("images", image(i as f32))).collect();
        tasks[n - 1].1 = odd.clone();
        tasks[n / 2].1 = odd.clone();
        match submit(&mut h, tasks) {
            Some(ClientReply::Error(e)) => assert_eq!(
                e.message,
                format!(
                    "task {} of {n}: images@1.0.0: input: expected 32 elements, got 31",
                    n / 2 + 1
                )
            ),
            other => panic!("{other:?}"),
        }
        // A misfit before an unknown servable is what is named...
        let mut tasks: Vec<(&str, Payload)> = (0..n).map(|i| ("images", image(i as f32))).collect();
        tasks[1].1 = odd.clone();
        tasks[2].0 = "nowhere";
        match submit(&mut h, tasks) {
            Some(ClientReply::Error(e)) => assert!(
                e.message
                    .starts_with(&format!("task 2 of {n}: images@1.0.0: input:")),
                "{}",
                e.message
            ),
            other => panic!("{other:?}"),
        }
        // ...and an unknown servable before a misfit.
        let mut tasks: Vec<(&str, Payload)> = (0..n).map(|i| ("images", image(i as f32))).collect();
        tasks[1].0 = "nowhere";
        tasks[2].1 = odd.clone();
        match submit(&mut h, tasks) {
            Some(ClientReply::Error(e)) => {
                assert!(
                    e.message.starts_with(&format!("task 2 of {n}: ")),
                    "{}",
                    e.message
                );
                assert!(e.message.contains("nowhere"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }
    let accepted = (0..64).map(|i| ("images", image(i as f32))).collect();
    match submit(&mut h, accepted) {
        Some(ClientReply::Submitted { ids }) => assert_eq!(ids.len(), 64),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pipeline_chains_its_steps_inside_the_daemon() {
    let mut h = Harness::new();
    h.publish(record(spec("parse", "1.0.0")));
    h.publish(record(spec("featurize", "1.0.0")));
    h.publish(pipeline("enthalpy", &["parse@1.0.0", "featurize@1.0.0"]));
    h.exec_worker(1, "w1", 2);
    let id = h.submit_to("enthalpy", Payload::from(vec![0x01])).unwrap();
    let plus_one = |p: &Payload| Outcome::Output(Payload::from(vec![p[0] + 1]));
    let (poll, out) = h.poll(1);
    let first = work_in(&out, poll);
    assert_eq!(first[0].servable, "parse@1.0.0");
    // The step's output becomes the next step's input; nothing is stored yet.
    let (report, out) = h.pull(1, vec![outputs(&first[0], plus_one)], false);
    assert!(persisted_results(&out).is_empty());
    let second = work_in(&out, report);
    assert_eq!(second[0].servable, "featurize@1.0.0");
    assert_eq!(&second[0].items[0].input[..], [0x02]);
    let (_, out) = h.pull(1, vec![outputs(&second[0], plus_one)], false);
    assert_eq!(persisted_results(&out), [id]);
    let view = h.result_of(id);
    assert_eq!(view.servable, "enthalpy@1.0.0");
    assert_eq!(
        view.outcome,
        Some(Outcome::Output(Payload::from(vec![0x03])))
    );
}

#[test]
fn a_failing_pipeline_step_is_named_in_the_error() {
    let mut h = Harness::new();
    h.publish(record(spec("parse", "1.0.0")));
    h.publish(record(spec("featurize", "1.0.0")));
    h.publish(pipeline("enthalpy", &["parse@1.0.0", "featurize@1.0.0"]));
    h.exec_worker(1, "w1", 1);
    let id = h.submit_to("enthalpy", Payload::from_static(NIL)).unwrap();
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    h.pull(
        1,
        vec![outputs(&batch[0], |_| {
            Outcome::Error("no such element: Xx".into())
        })],
        false,
    );
    match h.result_of(id).outcome {
        Some(Outcome::Error(e)) => {
            assert_eq!(e, "step 1 of 2 (`parse@1.0.0`) failed: no such element: Xx");
        }
        other => panic!("{other:?}"),
    }
    // Pipelines take no parameters; unknown steps are refused at creation.
    let (from, out) = h.call(ClientCall::Submit {
        tasks: vec![TaskRequest {
            servable: "enthalpy".into(),
            input: Payload::from_static(NIL),
            params: Payload::from(vec![0x80]),
        }],
        wait_ms: None,
    });
    assert!(matches!(
        client_reply(&out, from),
        Some(ClientReply::Error(_))
    ));
    assert!(matches!(
        h.publish(pipeline("broken", &["nope@1.0.0"])),
        ClientReply::Error(ApiError {
            kind: ApiErrorKind::NotFound,
            ..
        })
    ));
}

#[test]
fn a_batch_that_fails_as_a_whole_is_retried_input_by_input_once() {
    let mut h = Harness::new();
    h.publish(record(spec("digits", "1.0.0")));
    h.exec_worker(1, "w1", 4);
    let (from, mut out) = h.call(ClientCall::Submit {
        tasks: (0..3)
            .map(|i| TaskRequest {
                servable: "digits".into(),
                input: Payload::from(vec![i]),
                params: Payload::new(),
            })
            .collect(),
        wait_ms: None,
    });
    out.extend(h.flush());
    let ids = match client_reply(&out, from) {
        Some(ClientReply::Submitted { ids }) => ids,
        other => panic!("{other:?}"),
    };
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].items.len(), 3);
    let (report, out) = h.pull(
        1,
        vec![failed(
            &batch[0],
            FailureKind::Failed,
            "ValueError: bad pixel",
        )],
        false,
    );
    assert!(persisted_results(&out).is_empty());
    let solo = work_in(&out, report);
    assert_eq!(solo.len(), 3, "one batch per input");
    assert!(solo.iter().all(|b| b.items.len() == 1));
    // Input 1 is the bad one: its lone call fails, the others succeed.
    let results = solo
        .iter()
        .map(|b| {
            if b.items[0].input[0] == 1 {
                failed(b, FailureKind::Failed, "ValueError: bad pixel")
            } else {
                all_ok(b)
            }
        })
        .collect();
    h.pull(1, results, false);
    assert_eq!(h.result_of(ids[0]).state, TaskState::Completed);
    assert_eq!(h.result_of(ids[2]).state, TaskState::Completed);
    let bad = h.result_of(ids[1]);
    assert_eq!(bad.state, TaskState::Failed);
    assert_eq!(
        bad.outcome,
        Some(Outcome::Error("ValueError: bad pixel".into()))
    );
}

#[test]
fn a_crashing_servable_is_retried_then_fails_with_its_last_words() {
    let mut h = Harness::new();
    h.publish(record(spec("digits", "1.0.0")));
    h.exec_worker(1, "w1", 1);
    let id = h.submit_to("digits", Payload::from_static(NIL)).unwrap();
    let (poll, out) = h.poll(1);
    let mut batch = work_in(&out, poll);
    for attempt in 1..=3 {
        let message = format!("servable process exited with signal 9 (attempt {attempt})");
        let (report, out) = h.pull(
            1,
            vec![failed(&batch[0], FailureKind::Crashed, &message)],
            false,
        );
        // The retry comes straight back on the report's reply.
        batch = work_in(&out, report);
        assert_eq!(batch.len(), usize::from(attempt < 3), "attempt {attempt}");
    }
    let view = h.result_of(id);
    assert_eq!(view.state, TaskState::Failed);
    assert_eq!(view.attempts, 3);
    match view.outcome {
        Some(Outcome::Error(e)) => {
            assert!(
                e.contains("each of 3 attempts") && e.contains("attempt 3"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_servable_in_use_cannot_be_removed() {
    let mut h = Harness::new();
    h.publish(record(spec("parse", "1.0.0")));
    let id = h.submit_to("parse", Payload::from_static(NIL)).unwrap();
    let (from, out) = h.call(ClientCall::RemoveServable {
        id: "parse@1.0.0".into(),
    });
    match client_reply(&out, from) {
        Some(ClientReply::Error(e)) => assert!(e.message.contains("1 unfinished task"), "{e}"),
        other => panic!("{other:?}"),
    }
    h.call(ClientCall::Cancel { ids: vec![id] });
    h.publish(pipeline("chain", &["parse@1.0.0"]));
    let (from, out) = h.call(ClientCall::RemoveServable {
        id: "parse@1.0.0".into(),
    });
    match client_reply(&out, from) {
        Some(ClientReply::Error(e)) => assert!(e.message.contains("chain@1.0.0"), "{e}"),
        other => panic!("{other:?}"),
    }
    let (from, mut out) = h.call(ClientCall::RemoveServable {
        id: "chain@1.0.0".into(),
    });
    out.extend(h.flush());
    assert!(matches!(
        client_reply(&out, from),
        Some(ClientReply::Removed { .. })
    ));
    assert!(out.iter().any(|a| matches!(a, Action::Persist { op: StoreOp::RemoveServable(id), .. } if id == "chain@1.0.0")));
}

#[test]
fn search_ranks_title_over_description_and_filters() {
    let mut h = Harness::new();
    let mut a = spec("band-gap", "1.0.0");
    a.title = "Band gap predictor".into();
    a.domains = vec!["materials science".into()];
    let mut b = spec("formation-enthalpy", "1.0.0");
    b.description = "Predicts formation enthalpy; useful before band structure work.".into();
    b.domains = vec!["materials science".into()];
    let mut c = spec("digits", "1.0.0");
    c.domains = vec!["computer vision".into()];
    c.creators[0].name = "Yann".into();
    for r in [a, b, c] {
        h.publish(record(r));
    }
    let query = |h: &mut Harness, q: SearchQuery| {
        let (from, out) = h.call(ClientCall::SearchServables(q));
        match client_reply(&out, from) {
            Some(ClientReply::Servables { servables }) => {
                servables.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        }
    };
    let hits = query(
        &mut h,
        SearchQuery {
            text: "band".into(),
            ..SearchQuery::default()
        },
    );
    assert_eq!(hits, ["band-gap", "formation-enthalpy"]);
    let hits = query(
        &mut h,
        SearchQuery {
            domain: Some("Computer Vision".into()),
            ..SearchQuery::default()
        },
    );
    assert_eq!(hits, ["digits"]);
    let hits = query(
        &mut h,
        SearchQuery {
            text: "predictor".into(),
            author: Some("yann".into()),
            ..SearchQuery::default()
        },
    );
    assert!(hits.is_empty());
}

#[test]
fn after_a_restart_tasks_of_removed_servables_fail_with_a_reason() {
    let stored = StoredTask {
        servable: "gone@1.0.0".into(),
        params: Payload::new(),
        input: Payload::from_static(NIL),
        submitted_us: 5,
        owner: None,
    };
    let recovered = Recovered {
        tasks: vec![(TaskId(3), stored, None)],
        reserved_until: 10,
        ..Recovered::default()
    };
    let mut h = Harness::with(config(), recovered);
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    assert_eq!(persisted_results(&out), [TaskId(3)]);
    match h.result_of(TaskId(3)).outcome {
        Some(Outcome::Error(e)) => assert!(e.contains("cannot run after a restart"), "{e}"),
        other => panic!("{other:?}"),
    }
}

// ----- memo store and batching --------------------------------------------

use crate::config::ServableOverride;
use flotilla_protocol::servable::BatchDelay;
use flotilla_protocol::task::MemoUse;

fn memo_spec(name: &str, version: &str) -> ServableSpec {
    let mut s = spec(name, version);
    s.options.memoize = true;
    s.options.max_batch_size = 16;
    s
}

fn input(v: u8) -> Payload {
    Payload::from(vec![v])
}

impl Harness {
    fn run_sync(&mut self, servable: &str, input: Payload) -> (ReplyTo, Vec<Action>) {
        let (from, mut out) = self.call(ClientCall::Submit {
            tasks: vec![TaskRequest {
                servable: servable.into(),
                input,
                params: Payload::new(),
            }],
            wait_ms: Some(60_000),
        });
        out.extend(self.flush());
        (from, out)
    }
}

fn doubled(p: &Payload) -> Outcome {
    Outcome::Output(Payload::from(vec![p[0].wrapping_mul(2)]))
}

#[test]
fn a_memo_hit_is_answered_without_any_worker() {
    let mut h = Harness::new();
    h.publish(record(memo_spec("m", "1.0.0")));
    h.exec_worker(1, "w1", 1);
    let (client, _) = h.run_sync("m", input(21));
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    let (_, mut out) = h.pull(1, vec![outputs(&batch[0], doubled)], false);
    out.extend(h.flush());
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Persist {
            op: StoreOp::PutMemo { .. },
            ..
        }
    )));
    assert!(matches!(
        client_reply(&out, client),
        Some(ClientReply::Results { .. })
    ));
    // No worker at all now.
    h.ev(Event::PipeClosed { pipe: PipeId(1) });
    let (client, out) = h.run_sync("m", input(21));
    assert!(!out.iter().any(|a| matches!(a, Action::ReplyWorker { .. })));
    match client_reply(&out, client) {
        Some(ClientReply::Results { tasks }) => {
            assert_eq!(tasks[0].state, TaskState::Completed);
            assert_eq!(tasks[0].memo, Some(MemoUse::Stored));
            assert_eq!(tasks[0].outcome, Some(Outcome::Output(input(42))));
            assert_eq!(tasks[0].attempts, 0, "never dispatched");
        }
        other => panic!("{other:?}"),
    }
    let (from, out) = h.call(ClientCall::MemoStats);
    match client_reply(&out, from) {
        Some(ClientReply::MemoStats(s)) => {
            assert_eq!((s.hits, s.misses, s.entries), (1, 1, 1));
            assert_eq!(s.per_servable[0].0, "m@1.0.0");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn identical_requests_in_flight_run_once() {
    let mut h = Harness::new();
    h.publish(record(memo_spec("m", "1.0.0")));
    let clients: Vec<ReplyTo> = (0..100).map(|_| h.run_sync("m", input(5)).0).collect();
    assert_eq!(
        h.core.sched.queues.len(),
        1,
        "one execution queued for 100 requests"
    );
    h.exec_worker(1, "w1", 4);
    let (poll, out) = h.poll(1);
    let batches = work_in(&out, poll);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].items.len(), 1);
    let (_, mut out) = h.pull(1, vec![outputs(&batches[0], doubled)], false);
    out.extend(h.flush());
    let mut coalesced = 0;
    for c in clients {
        match client_reply(&out, c) {
            Some(ClientReply::Results { tasks }) => {
                assert_eq!(tasks[0].outcome, Some(Outcome::Output(input(10))));
                coalesced += usize::from(tasks[0].memo == Some(MemoUse::Coalesced));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(coalesced, 99);
    assert_eq!(h.core.memo.store.report().coalesced, 99);
}

#[test]
fn a_cancelled_leader_hands_over_to_the_next_identical_request() {
    let mut h = Harness::new();
    h.publish(record(memo_spec("m", "1.0.0")));
    let a = h.submit_to("m", input(1)).unwrap();
    let b = h.submit_to("m", input(1)).unwrap();
    h.call(ClientCall::Cancel { ids: vec![a] });
    h.exec_worker(1, "w1", 1);
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll);
    assert_eq!(batch[0].items[0].task, b);
    h.pull(1, vec![outputs(&batch[0], doubled)], false);
    assert_eq!(h.result_of(b).state, TaskState::Completed);
    assert_eq!(h.result_of(a).state, TaskState::Cancelled);
}

#[test]
fn a_new_version_misses_and_failures_are_never_memoised() {
    let mut h = Harness::new();
    h.publish(record(memo_spec("m", "1.0.0")));
    h.exec_worker(1, "w1", 1);
    let run = |h: &mut Harness, servable: &str, f: fn(&Payload) -> Outcome| {
        let id = h.submit_to(servable, input(3)).unwrap();
        let (poll, out) = h.poll(1);
        let batch = work_in(&out, poll);
        h.pull(1, vec![outputs(&batch[0], f)], false);
        h.result_of(id)
    };
    let failed = run(&mut h, "m", |_| Outcome::Error("transient".into()));
    assert_eq!(failed.state, TaskState::Failed);
    let ok = run(&mut h, "m", doubled);
    assert_eq!(
        (ok.state, ok.memo),
        (TaskState::Completed, None),
        "the failure was not stored"
    );
    h.publish(record(memo_spec("m", "2.0.0")));
    let v2 = run(&mut h, "m", doubled);
    assert_eq!(
        (v2.servable.as_str(), v2.memo),
        ("m@2.0.0", None),
        "v1's entry is not v2's"
    );
    let again = h.submit_to("m@1.0.0", input(3)).unwrap();
    assert_eq!(h.result_of(again).memo, Some(MemoUse::Stored));
    // Clearing by name drops every version's entries.
    let (from, mut out) = h.call(ClientCall::MemoClear {
        servable: Some("m".into()),
    });
    out.extend(h.flush());
    assert_eq!(
        client_reply(&out, from),
        Some(ClientReply::MemoCleared { removed: 2 })
    );
}

#[test]
fn eviction_keeps_the_memo_within_its_entry_bound() {
    let mut cfg = config();
    cfg.memo_max_entries = 2;
    let mut h = Harness::with(cfg, Recovered::default());
    h.publish(record(memo_spec("m", "1.0.0")));
    h.exec_worker(1, "w1", 1);
    let mut removed = Vec::new();
    for v in 0..3 {
        h.submit_to("m", input(v)).unwrap();
        let (poll, out) = h.poll(1);
        let batch = work_in(&out, poll);
        let (_, out) = h.pull(1, vec![outputs(&batch[0], doubled)], false);
        for a in out {
            if let Action::Persist {
                op: StoreOp::RemoveMemo(keys),
                ..
            } = a
            {
                removed.extend(keys);
            }
        }
    }
    assert_eq!(removed.len(), 1, "the oldest entry went");
    assert_eq!(h.core.memo.store.report().entries, 2);
    // Input 0 was evicted: it runs again; input 2 is still there.
    let id = h.submit_to("m", input(2)).unwrap();
    assert_eq!(h.result_of(id).memo, Some(MemoUse::Stored));
    let id = h.submit_to("m", input(0)).unwrap();
    assert_eq!(h.result_of(id).state, TaskState::Queued);
}

#[test]
fn the_site_can_turn_memoisation_on_for_a_builtin() {
    let mut cfg = config();
    cfg.overrides.insert(
        "echo".into(),
        ServableOverride {
            memoize: Some(true),
            ..ServableOverride::default()
        },
    );
    let mut h = Harness::with(cfg, Recovered::default());
    h.hello(1, "w1", 1);
    let first = h.submit_to("echo", input(9)).unwrap();
    let (poll, out) = h.poll(1);
    h.pull(1, vec![all_ok(&work_in(&out, poll)[0])], false);
    assert_eq!(h.result_of(first).memo, None);
    let second = h.submit_to("echo", input(9)).unwrap();
    assert_eq!(h.result_of(second).memo, Some(MemoUse::Stored));
}

fn delayed_spec(max_batch: u32, delay: BatchDelay) -> ServableSpec {
    let mut s = spec("batchy", "1.0.0");
    s.options.max_batch_size = max_batch;
    s.options.max_batch_delay_ms = delay;
    s
}

#[test]
fn a_batch_waits_for_its_delay_unless_it_fills_up() {
    let mut h = Harness::new();
    h.publish(record(delayed_spec(4, BatchDelay::Fixed(10))));
    h.exec_worker(1, "w1", 2);
    let (poll, _) = h.poll(1);
    h.submit_to("batchy", input(1)).unwrap();
    h.submit_to("batchy", input(2)).unwrap();
    assert_eq!(h.core.next_deadline(h.now), Some(h.now + 10_000));
    let out = h.advance(5_000);
    assert!(
        worker_reply(&out, poll).is_none(),
        "5 ms: still waiting for more"
    );
    let out = h.advance(5_000);
    let batch = work_in(&out, poll);
    assert_eq!(batch[0].items.len(), 2, "10 ms: sent as it is");
    // Four at once fill a batch: no waiting.
    let (poll, _) = h.poll(1);
    let (_, out) = h.call(ClientCall::Submit {
        tasks: (0..4)
            .map(|v| TaskRequest {
                servable: "batchy".into(),
                input: input(v),
                params: Payload::new(),
            })
            .collect(),
        wait_ms: None,
    });
    assert_eq!(work_in(&out, poll)[0].items.len(), 4);
}

#[test]
fn auto_batching_grows_while_calls_get_cheaper_per_request() {
    let mut h = Harness::new();
    let mut s = delayed_spec(64, BatchDelay::Auto);
    s.options.latency_target_ms = 50;
    h.publish(record(s));
    h.exec_worker(1, "w1", 1);
    let mut sizes = Vec::new();
    for _ in 0..40 {
        let (from, mut out) = h.call(ClientCall::Submit {
            tasks: (0..64)
                .map(|v| TaskRequest {
                    servable: "batchy".into(),
                    input: input(v),
                    params: Payload::new(),
                })
                .collect(),
            wait_ms: None,
        });
        out.extend(h.flush());
        assert!(client_reply(&out, from).is_some());
        // Drain the queue batch by batch; each call costs 2 ms + 20 µs/input.
        let mut next: Option<WorkBatch> = None;
        loop {
            let batch = match next.take() {
                Some(b) => b,
                None if h.core.sched.queues.is_empty() => break,
                None => {
                    let (poll, out) = h.poll(1);
                    let out = if worker_reply(&out, poll).is_none() {
                        h.advance(60_000)
                    } else {
                        out
                    };
                    work_in(&out, poll).remove(0)
                }
            };
            sizes.push(batch.items.len());
            let mut result = outputs(&batch, doubled);
            result.run_us = 2_000 + 20 * batch.items.len() as u64;
            let (report, out) = h.pull(1, vec![result], false);
            next = work_in(&out, report).into_iter().next();
        }
    }
    assert_eq!(sizes[0], 1, "starts with single inputs");
    assert_eq!(
        *sizes.last().unwrap(),
        64,
        "ends with full batches: {sizes:?}"
    );
}

// ----- scaling, wall time, faults, restarts with live blocks ----------------

fn in_block(worker: &str, slots: u32, block: u32) -> Hello {
    let mut h = hello(worker, slots);
    h.block_id = Some(block);
    h
}

fn register(h: &mut Harness, pipe: u64, hello: Hello) -> Vec<Action> {
    let from = h.reply_to();
    h.ev(Event::Worker {
        from,
        pipe: PipeId(pipe),
        message: WorkerMessage::Hello(Box::new(hello)),
    })
}

fn submitted_blocks(out: &[Action]) -> Vec<u32> {
    out.iter()
        .filter_map(|a| match a {
            Action::SubmitBlock { block, .. } => Some(*block),
            _ => None,
        })
        .collect()
}

fn sleep_request(seconds: f64) -> TaskRequest {
    TaskRequest {
        servable: "sleep".into(),
        input: Payload::from(rmp_serde::to_vec(&seconds).unwrap()),
        params: Payload::new(),
    }
}

#[test]
fn queued_work_asks_for_blocks_at_the_next_strategy_run() {
    let mut cfg = config();
    cfg.pools[0] = policy(0, 0, 4);
    cfg.pools[0].slots_per_worker = Some(2);
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    assert!(submitted_blocks(&out).is_empty());
    h.submit("noop", 5);
    let out = h.advance(SEC);
    assert_eq!(
        submitted_blocks(&out),
        [0, 1, 2],
        "5 tasks, 2 slots a block"
    );
    let out = h.advance(SEC);
    assert!(submitted_blocks(&out).is_empty(), "pending blocks count");
}

/// A started daemon with `blocks` whose first block (0) the provider has
/// submitted as `job`.
fn started_with_block_0(blocks: BlockPolicy, job: &str) -> Harness {
    let mut cfg = config();
    cfg.pools[0] = blocks;
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    h.ev(Event::Block(BlockEvent::Submitted {
        block: 0,
        job: job.into(),
    }));
    h
}

#[test]
fn a_block_that_ends_loses_its_workers_and_requeues_their_tasks_at_once() {
    let mut h = started_with_block_0(policy(1, 1, 1), "77");
    register(&mut h, 1, in_block("w1", 1, 0));
    let ids = h.submit("sleep", 1);
    let (poll, out) = h.poll(1);
    assert_eq!(work_in(&out, poll).len(), 1);
    // The scheduler killed the job; the TCP connection has not noticed.
    let out = h.ev(Event::Block(BlockEvent::State {
        block: 0,
        state: flotilla_providers::JobState::Cancelled,
        message: Some("scancel".into()),
    }));
    assert!(out.contains(&Action::ClosePipe { pipe: PipeId(1) }));
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    assert_eq!(submitted_blocks(&out), [1], "replaced to keep min_blocks");
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Persist {
            op: StoreOp::RemoveBlock(0),
            ..
        }
    )));
    // And a worker of the replacement gets the task.
    register(&mut h, 2, in_block("w2", 1, 1));
    let (poll, out) = h.poll(2);
    assert_eq!(work_in(&out, poll)[0].items[0].task, ids[0]);
}

#[test]
fn a_worker_of_an_ended_block_is_not_taken_back() {
    let mut h = started_with_block_0(policy(1, 1, 1), "77");
    register(&mut h, 1, in_block("w1", 1, 0));
    let ids = h.submit("sleep", 1);
    h.poll(1);
    h.ev(Event::Block(BlockEvent::State {
        block: 0,
        state: flotilla_providers::JobState::Cancelled,
        message: Some("evicted".into()),
    }));
    // The evicted worker dials again before it dies.
    let out = register(&mut h, 3, in_block("w1", 1, 0));
    let refused = out.iter().find_map(|a| match a {
        Action::ReplyWorker {
            message: DaemonMessage::Refused { reason },
            close: true,
            ..
        } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        refused.as_deref(),
        Some("block 0 has ended; its workers are not taken back"),
        "{out:?}"
    );
    assert_eq!(h.state(ids[0]), TaskState::Queued);
    // The replacement block's worker is welcome, and gets the task.
    register(&mut h, 2, in_block("w2", 1, 1));
    let (poll, out) = h.poll(2);
    assert_eq!(work_in(&out, poll)[0].items[0].task, ids[0]);
}

#[test]
fn a_worker_near_the_end_of_its_job_gets_only_tasks_that_fit() {
    let mut h = Harness::new();
    // 60 s left before its job ends; the margin is 10 s.
    let mut hi = hello("w1", 1);
    hi.ends_at_unix_s = Some(h.now / SEC + 60);
    register(&mut h, 1, hi);
    // Teach the daemon that a sleep call takes 40 s.
    let (from, mut out) = h.call(ClientCall::Submit {
        tasks: vec![sleep_request(40.0)],
        wait_ms: None,
    });
    out.extend(h.flush());
    assert!(client_reply(&out, from).is_some());
    let (poll, out) = h.poll(1);
    let batch = work_in(&out, poll).remove(0);
    h.now += 40 * SEC;
    let mut result = all_ok(&batch);
    result.run_us = 40 * SEC;
    h.pull(1, vec![result], false);
    // 20 s left, 10 s of margin: a 40 s call does not fit any more.
    h.submit("sleep", 1);
    let (poll, out) = h.poll(1);
    assert!(
        worker_reply(&out, poll).is_none(),
        "held, not given the task"
    );
    // A worker with time to spare takes it.
    h.hello(2, "w2", 1);
    let (poll, out) = h.poll(2);
    assert_eq!(work_in(&out, poll).len(), 1);
}

#[test]
fn a_worker_that_leaves_at_its_wall_time_is_not_a_loss() {
    let mut h = Harness::new();
    h.hello(1, "w1", 1);
    let from = h.reply_to();
    let out = h.ev(Event::Worker {
        from,
        pipe: PipeId(1),
        message: WorkerMessage::Leave {
            reason: "wall time ends in 10 s".into(),
        },
    });
    assert_eq!(worker_reply(&out, from), Some(DaemonMessage::Shutdown));
    assert!(h.core.workers.is_empty());
    let (from, out) = h.call(ClientCall::Events {
        after: 0,
        wait_ms: None,
    });
    match client_reply(&out, from) {
        Some(ClientReply::Events { events }) => {
            let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
            assert_eq!(kinds, ["worker-registered", "worker-left"]);
            assert_eq!(events[1].message, "wall time ends in 10 s");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_restart_with_live_blocks_adopts_them_and_lets_workers_claim_their_tasks() {
    let stored = |n: u64| {
        (
            TaskId(n),
            StoredTask {
                servable: "sleep".into(),
                params: Payload::new(),
                input: Payload::from_static(NIL),
                submitted_us: 5,
                owner: None,
            },
            None,
        )
    };
    let recovered = Recovered {
        tasks: vec![stored(1), stored(2), stored(3)],
        reserved_until: 10,
        blocks: vec![BlockRecord {
            id: 4,
            job: "555".into(),
            submitted_us: 1,
            running_since_us: Some(2),
            pool: String::new(),
        }],
        next_block: 5,
        ..Recovered::default()
    };
    let mut cfg = config();
    cfg.pools[0] = policy(1, 1, 2);
    // Two workers per block: one coming back does not settle it.
    cfg.pools[0].workers_per_block = 2;
    let mut h = Harness::with(cfg, recovered);
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    assert!(out.contains(&Action::AdoptBlock {
        pool: "default".into(),
        block: 4,
        job: "555".into()
    }));
    assert!(
        submitted_blocks(&out).is_empty(),
        "the adopted block is kept"
    );
    // Its worker comes back still running task 2 (batch 9 of the old daemon).
    let mut hi = in_block("w1", 3, 4);
    hi.running = vec![(BatchId(9), vec![TaskId(2)])];
    register(&mut h, 1, hi);
    assert_eq!(h.state(TaskId(2)), TaskState::Running);
    // Nothing else is dispatched during the grace period...
    let (poll, out) = h.poll(1);
    assert!(worker_reply(&out, poll).is_none());
    // ...then the unclaimed tasks are queued and dispatched.
    h.advance(6 * SEC);
    let (poll, out) = h.poll(1);
    let batches = work_in(&out, poll);
    let mut given: Vec<TaskId> = batches
        .iter()
        .flat_map(|b| b.items.iter().map(|i| i.task))
        .collect();
    given.sort();
    assert_eq!(given, [TaskId(1), TaskId(3)]);
    // The old batch's result is accepted.
    let result = BatchResult {
        batch: BatchId(9),
        run_us: 5,
        received_us: 0,
        sent_us: 0,
        outcomes: vec![(TaskId(2), Outcome::Output(Payload::from_static(NIL)))],
        failure: None,
    };
    h.pull(1, vec![result], false);
    assert_eq!(h.state(TaskId(2)), TaskState::Completed);
}

#[test]
fn a_refused_submission_shows_the_scheduler_s_words_in_status_and_events_and_never_pauses() {
    let mut cfg = config();
    cfg.pools[0] = policy(1, 1, 1);
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    let words = "sbatch: error: QOSMaxSubmitJobPerUserLimit";
    for _ in 0..5 {
        h.ev(Event::Block(BlockEvent::SubmitRefused {
            block: 0,
            by: flotilla_providers::RefusedBy::Scheduler,
            message: words.into(),
        }));
    }
    let (from, out) = h.call(ClientCall::DaemonStatus);
    match client_reply(&out, from) {
        Some(ClientReply::DaemonStatus(s)) => {
            assert_eq!(s.pools[0].paused, None);
            assert_eq!(s.blocks_paused, None);
            let held = s.pools[0].held.as_deref().unwrap();
            assert!(
                held.starts_with(&format!(
                    "submission refused by the scheduler: {words}; next try in"
                )),
                "{held}"
            );
            assert_eq!(s.blocks[0].state, "REFUSED");
        }
        other => panic!("{other:?}"),
    }
    let (from, out) = h.call(ClientCall::Events {
        after: 0,
        wait_ms: None,
    });
    match client_reply(&out, from) {
        Some(ClientReply::Events { events }) => {
            let refused: Vec<_> = events
                .iter()
                .filter(|e| e.kind == "block-refused")
                .collect();
            assert_eq!(refused.len(), 5);
            assert!(refused[0].message.contains(words), "{:?}", refused[0]);
            assert!(!events.iter().any(|e| e.kind == "pool-paused"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_paused_pool_is_resumed_by_name() {
    let mut cfg = config();
    cfg.pools[0] = policy(1, 1, 1);
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    for block in 0..3 {
        h.ev(Event::Block(BlockEvent::SubmitFailed {
            block,
            reason: "sbatch: error: invalid account".into(),
        }));
    }
    let (from, out) = h.call(ClientCall::DaemonStatus);
    match client_reply(&out, from) {
        Some(ClientReply::DaemonStatus(s)) => {
            let paused = s.pools[0].paused.as_deref().unwrap();
            assert!(paused.contains("invalid account"), "{paused}");
        }
        other => panic!("{other:?}"),
    }
    let (from, out) = h.call(ClientCall::ResumePool {
        name: "nope".into(),
    });
    assert!(matches!(
        client_reply(&out, from),
        Some(ClientReply::Error(ApiError {
            kind: ApiErrorKind::NotFound,
            ..
        }))
    ));
    let (from, out) = h.call(ClientCall::ResumePool {
        name: "default".into(),
    });
    assert_eq!(
        client_reply(&out, from),
        Some(ClientReply::PoolResumed {
            name: "default".into()
        })
    );
    assert_eq!(submitted_blocks(&out), [3]);
}

#[test]
fn recovered_tasks_are_queued_at_once_when_the_adopted_blocks_are_gone() {
    let recovered = Recovered {
        tasks: vec![(
            TaskId(1),
            StoredTask {
                servable: "noop".into(),
                params: Payload::new(),
                input: Payload::from_static(NIL),
                submitted_us: 5,
                owner: None,
            },
            None,
        )],
        reserved_until: 10,
        blocks: vec![BlockRecord {
            id: 0,
            job: "123".into(),
            submitted_us: 1,
            running_since_us: Some(2),
            pool: String::new(),
        }],
        next_block: 1,
        ..Recovered::default()
    };
    let mut h = Harness::with(config(), recovered);
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    h.hello(1, "w1", 1);
    let (poll, out) = h.poll(1);
    assert!(
        worker_reply(&out, poll).is_none(),
        "held for the grace period"
    );
    // The provider no longer knows the job (a local block dies with its
    // daemon): nobody can claim the task, so it is queued now.
    let out = h.ev(Event::Block(BlockEvent::State {
        block: 0,
        state: flotilla_providers::JobState::Missing,
        message: None,
    }));
    assert_eq!(work_in(&out, poll)[0].items[0].task, TaskId(1));
}

/// A daemon with one block (0) whose worker (pipe 1, 2 slots) runs two
/// sleep tasks.
fn block_0_running_two_sleeps() -> Harness {
    let mut h = started_with_block_0(policy(1, 1, 2), "9");
    register(&mut h, 1, in_block("w1", 2, 0));
    h.submit("sleep", 2);
    let (poll, out) = h.poll(1);
    assert_eq!(work_in(&out, poll).len(), 2);
    h
}

#[test]
fn tasks_of_a_block_the_scheduler_ended_are_not_suspects() {
    let mut h = block_0_running_two_sleeps();
    // scancel: the connection drops first, the scheduler's word follows.
    h.ev(Event::PipeClosed { pipe: PipeId(1) });
    assert_eq!(h.core.recovery.suspects.len(), 2);
    h.ev(Event::Block(BlockEvent::State {
        block: 0,
        state: flotilla_providers::JobState::Cancelled,
        message: None,
    }));
    assert!(h.core.recovery.suspects.is_empty());
    // Both go to the next worker together, not one at a time.
    h.hello(2, "w2", 2);
    let (poll, out) = h.poll(2);
    assert_eq!(work_in(&out, poll).len(), 2);
}

#[test]
fn tasks_of_a_block_that_failed_with_its_worker_stay_suspects() {
    let mut h = block_0_running_two_sleeps();
    // A task killed the worker, and a block that is just its worker ended
    // with it: that is no excuse for the tasks it ran.
    h.ev(Event::PipeClosed { pipe: PipeId(1) });
    h.ev(Event::Block(BlockEvent::State {
        block: 0,
        state: flotilla_providers::JobState::Failed,
        message: Some("killed by signal 9".into()),
    }));
    assert_eq!(h.core.recovery.suspects.len(), 2);
    h.hello(2, "w2", 2);
    let (poll, out) = h.poll(2);
    assert_eq!(work_in(&out, poll).len(), 1, "one suspect at a time");
}

#[test]
fn a_busy_worker_holding_its_poll_gets_work_again_when_a_slot_frees() {
    let mut h = Harness::new();
    h.hello(1, "busy", 1);
    h.hello(2, "other", 1);
    h.submit("sleep", 3);
    let (p1, out) = h.poll(1);
    let first = work_in(&out, p1);
    assert_eq!(first.len(), 1);
    let (p2, out) = h.poll(2);
    assert_eq!(work_in(&out, p2).len(), 1);
    // Busy and waiting on a long-poll: dispatch passes it over (and forgets
    // it) while the third task waits.
    let (held, out) = h.poll(1);
    assert!(worker_reply(&out, held).is_none(), "{out:#?}");
    // Its result frees the slot: the third task goes to it at once.
    let (report, out) = h.pull(1, vec![all_ok(&first[0])], false);
    let batches = |to| match worker_reply(&out, to) {
        Some(DaemonMessage::Work { batches }) => batches.len(),
        _ => 0,
    };
    assert_eq!(batches(held) + batches(report), 1, "{out:#?}");
}

#[test]
fn each_loss_reason_counts_attempts_and_makes_suspects_as_it_should() {
    // (reason, attempts counted, becomes a suspect)
    let cases = [
        (
            LossReason::Left {
                reason: "walltime".into(),
            },
            0,
            false,
        ),
        (LossReason::ConnectionClosed, 1, true),
        (LossReason::HeartbeatSilence, 1, true),
        (LossReason::BlockEnded { block: BlockId(0) }, 1, false),
        (LossReason::Replaced, 1, true),
    ];
    for (reason, attempts, suspect) in cases {
        let mut h = Harness::new();
        let ids = h.submit("noop", 1);
        h.hello(1, "w1", 1);
        let (poll, out) = h.poll(1);
        assert_eq!(work_in(&out, poll).len(), 1, "{reason}");
        let key = h.core.workers.by_id("w1").expect("registered");
        let mut out = Vec::new();
        h.core.lose_worker(key, reason.clone(), h.now, &mut out);
        assert!(h.core.workers.is_empty(), "{reason}");
        let task = h.core.tasks.get(&ids[0]).expect("kept");
        assert!(task.is_queued(), "{reason}");
        assert_eq!(task.attempts(), attempts, "{reason}");
        assert_eq!(task.losses.len(), attempts as usize, "{reason}");
        if let Some(note) = task.losses.first() {
            assert_eq!(
                note,
                &format!("attempt 1: worker w1 on localhost was lost ({reason})")
            );
        }
        let suspects = h.core.recovery.suspects.len();
        assert_eq!(suspects, usize::from(suspect), "{reason}");
        assert_eq!(h.core.sched.queues.len(), usize::from(!suspect), "{reason}");
        assert_eq!(h.core.tasks.totals().requeued, 1, "{reason}");
    }
}

// --- The store failing and recovering -------------------------------------

fn unavailable(out: &[Action], to: ReplyTo) -> String {
    match client_reply(out, to) {
        Some(ClientReply::Error(e)) if e.kind == ApiErrorKind::Unavailable => e.message,
        other => panic!("expected an Unavailable error, got {other:?}"),
    }
}

const NO_ROOM: &str = "no space left for the store: 0.0 MiB free";

#[test]
fn a_submit_whose_write_fails_is_answered_at_once_and_its_tasks_withdrawn() {
    let mut h = Harness::new();
    let stored = h.submit("noop", 1);
    h.hello(1, "w1", 1);
    let (poll, _) = h.poll(1);
    let (from, out) = h.call(ClientCall::Submit {
        tasks: vec![request("echo"), request("echo")],
        wait_ms: None,
    });
    assert!(client_reply(&out, from).is_none(), "held until durable");
    let through = h.core.issued_seq();
    let out = h.ev(Event::StoreFailed {
        through,
        reason: NO_ROOM.into(),
    });
    let message = unavailable(&out, from);
    assert!(
        message.starts_with("not accepted") && message.contains(NO_ROOM),
        "{message}"
    );
    // Withdrawn wherever they were: none is queued or left to run, so a
    // worker's later result for one is ignored.
    assert_eq!(h.state(TaskId(2)), TaskState::Cancelled);
    assert_eq!(h.state(TaskId(3)), TaskState::Cancelled);
    assert!(h.core.sched.queues.is_empty());
    // The task stored before is untouched.
    assert_ne!(h.state(stored[0]), TaskState::Cancelled);

    // Until the store writes again, new tasks are refused at once.
    let (refused, out) = h.call(ClientCall::Submit {
        tasks: vec![request("noop")],
        wait_ms: None,
    });
    assert!(unavailable(&out, refused).contains(NO_ROOM));
    assert!(!out.iter().any(|a| matches!(a, Action::Persist { .. })));

    // A late confirmation of earlier writes releases nothing of the failed
    // request, and the worker's poll is still served.
    let out = h.flush();
    assert!(client_reply(&out, from).is_none());
    let _ = poll;

    let out = h.ev(Event::StoreRecovered);
    let reserved: Vec<_> = out
        .iter()
        .filter_map(|a| match a {
            Action::Persist {
                op: StoreOp::ReserveIds { until },
                ..
            } => Some(*until),
            _ => None,
        })
        .collect();
    assert_eq!(reserved.len(), 1, "the id reservation is written again");
    let ids = h.submit("noop", 1);
    assert!(ids[0].0 > 3, "ids are never reused: {ids:?}");
}

#[test]
fn a_run_whose_write_fails_gets_the_error_not_the_results() {
    let mut h = Harness::new();
    h.hello(1, "w1", 1);
    let (poll, _) = h.poll(1);
    let (client, out) = h.call(ClientCall::Submit {
        tasks: vec![request("echo")],
        wait_ms: Some(10_000),
    });
    let batches = work_in(&out, poll);
    // The worker finishes before the store has answered.
    let (_, out) = h.pull(1, vec![all_ok(&batches[0])], false);
    assert!(client_reply(&out, client).is_none(), "not yet durable");
    let through = h.core.issued_seq();
    let out = h.ev(Event::StoreFailed {
        through,
        reason: NO_ROOM.into(),
    });
    let message = unavailable(&out, client);
    assert!(message.contains(NO_ROOM), "{message}");
    assert!(client_reply(&h.flush(), client).is_none(), "answered once");
}

#[test]
fn a_run_withdrawn_while_it_waits_is_answered_with_the_error() {
    let mut h = Harness::new();
    let (client, out) = h.call(ClientCall::Submit {
        tasks: vec![request("echo")],
        wait_ms: Some(10_000),
    });
    assert!(client_reply(&out, client).is_none());
    let through = h.core.issued_seq();
    let out = h.ev(Event::StoreFailed {
        through,
        reason: NO_ROOM.into(),
    });
    assert!(unavailable(&out, client).starts_with("not accepted"));
    assert_eq!(h.state(TaskId(1)), TaskState::Cancelled);
}

// ----- frame sizes -----------------------------------------------------------

fn sized_request(bytes: usize) -> TaskRequest {
    TaskRequest {
        servable: "echo".into(),
        input: Payload::from(vec![0xc0u8; bytes]),
        params: Payload::new(),
    }
}

fn submit_sized(h: &mut Harness, sizes: &[usize]) -> Vec<TaskId> {
    let (from, mut out) = h.call(ClientCall::Submit {
        tasks: sizes.iter().map(|&n| sized_request(n)).collect(),
        wait_ms: None,
    });
    out.extend(h.flush());
    match client_reply(&out, from) {
        Some(ClientReply::Submitted { ids }) => ids,
        other => panic!("expected Submitted, got {other:?}"),
    }
}

/// The encoded size of a `Work` reply, as the worker would receive it.
fn frame_len(batches: &[WorkBatch]) -> usize {
    flotilla_protocol::encode(&DaemonMessage::Work {
        batches: batches.to_vec(),
    })
    .unwrap()
    .len()
}

#[test]
fn work_replies_never_exceed_the_workers_frame_limit() {
    let mut h = Harness::new();
    let mut hi = hello("w1", 3);
    hi.max_frame_bytes = 100_000;
    register(&mut h, 1, hi);
    // Three inputs that together are larger than the worker accepts, for a
    // servable that would batch them all together.
    let ids = submit_sized(&mut h, &[40_000, 40_000, 40_000]);
    let (poll, out) = h.poll(1);
    let first = work_in(&out, poll);
    assert!(frame_len(&first) <= 100_000, "{}", frame_len(&first));
    let sent: usize = first.iter().map(|b| b.items.len()).sum();
    assert_eq!(sent, 2, "two fit, the third waits for the next reply");
    // The third comes on the next request, alone in its reply.
    let (report, out) = h.pull(1, vec![], false);
    let second = work_in(&out, report);
    assert!(frame_len(&second) <= 100_000);
    let mut all: Vec<TaskId> = first
        .iter()
        .chain(&second)
        .flat_map(|b| b.items.iter().map(|i| i.task))
        .collect();
    all.sort();
    assert_eq!(all, ids);
}

#[test]
fn an_input_too_large_for_a_worker_waits_for_one_that_takes_it() {
    let mut h = Harness::new();
    let mut small = hello("small", 1);
    small.max_frame_bytes = 100_000;
    register(&mut h, 1, small);
    let ids = submit_sized(&mut h, &[150_000]);
    let (poll, out) = h.poll(1);
    assert!(
        worker_reply(&out, poll).is_none(),
        "not sent to the small one"
    );
    register(&mut h, 2, hello("large", 1));
    let (poll, out) = h.poll(2);
    let batches = work_in(&out, poll);
    assert_eq!(batches[0].items[0].task, ids[0]);
}

#[test]
fn an_input_larger_than_any_worker_accepts_is_refused_at_submission() {
    let mut h = Harness::new();
    let limit = h.core.cfg.max_frame_bytes;
    let (from, out) = h.call(ClientCall::Submit {
        tasks: vec![sized_request(10), sized_request(limit)],
        wait_ms: None,
    });
    match client_reply(&out, from) {
        Some(ClientReply::Error(ApiError {
            kind: ApiErrorKind::BadRequest,
            message,
        })) => assert_eq!(
            message,
            format!(
                "task 2 of 2: input of {limit} bytes exceeds the daemon's frame limit of {limit} bytes ([daemon] max_frame_bytes): no worker could be sent it"
            )
        ),
        other => panic!("{other:?}"),
    }
    // Nothing of the request was taken; an input that fits is.
    assert_eq!(h.core.tasks.len(), 0);
    submit_sized(&mut h, &[limit - 1024]);
}

// ----- accelerators per slot ----------------------------------------------

/// A servable needing `gpus` accelerators per call.
fn gpu_record(name: &str, gpus: u32) -> ServableRecord {
    let mut s = spec(name, "1.0.0");
    s.resources.gpus = gpus;
    record(s)
}

impl Harness {
    /// A worker offering every published servable whose slots hold
    /// `devices_per_slot[i]` accelerators each.
    fn worker_with_devices(&mut self, pipe: u64, name: &str, devices_per_slot: &[usize]) {
        let from = self.reply_to();
        let mut h = hello(name, devices_per_slot.len() as u32);
        h.servables.push("*".into());
        let mut next = 0;
        h.slot_resources = devices_per_slot
            .iter()
            .enumerate()
            .map(|(slot, &n)| {
                let devices = (next..next + n).map(|d| d.to_string()).collect();
                next += n;
                SlotResources {
                    devices,
                    cpus: slot.to_string(),
                }
            })
            .collect();
        self.ev(Event::Worker {
            from,
            pipe: PipeId(pipe),
            message: WorkerMessage::Hello(Box::new(h)),
        });
    }

    fn waiting_for(&mut self, servable: &str) -> Option<String> {
        let (from, out) = self.call(ClientCall::DaemonStatus);
        match client_reply(&out, from) {
            Some(ClientReply::DaemonStatus(s)) => s
                .queues
                .iter()
                .find(|q| q.servable.starts_with(servable))
                .and_then(|q| q.waiting_for.clone()),
            other => panic!("{other:?}"),
        }
    }

    fn queued(&mut self, servable: &str) -> u64 {
        let (from, out) = self.call(ClientCall::DaemonStatus);
        match client_reply(&out, from) {
            Some(ClientReply::DaemonStatus(s)) => s
                .queues
                .iter()
                .find(|q| q.servable.starts_with(servable))
                .map_or(0, |q| q.queued),
            other => panic!("{other:?}"),
        }
    }
}

use flotilla_protocol::interchange::SlotResources;

/// The batches sent on `to` (none while the poll is held).
fn sent(out: &[Action], to: ReplyTo) -> Vec<WorkBatch> {
    match worker_reply(out, to) {
        Some(DaemonMessage::Work { batches }) => batches,
        _ => Vec::new(),
    }
}

#[test]
fn a_gpu_servable_is_never_dispatched_to_a_worker_without_gpus_in_its_slots() {
    let mut h = Harness::new();
    h.publish(gpu_record("gpu-model", 1));
    h.publish(record(spec("cpu-model", "1.0.0")));
    for _ in 0..3 {
        h.submit_to("gpu-model", Payload::from_static(NIL)).unwrap();
    }
    h.submit_to("cpu-model", Payload::from_static(NIL)).unwrap();
    // A worker without accelerators, and one whose second slot has none:
    // neither gets the GPU servable, the first gets the CPU one.
    h.worker_with_devices(1, "cpu-only", &[0, 0]);
    h.worker_with_devices(2, "half", &[1, 0]);
    let (poll, out) = h.poll(1);
    let batches = sent(&out, poll);
    assert_eq!(batches.len(), 1);
    assert!(batches[0].servable.starts_with("cpu-model"), "{batches:?}");
    let (poll, out) = h.poll(2);
    assert!(sent(&out, poll).is_empty());
    let (poll, out) = h.poll(1);
    assert!(sent(&out, poll).is_empty());
    let out = h.advance(1_000);
    assert!(sent(&out, poll).is_empty());
    assert_eq!(h.queued("gpu-model"), 3);
    // A worker with one GPU per slot takes them (in one batch of up to 8).
    h.worker_with_devices(3, "gpus", &[1, 1]);
    let (poll, out) = h.poll(3);
    let batches = sent(&out, poll);
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert!(batches[0].servable.starts_with("gpu-model"));
    assert_eq!(batches[0].items.len(), 3);
}

#[test]
fn a_servable_no_worker_can_hold_stays_queued() {
    let mut h = Harness::new();
    h.publish(gpu_record("big-model", 2));
    let id = h.submit_to("big-model", Payload::from_static(NIL)).unwrap();
    assert_eq!(
        h.waiting_for("big-model").as_deref(),
        Some(
            "needs 2 accelerators per slot; no worker is connected (the site's [worker] accelerators and slots)"
        )
    );
    h.worker_with_devices(1, "one-each", &[1, 1, 1, 1]);
    let (poll, out) = h.poll(1);
    assert!(sent(&out, poll).is_empty());
    assert_eq!(
        h.waiting_for("big-model").as_deref(),
        Some(
            "needs 2 accelerators per slot; the connected workers' slots hold at most 1 (the site's [worker] accelerators and slots)"
        )
    );
    h.advance(60_000_000);
    assert_eq!(h.state(id), TaskState::Queued);
    assert_eq!(h.queued("big-model"), 1);
    // Two per slot: it runs, and nothing is said to wait for.
    h.worker_with_devices(2, "two-each", &[2, 2]);
    let (poll, out) = h.poll(2);
    assert_eq!(sent(&out, poll).len(), 1);
    assert_eq!(h.waiting_for("big-model"), None);
}

// ----- several pools ------------------------------------------------------

/// A pool named `name` with `labels`, scaling from nothing to `max`
/// blocks of one worker with `slots` slots each.
fn pool(name: &str, labels: &[(&str, &str)], cost: f64, max: u32) -> BlockPolicy {
    let mut p = policy(0, 0, max);
    p.pool = name.into();
    p.slots_per_worker = Some(2);
    p.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    p.cost = cost;
    p
}

/// A core with a CPU pool (`cpu`, cost 1) and a GPU pool (`gpu`, cost 4),
/// both on site `polaris`, started.
fn two_pools() -> Harness {
    let mut cfg = config();
    cfg.pools = vec![
        pool("cpu", &[("site", "polaris"), ("partition", "cpu")], 1.0, 4),
        pool("gpu", &[("site", "polaris"), ("partition", "gpu")], 4.0, 4),
    ];
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    h
}

/// A published servable placed by `pools` and `labels`.
fn placed(name: &str, pools: &[&str], labels: &[(&str, &str)]) -> ServableRecord {
    let mut s = spec(name, "1.0.0");
    s.resources.pools = pools.iter().map(|p| (*p).to_owned()).collect();
    s.resources.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    record(s)
}

/// The blocks each action submits, with their pools.
fn submitted_by_pool(out: &[Action]) -> Vec<(String, u32)> {
    out.iter()
        .filter_map(|a| match a {
            Action::SubmitBlock { pool, block } => Some((pool.clone(), *block)),
            _ => None,
        })
        .collect()
}

impl Harness {
    /// Worker `name` of block `block`, offering every published servable.
    fn block_worker(&mut self, pipe: u64, name: &str, block: u32) {
        let mut hi = in_block(name, 2, block);
        hi.servables.push("*".into());
        register(self, pipe, hi);
    }

    /// The provider accepted and started block `block`.
    fn block_runs(&mut self, block: u32) {
        self.ev(Event::Block(BlockEvent::Submitted {
            block,
            job: format!("job{block}"),
        }));
    }

    fn status(&mut self) -> flotilla_protocol::client::DaemonStatus {
        let (from, out) = self.call(ClientCall::DaemonStatus);
        match client_reply(&out, from) {
            Some(ClientReply::DaemonStatus(s)) => *s,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_queue_only_one_pool_can_serve_scales_only_that_pool() {
    let mut h = two_pools();
    h.publish(placed("model", &[], &[("partition", "gpu")]));
    h.publish(placed("tokenizer", &["cpu"], &[]));
    for _ in 0..3 {
        h.submit_to("model", Payload::from(vec![1])).unwrap();
    }
    let out = h.advance(SEC);
    assert_eq!(
        submitted_by_pool(&out),
        [("gpu".to_owned(), 0), ("gpu".to_owned(), 1)],
        "3 tasks, 2 slots a block, on the GPU pool only"
    );
    h.submit_to("tokenizer", Payload::from(vec![1])).unwrap();
    let out = h.advance(SEC);
    assert_eq!(submitted_by_pool(&out), [("cpu".to_owned(), 2)]);
    // Block ids are the daemon's: each pool's status lists its own.
    let s = h.status();
    let pools: Vec<(String, u32)> = s.pools.iter().map(|p| (p.name.clone(), p.wanted)).collect();
    assert_eq!(pools, [("cpu".to_owned(), 1), ("gpu".to_owned(), 2)]);
    let blocks: Vec<(u32, Option<String>)> =
        s.blocks.iter().map(|b| (b.id, b.pool.clone())).collect();
    assert_eq!(
        blocks,
        [
            (2, Some("cpu".to_owned())),
            (0, Some("gpu".to_owned())),
            (1, Some("gpu".to_owned()))
        ]
    );
}

#[test]
fn batches_go_only_to_workers_of_eligible_pools() {
    let mut h = two_pools();
    h.publish(placed("model", &["gpu"], &[]));
    h.publish(record(spec("anywhere", "1.0.0")));
    let model = h.submit_to("model", Payload::from(vec![1])).unwrap();
    h.advance(SEC);
    h.block_runs(0);
    let s = h.status();
    assert_eq!(s.blocks[0].pool.as_deref(), Some("gpu"));
    // Worker 1 belongs to no block of ours (attached by hand): placed
    // servables never go to it; unplaced ones do.
    h.exec_worker(1, "by-hand", 2);
    let (poll, out) = h.poll(1);
    assert!(
        worker_reply(&out, poll).is_none(),
        "held, not served: {out:?}"
    );
    let anywhere = h.submit_to("anywhere", Payload::from(vec![2])).unwrap();
    assert_eq!(h.state(anywhere), TaskState::Running);
    // The GPU block's worker gets the model's task.
    h.block_worker(2, "gpu-w", 0);
    let (poll, out) = h.poll(2);
    let batches = work_in(&out, poll);
    assert_eq!(batches[0].items[0].task, model);
    let s = h.status();
    let w = s.workers.iter().find(|w| w.id == "gpu-w").unwrap();
    assert_eq!(w.pool.as_deref(), Some("gpu"));
    let w = s.workers.iter().find(|w| w.id == "by-hand").unwrap();
    assert_eq!(w.pool, None);
}

#[test]
fn among_eligible_pools_warm_workers_then_capacity_then_cost_decide() {
    let mut h = two_pools();
    // Both pools carry site = polaris: either may serve it.
    h.publish(placed("both", &[], &[("site", "polaris")]));
    h.submit_to("both", Payload::from(vec![1])).unwrap();
    let out = h.advance(SEC);
    assert_eq!(
        submitted_by_pool(&out),
        [("cpu".to_owned(), 0)],
        "the cheaper pool"
    );
    // The CPU block never comes; a GPU worker is warm: the work goes
    // there, and the CPU pool's pending block is no longer wanted.
    h.ev(Event::Block(BlockEvent::SubmitRefused {
        block: 0,
        by: flotilla_providers::RefusedBy::Channel,
        message: "ssh: connect to host login1: No route to host".into(),
    }));
    let mut out = Vec::new();
    // A GPU block the pool already had (adopted as a record would be).
    h.core.fleet.pools.adopt(
        vec![BlockRecord {
            id: 7,
            job: "700".into(),
            submitted_us: 1,
            running_since_us: Some(2),
            pool: "gpu".into(),
        }],
        h.now,
        &mut out,
    );
    h.block_worker(3, "gpu-w", 7);
    h.submit_to("both", Payload::from(vec![2])).unwrap();
    h.submit_to("both", Payload::from(vec![3])).unwrap();
    let out = h.advance(SEC);
    assert!(
        submitted_by_pool(&out).iter().all(|(p, _)| p != "cpu"),
        "{out:?}"
    );
    let (poll, out) = h.poll(3);
    let items: usize = work_in(&out, poll).iter().map(|b| b.items.len()).sum();
    assert_eq!(items, 3, "the warm GPU worker serves all of it");
}

#[test]
fn a_failing_pool_moves_its_work_to_another_eligible_pool_and_stops_no_one() {
    let mut h = two_pools();
    h.publish(placed("both", &[], &[("site", "polaris")]));
    h.publish(placed("cpu-only", &["cpu"], &[]));
    h.submit_to("both", Payload::from(vec![1])).unwrap();
    h.submit_to("cpu-only", Payload::from(vec![1])).unwrap();
    let out = h.advance(SEC);
    assert_eq!(submitted_by_pool(&out), [("cpu".to_owned(), 0)]);
    // The CPU pool's scheduler cannot be reached: it backs off, and the
    // work any polaris pool can run scales the GPU pool at once; the
    // CPU-only task waits for its pool.
    let out = h.ev(Event::Block(BlockEvent::SubmitRefused {
        block: 0,
        by: flotilla_providers::RefusedBy::Channel,
        message: "ssh: connect to host login1: No route to host".into(),
    }));
    assert_eq!(submitted_by_pool(&out), [("gpu".to_owned(), 1)]);
    let s = h.status();
    let cpu = s.pools.iter().find(|p| p.name == "cpu").unwrap();
    assert!(cpu.held.as_deref().unwrap().contains("No route to host"));
    assert_eq!(h.queued("cpu-only"), 1);
    // The GPU pool serves; the CPU-only task never goes there.
    h.block_runs(1);
    h.block_worker(2, "gpu-w", 1);
    let (poll, out) = h.poll(2);
    let batches = work_in(&out, poll);
    assert_eq!(batches.len(), 1);
    assert!(batches[0].servable.starts_with("both@"));
    assert_eq!(h.queued("cpu-only"), 1);
}

#[test]
fn a_paused_pool_is_resumed_by_name_and_the_others_go_on() {
    let mut cfg = config();
    let mut cpu = pool("cpu", &[], 1.0, 2);
    cpu.init_blocks = 1;
    cpu.min_blocks = 1;
    cpu.max_failures = 1;
    cfg.pools = vec![cpu, pool("gpu", &[("partition", "gpu")], 4.0, 2)];
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    assert_eq!(submitted_by_pool(&out), [("cpu".to_owned(), 0)]);
    h.ev(Event::Block(BlockEvent::SubmitFailed {
        block: 0,
        reason: "boom".into(),
    }));
    let s = h.status();
    assert!(s.pools[0].paused.is_some() && s.pools[1].paused.is_none());
    assert!(
        s.blocks_paused
            .as_deref()
            .unwrap()
            .starts_with("pool `cpu`: "),
        "{:?}",
        s.blocks_paused
    );
    h.publish(placed("model", &[], &[("partition", "gpu")]));
    h.submit_to("model", Payload::from(vec![1])).unwrap();
    let out = h.advance(SEC);
    assert_eq!(submitted_by_pool(&out), [("gpu".to_owned(), 1)]);
    let (from, out) = h.call(ClientCall::ResumePool { name: "tpu".into() });
    match client_reply(&out, from) {
        Some(ClientReply::Error(e)) => {
            assert!(e.message.contains("this daemon's pools: cpu, gpu"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    let (from, out) = h.call(ClientCall::ResumePool { name: "cpu".into() });
    assert!(matches!(
        client_reply(&out, from),
        Some(ClientReply::PoolResumed { .. })
    ));
    assert_eq!(submitted_by_pool(&out), [("cpu".to_owned(), 2)]);
    let events = h.core.fleet.events.all();
    let paused = events.iter().find(|e| e.kind == "pool-paused").unwrap();
    assert_eq!(paused.pool.as_deref(), Some("cpu"));
}

#[test]
fn blocks_of_two_pools_are_adopted_each_by_its_pool_after_a_restart() {
    let record = |id: u32, pool: &str| BlockRecord {
        id,
        job: format!("{}", 100 + id),
        submitted_us: 1,
        running_since_us: Some(2),
        pool: pool.into(),
    };
    let recovered = Recovered {
        blocks: vec![record(3, "gpu"), record(5, "cpu"), record(6, "tpu")],
        next_block: 7,
        ..Recovered::default()
    };
    let mut cfg = config();
    cfg.pools = vec![
        pool("cpu", &[], 1.0, 2),
        pool("gpu", &[("partition", "gpu")], 4.0, 2),
    ];
    let mut h = Harness::with(cfg, recovered);
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    let adopted: Vec<(String, u32)> = out
        .iter()
        .filter_map(|a| match a {
            Action::AdoptBlock { pool, block, .. } => Some((pool.clone(), *block)),
            _ => None,
        })
        .collect();
    assert_eq!(adopted, [("cpu".to_owned(), 5), ("gpu".to_owned(), 3)]);
    // The block of a pool the site no longer has is forgotten, and said so.
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Persist {
            op: StoreOp::RemoveBlock(6),
            ..
        }
    )));
    // Their workers come back into their pools; new ids continue after them.
    h.block_worker(1, "gpu-w", 3);
    h.block_worker(2, "cpu-w", 5);
    let s = h.status();
    let pool_of = |id: &str| {
        s.workers
            .iter()
            .find(|w| w.id == id)
            .and_then(|w| w.pool.clone())
    };
    assert_eq!(pool_of("gpu-w").as_deref(), Some("gpu"));
    assert_eq!(pool_of("cpu-w").as_deref(), Some("cpu"));
    h.publish(placed("model", &["gpu"], &[]));
    for _ in 0..5 {
        h.submit_to("model", Payload::from(vec![1])).unwrap();
    }
    let out = h.advance(SEC);
    assert_eq!(
        submitted_by_pool(&out),
        [("gpu".to_owned(), 7)],
        "5 tasks, 2 slots a block, max 2 blocks: one more GPU block, numbered after the adopted ones"
    );
    // A record from before pools goes to the first pool.
    let recovered = Recovered {
        blocks: vec![record(2, "")],
        next_block: 3,
        ..Recovered::default()
    };
    let mut cfg = config();
    cfg.pools = vec![pool("cpu", &[], 1.0, 2), pool("gpu", &[], 1.0, 2)];
    let mut h = Harness::with(cfg, recovered);
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    assert!(out.contains(&Action::AdoptBlock {
        pool: "cpu".into(),
        block: 2,
        job: "102".into()
    }));
}

#[test]
fn a_pipeline_runs_each_step_in_the_pool_it_needs() {
    let mut h = two_pools();
    h.publish(placed("tokenize", &["cpu"], &[]));
    h.publish(placed("infer", &["gpu"], &[]));
    h.publish(pipeline("chain", &["tokenize@1.0.0", "infer@1.0.0"]));
    h.core.fleet.pools.adopt(
        vec![
            BlockRecord {
                id: 10,
                job: "10".into(),
                submitted_us: 1,
                running_since_us: Some(2),
                pool: "cpu".into(),
            },
            BlockRecord {
                id: 11,
                job: "11".into(),
                submitted_us: 1,
                running_since_us: Some(2),
                pool: "gpu".into(),
            },
        ],
        h.now,
        &mut Vec::new(),
    );
    h.block_worker(1, "cpu-w", 10);
    h.block_worker(2, "gpu-w", 11);
    let id = h.submit_to("chain", Payload::from(vec![1])).unwrap();
    let plus_one = |p: &Payload| Outcome::Output(Payload::from(vec![p[0] + 1]));
    let (gpu_poll, out) = h.poll(2);
    assert!(
        worker_reply(&out, gpu_poll).is_none(),
        "step 1 is not the GPU's"
    );
    let (poll, out) = h.poll(1);
    let first = work_in(&out, poll);
    assert_eq!(first[0].servable, "tokenize@1.0.0");
    // Its output goes on to step 2, which the GPU worker's held poll gets,
    // not the CPU worker that reported it.
    let (report, out) = h.pull(1, vec![outputs(&first[0], plus_one)], true);
    assert!(
        worker_reply(&out, report).is_none(),
        "step 2 is not the CPU's"
    );
    let second = work_in(&out, gpu_poll);
    assert_eq!(second[0].servable, "infer@1.0.0");
    h.pull(2, vec![outputs(&second[0], plus_one)], false);
    assert_eq!(
        h.result_of(id).outcome,
        Some(Outcome::Output(Payload::from(vec![0x03])))
    );
}

#[test]
fn status_says_when_no_pool_matches_a_servable_or_its_pools_have_no_workers() {
    let mut h = two_pools();
    h.publish(placed("on-tpu", &[], &[("partition", "tpu")]));
    h.publish(placed("on-theta", &["theta"], &[("site", "alcf")]));
    h.publish(placed("model", &[], &[("site", "polaris")]));
    h.publish(placed("tokenizer", &["cpu"], &[]));
    for s in ["on-tpu", "on-theta", "model", "tokenizer"] {
        h.submit_to(s, Payload::from(vec![1])).unwrap();
    }
    assert_eq!(
        h.waiting_for("on-tpu").as_deref(),
        Some(
            "needs labels {partition = \"tpu\"}; no pool of this site matches (the site's [[pool]] names, labels and accelerators)"
        )
    );
    assert_eq!(
        h.waiting_for("on-theta").as_deref(),
        Some(
            "needs pool theta / labels {site = \"alcf\"}; no pool of this site matches (the site's [[pool]] names, labels and accelerators)"
        )
    );
    assert_eq!(
        h.waiting_for("model").as_deref(),
        Some("the eligible pools cpu, gpu have no connected workers yet")
    );
    assert_eq!(
        h.waiting_for("tokenizer").as_deref(),
        Some("the eligible pool cpu has no connected workers yet")
    );
    // A GPU worker connects: the model has a worker to wait for, the
    // tokenizer still has none in its pool.
    let mut out = Vec::new();
    h.core.fleet.pools.adopt(
        vec![BlockRecord {
            id: 7,
            job: "700".into(),
            submitted_us: 1,
            running_since_us: Some(2),
            pool: "gpu".into(),
        }],
        h.now,
        &mut out,
    );
    let gpu_block = 7;
    h.block_worker(1, "gpu-w", gpu_block);
    assert_eq!(h.waiting_for("model"), None);
    assert_eq!(
        h.waiting_for("tokenizer").as_deref(),
        Some("the eligible pool cpu has no connected workers yet")
    );
}

#[test]
fn each_worker_keeps_the_walltime_margin_of_its_own_pool() {
    let mut cfg = config();
    let mut cpu = pool("cpu", &[("site", "polaris")], 1.0, 1);
    cpu.walltime_margin_us = 10 * SEC;
    let mut gpu = pool("gpu", &[("site", "polaris")], 4.0, 1);
    gpu.walltime_margin_us = 100 * SEC;
    cfg.pools = vec![cpu, gpu];
    // The daemon's own margin (for workers no pool started) is neither.
    cfg.walltime_margin_us = 0;
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    h.core.fleet.pools.adopt(
        vec![
            BlockRecord {
                id: 0,
                job: "100".into(),
                submitted_us: 1,
                running_since_us: Some(2),
                pool: "cpu".into(),
            },
            BlockRecord {
                id: 1,
                job: "101".into(),
                submitted_us: 1,
                running_since_us: Some(2),
                pool: "gpu".into(),
            },
        ],
        h.now,
        &mut out,
    );
    let mut s = spec("forty", "1.0.0");
    s.resources.labels = [("site".to_owned(), "polaris".to_owned())].into();
    s.options.max_duration_s = Some(40);
    h.publish(record(s));
    // Both workers' jobs end in 60 s.
    for (pipe, name, block) in [(1, "gpu-w", 1), (2, "cpu-w", 0)] {
        let mut hi = in_block(name, 1, block);
        hi.servables.push("*".into());
        hi.ends_at_unix_s = Some(h.now / SEC + 60);
        register(&mut h, pipe, hi);
    }
    h.submit_to("forty", Payload::from(vec![1])).unwrap();
    // 60 s less the GPU pool's 100 s leaves nothing; 60 s less the CPU
    // pool's 10 s leaves 50 s, enough for a 40 s call.
    let (poll, out) = h.poll(1);
    assert!(worker_reply(&out, poll).is_none(), "held: {out:?}");
    let (poll, out) = h.poll(2);
    assert_eq!(work_in(&out, poll).len(), 1);
}

#[test]
fn each_pool_s_strategy_runs_on_its_own_period() {
    let mut cfg = config();
    let mut cpu = pool("cpu", &[], 1.0, 2);
    cpu.strategy_period_us = SEC;
    let mut gpu = pool("gpu", &[], 4.0, 2);
    gpu.strategy_period_us = 10 * SEC;
    cfg.pools = vec![cpu, gpu];
    let mut h = Harness::with(cfg, Recovered::default());
    let mut out = Vec::new();
    h.core.start(h.now, &mut out);
    h.publish(placed("on-cpu", &["cpu"], &[]));
    h.publish(placed("on-gpu", &["gpu"], &[]));
    h.submit_to("on-cpu", Payload::from(vec![1])).unwrap();
    h.submit_to("on-gpu", Payload::from(vec![1])).unwrap();
    // The CPU pool's strategy is due after a second; the GPU pool's is not.
    let out = h.advance(SEC);
    assert_eq!(submitted_by_pool(&out), [("cpu".to_owned(), 0)]);
    for _ in 0..8 {
        let out = h.advance(SEC);
        assert_eq!(submitted_by_pool(&out), [], "the GPU pool is not due yet");
    }
    let out = h.advance(SEC);
    assert_eq!(submitted_by_pool(&out), [("gpu".to_owned(), 1)]);
}

/// A user other than the daemon's, for the tests of what users see of
/// each other.
fn alice() -> Caller {
    Caller {
        uid: 2001,
        groups: vec![2001],
    }
}

/// A second user, in no group with [`alice`].
fn bob() -> Caller {
    Caller {
        uid: 2002,
        groups: vec![2002],
    }
}

mod memo_scope;
mod owners;
mod warm;
mod watch;

impl Harness {
    /// A call made by `caller`, its writes confirmed; the reply.
    fn call_as(&mut self, caller: &Caller, call: ClientCall) -> ClientReply {
        self.call_as_out(caller, call).0
    }

    /// [`Harness::call_as`], with every action it caused.
    fn call_as_out(&mut self, caller: &Caller, call: ClientCall) -> (ClientReply, Vec<Action>) {
        let from = self.reply_to();
        let mut out = self.ev(Event::Client {
            from,
            caller: caller.clone(),
            call,
        });
        out.extend(self.flush());
        (client_reply(&out, from).expect("a reply"), out)
    }
}

fn with_access(
    mut r: ServableRecord,
    visibility: flotilla_protocol::access::Visibility,
) -> ServableRecord {
    r.access = Some(flotilla_protocol::access::Access {
        visibility,
        ..Default::default()
    });
    r
}

fn names(reply: &ClientReply) -> Vec<String> {
    match reply {
        ClientReply::Servables { servables } => servables.iter().map(|s| s.name.clone()).collect(),
        other => panic!("{other:?}"),
    }
}

fn error_of(reply: ClientReply) -> ApiError {
    match reply {
        ClientReply::Error(e) => e,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn what_a_caller_may_not_see_does_not_exist_for_it() {
    use flotilla_protocol::access::Visibility;
    use flotilla_protocol::client::SearchQuery;
    let mut h = Harness::new();
    let alice = Caller {
        uid: 2001,
        groups: vec![2001],
    };
    let bob = Caller {
        uid: 2002,
        groups: vec![2002],
    };
    // Alice publishes a private and a public servable; the daemon records
    // her as their owner whatever the record claims.
    let mut private = with_access(record(spec("secret-model", "1.0.0")), Visibility::Owner);
    if let Some(a) = private.access.as_mut() {
        a.owner = Some(bob.uid);
    }
    let reply = h.call_as(
        &alice,
        ClientCall::Publish {
            record: Box::new(private),
        },
    );
    assert!(
        matches!(reply, ClientReply::Published { created: true, .. }),
        "{reply:?}"
    );
    h.call_as(
        &alice,
        ClientCall::Publish {
            record: Box::new(with_access(
                record(spec("open-model", "1.0.0")),
                Visibility::Public,
            )),
        },
    );
    let ClientReply::Servable(shown) = h.call_as(
        &alice,
        ClientCall::ShowServable {
            name: "secret-model".into(),
        },
    ) else {
        panic!()
    };
    assert_eq!(shown.access.as_ref().and_then(|a| a.owner), Some(alice.uid));
    // Bob: listed nowhere, and named it is as unknown as a missing one.
    let listed = names(&h.call_as(&bob, ClientCall::ListServables));
    assert_eq!(listed, vec!["open-model".to_owned()]);
    let found = names(&h.call_as(
        &bob,
        ClientCall::SearchServables(SearchQuery {
            text: "model".into(),
            ..SearchQuery::default()
        }),
    ));
    assert_eq!(found, vec!["open-model".to_owned()]);
    let hidden = error_of(h.call_as(
        &bob,
        ClientCall::Submit {
            tasks: vec![request("secret-model")],
            wait_ms: None,
        },
    ));
    let missing = error_of(h.call_as(
        &bob,
        ClientCall::Submit {
            tasks: vec![request("no-such-model")],
            wait_ms: None,
        },
    ));
    assert_eq!(hidden.kind, missing.kind);
    assert_eq!(
        hidden.message.replace("secret-model", "X"),
        missing.message.replace("no-such-model", "X"),
        "a hidden servable must be refused exactly as a missing one"
    );
    assert!(hidden.message.contains("(known: "), "{hidden}");
    for call in [
        ClientCall::ShowServable {
            name: "secret-model@1.0.0".into(),
        },
        ClientCall::ServableVersions {
            name: "secret-model".into(),
        },
        ClientCall::RemoveServable {
            id: "secret-model@1.0.0".into(),
        },
        ClientCall::SetServableAccess {
            name: "secret-model".into(),
            access: Default::default(),
        },
    ] {
        let e = error_of(h.call_as(&bob, call));
        assert_eq!(e.kind, ApiErrorKind::NotFound, "{e}");
        assert!(e.message.contains("unknown servable `secret-model`"), "{e}");
        assert!(!e.message.contains("secret-model,"), "{e}");
    }
    // The public one runs for Bob, who may not change or remove it, nor
    // publish a version of its name.
    assert!(matches!(
        h.call_as(
            &bob,
            ClientCall::Submit {
                tasks: vec![request("open-model")],
                wait_ms: None,
            },
        ),
        ClientReply::Submitted { .. }
    ));
    let e = error_of(h.call_as(
        &bob,
        ClientCall::SetServableAccess {
            name: "open-model".into(),
            access: Default::default(),
        },
    ));
    assert_eq!(e.kind, ApiErrorKind::Forbidden);
    assert!(
        e.message
            .contains("only the owner of `open-model` (uid 2001)"),
        "{e}"
    );
    let e = error_of(h.call_as(
        &bob,
        ClientCall::Publish {
            record: Box::new(record(spec("open-model", "2.0.0"))),
        },
    ));
    assert!(
        e.message.contains("`open-model` is taken by another user"),
        "{e}"
    );
    // Admin calls are the daemon user's.
    let e = error_of(h.call_as(&bob, ClientCall::Stop));
    assert_eq!(e.kind, ApiErrorKind::Forbidden);
    assert!(
        e.message
            .contains("only the daemon's user (uid 1000) may stop"),
        "{e}"
    );
    // Alice shares the private one with Bob's group: he sees it now, in
    // every version, and it is written to the store.
    let (reply, out) = h.call_as_out(
        &alice,
        ClientCall::SetServableAccess {
            name: "secret-model".into(),
            access: flotilla_protocol::access::Access {
                groups: vec![2002],
                ..Default::default()
            },
        },
    );
    let ClientReply::Access { access, .. } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(access.owner, Some(alice.uid));
    assert!(out.iter().any(|a| matches!(
        a,
        Action::Persist { op: StoreOp::PutServable(r), .. }
            if r.spec.name == "secret-model" && r.access.as_ref().is_some_and(|a| a.groups == [2002])
    )));
    let listed = names(&h.call_as(&bob, ClientCall::ListServables));
    assert!(listed.contains(&"secret-model".to_owned()), "{listed:?}");
    // The daemon's user sees and manages everything.
    let admin = Caller::daemon_user(DAEMON_UID);
    assert_eq!(
        names(&h.call_as(&admin, ClientCall::ListServables)).len(),
        2
    );
    assert!(matches!(
        h.call_as(
            &admin,
            ClientCall::RemoveServable {
                id: "secret-model@1.0.0".into()
            }
        ),
        ClientReply::Removed { .. }
    ));
}

#[test]
fn servables_published_before_visibility_are_the_daemon_users() {
    let mut h = Harness::new();
    // The harness publishes as the daemon's user; an old record has no
    // access at all.
    let mut old = record(spec("legacy", "1.0.0"));
    old.access = None;
    let mut h2 = Harness::with(
        config(),
        Recovered {
            servables: vec![old],
            ..Recovered::default()
        },
    );
    let bob = Caller {
        uid: 2002,
        groups: vec![],
    };
    assert!(names(&h2.call_as(&bob, ClientCall::ListServables)).is_empty());
    let admin = Caller::daemon_user(DAEMON_UID);
    assert_eq!(
        names(&h2.call_as(&admin, ClientCall::ListServables)),
        vec!["legacy".to_owned()]
    );
    // And what the daemon's user publishes now is its own, owner-only.
    h.publish(record(spec("mine", "1.0.0")));
    assert!(names(&h.call_as(&bob, ClientCall::ListServables)).is_empty());
}
