//! Daemon start to first result through a real Slurm.
//!
//! Each round starts a fresh daemon (release build) whose one block is a Slurm
//! job of one node running `flotilla-worker` with 2 slots, and runs one
//! `noop` as soon as the daemon answers; the clock stops when its result is
//! back. The daemon's event stream splits that time into: the daemon up
//! with its first block submitted (it submits at start, before it answers
//! clients), the job started and its worker registered, the result back. The same flow on the local provider (the block is a
//! plain process) runs in the same invocation, so the Slurm share is a
//! difference measured side by side.
//!
//! Needs the test cluster of `tests/infra/` (`SLURM_CONF` set): the
//! `benchmarks/run slurm` script starts it when it is not running.
//!
//! Usage: `bench-slurm [--quick] [--rounds R]`. Writes
//! `benchmarks/results/slurm.{json,png}`.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_benchmarks::plot::{Segment, stacked_bars};
use flotilla_benchmarks::{machine, median, results_dir, round, today, unix_us, write_result};
use flotilla_protocol::Payload;
use flotilla_protocol::client::EventView;
use flotilla_protocol::task::{NIL, TaskState};
use flotilla_tests::{Flotilla, SlurmJobs, bin, config_with};
use serde_json::{Value, json};

/// The phases of a cold start, in order.
const PHASES: [&str; 3] = [
    "daemon up, block submitted",
    "job started, worker registered",
    "first result",
];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-slurm: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options() -> Result<(bool, usize), String> {
    let (mut quick, mut rounds) = (false, 5);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => {
                quick = true;
                rounds = 2;
            }
            "--rounds" => {
                rounds = it
                    .next()
                    .ok_or("--rounds needs a value")?
                    .parse::<usize>()
                    .map_err(|e| format!("--rounds: {e}"))?
                    .max(1);
            }
            other => {
                return Err(format!(
                    "unknown option {other}; usage: bench-slurm [--quick] [--rounds R]"
                ));
            }
        }
    }
    Ok((quick, rounds))
}

fn site(slurm: bool) -> String {
    let worker = format!("\"{}\"", bin("flotilla-worker").display());
    let mut settings = vec![
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("provider", "poll_interval_s", "0.2"),
        ("worker", "slots", "2"),
        ("worker", "command", worker.as_str()),
    ];
    if slurm {
        settings.extend([
            ("provider", "kind", "\"slurm\""),
            ("provider", "partition", "\"debug\""),
            ("provider", "walltime", "\"00:10:00\""),
        ]);
    }
    config_with(&settings)
}

/// One cold start: the phase boundaries in ms after the daemon was spawned.
fn cold_start(slurm: bool) -> Result<[f64; 3], String> {
    let t0 = unix_us();
    let started = Instant::now();
    let f = Flotilla::start(&site(slurm));
    let _jobs = SlurmJobs::of(&f);
    let view = f
        .client()
        .run(
            "noop",
            Payload::from_static(NIL),
            Some(Duration::from_secs(120)),
        )
        .map_err(|e| e.to_string())?;
    let done = unix_us();
    let total = started.elapsed();
    if view.state != TaskState::Completed {
        return Err(format!("noop ended {} ({:?})", view.state, view.outcome));
    }
    let events = f.client().events(0, None).map_err(|e| e.to_string())?;
    let at = |pred: &dyn Fn(&EventView) -> bool, what: &str| -> Result<u64, String> {
        events
            .iter()
            .find(|e| pred(e))
            .map(|e| e.at_us)
            .ok_or_else(|| format!("no {what} event: {events:?}"))
    };
    let submitted = at(&|e| e.kind == "block-submitted", "block-submitted")?;
    let registered = at(&|e| e.kind == "worker-registered", "worker-registered")?;
    let ms = |t: u64| (t.saturating_sub(t0)) as f64 / 1e3;
    let marks = [ms(submitted), ms(registered), ms(done)];
    print_round(slurm, &marks, total);
    Ok(marks)
}

fn print_round(slurm: bool, marks: &[f64; 3], total: Duration) {
    println!(
        "  {:<6} {}  total {:.0} ms",
        if slurm { "slurm" } else { "local" },
        PHASES
            .iter()
            .zip(marks)
            .map(|(p, m)| format!("{p} {m:>7.1}"))
            .collect::<Vec<_>>()
            .join("  "),
        total.as_secs_f64() * 1e3
    );
}

fn run() -> Result<(), String> {
    let (quick, rounds) = options()?;
    if std::env::var_os("SLURM_CONF").is_none() {
        return Err(
            "SLURM_CONF is not set: start the test cluster with `eval \"$(tests/infra/slurm-up.sh 2)\"` (as root), or use `benchmarks/run slurm`, which does".into(),
        );
    }
    println!(
        "slurm: daemon start to first result, {rounds} rounds, Slurm and local interleaved (ms after the daemon was spawned)"
    );
    let mut samples: Vec<(bool, [f64; 3])> = Vec::new();
    // A first round warms the page cache and Slurm; it is not counted.
    for slurm in [true, false] {
        cold_start(slurm)?;
    }
    for _ in 0..rounds {
        for slurm in [true, false] {
            samples.push((slurm, cold_start(slurm)?));
        }
    }
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    for (slurm, name) in [(true, "slurm"), (false, "local")] {
        let mine: Vec<&[f64; 3]> = samples
            .iter()
            .filter(|(s, _)| *s == slurm)
            .map(|(_, m)| m)
            .collect();
        let marks: Vec<f64> = (0..PHASES.len())
            .map(|i| median(&mine.iter().map(|m| m[i]).collect::<Vec<_>>()))
            .collect();
        let parts: Vec<f64> = marks
            .iter()
            .scan(0.0, |previous, m| {
                let part = m - *previous;
                *previous = *m;
                Some(part)
            })
            .collect();
        let phases: serde_json::Map<String, Value> = PHASES
            .iter()
            .zip(&parts)
            .map(|(p, v)| ((*p).to_owned(), json!(round(*v))))
            .collect();
        let totals: Vec<f64> = mine.iter().map(|m| m[2]).collect();
        bars.push((
            format!("{name} provider"),
            PHASES
                .iter()
                .zip(&parts)
                .map(|(p, v)| Segment {
                    name: (*p).to_owned(),
                    value: v / 1e3,
                })
                .collect::<Vec<_>>(),
        ));
        rows.push(json!({
            "provider": name,
            "first_result_ms": {
                "median": round(median(&totals)),
                "min": round(totals.iter().copied().fold(f64::INFINITY, f64::min)),
                "max": round(totals.iter().copied().fold(0.0, f64::max)),
            },
            "phases_ms_median": phases,
            "rounds": mine.iter().map(|m| m.to_vec()).collect::<Vec<_>>(),
        }));
    }
    let slurm_ms = rows[0]["first_result_ms"]["median"].as_f64().unwrap_or(0.0);
    let local_ms = rows[1]["first_result_ms"]["median"].as_f64().unwrap_or(0.0);
    println!(
        "median daemon start to first result: Slurm {slurm_ms:.0} ms, local {local_ms:.0} ms (Slurm ÷ local {:.1})",
        slurm_ms / local_ms.max(1e-9)
    );
    let sinfo = Command::new("sinfo")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = json!({
        "figure": "slurm: daemon start to first result through the real test Slurm, against the local provider",
        "date": today(),
        "machine": machine(),
        "slurm": sinfo,
        "quick": quick,
        "setup": "fresh daemon per round (release build); one block of one node, flotilla-worker with 2 slots; provider poll 0.2 s; the test cluster's fake nodes run on this host; phases are medians of the time since the previous phase",
        "providers": rows,
        "slurm_over_local": round(slurm_ms / local_ms.max(1e-9)),
    });
    let path = write_result("slurm.json", &report).map_err(|e| e.to_string())?;
    let png = results_dir().join("slurm.png");
    stacked_bars(
        &png,
        "Daemon start to first result (median, seconds)",
        "seconds since the daemon was spawned",
        &bars,
    )?;
    println!("wrote {} and {}", path.display(), png.display());
    Ok(())
}
