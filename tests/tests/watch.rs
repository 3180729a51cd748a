//! End-to-end tests of watching bulk work: `flotilla wait` over id ranges
//! with `--stream` and a progress bar, `flotilla tasks`, and task events,
//! against a real daemon and real workers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_client::json_to_payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::launch::HOME_ENV;
use flotilla_protocol::task::TaskState;
use flotilla_protocol::watch::TaskEventFilter;
use flotilla_protocol::{Payload, TaskId};
use flotilla_tests::{
    Flotilla, bin, noop_tasks, ok, python_bin, sleep_tasks, test_config, wait_until, workspace,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(180);

fn request(servable: &str, input: Value) -> TaskRequest {
    TaskRequest {
        servable: servable.into(),
        input: json_to_payload(&input).unwrap(),
        params: Payload::new(),
    }
}

fn range(ids: &[TaskId]) -> String {
    format!("{}-{}", ids[0], ids[ids.len() - 1])
}

/// `flotilla ARGS` against `f`'s daemon, running on, its stdout and stderr
/// piped.
fn spawn_cli(f: &Flotilla, args: &[&str]) -> std::process::Child {
    Command::new(bin("flotilla"))
        .args(args)
        .env(HOME_ENV, f.home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_range_wait_streams_one_json_line_per_task_in_completion_order() {
    let mut f = Flotilla::start(&test_config());
    let ids = f.client().submit(noop_tasks(10_000)).unwrap();
    assert_eq!(ids.last().unwrap().0 - ids[0].0, 9_999, "consecutive ids");
    // The wait starts before any worker: it streams as results come.
    let mut wait = spawn_cli(&f, &["wait", &range(&ids), "--stream"]);
    f.spawn_worker(&["--slots", "2"]);
    let stdout = wait.stdout.take().unwrap();
    let lines: Vec<Value> = BufReader::new(stdout)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let status = wait.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut wait.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.is_empty(), "nothing extra when piped: {stderr}");
    assert_eq!(lines.len(), 10_000);
    let seen: HashSet<u64> = lines.iter().map(|l| l["id"].as_u64().unwrap()).collect();
    let wanted: HashSet<u64> = ids.iter().map(|i| i.0).collect();
    assert_eq!(seen, wanted, "every task once");
    assert!(lines.iter().all(|l| l["state"] == "completed"));
    let finished: Vec<u64> = lines
        .iter()
        .map(|l| l["timings_us"]["finished"].as_u64().unwrap())
        .collect();
    assert!(
        finished.windows(2).all(|w| w[0] <= w[1]),
        "in completion order"
    );
}

/// Runs `flotilla ARGS` under a pseudo-terminal (`script`); its output.
fn under_pty(f: &Flotilla, args: &str) -> String {
    let command = format!("{} {args}", bin("flotilla").display());
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env(HOME_ENV, f.home())
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_progress_bar_shows_on_a_terminal_and_not_when_piped() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "2"]);
    let ids = f.client().submit(sleep_tasks(6, 0.2)).unwrap();
    let shown = under_pty(&f, &format!("wait {}", range(&ids)));
    assert!(
        shown.contains("6/6 done") && shown.contains("ETA"),
        "no bar under a terminal: {shown}"
    );
    let piped = f.cli(&["wait", &range(&ids)]);
    let stdout = ok(&piped);
    assert_eq!(stdout.lines().count(), 6, "one result per task: {stdout}");
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("ETA"), "a bar when piped: {stderr}");
    // `result --wait` over the same range, ids read from stdin.
    let listed: String = ids.iter().map(|i| format!("{i}\n")).collect();
    let again = f.cli_with_stdin(&["result", "-", "--wait", "--json"], Some(&listed));
    let rows: Value = serde_json::from_str(&ok(&again)).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 6);
}

#[test]
fn a_large_batch_file_shows_a_bar_on_a_terminal_and_not_when_piped() {
    let f = Flotilla::start(&test_config());
    // 100,000 tasks, about 6 MiB: past the size that gets a bar.
    let file = f.home().join("batch.jsonl");
    let line = "{\"servable\": \"echo\", \"input\": \"a line of about sixty bytes\"}\n";
    std::fs::write(&file, line.repeat(100_000)).unwrap();
    let shown = under_pty(&f, &format!("submit --batch {} --json", file.display()));
    assert!(
        shown.contains("reading") && shown.contains("MiB"),
        "no bar under a terminal: {}",
        &shown[shown.len().saturating_sub(2000)..]
    );
    let piped = f.cli(&["submit", "--batch", file.to_str().unwrap(), "--json"]);
    let ids: Value = serde_json::from_str(&ok(&piped)).unwrap();
    assert_eq!(ids.as_array().unwrap().len(), 100_000);
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("reading"), "a bar when piped: {stderr}");
}

#[test]
fn a_batch_on_stdin_pipes_into_a_streamed_wait() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "2"]);
    let lines: String = (0..50)
        .map(|i| format!("{{\"servable\": \"echo\", \"input\": {i}}}\n"))
        .collect();
    let ids = ok(&f.cli_with_stdin(&["submit", "--batch", "-"], Some(&lines)));
    assert_eq!(ids.lines().count(), 50, "{ids}");
    let streamed = ok(&f.cli_with_stdin(&["wait", "-", "--stream"], Some(&ids)));
    let mut outputs: Vec<u64> = streamed
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["output"]
                .as_u64()
                .unwrap()
        })
        .collect();
    outputs.sort_unstable();
    assert_eq!(outputs, (0..50).collect::<Vec<u64>>());
    let empty = f.cli_with_stdin(&["submit", "--batch", "-"], Some("\n"));
    assert_eq!(empty.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("stdin: no tasks"), "{stderr}");
}

#[test]
fn bad_ranges_are_refused_naming_the_range() {
    let f = Flotilla::start(&test_config());
    for (arg, says) in [
        (
            "10-5",
            "`10-5`: a range's first id must not be above its last",
        ),
        ("5-x", "`5-x` is not a task id or range"),
        ("1-99999999999", "names more than"),
    ] {
        let out = f.cli(&["status", arg]);
        assert_eq!(out.status.code(), Some(2), "{arg}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{arg}: {stderr}");
    }
}

#[test]
fn tasks_lists_exactly_the_failed_tasks_of_a_servable() {
    python_bin();
    let mut f = Flotilla::start(&test_config());
    f.publish(&workspace().join("tests/servables/crashy"))
        .unwrap();
    f.spawn_worker(&["--slots", "2"]);
    let client = f.client();
    // One run first, so the worker holds the servable before batches of
    // it reach both of its slots at once.
    let first = client
        .run("crashy", json_to_payload(&json!("ok")).unwrap(), Some(LONG))
        .unwrap();
    assert_eq!(first.state, TaskState::Completed, "{first:?}");
    let crashy = client
        .submit(
            ["ok", "bad", "ok", "bad"]
                .iter()
                .map(|x| request("crashy", json!(x)))
                .collect(),
        )
        .unwrap();
    let sleep = client
        .submit(vec![
            request("sleep", json!(0)),
            request("sleep", json!("soon")),
        ])
        .unwrap();
    let all: Vec<TaskId> = crashy.iter().chain(&sleep).copied().collect();
    let views = client.results(&all, Some(LONG)).unwrap();
    assert!(views.iter().all(|v| v.state.is_final()), "{views:?}");
    let out = ok(&f.cli(&[
        "tasks",
        "--state",
        "failed",
        "--servable",
        "crashy",
        "--json",
    ]));
    let rows: Value = serde_json::from_str(&out).unwrap();
    let listed: Vec<u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, [crashy[3].0, crashy[1].0], "newest first");
    for row in rows.as_array().unwrap() {
        assert!(
            row["error"].as_str().unwrap().contains("bad input"),
            "{row}"
        );
    }
    // As a table, with the reason; and `status` of a failed task says why.
    let table = ok(&f.cli(&["tasks", "--state", "failed"]));
    assert_eq!(
        table.lines().count(),
        4,
        "a header and three failures: {table}"
    );
    let status = ok(&f.cli(&["status", &sleep[1].to_string()]));
    assert!(status.contains("number of seconds"), "{status}");
    let bad_state = f.cli(&["tasks", "--state", "finished"]);
    assert_eq!(bad_state.status.code(), Some(2));
}

#[test]
fn a_retried_task_shows_in_the_task_events() {
    let mut f = Flotilla::start(&test_config());
    let first = f.spawn_worker(&["--slots", "1"]);
    let client = f.client();
    let id = client.submit(sleep_tasks(1, 8.0)).unwrap()[0];
    wait_until(LONG, "the task to run", || {
        (client.task_status(&[id]).unwrap()[0].state == TaskState::Running).then_some(())
    });
    f.kill_worker(first);
    f.spawn_worker(&["--slots", "1"]);
    let view = client.results(&[id], Some(LONG)).unwrap().remove(0);
    assert_eq!(view.state, TaskState::Completed);
    let out = ok(&f.cli(&["events", "--tasks", "--task", &id.to_string(), "--json"]));
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "accepted",
            "dispatched",
            "retried",
            "dispatched",
            "finished"
        ],
        "{out}"
    );
    let why = events[2]["message"].as_str().unwrap();
    assert!(why.contains("was lost"), "{why}");
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    let other = ok(&f.cli(&["events", "--tasks", "--servable", "echo"]));
    assert!(other.is_empty(), "filtered out: {other}");
}

/// A task id and an event's kind, as the follower printed them.
type Printed = (u64, String);

#[test]
fn a_task_events_reader_from_before_a_restart_gets_the_new_daemon_s_events() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "1"]);
    let client = f.client();
    let before = client.submit(noop_tasks(20)).unwrap();
    let views = client.results(&before, Some(LONG)).unwrap();
    assert!(views.iter().all(|v| v.state == TaskState::Completed));
    // A user's `flotilla events --tasks --follow`, started before the
    // restart, printing each event as a JSON line.
    let mut follow = spawn_cli(&f, &["events", "--tasks", "--follow", "--json"]);
    let (lines_tx, lines) = std::sync::mpsc::channel::<Printed>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let event: Value = serde_json::from_str(&line).unwrap();
            let kind = event["kind"].as_str().unwrap().to_owned();
            if lines_tx
                .send((event["task"].as_u64().unwrap(), kind))
                .is_err()
            {
                break;
            }
        }
    });
    let mut printed: Vec<Printed> = Vec::new();
    let finished = |printed: &[Printed]| printed.iter().filter(|e| e.1 == "finished").count();
    let read_until = |printed: &mut Vec<Printed>, done: &dyn Fn(&[Printed]) -> bool| {
        let deadline = std::time::Instant::now() + LONG;
        while !done(printed) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(event) => printed.push(event),
                Err(e) => panic!("the follower stopped printing ({e}): {printed:?}"),
            }
        }
    };
    // It has caught up before the daemon goes.
    read_until(&mut printed, &|p| finished(p) == before.len());
    let everything = TaskEventFilter::default();
    let mut seen = 0;
    loop {
        let (events, last) = client.task_events(seen, None, &everything).unwrap();
        seen = last;
        if events.is_empty() {
            break;
        }
    }
    f.kill_daemon();
    f.start_daemon();
    f.spawn_worker(&["--slots", "1"]);
    let client = f.client();
    let after = client.submit(noop_tasks(1)).unwrap();
    let views = client.results(&after, Some(LONG)).unwrap();
    assert_eq!(views[0].state, TaskState::Completed);
    // Asking on after the last number seen before the restart: the new
    // daemon's events come back (its log is new, its numbers are higher).
    let (events, last) = client
        .task_events(seen, Some(Duration::from_secs(30)), &everything)
        .unwrap();
    assert!(last > seen, "{last} after {seen}");
    let kinds: Vec<(TaskId, &str)> = events.iter().map(|e| (e.task, e.kind.as_str())).collect();
    assert!(kinds.contains(&(after[0], "accepted")), "{kinds:?}");
    assert!(kinds.contains(&(after[0], "finished")), "{kinds:?}");
    // The follower went on through the restart and printed the new task's
    // events too, and every task's end once.
    let new_end = (after[0].0, "finished".to_owned());
    read_until(&mut printed, &|p| p.contains(&new_end));
    assert_eq!(finished(&printed), before.len() + 1, "{printed:?}");
    let _ = follow.kill();
    let _ = follow.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut stderr).unwrap();
    // Whether its poll was in flight when the daemon died is up to timing
    // (one made while the daemon is down waits for the new one); a loss
    // it noticed is followed by the note that the daemon is back.
    assert_eq!(
        stderr.contains("lost the daemon"),
        stderr.contains("the daemon is back"),
        "{stderr}"
    );
}
