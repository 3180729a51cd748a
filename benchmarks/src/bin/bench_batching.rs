//! The seed paper's Fig. 5: time per request against batch size.
//!
//! For each servable (`noop`, `digits`, and the three-step
//! `formation-enthalpy` pipeline) and each batch size b = 1, 2, 4, …, 1024:
//! submit b requests (distinct inputs, memoization off) in one call and wait
//! for all of them, through the real daemon and one worker with one slot;
//! time per request = elapsed / b, median over repetitions. The daemon puts
//! all b requests in one model call (each servable allows 1024 inputs per
//! call here and does not wait to fill batches).
//!
//! Usage: `bench-batching [--quick] [--max-batch N]`; writes
//! `benchmarks/results/batching.{json,png}`. `--quick` stops at batches of 64.

use std::time::{Duration, Instant};

use flotilla_benchmarks::plot::{Series, log_log_lines};
use flotilla_benchmarks::{
    examples_daemon, inputs, machine, results_dir, round, today, write_result,
};
use flotilla_client::{Client, json_to_payload};
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::TaskState;
use serde_json::{Value, json};

const SERVABLES: &[&str] = &["noop", "digits", "formation-enthalpy"];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-batching: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options() -> Result<usize, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(1024),
        [flag] if flag == "--quick" => Ok(64),
        [flag, n] if flag == "--max-batch" => n.parse().map_err(|e| format!("--max-batch: {e}")),
        _ => Err("usage: bench-batching [--quick] [--max-batch N]".into()),
    }
}

/// Median µs per request for batches of `b` requests.
fn per_request_us(
    client: &Client,
    servable: &str,
    payloads: &[Payload],
    b: usize,
) -> Result<f64, String> {
    let reps = (2048 / b).clamp(3, 25);
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let tasks: Vec<TaskRequest> = (0..b)
            .map(|i| TaskRequest {
                servable: servable.into(),
                input: payloads[(rep * b + i) % payloads.len()].clone(),
                params: Payload::new(),
            })
            .collect();
        let t = Instant::now();
        let views = client
            .run_all(tasks, Duration::from_secs(600))
            .map_err(|e| e.to_string())?;
        let elapsed = t.elapsed();
        if let Some(bad) = views.iter().find(|v| v.state != TaskState::Completed) {
            return Err(format!(
                "{servable}: task {} ended {} ({:?})",
                bad.id, bad.state, bad.outcome
            ));
        }
        if rep > 0 {
            samples.push(elapsed.as_secs_f64() * 1e6 / b as f64);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn run() -> Result<(), String> {
    let max_batch = options()?;
    let overrides: Vec<(String, String, String)> = [
        "noop",
        "digits",
        "formation-enthalpy-parse",
        "formation-enthalpy-features",
        "formation-enthalpy-model",
    ]
    .iter()
    .flat_map(|s| {
        [
            (
                format!("servables.{s}"),
                "max_batch_size".to_owned(),
                max_batch.to_string(),
            ),
            (
                format!("servables.{s}"),
                "max_batch_delay_ms".to_owned(),
                "0".to_owned(),
            ),
            (
                format!("servables.{s}"),
                "memoize".to_owned(),
                "false".to_owned(),
            ),
        ]
    })
    .collect();
    let f = examples_daemon(&overrides, 1)?;
    let client = f.client();
    let payloads_of = |servable: &str| -> Result<Vec<Payload>, String> {
        let values: Vec<Value> = match servable {
            "noop" => (0..max_batch).map(|i| json!(i)).collect(),
            "digits" => inputs::digit_images(max_batch.min(1797))?,
            _ => inputs::formulas(max_batch),
        };
        values
            .iter()
            .map(|v| json_to_payload(v).map_err(|e| e.to_string()))
            .collect()
    };
    let sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
        .take_while(|b| *b <= max_batch)
        .collect();
    println!("batching: time per request vs batch size (1 worker, 1 slot, memo off)");
    let mut series = Vec::new();
    let mut report = serde_json::Map::new();
    for servable in SERVABLES {
        let payloads = payloads_of(servable)?;
        per_request_us(&client, servable, &payloads, 1)?; // warm the process up
        let mut points = Vec::new();
        for &b in &sizes {
            let us = per_request_us(&client, servable, &payloads, b)?;
            println!(
                "  {servable:<20} batch {b:>5}: {:>9.3} ms per request",
                us / 1e3
            );
            points.push((b as f64, us / 1e3));
        }
        let speedup = points[0].1 / points[points.len() - 1].1;
        println!("  {servable:<20} speed-up per request, batch 1 → {max_batch}: {speedup:.1}×");
        report.insert(
            (*servable).to_owned(),
            json!({
                "batch": sizes,
                "ms_per_request": points.iter().map(|p| (p.1 * 1e4).round() / 1e4).collect::<Vec<_>>(),
                "speedup_first_to_last": round(speedup),
            }),
        );
        series.push(Series {
            name: (*servable).to_owned(),
            points,
        });
    }
    let png = results_dir().join("batching.png");
    log_log_lines(
        &png,
        "Time per request vs batch size (Fig. 5)",
        "requests per batch",
        "ms per request",
        &series,
    )?;
    let path = write_result(
        "batching.json",
        &json!({
            "benchmark": "batching",
            "date": today(),
            "machine": machine(),
            "setup": "release build; daemon + 1 worker with 1 slot; each batch is one submit of b requests (distinct inputs, memo off) waited for in one round trip; median of 3-25 repetitions",
            "servables": report,
            "plot": "batching.png",
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("results: {} and {}", path.display(), png.display());
    Ok(())
}
