//! End-to-end tests of the engine core: a real daemon, real workers and the
//! real CLI on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use flotilla_client::{json_to_payload, payload_to_json};
use flotilla_engine::store::Store;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{NIL, Outcome, TaskState};
use flotilla_protocol::{Payload, TaskId};
use flotilla_tests::{Flotilla, config_with, noop_tasks, process_running, test_config, wait_until};
use nix::sys::signal::Signal;
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn sleep_task(seconds: f64) -> TaskRequest {
    TaskRequest {
        servable: "sleep".into(),
        input: json_to_payload(&json!(seconds)).unwrap(),
        params: Payload::new(),
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn sync_run_through_the_cli_and_the_client_library() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "2"]);
    f.wait_workers(1);

    let out = f.cli(&["run", "echo", r#"{"molecule": "SiO2", "n": [1, 2]}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(printed, json!({"molecule": "SiO2", "n": [1, 2]}));

    // Input from stdin, whole task as JSON.
    let out = f.cli_with_stdin(&["run", "echo", "--json"], Some("[3, 4]"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let task: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(task["state"], "completed");
    assert_eq!(task["output"], json!([3, 4]));
    assert_eq!(task["attempts"], 1);

    // A servable error is the task's failure: exit 1, message on stderr.
    let out = f.cli(&["run", "sleep", r#""a while""#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("number of seconds"),
        "{}",
        stderr(&out)
    );

    // An unknown servable is a usage error naming it.
    let out = f.cli(&["run", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown servable `nosuch`"),
        "{}",
        stderr(&out)
    );

    let client = f.client();
    let view = client
        .run("echo", json_to_payload(&json!("hi")).unwrap(), Some(LONG))
        .unwrap();
    assert_eq!(view.state, TaskState::Completed);
    match view.outcome {
        Some(Outcome::Output(bytes)) => assert_eq!(payload_to_json(&bytes).unwrap(), json!("hi")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn async_submit_then_result() {
    let mut f = Flotilla::start(&test_config());
    let out = f.cli(&["submit", "echo", "42"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_owned();
    id.parse::<u64>().expect("submit prints the task id");

    // No worker yet: the result is not ready (exit 4), the task is queued.
    let out = f.cli(&["result", &id]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = f.cli(&["status", &id, "--json"]);
    let status: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(status[0]["state"], "queued");

    f.spawn_worker(&["--slots", "1"]);
    let out = f.cli(&["result", &id, "--wait", "--timeout", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "42");
}

#[test]
fn bulk_submit_of_ten_thousand_noop_tasks_all_complete() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "2"]);
    let batch = f.home().join("bulk.jsonl");
    let mut file = std::fs::File::create(&batch).unwrap();
    for i in 0..10_000 {
        if i % 2 == 0 {
            writeln!(file, r#"{{"servable": "noop", "input": null}}"#).unwrap();
        } else {
            writeln!(file, r#"{{"servable": "echo", "input": {i}}}"#).unwrap();
        }
    }
    drop(file);
    let out = f.cli(&["submit", "--batch", batch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ids: Vec<TaskId> = stdout(&out).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 10_000);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "one id per line, in order"
    );

    let results = f.client().results(&ids, Some(LONG)).unwrap();
    for (i, view) in results.iter().enumerate() {
        assert_eq!(view.state, TaskState::Completed, "task {}", view.id);
        if i % 2 == 1 {
            match &view.outcome {
                Some(Outcome::Output(b)) => assert_eq!(payload_to_json(b).unwrap(), json!(i)),
                other => panic!("{other:?}"),
            }
        }
    }
    let status = f.client().status().unwrap();
    assert_eq!(status.totals.completed, 10_000);
    assert!(status.queues.is_empty());
}

#[test]
fn a_bad_line_in_a_batch_file_submits_nothing() {
    let f = Flotilla::start(&test_config());
    let batch = f.home().join("bad.jsonl");
    std::fs::write(
        &batch,
        "{\"servable\": \"noop\"}\n{\"servable\": \"noop\", \"input\": }\n",
    )
    .unwrap();
    let out = f.cli(&["submit", "--batch", batch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad.jsonl:2"), "{}", stderr(&out));
    std::fs::write(
        &batch,
        "{\"servable\": \"noop\"}\n{\"servable\": \"nope\"}\n",
    )
    .unwrap();
    let out = f.cli(&["submit", "--batch", batch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("task 2 of 2"), "{}", stderr(&out));
    assert_eq!(f.client().status().unwrap().totals.accepted, 0);
}

#[test]
fn a_sigkilled_worker_s_tasks_are_completed_by_another_worker() {
    let mut f = Flotilla::start(&test_config());
    let first = f.spawn_worker(&["--slots", "2", "--worker-id", "first"]);
    f.wait_workers(1);
    let client = f.client();
    let ids = client
        // Long enough to be killed mid-task, short enough to run again.
        .submit(vec![sleep_task(4.0), sleep_task(4.0)])
        .unwrap();
    wait_until(LONG, "both tasks to run on the first worker", || {
        let views = client.task_status(&ids).ok()?;
        views
            .iter()
            .all(|v| v.state == TaskState::Running && v.worker.as_deref() == Some("first"))
            .then_some(())
    });
    f.kill_worker(first);
    // The daemon notices the dropped connection and puts the tasks back.
    wait_until(LONG, "the tasks to be queued again", || {
        let views = client.task_status(&ids).ok()?;
        views
            .iter()
            .all(|v| v.state == TaskState::Queued)
            .then_some(())
    });
    f.spawn_worker(&["--slots", "2", "--worker-id", "second"]);
    let ids2 = client.submit(vec![sleep_task(0.0)]).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    for v in &views {
        assert_eq!(v.state, TaskState::Completed, "{v:?}");
        assert_eq!(v.worker.as_deref(), Some("second"));
        assert_eq!(v.attempts, 2);
    }
    assert_eq!(
        client.results(&ids2, Some(LONG)).unwrap()[0].state,
        TaskState::Completed
    );
    assert_eq!(client.status().unwrap().totals.requeued, 2);
}

#[test]
fn a_sigkilled_daemon_with_ten_thousand_queued_tasks_recovers_them_all_exactly_once() {
    let mut f = Flotilla::start(&test_config());
    let client = f.client();
    let ids = client.submit(noop_tasks(10_000)).unwrap();
    assert_eq!(ids.len(), 10_000);
    drop(client);
    // Accepted means durable: kill without any chance to flush.
    f.kill_daemon();
    f.start_daemon();
    assert!(
        f.log()
            .contains("recovered unfinished tasks into the queue")
    );
    let client = f.client();
    let status = client.status().unwrap();
    assert_eq!(status.queues.iter().map(|q| q.queued).sum::<u64>(), 10_000);

    f.spawn_worker(&["--slots", "2"]);
    let views = client.results(&ids, Some(LONG)).unwrap();
    assert!(views.iter().all(|v| v.state == TaskState::Completed));
    // New ids never collide with recovered ones.
    let more = client.submit(noop_tasks(1)).unwrap();
    assert!(more[0] > *ids.iter().max().unwrap());
    drop(client);
    let status = f.signal_daemon(Signal::SIGTERM, LONG);
    assert!(status.success(), "{status}");

    // The store holds exactly one result record per task.
    let store = Store::open(&f.home().join("store")).unwrap();
    let recovered = store.recover().unwrap();
    let mut with_result = HashMap::new();
    for (id, _, result) in &recovered.tasks {
        with_result.insert(*id, result.is_some());
    }
    for id in &ids {
        assert_eq!(
            with_result.get(id),
            Some(&true),
            "task {id} has no result record"
        );
    }
    assert_eq!(store.result_count().unwrap(), 10_001);
}

#[test]
fn a_worker_with_a_wrong_secret_is_refused_while_the_daemon_keeps_serving() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "1", "--worker-id", "good"]);
    f.wait_workers(1);
    let wrong = f.home().join("wrong-secret");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let intruder = f.spawn_worker(&[
        "--secret-file",
        wrong.to_str().unwrap(),
        "--worker-id",
        "intruder",
    ]);
    let status = f.wait_worker(intruder, LONG);
    assert_eq!(
        status.code(),
        Some(4),
        "a worker no address accepts exits 4"
    );
    // The daemon cannot prove it knows the intruder's secret: the
    // intruder never says hello (a hello with a wrong proof is refused by
    // the daemon too: see the core's tests).
    assert!(
        f.worker_log(1)
            .contains("cannot prove it knows this worker's secret"),
        "{}",
        f.worker_log(1)
    );
    assert!(
        !f.log()
            .contains(&flotilla_protocol::secret::to_hex(&[7u8; 32]))
    );
    let view = f
        .client()
        .run("echo", json_to_payload(&json!(1)).unwrap(), Some(LONG))
        .unwrap();
    assert_eq!(view.state, TaskState::Completed);
    assert_eq!(view.worker.as_deref(), Some("good"));
    let workers = f.client().status().unwrap().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].id, "good");
}

/// A raw nng REQ socket that sends one frame and reports whether any reply came.
fn send_raw(url: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    use nng::options::{Options, RecvTimeout};
    let socket = nng::Socket::new(nng::Protocol::Req0).unwrap();
    socket
        .set_opt::<RecvTimeout>(Some(Duration::from_millis(500)))
        .unwrap();
    socket.dial(url).unwrap();
    socket.send(nng::Message::from(bytes)).unwrap();
    socket.recv().ok().map(|m| m.as_slice().to_vec())
}

#[test]
fn a_malformed_frame_on_either_socket_drops_only_that_peer() {
    let mut f = Flotilla::start(&config_with(&[("daemon", "max_frame_bytes", "65536")]));
    f.spawn_worker(&["--slots", "1", "--worker-id", "steady"]);
    f.wait_workers(1);
    let steady_client = f.client();
    assert!(steady_client.ping().is_ok());

    let api = format!("ipc://{}", f.home().join("api.sock").display());
    let info = f.info();
    let interchange = format!("tcp://127.0.0.1:{}", info.interchange_port);
    let garbage: &[u8] = b"\xff\x00 this is not msgpack";
    let oversized = vec![0x90u8; 100_000];
    for url in [&api, &interchange] {
        assert_eq!(send_raw(url, garbage), None, "{url}: garbage gets no reply");
        assert_eq!(
            send_raw(url, &oversized),
            None,
            "{url}: oversized frame dropped"
        );
        // Well-formed msgpack of the wrong shape.
        assert_eq!(
            send_raw(
                url,
                &[0x92, flotilla_protocol::PROTOCOL_VERSION as u8, 0x2a]
            ),
            None,
            "{url}: wrong shape"
        );
    }
    // Every other peer is untouched: the old client connection, the worker.
    let view = steady_client
        .run(
            "echo",
            json_to_payload(&json!("still here")).unwrap(),
            Some(LONG),
        )
        .unwrap();
    assert_eq!(view.state, TaskState::Completed);
    assert_eq!(view.worker.as_deref(), Some("steady"));
    let status = steady_client.status().unwrap();
    assert_eq!(status.workers.len(), 1);
    assert_eq!(status.totals.requeued, 0);
    assert!(f.log().contains("dropping client: bad request frame"));
    assert!(f.log().contains("dropping worker: bad frame"));
}

#[test]
fn sigterm_lets_running_tasks_finish_then_exits_cleanly() {
    let mut f = Flotilla::start(&test_config());
    let worker = f.spawn_worker(&["--slots", "1"]);
    f.wait_workers(1);
    let client = f.client();
    // Still running when the signal comes however loaded the machine is,
    // and done well within the 10 s grace.
    let running = client.submit(vec![sleep_task(4.0)]).unwrap();
    wait_until(LONG, "the task to start", || {
        (client.task_status(&running).ok()?[0].state == TaskState::Running).then_some(())
    });
    let queued = client.submit(vec![sleep_task(0.0)]).unwrap();
    drop(client);
    let status = f.signal_daemon(Signal::SIGTERM, LONG);
    assert!(status.success(), "{status}\n{}", f.log());
    // The worker was told to go.
    assert!(f.wait_worker(worker, LONG).success());
    assert!(!f.home().join("daemon.pid").exists());
    assert!(!f.home().join("api.sock").exists());

    // After a restart the finished task kept its result and the queued one is
    // still queued.
    f.start_daemon();
    let client = f.client();
    assert_eq!(
        client.results(&running, None).unwrap()[0].state,
        TaskState::Completed
    );
    assert_eq!(
        client.task_status(&queued).unwrap()[0].state,
        TaskState::Queued
    );
}

#[test]
fn stop_command_and_one_daemon_per_state_directory() {
    let mut f = Flotilla::start(&test_config());
    let out = f.cli(&[
        "daemon",
        "--config",
        f.home().join("site.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "a second daemon is refused");
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));

    let out = f.cli(&["stop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(f.wait_daemon_exit(LONG).success());

    let out = f.cli(&["status"]);
    assert_eq!(out.status.code(), Some(3), "daemon unreachable: exit 3");
    assert!(
        stderr(&out).contains("no daemon is running"),
        "{}",
        stderr(&out)
    );

    // A stale pid file (a crashed daemon) does not block the next start.
    std::fs::write(f.home().join("daemon.pid"), "2147483646\n").unwrap();
    f.start_daemon();
    assert!(
        f.log()
            .contains("replacing the pid file of an earlier daemon")
    );
}

#[test]
fn the_local_provider_starts_a_blocks_workers_and_cancels_them_at_shutdown() {
    let config = config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("worker", "slots", "2"),
        (
            "worker",
            "command",
            &format!("\"{}\"", flotilla_tests::bin("flotilla-worker").display()),
        ),
    ]);
    let mut f = Flotilla::start(&config);
    f.wait_workers(1);
    let client = f.client();
    let status = client.status().unwrap();
    assert_eq!(status.blocks.len(), 1);
    assert_eq!(status.blocks[0].state, "RUNNING");
    assert_eq!(status.workers[0].block, Some(0));
    assert_eq!(status.workers[0].slots, 2);
    let pid: u32 = status.blocks[0].job_id.as_ref().unwrap().parse().unwrap();
    let view = client
        .run("noop", Payload::from_static(NIL), Some(LONG))
        .unwrap();
    assert_eq!(view.state, TaskState::Completed);
    drop(client);
    assert!(f.signal_daemon(Signal::SIGTERM, LONG).success());
    wait_until(LONG, "the block's worker to exit", || {
        (!process_running(pid)).then_some(())
    });
}

#[test]
fn a_block_that_cannot_start_workers_is_reported_not_retried_forever() {
    let config = config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("provider", "max_block_failures", "2"),
        ("worker", "command", "\"/nonexistent/flotilla-worker\""),
    ]);
    let f = Flotilla::start(&config);
    let client = f.client();
    let status = wait_until(LONG, "block starts to be paused", || {
        let s = client.status().ok()?;
        s.blocks_paused.is_some().then_some(s)
    });
    assert_eq!(status.blocks.len(), 2, "{status:?}");
    assert!(
        status.blocks.iter().all(|b| b.state == "FAILED"),
        "{status:?}"
    );
    let text = status.blocks_paused.unwrap();
    assert!(text.contains("2 blocks in a row"), "{text}");
    assert!(
        text.contains("/nonexistent/flotilla-worker"),
        "the job's stderr reaches the user: {text}"
    );
}
