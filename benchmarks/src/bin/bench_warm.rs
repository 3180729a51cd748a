//! Warm capacity: how long the first requests wait for a model to load.
//!
//! Two measures on the `digits` servable (scikit-learn SVC), each on a node
//! that has run it before (its Python environment is made, and, where the
//! release has them, its template is up):
//!
//! * **cold start**: a worker just registered, no servable process yet;
//!   one request; time to its answer. Median of `--rounds` fresh workers.
//! * **bursts**: one worker with 2 slots; the first answer, then two
//!   bursts of 640 requests from 64 clients (10 each, one at a time), with
//!   batching on (the servable's `max_batch_size`) and off (1). Per burst:
//!   p50 and max latency. The first burst is where a request could wait
//!   for the second slot's process to load.
//!
//! With `--previous DIR` (a directory holding an earlier release's
//! `flotilla` and `flotilla-worker`) the same runs are made with those
//! binaries too, and both are reported side by side.
//!
//! Usage: `bench-warm [--quick] [--rounds N] [--previous DIR]`; writes
//! `benchmarks/results/warm.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_benchmarks::{inputs, machine, median, results_dir, today, write_result};
use flotilla_client::{Client, json_to_payload};
use flotilla_protocol::Payload;
use flotilla_tests::{Flotilla, config_with, copy_servable, workspace};
use serde_json::{Value, json};

/// Requests of one burst.
const BURST: usize = 640;
/// Clients sending them, each one request at a time.
const CLIENTS: usize = 64;
/// Longest wait for one answer.
const LIMIT: Duration = Duration::from_secs(600);

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-warm: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Command-line options.
struct Options {
    rounds: usize,
    previous: Option<PathBuf>,
    /// Internal: run one side and print its figures as JSON.
    side: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        rounds: 5,
        previous: None,
        side: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.rounds = 2,
            "--rounds" => {
                o.rounds = args
                    .next()
                    .ok_or("--rounds needs a number")?
                    .parse()
                    .map_err(|e| format!("--rounds: {e}"))?;
            }
            "--previous" => {
                o.previous = Some(PathBuf::from(
                    args.next().ok_or("--previous needs a directory")?,
                ))
            }
            "--side" => o.side = Some(args.next().ok_or("--side needs a name")?),
            _ => return Err("usage: bench-warm [--quick] [--rounds N] [--previous DIR]".into()),
        }
    }
    Ok(o)
}

fn run() -> Result<(), String> {
    let o = options()?;
    if let Some(side) = &o.side {
        let figures = measure(side, o.rounds)?;
        println!("{figures}");
        return Ok(());
    }
    let mut sides = vec![("current".to_owned(), None)];
    if let Some(dir) = &o.previous {
        for bin in ["flotilla", "flotilla-worker"] {
            if !dir.join(bin).is_file() {
                return Err(format!("--previous: {} has no {bin}", dir.display()));
            }
        }
        sides.push(("previous".to_owned(), Some(dir.clone())));
    }
    let mut report = serde_json::Map::new();
    for (name, dir) in &sides {
        eprintln!("== {name}");
        let figures = run_side(name, dir.as_deref(), o.rounds)?;
        report.insert(name.clone(), figures);
    }
    print_table(&report);
    let result = json!({
        "figure": "warm",
        "date": today(),
        "machine": machine(),
        "burst": { "requests": BURST, "clients": CLIENTS, "slots": 2 },
        "rounds": o.rounds,
        "sides": report,
    });
    let path = write_result("warm.json", &result).map_err(|e| e.to_string())?;
    eprintln!("wrote {} ({})", path.display(), results_dir().display());
    Ok(())
}

/// Runs one side in a child process (its binaries through
/// `FLOTILLA_BIN_DIR`), and reads its figures.
fn run_side(name: &str, bins: Option<&Path>, rounds: usize) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(["--side", name, "--rounds", &rounds.to_string()]);
    if let Some(dir) = bins {
        cmd.env("FLOTILLA_BIN_DIR", dir);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("the {name} side failed"));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{name}: {e}"))
}

/// A copy of digits to publish: the current release forks its slot
/// processes from a template (`fork = true`); an earlier one does not know
/// that option, so its copy leaves it out.
fn digits_copy(home: &Path, side: &str) -> Result<PathBuf, String> {
    let from = workspace().join("site-examples/servables/digits");
    let to = home.join("digits");
    copy_servable(&from, &to);
    if side == "previous" {
        let spec = to.join("servable.toml");
        let text = std::fs::read_to_string(&spec).map_err(|e| e.to_string())?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("fork ="))
            .collect();
        std::fs::write(&spec, kept.join("\n") + "\n").map_err(|e| e.to_string())?;
    }
    Ok(to)
}

/// Both measures with the binaries of this process's `FLOTILLA_BIN_DIR`.
fn measure(side: &str, rounds: usize) -> Result<Value, String> {
    let images = inputs::digit_images(BURST)?;
    let payloads: Vec<Payload> = images
        .iter()
        .map(|v| json_to_payload(v).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let cold = cold_starts(side, rounds, &payloads[0]);
    let mut bursts = serde_json::Map::new();
    let mut failed = None;
    if cold.is_ok() {
        for (name, batch) in [("batching_on", None), ("batching_off", Some(1))] {
            match burst_run(side, batch, &payloads) {
                Ok(v) => {
                    bursts.insert(name.into(), v);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    // The node's cache of this side (its environment, its template's
    // socket) goes; a template left idle exits within a minute.
    let _ = std::fs::remove_dir_all(node_cache(side));
    let cold = cold?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(json!({ "cold_start_s": cold, "bursts": bursts }))
}

/// A daemon with digits published; workers use `cache` as the node's cache.
fn daemon(side: &str, max_batch: Option<u32>) -> Result<Flotilla, String> {
    let batch = max_batch.map(|n| n.to_string());
    let mut settings = vec![
        ("interchange", "heartbeat_period_s", "5"),
        ("interchange", "heartbeat_threshold_s", "20"),
    ];
    if let Some(n) = &batch {
        settings.push(("servables.digits", "max_batch_size", n.as_str()));
    }
    let f = Flotilla::start(&config_with(&settings));
    let dir = digits_copy(f.home(), side)?;
    f.publish(&dir)?;
    Ok(f)
}

/// The node's cache for `side` (the same across this side's daemons, so
/// the node "has run digits before").
fn node_cache(side: &str) -> PathBuf {
    std::env::temp_dir().join(format!("flotilla-bench-warm-{side}-{}", std::process::id()))
}

/// The workers' environment: templates live a minute after their last
/// use (600 s by default), long enough for every measure of one side; the
/// servables import this checkout's shim (`clients/python`), whatever
/// release of it the Python environment holds.
fn worker_env() -> [(&'static str, std::ffi::OsString); 2] {
    [
        ("FLOTILLA_TEMPLATE_IDLE_S", "60".into()),
        (
            "PYTHONPATH",
            workspace().join("clients/python").into_os_string(),
        ),
    ]
}

/// `x` to the millisecond (seconds) or the microsecond (milliseconds).
fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn run_digits(client: &Client, input: &Payload) -> Result<Duration, String> {
    let t = Instant::now();
    let view = client
        .run("digits", input.clone(), Some(LIMIT))
        .map_err(|e| e.to_string())?;
    if view.state != flotilla_protocol::task::TaskState::Completed {
        return Err(format!("digits ended {} ({:?})", view.state, view.outcome));
    }
    Ok(t.elapsed())
}

/// Median seconds from one request to its answer on a fresh worker, after
/// a first worker has run digits on the node.
fn cold_starts(side: &str, rounds: usize, input: &Payload) -> Result<Value, String> {
    let mut f = daemon(side, None)?;
    let cache = node_cache(side).display().to_string();
    let args = ["--slots", "1", "--cache-dir", cache.as_str()];
    let client = f.client();
    // The node runs digits once: its environment is made (and its
    // template, where the release has them).
    let pid = f.spawn_worker_env(&args, &worker_env());
    f.wait_workers(1);
    let first = run_digits(&client, input)?;
    f.kill_worker(pid);
    f.wait_workers(0);
    if side == "current" {
        let templates = node_cache(side).join("templates");
        flotilla_tests::wait_until(LIMIT, "the node's template of digits", || {
            let socket = std::fs::read_dir(&templates)
                .ok()?
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "sock"));
            socket.then_some(())
        });
    }
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let pid = f.spawn_worker_env(&args, &worker_env());
        f.wait_workers(1);
        samples.push(run_digits(&client, input)?.as_secs_f64());
        f.kill_worker(pid);
        f.wait_workers(0);
    }
    eprintln!(
        "{side}: first run on the node {:.3} s; cold start median {:.3} s over {rounds}",
        first.as_secs_f64(),
        median(&samples)
    );
    Ok(json!({
        "first_on_node_s": round(first.as_secs_f64()),
        "median_s": round(median(&samples)),
        "samples_s": samples.iter().map(|s| round(*s)).collect::<Vec<_>>(),
    }))
}

/// The first answer, then two bursts, on a fresh worker of 2 slots.
fn burst_run(side: &str, max_batch: Option<u32>, payloads: &[Payload]) -> Result<Value, String> {
    let mut f = daemon(side, max_batch)?;
    let cache = node_cache(side).display().to_string();
    f.spawn_worker_env(
        &["--slots", "2", "--cache-dir", cache.as_str()],
        &worker_env(),
    );
    f.wait_workers(1);
    let client = f.client();
    let first = run_digits(&client, &payloads[0])?;
    let mut bursts = Vec::new();
    for _ in 0..2 {
        bursts.push(Burst::of(burst(&f, payloads)?));
    }
    let ratio = bursts[0].max_ms / bursts[1].max_ms.max(1e-9);
    eprintln!(
        "{side}, max_batch {max_batch:?}: first answer {:.3} s; burst 1 p50 {:.1} ms max {:.1} ms; burst 2 p50 {:.1} ms max {:.1} ms; max ratio {ratio:.2}",
        first.as_secs_f64(),
        bursts[0].p50_ms,
        bursts[0].max_ms,
        bursts[1].p50_ms,
        bursts[1].max_ms,
    );
    Ok(json!({
        "first_answer_s": round(first.as_secs_f64()),
        "first_burst": bursts[0].json(),
        "second_burst": bursts[1].json(),
        "max_ratio": round(ratio),
    }))
}

/// The latencies of one burst.
struct Burst {
    p50_ms: f64,
    max_ms: f64,
}

impl Burst {
    fn of(mut samples: Vec<Duration>) -> Burst {
        samples.sort();
        let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        Burst {
            p50_ms: ms(samples.get(samples.len() / 2)),
            max_ms: ms(samples.last()),
        }
    }

    fn json(&self) -> Value {
        json!({ "p50_ms": round(self.p50_ms), "max_ms": round(self.max_ms) })
    }
}

/// One burst: [`CLIENTS`] clients, [`BURST`] requests, one at a time each.
fn burst(f: &Flotilla, payloads: &[Payload]) -> Result<Vec<Duration>, String> {
    let per_client = BURST / CLIENTS;
    let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let client = f.client();
                s.spawn(move || {
                    (0..per_client)
                        .map(|i| {
                            run_digits(&client, &payloads[(c * per_client + i) % payloads.len()])
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a client panicked".into())))
            .collect()
    });
    let mut all = Vec::with_capacity(BURST);
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

fn print_table(report: &serde_json::Map<String, Value>) {
    println!(
        "| measure | {} |",
        report.keys().cloned().collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(report.len()));
    let row = |label: &str, get: &dyn Fn(&Value) -> Option<f64>, unit: &str, scale: f64| {
        let cells: Vec<String> = report
            .values()
            .map(|v| get(v).map_or("–".into(), |x| format!("{:.3} {unit}", x * scale)))
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row(
        "digits cold start to first answer (node has run it)",
        &|v| v["cold_start_s"]["median_s"].as_f64(),
        "s",
        1.0,
    );
    for mode in ["batching_on", "batching_off"] {
        for (burst, name) in [("first_burst", "burst 1"), ("second_burst", "burst 2")] {
            for (stat, key) in [("p50", "p50_ms"), ("max", "max_ms")] {
                row(
                    &format!("{mode}: {name} {stat}"),
                    &|v| v["bursts"][mode][burst][key].as_f64(),
                    "ms",
                    1.0,
                );
            }
        }
        row(
            &format!("{mode}: burst 1 max ÷ burst 2 max"),
            &|v| v["bursts"][mode]["max_ratio"].as_f64(),
            "",
            1.0,
        );
    }
}
