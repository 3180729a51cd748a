//! Frames larger than the other side accepts: the daemon sends a worker no
//! `Work` reply over the limit the worker announced, refuses at submission
//! an input no worker could be sent, and the CLI refuses to send a request
//! larger than the daemon accepts instead of calling the daemon unreachable;
//! the client library splits a submission over the limit into several.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::launch::flag;
use flotilla_protocol::task::{Outcome, TaskState};
use flotilla_protocol::{Payload, TaskId};
use flotilla_tests::{Flotilla, config_with, sleep_tasks};

/// The daemon's (and so the workers') frame limit in these tests.
const LIMIT: usize = 65_536;

/// A msgpack `bin` of `n` bytes (a valid echo input).
fn bin_input(n: usize) -> Payload {
    let mut bytes = vec![0xc5, (n >> 8) as u8, n as u8];
    bytes.extend(std::iter::repeat_n(0x42u8, n));
    Payload::from(bytes)
}

fn echo(n: usize) -> TaskRequest {
    TaskRequest {
        servable: "echo".into(),
        input: bin_input(n),
        params: Payload::new(),
    }
}

fn small_frames() -> Flotilla {
    Flotilla::start(&config_with(&[(
        "daemon",
        "max_frame_bytes",
        &LIMIT.to_string(),
    )]))
}

#[test]
fn inputs_that_together_exceed_the_workers_limit_all_complete() {
    let mut f = small_frames();
    // Attached through the state directory: the worker takes the daemon's
    // limit from its contact file and announces it.
    f.spawn_worker(&[flag::SLOTS, "1", flag::WORKER_ID, "small-frames"]);
    f.wait_workers(1);
    let client = f.client();
    // The only slot is busy while the inputs queue behind it, so they would
    // all go out together when it frees.
    let busy = client.submit(sleep_tasks(1, 1.5)).unwrap();
    // One request each: together they would not fit in one request either.
    let ids: Vec<TaskId> = (0..4)
        .flat_map(|_| client.submit(vec![echo(25_000)]).unwrap())
        .collect();
    let views = client.results(&ids, Some(Duration::from_secs(60))).unwrap();
    for view in &views {
        assert_eq!(view.state, TaskState::Completed, "{view:?}");
        match &view.outcome {
            Some(Outcome::Output(out)) => assert_eq!(out.len(), 25_003),
            other => panic!("{other:?}"),
        }
    }
    let busy = client
        .results(&busy, Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(busy[0].state, TaskState::Completed);
    // Nothing was lost on the way: the worker never dropped its connection.
    let log = f.worker_log(0);
    assert!(!log.contains("registering again"), "{log}");
    assert!(!log.contains("larger than this worker accepts"), "{log}");
}

#[test]
fn a_submission_over_the_limit_is_split_by_the_client_and_all_complete() {
    let mut f = small_frames();
    f.spawn_worker(&[flag::SLOTS, "1", flag::WORKER_ID, "split"]);
    f.wait_workers(1);
    let client = f.client();
    // 10 inputs of 20 kB: 200 kB together, three times the limit.
    let tasks: Vec<TaskRequest> = (0..10).map(|i| echo(20_000 + i)).collect();
    let ids = client.submit(tasks.clone()).unwrap();
    assert_eq!(ids.len(), 10);
    let views = client.results(&ids, Some(Duration::from_secs(60))).unwrap();
    let lengths: Vec<usize> = views
        .iter()
        .map(|v| match &v.outcome {
            Some(Outcome::Output(out)) => out.len(),
            other => panic!("{v:?}: {other:?}"),
        })
        .collect();
    // In the order given: each answer is its own input back.
    assert_eq!(lengths, (0..10).map(|i| 20_003 + i).collect::<Vec<_>>());
    // The same through run_all, which waits for them too.
    let views = client.run_all(tasks, Duration::from_secs(60)).unwrap();
    assert_eq!(views.len(), 10);
    for (i, view) in views.iter().enumerate() {
        assert_eq!(view.state, TaskState::Completed, "{view:?}");
        match &view.outcome {
            Some(Outcome::Output(out)) => assert_eq!(out.len(), 20_003 + i),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn an_input_no_worker_could_be_sent_is_refused_by_the_daemon_and_the_cli() {
    let f = small_frames();
    let client = f.client();
    // Fits in the request frame, but not in a Work frame with its batch.
    let err = client.submit(vec![echo(LIMIT - 100)]).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "input of {} bytes exceeds the daemon's frame limit of {LIMIT} bytes",
            LIMIT - 100 + 3
        )),
        "{message}"
    );
    // Larger than any request the daemon takes: the CLI says so and does
    // not send it (exit status 2, as for other refused input; not 3,
    // "daemon unreachable").
    let file = f.home().join("big.json");
    std::fs::write(&file, format!("\"{}\"", "a".repeat(200_000))).unwrap();
    let out = f.cli(&[
        "run",
        "echo",
        "--input-file",
        file.to_str().unwrap(),
        "--timeout",
        "20",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        // A msgpack str 32: five bytes of header.
        stderr.contains(&format!(
            "input of 200005 bytes exceeds the daemon's frame limit of {LIMIT} bytes"
        )),
        "{stderr}"
    );
    // The daemon is fine.
    assert!(client.ping().is_ok());
}
