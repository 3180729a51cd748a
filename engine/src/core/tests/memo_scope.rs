//! A memo entry answers only its own caller's identical requests, unless
//! the servable's owner shares the servable's memo with everybody who may
//! invoke it: a request answered from the store must not tell one user
//! what another sent.

use super::*;
use flotilla_protocol::access::{Access, Visibility};

/// Alice's memoized servable `m`, which everybody may see and invoke, with
/// its memo shared or not; a worker to run it.
fn published(shared_memo: bool) -> Harness {
    let mut h = Harness::new();
    let mut r = record(memo_spec("m", "1.0.0"));
    r.access = Some(Access {
        visibility: Visibility::Public,
        shared_memo,
        ..Access::default()
    });
    let reply = h.call_as(
        &alice(),
        ClientCall::Publish {
            record: Box::new(r),
        },
    );
    assert!(matches!(reply, ClientReply::Published { .. }), "{reply:?}");
    h.exec_worker(1, "w1", 4);
    h
}

/// `who` runs `m` on `v` and waits; where the answer goes, and what
/// happened at once.
fn run_as(h: &mut Harness, who: &Caller, v: u8) -> (ReplyTo, Vec<Action>) {
    let from = h.reply_to();
    let mut out = h.ev(Event::Client {
        from,
        caller: who.clone(),
        call: ClientCall::Submit {
            tasks: vec![TaskRequest {
                servable: "m".into(),
                input: input(v),
                params: Payload::new(),
            }],
            wait_ms: Some(60_000),
        },
    });
    out.extend(h.flush());
    (from, out)
}

/// The worker runs whatever is queued; every action that caused.
fn work(h: &mut Harness) -> (usize, Vec<Action>) {
    let (poll, out) = h.poll(1);
    let batches = match worker_reply(&out, poll) {
        Some(DaemonMessage::Work { batches }) => batches,
        _ => Vec::new(),
    };
    let items = batches.iter().map(|b| b.items.len()).sum();
    let results = batches.iter().map(|b| outputs(b, doubled)).collect();
    let (_, mut out) = h.pull(1, results, false);
    out.extend(h.flush());
    (items, out)
}

/// The one task of a reply: how the memo served it, and its output.
fn answer(out: &[Action], to: ReplyTo) -> (Option<MemoUse>, Option<Outcome>) {
    match client_reply(out, to) {
        Some(ClientReply::Results { tasks }) => {
            assert_eq!(tasks[0].state, TaskState::Completed);
            (tasks[0].memo, tasks[0].outcome.clone())
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn another_callers_identical_request_runs_again() {
    let mut h = published(false);
    let (a, out) = run_as(&mut h, &alice(), 21);
    assert!(client_reply(&out, a).is_none(), "queued for a worker");
    let (ran, out) = work(&mut h);
    assert_eq!(ran, 1);
    assert_eq!(answer(&out, a), (None, Some(Outcome::Output(input(42)))));

    // Bob sends the same input: answered by a run, not from Alice's entry.
    let (b, out) = run_as(&mut h, &bob(), 21);
    assert!(client_reply(&out, b).is_none(), "Bob's request must run");
    let (ran, out) = work(&mut h);
    assert_eq!(ran, 1);
    assert_eq!(answer(&out, b), (None, Some(Outcome::Output(input(42)))));

    // Each is answered from the store for its own repeat.
    for who in [alice(), bob()] {
        let (to, out) = run_as(&mut h, &who, 21);
        assert_eq!(answer(&out, to).0, Some(MemoUse::Stored), "uid {}", who.uid);
    }
    assert_eq!(h.core.memo.store.report().entries, 2);
}

#[test]
fn identical_requests_of_two_callers_in_flight_do_not_coalesce() {
    let mut h = published(false);
    let (a, _) = run_as(&mut h, &alice(), 5);
    let (b, _) = run_as(&mut h, &bob(), 5);
    let (again, _) = run_as(&mut h, &alice(), 5);
    let (ran, out) = work(&mut h);
    assert_eq!(ran, 2, "one run for Alice's two requests, one for Bob's");
    assert_eq!(answer(&out, a).0, None);
    assert_eq!(answer(&out, b).0, None);
    assert_eq!(answer(&out, again).0, Some(MemoUse::Coalesced));
}

#[test]
fn an_owner_who_shares_the_memo_lets_every_caller_use_it() {
    let mut h = published(true);
    let (a, _) = run_as(&mut h, &alice(), 21);
    let (_, out) = work(&mut h);
    assert_eq!(answer(&out, a).0, None);
    let (b, out) = run_as(&mut h, &bob(), 21);
    assert_eq!(
        answer(&out, b),
        (Some(MemoUse::Stored), Some(Outcome::Output(input(42))))
    );

    // Made private again, Bob's next new input is his own.
    let reply = h.call_as(
        &alice(),
        ClientCall::SetServableAccess {
            name: "m".into(),
            access: Access {
                visibility: Visibility::Public,
                ..Access::default()
            },
        },
    );
    assert!(
        matches!(&reply, ClientReply::Access { access, .. } if !access.shared_memo),
        "{reply:?}"
    );
    let (b, out) = run_as(&mut h, &bob(), 21);
    assert!(
        client_reply(&out, b).is_none(),
        "no longer answered from the shared entry"
    );
    // Only the owner may share it.
    let reply = h.call_as(
        &bob(),
        ClientCall::SetServableAccess {
            name: "m".into(),
            access: Access {
                visibility: Visibility::Public,
                shared_memo: true,
                ..Access::default()
            },
        },
    );
    assert!(matches!(reply, ClientReply::Error(_)), "{reply:?}");
}

#[test]
fn memo_stats_name_and_count_only_servables_the_caller_may_see() {
    let mut h = published(false);
    // Alice also has a private memoized servable, used once.
    let mut private = record(memo_spec("secret-model", "1.0.0"));
    private.access = Some(Access {
        visibility: Visibility::Owner,
        ..Access::default()
    });
    let reply = h.call_as(
        &alice(),
        ClientCall::Publish {
            record: Box::new(private),
        },
    );
    assert!(matches!(reply, ClientReply::Published { .. }), "{reply:?}");
    run_as(&mut h, &alice(), 1);
    work(&mut h);
    let from = h.reply_to();
    let mut out = h.ev(Event::Client {
        from,
        caller: alice(),
        call: ClientCall::Submit {
            tasks: vec![TaskRequest {
                servable: "secret-model".into(),
                input: input(2),
                params: Payload::new(),
            }],
            wait_ms: None,
        },
    });
    out.extend(h.flush());
    work(&mut h);
    let stats = |h: &mut Harness, who: &Caller| match h.call_as(who, ClientCall::MemoStats) {
        ClientReply::MemoStats(s) => s,
        other => panic!("{other:?}"),
    };
    let mine = stats(&mut h, &alice());
    assert_eq!(mine.per_servable.len(), 2, "{mine:?}");
    assert_eq!(mine.entries, 2);
    let theirs = stats(&mut h, &bob());
    let names: Vec<&str> = theirs
        .per_servable
        .iter()
        .map(|(n, _, _)| n.as_str())
        .collect();
    assert_eq!(names, ["m@1.0.0"], "{theirs:?}");
    assert_eq!(theirs.entries, 1);
    assert!(theirs.bytes < mine.bytes);
}
