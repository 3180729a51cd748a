//! The seed paper's Fig. 4: completion time with memoization off and on.
//!
//! For each servable (`noop`, `digits`, the `formation-enthalpy` pipeline),
//! one client sends `--requests` synchronous requests one after the other,
//! cycling through `--distinct` different inputs (so with the defaults 90%
//! of the requests repeat an earlier one). The run is done twice, on daemons
//! that differ only in `memoize` for the three servables; the figure is the
//! total completion time of each run. Requests never wait for batches to
//! fill (`max_batch_delay_ms = 0`), so only memoization differs.
//!
//! It also measures a memo hit *inside the daemon*: decoding the request
//! frame, the scheduling core answering it from the memo store (including
//! the store acknowledgement it waits for) and encoding the reply, without
//! the sockets, by driving the daemon's core directly.
//!
//! Usage: `bench-memo [--quick] [--requests N] [--distinct K]`; writes
//! `benchmarks/results/memo.{json,png}`. `--quick` is 100 requests over 10
//! distinct inputs.

use std::time::{Duration, Instant};

use flotilla_benchmarks::plot::grouped_bars;
use flotilla_benchmarks::{
    Latency, examples_daemon, inputs, machine, results_dir, round, today, write_result,
};
use flotilla_client::json_to_payload;
use flotilla_engine::config::ServableOverride;
use flotilla_engine::core::{
    Action, BlockPolicy, Caller, Core, CoreConfig, Event, MemoScope, ReplyTo, memo_key,
};
use flotilla_engine::store::Recovered;
use flotilla_protocol::client::{ClientCall, ClientReply, TaskRequest};
use flotilla_protocol::task::{MemoUse, NIL, TaskState};
use flotilla_protocol::{Payload, decode, encode};
use serde_json::{Value, json};

const SERVABLES: &[&str] = &["noop", "digits", "formation-enthalpy"];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-memo: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options() -> Result<(usize, usize), String> {
    let mut requests = 400;
    let mut distinct = 40;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            requests = 100;
            distinct = 10;
            continue;
        }
        let value: usize = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--requests" => requests = value.max(1),
            "--distinct" => distinct = value.max(1),
            other => {
                return Err(format!(
                    "unknown option {other}; usage: bench-memo [--quick] [--requests N] [--distinct K]"
                ));
            }
        }
    }
    Ok((requests, distinct))
}

struct RunResult {
    total_s: f64,
    latency: Latency,
    hit_latency: Option<Latency>,
}

fn workload(
    memo: bool,
    requests: usize,
    distinct: usize,
    payloads: &[Vec<Payload>],
) -> Result<Vec<RunResult>, String> {
    // Only memoization differs between the runs; no request waits for a
    // batch to fill.
    let mut overrides: Vec<(String, String, String)> = SERVABLES
        .iter()
        .map(|s| {
            (
                format!("servables.{s}"),
                "memoize".to_owned(),
                memo.to_string(),
            )
        })
        .collect();
    for s in [
        "digits",
        "formation-enthalpy-parse",
        "formation-enthalpy-features",
        "formation-enthalpy-model",
    ] {
        overrides.push((
            format!("servables.{s}"),
            "max_batch_delay_ms".to_owned(),
            "0".to_owned(),
        ));
    }
    let f = examples_daemon(&overrides, 1)?;
    let client = f.client();
    let wait = Some(Duration::from_secs(120));
    let mut results = Vec::new();
    for (servable, payloads) in SERVABLES.iter().zip(payloads) {
        // Warm the servable's process up with an input outside the workload.
        client
            .run(servable, payloads[distinct % payloads.len()].clone(), wait)
            .map_err(|e| e.to_string())?;
        let mut all = Vec::with_capacity(requests);
        let mut hits = Vec::new();
        let start = Instant::now();
        for i in 0..requests {
            let t = Instant::now();
            let view = client
                .run(servable, payloads[i % distinct].clone(), wait)
                .map_err(|e| e.to_string())?;
            let took = t.elapsed();
            if view.state != TaskState::Completed {
                return Err(format!(
                    "{servable}: task {} ended {} ({:?})",
                    view.id, view.state, view.outcome
                ));
            }
            all.push(took);
            if view.memo == Some(MemoUse::Stored) {
                hits.push(took);
            }
        }
        let total_s = start.elapsed().as_secs_f64();
        if memo && hits.len() != requests - distinct.min(requests) {
            return Err(format!(
                "{servable}: expected {} memo hits, got {}",
                requests - distinct.min(requests),
                hits.len()
            ));
        }
        results.push(RunResult {
            total_s,
            latency: Latency::of(&mut all),
            hit_latency: (!hits.is_empty()).then(|| Latency::of(&mut hits)),
        });
    }
    Ok(results)
}

/// A memo hit handled by the daemon's core: decode, answer, store
/// acknowledgement, encode.
fn in_daemon_hit(samples: usize) -> Result<Latency, String> {
    let overrides = [(
        "noop".to_owned(),
        ServableOverride {
            memoize: Some(true),
            ..ServableOverride::default()
        },
    )]
    .into_iter()
    .collect();
    let cfg = CoreConfig {
        heartbeat_period_us: 5_000_000,
        heartbeat_threshold_us: 20_000_000,
        shutdown_grace_us: 1_000_000,
        result_retention_us: 600_000_000,
        unfetched_result_retention_us: 600_000_000,
        max_attempts: 3,
        walltime_margin_us: 0,
        recovery_grace_us: 0,
        secret: vec![0; 32],
        handshake_seed: [0; 32],
        ciphers: flotilla_protocol::secure::Cipher::fast_here(),
        max_frame_bytes: flotilla_protocol::DEFAULT_MAX_FRAME_BYTES,
        pools: vec![BlockPolicy::no_blocks()],
        pid: std::process::id(),
        release: "bench".into(),
        interchange: String::new(),
        memo_max_entries: 100_000,
        memo_max_bytes: 1 << 28,
        overrides,
        owner_uid: 0,
    };
    let input = Payload::from(rmp_like_int(7));
    let recovered = Recovered {
        memo: vec![(
            memo_key(MemoScope::Caller(0), "noop", &input, &[]),
            "noop".into(),
            Payload::from_static(NIL),
        )],
        ..Recovered::default()
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    };
    let mut core = Core::new(cfg, recovered, now());
    let frame = encode(&ClientCall::Submit {
        tasks: vec![TaskRequest {
            servable: "noop".into(),
            input,
            params: Payload::new(),
        }],
        wait_ms: Some(1000),
    })
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 {
        let t = Instant::now();
        let call: ClientCall = decode(&frame, 1 << 20).map_err(|e| e.to_string())?;
        core.handle(
            Event::Client {
                from: ReplyTo(1),
                caller: Caller::daemon_user(0),
                call,
            },
            now(),
            &mut out,
        );
        let seq = core.issued_seq();
        core.handle(Event::Durable { seq }, now(), &mut out);
        let reply = out.iter().find_map(|a| match a {
            Action::ReplyClient { reply, .. } => Some(reply),
            _ => None,
        });
        let Some(reply @ ClientReply::Results { tasks }) = reply else {
            return Err(format!("no reply to a memo hit: {out:?}"));
        };
        if tasks[0].memo != Some(MemoUse::Stored) {
            return Err("the core did not answer from the memo store".into());
        }
        let bytes = encode(reply).map_err(|e| e.to_string())?;
        let took = t.elapsed();
        std::hint::black_box(bytes);
        out.clear();
        if i >= samples / 10 {
            times.push(took);
        }
    }
    Ok(Latency::of(&mut times))
}

fn rmp_like_int(v: u8) -> Vec<u8> {
    // msgpack positive fixint
    vec![v & 0x7f]
}

fn run() -> Result<(), String> {
    let (requests, distinct) = options()?;
    let hit = in_daemon_hit(20_000)?;
    println!(
        "memo hit inside the daemon (decode, core, store ack, encode): p50 {:.1} µs  p99 {:.1} µs",
        hit.p50_us, hit.p99_us
    );
    let payloads: Vec<Vec<Payload>> = {
        let digits = inputs::digit_images(distinct + 1)?;
        let formulas = inputs::formulas(distinct + 1);
        let ints: Vec<Value> = (0..=distinct).map(|i| json!(i)).collect();
        [ints, digits, formulas]
            .iter()
            .map(|vals| {
                vals.iter()
                    .map(|v| json_to_payload(v).map_err(|e| e.to_string()))
                    .collect()
            })
            .collect::<Result<_, _>>()?
    };
    println!(
        "memo: {requests} synchronous requests per servable over {distinct} distinct inputs ({:.0}% repeats)",
        100.0 * (1.0 - distinct as f64 / requests as f64)
    );
    let off = workload(false, requests, distinct, &payloads)?;
    let on = workload(true, requests, distinct, &payloads)?;
    let mut report = serde_json::Map::new();
    let mut values = Vec::new();
    for ((servable, off), on) in SERVABLES.iter().zip(&off).zip(&on) {
        let cut = 100.0 * (1.0 - on.total_s / off.total_s);
        println!(
            "  {servable:<20} memo off {:>7.3} s   memo on {:>7.3} s   completion time cut by {cut:.0}%   (hit round trip p50 {:.3} ms)",
            off.total_s,
            on.total_s,
            on.hit_latency.map_or(0.0, |l| l.p50_us / 1e3)
        );
        report.insert(
            (*servable).to_owned(),
            json!({
                "memo_off": {"total_s": round(off.total_s * 1e3) / 1e3, "latency": off.latency.json()},
                "memo_on": {
                    "total_s": round(on.total_s * 1e3) / 1e3,
                    "latency": on.latency.json(),
                    "hit_latency": on.hit_latency.map(|l| l.json()),
                },
                "completion_time_cut_percent": round(cut),
            }),
        );
        values.push(vec![off.total_s, on.total_s]);
    }
    let png = results_dir().join("memo.png");
    grouped_bars(
        &png,
        &format!("Completion time of {requests} requests, {distinct} distinct (Fig. 4)"),
        "seconds",
        &SERVABLES
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>(),
        &["memo off".to_owned(), "memo on".to_owned()],
        &values,
    )?;
    let path = write_result(
        "memo.json",
        &json!({
            "benchmark": "memo",
            "date": today(),
            "machine": machine(),
            "setup": format!("release build; daemon + 1 worker with 1 slot; one client, {requests} synchronous requests in sequence cycling over {distinct} distinct inputs; memo off vs on in two daemon runs"),
            "memo_hit_in_daemon": hit.json(),
            "servables": report,
            "plot": "memo.png",
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("results: {} and {}", path.display(), png.display());
    Ok(())
}
