//! Peers benchmark: Flotilla beside Parsl and Dask on this machine.
//!
//! Runs `benchmarks/peers.py` with the workspace's `.venv` interpreter (it
//! must have Parsl and Dask: `FLOTILLA_BENCH_PEERS=1 . scripts/python-env.sh`)
//! against the release binaries in `target/release`, then draws
//! `benchmarks/results/peers.png` from the `peers.json` it wrote: one bar
//! chart per measure (round trip p50 and p99, bulk throughput, 10 ms sleeps'
//! completion time and efficiency, cold start), each engine a bar, the
//! ratios Flotilla ÷ Parsl and Flotilla ÷ Dask under each title (a log
//! scale where the engines differ by more than 30×).
//!
//! Usage: `bench-peers [--quick] [peers.py options]`; every argument goes
//! to `peers.py` (see `peers.py --help`), except `--out`, which this binary
//! does not support (it draws `results/peers.json`). `bench-peers
//! --plot-only` redraws the chart from the existing `results/peers.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use flotilla_benchmarks::plot::{BarPanel, bar_panels};
use flotilla_benchmarks::results_dir;
use serde_json::Value;

/// The rows of the report, as `peers.py` names them, and their legend text.
const ROWS: [(&str, &str); 4] = [
    ("flotilla", "Flotilla (builtin, Rust)"),
    ("flotilla-py", "Flotilla (Python servable)"),
    ("parsl", "Parsl HTEX"),
    ("dask", "Dask distributed"),
];

/// The measures drawn, in order, as `peers.py` names them.
const MEASURES: [&str; 6] = [
    "round_trip_p50_ms",
    "round_trip_p99_ms",
    "bulk_tasks_per_s",
    "sleep_seconds",
    "sleep_efficiency",
    "cold_start_s",
];

/// The command that makes a `.venv` with everything `peers.py` needs.
const VENV_COMMAND: &str = "FLOTILLA_BENCH_PEERS=1 . scripts/python-env.sh";

fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The `.venv` interpreter, checked to import the client and both peers.
fn python(root: &Path) -> Result<PathBuf, String> {
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} is missing; make it with `{VENV_COMMAND}` in the workspace root",
            python.display()
        ));
    }
    let check = Command::new(&python)
        .args(["-c", "import parsl, dask, distributed, pynng, msgpack"])
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !check.status.success() {
        return Err(format!(
            "the workspace's .venv lacks Parsl or Dask ({}); install them with \
             `{VENV_COMMAND}` in the workspace root",
            String::from_utf8_lossy(&check.stderr)
                .lines()
                .last()
                .unwrap_or("import failed")
        ));
    }
    Ok(python)
}

/// Runs `peers.py` with `args`, the venv's bin directory first on PATH
/// (Parsl's workers run `process_worker_pool.py`, Python servables
/// `python3`, both from there).
fn run_peers(root: &Path, python: &Path, args: &[String]) -> Result<(), String> {
    for name in ["flotilla", "flotilla-worker"] {
        if !root.join("target/release").join(name).is_file() {
            return Err(format!(
                "target/release/{name} is missing: cargo build --release -p flotilla-cli \
                 -p flotilla-worker"
            ));
        }
    }
    let bin = root.join(".venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
        .map_err(|e| format!("PATH: {e}"))?;
    let status = Command::new(python)
        .arg(root.join("benchmarks/peers.py"))
        .args(args)
        .current_dir(root)
        .env("PATH", path)
        .status()
        .map_err(|e| format!("peers.py: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("peers.py failed ({status})"))
    }
}

/// The median of `row` for measure `m`, if it has one.
fn median(m: &Value, row: &str) -> Option<f64> {
    m["median"][row].as_f64()
}

/// `x` with three significant digits.
fn sig3(x: f64) -> String {
    let digits = if x == 0.0 {
        0
    } else {
        (2 - x.abs().log10().floor() as i32).max(0) as usize
    };
    format!("{x:.digits$}")
}

/// "Flotilla ÷ Parsl 0.123, ÷ Dask 0.0456" for one Flotilla row of measure `m`.
fn ratio_note(m: &Value, mine: &str, label: &str) -> Option<String> {
    let parsl = m["ratios"][format!("{mine}/parsl")].as_f64()?;
    let dask = m["ratios"][format!("{mine}/dask")].as_f64()?;
    Some(format!(
        "{label} ÷ Parsl {}, ÷ Dask {}",
        sig3(parsl),
        sig3(dask)
    ))
}

/// The ideal completion time of the sleep tasks, as a note for that panel.
fn ideal(report: &Value, key: &str) -> Option<String> {
    if key != "sleep_seconds" {
        return None;
    }
    let settings = &report["settings"];
    let tasks = settings["sleep_tasks"].as_f64()?;
    let sleep = settings["sleep_s"].as_f64()?;
    let workers = settings["workers"].as_f64()?;
    Some(format!(
        "ideal: {tasks} × {sleep} s / {workers} workers = {} s",
        sig3(tasks * sleep / workers)
    ))
}

/// One panel per measure of `report` (`peers.json`); a log scale where the
/// engines' values span more than a factor of 30.
fn panels(report: &Value) -> Result<Vec<BarPanel>, String> {
    MEASURES
        .iter()
        .map(|key| {
            let m = &report["measures"][*key];
            let label = m["label"]
                .as_str()
                .ok_or_else(|| format!("peers.json: measure {key} is missing"))?;
            let unit = m["unit"].as_str().unwrap_or("");
            let better = m["better"].as_str().unwrap_or("");
            let values: Vec<Option<f64>> = ROWS.iter().map(|(row, _)| median(m, row)).collect();
            let present = values.iter().flatten().copied().filter(|v| *v > 0.0);
            let low = present.clone().fold(f64::INFINITY, f64::min);
            let high = present.fold(0.0f64, f64::max);
            let log_y = high > 30.0 * low;
            Ok(BarPanel {
                title: format!(
                    "{label} ({better} is better{})",
                    if log_y { ", log scale" } else { "" }
                ),
                notes: [("flotilla", "Flotilla"), ("flotilla-py", "Flotilla (Py)")]
                    .iter()
                    .filter_map(|(row, name)| ratio_note(m, row, name))
                    .chain(ideal(report, key))
                    .collect(),
                y_label: unit.to_owned(),
                log_y,
                groups: vec![String::new()],
                values: vec![values],
            })
        })
        .collect()
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "--out" || a.starts_with("--out=") || a == "--cold")
    {
        return Err("bench-peers draws results/peers.json; run peers.py itself for --out".into());
    }
    let root = workspace();
    if args.iter().any(|a| a == "--plot-only") {
        if args.len() > 1 {
            return Err("--plot-only takes no other arguments".into());
        }
    } else {
        let python = python(&root)?;
        run_peers(&root, &python, &args)?;
    }

    let json = results_dir().join("peers.json");
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let report: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let settings = &report["settings"];
    let title = format!(
        "Flotilla, Parsl and Dask, {} workers each: medians of {} round(s), {} ({})",
        settings["workers"],
        settings["rounds"],
        report["machine"]["cpus"]
            .as_u64()
            .map_or("?".into(), |n| format!("{n} cores")),
        report["mode"].as_str().unwrap_or("?"),
    );
    let variants: Vec<String> = ROWS.iter().map(|(_, name)| (*name).to_owned()).collect();
    let png = results_dir().join("peers.png");
    bar_panels(&png, &title, &variants, &panels(&report)?, 3)?;
    println!("drew {}", png.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-peers: {e}");
            ExitCode::FAILURE
        }
    }
}
