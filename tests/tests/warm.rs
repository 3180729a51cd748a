//! End-to-end tests of warm capacity: batches go only to slots whose
//! process is ready, `min_warm_slots` is honoured after a worker starts,
//! idle warm processes are let go after their idle time.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_client::{json_to_payload, payload_to_json};
use flotilla_protocol::client::{TaskRequest, WarmView};
use flotilla_protocol::task::{Outcome, TaskState};
use flotilla_tests::{Flotilla, config_with, python_bin, test_config, wait_until, workspace};
use serde_json::{Value, json};

/// Generous: a loaded two-core machine starts Python slowly.
const LIMIT: Duration = Duration::from_secs(120);

fn slow_start() -> PathBuf {
    workspace().join("tests/servables/slow-start")
}

/// A Flotilla with `slow-start` published and one worker of 2 slots.
fn start(config: &str) -> Flotilla {
    python_bin();
    let mut f = Flotilla::start(config);
    f.publish(&slow_start()).unwrap_or_else(|e| panic!("{e}"));
    f.spawn_worker(&["--slots", "2", "--worker-id", "w"]);
    f.wait_workers(1);
    f
}

fn warm(f: &Flotilla) -> Vec<WarmView> {
    f.client().status().map(|s| s.warm).unwrap_or_default()
}

fn output(view: &flotilla_protocol::task::TaskView) -> Value {
    match &view.outcome {
        Some(Outcome::Output(p)) => match payload_to_json(p) {
            Ok(v) => v,
            Err(e) => panic!("task {}: {e}", view.id),
        },
        other => panic!("task {} ended {other:?}", view.id),
    }
}

#[test]
fn no_request_goes_to_a_cold_slot_before_it_reports_ready() {
    let f = start(&test_config());
    let client = f.client();
    // Nothing is warm anywhere: the first request waits for the load, once.
    let first = client
        .run(
            "slow-start",
            json_to_payload(&json!(0)).unwrap(),
            Some(LIMIT),
        )
        .unwrap();
    assert_eq!(first.state, TaskState::Completed, "{first:?}");
    let warm_slot = output(&first)["slot"].as_u64().unwrap();
    // A burst: one slot is warm, the other is not.
    let tasks: Vec<TaskRequest> = (1..=60)
        .map(|i| TaskRequest {
            servable: "slow-start".into(),
            input: json_to_payload(&json!(i)).unwrap(),
            params: Default::default(),
        })
        .collect();
    let views = client.run_all(tasks, LIMIT).unwrap();
    let mut slots = std::collections::BTreeSet::new();
    for view in &views {
        assert_eq!(view.state, TaskState::Completed, "{view:?}");
        let out = output(view);
        let ready_us = out["ready_us"].as_u64().unwrap();
        assert!(
            view.timings.dispatched_us >= ready_us,
            "task {} was dispatched to slot {} at {} µs, before its process was ready at {ready_us} µs",
            view.id,
            out["slot"],
            view.timings.dispatched_us
        );
        slots.insert(out["slot"].as_u64().unwrap());
    }
    assert!(slots.contains(&warm_slot));
    // The cold slot warmed in the background meanwhile.
    wait_until(LIMIT, "both slots warm", || {
        (warm(&f).len() == 2).then_some(())
    });
}

#[test]
fn min_warm_slots_are_warm_after_a_worker_starts_without_any_request() {
    let f = start(&config_with(&[(
        "servables.slow-start",
        "min_warm_slots",
        "2",
    )]));
    let views = wait_until(LIMIT, "two warm processes", || {
        let w = warm(&f);
        (w.len() == 2).then_some(w)
    });
    assert!(views.iter().all(|v| v.servable == "slow-start@1.0.0"));
    let slots: Vec<u32> = views.iter().map(|v| v.slot).collect();
    assert_eq!(slots, [0, 1]);
    assert!(
        views.iter().all(|v| v.rss_kb > 0),
        "memory is reported: {views:?}"
    );
    let text = String::from_utf8_lossy(&f.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("warm processes"), "{text}");
    assert!(text.contains("slow-start@1.0.0"), "{text}");
    assert_eq!(f.client().status().unwrap().totals.accepted, 0);
}

#[test]
fn idle_warm_processes_are_let_go_after_their_idle_time() {
    let f = start(&config_with(&[(
        "servables.slow-start",
        "warm_idle_s",
        "2",
    )]));
    let out = f.cli(&["servable", "warm", "slow-start", "--slots", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Held warm for the idle time after the ask, then let go.
    wait_until(LIMIT, "two warm processes", || {
        (warm(&f).len() == 2).then_some(())
    });
    wait_until(LIMIT, "the warm processes let go", || {
        warm(&f).is_empty().then_some(())
    });
    // The daemon's view drops them when it sends the release; the worker
    // lets them go when the order arrives.
    wait_until(LIMIT, "the worker to let its idle processes go", || {
        f.worker_log(0)
            .contains("letting an idle warm process go")
            .then_some(())
    });
}

/// The pid of the template whose log is in `templates`, once it is ready.
fn template_pid(templates: &std::path::Path) -> Option<u32> {
    for entry in std::fs::read_dir(templates).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).ok()?;
            let line = text.lines().find(|l| l.starts_with("template "))?;
            return line.split_whitespace().nth(1)?.parse().ok();
        }
    }
    None
}

#[test]
fn a_servable_that_forks_starts_later_slots_from_the_nodes_template() {
    python_bin();
    let mut f = Flotilla::start(&test_config());
    let dir = f.home().join("forking");
    flotilla_tests::copy_servable(&slow_start(), &dir);
    let toml = std::fs::read_to_string(dir.join("servable.toml")).unwrap();
    std::fs::write(
        dir.join("servable.toml"),
        toml.replace("max_batch_size = 1", "max_batch_size = 1\nfork = true"),
    )
    .unwrap();
    f.publish(&dir).unwrap_or_else(|e| panic!("{e}"));
    let cache = f.home().join("node-cache");
    let shim = workspace().join("clients/python");
    let env = [("PYTHONPATH", shim.into_os_string())];
    let cache_arg = cache.display().to_string();
    let args = ["--slots", "1", "--cache-dir", &cache_arg];
    let first = f.spawn_worker_env(&args, &env);
    f.wait_workers(1);
    let client = f.client();
    let input = || json_to_payload(&json!(1)).unwrap();
    let cold = client.run("slow-start", input(), Some(LIMIT)).unwrap();
    assert_eq!(cold.state, TaskState::Completed, "{cold:?}");
    // The first start on the node starts the template too.
    let templates = cache.join("templates");
    let template = wait_until(LIMIT, "the node's template", || template_pid(&templates));
    f.kill_worker(first);
    f.wait_workers(0);
    // A new worker on the node: its slot's process is forked from the
    // template, which loaded the model before this worker existed.
    let started_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    f.spawn_worker_env(&args, &env);
    f.wait_workers(1);
    let warm = client.run("slow-start", input(), Some(LIMIT)).unwrap();
    assert_eq!(warm.state, TaskState::Completed, "{warm:?}");
    let out = output(&warm);
    let ready_us = out["ready_us"].as_u64().unwrap();
    assert!(
        ready_us < started_us,
        "the process loaded its model at {ready_us} µs, after the worker started at {started_us} µs: not forked"
    );
    assert_ne!(out["pid"].as_u64(), Some(u64::from(template)));
    let log = f.worker_log(1);
    assert!(log.contains("forked from the node's template"), "{log}");
    // The template outlives workers by design; this test ends it.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(template as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

#[test]
fn warm_ups_respect_the_workers_memory_budget() {
    python_bin();
    let mut f = Flotilla::start(&test_config());
    f.publish(&slow_start()).unwrap_or_else(|e| panic!("{e}"));
    // 1 MiB: one process of any servable is over it.
    f.spawn_worker(&["--slots", "2", "--worker-id", "w", "--warm-memory-mb", "1"]);
    f.wait_workers(1);
    let out = f.cli(&["servable", "warm", "slow-start", "--slots", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    wait_until(LIMIT, "the second warm-up refused", || {
        f.worker_log(0)
            .contains("warm-up refused: over the memory budget")
            .then_some(())
    });
    wait_until(LIMIT, "one warm process reported", || {
        (warm(&f).len() == 1).then_some(())
    });
    // Requests are still served.
    let view = f
        .client()
        .run(
            "slow-start",
            json_to_payload(&json!(1)).unwrap(),
            Some(LIMIT),
        )
        .unwrap();
    assert_eq!(view.state, TaskState::Completed, "{view:?}");
}
