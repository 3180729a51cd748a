//! What sealing the interchange and the client API costs: bulk throughput
//! and the client library's round trip, against the release before it.
//!
//! `bench-interchange measure --label L --out FILE [--transport ipc|tcp]`
//! measures the build whose binaries `FLOTILLA_BIN_DIR` names (this harness
//! is built in that release's tree too, so its client speaks that release's
//! protocol, and it uses nothing that release lacks): one daemon with one
//! worker of 2 slots, memo off, and a client on
//!
//! * `ipc` (the default): the daemon's ipc socket, the owner's path;
//! * `tcp`: the sealed TCP client API on 127.0.0.1 (`[daemon]
//!   client_listen`), from a state directory holding only a copy of the
//!   contact file and a token made by `flotilla token create`, as a batch job
//!   on another node has (this release only);
//!
//! then
//!
//! * the round trip: `--round-trips` synchronous `noop` runs through the Rust
//!   client library, one at a time, after a warm-up; p50, p99 and mean,
//!   and where the time goes, leg by leg, from the tasks' own timestamps
//!   (client and API transport, accept to dispatch, to the worker, in the
//!   worker, back to the daemon, result to reply);
//! * bulk throughput: `--tasks` `noop` tasks submitted in one call and
//!   waited for in the same call, `--repeats` times; tasks per second.
//!
//! `bench-interchange compare --out NAME A.json B.json …` puts the rounds of
//! every label side by side (medians over the rounds), and every label
//! against the label `previous`, in `results/NAME.json` and prints a table.
//! `benchmarks/run interchange` builds both releases and alternates the
//! previous release over ipc, this one over ipc and this one over TCP, so
//! all three are measured in one run under the same load.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use flotilla_benchmarks::{Latency, machine, median, round, today, write_result};
use flotilla_client::{Client, json_to_payload};
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::TaskState;
use flotilla_protocol::{Payload, paths, task::NIL};
use flotilla_tests::Flotilla;
use serde_json::{Value, json};

/// Longest wait for one bulk batch.
const BULK_WAIT: Duration = Duration::from_secs(600);

/// How the client reaches the daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// The ipc socket in the daemon's state directory.
    Ipc,
    /// The sealed TCP client API, with a token.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(text: &str) -> Result<Transport, String> {
        match text {
            "ipc" => Ok(Transport::Ipc),
            "tcp" => Ok(Transport::Tcp),
            other => Err(format!("--transport {other}: must be ipc or tcp")),
        }
    }
}

struct Measure {
    label: String,
    out: PathBuf,
    transport: Transport,
    round_trips: usize,
    tasks: usize,
    repeats: usize,
}

fn value<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a value")),
    }
}

fn measure_options(args: &[String]) -> Result<Measure, String> {
    let quick = args.iter().any(|a| a == "--quick");
    Ok(Measure {
        label: value(args, "--label", String::from("this"))?,
        out: value(args, "--out", PathBuf::from("interchange-run.json"))?,
        transport: match args.iter().position(|a| a == "--transport") {
            None => Transport::Ipc,
            Some(i) => args
                .get(i + 1)
                .ok_or("--transport needs ipc or tcp")?
                .parse()?,
        },
        round_trips: value(args, "--round-trips", if quick { 300 } else { 2000 })?,
        tasks: value(args, "--tasks", if quick { 2000 } else { 10_000 })?,
        repeats: value(args, "--repeats", 3)?,
    })
}

/// `n` distinct `noop` requests (distinct inputs: nothing is answered from
/// the memo even if it were on).
fn tasks(n: usize, from: usize) -> Result<Vec<TaskRequest>, String> {
    (from..from + n)
        .map(|i| {
            Ok(TaskRequest {
                servable: "noop".into(),
                input: json_to_payload(&json!(i)).map_err(|e| e.to_string())?,
                params: Payload::new(),
            })
        })
        .collect()
}

/// A client as a batch job on another node makes one: its state directory
/// holds only a copy of the daemon's contact file and a token (mode 0600)
/// from `flotilla token create`, no ipc socket, so `Client::connect` can
/// only take the TCP client API the contact file names.
fn tcp_client(f: &Flotilla) -> Result<Client, String> {
    let out = f.cli(&["token", "create", "--name", "bench-interchange"]);
    if !out.status.success() {
        return Err(format!(
            "flotilla token create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let node = f.home().join("node");
    std::fs::create_dir_all(&node).map_err(|e| format!("{}: {e}", node.display()))?;
    let contact = paths::info_file(f.home());
    std::fs::copy(&contact, paths::info_file(&node))
        .map_err(|e| format!("{}: {e}", contact.display()))?;
    let token_path = node.join("token");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token_path)
        .and_then(|mut file| writeln!(file, "{token}"))
        .map_err(|e| format!("{}: {e}", token_path.display()))?;
    if paths::api_socket(&node).exists() {
        return Err(format!("{} has an ipc socket", node.display()));
    }
    Client::connect(&node).map_err(|e| format!("connecting over TCP: {e}"))
}

fn measure(o: &Measure) -> Result<Value, String> {
    let mut settings = vec![
        ("interchange", "heartbeat_period_s", "5"),
        ("interchange", "heartbeat_threshold_s", "20"),
        ("servables.noop", "memoize", "false"),
        ("servables.noop", "max_batch_delay_ms", "0"),
    ];
    if o.transport == Transport::Tcp {
        settings.push(("daemon", "client_listen", "\"127.0.0.1:0\""));
    }
    let mut f = Flotilla::start(&flotilla_tests::config_with(&settings));
    f.spawn_worker(&["--slots", "2"]);
    f.wait_workers(1);
    let client = match o.transport {
        Transport::Ipc => f.client(),
        Transport::Tcp => tcp_client(&f)?,
    };

    for _ in 0..200 {
        client
            .run("noop", Payload::from_static(NIL), Some(BULK_WAIT))
            .map_err(|e| e.to_string())?;
    }
    let inputs = tasks(o.round_trips, 0)?;
    let mut samples = Vec::with_capacity(o.round_trips);
    let mut legs = Legs::default();
    for t in inputs {
        let started = Instant::now();
        let view = client
            .run("noop", t.input, Some(BULK_WAIT))
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        samples.push(took);
        if view.state != TaskState::Completed {
            return Err(format!("a round trip ended {:?}", view.state));
        }
        legs.add(took, &view.timings);
    }
    let latency = Latency::of(&mut samples);

    let mut rates = Vec::with_capacity(o.repeats);
    for r in 0..o.repeats {
        let batch = tasks(o.tasks, o.round_trips + r * o.tasks)?;
        let started = Instant::now();
        let views = client
            .run_all(batch, BULK_WAIT)
            .map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let done = views
            .iter()
            .filter(|v| v.state == TaskState::Completed)
            .count();
        if done != o.tasks {
            return Err(format!("{done} of {} bulk tasks completed", o.tasks));
        }
        rates.push(o.tasks as f64 / took.as_secs_f64());
    }
    let report = json!({
        "label": o.label,
        "transport": match o.transport {
            Transport::Ipc => "ipc",
            Transport::Tcp => "tcp",
        },
        "round_trip": latency.json(),
        "round_trip_legs_p50_us": legs.medians(),
        "throughput_tasks_per_s": rates.iter().map(|r| round(*r)).collect::<Vec<_>>(),
        "tasks": o.tasks,
    });
    println!(
        "{}: round trip p50 {:.0} µs, throughput {:.0} tasks/s",
        o.label,
        latency.p50_us,
        median(&rates)
    );
    Ok(report)
}

/// Where a round trip's time goes, from the task's own timestamps (all
/// taken on this machine's one clock): each leg's samples in µs.
#[derive(Default)]
struct Legs {
    samples: BTreeMap<&'static str, Vec<f64>>,
}

/// The legs in the order a round trip takes them.
const LEGS: [&str; 6] = [
    "client_and_api_transport",
    "daemon_accept_to_dispatch",
    "daemon_to_worker",
    "in_worker",
    "worker_to_daemon",
    "daemon_result_to_reply",
];

impl Legs {
    fn add(&mut self, took: Duration, t: &flotilla_protocol::task::TaskTimings) {
        let gap = |from: u64, to: u64| to.saturating_sub(from) as f64;
        let in_daemon = gap(t.submitted_us, t.replied_us);
        let legs = [
            (took.as_secs_f64() * 1e6 - in_daemon).max(0.0),
            gap(t.submitted_us, t.dispatched_us),
            gap(t.dispatched_us, t.worker_received_us),
            gap(t.worker_received_us, t.worker_sent_us),
            gap(t.worker_sent_us, t.result_received_us),
            gap(t.result_received_us, t.replied_us),
        ];
        for (name, value) in LEGS.iter().zip(legs) {
            self.samples.entry(name).or_default().push(value);
        }
    }

    fn medians(&self) -> Value {
        let mut out = serde_json::Map::new();
        for name in LEGS {
            if let Some(values) = self.samples.get(name) {
                out.insert(name.to_owned(), json!(round(median(values))));
            }
        }
        Value::Object(out)
    }
}

fn compare(args: &[String]) -> Result<(), String> {
    let name: String = value(args, "--out", String::from("interchange"))?;
    let files: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--out"))
        .map(|(_, a)| a)
        .collect();
    let mut by_label: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let run: Value = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        let label = run["label"].as_str().unwrap_or("?").to_owned();
        by_label.entry(label).or_default().push(run);
    }
    let mut rows = Vec::new();
    for (label, runs) in &by_label {
        let p50: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["round_trip"]["p50_us"].as_f64())
            .collect();
        let p99: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["round_trip"]["p99_us"].as_f64())
            .collect();
        let rates: Vec<f64> = runs
            .iter()
            .flat_map(|r| {
                r["throughput_tasks_per_s"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|v| v.as_f64())
            .collect();
        let mut legs = serde_json::Map::new();
        for leg in LEGS {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r["round_trip_legs_p50_us"][leg].as_f64())
                .collect();
            if !values.is_empty() {
                legs.insert(leg.to_owned(), json!(round(median(&values))));
            }
        }
        rows.push(json!({
            "label": label,
            "round_trip_legs_p50_us": legs,
            "rounds": runs.len(),
            "round_trip_p50_us": round(median(&p50)),
            "round_trip_p99_us": round(median(&p99)),
            "throughput_tasks_per_s": round(median(&rates)),
            "runs": runs,
        }));
    }
    println!(
        "{:<10} {:>6} {:>18} {:>18} {:>20}",
        "build", "rounds", "round trip p50", "round trip p99", "throughput"
    );
    for row in &rows {
        let num = |key: &str| row[key].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<10} {:>6} {:>15.0} µs {:>15.0} µs {:>12.0} tasks/s",
            row["label"].as_str().unwrap_or("?"),
            row["rounds"],
            num("round_trip_p50_us"),
            num("round_trip_p99_us"),
            num("throughput_tasks_per_s"),
        );
    }
    println!("round trip legs, µs (medians over the rounds of each run's p50):");
    println!("{:<10} {}", "build", LEGS.join(" | "));
    for row in &rows {
        let legs: Vec<String> = LEGS
            .iter()
            .map(|leg| {
                row["round_trip_legs_p50_us"][*leg]
                    .as_f64()
                    .map_or("-".to_owned(), |v| format!("{v:.0}"))
            })
            .collect();
        println!(
            "{:<10} {}",
            row["label"].as_str().unwrap_or("?"),
            legs.join(" | ")
        );
    }
    let find = |label: &str| rows.iter().find(|r| r["label"] == label);
    let mut verdicts = serde_json::Map::new();
    if let Some(base) = find("previous") {
        let num = |row: &Value, key: &str| row[key].as_f64().unwrap_or(f64::NAN);
        for row in rows.iter().filter(|r| r["label"] != "previous") {
            let label = row["label"].as_str().unwrap_or("?");
            let kept =
                100.0 * num(row, "throughput_tasks_per_s") / num(base, "throughput_tasks_per_s");
            let added = num(row, "round_trip_p50_us") - num(base, "round_trip_p50_us");
            println!(
                "{label} against previous: throughput {kept:.1}% of previous (goal: at least 90%), round trip p50 {added:+.0} µs (goal: at most +50 µs)"
            );
            verdicts.insert(
                label.to_owned(),
                json!({
                    "throughput_percent_of_previous": round(kept),
                    "round_trip_p50_added_us": round(added),
                }),
            );
        }
    }

    let report = json!({
        "figure": "interchange",
        "date": today(),
        "machine": machine(),
        "setup": "release builds of the commit before the secure interchange (previous, client over ipc) and of this tree (this-ipc: client over the ipc socket; this-tcp: client over the sealed TCP client API on 127.0.0.1 with a token, from a state directory holding only the contact file and the token), measured alternately in one run; one daemon with a durable store, one worker of 2 slots on loopback TCP, memo off; round trip: synchronous noop runs through the Rust client library one at a time; throughput: one submit-and-wait of N noop tasks",
        "builds": rows,
        "against_previous": verdicts,
    });
    let path = write_result(&format!("{name}.json"), &report).map_err(|e| e.to_string())?;
    println!("wrote {}", path.display());
    Ok(())
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("measure") => {
            let o = measure_options(&args[1..])?;
            let report = measure(&o)?;
            std::fs::write(&o.out, report.to_string())
                .map_err(|e| format!("{}: {e}", o.out.display()))
        }
        Some("compare") => compare(&args[1..]),
        _ => Err("usage: bench-interchange measure [--label L] [--out FILE] [--transport ipc|tcp] [--quick] | compare [--out NAME] FILE…".into()),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-interchange: {e}");
            ExitCode::FAILURE
        }
    }
}
