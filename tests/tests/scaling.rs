//! Elastic scaling, wall-time draining and worker loss on the local
//! provider (the Slurm versions are in slurm.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flotilla_protocol::client::DaemonStatus;
use flotilla_protocol::task::TaskState;
use flotilla_tests::{Flotilla, bin, config_with, sleep_tasks, wait_until, workspace};

const LONG: Duration = Duration::from_secs(120);

fn worker_toml() -> String {
    format!("\"{}\"", bin("flotilla-worker").display())
}

fn live_blocks(s: &DaemonStatus) -> usize {
    s.blocks
        .iter()
        .filter(|b| matches!(b.state.as_str(), "PENDING" | "RUNNING" | "UNKNOWN"))
        .count()
}

#[test]
fn a_thousand_queued_tasks_scale_out_to_max_blocks_and_idle_blocks_go_back_to_min() {
    let worker = worker_toml();
    let f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "0"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "3"),
        ("provider", "strategy_period_s", "0.2"),
        ("provider", "max_idle_s", "2"),
        ("provider", "min_block_lifetime_s", "1"),
        ("provider", "cooldown_s", "5"),
        ("worker", "command", &worker),
        ("worker", "slots", "2"),
    ]));
    let client = f.client();
    // min_blocks: one block, before any work.
    wait_until(LONG, "the min_blocks block", || {
        (client.status().ok()?.workers.len() == 1).then_some(())
    });
    let ids = client.submit(sleep_tasks(1000, 0.01)).unwrap();
    let peak = wait_until(LONG, "three blocks with workers", || {
        let s = client.status().ok()?;
        (s.workers.len() == 3).then_some(s)
    });
    assert_eq!(live_blocks(&peak), 3, "{:?}", peak.blocks);
    let views = client.results(&ids, Some(LONG)).unwrap();
    assert!(views.iter().all(|v| v.state == TaskState::Completed));
    // Idle for max_idle_s: back to min_blocks.
    let after = wait_until(LONG, "idle blocks to be cancelled", || {
        let s = client.status().ok()?;
        (live_blocks(&s) == 1 && s.workers.len() == 1).then_some(s)
    });
    let pool = &after.pools[0];
    assert_eq!(
        pool.submitted, 3,
        "blocks submitted beyond need: {:?}",
        after.blocks
    );
    let cancels: Vec<String> = f
        .events()
        .into_iter()
        .filter(|e| e.kind == "block-cancelled")
        .map(|e| e.message)
        .collect();
    assert_eq!(cancels.len(), 2, "{cancels:?}");
    assert!(
        cancels.iter().all(|m| m.starts_with("idle for")),
        "{cancels:?}"
    );
    let out = f.cli(&["events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("block-requested") && text.contains("worker-registered"),
        "{text}"
    );
}

#[test]
fn a_block_at_its_wall_time_drains_and_its_work_finishes_elsewhere() {
    let worker = worker_toml();
    let f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("provider", "walltime", "\"00:00:16\""),
        ("provider", "walltime_margin_s", "6"),
        ("provider", "replace_ahead_s", "8"),
        ("provider", "strategy_period_s", "0.2"),
        ("worker", "command", &worker),
        ("worker", "slots", "2"),
    ]));
    let client = f.client();
    wait_until(LONG, "the first block's worker", || {
        (client.status().ok()?.workers.len() == 1).then_some(())
    });
    // 20 s of work for 2 slots: more than the first block's 16 s, whose
    // worker has 6 s to finish its last calls and leave on a loaded machine.
    let ids = client.submit(sleep_tasks(40, 1.0)).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    for v in &views {
        assert_eq!(v.state, TaskState::Completed, "{v:?}");
        assert_eq!(v.attempts, 1, "a task was interrupted: {v:?}");
    }
    let status = client.status().unwrap();
    assert_eq!(status.totals.requeued, 0, "no task was killed mid-run");
    assert_eq!(status.totals.completed, 40);
    let first = f.block_history(0);
    assert!(
        first.iter().any(|e| e.starts_with("block-state COMPLETED")),
        "the first block ended on its own, before its wall time: {first:?}"
    );
    let events = f.events();
    let left = events
        .iter()
        .find(|e| e.kind == "worker-left" && e.block == Some(0))
        .expect("block 0's worker left");
    assert!(left.message.contains("wall time"), "{}", left.message);
    // Its replacement was asked for before it ended, and did work.
    let replaced = events
        .iter()
        .find(|e| e.kind == "block-requested" && e.block == Some(1))
        .expect("a replacement");
    assert!(replaced.seq < left.seq, "{events:#?}");
    assert!(
        replaced.message.contains("wall time"),
        "{}",
        replaced.message
    );
    let later_workers: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "worker-registered" && e.block.is_some_and(|b| b > 0))
        .filter_map(|e| e.worker.clone())
        .collect();
    let elsewhere = views
        .iter()
        .filter(|v| v.worker.as_ref().is_some_and(|w| later_workers.contains(w)))
        .count();
    assert!(elsewhere > 0, "no task ran on a later block: {events:#?}");
}

#[test]
fn a_poison_task_fails_after_max_attempts_with_every_reason_while_the_others_complete() {
    let worker = worker_toml();
    let f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("provider", "strategy_period_s", "0.2"),
        ("daemon", "max_attempts", "3"),
        ("worker", "command", &worker),
        ("worker", "slots", "2"),
    ]));
    f.publish(&workspace().join("tests/servables/crashy"))
        .unwrap();
    let client = f.client();
    let mut tasks: Vec<_> = (0..20)
        .map(|i| flotilla_protocol::client::TaskRequest {
            servable: "crashy".into(),
            input: flotilla_client::json_to_payload(&serde_json::json!(format!("ok-{i}"))).unwrap(),
            params: flotilla_protocol::Payload::new(),
        })
        .collect();
    tasks.insert(
        5,
        flotilla_protocol::client::TaskRequest {
            servable: "crashy".into(),
            input: flotilla_client::json_to_payload(&serde_json::json!("kill-worker")).unwrap(),
            params: flotilla_protocol::Payload::new(),
        },
    );
    let ids = client.submit(tasks).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    let poison = &views[5];
    assert_eq!(poison.state, TaskState::Failed);
    assert_eq!(poison.attempts, 3);
    match &poison.outcome {
        Some(flotilla_protocol::task::Outcome::Error(m)) => {
            assert!(m.starts_with("poison task"), "{m}");
            for attempt in 1..=3 {
                assert!(m.contains(&format!("attempt {attempt}: worker")), "{m}");
            }
        }
        other => panic!("{other:?}"),
    }
    for (i, v) in views.iter().enumerate() {
        if i != 5 {
            assert_eq!(v.state, TaskState::Completed, "{v:?}");
        }
    }
    let lost = f
        .events()
        .into_iter()
        .filter(|e| e.kind == "worker-lost")
        .count();
    assert!(lost >= 3, "{lost}");
}
