//! End-to-end tests of the memo store and request batching: real daemon,
//! real workers, and a Python servable (`tests/servables/counter`) that says
//! which call of its process each input arrived in and how big that call was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_client::{Client, json_to_payload, payload_to_json};
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{MemoUse, Outcome, TaskState, TaskView};
use flotilla_protocol::{Payload, TaskId};
use flotilla_tests::{Flotilla, config_with, python_bin, wait_until, workspace};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

fn counter_dir() -> PathBuf {
    workspace().join("tests/servables/counter")
}

fn publish(f: &Flotilla, dir: &Path) {
    let out = f.cli(&["servable", "publish", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn request(servable: &str, input: Value) -> TaskRequest {
    TaskRequest {
        servable: servable.into(),
        input: json_to_payload(&input).unwrap(),
        params: Payload::new(),
    }
}

fn output(view: &TaskView) -> Value {
    match &view.outcome {
        Some(Outcome::Output(p)) => payload_to_json(p).unwrap(),
        other => panic!("task {} has no output: {other:?}", view.id),
    }
}

/// Submits one request per client from `n` threads at once; returns the ids.
fn submit_concurrently(
    f: &Flotilla,
    n: usize,
    make: impl Fn(usize) -> TaskRequest + Sync,
) -> Vec<TaskId> {
    let home = f.home().to_path_buf();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (home, make) = (&home, &make);
                scope.spawn(move || {
                    let client = Client::connect(home).unwrap();
                    client.submit(vec![make(i)]).unwrap()[0]
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_memo_hit_is_served_with_no_worker_running_at_all() {
    python_bin();
    let mut f = Flotilla::start(&config_with(&[("servables.counter", "memoize", "true")]));
    publish(&f, &counter_dir());
    let worker = f.spawn_worker(&["--slots", "1"]);
    let client = f.client();
    let first = client
        .run("counter", json_to_payload(&json!("x")).unwrap(), Some(LONG))
        .unwrap();
    assert_eq!(first.state, TaskState::Completed);
    assert_eq!(first.memo, None);
    f.kill_worker(worker);
    wait_until(LONG, "the worker to be gone", || {
        client.status().ok()?.workers.is_empty().then_some(())
    });
    let again = client
        .run("counter", json_to_payload(&json!("x")).unwrap(), Some(LONG))
        .unwrap();
    assert_eq!(again.state, TaskState::Completed);
    assert_eq!(again.memo, Some(MemoUse::Stored));
    assert_eq!(output(&again), output(&first));
    // The CLI shows it, and the memo survives a restart.
    let out = f.cli(&["status", &again.id.to_string()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("memo      stored"));
    drop(client);
    assert!(
        f.signal_daemon(nix::sys::signal::Signal::SIGTERM, LONG)
            .success()
    );
    f.start_daemon();
    let after = f
        .client()
        .run("counter", json_to_payload(&json!("x")).unwrap(), Some(LONG))
        .unwrap();
    assert_eq!(after.memo, Some(MemoUse::Stored));
}

#[test]
fn a_hundred_identical_concurrent_requests_run_the_servable_once() {
    python_bin();
    let mut f = Flotilla::start(&config_with(&[
        ("servables.counter", "memoize", "true"),
        ("servables.counter", "max_batch_delay_ms", "0"),
    ]));
    publish(&f, &counter_dir());
    // All hundred are in flight before any worker exists.
    let ids = submit_concurrently(&f, 100, |_| request("counter", json!({"molecule": "H2O"})));
    f.spawn_worker(&["--slots", "2"]);
    let views = f.client().results(&ids, Some(LONG)).unwrap();
    let outputs: Vec<Value> = views.iter().map(output).collect();
    assert!(
        outputs.iter().all(|o| *o == outputs[0]),
        "one execution, one answer"
    );
    assert_eq!(outputs[0]["call"], 1, "the servable was called once");
    assert_eq!(outputs[0]["batch"], 1);
    let shared = views
        .iter()
        .filter(|v| v.memo == Some(MemoUse::Coalesced))
        .count();
    assert_eq!(shared, 99);
    let stats: Value = serde_json::from_slice(&f.cli(&["memo", "stats", "--json"]).stdout).unwrap();
    assert_eq!(
        (stats["coalesced"].as_u64(), stats["entries"].as_u64()),
        (Some(99), Some(1))
    );
}

#[test]
fn a_new_version_misses_and_eviction_respects_the_bound() {
    python_bin();
    let mut f = Flotilla::start(&config_with(&[
        ("servables.counter", "memoize", "true"),
        ("servables.counter", "max_batch_delay_ms", "0"),
        ("memo", "max_entries", "3"),
    ]));
    f.spawn_worker_named("w");
    publish(&f, &counter_dir());
    let v2 = f.home().join("counter-2");
    std::fs::create_dir_all(&v2).unwrap();
    for file in ["servable.toml", "serve.py"] {
        let text = std::fs::read_to_string(counter_dir().join(file)).unwrap();
        std::fs::write(
            v2.join(file),
            text.replace("version = \"1.0.0\"", "version = \"2.0.0\""),
        )
        .unwrap();
    }
    publish(&f, &v2);
    let client = f.client();
    let run = |servable: &str, input: Value| {
        client
            .run(servable, json_to_payload(&input).unwrap(), Some(LONG))
            .unwrap()
    };
    run("counter@1.0.0", json!(1));
    assert_eq!(run("counter@1.0.0", json!(1)).memo, Some(MemoUse::Stored));
    let v2_run = run("counter@2.0.0", json!(1));
    assert_eq!(
        (v2_run.servable.as_str(), v2_run.memo),
        ("counter@2.0.0", None),
        "v1's entry is not v2's"
    );
    for i in 2..6 {
        run("counter", json!(i));
    }
    let stats = client.memo_stats().unwrap();
    assert_eq!(stats.entries, 3, "{stats:?}");
    assert_eq!(stats.evictions, 3);
    // The oldest entries went first; the newest is still there.
    assert_eq!(run("counter", json!(5)).memo, Some(MemoUse::Stored));
    assert_eq!(run("counter@1.0.0", json!(1)).memo, None);
    let out = f.cli(&["memo", "clear", "counter"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 3 memo entries"));
    assert_eq!(client.memo_stats().unwrap().entries, 0);
}

#[test]
fn sixty_four_separate_requests_reach_the_servable_as_one_call() {
    python_bin();
    let mut f = Flotilla::start(&config_with(&[(
        "servables.counter",
        "max_batch_delay_ms",
        "2000",
    )]));
    publish(&f, &counter_dir());
    f.spawn_worker_named("w");
    // 64 clients, one request each; the daemon holds them up to 2 s to fill
    // the batch of 64.
    let ids = submit_concurrently(&f, 64, |i| request("counter", json!(i)));
    let views = f.client().results(&ids, Some(LONG)).unwrap();
    let outputs: Vec<Value> = views.iter().map(output).collect();
    for (i, o) in outputs.iter().enumerate() {
        assert_eq!(o["batch"], 64, "input {i}: {o}");
        assert_eq!(o["call"], outputs[0]["call"]);
    }
}

#[test]
fn one_bad_input_in_a_batch_fails_only_itself() {
    python_bin();
    let mut f = Flotilla::start(&config_with(&[(
        "servables.counter",
        "max_batch_delay_ms",
        "2000",
    )]));
    publish(&f, &counter_dir());
    f.spawn_worker_named("w");
    let tasks = (0..64)
        .map(|i| request("counter", if i == 17 { json!("poison") } else { json!(i) }))
        .collect();
    let client = f.client();
    let ids = client.submit(tasks).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    for (i, v) in views.iter().enumerate() {
        if i == 17 {
            assert_eq!(v.state, TaskState::Failed);
            assert_eq!(
                v.outcome,
                Some(Outcome::Error("ValueError: poison in the batch".into()))
            );
        } else {
            assert_eq!(v.state, TaskState::Completed, "input {i}");
            assert_eq!(
                output(v)["batch"],
                1,
                "retried on its own after the batch failed"
            );
        }
    }
}
