//! Scenario tests of the worker session: events in, actions out, no I/O.

#![allow(clippy::unwrap_used)]

use super::*;
use flotilla_protocol::handshake::{self, HandshakeKey};
use flotilla_protocol::interchange::WorkItem;
use flotilla_protocol::secure::{Channel, Cipher, Ephemeral, Role};
use flotilla_protocol::task::{NIL, Outcome};
use flotilla_protocol::{PROTOCOL_VERSION, Payload, encode};

const SEC: u64 = 1_000_000;
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The Unix time the tests start at (seconds).
const T0: u64 = 1_800_000_000;

/// A pattern for `Action::Send { lane, message, .. }`.
macro_rules! send {
    ($lane:pat, $message:pat) => {
        Action::Send {
            lane: $lane,
            message: $message,
            ..
        }
    };
}

fn config() -> SessionConfig {
    SessionConfig {
        secret: SECRET.to_vec(),
        nonce_seed: [4; 32],
        max_frame_bytes: 1 << 20,
        ciphers: vec![Cipher::Aes256Gcm, Cipher::Chacha20Poly1305],
        worker_id: "w1".into(),
        block_id: Some(3),
        host: "node1".into(),
        node: None,
        rank: Some(0),
        pid: 42,
        slots: 2,
        slot_resources: vec![],
        servables: vec!["noop".into(), "*".into()],
        lost_daemon_exit: Duration::from_secs(60),
        job_end_unix_s: None,
        walltime_margin: Duration::from_secs(60),
    }
}

/// Drives a session and keeps its clock; plays the daemon's end of the
/// connection's keys.
struct Harness {
    session: Session,
    elapsed: Duration,
    /// The transcript of the last probe answered.
    transcript: Option<Transcript>,
    /// The daemon's end of the keys of the last probe answered.
    daemon: Option<Channel>,
}

impl Harness {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(cfg: SessionConfig) -> Self {
        let session = Session::new(
            cfg,
            Now {
                since_start: Duration::ZERO,
                unix_us: T0 * SEC,
            },
        );
        Harness {
            session,
            elapsed: Duration::ZERO,
            transcript: None,
            daemon: None,
        }
    }

    /// The long-poll the session sends once registered, sealed.
    fn poll(&self, timeout: Duration) -> Action {
        Action::Send {
            lane: Lane::Poll,
            message: WorkerMessage::Pull {
                results: Vec::new(),
                wait: true,
            },
            seal: self.session.channel.clone(),
            timeout,
        }
    }

    /// `frame` as the daemon sends it: sealed once the session's hello
    /// sealed the connection, else in clear.
    fn wire(&self, frame: Vec<u8>) -> Vec<u8> {
        match (&self.daemon, &self.session.channel) {
            (Some(daemon), Some(worker)) if daemon.id() == worker.id() => {
                daemon.seal(&frame).unwrap()
            }
            _ => frame,
        }
    }

    fn now(&self) -> Now {
        Now {
            since_start: self.elapsed,
            unix_us: T0 * SEC + self.elapsed.as_micros() as u64,
        }
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    fn ev(&mut self, event: Event) -> Vec<Action> {
        let now = self.now();
        self.session.handle(event, now)
    }

    fn tick(&mut self) -> Vec<Action> {
        self.ev(Event::Tick)
    }

    fn reply(&mut self, lane: Lane, message: &DaemonMessage) -> Vec<Action> {
        self.reply_on(lane, None, message)
    }

    fn reply_on(&mut self, lane: Lane, pipe: Option<u64>, message: &DaemonMessage) -> Vec<Action> {
        let frame = self.wire(encode(message).unwrap());
        self.ev(Event::Reply {
            lane,
            pipe,
            frame: Frame::new(frame.clone()),
        })
    }

    /// Answers the probe among `actions` as the daemon does (over `pipe`,
    /// knowing `secret`); returns what the session does next.
    fn prove_with(&mut self, actions: &[Action], pipe: Option<u64>, secret: &[u8]) -> Vec<Action> {
        let Some((nonce, public, offered)) = actions.iter().find_map(|a| match a {
            send!(
                Lane::Report,
                WorkerMessage::Probe {
                    nonce,
                    public,
                    ciphers
                }
            ) => Some((nonce.clone(), public.clone(), ciphers.clone())),
            _ => None,
        }) else {
            panic!("no probe in {actions:?}");
        };
        let ephemeral = Ephemeral::from_random([7; 32]);
        let transcript = Transcript {
            worker_nonce: handshake::nonce(&nonce).unwrap(),
            daemon_nonce: [8u8; 32],
            worker_public: handshake::public_key(&public).unwrap(),
            daemon_public: ephemeral.public(),
        };
        let key = HandshakeKey::from_secret(secret);
        let proof = key.daemon_proof(&transcript);
        // The daemon's machine has AES instructions.
        let cipher = Cipher::agree(&offered, &[Cipher::Aes256Gcm, Cipher::Chacha20Poly1305]);
        let keys = secure::session_keys(
            &key,
            &transcript,
            &ephemeral,
            &transcript.worker_public,
            cipher,
        )
        .unwrap();
        self.transcript = Some(transcript);
        self.daemon = Some(Channel::new(&keys, Role::Daemon));
        let answer = DaemonMessage::ProbeOk {
            nonce: Payload::copy_from_slice(&transcript.daemon_nonce),
            public: Payload::copy_from_slice(&transcript.daemon_public),
            proof: Payload::copy_from_slice(&proof),
            cipher,
        };
        self.reply_on(Lane::Report, pipe, &answer)
    }

    /// [`Harness::prove_with`] the daemon's secret, over no pipe in
    /// particular.
    fn prove(&mut self, actions: &[Action]) -> Vec<Action> {
        self.prove_with(actions, None, SECRET)
    }

    fn done(&mut self, batch: u64) -> Vec<Action> {
        self.ev(Event::BatchDone(result(batch)))
    }

    /// Hello, welcome: registered, the long-poll out.
    fn registered() -> Self {
        let mut h = Harness::new();
        h.register();
        h
    }

    fn register(&mut self) {
        let probe = self.tick();
        let hello = self.prove(&probe);
        assert!(
            matches!(&hello[..], [send!(Lane::Report, WorkerMessage::Hello(_))]),
            "{hello:?}"
        );
        let welcomed = self.reply(Lane::Report, &welcome());
        assert_eq!(
            welcomed[0],
            Action::Notify(Notice::Registered {
                heartbeat_period_ms: 5000
            })
        );
        assert_eq!(welcomed[1..], [self.poll(Duration::from_secs(20))]);
    }
}

fn welcome() -> DaemonMessage {
    DaemonMessage::Welcome {
        heartbeat_period_ms: 5000,
        heartbeat_threshold_ms: 20_000,
    }
}

fn batch(id: u64, tasks: &[u64]) -> WorkBatch {
    WorkBatch {
        id: BatchId(id),
        servable: "noop".into(),
        params: Payload::new(),
        items: tasks
            .iter()
            .map(|t| WorkItem {
                task: TaskId(*t),
                input: Payload::from_static(NIL),
            })
            .collect(),
        spec: None,
    }
}

fn work(batches: Vec<WorkBatch>) -> DaemonMessage {
    DaemonMessage::Work { batches }
}

fn result(id: u64) -> BatchResult {
    BatchResult {
        batch: BatchId(id),
        run_us: 7,
        received_us: 1,
        sent_us: 0,
        outcomes: vec![(TaskId(id * 10), Outcome::Output(Payload::from_static(NIL)))],
        failure: None,
    }
}

/// The batch ids of the results a report carries.
fn reported(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .find_map(|a| match a {
            send!(
                Lane::Report,
                WorkerMessage::Pull {
                    results,
                    wait: false
                }
            ) => Some(results.iter().map(|r| r.batch.0).collect()),
            _ => None,
        })
        .unwrap_or_default()
}

fn hello_running(actions: &[Action]) -> Vec<(BatchId, Vec<TaskId>)> {
    match actions
        .iter()
        .find(|a| matches!(a, send!(Lane::Report, WorkerMessage::Hello(_))))
    {
        Some(send!(_, WorkerMessage::Hello(hello))) => hello.running.clone(),
        _ => panic!("no hello in {actions:?}"),
    }
}

#[test]
fn the_probe_goes_first_then_the_hello_and_the_poll_only_after_the_welcome() {
    let mut h = Harness::new();
    let probe = h.tick();
    let [send!(Lane::Report, WorkerMessage::Probe { .. })] = &probe[..] else {
        panic!("{probe:?}");
    };
    let actions = h.prove(&probe);
    let [send!(Lane::Report, WorkerMessage::Hello(hello))] = &actions[..] else {
        panic!("{actions:?}");
    };
    assert_eq!(hello.worker_id, "w1");
    assert_eq!(hello.block_id, Some(3));
    assert_eq!((hello.pid, hello.slots), (42, 2));
    assert_eq!(hello.servables, ["noop", "*"]);
    assert_eq!(hello.max_frame_bytes, 1 << 20);
    assert!(hello.running.is_empty());
    // The hello proves the secret without carrying it.
    assert_eq!(&hello.challenge[..], &[8u8; 32]);
    let key = HandshakeKey::from_secret(SECRET);
    assert!(key.check_worker(&h.transcript.unwrap(), hello));
    let wire = encode(&WorkerMessage::Hello(hello.clone())).unwrap();
    assert!(!wire.windows(SECRET.len()).any(|w| w == SECRET));
    // Until the welcome, nothing else goes out, however often it ticks.
    h.advance(Duration::from_secs(1));
    assert_eq!(h.tick(), []);
    assert_eq!(h.done(1), [], "a result waits for the registration");
    let welcomed = h.reply(Lane::Report, &welcome());
    // The welcome's threshold is the timeout from now on; the result that
    // waited goes out with the first poll.
    assert_eq!(welcomed[1], h.poll(Duration::from_secs(20)));
    assert_eq!(reported(&welcomed), [1]);
    assert_eq!(h.tick(), [], "both lanes are busy");
}

#[test]
fn work_on_the_poll_lane_goes_to_the_slots_and_a_new_poll_goes_out() {
    let mut h = Harness::registered();
    h.advance(Duration::from_millis(3));
    let actions = h.reply(
        Lane::Poll,
        &work(vec![batch(1, &[10, 11]), batch(2, &[12])]),
    );
    let received_us = T0 * SEC + 3000;
    assert_eq!(
        actions,
        [
            Action::Run {
                batch: batch(1, &[10, 11]),
                received_us
            },
            Action::Run {
                batch: batch(2, &[12]),
                received_us
            },
            h.poll(Duration::from_secs(20)),
        ]
    );
}

#[test]
fn an_empty_answer_to_the_poll_is_a_heartbeat_and_polls_again() {
    let mut h = Harness::registered();
    h.advance(Duration::from_secs(5));
    assert_eq!(
        h.reply(Lane::Poll, &work(vec![])),
        [
            Action::Notify(Notice::Heartbeat),
            h.poll(Duration::from_secs(20))
        ]
    );
    // Heartbeats keep the daemon from being declared lost.
    for _ in 0..20 {
        h.advance(Duration::from_secs(5));
        h.reply(Lane::Poll, &work(vec![]));
    }
    assert_eq!(h.tick(), []);
}

#[test]
fn results_go_out_at_once_when_the_report_lane_is_free_else_with_the_next_report() {
    let mut h = Harness::registered();
    h.reply(
        Lane::Poll,
        &work(vec![batch(1, &[10]), batch(2, &[20]), batch(3, &[30])]),
    );
    h.advance(Duration::from_millis(5));
    let first = h.done(1);
    assert_eq!(reported(&first), [1]);
    let [send!(Lane::Report, WorkerMessage::Pull { results, .. })] = &first[..] else {
        panic!("{first:?}");
    };
    assert_eq!(results[0].sent_us, T0 * SEC + 5000, "stamped when sent");
    // The report lane is busy: the next results wait for its answer.
    assert_eq!(h.done(2), []);
    assert_eq!(h.done(3), []);
    // The answer acknowledges batch 1 and may carry more work.
    let answered = h.reply(Lane::Report, &work(vec![batch(4, &[40])]));
    assert!(matches!(answered[0], Action::Run { ref batch, .. } if batch.id == BatchId(4)));
    assert_eq!(reported(&answered), [2, 3]);
    // Once every report is answered nothing is left to resend.
    assert_eq!(h.reply(Lane::Report, &work(vec![])), []);
    h.session.registration = Registration::Unverified;
    let probe = h.tick();
    let hello = h.prove(&probe);
    assert_eq!(hello_running(&hello), [(BatchId(4), vec![TaskId(40)])]);
}

#[test]
fn unacknowledged_results_are_resent_after_a_failed_request() {
    let mut h = Harness::registered();
    h.reply(Lane::Poll, &work(vec![batch(1, &[10])]));
    assert_eq!(reported(&h.done(1)), [1]);
    // The connection drops: the report gets no answer.
    h.advance(Duration::from_secs(20));
    let failed = h.ev(Event::LaneFailed {
        lane: Lane::Report,
        error: LaneError::TimedOut,
    });
    assert_eq!(failed, [Action::TickSoon], "retried from the timer");
    let poll_failed = h.ev(Event::LaneFailed {
        lane: Lane::Poll,
        error: LaneError::Other("connection reset".into()),
    });
    assert_eq!(poll_failed, [Action::TickSoon]);
    // The retry sends the poll again and the same result again, stamped anew.
    h.advance(Duration::from_secs(1));
    let retried = h.tick();
    assert_eq!(retried[0], h.poll(Duration::from_secs(20)));
    assert_eq!(reported(&retried), [1]);
    let [_, send!(_, WorkerMessage::Pull { results, .. })] = &retried[..] else {
        panic!("{retried:?}");
    };
    assert_eq!(results[0].sent_us, T0 * SEC + 21 * SEC);
    // A closed socket is the end of the session, not something to retry.
    assert_eq!(
        h.ev(Event::LaneFailed {
            lane: Lane::Poll,
            error: LaneError::Closed
        }),
        []
    );
}

#[test]
fn a_restarted_daemon_gets_a_new_hello_listing_running_batches_then_the_results() {
    let mut h = Harness::registered();
    h.reply(
        Lane::Poll,
        &work(vec![batch(1, &[10]), batch(2, &[20, 21])]),
    );
    assert_eq!(reported(&h.done(2)), [2]);
    // The daemon restarted and does not know the worker.
    let asked = h.reply(Lane::Report, &DaemonMessage::Reregister);
    assert_eq!(asked[0], Action::Notify(Notice::ReregisterAsked));
    // It makes the daemon prove itself again before the hello.
    let hello = h.prove(&asked);
    assert_eq!(
        hello_running(&hello),
        [
            (BatchId(1), vec![TaskId(10)]),
            (BatchId(2), vec![TaskId(20), TaskId(21)])
        ],
        "the running batch and the unacknowledged one stay this worker's"
    );
    // The poll lane's answer says the same: nothing new goes out.
    assert_eq!(h.reply(Lane::Poll, &DaemonMessage::Reregister)[1..], []);
    let welcomed = h.reply(Lane::Report, &welcome());
    assert_eq!(welcomed[1], h.poll(Duration::from_secs(20)));
    assert_eq!(reported(&welcomed), [2], "the result is sent again");
}

#[test]
fn a_reregister_on_the_poll_lane_sends_the_hello_when_the_report_lane_is_free() {
    let mut h = Harness::registered();
    let actions = h.reply(Lane::Poll, &DaemonMessage::Reregister);
    assert_eq!(actions[0], Action::Notify(Notice::ReregisterAsked));
    assert!(
        matches!(
            &actions[1..],
            [send!(Lane::Report, WorkerMessage::Probe { .. })]
        ),
        "{actions:?}"
    );
    assert_eq!(h.tick(), [], "no poll before the welcome");
    let hello = h.prove(&actions);
    assert!(matches!(
        &hello[..],
        [send!(Lane::Report, WorkerMessage::Hello(_))]
    ));
}

#[test]
fn a_refusal_ends_the_session_with_its_reason() {
    let mut h = Harness::new();
    h.tick();
    let reason = "wrong secret".to_owned();
    let ended = h.reply(
        Lane::Report,
        &DaemonMessage::Refused {
            reason: reason.clone(),
        },
    );
    assert_eq!(ended, [Action::End(Ending::Refused(reason.clone()))]);
    assert_eq!(h.session.ending(), Some(&Ending::Refused(reason)));
    // Nothing happens after the end.
    assert_eq!(h.tick(), []);
    assert_eq!(h.done(1), []);
}

#[test]
fn a_daemon_of_another_release_is_a_refusal_that_says_so() {
    let mut h = Harness::new();
    h.tick();
    let frame = rmp_serde::to_vec(&(PROTOCOL_VERSION + 1, "welcome")).unwrap();
    let ended = h.ev(Event::Reply {
        lane: Lane::Report,
        pipe: None,
        frame: Frame::new(frame.clone()),
    });
    let [Action::End(Ending::Refused(reason))] = &ended[..] else {
        panic!("{ended:?}");
    };
    assert!(reason.contains("another protocol version"), "{reason}");
}

#[test]
fn a_reply_that_is_not_a_frame_makes_the_worker_register_again() {
    let mut h = Harness::registered();
    h.reply(Lane::Poll, &work(vec![batch(1, &[10])]));
    assert_eq!(reported(&h.done(1)), [1]);
    let garbage = h.ev(Event::Reply {
        lane: Lane::Report,
        pipe: None,
        frame: Frame::new(b"\xc1 not msgpack".to_vec()),
    });
    let hello = h.prove(&garbage);
    assert!(
        matches!(&hello[..], [send!(Lane::Report, WorkerMessage::Hello(_))]),
        "{hello:?}"
    );
    assert_eq!(hello_running(&hello), [(BatchId(1), vec![TaskId(10)])]);
    let welcomed = h.reply(Lane::Report, &welcome());
    assert_eq!(
        reported(&welcomed),
        [1],
        "the result the garbage answered is sent again"
    );
}

#[test]
fn silence_longer_than_the_limit_ends_with_lost() {
    let mut h = Harness::registered();
    h.advance(Duration::from_secs(59));
    assert_eq!(h.tick(), []);
    // Any reply counts as contact.
    h.reply(Lane::Poll, &work(vec![]));
    h.advance(Duration::from_secs(60));
    assert_eq!(h.tick(), []);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.tick(),
        [Action::End(Ending::Lost(Duration::from_secs(61)))]
    );
    // A daemon that never answers the hello is lost the same way.
    let mut h = Harness::new();
    h.tick();
    h.advance(Duration::from_secs(61));
    assert_eq!(
        h.tick(),
        [Action::End(Ending::Lost(Duration::from_secs(61)))]
    );
}

#[test]
fn near_the_walltime_it_takes_no_work_finishes_its_batches_then_leaves() {
    let mut h = Harness::with(SessionConfig {
        job_end_unix_s: Some(T0 + 600),
        lost_daemon_exit: Duration::from_secs(3600),
        ..config()
    });
    let probe = h.tick();
    let hello = h.prove(&probe);
    let [send!(_, WorkerMessage::Hello(sent))] = &hello[..] else {
        panic!("{hello:?}");
    };
    assert_eq!(sent.ends_at_unix_s, Some(T0 + 600), "the daemon is told");
    h.reply(Lane::Report, &welcome());
    h.reply(Lane::Poll, &work(vec![batch(1, &[10])]));
    // The margin starts: no more polls, the running batch goes on.
    h.advance(Duration::from_secs(540));
    assert_eq!(h.tick(), []);
    assert_eq!(
        h.reply(Lane::Poll, &work(vec![])),
        [Action::Notify(Notice::Heartbeat)]
    );
    assert_eq!(reported(&h.done(1)), [1]);
    // Acknowledged, nothing running: say goodbye, once.
    let left = h.reply(Lane::Report, &work(vec![]));
    assert_eq!(
        left,
        [Action::Send {
            lane: Lane::Report,
            message: WorkerMessage::Leave {
                reason: "its job's wall time ends within 60 s".into()
            },
            seal: h.session.channel.clone(),
            timeout: Duration::from_secs(20),
        }]
    );
    assert_eq!(h.tick(), []);
    assert_eq!(
        h.reply(Lane::Report, &DaemonMessage::Shutdown),
        [Action::End(Ending::WalltimeOver)]
    );
}

#[test]
fn at_the_job_end_it_goes_even_with_work_running() {
    let mut h = Harness::with(SessionConfig {
        job_end_unix_s: Some(T0 + 100),
        walltime_margin: Duration::from_secs(10),
        lost_daemon_exit: Duration::from_secs(3600),
        ..config()
    });
    h.register();
    h.reply(Lane::Poll, &work(vec![batch(1, &[10])]));
    h.advance(Duration::from_secs(100));
    assert_eq!(h.tick(), [Action::End(Ending::WalltimeOver)]);
}

#[test]
fn a_shutdown_message_ends_the_session() {
    let mut h = Harness::registered();
    assert_eq!(
        h.reply(Lane::Poll, &DaemonMessage::Shutdown),
        [Action::End(Ending::Shutdown)]
    );
    assert_eq!(h.reply(Lane::Report, &work(vec![batch(1, &[1])])), []);
}

#[test]
fn a_request_the_socket_cannot_take_fails_the_session() {
    let mut h = Harness::new();
    h.tick();
    assert_eq!(
        h.ev(Event::SendFailed {
            lane: Lane::Report,
            reason: "cannot send".into()
        }),
        [Action::End(Ending::Failed("cannot send".into()))]
    );
    let mut h = Harness::registered();
    assert_eq!(
        h.ev(Event::DaemonExited),
        [Action::End(Ending::DaemonExited)]
    );
}

// ----- the daemon proves itself -----------------------------------------------

/// True if `actions` send a hello or run anything.
fn trusts(actions: &[Action]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, Action::Run { .. } | send!(_, WorkerMessage::Hello(_))))
}

fn untrusted(actions: &[Action]) -> String {
    match actions {
        [Action::End(Ending::Untrusted(reason))] => reason.clone(),
        other => panic!("expected the session to end untrusted, got {other:?}"),
    }
}

#[test]
fn a_daemon_without_a_valid_proof_is_sent_no_hello_and_its_work_is_not_run() {
    let mut h = Harness::new();
    let probe = h.tick();
    let answered = h.prove_with(&probe, None, b"not the daemon's secret");
    let reason = untrusted(&answered);
    assert!(reason.contains("without a valid proof"), "{reason}");
    assert!(reason.contains("nothing it sent was run"), "{reason}");
    // Whatever it sends next is not acted on.
    assert!(!trusts(&h.reply(Lane::Poll, &work(vec![batch(1, &[10])]))));
    assert!(!trusts(&h.tick()));
}

#[test]
fn a_peer_that_answers_the_probe_with_anything_but_a_proof_is_not_trusted() {
    for answer in [
        work(vec![batch(1, &[10])]),
        welcome(),
        DaemonMessage::Reregister,
    ] {
        let mut h = Harness::new();
        h.tick();
        let answered = h.reply(Lane::Report, &answer);
        assert!(!trusts(&answered), "{answered:?}");
        assert!(untrusted(&answered).contains("instead of a proof"));
    }
    // A malformed proof too.
    let mut h = Harness::new();
    h.tick();
    let bad = DaemonMessage::ProbeOk {
        nonce: Payload::from_static(b"short"),
        public: Payload::new(),
        proof: Payload::new(),
        cipher: Cipher::default(),
    };
    assert!(untrusted(&h.reply(Lane::Report, &bad)).contains("without a valid proof"));
}

#[test]
fn a_reply_over_a_new_connection_is_not_acted_on_until_the_daemon_proves_itself_again() {
    let mut h = Harness::new();
    let probe = h.tick();
    h.prove_with(&probe, Some(1), SECRET);
    h.reply_on(Lane::Report, Some(1), &welcome());
    // nng redialled the daemon's address: someone else answers the poll.
    let actions = h.reply_on(Lane::Poll, Some(2), &work(vec![batch(1, &[10])]));
    assert!(!trusts(&actions), "{actions:?}");
    let [send!(Lane::Report, WorkerMessage::Probe { .. })] = &actions[..] else {
        panic!("expected a new probe: {actions:?}");
    };
    // An impostor there cannot prove itself; the real daemon can.
    let mut impostor = Harness::new();
    let probe = impostor.tick();
    impostor.prove_with(&probe, Some(1), SECRET);
    impostor.reply_on(Lane::Report, Some(1), &welcome());
    let again = impostor.reply_on(Lane::Poll, Some(2), &work(vec![]));
    untrusted(&impostor.prove_with(&again, Some(2), b"guess"));
    let hello = h.prove_with(&actions, Some(2), SECRET);
    assert!(matches!(
        &hello[..],
        [send!(Lane::Report, WorkerMessage::Hello(_))]
    ));
    let welcomed = h.reply_on(Lane::Report, Some(2), &welcome());
    assert_eq!(welcomed[1], h.poll(Duration::from_secs(20)));
    let ran = h.reply_on(Lane::Poll, Some(2), &work(vec![batch(2, &[20])]));
    assert!(matches!(ran[0], Action::Run { .. }));
}

#[test]
fn a_frame_over_the_workers_cap_ends_the_session_saying_so() {
    let mut h = Harness::registered();
    let big = work(vec![WorkBatch {
        items: vec![WorkItem {
            task: TaskId(1),
            input: Payload::from(vec![0u8; 2 << 20]),
        }],
        ..batch(1, &[])
    }]);
    let frame = encode(&big).unwrap();
    let sealed = h.wire(frame.clone());
    let ended = h.ev(Event::Reply {
        lane: Lane::Poll,
        pipe: None,
        frame: Frame::new(sealed.clone()),
    });
    let [Action::End(Ending::Failed(reason))] = &ended[..] else {
        panic!("{ended:?}");
    };
    assert!(
        reason.contains(&format!("a frame of {} bytes", frame.len()))
            && reason.contains("cap of 1048576 bytes"),
        "{reason}"
    );
}

#[test]
fn a_session_whose_daemon_proved_itself_while_connecting_says_hello_at_once() {
    let mut h = Harness::new();
    let transcript = Transcript {
        worker_nonce: [1; 32],
        daemon_nonce: [2; 32],
        worker_public: Ephemeral::from_random([3; 32]).public(),
        daemon_public: Ephemeral::from_random([4; 32]).public(),
    };
    let key = HandshakeKey::from_secret(SECRET);
    let keys = secure::session_keys(
        &key,
        &transcript,
        &Ephemeral::from_random([3; 32]),
        &transcript.daemon_public,
        Cipher::default(),
    )
    .unwrap();
    h.session = Session::new(config(), h.now()).proven(transcript, keys, Some(5));
    let hello = h.tick();
    let [send!(Lane::Report, WorkerMessage::Hello(sent))] = &hello[..] else {
        panic!("{hello:?}");
    };
    assert!(key.check_worker(&transcript, sent));
    // Replies over another connection are not acted on.
    let other = h.reply_on(Lane::Report, Some(6), &welcome());
    assert!(!trusts(&other));
    assert!(!matches!(
        other.first(),
        Some(Action::Notify(Notice::Registered { .. }))
    ));
}

/// The batches a list of actions runs.
fn runs(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Run { .. }))
        .count()
}

#[test]
fn the_handshake_goes_in_clear_and_everything_after_it_sealed() {
    let mut h = Harness::new();
    let probe = h.tick();
    assert!(matches!(&probe[..], [Action::Send { seal: None, .. }]));
    let hello = h.prove(&probe);
    assert!(matches!(&hello[..], [Action::Send { seal: None, .. }]));
    let welcomed = h.reply(Lane::Report, &welcome());
    let Action::Send {
        seal: Some(channel),
        ..
    } = &welcomed[1]
    else {
        panic!("{welcomed:?}");
    };
    assert_eq!(channel.id(), h.daemon.as_ref().unwrap().id());
    // What the worker seals, the daemon's end opens.
    let sealed = channel.seal(b"result").unwrap();
    assert_eq!(h.daemon.as_ref().unwrap().open(&sealed).unwrap(), b"result");
}

#[test]
fn a_forged_replayed_or_clear_reply_on_the_sealed_connection_is_not_acted_on() {
    type Spoil = fn(&mut Harness, Vec<u8>) -> Vec<u8>;
    let spoils: [(&str, Spoil); 3] = [
        ("a bit flipped", |_, mut sealed| {
            let last = sealed.len() - 1;
            sealed[last] ^= 1;
            sealed
        }),
        ("a replay", |h, sealed| {
            // The genuine frame is taken first; its copy comes again.
            let ran = h.ev(Event::Reply {
                lane: Lane::Poll,
                pipe: None,
                frame: Frame::new(sealed.clone()),
            });
            assert_eq!(runs(&ran), 1);
            sealed
        }),
        ("in clear", |_, _| {
            encode(&work(vec![batch(1, &[10])])).unwrap()
        }),
    ];
    for (what, spoil) in spoils {
        let mut h = Harness::registered();
        let sealed = h.wire(encode(&work(vec![batch(1, &[10])])).unwrap());
        let frame = spoil(&mut h, sealed);
        let actions = h.ev(Event::Reply {
            lane: Lane::Poll,
            pipe: None,
            frame: Frame::new(frame.clone()),
        });
        assert_eq!(runs(&actions), 0, "{what}: {actions:?}");
        // The worker registers again, from a clear probe.
        assert!(
            matches!(
                &actions[..],
                [Action::Send {
                    lane: Lane::Report,
                    message: WorkerMessage::Probe { .. },
                    seal: None,
                    ..
                }]
            ),
            "{what}: {actions:?}"
        );
        assert!(h.session.channel.is_none(), "{what}");
    }
}

/// A worker that reports its slots holds no long-poll until the daemon
/// has had its first report, so no batch is placed without knowing them;
/// batches for named slots and warm orders become actions.
#[test]
fn a_worker_reporting_its_slots_polls_only_once_the_daemon_knows_them() {
    let mut h = Harness::new();
    h.session = std::mem::replace(
        &mut h.session,
        Session::new(
            config(),
            Now {
                since_start: Duration::ZERO,
                unix_us: T0 * SEC,
            },
        ),
    )
    .reporting_slots(2);
    let probe = h.tick();
    h.prove(&probe);
    let welcomed = h.reply(Lane::Report, &welcome());
    let report = welcomed.iter().find_map(|a| match a {
        send!(Lane::Report, WorkerMessage::Slots { slots }) => Some(slots.clone()),
        _ => None,
    });
    assert_eq!(report.map(|s| s.len()), Some(2), "{welcomed:?}");
    assert!(
        !welcomed.iter().any(|a| matches!(a, send!(Lane::Poll, _))),
        "no poll before the report is answered: {welcomed:?}"
    );
    let answered = h.reply(
        Lane::Report,
        &DaemonMessage::Assign {
            batches: vec![],
            warm: vec![WarmOrder {
                slot: 1,
                servable: "m@1.0.0".into(),
                spec: None,
            }],
            release: vec![],
        },
    );
    assert!(answered.contains(&Action::Warm(WarmOrder {
        slot: 1,
        servable: "m@1.0.0".into(),
        spec: None,
    })));
    assert!(
        answered.contains(&h.poll(Duration::from_secs(20))),
        "{answered:?}"
    );
    let assigned = h.reply(
        Lane::Poll,
        &DaemonMessage::Assign {
            batches: vec![SlotBatch {
                slot: 0,
                batch: batch(3, &[30]),
            }],
            warm: vec![],
            release: vec![],
        },
    );
    assert!(assigned.iter().any(|a| matches!(
        a,
        Action::RunOn { slot: 0, batch, .. } if batch.id == BatchId(3)
    )));
    // A change of warmth is reported on the report lane.
    let changed = h.ev(Event::Slots(vec![SlotWarmth::default(); 2]));
    assert!(
        changed
            .iter()
            .any(|a| matches!(a, send!(Lane::Report, WorkerMessage::Slots { .. }))),
        "{changed:?}"
    );
}

#[test]
fn a_signal_sends_finished_results_then_leaves_with_batches_running_and_ends_on_the_answer() {
    let mut h = Harness::registered();
    h.reply(Lane::Poll, &work(vec![batch(1, &[10]), batch(2, &[11])]));
    assert_eq!(reported(&h.done(1)), [1]);
    // The report lane is busy with batch 1's result: the goodbye waits.
    assert_eq!(h.ev(Event::Signalled(15)), []);
    let left = h.reply(Lane::Report, &work(vec![]));
    let [send!(Lane::Report, WorkerMessage::Leave { reason })] = &left[..] else {
        panic!("{left:?}");
    };
    assert!(reason.contains("signal 15"), "{reason}");
    // Batch 2 still runs: no poll for more work, and the daemon's answer
    // to the held poll does not start a new registration.
    assert_eq!(h.reply(Lane::Poll, &DaemonMessage::Reregister), []);
    assert_eq!(h.ev(Event::Signalled(15)), []);
    assert_eq!(
        h.reply(Lane::Report, &DaemonMessage::Shutdown),
        [Action::End(Ending::Signalled(15))]
    );
}

#[test]
fn a_stopping_worker_ends_by_its_deadline_when_the_daemon_does_not_answer() {
    let mut h = Harness::registered();
    let left = h.ev(Event::Signalled(15));
    assert!(
        matches!(
            &left[..],
            [send!(Lane::Report, WorkerMessage::Leave { .. })]
        ),
        "{left:?}"
    );
    h.advance(STOP_GRACE / 2);
    assert_eq!(h.ev(Event::Signalled(15)), []);
    h.advance(STOP_GRACE);
    assert_eq!(
        h.ev(Event::Signalled(15)),
        [Action::End(Ending::Signalled(15))]
    );
}

#[test]
fn a_stopping_worker_ends_at_once_if_it_is_not_registered_or_its_goodbye_fails() {
    let mut h = Harness::new();
    h.tick();
    assert_eq!(
        h.ev(Event::Signalled(2)),
        [Action::End(Ending::Signalled(2))]
    );
    let mut h = Harness::registered();
    h.ev(Event::Signalled(1));
    assert_eq!(
        h.ev(Event::LaneFailed {
            lane: Lane::Report,
            error: LaneError::TimedOut,
        }),
        [Action::End(Ending::Signalled(1))]
    );
}

#[test]
fn the_probe_offers_the_worker_s_ciphers_and_the_session_seals_with_the_one_answered() {
    for (offered, agreed) in [
        (
            vec![Cipher::Aes256Gcm, Cipher::Chacha20Poly1305],
            Cipher::Aes256Gcm,
        ),
        // A node without AES instructions.
        (vec![Cipher::Chacha20Poly1305], Cipher::Chacha20Poly1305),
    ] {
        let mut h = Harness::with(SessionConfig {
            ciphers: offered.clone(),
            ..config()
        });
        let probe = h.tick();
        let [send!(Lane::Report, WorkerMessage::Probe { ciphers, .. })] = &probe[..] else {
            panic!("{probe:?}");
        };
        assert_eq!(ciphers, &offered);
        h.prove(&probe);
        let channel = h.session.channel.clone().unwrap();
        assert_eq!(channel.cipher(), agreed);
        // The daemon's sealed welcome opens, and work follows.
        let welcomed = h.reply(Lane::Report, &welcome());
        assert!(
            matches!(
                welcomed.first(),
                Some(Action::Notify(Notice::Registered { .. }))
            ),
            "{welcomed:?}"
        );
    }
}
