//! The DLHub paper's Fig. 6: how completion time and throughput scale with
//! the number of workers.
//!
//! Two parts, each against a fresh release daemon on loopback:
//!
//! 1. **Real workers.** 1, 2, 4, 8 `flotilla-worker` processes with one slot
//!    each; N requests submitted in one bulk submit and timed from the submit
//!    until every result is back at the client, for the builtin `sleep` (0.01
//!    s per request: work-bound, ideally N × 0.01 s / workers) and the
//!    builtin `noop` (overhead-bound). Every request is its own dispatch
//!    (`max_batch_size = 1`) and memoization is off.
//! 2. **Simulated workers.** This process opens M worker connections to the
//!    daemon's interchange (M = 1 … 10,000), each speaking the real worker
//!    protocol and answering every batch at once (see
//!    [`flotilla_benchmarks::simworkers`]), then submits T `noop` tasks with
//!    `max_batch_size = 1` (one dispatch per task) and measures tasks/s from
//!    the submit until every result is back, plus the time for all M
//!    workers to register and the CPU time the daemon and this process spent
//!    (per thread name), which shows who is the bottleneck.
//!
//! Usage: `bench-scaling [--quick]` (`--quick`: 1, 2, 4 workers with 200
//! requests; M = 1, 100, 1000 with 10,000 tasks; under a minute). Writes
//! `benchmarks/results/scaling.{json,png}`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_benchmarks::plot::{Panel, Series, log_log_panels};
use flotilla_benchmarks::simworkers::{SimConfig, SimWorkers};
use flotilla_benchmarks::{machine, median, results_dir, round, write_result};
use flotilla_client::{Client, json_to_payload};
use flotilla_engine::state_dir::StateDir;
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::launch::LOG_ENV;
use flotilla_protocol::paths;
use flotilla_protocol::task::TaskState;
use flotilla_tests::{Flotilla, config_with, sleep_tasks};
use plotters::chart::SeriesLabelPosition;
use serde_json::{Value, json};

/// File descriptors kept free of the simulated connections (store files,
/// sockets of the client and of nng itself, the log).
const FD_RESERVE: u64 = 256;

/// Simulated workers connecting at once (below nng's listen backlog of 128).
const REGISTER_WINDOW: usize = 100;

/// Seconds each `sleep` request takes.
const SLEEP_S: f64 = 0.01;

/// How long any one bulk run may take before it counts as hung.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// What to run.
struct Options {
    quick: bool,
    real_workers: Vec<usize>,
    requests: usize,
    noop_repeat: usize,
    sim_workers: Vec<usize>,
    sim_tasks: usize,
    sim_repeat: usize,
}

fn options() -> anyhow::Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = match args.as_slice() {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => bail!("usage: bench-scaling [--quick]"),
    };
    Ok(if quick {
        Options {
            quick,
            real_workers: vec![1, 2, 4],
            requests: 200,
            noop_repeat: 3,
            sim_workers: vec![1, 100, 1000],
            sim_tasks: 10_000,
            sim_repeat: 1,
        }
    } else {
        Options {
            quick,
            real_workers: vec![1, 2, 4, 8],
            requests: 1000,
            noop_repeat: 3,
            sim_workers: vec![1, 10, 100, 1000, 10_000],
            sim_tasks: 50_000,
            sim_repeat: 3,
        }
    })
}

/// Raises this process's open-file limit to its hard limit (the daemon,
/// started later as a child, inherits it); returns the new soft limit.
fn raise_nofile() -> anyhow::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open-file limit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .with_context(|| format!("cannot raise the open-file limit from {soft} to {hard}"))?;
        tracing::info!(from = soft, to = hard, "raised the open-file limit");
    }
    Ok(hard)
}

/// Settings shared by both parts: no blocks (the benchmark brings its own
/// workers), heartbeats rare enough not to load the daemon at 10,000
/// workers, memoization off and one task per dispatch.
fn site() -> String {
    config_with(&[
        ("interchange", "heartbeat_period_s", "5"),
        ("interchange", "heartbeat_threshold_s", "30"),
        ("servables.noop", "memoize", "false"),
        ("servables.noop", "max_batch_size", "1"),
        ("servables.noop", "max_batch_delay_ms", "0"),
        ("servables.sleep", "memoize", "false"),
        ("servables.sleep", "max_batch_size", "1"),
        ("servables.sleep", "max_batch_delay_ms", "0"),
    ])
}

/// `n` `noop` requests whose inputs are `first`, `first + 1`, … (distinct,
/// so even a memo store left on could not answer them).
fn noop_requests(first: usize, n: usize) -> anyhow::Result<Vec<TaskRequest>> {
    (first..first + n)
        .map(|i| {
            Ok(TaskRequest {
                servable: "noop".into(),
                input: json_to_payload(&json!(i)).context("cannot encode an input")?,
                params: Payload::new(),
            })
        })
        .collect()
}

/// One bulk run: submits `tasks` in one request and waits for all results.
struct Bulk {
    /// From the submit until the last result is back.
    elapsed: Duration,
    /// Until the submit was accepted (durable).
    accepted: Duration,
    /// Distinct workers that ran the tasks.
    workers_used: usize,
}

fn bulk(client: &Client, tasks: Vec<TaskRequest>) -> anyhow::Result<Bulk> {
    let n = tasks.len();
    let t = Instant::now();
    let ids = client.submit(tasks).context("submit")?;
    let accepted = t.elapsed();
    let views = client
        .results(&ids, Some(RUN_LIMIT))
        .context("waiting for the results")?;
    let elapsed = t.elapsed();
    let done = views
        .iter()
        .filter(|v| v.state == TaskState::Completed)
        .count();
    if done != n {
        let bad = views.iter().find(|v| v.state != TaskState::Completed);
        bail!(
            "only {done} of {n} tasks completed (first other: {:?})",
            bad.map(|v| (v.id, v.state, &v.outcome))
        );
    }
    let workers_used = views
        .iter()
        .filter_map(|v| v.worker.as_deref())
        .collect::<BTreeSet<_>>()
        .len();
    Ok(Bulk {
        elapsed,
        accepted,
        workers_used,
    })
}

/// Rounds to 4 decimals.
fn r4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Part 1 at `workers` real workers.
fn real_point(o: &Options, workers: usize) -> anyhow::Result<Value> {
    let mut f = Flotilla::start(&site());
    for _ in 0..workers {
        f.spawn_worker(&["--slots", "1"]);
    }
    f.wait_workers(workers);
    let client = f.client();
    bulk(&client, noop_requests(0, 50)?).context("warm-up")?;

    let sleep = bulk(&client, sleep_tasks(o.requests, SLEEP_S)).context("sleep run")?;
    let ideal = o.requests as f64 * SLEEP_S / workers as f64;
    let mut noop = Vec::new();
    let mut noop_used = 0;
    for rep in 0..o.noop_repeat {
        let run = bulk(&client, noop_requests(1000 + rep * o.requests, o.requests)?)
            .context("noop run")?;
        noop.push(run.elapsed.as_secs_f64());
        noop_used = noop_used.max(run.workers_used);
    }
    let noop_s = median(&noop);
    let sleep_s = sleep.elapsed.as_secs_f64();
    println!(
        "  {workers:>2} workers: sleep {sleep_s:>7.3} s (ideal {ideal:>6.3} s, efficiency {:>5.1}%, {} workers used)   noop {:>7.4} s ({:>7.0} tasks/s)",
        ideal / sleep_s * 100.0,
        sleep.workers_used,
        noop_s,
        o.requests as f64 / noop_s
    );
    Ok(json!({
        "workers": workers,
        "sleep_s": r4(sleep_s),
        "sleep_ideal_s": r4(ideal),
        "sleep_efficiency": r4(ideal / sleep_s),
        "sleep_accept_ms": round(sleep.accepted.as_secs_f64() * 1e3),
        "sleep_workers_used": sleep.workers_used,
        "noop_runs_s": noop.iter().map(|s| r4(*s)).collect::<Vec<_>>(),
        "noop_median_s": r4(noop_s),
        "noop_tasks_per_s": (o.requests as f64 / noop_s).round(),
        "noop_workers_used": noop_used,
    }))
}

/// CPU seconds per thread name (digits stripped, so `nng:task3` and
/// `nng:task7` add up) of process `pid`, from `/proc`.
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name: String = stat[open + 1..close]
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_')
            .to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3 of stat(5), utime 14, stime 15.
        let cpu = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<f64>().ok()))
            .sum::<f64>()
            / ticks;
        *out.entry(name).or_insert(0.0) += cpu;
    }
    out
}

/// `after - before` per thread name, largest first, with the total.
fn cpu_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> (f64, Vec<(String, f64)>) {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    (rows.iter().map(|r| r.1).sum(), rows)
}

/// Opens `m` simulated worker connections to `f`'s daemon with its secret.
fn connect_sim_workers(f: &Flotilla, m: usize) -> anyhow::Result<SimWorkers> {
    let info = StateDir::at(f.home())
        .read_info()
        .context("cannot read the daemon's contact file")?;
    let secret_path = paths::secret_file(f.home());
    let secret = std::fs::read(&secret_path)
        .with_context(|| format!("{}: cannot read the secret", secret_path.display()))?;
    let url = format!(
        "tcp://{}:{}",
        info.interchange_address, info.interchange_port
    );
    SimWorkers::connect(&SimConfig {
        url,
        secret,
        count: m,
        reply_timeout: Duration::from_secs(60),
        id_prefix: format!("sim{m}"),
        window: REGISTER_WINDOW,
        register_limit: Duration::from_secs(300),
    })
}

/// Waits until the daemon's status lists `m` workers.
fn wait_listed(client: &Client, m: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = client.status().context("status")?.workers.len();
        if seen == m {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the daemon lists {seen} workers, not {m}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One timed run of `tasks` on `m` simulated workers: its rate and the CPU
/// the daemon (`daemon`) and this process spent, thread by thread.
fn sim_run(
    client: &Client,
    sim: &SimWorkers,
    m: usize,
    daemon: u32,
    tasks: Vec<TaskRequest>,
) -> anyhow::Result<Value> {
    let me = std::process::id();
    let count = tasks.len();
    let before = (thread_cpu(daemon), thread_cpu(me), sim.stats());
    let run = bulk(client, tasks).with_context(|| format!("{m} simulated workers"))?;
    let after = (thread_cpu(daemon), thread_cpu(me), sim.stats());
    let secs = run.elapsed.as_secs_f64();
    let (daemon_cpu, daemon_threads) = cpu_delta(&before.0, &after.0);
    let (bench_cpu, bench_threads) = cpu_delta(&before.1, &after.1);
    let rate = count as f64 / secs;
    println!(
        "  M = {m:>5}: {rate:>8.0} tasks/s ({secs:.3} s; {} workers used; CPU: daemon {:.0}%, simulator+client {:.0}%)",
        run.workers_used,
        daemon_cpu / secs * 100.0,
        bench_cpu / secs * 100.0
    );
    let threads = |rows: &[(String, f64)]| -> Value {
        rows.iter()
            .take(6)
            .map(|(k, v)| (k.clone(), json!(r4(*v))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    Ok(json!({
        "elapsed_s": r4(secs),
        "tasks_per_s": rate.round(),
        "accept_ms": round(run.accepted.as_secs_f64() * 1e3),
        "workers_used": run.workers_used,
        "daemon_cpu_s": r4(daemon_cpu),
        "daemon_cpu_share": r4(daemon_cpu / secs),
        "daemon_cpu_by_thread_s": threads(&daemon_threads),
        "bench_cpu_s": r4(bench_cpu),
        "bench_cpu_share": r4(bench_cpu / secs),
        "bench_cpu_by_thread_s": threads(&bench_threads),
        "tasks_answered": after.2.tasks - before.2.tasks,
        "heartbeats": after.2.heartbeats - before.2.heartbeats,
    }))
}

/// Part 2 at `m` simulated workers.
fn sim_point(o: &Options, m: usize) -> anyhow::Result<Value> {
    let f = Flotilla::start(&site());
    let sim = connect_sim_workers(&f, m)?;
    let dial = sim.dial_time();
    let registered = sim.wait_registered(Duration::from_secs(300))?;
    let client = f.client();
    wait_listed(&client, m)?;
    tracing::info!(
        workers = m,
        dial_s = dial.as_secs_f64(),
        registered_s = registered.as_secs_f64(),
        "simulated workers registered"
    );
    let warm = (o.sim_tasks / 10).max(m.min(o.sim_tasks));
    bulk(&client, noop_requests(0, warm)?).context("warm-up")?;

    let daemon = f.daemon_pid();
    let mut runs = Vec::new();
    for rep in 0..o.sim_repeat {
        let tasks = noop_requests(warm + rep * o.sim_tasks, o.sim_tasks)?;
        runs.push(sim_run(&client, &sim, m, daemon, tasks)?);
    }
    let stats = sim.stats();
    if stats.failed > 0 {
        bail!(
            "{} simulated workers failed: {}",
            stats.failed,
            stats.errors.join("; ")
        );
    }
    let rates: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["tasks_per_s"].as_f64())
        .collect();
    let best = runs
        .iter()
        .max_by(|a, b| {
            a["tasks_per_s"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["tasks_per_s"].as_f64().unwrap_or(0.0))
        })
        .cloned()
        .unwrap_or(Value::Null);
    drop(client);
    drop(sim);
    drop(f);
    Ok(json!({
        "workers": m,
        "dial_s": r4(dial.as_secs_f64()),
        "register_s": r4(registered.as_secs_f64()),
        "registrations_per_s": (m as f64 / registered.as_secs_f64().max(1e-6)).round(),
        "tasks": o.sim_tasks,
        "median_tasks_per_s": median(&rates).round(),
        "best_tasks_per_s": rates.iter().copied().fold(0.0f64, f64::max).round(),
        "best_run": best,
        "runs": runs,
        "reregistered": stats.reregistered,
        "shutdowns": stats.shutdowns,
    }))
}

/// The best throughput (median of a point's runs), and the M from which it
/// stops growing: the first M that no larger M beats by more than 10%.
fn ceiling(points: &[Value]) -> Value {
    let rated: Vec<(u64, f64)> = points
        .iter()
        .filter_map(|p| Some((p["workers"].as_u64()?, p["median_tasks_per_s"].as_f64()?)))
        .collect();
    let Some(best) = rated.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)) else {
        return Value::Null;
    };
    let plateau = rated
        .iter()
        .enumerate()
        .find(|(i, (_, rate))| rated[i + 1..].iter().all(|(_, r)| *r <= rate * 1.1))
        .map(|(_, (m, _))| *m);
    let last = rated.last().copied();
    json!({
        "tasks_per_s": best.1.round(),
        "at_workers": best.0,
        "stops_growing_at_workers": plateau,
        "largest_workers": last.map(|l| l.0),
        "largest_workers_tasks_per_s": last.map(|l| l.1.round()),
        "largest_over_best": last.map(|l| r4(l.1 / best.1)),
    })
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-scaling: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(LOG_ENV)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let o = options()?;
    let nofile = raise_nofile()?;
    let started = Instant::now();

    println!(
        "scaling (Fig. 6), part 1: {} requests in one submit, real workers with 1 slot each, memo off, 1 request per dispatch",
        o.requests
    );
    let mut real = Vec::new();
    for &w in &o.real_workers {
        real.push(real_point(&o, w).with_context(|| format!("{w} real workers"))?);
    }

    println!(
        "scaling (Fig. 6), part 2: {} noop tasks in one submit, simulated workers (1 slot, answer at once), 1 task per dispatch",
        o.sim_tasks
    );
    let fits = nofile.saturating_sub(FD_RESERVE);
    let mut sim = Vec::new();
    let mut skipped = Vec::new();
    let mut failure = None;
    for &m in &o.sim_workers {
        if m as u64 > fits {
            let why = format!(
                "{m} connections need more open files than the hard limit of {nofile} allows ({FD_RESERVE} kept for the rest)"
            );
            tracing::warn!("{why}; stopping at the largest M that fits");
            skipped.push(json!({ "workers": m, "reason": why }));
            continue;
        }
        match sim_point(&o, m) {
            Ok(point) => sim.push(point),
            Err(e) => {
                let why = format!("{e:#}");
                tracing::error!(workers = m, error = %why, "simulated run failed");
                println!("  M = {m:>5}: FAILED: {why}");
                failure = Some(json!({ "workers": m, "error": why }));
                break;
            }
        }
    }
    let top = ceiling(&sim);
    if !top.is_null() {
        let num = |key: &str| top[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "  ceiling: {:.0} tasks/s at M = {} (no larger M does 10% better from M = {}); at M = {}: {:.0} tasks/s, {:.0}% of the ceiling",
            num("tasks_per_s"),
            top["at_workers"],
            top["stops_growing_at_workers"],
            top["largest_workers"],
            num("largest_workers_tasks_per_s"),
            num("largest_over_best") * 100.0
        );
    }

    let path = write_result(
        "scaling.json",
        &json!({
            "benchmark": "scaling",
            "figure": "DLHub paper, Fig. 6",
            "machine": machine(),
            "date": flotilla_benchmarks::utc_timestamp(),
            "mode": if o.quick { "quick" } else { "full" },
            "duration_s": round(started.elapsed().as_secs_f64()),
            "setup": "release build; fresh daemon per point (durable sled queue, no blocks); loopback TCP; memo off; max_batch_size 1 and no batching delay for noop and sleep; heartbeat period 5 s, threshold 30 s",
            "real_workers": {
                "what": "completion time of N requests submitted in one bulk submit, from the submit until every result is back, against the number of flotilla-worker processes (1 slot each)",
                "requests": o.requests,
                "sleep_s_per_request": SLEEP_S,
                "noop_repeats": o.noop_repeat,
                "points": real,
            },
            "simulated_workers": {
                "what": "tasks/s of T noop tasks (one dispatch each) submitted in one bulk submit against M simulated workers (one REQ socket and TCP connection each, real protocol, nng async callbacks, results on the next long-poll); register_s: first dial to last Welcome, at most register_window connections waiting for their Welcome at any time; dial_s: first dial to last dial started; median and best over the repeats, CPU shares per run from /proc (1.0 = one core)",
                "register_window": REGISTER_WINDOW,
                "tasks": o.sim_tasks,
                "repeats": o.sim_repeat,
                "open_file_limit": nofile,
                "points": sim,
                "skipped": skipped,
                "failure": failure,
                "ceiling": top,
            },
        }),
    )
    .context("cannot write the results")?;
    plot(&real, &sim, &o)?;
    println!("results: {}", path.display());
    Ok(())
}

fn plot(real: &[Value], sim: &[Value], o: &Options) -> anyhow::Result<()> {
    let series = |points: &[Value], x: &str, y: &str| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter_map(|p| Some((p[x].as_f64()?, p[y].as_f64()?)))
            .collect()
    };
    let left = Panel {
        title: format!("{} requests, real workers (1 slot each)", o.requests),
        x_label: "workers".into(),
        y_label: "completion time (s)".into(),
        series: vec![
            Series {
                name: format!("sleep {SLEEP_S} s"),
                points: series(real, "workers", "sleep_s"),
            },
            Series {
                name: "noop".into(),
                points: series(real, "workers", "noop_median_s"),
            },
        ],
        reference: vec![Series {
            name: "sleep, ideal".into(),
            points: series(real, "workers", "sleep_ideal_s"),
        }],
        legend: SeriesLabelPosition::UpperRight,
    };
    let right = Panel {
        title: format!("{} noop tasks, simulated workers", o.sim_tasks),
        x_label: "simulated workers".into(),
        y_label: "tasks/s".into(),
        series: vec![Series {
            name: "noop, 1 task per dispatch".into(),
            points: series(sim, "workers", "median_tasks_per_s"),
        }],
        reference: Vec::new(),
        legend: SeriesLabelPosition::LowerMiddle,
    };
    let path = results_dir().join("scaling.png");
    log_log_panels(
        &path,
        "Scaling with the number of workers (DLHub Fig. 6)",
        &[left, right],
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
