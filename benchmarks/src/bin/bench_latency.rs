//! The paper's Fig. 3: where the time of one synchronous request goes.
//!
//! Starts a real daemon (release build, durable queue) with one real worker
//! with one slot, publishes the example servables, and runs requests one at
//! a time through the Rust client library. Each request's time is split at
//! the timestamps the protocol carries, so the parts are measured, not
//! estimated:
//!
//! | part | from | to |
//! |---|---|---|
//! | client → daemon | client sends | daemon accepted the task |
//! | daemon queue | accepted | handed to the worker |
//! | daemon → worker | handed over | worker received the batch |
//! | worker | received | sent the result, less the servable's time |
//! | servable | the worker's measure of the model call | |
//! | worker → daemon | worker sent | daemon received the result |
//! | record + flush | daemon received the result | the reply released, its result durable |
//! | daemon → client | reply released | client has it |
//!
//! The parts add up to the round trip the client sees. All processes share
//! one clock here; across hosts the network parts would include clock skew.
//!
//! Usage: `bench-latency [--quick] [--requests N]`. Writes
//! `benchmarks/results/latency.{json,png}`.

use std::time::Duration;

use flotilla_benchmarks::plot::{Segment, stacked_bars};
use flotilla_benchmarks::{
    inputs, machine, median, results_dir, round, today, unix_us, write_result,
};
use flotilla_client::{Client, json_to_payload};
use flotilla_protocol::Payload;
use flotilla_protocol::task::{TaskState, TaskView};
use serde_json::{Value, json};

/// The parts of a request, in path order.
const PARTS: [&str; 8] = [
    "client → daemon",
    "daemon queue",
    "daemon → worker",
    "worker",
    "servable",
    "worker → daemon",
    "record + flush",
    "daemon → client",
];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-latency: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Options {
    quick: bool,
    requests: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        requests: 2000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--quick" => {
                o.quick = true;
                o.requests = 200;
            }
            "--requests" => {
                o.requests = it
                    .next()
                    .ok_or("--requests needs a value")?
                    .parse::<usize>()
                    .map_err(|e| format!("--requests: {e}"))?
                    .max(10);
            }
            other => {
                return Err(format!(
                    "unknown option {other}; usage: bench-latency [--quick] [--requests N]"
                ));
            }
        }
    }
    Ok(o)
}

/// One request's parts in µs (signed: clocks are read in different
/// processes, so a part of a few µs can come out slightly negative).
fn parts(sent: u64, received: u64, v: &TaskView) -> Result<[f64; 8], String> {
    let t = &v.timings;
    let stamps = [
        t.worker_received_us,
        t.worker_sent_us,
        t.result_received_us,
        t.replied_us,
    ];
    if stamps.contains(&0) {
        return Err(format!(
            "task {} carries no worker timestamps ({t:?}); are the worker and daemon from this build?",
            v.id
        ));
    }
    let d = |a: u64, b: u64| b as f64 - a as f64;
    let in_worker = d(t.worker_received_us, t.worker_sent_us);
    Ok([
        d(sent, t.submitted_us),
        d(t.submitted_us, t.dispatched_us),
        d(t.dispatched_us, t.worker_received_us),
        in_worker - t.run_us as f64,
        t.run_us as f64,
        d(t.worker_sent_us, t.result_received_us),
        d(t.result_received_us, t.replied_us),
        d(t.replied_us, received),
    ])
}

fn measure(client: &Client, servable: &str, inputs: &[Payload], n: usize) -> Result<Value, String> {
    let timeout = Some(Duration::from_secs(60));
    // Warm-up: the servable's process, the worker's caches, the daemon's.
    for input in inputs.iter().cycle().take((n / 10).max(5)) {
        client
            .run(servable, input.clone(), timeout)
            .map_err(|e| format!("{servable}: {e}"))?;
    }
    let mut columns: Vec<Vec<f64>> = vec![Vec::with_capacity(n); PARTS.len()];
    let mut totals = Vec::with_capacity(n);
    for input in inputs.iter().cycle().take(n) {
        let sent = unix_us();
        let view = client
            .run(servable, input.clone(), timeout)
            .map_err(|e| format!("{servable}: {e}"))?;
        let received = unix_us();
        if view.state != TaskState::Completed {
            return Err(format!(
                "{servable}: task {} ended {} ({:?})",
                view.id, view.state, view.outcome
            ));
        }
        for (column, part) in columns.iter_mut().zip(parts(sent, received, &view)?) {
            column.push(part);
        }
        totals.push(received as f64 - sent as f64);
    }
    let means: Vec<f64> = columns
        .iter()
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    let medians: Vec<f64> = columns.iter().map(|c| median(c)).collect();
    let total_mean = totals.iter().sum::<f64>() / totals.len() as f64;
    totals.sort_by(f64::total_cmp);
    let total_p50 = median(&totals);
    let total_p99 = totals[((totals.len() - 1) as f64 * 0.99).round() as usize];
    let part_json: serde_json::Map<String, Value> = PARTS
        .iter()
        .zip(means.iter().zip(&medians))
        .map(|(name, (mean, p50))| {
            (
                (*name).to_owned(),
                json!({"mean_us": round(*mean), "p50_us": round(*p50)}),
            )
        })
        .collect();
    Ok(json!({
        "servable": servable,
        "requests": n,
        "total_us": {"mean": round(total_mean), "p50": round(total_p50), "p99": round(total_p99)},
        "parts": part_json,
    }))
}

fn payloads(values: Vec<Value>) -> Result<Vec<Payload>, String> {
    values
        .iter()
        .map(|v| json_to_payload(v).map_err(|e| e.to_string()))
        .collect()
}

fn run() -> Result<(), String> {
    let o = options()?;
    let mut overrides = Vec::new();
    for s in ["noop", "noop-py", "digits"] {
        for (key, value) in [("memoize", "false"), ("max_batch_delay_ms", "0")] {
            overrides.push((format!("servables.{s}"), key.to_owned(), value.to_owned()));
        }
    }
    let f = flotilla_benchmarks::examples_daemon(&overrides, 1)?;
    f.publish(&flotilla_tests::workspace().join("site-examples/servables/noop-py"))?;
    let client = f.client();
    let distinct: Vec<Value> = (0..1000).map(|i| json!(i)).collect();
    let cases: Vec<(&str, Vec<Payload>)> = vec![
        ("noop", payloads(distinct.clone())?),
        ("noop-py", payloads(distinct)?),
        ("digits", payloads(inputs::digit_images(1797)?)?),
    ];
    println!(
        "latency: one synchronous request at a time, {} requests per servable (1 worker, 1 slot, memo off)",
        o.requests
    );
    println!(
        "  {:<8} {:>9} {}",
        "servable",
        "p50 ms",
        PARTS.map(|p| format!("{p:>16}")).join("")
    );
    let mut rows = Vec::new();
    let mut bars = Vec::new();
    for (servable, inputs) in &cases {
        let row = measure(&client, servable, inputs, o.requests)?;
        let mean_of = |p: &str| row["parts"][p]["mean_us"].as_f64().unwrap_or(0.0);
        println!(
            "  {servable:<8} {:>9.3} {}",
            row["total_us"]["p50"].as_f64().unwrap_or(0.0) / 1e3,
            PARTS.map(|p| format!("{:>13.1} µs", mean_of(p))).join("")
        );
        bars.push((
            (*servable).to_owned(),
            PARTS
                .iter()
                .map(|p| Segment {
                    name: (*p).to_owned(),
                    value: mean_of(p).max(0.0) / 1e3,
                })
                .collect::<Vec<_>>(),
        ));
        rows.push(row);
    }
    let report = json!({
        "figure": "latency (the paper's Fig. 3): one request's time split at protocol timestamps",
        "date": today(),
        "machine": machine(),
        "quick": o.quick,
        "setup": "release build; daemon with durable sled queue; 1 worker, 1 slot; Rust client library; requests one at a time; memo off; parts are means (they add up to the mean round trip), p50s alongside",
        "part_order": PARTS,
        "servables": rows,
    });
    let path = write_result("latency.json", &report).map_err(|e| e.to_string())?;
    let png = results_dir().join("latency.png");
    stacked_bars(
        &png,
        "Time of one request, split at protocol timestamps (mean)",
        "milliseconds",
        &bars,
    )?;
    println!("wrote {} and {}", path.display(), png.display());
    Ok(())
}
