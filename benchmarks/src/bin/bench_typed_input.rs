//! How long the daemon takes to check one input against a servable's
//! declared type (`validate_input`), which it does for every request
//! before accepting it: the streaming pass that accepts well-typed inputs
//! (`flotilla_protocol::servable::check_input`) against the check that
//! decodes the input into a value tree first (`check_input_by_value`, the
//! one that words errors). Inputs: images as nested lists (what a client
//! that does not pack sends), a packed image, a list of numbers and a dict.
//! Then whole submissions of CIFAR-10 images as nested lists, checked one
//! after another against `first_mismatch` (which spreads a submission of
//! over `PARALLEL_CHECK_BYTES` over rayon's threads). The checks take
//! turns in rounds; each figure is the median over rounds.
//!
//! Usage: `bench-typed-input [--quick]`; writes `results/typed-input.json`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use flotilla_benchmarks::{machine, median, round, today, write_result};
use flotilla_protocol::servable::{
    PARALLEL_CHECK_BYTES, TypeSpec, check_input, check_input_by_value, first_mismatch,
};
use rmpv::Value;
use serde_json::json;

/// One kind of input and the type it is checked against.
struct Case {
    name: &'static str,
    spec: TypeSpec,
    input: Vec<u8>,
}

fn ndarray(dtype: &str, shape: &[i64]) -> TypeSpec {
    TypeSpec::Ndarray {
        dtype: dtype.into(),
        shape: shape.to_vec(),
        description: String::new(),
    }
}

fn encode(v: &Value) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).map_err(|e| e.to_string())?;
    Ok(out)
}

/// A `side`×`side`×3 image of float32 numbers as nested lists.
fn nested_image(side: usize) -> Value {
    let px = |i: usize| Value::F32((i % 255) as f32 / 255.0);
    Value::Array(
        (0..side)
            .map(|r| {
                Value::Array(
                    (0..side)
                        .map(|c| Value::Array((0..3).map(|k| px(r * side + c + k)).collect()))
                        .collect(),
                )
            })
            .collect(),
    )
}

fn cases() -> Result<Vec<Case>, String> {
    let d = String::new;
    let composition = TypeSpec::Dict {
        properties: BTreeMap::from([
            (
                "composition".to_owned(),
                TypeSpec::String { description: d() },
            ),
            (
                "fractions".to_owned(),
                TypeSpec::List {
                    item: Box::new(TypeSpec::Number { description: d() }),
                    description: d(),
                },
            ),
        ]),
        description: d(),
    };
    Ok(vec![
        Case {
            name: "CIFAR-10 image, 32x32x3 float32 as nested lists",
            spec: ndarray("float32", &[32, 32, 3]),
            input: encode(&nested_image(32))?,
        },
        Case {
            name: "Inception image, 299x299x3 float32 as nested lists",
            spec: ndarray("float32", &[299, 299, 3]),
            input: encode(&nested_image(299))?,
        },
        Case {
            name: "CIFAR-10 image, packed",
            spec: ndarray("float32", &[32, 32, 3]),
            input: encode(&Value::Binary(vec![0; 32 * 32 * 3 * 4]))?,
        },
        Case {
            name: "list of 1,000 numbers",
            spec: TypeSpec::List {
                item: Box::new(TypeSpec::Number { description: d() }),
                description: d(),
            },
            input: encode(&Value::Array(
                (0..1000).map(|i| Value::F64(f64::from(i) / 7.0)).collect(),
            ))?,
        },
        Case {
            name: "dict: a formula and 4 fractions",
            spec: composition,
            input: encode(&Value::Map(vec![
                (Value::from("composition"), Value::from("Fe2O3Al")),
                (
                    Value::from("fractions"),
                    Value::Array(vec![Value::F64(0.25); 4]),
                ),
            ]))?,
        },
    ])
}

type Check = fn(&TypeSpec, &[u8]) -> Result<(), flotilla_protocol::servable::TypeMismatch>;

/// Microseconds per check of `case`, over at least `budget` of checking.
fn per_check(check: Check, case: &Case, budget: Duration) -> Result<f64, String> {
    per_call(
        &|| check(&case.spec, &case.input).map_err(|e| format!("{}: {e}", case.name)),
        budget,
    )
}

/// Microseconds per call of `call`, over at least `budget` of calls.
fn per_call(call: &dyn Fn() -> Result<(), String>, budget: Duration) -> Result<f64, String> {
    let start = Instant::now();
    let mut n = 0u64;
    while n == 0 || start.elapsed() < budget {
        call()?;
        n += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(other) = args.iter().find(|a| *a != "--quick") {
        return Err(format!(
            "unknown option {other}; usage: bench-typed-input [--quick]"
        ));
    }
    let (rounds, budget) = if quick {
        (1, Duration::from_millis(100))
    } else {
        (5, Duration::from_millis(400))
    };
    let mut rows = Vec::new();
    for case in cases()? {
        let (mut streaming, mut tree) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            // Turn the order every round.
            if r % 2 == 0 {
                streaming.push(per_check(check_input, &case, budget)?);
                tree.push(per_check(check_input_by_value, &case, budget)?);
            } else {
                tree.push(per_check(check_input_by_value, &case, budget)?);
                streaming.push(per_check(check_input, &case, budget)?);
            }
        }
        let (s, t) = (median(&streaming), median(&tree));
        println!(
            "{:<52} {:>8} bytes: streaming {:>10.2} µs, value tree {:>10.2} µs ({:.1}×)",
            case.name,
            case.input.len(),
            s,
            t,
            t / s
        );
        rows.push(json!({
            "input": case.name,
            "bytes": case.input.len(),
            "streaming_us": (s * 100.0).round() / 100.0,
            "value_tree_us": (t * 100.0).round() / 100.0,
            "speedup": round(t / s),
        }));
    }
    let cifar = ndarray("float32", &[32, 32, 3]);
    let image = encode(&nested_image(32))?;
    let mut submissions = Vec::new();
    for n in [4usize, 16, 64, 256] {
        let checks: Vec<(usize, &TypeSpec, &[u8])> =
            (0..n).map(|i| (i, &cifar, &image[..])).collect();
        let one_by_one = || {
            for &(_, spec, input) in &checks {
                check_input(spec, input).map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        let all_at_once = || match first_mismatch(&checks) {
            Some((i, e)) => Err(format!("input {i}: {e}")),
            None => Ok(()),
        };
        let (mut serial, mut submitted) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let mut turn = [
                (&mut serial, &one_by_one as &dyn Fn() -> Result<(), String>),
                (&mut submitted, &all_at_once),
            ];
            if r % 2 == 1 {
                turn.reverse();
            }
            for (samples, check) in turn {
                samples.push(per_call(check, budget)?);
            }
        }
        let (s, p) = (median(&serial), median(&submitted));
        let bytes = n * image.len();
        println!(
            "{n:>4} CIFAR-10 images as nested lists, {bytes:>8} bytes: one by one {s:>9.1} µs, first_mismatch {p:>9.1} µs ({:.2}×{})",
            s / p,
            if bytes < PARALLEL_CHECK_BYTES {
                ", below the parallel threshold"
            } else {
                ""
            }
        );
        submissions.push(json!({
            "images": n,
            "bytes": bytes,
            "parallel": bytes >= PARALLEL_CHECK_BYTES,
            "one_by_one_us": round(s),
            "first_mismatch_us": round(p),
            "speedup": (s / p * 100.0).round() / 100.0,
        }));
    }
    let path = write_result(
        "typed-input.json",
        &json!({
            "benchmark": "typed-input",
            "date": today(),
            "machine": machine(),
            "setup": format!("release build; one thread; each check repeated for {} ms per turn, the two checks in turns, {rounds} rounds, medians", budget.as_millis()),
            "cases": rows,
            "parallel_check_bytes": PARALLEL_CHECK_BYTES,
            "submissions": submissions,
        }),
    )
    .map_err(|e| e.to_string())?;
    println!("results: {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-typed-input: {e}");
            ExitCode::FAILURE
        }
    }
}
