//! End-to-end tests of native ONNX servables: the worker runs the model
//! itself through ONNX Runtime (loaded from the `onnxruntime` wheel in
//! `.venv`), with no Python on its `PATH`. Results are compared with
//! onnxruntime's in Python on the same inputs and the same model file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flotilla_client::{json_to_payload, payload_to_json};
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{Outcome, TaskId};
use flotilla_tests::{Flotilla, copy_servable, json_of, ok, python_bin, test_config, workspace};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(180);

/// One CIFAR-sized image: 32×32×3 float32.
const IMAGE: usize = 32 * 32 * 3;

fn example(name: &str) -> PathBuf {
    workspace().join("site-examples/servables").join(name)
}

fn python() -> PathBuf {
    python_bin().join("python3")
}

/// The ONNX Runtime library of `.venv`'s onnxruntime wheel; panics with
/// instructions when onnx or onnxruntime is missing there.
fn onnxruntime_library() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import glob, os, onnx, onnxruntime, skl2onnx; \
             d = os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'); \
             print(sorted(glob.glob(os.path.join(d, 'libonnxruntime.so*')))[0])",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} lacks onnx, onnxruntime or skl2onnx: run ./scripts/test.sh (it installs them with FLOTILLA_ONNX=1), or `FLOTILLA_ONNX=1 . scripts/python-env.sh`\n{}",
        python().display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A daemon with one worker of 2 slots that finds ONNX Runtime through
/// `FLOTILLA_ONNXRUNTIME` and has no Python on its `PATH`.
fn start() -> Flotilla {
    start_with(&[])
}

/// The same, the worker given `extra` options too.
fn start_with(extra: &[&str]) -> Flotilla {
    let library = onnxruntime_library();
    let mut f = Flotilla::start(&test_config());
    let no_python = f.home().join("empty-bin");
    std::fs::create_dir_all(&no_python).unwrap();
    let mut args = vec!["--slots", "2", "--worker-id", "w"];
    args.extend_from_slice(extra);
    f.spawn_worker_env(
        &args,
        &[
            ("FLOTILLA_ONNXRUNTIME", library.into_os_string()),
            ("PATH", no_python.into_os_string()),
        ],
    );
    f.wait_workers(1);
    f
}

fn publish(f: &Flotilla, dir: &Path) -> String {
    f.publish(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// `n` pseudo-random images in [0, 1), flattened.
fn images(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n * IMAGE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// One image as a request: packed little-endian bytes, or nested lists.
fn request(image: &[f32], packed: bool) -> Payload {
    let value = if packed {
        rmpv::Value::Binary(image.iter().flat_map(|x| x.to_le_bytes()).collect())
    } else {
        rmpv::Value::Array(
            image
                .chunks(32 * 3)
                .map(|row| {
                    rmpv::Value::Array(
                        row.chunks(3)
                            .map(|px| rmpv::Value::Array(px.iter().map(|&c| c.into()).collect()))
                            .collect(),
                    )
                })
                .collect(),
        )
    };
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &value).unwrap();
    Payload::from(out)
}

/// onnxruntime's outputs in Python for `images` through `model`: the
/// reference, one row of `classes` per image.
fn reference(model: &Path, images: &[f32], classes: usize, dir: &Path) -> Vec<Vec<f32>> {
    let input = dir.join("reference-in.f32");
    let output = dir.join("reference-out.f32");
    let bytes: Vec<u8> = images.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&input, bytes).unwrap();
    let script = "import sys, numpy as np, onnxruntime as ort\n\
        s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
        x = np.fromfile(sys.argv[2], dtype='<f4').reshape(-1, 32, 32, 3)\n\
        s.run(None, {'images': x})[0].astype('<f4').tofile(sys.argv[3])\n";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(model)
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&output)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect::<Vec<f32>>()
        .chunks(classes)
        .map(<[f32]>::to_vec)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 + 1e-4 * w.abs(),
            "{what}: element {i} is {g}, onnxruntime in Python gives {w}"
        );
    }
}

/// The published object of `servable`'s file `path` in the state directory.
/// One `cifar10-onnx` request per image of `images`, packed where
/// `packed(i)` says so, else as nested lists.
fn cifar_tasks(images: &[f32], packed: impl Fn(usize) -> bool) -> Vec<TaskRequest> {
    images
        .chunks(IMAGE)
        .enumerate()
        .map(|(i, image)| TaskRequest {
            servable: "cifar10-onnx".into(),
            input: request(image, packed(i)),
            params: Payload::new(),
        })
        .collect()
}

/// Asserts that each view's output is close to `want`'s, in order;
/// `what` names the batch in a failure.
fn assert_outputs(views: &[flotilla_protocol::task::TaskView], want: &[Vec<f32>], what: &str) {
    assert_eq!(views.len(), want.len(), "{what}");
    for (i, (view, want)) in views.iter().zip(want).enumerate() {
        match &view.outcome {
            Some(Outcome::Output(p)) => assert_close(
                &floats(&payload_to_json(p).unwrap()),
                want,
                &format!("{what}, request {i}"),
            ),
            other => panic!("{what}, request {i}: {other:?}"),
        }
    }
}

fn object(f: &Flotilla, servable: &str, path: &str) -> PathBuf {
    let shown = json_of(&f.cli(&["servable", "show", servable, "--json"]));
    let file = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["path"] == path)
        .unwrap_or_else(|| panic!("{servable} has no file {path}: {shown}"));
    f.home()
        .join("objects")
        .join(file["blake3"].as_str().unwrap())
}

#[test]
fn an_onnx_servable_is_published_found_and_gives_onnxruntimes_results_in_batches() {
    let f = start();
    assert!(publish(&f, &example("cifar10-onnx")).contains("published cifar10-onnx@1.0.0"));
    let hits = json_of(&f.cli(&["servable", "search", "cifar", "--json"]));
    assert_eq!(hits[0]["name"], "cifar10-onnx");
    let hits = json_of(&f.cli(&["servable", "search", "--model-type", "onnx", "--json"]));
    assert_eq!(hits.as_array().unwrap().len(), 1);
    let shown = ok(&f.cli(&["servable", "show", "cifar10-onnx"]));
    assert!(shown.contains("onnx model model.onnx"), "{shown}");

    let model = object(&f, "cifar10-onnx", "model.onnx");
    let client = f.client();
    for (round, n) in [1usize, 2, 7, 64, 256].into_iter().enumerate() {
        let images = images(n, 17 + round as u64);
        let want = reference(&model, &images, 10, f.home());
        // Both spellings of an ndarray, mixed in one batch.
        let ids = client.submit(cifar_tasks(&images, |i| i % 3 != 1)).unwrap();
        let views = client.results(&ids, Some(LONG)).unwrap();
        assert_outputs(&views, &want, &format!("batch of {n}"));
    }
    // The worker ran them in its own process: no servable process started.
    let log = f.worker_log(0);
    assert!(log.contains("onnx model loaded"), "{log}");
    assert!(!log.contains("servable process ready"), "{log}");
}

#[test]
fn slots_sharing_one_session_give_onnxruntimes_results() {
    let f = start_with(&["--onnx-session", "worker", "--onnx-threads", "1"]);
    publish(&f, &example("cifar10-onnx"));
    let model = object(&f, "cifar10-onnx", "model.onnx");
    let client = f.client();
    // Submitted from two threads at once, so both slots have batches.
    let rounds: Vec<(Vec<f32>, Vec<TaskId>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u64)
            .map(|t| {
                let client = f.client();
                scope.spawn(move || {
                    let mut done = Vec::new();
                    for round in 0..3u64 {
                        let images = images(40, 100 + 10 * t + round);
                        let tasks = cifar_tasks(&images, |_| true);
                        done.push((images, client.submit(tasks).unwrap()));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for (r, (images, ids)) in rounds.iter().enumerate() {
        let want = reference(&model, images, 10, f.home());
        let views = client.results(ids, Some(LONG)).unwrap();
        assert_outputs(&views, &want, &format!("submit {r}"));
    }
    // One session for the worker, loaded once whichever slot came first.
    let log = f.worker_log(0);
    assert_eq!(log.matches("onnx model loaded").count(), 1, "{log}");
}

/// Each slot of a worker on a node of two NVIDIA GPUs asks for a session
/// on its GPU. The library here is the CPU-only wheel's (and the GPUs are
/// only named: this machine has none), so the model runs on the CPU, gives
/// the same results, and the worker says why.
#[test]
fn a_slot_s_gpu_the_library_cannot_use_leaves_the_model_on_the_cpu_saying_why() {
    let f = start_with(&["--accelerators", "0,1", "--accelerator-kind", "nvidia"]);
    publish(&f, &example("cifar10-onnx"));
    let model = object(&f, "cifar10-onnx", "model.onnx");
    let images = images(8, 5);
    let want = reference(&model, &images, 10, f.home());
    let client = f.client();
    let ids = client.submit(cifar_tasks(&images, |_| true)).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    assert_outputs(&views, &want, "8 images");
    let log = f.worker_log(0);
    assert!(
        log.contains("the onnx model runs on the cpu, not on the slot's gpu")
            && log.contains("this ONNX Runtime library has no CUDA execution provider"),
        "{log}"
    );
}

#[test]
fn a_misshapen_input_fails_alone_naming_the_shape_expected() {
    let f = start();
    // Without the daemon's check at submission, so the worker meets the
    // bad inputs inside a batch.
    let dir = f.home().join("cifar-unchecked");
    copy_servable(&example("cifar10-onnx"), &dir);
    let spec = dir.join("servable.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("validate_input = true", "validate_input = false"),
    )
    .unwrap();
    publish(&f, &dir);
    let model = object(&f, "cifar10-onnx", "model.onnx");
    let good = images(6, 5);
    let want = reference(&model, &good, 10, f.home());
    let mut inputs: Vec<Payload> = good.chunks(IMAGE).map(|i| request(i, true)).collect();
    // A 31-row image, a packed image a pixel short, and a string.
    inputs.insert(1, request(&good[..31 * 32 * 3], false));
    inputs.insert(3, request(&good[..IMAGE - 3], true));
    inputs.insert(5, json_to_payload(&json!("cat")).unwrap());
    let client = f.client();
    let tasks = inputs
        .into_iter()
        .map(|input| TaskRequest {
            servable: "cifar10-onnx".into(),
            input,
            params: Payload::new(),
        })
        .collect();
    let ids = client.submit(tasks).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    let mut want = want.iter();
    for (i, view) in views.iter().enumerate() {
        match (&view.outcome, i) {
            (Some(Outcome::Error(message)), 1 | 3 | 5) => {
                assert!(
                    message.contains("expected an ndarray of float32 with shape [32, 32, 3]"),
                    "request {i}: {message}"
                );
                let what = [
                    "input: expected 32 elements, got 31",
                    "packed bytes",
                    "got a string",
                ];
                assert!(message.contains(what[i / 2]), "request {i}: {message}");
            }
            (Some(Outcome::Output(p)), 0 | 2 | 4 | 6 | 7 | 8) => assert_close(
                &floats(&payload_to_json(p).unwrap()),
                want.next().unwrap(),
                &format!("request {i}"),
            ),
            (other, _) => panic!("request {i}: {other:?}"),
        }
    }
    // With the check at submission (the example's setting), the daemon
    // refuses a misshapen input before it is queued.
    let dir = f.home().join("cifar-checked");
    copy_servable(&example("cifar10-onnx"), &dir);
    let text = std::fs::read_to_string(dir.join("servable.toml")).unwrap();
    std::fs::write(
        dir.join("servable.toml"),
        text.replace("version = \"1.0.0\"", "version = \"1.1.0\""),
    )
    .unwrap();
    publish(&f, &dir);
    let out = f.cli(&["run", "cifar10-onnx@1.1.0", "[[[1, 2, 3]]]"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("input: expected 32 elements, got 1"), "{err}");
}

#[test]
fn a_corrupted_model_is_refused_and_digits_onnx_predicts_what_digits_does() {
    let f = start();
    assert!(publish(&f, &example("digits-onnx")).contains("published digits-onnx@1.0.0"));
    let model = object(&f, "digits-onnx", "model.onnx");
    let good = std::fs::read(&model).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&model, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&model, &bad).unwrap();
    let image = serde_json::to_string(&vec![vec![0; 8]; 8]).unwrap();
    let out = f.cli(&["run", "digits-onnx", &image]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("file `model.onnx` of digits-onnx@1.0.0 does not match its published hash"),
        "{err}"
    );
    // The store repaired, the model loads; it predicts what the Python
    // servable's scikit-learn model does (train.py checked the same on
    // every image at publication), here on the first 100 images.
    std::fs::write(&model, &good).unwrap();
    let out = Command::new(python())
        .args([
            "-c",
            "import json; from sklearn import datasets, svm; d = datasets.load_digits(); \
             m = svm.SVC(gamma=0.001, C=100.0).fit(d.images.reshape(len(d.images), -1), d.target); \
             print(json.dumps([d.images[:100].tolist(), m.predict(d.images[:100].reshape(100, -1)).tolist()]))",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let client = f.client();
    let tasks = v[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|img| TaskRequest {
            servable: "digits-onnx".into(),
            input: json_to_payload(img).unwrap(),
            params: Payload::new(),
        })
        .collect();
    let ids = client.submit(tasks).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    for (i, (view, label)) in views.iter().zip(v[1].as_array().unwrap()).enumerate() {
        match &view.outcome {
            Some(Outcome::Output(p)) => {
                assert_eq!(&payload_to_json(p).unwrap(), label, "image {i}")
            }
            other => panic!("image {i}: {other:?}"),
        }
    }
}
