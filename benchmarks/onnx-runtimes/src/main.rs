//! Times tract and ONNX Runtime on the same models, batch by batch, with
//! the same number of threads, and prints one JSON object per measurement.
//!
//! ```sh
//! cargo run --release -- --ort-lib PATH/libonnxruntime.so.X --threads 2 \
//!     cifar10=cifar10.onnx:32:1,8,64 inception=inception.onnx:299:1,4
//! ```
//!
//! Each model is given as `NAME=FILE:SIDE:BATCHES` (input N×SIDE×SIDE×3,
//! float32). Per runtime and batch: load time (parse, optimise, ready to
//! run), then the median of repeated calls on the same random input after
//! one warm-up call; the first output row of both runtimes is compared.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

struct Model {
    name: String,
    file: PathBuf,
    side: usize,
    batches: Vec<usize>,
}

fn parse_model(arg: &str) -> Result<Model> {
    let (name, rest) = arg.split_once('=').context("NAME=FILE:SIDE:BATCHES")?;
    let mut parts = rest.rsplitn(3, ':');
    let batches = parts.next().context("BATCHES")?;
    let side = parts.next().context("SIDE")?.parse()?;
    let file = PathBuf::from(parts.next().context("FILE")?);
    let batches = batches
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<usize>, _>>()?;
    Ok(Model {
        name: name.into(),
        file,
        side,
        batches,
    })
}

/// Pseudo-random input in [0, 1), the same for both runtimes.
fn input(len: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Runs `call` until `budget` is spent (at least 3, at most 200 times)
/// after one warm-up call; the median.
fn median(budget: Duration, mut call: impl FnMut() -> Result<()>) -> Result<Duration> {
    call()?;
    let start = Instant::now();
    let mut times = Vec::new();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        call()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn ort_runs(
    env: &ort::environment::Environment,
    m: &Model,
    threads: usize,
    budget: Duration,
) -> Result<Vec<(usize, Duration, Duration, Vec<f32>)>> {
    use ort::session::Session;
    use ort::session::builder::GraphOptimizationLevel;
    use ort::value::TensorRef;
    let t = Instant::now();
    let mut session = Session::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(threads)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_file(&m.file)?;
    let load = t.elapsed();
    let mut out = Vec::new();
    for &b in &m.batches {
        let data = input(b * m.side * m.side * 3);
        let shape = [b, m.side, m.side, 3];
        let mut first = Vec::new();
        let time = median(budget, || {
            let outputs = session.run(ort::inputs![TensorRef::from_array_view((
                shape,
                &data[..]
            ))?])?;
            let (_, y) = outputs[0].try_extract_tensor::<f32>()?;
            first = y[..5].to_vec();
            Ok(())
        })?;
        out.push((b, load, time, first));
    }
    Ok(out)
}

fn tract_runs(m: &Model, budget: Duration) -> Result<Vec<(usize, Duration, Duration, Vec<f32>)>> {
    use tract_onnx::prelude::*;
    let mut out = Vec::new();
    for &b in &m.batches {
        // tract runs fastest on a plan made for one input shape, so each
        // batch size is its own plan; the load time is that plan's.
        let t = Instant::now();
        let plan = tract_onnx::onnx()
            .model_for_path(&m.file)?
            .with_input_fact(0, f32::fact([b, m.side, m.side, 3]).into())?
            .into_optimized()?
            .into_runnable()?;
        let load = t.elapsed();
        let data = input(b * m.side * m.side * 3);
        let tensor: Tensor =
            tract_ndarray::Array4::from_shape_vec((b, m.side, m.side, 3), data)?.into();
        let mut first = Vec::new();
        let time = median(budget, || {
            let result = plan.run(tvec!(tensor.clone().into()))?;
            let y = result[0].to_plain_array_view::<f32>()?;
            first = y.iter().take(5).copied().collect();
            Ok(())
        })?;
        out.push((b, load, time, first));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut ort_lib = None;
    let mut threads = 1;
    let mut budget = Duration::from_secs(3);
    let mut models = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ort-lib" => ort_lib = Some(PathBuf::from(args.next().context("--ort-lib PATH")?)),
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--budget-s" => {
                budget = Duration::from_secs_f64(args.next().context("--budget-s S")?.parse()?)
            }
            m => models.push(parse_model(m)?),
        }
    }
    let Some(lib) = ort_lib else {
        bail!("--ort-lib PATH (libonnxruntime.so from the onnxruntime wheel) is required")
    };
    let env = ort::init_from(&lib)?.with_name("bench").build()?;
    // tract's matrix products run on this many threads.
    tract_onnx::prelude::multithread::set_default_executor(
        tract_onnx::prelude::multithread::Executor::multithread(threads),
    );
    for m in &models {
        let runs = [
            ("ort", ort_runs(&env, m, threads, budget)?),
            ("tract", tract_runs(m, budget)?),
        ];
        for (runtime, rows) in runs {
            for (batch, load, time, first) in rows {
                println!(
                    "{}",
                    serde_json::json!({
                        "model": m.name, "runtime": runtime, "threads": threads, "batch": batch,
                        "load_ms": load.as_secs_f64() * 1e3,
                        "batch_ms": time.as_secs_f64() * 1e3,
                        "per_item_ms": time.as_secs_f64() * 1e3 / batch as f64,
                        "first_outputs": first,
                    })
                );
            }
        }
    }
    Ok(())
}
