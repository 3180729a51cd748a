//! `flotilla demo`: a tour on a machine with nothing configured.
//!
//! Starts a daemon with the embedded local configuration in a temporary state
//! directory, waits for its workers, runs synchronous, asynchronous and
//! bulk requests against the builtin servables, prints what happened with
//! timings, and shuts everything down again.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use flotilla_client::{Client, json_to_payload};
use flotilla_engine::state_dir::StateDir;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{NIL, TaskState};
use flotilla_protocol::{Payload, TaskId};
use serde_json::json;

use crate::Failure;
use crate::daemon_cmd::{Spawn, spawn_daemon, stop};
use crate::output::output_text;

const SYNC_RUNS: usize = 200;
const BULK_TASKS: usize = 10_000;

/// Runs the demo; any failure stops the daemon before returning.
pub fn run() -> Result<(), Failure> {
    let tmp = tempfile::Builder::new()
        .prefix("flotilla-demo-")
        .tempdir()
        .context("cannot make a temporary state directory")?;
    let dir = StateDir::at(tmp.path());
    let log = tmp.path().join("daemon.log");
    println!(
        "Flotilla demo: a daemon with the local provider, state in {}",
        tmp.path().display()
    );
    let started = Instant::now();
    let spawn = Spawn {
        limit: Duration::from_secs(30),
        new_session: false,
        log_format: None,
    };
    let pid = spawn_daemon(None, &dir, &log, spawn)?;
    println!(
        "  daemon started (pid {pid}) in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let result = tour(&dir);
    let stopped = stop(dir.root(), Duration::from_secs(60));
    if result.is_err() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        eprintln!("daemon log ({}):\n{tail}", log.display());
    }
    result?;
    stopped?;
    println!(
        "\ndaemon stopped; demo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every step of the demo against the daemon of `dir`.
fn tour(dir: &StateDir) -> Result<(), Failure> {
    let client = Client::connect(dir.root()).map_err(Failure::from_client)?;
    let slots = wait_for_worker(&client, Duration::from_secs(30))?;
    println!("  workers connected: {slots} slots (one local block)");
    synchronous_runs(&client)?;
    submit_then_fetch(&client, slots)?;
    bulk_submit(&client)?;

    println!("\n4. A published model: digits (scikit-learn), run as a warm Python process");
    digits(&client, dir)?;

    let status = client.status().map_err(Failure::from_client)?;
    let t = status.totals;
    println!(
        "\n5. Daemon status: {} worker(s), {} tasks accepted, {} completed, {} failed",
        status.workers.len(),
        t.accepted,
        t.completed,
        t.failed
    );
    Ok(())
}

/// Step 1: `run` round trips, with their latency.
fn synchronous_runs(client: &Client) -> Result<(), Failure> {
    println!("\n1. Synchronous runs (flotilla run): one round trip each");
    let view = client
        .run(
            "echo",
            json_to_payload(&json!({"hello": "flotilla"}))?,
            Some(Duration::from_secs(30)),
        )
        .map_err(Failure::from_client)?;
    println!(
        "  echo {{\"hello\": \"flotilla\"}} -> {}",
        output_text(&view).unwrap_or_default()
    );
    let mut latencies = Vec::with_capacity(SYNC_RUNS);
    for _ in 0..SYNC_RUNS {
        let t = Instant::now();
        let v = client
            .run(
                "noop",
                Payload::from_static(NIL),
                Some(Duration::from_secs(30)),
            )
            .map_err(Failure::from_client)?;
        if v.state != TaskState::Completed {
            return Err(Failure::Other(anyhow!(
                "noop task {} ended {}",
                v.id,
                v.state
            )));
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
    };
    println!(
        "  {SYNC_RUNS} × noop: p50 {:.3} ms, p99 {:.3} ms (client → daemon → worker → client)",
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// Step 2: tasks submitted together share the `slots`; a bad input fails
/// only its own task.
fn submit_then_fetch(client: &Client, slots: u32) -> Result<(), Failure> {
    println!("\n2. Asynchronous submit, then fetch (flotilla submit / flotilla result)");
    let t = Instant::now();
    let ids = client
        .submit(
            [0.2, 0.3, 0.1]
                .iter()
                .map(|s| task("sleep", json!(s)))
                .collect::<Result<_, _>>()?,
        )
        .map_err(Failure::from_client)?;
    println!(
        "  submitted 3 sleep tasks (0.2 s, 0.3 s, 0.1 s): ids {} in {:.2} ms",
        ids.iter()
            .map(TaskId::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        t.elapsed().as_secs_f64() * 1e3
    );
    let views = client
        .results(&ids, Some(Duration::from_secs(30)))
        .map_err(Failure::from_client)?;
    for v in &views {
        println!(
            "  task {} {} on {} after {:.0} ms",
            v.id,
            v.state,
            v.worker.as_deref().unwrap_or("-"),
            (v.timings.finished_us.saturating_sub(v.timings.submitted_us)) as f64 / 1e3
        );
    }
    println!(
        "  all three done {:.0} ms after submission, sharing the block's {slots} slots",
        t.elapsed().as_secs_f64() * 1e3
    );
    let bad = client
        .run(
            "sleep",
            json_to_payload(&json!("soon"))?,
            Some(Duration::from_secs(30)),
        )
        .map_err(Failure::from_client)?;
    if bad.state != TaskState::Failed {
        return Err(Failure::Other(anyhow!(
            "a sleep with a bad input ended {}",
            bad.state
        )));
    }
    if let Some(flotilla_protocol::task::Outcome::Error(e)) = &bad.outcome {
        println!("  a bad input fails only its own task: sleep \"soon\" -> failed: {e}");
    }
    Ok(())
}

/// Step 3: many tasks in one request.
fn bulk_submit(client: &Client) -> Result<(), Failure> {
    println!("\n3. Bulk submit (flotilla submit --batch): {BULK_TASKS} noop tasks in one request");
    let t = Instant::now();
    let ids = client
        .submit(
            (0..BULK_TASKS)
                .map(|_| task("noop", json!(null)))
                .collect::<Result<_, _>>()?,
        )
        .map_err(Failure::from_client)?;
    let accepted = t.elapsed();
    let views = client
        .results(&ids, Some(Duration::from_secs(120)))
        .map_err(Failure::from_client)?;
    let done = t.elapsed();
    let completed = views
        .iter()
        .filter(|v| v.state == TaskState::Completed)
        .count();
    if completed != BULK_TASKS {
        return Err(Failure::Other(anyhow!(
            "only {completed} of {BULK_TASKS} bulk tasks completed"
        )));
    }
    println!(
        "  accepted and durable in {:.1} ms; all {completed} completed in {:.1} ms: {:.0} tasks/s",
        accepted.as_secs_f64() * 1e3,
        done.as_secs_f64() * 1e3,
        BULK_TASKS as f64 / done.as_secs_f64()
    );
    Ok(())
}

/// The digits servable's files, embedded so the demo runs from anywhere.
const DIGITS_FILES: &[(&str, &str)] = &[
    (
        "servable.toml",
        include_str!("../../site-examples/servables/digits/servable.toml"),
    ),
    (
        "serve.py",
        include_str!("../../site-examples/servables/digits/serve.py"),
    ),
    (
        "train.py",
        include_str!("../../site-examples/servables/digits/train.py"),
    ),
];

/// `text` (a `servable.toml`) without its `[environment]` table.
fn without_environment(text: &str) -> String {
    let mut inside = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let header = line.trim_start().starts_with('[');
        if header {
            inside = line.trim() == "[environment]";
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

const PYTHON_CHECK: &str = "import flotilla_servable, msgpack, numpy, sklearn";

/// Publishes and runs `digits` when Python with scikit-learn is here.
fn digits(client: &Client, dir: &StateDir) -> Result<(), Failure> {
    let check = std::process::Command::new("python3")
        .args(["-c", PYTHON_CHECK])
        .output();
    let missing = match check {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .to_owned(),
        ),
        Err(e) => Some(format!("no python3: {e}")),
    };
    if let Some(why) = missing {
        println!(
            "  skipped: this machine has no Python 3 with scikit-learn, numpy, msgpack and the\n  flotilla_servable shim on PATH ({why}).\n  ./scripts/demo.sh sets one up in .venv."
        );
        return Ok(());
    }
    let src = dir.root().join("servables").join("digits");
    std::fs::create_dir_all(&src).context("cannot write the digits servable")?;
    for (name, text) in DIGITS_FILES {
        // The demo runs on this machine's Python, checked above: no
        // environment to capture or prepare.
        let text = if *name == "servable.toml" {
            without_environment(text)
        } else {
            (*text).to_owned()
        };
        std::fs::write(src.join(name), text).context("cannot write the digits servable")?;
    }
    let t = Instant::now();
    let (id, _, bytes) =
        crate::servable_cmd::publish(client, &src, true, &crate::args::AccessArgs::default())?;
    println!(
        "  trained and published {id} ({bytes} bytes of files) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json; from sklearn import datasets; d = datasets.load_digits(); \
             print(json.dumps([d.images[:64].tolist(), d.target[:64].tolist()]))",
        ])
        .output()
        .context("cannot read the digits dataset")?;
    let data: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("cannot read the digits dataset")?;
    let images: Vec<serde_json::Value> = data[0].as_array().cloned().unwrap_or_default();
    let labels: Vec<serde_json::Value> = data[1].as_array().cloned().unwrap_or_default();
    if images.len() != 64 || labels.len() != 64 {
        return Err(Failure::Other(anyhow!(
            "the digits dataset came back incomplete"
        )));
    }
    let wait = Some(Duration::from_secs(120));
    let t = Instant::now();
    let first = client
        .run("digits", json_to_payload(&images[0])?, wait)
        .map_err(Failure::from_client)?;
    println!(
        "  first call (starts the Python process, loads the model): {:.0} ms -> {}",
        t.elapsed().as_secs_f64() * 1e3,
        output_text(&first).unwrap_or_else(|| first.state.to_string())
    );
    let mut one = Vec::new();
    for image in images.iter().take(32) {
        let t = Instant::now();
        client
            .run("digits", json_to_payload(image)?, wait)
            .map_err(Failure::from_client)?;
        one.push(t.elapsed());
    }
    one.sort();
    let per_one = one[one.len() / 2].as_secs_f64() * 1e3;
    let tasks = images
        .iter()
        .map(|i| task("digits", i.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let t = Instant::now();
    let ids = client.submit(tasks).map_err(Failure::from_client)?;
    let views = client.results(&ids, wait).map_err(Failure::from_client)?;
    let per_batched = t.elapsed().as_secs_f64() * 1e3 / 64.0;
    let right = views
        .iter()
        .zip(&labels)
        .filter(|(v, label)| output_text(v).as_deref() == Some(label.to_string().as_str()))
        .count();
    println!("  one request at a time: {per_one:.2} ms per request (p50 of 32 synchronous runs)");
    println!(
        "  64 requests at once, batched into one model call: {per_batched:.2} ms per request; {right}/64 classified right"
    );
    Ok(())
}

fn task(servable: &str, input: serde_json::Value) -> anyhow::Result<TaskRequest> {
    Ok(TaskRequest {
        servable: servable.into(),
        input: json_to_payload(&input)?,
        params: Payload::new(),
    })
}

fn wait_for_worker(client: &Client, limit: Duration) -> Result<u32, Failure> {
    let deadline = Instant::now() + limit;
    loop {
        let status = client.status().map_err(Failure::from_client)?;
        if let Some(w) = status.workers.first() {
            return Ok(w.slots);
        }
        if Instant::now() > deadline {
            let why = status
                .blocks
                .iter()
                .filter_map(|b| b.message.clone())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Failure::Other(anyhow!(
                "no worker connected within {limit:?} (is flotilla-worker built next to flotilla?) {why}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_drops_only_the_environment_table() {
        let text = "name = \"d\"\n\n[environment]\npackages = [\"numpy\"]\n\n[build]\ncommand = \"python3\"\n";
        assert_eq!(
            without_environment(text),
            "name = \"d\"\n\n[build]\ncommand = \"python3\"\n"
        );
        let digits = without_environment(DIGITS_FILES[0].1);
        assert!(!digits.contains("[environment]") && digits.contains("[build]"));
    }
}
