//! Engine-core benchmark: what one request costs through the whole system.
//!
//! Starts a real daemon (release build, durable sled queue) and one real
//! worker with 2 slots on loopback, then measures, in one run:
//!
//! 1. the synchronous `noop` round trip through the client library
//!    (client → daemon → worker → daemon → client, task durable), p50/p99;
//! 2. the same for raw nng REQ/REP on ipc in this process, the floor any nng
//!    design pays, so the ratio is comparable across noisy machines;
//! 3. the whole-process time of `flotilla run noop` (fork, exec, connect,
//!    run, print);
//! 4. bulk throughput: N `noop` tasks submitted in one request, from submit
//!    until every result is back at the client.
//!
//! Usage: `engine-core [--sync N] [--cli N] [--bulk N] [--repeat R]`.
//! Writes `benchmarks/results/engine-core.json`.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_benchmarks::{Latency, machine, round, write_result};
use flotilla_client::Client;
use flotilla_protocol::Payload;
use flotilla_protocol::launch::HOME_ENV;
use flotilla_protocol::task::{NIL, TaskState};
use flotilla_tests::{Flotilla, bin, config_with, noop_tasks};

struct Options {
    sync: usize,
    cli: usize,
    bulk: usize,
    repeat: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        sync: 5000,
        cli: 100,
        bulk: 100_000,
        repeat: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<usize>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--sync" => o.sync = value.max(1),
            "--cli" => o.cli = value.max(1),
            "--bulk" => o.bulk = value.max(1),
            "--repeat" => o.repeat = value.max(1),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn sync_round_trips(client: &Client, n: usize) -> Result<Latency, String> {
    let timeout = Some(Duration::from_secs(30));
    for _ in 0..n / 10 {
        client
            .run("noop", Payload::from_static(NIL), timeout)
            .map_err(|e| e.to_string())?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let view = client
            .run("noop", Payload::from_static(NIL), timeout)
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
        if view.state != TaskState::Completed {
            return Err(format!("task {} ended {}", view.id, view.state));
        }
    }
    Ok(Latency::of(&mut samples))
}

fn nng_floor(n: usize) -> Result<Latency, String> {
    use nng::{Protocol, Socket};
    let dir = std::env::temp_dir().join(format!("flotilla-bench-nng-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let url = format!("ipc://{}/rr.sock", dir.display());
    let server = Socket::new(Protocol::Rep0).map_err(|e| e.to_string())?;
    server.listen(&url).map_err(|e| e.to_string())?;
    let total = n + n / 10;
    let echo = std::thread::spawn(move || {
        for _ in 0..total {
            let Ok(m) = server.recv() else { return };
            if server.send(m).is_err() {
                return;
            }
        }
    });
    let client = Socket::new(Protocol::Req0).map_err(|e| e.to_string())?;
    client.dial(&url).map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..total {
        let t = Instant::now();
        client
            .send(nng::Message::from(&[0u8; 64][..]))
            .map_err(|(_, e)| e.to_string())?;
        client.recv().map_err(|e| e.to_string())?;
        if i >= n / 10 {
            samples.push(t.elapsed());
        }
    }
    let _ = echo.join();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Latency::of(&mut samples))
}

fn cli_runs(f: &Flotilla, n: usize) -> Result<Latency, String> {
    let exe = bin("flotilla");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = Command::new(&exe)
            .args(["run", "noop"])
            .env(HOME_ENV, f.home())
            .output()
            .map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
        if !out.status.success() {
            return Err(format!(
                "flotilla run noop: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(Latency::of(&mut samples))
}

fn bulk(client: &Client, n: usize) -> Result<(f64, f64), String> {
    let tasks = noop_tasks(n);
    let t = Instant::now();
    let ids = client.submit(tasks).map_err(|e| e.to_string())?;
    let accepted = t.elapsed();
    let views = client
        .results(&ids, Some(Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    let done = t.elapsed();
    let completed = views
        .iter()
        .filter(|v| v.state == TaskState::Completed)
        .count();
    if completed != n {
        return Err(format!("only {completed} of {n} tasks completed"));
    }
    Ok((n as f64 / done.as_secs_f64(), accepted.as_secs_f64() * 1e3))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine-core: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let o = options()?;
    let mut f = Flotilla::start(&config_with(&[
        ("interchange", "heartbeat_period_s", "5"),
        ("interchange", "heartbeat_threshold_s", "20"),
    ]));
    f.spawn_worker(&["--slots", "2"]);
    f.wait_workers(1);
    let client = f.client();

    println!("engine-core benchmark: daemon + 1 worker (2 slots), durable sled queue, loopback");
    let floor = nng_floor(o.sync)?;
    let sync = sync_round_trips(&client, o.sync)?;
    println!(
        "sync noop round trip (client library): p50 {:.1} µs  p99 {:.1} µs  mean {:.1} µs  (n={})",
        sync.p50_us, sync.p99_us, sync.mean_us, sync.n
    );
    println!(
        "raw nng REQ/REP ipc round trip:        p50 {:.1} µs  p99 {:.1} µs  → flotilla/nng p50 ratio {:.2}",
        floor.p50_us,
        floor.p99_us,
        sync.p50_us / floor.p50_us
    );
    let cli = cli_runs(&f, o.cli)?;
    println!(
        "`flotilla run noop` whole process:     p50 {:.2} ms  p99 {:.2} ms  (n={})",
        cli.p50_us / 1e3,
        cli.p99_us / 1e3,
        cli.n
    );
    let mut rates = Vec::new();
    let mut accepts = Vec::new();
    for _ in 0..o.repeat {
        let (rate, accept_ms) = bulk(&client, o.bulk)?;
        println!(
            "bulk {} noop: accepted+durable in {:.1} ms, all results in → {:.0} tasks/s",
            o.bulk, accept_ms, rate
        );
        rates.push(rate);
        accepts.push(accept_ms);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "bulk throughput (median of {}): {:.0} tasks/s",
        rates.len(),
        median
    );

    let path = write_result(
        "engine-core.json",
        &serde_json::json!({
            "benchmark": "engine-core",
            "machine": machine(),
            "setup": "release build; daemon with durable sled queue; 1 worker, 2 slots; loopback",
            "sync_noop_round_trip": sync.json(),
            "nng_req_rep_ipc_round_trip": floor.json(),
            "sync_to_nng_p50_ratio": round(sync.p50_us / floor.p50_us * 100.0) / 100.0,
            "cli_run_noop_process": cli.json(),
            "bulk": {
                "tasks": o.bulk,
                "runs_tasks_per_s": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
                "median_tasks_per_s": median.round(),
                "accept_ms": accepts.iter().map(|a| round(*a)).collect::<Vec<_>>(),
            },
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("results: {}", path.display());
    drop(client);
    drop(f);
    Ok(())
}
