//! What `flotilla tasks` costs with a million tasks held: the daemon's
//! core is given `--tasks N` stored tasks (as after a restart: the indexes
//! are built while they are read back), then each kind of list is asked
//! for repeatedly through the core, as the daemon's I/O layer asks it.
//!
//! The tasks are spread over three servables and four users; one in ten
//! failed, one in twenty is still queued, the rest completed. The
//! figures are the time to read the tasks back (with their indexes), the
//! resident memory they take, and the time per list call (p50, p99).
//!
//! Usage: `bench-tasks [--quick] [--tasks N] [--repeat R]` (`--quick`:
//! 100,000 tasks); writes
//! `benchmarks/results/tasks.json`.

use std::time::{Duration, Instant};

use flotilla_benchmarks::{Latency, machine, today, write_result};
use flotilla_engine::core::{Action, BlockPolicy, Caller, Core, CoreConfig, Event, ReplyTo};
use flotilla_engine::store::Recovered;
use flotilla_protocol::client::{ClientCall, ClientReply};
use flotilla_protocol::task::{NIL, Outcome, TaskState, TaskTimings};
use flotilla_protocol::watch::TaskQuery;
use flotilla_protocol::{Payload, TaskId};
use serde_json::json;

const SERVABLES: [&str; 3] = ["noop", "echo", "sleep"];
const USERS: [u32; 4] = [1001, 1002, 1003, 1004];

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-tasks: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn options() -> Result<(u64, usize), String> {
    let (mut tasks, mut repeat) = (1_000_000u64, 200usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            (tasks, repeat) = (100_000, 50);
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--tasks" => tasks = number.max(1),
            "--repeat" => repeat = number.clamp(1, 100_000) as usize,
            other => {
                return Err(format!(
                    "unknown option {other}; usage: bench-tasks [--quick] [--tasks N] [--repeat R]"
                ));
            }
        }
    }
    Ok((tasks, repeat))
}

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn config() -> CoreConfig {
    CoreConfig {
        heartbeat_period_us: 5_000_000,
        heartbeat_threshold_us: 20_000_000,
        shutdown_grace_us: 1_000_000,
        result_retention_us: 86_400_000_000,
        unfetched_result_retention_us: 86_400_000_000,
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
        memo_max_entries: 1,
        memo_max_bytes: 1 << 20,
        overrides: Default::default(),
        owner_uid: 0,
    }
}

/// `n` stored tasks, one submitted every millisecond up to `now`.
fn recovered(n: u64, now: u64) -> Recovered {
    let first_us = now - n * 1000;
    let tasks = (1..=n)
        .map(|i| {
            let submitted_us = first_us + i * 1000;
            let stored = flotilla_engine::store::StoredTask {
                servable: SERVABLES[(i % 3) as usize].into(),
                params: Payload::new(),
                input: Payload::from_static(NIL),
                submitted_us,
                owner: Some(USERS[(i % 4) as usize]),
            };
            let result = match i % 20 {
                1 => None,
                5 | 10 => Some(Outcome::Error("bench: failed on purpose".into())),
                _ => Some(Outcome::Output(Payload::from_static(NIL))),
            }
            .map(|outcome| flotilla_engine::store::StoredResult {
                state: if outcome.is_ok() {
                    TaskState::Completed
                } else {
                    TaskState::Failed
                },
                outcome,
                attempts: 1,
                worker: Some("w1".into()),
                timings: TaskTimings {
                    submitted_us,
                    finished_us: submitted_us + 500,
                    ..TaskTimings::default()
                },
                memo: None,
            });
            (TaskId(i), stored, result)
        })
        .collect();
    Recovered {
        tasks,
        reserved_until: n + 1,
        ..Recovered::default()
    }
}

fn run() -> Result<(), String> {
    let (n, repeat) = options()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_micros() as u64;
    let base_kib = rss_kib();
    let stored = recovered(n, now);
    let stored_kib = rss_kib();
    let t = Instant::now();
    let mut core = Core::new(config(), stored, now);
    core.start(now, &mut Vec::new());
    let restore = t.elapsed();
    let core_kib = rss_kib();
    println!(
        "{n} tasks read back with their indexes in {:.2} s; resident memory {} MiB ({} MiB before, {:.0} bytes per task)",
        restore.as_secs_f64(),
        core_kib / 1024,
        base_kib / 1024,
        (core_kib.saturating_sub(base_kib) * 1024) as f64 / n as f64
    );
    // The indexes' share: four sets of every id (all tasks, by servable,
    // by owner, by owner and servable), built alone in the layout of the
    // core's id sets (a map from each 64-id word to its bits), which
    // consecutive ids fill word by word.
    let before_sets = rss_kib();
    let sets: Vec<std::collections::BTreeMap<u64, u64>> = (0..4)
        .map(|_| {
            let mut words = std::collections::BTreeMap::new();
            for id in 1..=n {
                *words.entry(id / 64).or_insert(0u64) |= 1 << (id % 64);
            }
            words
        })
        .collect();
    let index_kib = rss_kib().saturating_sub(before_sets);
    drop(sets);
    println!(
        "the indexes alone: about {} MiB ({:.0} bytes per task)",
        index_kib / 1024,
        (index_kib * 1024) as f64 / n as f64
    );
    let admin = Caller::daemon_user(0);
    let user = Caller {
        uid: USERS[1],
        groups: vec![USERS[1]],
    };
    let query =
        |states: &[TaskState], servable: Option<&str>, age_s: Option<u64>, limit| TaskQuery {
            states: states.to_vec(),
            servable: servable.map(str::to_owned),
            max_age_ms: age_s.map(|s| s * 1000),
            before: None,
            limit,
        };
    let cases = [
        (
            "daemon user: newest 100 of every state",
            &admin,
            query(&[], None, None, 100),
        ),
        (
            "daemon user: failed tasks of echo, 100",
            &admin,
            query(&[TaskState::Failed], Some("echo"), None, 100),
        ),
        (
            "daemon user: queued, 1,000",
            &admin,
            query(&[TaskState::Queued], None, None, 1000),
        ),
        (
            "one user: completed, 100",
            &user,
            query(&[TaskState::Completed], None, None, 100),
        ),
        (
            "one user: failed tasks of sleep in the last minute",
            &user,
            query(&[TaskState::Failed], Some("sleep"), Some(60), 100_000),
        ),
        (
            "one user: newest 10,000 of every state",
            &user,
            query(&[], None, None, 10_000),
        ),
    ];
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (what, caller, q) in cases {
        let mut samples: Vec<Duration> = Vec::with_capacity(repeat);
        let mut listed = 0;
        for _ in 0..repeat {
            out.clear();
            let t = Instant::now();
            core.handle(
                Event::Client {
                    from: ReplyTo(1),
                    caller: caller.clone(),
                    call: ClientCall::ListTasks(q.clone()),
                },
                now,
                &mut out,
            );
            samples.push(t.elapsed());
            listed = out
                .iter()
                .find_map(|a| match a {
                    Action::ReplyClient {
                        reply: ClientReply::TaskList(list),
                        ..
                    } => Some(list.tasks.len()),
                    _ => None,
                })
                .ok_or("no task list in the reply")?;
        }
        let latency = Latency::of(&mut samples);
        println!(
            "{what}: {listed} listed, p50 {:.1} µs, p99 {:.1} µs",
            latency.p50_us, latency.p99_us
        );
        rows.push(json!({"query": what, "listed": listed, "latency": latency.json()}));
    }
    let path = write_result(
        "tasks.json",
        &json!({
            "date": today(),
            "machine": machine(),
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "tasks": n,
            "restore_s": restore.as_secs_f64(),
            "rss_mib": {"before": base_kib / 1024, "stored_read": stored_kib / 1024, "with_core": core_kib / 1024},
            "bytes_per_task": (core_kib.saturating_sub(base_kib) * 1024) / n,
            "index_bytes_per_task": (index_kib * 1024) / n,
            "lists": rows,
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("wrote {}", path.display());
    Ok(())
}
