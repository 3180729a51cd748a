//! Warm capacity: batches go to warm slots, cold slots warm in the
//! background, warm-ups ahead of need and releases after idle time.

use super::*;
use crate::config::ServableOverride;
use flotilla_protocol::interchange::{SlotBatch, SlotWarmth, WarmOrder, WarmProcessInfo};

const MODEL: &str = "m@1.0.0";

/// A slot's report: `warm` servables, `orders_done` warm orders finished.
fn slot(warm: &[&str], orders_done: u64) -> SlotWarmth {
    SlotWarmth {
        warm: warm
            .iter()
            .map(|s| WarmProcessInfo {
                servable: (*s).into(),
                rss_kb: 1000,
            })
            .collect(),
        warming: None,
        orders_done,
        failed: vec![],
    }
}

/// The parts of an `Assign` reply on `to`.
fn assign_in(out: &[Action], to: ReplyTo) -> (Vec<SlotBatch>, Vec<WarmOrder>, Vec<String>) {
    match worker_reply(out, to) {
        Some(DaemonMessage::Assign {
            batches,
            warm,
            release,
        }) => (
            batches,
            warm,
            release.into_iter().map(|r| r.servable).collect(),
        ),
        other => panic!("expected Assign on {to:?}, got {other:?} in {out:#?}"),
    }
}

/// Every `Assign` sent, anywhere in `out`.
fn assigns(out: &[Action]) -> Vec<(Vec<SlotBatch>, Vec<WarmOrder>, Vec<String>)> {
    out.iter()
        .filter_map(|a| match a {
            Action::ReplyWorker {
                message:
                    DaemonMessage::Assign {
                        batches,
                        warm,
                        release,
                    },
                ..
            } => Some((
                batches.clone(),
                warm.clone(),
                release.iter().map(|r| r.servable.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// A result for `batch` whose call took `run_us`.
fn took(batch: &WorkBatch, run_us: u64) -> BatchResult {
    BatchResult {
        run_us,
        ..all_ok(batch)
    }
}

impl Harness {
    /// Worker `pipe` reports its slots; returns the reply's target and
    /// the actions.
    fn report_slots(&mut self, pipe: u64, slots: Vec<SlotWarmth>) -> (ReplyTo, Vec<Action>) {
        let from = self.reply_to();
        let out = self.ev(Event::Worker {
            from,
            pipe: PipeId(pipe),
            message: WorkerMessage::Slots { slots },
        });
        (from, out)
    }

    /// Submits `n` tasks of `servable`; returns every action (dispatch
    /// happens as they are queued).
    fn submit_out(&mut self, servable: &str, n: usize) -> Vec<Action> {
        let (_, mut out) = self.call(ClientCall::Submit {
            tasks: (0..n).map(|_| request(servable)).collect(),
            wait_ms: None,
        });
        out.extend(self.flush());
        out
    }

    /// A published model `m` batched one input per call.
    fn publish_model(&mut self) {
        let mut s = spec("m", "1.0.0");
        s.options.max_batch_size = 1;
        assert!(matches!(
            self.publish(record(s)),
            ClientReply::Published { .. }
        ));
    }
}

fn with_override(o: ServableOverride) -> Harness {
    let mut cfg = config();
    cfg.overrides.insert("m".into(), o);
    Harness::with(cfg, Recovered::default())
}

#[test]
fn a_cold_slot_warms_in_the_background_and_gets_work_only_once_ready() {
    let mut h = Harness::new();
    h.publish_model();
    h.exec_worker(1, "w1", 2);
    let (to, out) = h.report_slots(1, vec![slot(&[], 0), slot(&[], 0)]);
    assert!(
        worker_reply(&out, to).is_some(),
        "a report is answered at once"
    );
    let (poll, _) = h.poll(1);

    // Nothing is warm anywhere: the first request goes cold and waits once.
    let out = h.submit_out("m", 1);
    let (batches, warm, _) = assign_in(&out, poll);
    assert_eq!(batches.len(), 1);
    assert!(warm.is_empty(), "one cold start, not two");
    let first = batches[0].clone();
    let (to, out) = h.pull(1, vec![took(&first.batch, 50_000)], false);
    assert!(assign_in(&out, to).0.is_empty());
    let (warm_slot, cold_slot) = (first.slot, 1 - first.slot);
    let mut report = vec![slot(&[], 0), slot(&[], 0)];
    report[warm_slot as usize] = slot(&[MODEL], 0);
    h.report_slots(1, report.clone());

    // A burst: the warm slot takes work, the cold one is asked to warm.
    let (poll, _) = h.poll(1);
    let out = h.submit_out("m", 50);
    let (batches, warm, _) = assign_in(&out, poll);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].slot, warm_slot);
    assert_eq!(warm.len(), 1);
    assert_eq!(
        (warm[0].slot, warm[0].servable.as_str()),
        (cold_slot, MODEL)
    );
    assert!(warm[0].spec.is_none(), "the worker already has the record");

    // While it warms, every batch goes to the warm slot.
    let mut running = batches[0].batch.clone();
    for _ in 0..5 {
        let (to, out) = h.pull(1, vec![took(&running, 50_000)], false);
        let (batches, warm, _) = assign_in(&out, to);
        assert!(warm.is_empty());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].slot, warm_slot, "never the warming slot");
        running = batches[0].batch.clone();
    }
    // A report sent before the worker saw the order changes nothing.
    let (to, out) = h.report_slots(1, report.clone());
    assert!(assign_in(&out, to).0.is_empty());

    // Ready: the slot takes work at once.
    report[cold_slot as usize] = slot(&[MODEL], 1);
    let (to, out) = h.report_slots(1, report);
    let (batches, _, _) = assign_in(&out, to);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].slot, cold_slot);
}

#[test]
fn a_failed_warm_up_sends_the_batches_cold_so_the_failure_reaches_them() {
    let mut h = Harness::new();
    h.publish_model();
    h.exec_worker(1, "w1", 2);
    h.report_slots(1, vec![slot(&[MODEL], 0), slot(&[], 0)]);
    let (poll, _) = h.poll(1);
    let out = h.submit_out("m", 50);
    let (batches, warm, _) = assign_in(&out, poll);
    assert_eq!(warm.len(), 1, "slot 1 warms");
    let mut failed = slot(&[], 1);
    failed.failed = vec![MODEL.into()];
    // Slot 0 is busy; slot 1 failed to warm: it takes a batch cold.
    let (to, out) = h.report_slots(1, vec![slot(&[MODEL], 0), failed]);
    let (cold, warm, _) = assign_in(&out, to);
    assert!(warm.is_empty(), "no second warm-up of a failing servable");
    assert_eq!(cold.len(), 1);
    assert_eq!(cold[0].slot, 1);
    assert_eq!(batches[0].slot, 0);
}

#[test]
fn min_warm_slots_are_warmed_on_a_worker_ahead_of_any_request() {
    let mut h = with_override(ServableOverride {
        min_warm_slots: Some(2),
        ..ServableOverride::default()
    });
    h.publish_model();
    h.exec_worker(1, "w1", 3);
    h.report_slots(1, vec![slot(&[], 0), slot(&[], 0), slot(&[], 0)]);
    h.poll(1);
    let out = h.advance(SEC);
    let sent = assigns(&out);
    assert_eq!(sent.len(), 1, "{out:#?}");
    let (batches, warm, _) = &sent[0];
    assert!(batches.is_empty());
    let slots: Vec<u32> = warm.iter().map(|o| o.slot).collect();
    assert_eq!(slots, [0, 1]);
    assert!(
        warm[0].spec.is_some(),
        "the record goes with the first order"
    );
    assert!(warm[1].spec.is_none());
    // Warming counts: no more orders while they warm.
    h.poll(1);
    assert!(assigns(&h.advance(SEC)).is_empty());
}

#[test]
fn a_new_worker_warms_what_was_used_recently() {
    let mut h = Harness::new();
    h.publish_model();
    h.exec_worker(1, "w1", 1);
    h.report_slots(1, vec![slot(&[], 0)]);
    let (poll, _) = h.poll(1);
    let out = h.submit_out("m", 1);
    let (batches, _, _) = assign_in(&out, poll);
    h.pull(1, vec![all_ok(&batches[0].batch)], false);
    // A second worker arrives: it warms `m` before any request.
    h.exec_worker(2, "w2", 2);
    h.report_slots(2, vec![slot(&[], 0), slot(&[], 0)]);
    h.poll(2);
    let sent = assigns(&h.advance(SEC / 10));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.len(), 1);
    assert_eq!(sent[0].1[0].servable, MODEL);
}

#[test]
fn idle_warm_processes_are_let_go_after_their_idle_time_but_not_below_the_minimum() {
    let mut h = with_override(ServableOverride {
        warm_idle_s: Some(10),
        min_warm_slots: Some(1),
        ..ServableOverride::default()
    });
    h.publish_model();
    h.exec_worker(1, "w1", 2);
    h.report_slots(1, vec![slot(&[MODEL], 1), slot(&[MODEL], 1)]);
    h.poll(1);
    assert!(assigns(&h.advance(SEC)).is_empty(), "not idle long enough");
    // The release rides on the held poll, before it would be answered as
    // a heartbeat.
    let sent = assigns(&h.advance(9 * SEC));
    assert_eq!(sent.len(), 1, "one release");
    assert_eq!(sent[0].2, [MODEL]);
    h.report_slots(1, vec![slot(&[], 1), slot(&[MODEL], 1)]);
    h.poll(1);
    assert!(
        assigns(&h.advance(30 * SEC)).is_empty(),
        "min_warm_slots keeps the last one"
    );
}

#[test]
fn servable_warm_asks_for_slots_and_refuses_builtins() {
    let mut h = Harness::new();
    h.publish_model();
    h.exec_worker(1, "w1", 2);
    h.report_slots(1, vec![slot(&[], 0), slot(&[], 0)]);
    let (poll, _) = h.poll(1);
    let (from, out) = h.call(ClientCall::WarmServable {
        servable: "m".into(),
        slots: 2,
    });
    assert_eq!(
        client_reply(&out, from),
        Some(ClientReply::Warming {
            servable: MODEL.into(),
            slots: 2
        })
    );
    assert_eq!(assign_in(&out, poll).1.len(), 2);
    let (from, out) = h.call(ClientCall::WarmServable {
        servable: "echo".into(),
        slots: 1,
    });
    assert!(matches!(
        client_reply(&out, from),
        Some(ClientReply::Error(ApiError {
            kind: ApiErrorKind::BadRequest,
            ..
        }))
    ));
}

#[test]
fn a_worker_that_does_not_report_its_slots_is_served_as_before() {
    let mut h = Harness::new();
    h.publish_model();
    h.exec_worker(1, "w1", 2);
    let (poll, _) = h.poll(1);
    let out = h.submit_out("m", 4);
    assert_eq!(work_in(&out, poll).len(), 2, "both slots, cold or not");
}
