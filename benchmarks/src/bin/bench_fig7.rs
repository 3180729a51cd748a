//! The seed paper's Fig. 7: invocation time of two image models through
//! four systems on this machine.
//!
//! Models (`site-examples/servables/{cifar10,inception}-onnx`, built at
//! publication with random weights): a CIFAR-10-sized CNN (32×32×3) and an
//! Inception-v3-shaped network (299×299×3). Systems, all with the same
//! model file, 2 ONNX Runtime threads and the same session options:
//!
//! * **Flotilla, ONNX runtime**: the worker runs the model itself;
//! * **Flotilla, Python runtime**: the same model in a Python servable
//!   calling onnxruntime (`serve(predict, batched=True)`);
//! * **onnxruntime in-process**: `session.run` called directly in one
//!   Python process, the floor (`benchmarks/fig7.py floor`);
//! * **Ray Serve** with `@serve.batch`, one replica, called through a
//!   deployment handle (`benchmarks/fig7.py ray`), when `ray` imports.
//!
//! Flotilla runs a daemon and one worker with one slot (so one session of
//! 2 threads, the machine's cores); requests go through the Rust client
//! library, images packed as float32 bytes, memoization off, no batching
//! delay. Measures: **batch 1**, the p50 of single requests one after
//! another (round trip through the daemon and back); **b at once**, b
//! requests submitted together and waited for together (which the daemon
//! makes one model call of up to `max_batch_size`), time ÷ b, median of
//! repetitions. The Flotilla `noop` round trip is measured in the same run
//! for the batch-1 target. For CIFAR-10 both Flotilla runtimes are also
//! measured with 64 images as nested lists, and through the Python client
//! with numpy images (`benchmarks/fig7.py client`, which sends them as
//! nested lists), the way a Python user calls them.
//!
//! Usage: `bench-fig7 [--quick] [--no-ray]`; writes
//! `benchmarks/results/fig7.{json,png}`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_benchmarks::plot::{Panel, Series, log_log_panels};
use flotilla_benchmarks::{Latency, machine, median, results_dir, today, write_result};
use flotilla_client::Client;
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{TaskState, TaskView};
use flotilla_tests::{Flotilla, config_with, workspace};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(900);

struct Model {
    /// Short name, in figures.
    name: &'static str,
    /// The example servable.
    example: &'static str,
    side: usize,
    batches: Vec<usize>,
    max_batch: usize,
    singles: usize,
    reps: usize,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-fig7: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn python() -> PathBuf {
    std::env::var_os("FLOTILLA_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python3"))
}

/// Runs `python -c code` and returns its trimmed stdout.
fn python_says(code: &str) -> Result<String, String> {
    let out = Command::new(python())
        .args(["-c", code])
        .output()
        .map_err(|e| format!("{}: {e}", python().display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One random float32 image, channels last, as a packed ndarray (msgpack
/// binary of its little-endian bytes).
fn packed_image(side: usize, seed: u64) -> Payload {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let n = side * side * 3 * 4;
    let mut out = Vec::with_capacity(n + 5);
    out.push(0xc6);
    out.extend_from_slice(&(n as u32).to_be_bytes());
    for _ in 0..side * side * 3 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = (state >> 40) as f32 / (1u64 << 24) as f32;
        out.extend_from_slice(&x.to_le_bytes());
    }
    Payload::from(out)
}

/// One random float32 image, channels last, as nested msgpack lists of
/// float32 numbers (what a client that does not pack writes).
fn nested_image(side: usize, seed: u64) -> Payload {
    let packed = packed_image(side, seed);
    let floats: Vec<f32> = packed[5..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut out = Vec::with_capacity(floats.len() * 5 + 64);
    let array = |out: &mut Vec<u8>, n: usize| {
        if n < 16 {
            out.push(0x90 | n as u8);
        } else {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    };
    array(&mut out, side);
    for row in floats.chunks(side * 3) {
        array(&mut out, side);
        for px in row.chunks(3) {
            array(&mut out, 3);
            for x in px {
                out.push(0xca);
                out.extend_from_slice(&x.to_be_bytes());
            }
        }
    }
    Payload::from(out)
}

/// p50 of `n` single requests one after another, after 3 warm-up ones.
fn singles(
    client: &Client,
    servable: &str,
    inputs: &[Payload],
    n: usize,
) -> Result<Latency, String> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let t = Instant::now();
        let view = client
            .run(servable, inputs[i % inputs.len()].clone(), Some(WAIT))
            .map_err(|e| e.to_string())?;
        if view.state != TaskState::Completed {
            return Err(format!("{servable}: {:?}", view.outcome));
        }
        if i >= 3 {
            times.push(t.elapsed());
        }
    }
    Ok(Latency::of(&mut times))
}

/// Submits `tasks` together and waits for all of them (the client splits
/// a submission over the daemon's frame limit: 64 Inception images are
/// 69 MB).
fn submit_and_wait(client: &Client, tasks: Vec<TaskRequest>) -> Result<Vec<TaskView>, String> {
    client.run_all(tasks, WAIT).map_err(|e| e.to_string())
}

/// Median ms per request of `b` requests at once.
fn at_once(
    client: &Client,
    servable: &str,
    inputs: &[Payload],
    b: usize,
    reps: usize,
) -> Result<f64, String> {
    let mut samples = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let tasks: Vec<TaskRequest> = (0..b)
            .map(|i| TaskRequest {
                servable: servable.into(),
                input: inputs[(rep * b + i) % inputs.len()].clone(),
                params: Payload::new(),
            })
            .collect();
        let t = Instant::now();
        let views = submit_and_wait(client, tasks)?;
        let elapsed = t.elapsed();
        if let Some(bad) = views.iter().find(|v| v.state != TaskState::Completed) {
            return Err(format!(
                "{servable}: task ended {} ({:?})",
                bad.state, bad.outcome
            ));
        }
        if rep > 0 {
            samples.push(elapsed.as_secs_f64() * 1e3 / b as f64);
        }
    }
    Ok(median(&samples))
}

/// The published object of `servable`'s `model.onnx`.
fn model_object(f: &Flotilla, servable: &str) -> Result<PathBuf, String> {
    let out = f.cli(&["servable", "show", servable, "--json"]);
    let shown: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let hash = shown["files"][0]["blake3"]
        .as_str()
        .ok_or_else(|| format!("{servable} has no files: {shown}"))?;
    Ok(f.home().join("objects").join(hash))
}

/// A Python servable running `model` with onnxruntime, in `dir`.
fn python_servable(dir: &Path, name: &str, model: &Path, m: &Model) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::copy(model, dir.join("model.onnx")).map_err(|e| e.to_string())?;
    let side = m.side;
    std::fs::write(
        dir.join("serve.py"),
        format!(
            r#"import numpy as np
import onnxruntime as ort
from flotilla_servable import serve

options = ort.SessionOptions()
options.intra_op_num_threads = 2
options.inter_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession("model.onnx", options, providers=["CPUExecutionProvider"])


def image(x):
    if isinstance(x, (bytes, bytearray)):
        return np.frombuffer(x, dtype="<f4").reshape({side}, {side}, 3)
    return np.asarray(x, dtype=np.float32)


def predict(images):
    batch = np.stack([image(x) for x in images])
    return session.run(None, {{"images": batch}})[0].tolist()


serve(predict, batched=True)
"#
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("servable.toml"),
        format!(
            r#"name = "{name}"
version = "1.0.0"
title = "{name}: the ONNX model in a Python servable calling onnxruntime"
license = "Apache-2.0"
model_type = "onnx"
files = ["serve.py", "model.onnx"]

[input]
kind = "ndarray"
dtype = "float32"
shape = [{side}, {side}, 3]

[output]
kind = "any"

[runtime]
kind = "exec"
command = "python3"
args = ["serve.py"]

[options]
max_batch_size = {}
validate_input = true
"#,
            m.max_batch
        ),
    )
    .map_err(|e| e.to_string())
}

/// Runs `fig7.py` with `args` (the system first) and returns the JSON
/// object it prints last.
fn run_fig7_py(args: &[std::ffi::OsString]) -> Result<Value, String> {
    let system = args
        .first()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let out = Command::new(python())
        .arg(workspace().join("benchmarks/fig7.py"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "fig7.py {system}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("fig7.py {system}: {e}: {text}"))
}

/// `fig7.py SYSTEM` for `m`: its JSON.
fn fig7_py(system: &str, model: &Path, m: &Model) -> Result<Value, String> {
    let batches: Vec<String> = m.batches.iter().map(ToString::to_string).collect();
    run_fig7_py(&[
        system.into(),
        model.into(),
        m.side.to_string().into(),
        "--batches".into(),
        batches.join(",").into(),
        "--singles".into(),
        m.singles.to_string().into(),
        "--reps".into(),
        m.reps.to_string().into(),
        "--max-batch".into(),
        m.max_batch.to_string().into(),
    ])
}

/// `fig7.py client`: `servables` of the daemon at `home` through the
/// Python client with numpy images (which it sends as nested lists):
/// per servable, the batch-1 p50 and ms per request at 64 at once.
fn python_client(home: &Path, servables: &[&str], m: &Model) -> Result<Vec<(f64, f64)>, String> {
    let v = run_fig7_py(&[
        "client".into(),
        servables.join(",").into(),
        m.side.to_string().into(),
        "--batches".into(),
        "64".into(),
        "--singles".into(),
        m.singles.to_string().into(),
        "--reps".into(),
        m.reps.to_string().into(),
        "--home".into(),
        home.into(),
    ])?;
    Ok(servables
        .iter()
        .map(|s| {
            let row = &v["servables"][*s];
            (
                row["batch1_ms"].as_f64().unwrap_or(f64::NAN),
                row["per_request_ms"]["64"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect())
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let ray = !args.iter().any(|a| a == "--no-ray");
    if let Some(other) = args.iter().find(|a| *a != "--quick" && *a != "--no-ray") {
        return Err(format!(
            "unknown option {other}; usage: bench-fig7 [--quick] [--no-ray]"
        ));
    }
    let rounds = if quick { 1 } else { 3 };
    let models = [
        Model {
            name: "CIFAR-10 CNN",
            example: "cifar10-onnx",
            side: 32,
            batches: if quick {
                vec![1, 8, 64]
            } else {
                vec![1, 4, 16, 64, 256]
            },
            max_batch: 256,
            singles: if quick { 100 } else { 500 },
            reps: if quick { 3 } else { 9 },
        },
        Model {
            name: "Inception v3 shape",
            example: "inception-onnx",
            side: 299,
            batches: if quick {
                vec![1, 8]
            } else {
                vec![1, 4, 16, 64]
            },
            max_batch: 64,
            singles: if quick { 10 } else { 40 },
            reps: if quick { 2 } else { 3 },
        },
    ];
    let library = python_says(
        "import glob, os, onnxruntime; d = os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'); print(sorted(glob.glob(os.path.join(d, 'libonnxruntime.so*')))[0])",
    )
    .map_err(|e| format!("onnxruntime is not installed for {}: {e}", python().display()))?;
    let ray_version = if ray {
        match python_says("import ray, ray.serve; print(ray.__version__)") {
            Ok(v) => Some(v),
            Err(_) => {
                println!(
                    "ray[serve] does not import for {}: Ray Serve left out",
                    python().display()
                );
                None
            }
        }
    } else {
        None
    };

    let settings: Vec<(&str, &str, &str)> = vec![
        ("interchange", "heartbeat_period_s", "5"),
        ("interchange", "heartbeat_threshold_s", "60"),
    ];
    let mut f = Flotilla::start(&config_with(&settings));
    f.spawn_worker_env(
        &["--slots", "1"],
        &[("FLOTILLA_ONNXRUNTIME", library.clone().into())],
    );
    f.wait_workers(1);
    let client = f.client();
    let noop = singles(&client, "noop", &[Payload::from_static(&[0xc0])], 1000)?;
    println!(
        "fig7: Flotilla noop round trip p50 {:.3} ms (warm-up)",
        noop.p50_us / 1e3
    );

    let systems = [
        "Flotilla ONNX runtime",
        "Flotilla Python runtime",
        "onnxruntime in-process (Python)",
        "Ray Serve @serve.batch",
    ];
    let mut report = serde_json::Map::new();
    let mut panels = Vec::new();
    for m in &models {
        f.publish(&workspace().join("site-examples/servables").join(m.example))?;
        let model = model_object(&f, m.example)?;
        let py_name = format!("{}-py", m.example.trim_end_matches("-onnx"));
        let py_dir = f.home().join("fig7").join(&py_name);
        python_servable(&py_dir, &py_name, &model, m)?;
        f.publish(&py_dir)?;
        let inputs: Vec<Payload> = (0..m.max_batch.min(64) as u64)
            .map(|i| packed_image(m.side, i + 1))
            .collect();
        for servable in [m.example, py_name.as_str()] {
            // Load the model (and start the process) before timing.
            at_once(&client, servable, &inputs, m.max_batch.min(8), 1)?;
        }
        let mut pythons = vec![(systems[2], "floor")];
        if ray_version.is_some() {
            pythons.push((systems[3], "ray"));
        }
        // The systems take turns, `rounds` times; each figure is the median
        // over rounds, so a burst of load elsewhere on the machine lands on
        // one turn of one system, not on all of a system's figures.
        let mut turns: Vec<(String, Vec<f64>, Vec<Vec<f64>>)> = Vec::new();
        let mut noops = Vec::new();
        let mut carrieds = Vec::new();
        let mut nested: Vec<(String, Vec<f64>)> = Vec::new();
        // Through the Python client: (batch 1, 64 at once) per round, for
        // the ONNX servable and the Python one.
        let mut via_python: Vec<[(f64, f64); 2]> = Vec::new();
        let nested_inputs: Vec<Payload> = if m.side <= 32 {
            (0..64u64).map(|i| nested_image(m.side, i + 1)).collect()
        } else {
            Vec::new()
        };
        for round in 0..rounds {
            noops.push(
                singles(&client, "noop", &[Payload::from_static(&[0xc0])], 200)?.p50_us / 1e3,
            );
            // Flotilla's round trip carrying this model's input: `noop`
            // ignores it, so this is the messaging and storing of one request.
            carrieds.push(singles(&client, "noop", &inputs, m.singles.max(50))?.p50_us / 1e3);
            let mut measured: Vec<(&str, f64, Vec<f64>)> = Vec::new();
            for (system, servable) in [(systems[0], m.example), (systems[1], py_name.as_str())] {
                let one = singles(&client, servable, &inputs, m.singles)?.p50_us / 1e3;
                let mut per = Vec::new();
                for &b in &m.batches {
                    per.push(at_once(&client, servable, &inputs, b, m.reps)?);
                }
                if !nested_inputs.is_empty() {
                    let ms = at_once(&client, servable, &nested_inputs, 64, m.reps)?;
                    match nested.iter_mut().find(|n| n.0 == system) {
                        Some(n) => n.1.push(ms),
                        None => nested.push((system.to_owned(), vec![ms])),
                    }
                }
                measured.push((system, one, per));
            }
            if !nested_inputs.is_empty() {
                let both = python_client(f.home(), &[m.example, py_name.as_str()], m)?;
                via_python.push([both[0], both[1]]);
            }
            for (system, which) in &pythons {
                let v = match fig7_py(which, &model, m) {
                    Ok(v) => v,
                    // Ray is a peer measured if it runs here; a round it
                    // fails in is left out and said so, the rest stands.
                    Err(e) if *which == "ray" => {
                        let last = e
                            .lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or_default();
                        println!(
                            "  {:<20} round {round}: Ray Serve failed, left out of this round: {last}",
                            m.name
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let one = v["batch1_ms"].as_f64().unwrap_or(f64::NAN);
                let per: Vec<f64> = m
                    .batches
                    .iter()
                    .map(|b| {
                        v["per_request_ms"][b.to_string()]
                            .as_f64()
                            .unwrap_or(f64::NAN)
                    })
                    .collect();
                measured.push((system, one, per));
            }
            for (system, one, per) in measured {
                println!(
                    "  {:<20} round {round}: {:<32} batch 1 p50 {:>9.3} ms; per request at {:?}: {:?}",
                    m.name,
                    system,
                    one,
                    m.batches,
                    per.iter()
                        .map(|x| (x * 1e3).round() / 1e3)
                        .collect::<Vec<_>>()
                );
                match turns.iter_mut().find(|t| t.0 == system) {
                    Some(t) => {
                        t.1.push(one);
                        t.2.push(per);
                    }
                    None => turns.push((system.to_owned(), vec![one], vec![per])),
                }
            }
        }
        let noop_ms = median(&noops);
        let carried_ms = median(&carrieds);
        println!(
            "  {:<20} noop round trip p50 {noop_ms:.3} ms, carrying one {}×{}×3 image {carried_ms:.3} ms (medians over rounds)",
            m.name, m.side, m.side
        );
        let rows: Vec<(String, f64, Vec<f64>)> = turns
            .iter()
            .map(|(system, ones, pers)| {
                let per = (0..m.batches.len())
                    .map(|i| median(&pers.iter().map(|p| p[i]).collect::<Vec<_>>()))
                    .collect();
                (system.clone(), median(ones), per)
            })
            .collect();
        for (system, one, per) in &rows {
            println!(
                "  {:<20} {:<32} batch 1 p50 {:>9.3} ms; per request at {:?}: {:?} (medians over rounds)",
                m.name,
                system,
                one,
                m.batches,
                per.iter()
                    .map(|x| (x * 1e3).round() / 1e3)
                    .collect::<Vec<_>>()
            );
        }
        let nested: Vec<(String, f64)> =
            nested.iter().map(|(s, v)| (s.clone(), median(v))).collect();
        for (system, ms) in &nested {
            println!(
                "  {:<20} {:<32} 64 at once as nested lists: {:.3} ms per request",
                m.name, system, ms
            );
        }
        let via_python: Vec<Value> = (0..via_python.first().map_or(0, |r| r.len()))
            .map(|i| {
                let one = median(&via_python.iter().map(|r| r[i].0).collect::<Vec<_>>());
                let at_64 = median(&via_python.iter().map(|r| r[i].1).collect::<Vec<_>>());
                println!(
                    "  {:<20} {:<32} through the Python client (numpy images): batch 1 p50 {one:.3} ms, 64 at once {at_64:.3} ms per request",
                    m.name, systems[i]
                );
                json!({ "system": systems[i], "batch1_p50_ms": one, "ms_per_request_64": at_64 })
            })
            .collect();
        let find = |s: &str| rows.iter().find(|r| r.0 == s);
        let at = |row: Option<&(String, f64, Vec<f64>)>, b: usize| {
            let i = m.batches.iter().position(|x| *x == b)?;
            row.map(|r| r.2[i])
        };
        let onnx = find(systems[0]);
        let py = find(systems[1]);
        let floor = find(systems[2]);
        let rayr = find(systems[3]);
        let (target_b1, with_input) = match (onnx, floor) {
            (Some(o), Some(fl)) => (o.1 / (fl.1 + noop_ms), o.1 / (fl.1 + carried_ms)),
            _ => (f64::NAN, f64::NAN),
        };
        let rps = |ms: Option<f64>| ms.map(|ms| 1e3 / ms);
        let onnx64 = rps(at(onnx, 64));
        let py64 = rps(at(py, 64));
        let ray64 = rps(at(rayr, 64));
        println!(
            "  {:<20} batch 1: ONNX servable ÷ (in-process + noop round trip) = {:.2} (target ≤ 1.3), ÷ (in-process + noop carrying the image) = {:.2}; batch 64: ONNX {:.1} req/s, Python runtime {:.1} req/s ({:.2}×, target ≥ 3), Ray Serve {} req/s",
            m.name,
            target_b1,
            with_input,
            onnx64.unwrap_or(f64::NAN),
            py64.unwrap_or(f64::NAN),
            onnx64.zip(py64).map_or(f64::NAN, |(a, b)| a / b),
            ray64.map_or("-".to_owned(), |r| format!("{r:.1}"))
        );
        let best = |r: &(String, f64, Vec<f64>)| {
            let (i, ms) =
                r.2.iter()
                    .enumerate()
                    .min_by(|a, b| a.1.total_cmp(b.1))
                    .map(|(i, ms)| (i, *ms))
                    .unwrap_or((0, f64::NAN));
            json!({ "batch": m.batches[i], "ms_per_request": ms })
        };
        report.insert(
            m.example.to_owned(),
            json!({
                "model": m.name,
                "input": format!("{}x{}x3 float32, packed", m.side, m.side),
                "batches": m.batches,
                "rounds": rounds,
                "nested_lists_64_at_once_ms_per_request": nested.iter().map(|(s, ms)| json!({ "system": s, "ms": ms })).collect::<Vec<_>>(),
                "python_client_numpy_images": via_python,
                "systems": rows.iter().map(|r| json!({
                    "system": r.0,
                    "batch1_p50_ms": r.1,
                    "ms_per_request": r.2,
                    "best": best(r),
                })).collect::<Vec<_>>(),
                "targets": {
                    "batch1_onnx_over_inprocess_plus_noop": target_b1,
                    "batch1_onnx_over_inprocess_plus_noop_carrying_the_input": with_input,
                    "noop_round_trip_p50_ms": noop_ms,
                    "noop_carrying_the_input_p50_ms": carried_ms,
                    "batch64_rps": { "onnx": onnx64, "python": py64, "ray_serve": ray64 },
                    "batch64_onnx_over_python": onnx64.zip(py64).map(|(a, b)| a / b),
                    "batch64_onnx_over_ray": onnx64.zip(ray64).map(|(a, b)| a / b),
                },
            }),
        );
        panels.push(Panel {
            title: format!("{} ({}×{}×3)", m.name, m.side, m.side),
            x_label: "requests at once (batch)".into(),
            y_label: "ms per request".into(),
            series: rows
                .iter()
                .map(|r| Series {
                    name: r.0.clone(),
                    points: m
                        .batches
                        .iter()
                        .zip(&r.2)
                        .map(|(b, ms)| (*b as f64, *ms))
                        .collect(),
                })
                .collect(),
            reference: Vec::new(),
            legend: plotters::prelude::SeriesLabelPosition::UpperRight,
        });
    }
    let png = results_dir().join("fig7.png");
    log_log_panels(
        &png,
        "Invocation time per request (Fig. 7), random-weight models",
        &panels,
    )?;
    let versions =
        python_says("import onnxruntime; print(onnxruntime.__version__)").unwrap_or_default();
    let path = write_result(
        "fig7.json",
        &json!({
            "benchmark": "fig7",
            "date": today(),
            "machine": machine(),
            "setup": "release build; daemon + 1 worker with 1 slot (one ONNX Runtime session of 2 threads); Python runtime: onnxruntime in a batched Python servable (2 threads); floor: session.run in one Python process (2 threads); Ray Serve: one replica, @serve.batch(max_batch_size = the servable's), called through a deployment handle; all sessions with idle threads sleeping (allow_spinning 0); images packed float32; memo off; no batching delay; 'b at once' = b requests submitted together, time / b, median of repetitions; batch 1 = p50 of single requests one after another; the systems take turns, each figure the median over rounds",
            "onnxruntime": versions,
            // Where the library lies in the workspace, not on this machine.
            // (`workspace()` ends in `tests/..`, so both sides are resolved.)
            "onnxruntime_library": std::fs::canonicalize(&library)
                .ok()
                .zip(std::fs::canonicalize(workspace()).ok())
                .and_then(|(lib, root)| lib.strip_prefix(root).ok().map(|p| p.display().to_string()))
                .unwrap_or_else(|| library.clone()),
            "ray": ray_version,
            "noop_round_trip": noop.json(),
            "models": report,
            "plot": "fig7.png",
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("results: {} and {}", path.display(), png.display());
    Ok(())
}
