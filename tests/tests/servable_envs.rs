//! End-to-end: a servable's declared `[environment]` reaches a node whose
//! Python lacks its packages. Publishing captures the wheels (from the
//! test wheelhouse, with no package index); a worker with no object store
//! and an empty cache fetches the files and wheels over the interchange,
//! makes the venv once, and a later worker on the node (the next block)
//! reuses both. A package that does not exist fails the servable's tasks
//! with one message naming it, after one attempt to prepare per node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::{json_to_payload, payload_to_json};
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::launch::flag;
use flotilla_protocol::task::{Outcome, TaskView};
use flotilla_tests::{
    Flotilla, copy_servable, digits, lines_with, ok, python_bin, test_config, wheelhouse, workspace,
};
use serde_json::{Value, json};

/// A cold venv with numpy, scipy and scikit-learn on a loaded machine.
const LONG: Duration = Duration::from_secs(600);

/// This machine's `PATH` without the test Python environment: a node
/// whose `python3` has none of the servables' packages.
fn node_path() -> OsString {
    let venv = python_bin();
    let venv = venv.canonicalize().unwrap_or(venv);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|p| p.canonicalize().map_or(true, |c| c != venv) && *p != venv)
        .collect();
    std::env::join_paths(kept).unwrap()
}

/// Whether `python3` on `path` runs `code`.
fn node_python_runs(path: &OsString, code: &str) -> bool {
    Command::new("python3")
        .args(["-c", code])
        .env_clear()
        .env("PATH", path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The test's node: a `python3` that works and lacks scikit-learn.
fn lacking_node() -> OsString {
    let path = node_path();
    assert!(
        node_python_runs(&path, "import sys, venv"),
        "this test needs a python3 with the venv module on PATH outside .venv"
    );
    assert!(
        !node_python_runs(&path, "import sklearn"),
        "the python3 on PATH outside .venv has scikit-learn; the test needs one without"
    );
    path
}

/// Starts a worker with no object store, node cache `cache` and `PATH`
/// `path` (and `env`), and waits until `n` are registered.
fn far_worker(
    f: &mut Flotilla,
    name: &str,
    cache: &Path,
    env: &[(&str, OsString)],
    n: usize,
) -> u32 {
    let objects = cache.with_file_name("no-object-store-here");
    let pid = f.spawn_worker_env(
        &[
            flag::SLOTS,
            "2",
            flag::WORKER_ID,
            name,
            flag::OBJECTS_DIR,
            objects.to_str().unwrap(),
            flag::CACHE_DIR,
            cache.to_str().unwrap(),
        ],
        env,
    );
    f.wait_workers(n);
    pid
}

fn run_all(f: &Flotilla, servable: &str, inputs: &[Value]) -> Vec<TaskView> {
    let client = f.client();
    let tasks = inputs
        .iter()
        .map(|input| TaskRequest {
            servable: servable.into(),
            input: json_to_payload(input).unwrap(),
            params: Payload::new(),
        })
        .collect();
    let ids = client.submit(tasks).unwrap();
    client.results(&ids, Some(LONG)).unwrap()
}

/// Runs the images through digits: the classifier knows its training
/// images. Returns the time to the first result and to all of them.
fn classify(f: &Flotilla, images: &[Value], labels: &[i64]) -> (Duration, Duration) {
    let start = Instant::now();
    let first = run_all(f, "digits", &images[..1]);
    let to_first = start.elapsed();
    let rest = run_all(f, "digits", &images[1..]);
    for (view, label) in first.iter().chain(&rest).zip(labels) {
        match &view.outcome {
            Some(Outcome::Output(p)) => assert_eq!(payload_to_json(p).unwrap(), json!(label)),
            other => panic!("{other:?}"),
        }
    }
    (to_first, start.elapsed())
}

/// The value of `field=` on the first line of `log` with `message`.
fn field_of(log: &str, message: &str, field: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let at = line.find(&format!("{field}="))? + field.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn digits_gets_its_environment_on_a_node_whose_python_lacks_scikit_learn() {
    wheelhouse();
    let path = lacking_node();
    let mut f = Flotilla::start(&test_config());
    let published = f
        .publish(&workspace().join("site-examples/servables/digits"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(published.contains("published digits@1.0.0"), "{published}");
    let shown: Value =
        serde_json::from_str(ok(&f.cli(&["servable", "show", "digits", "--json"])).trim()).unwrap();
    let lock = &shown["lock"];
    let wheels = lock["wheels"].as_array().unwrap();
    let names: Vec<&str> = wheels.iter().map(|w| w["path"].as_str().unwrap()).collect();
    for needed in ["scikit_learn-", "numpy-", "scipy-", "msgpack-"] {
        assert!(
            names.iter().any(|n| n.starts_with(needed)),
            "{needed}: {names:?}"
        );
    }
    let sklearn = Command::new(python_bin().join("python3"))
        .args(["-c", "import sklearn; print(sklearn.__version__)"])
        .output()
        .unwrap();
    let sklearn = String::from_utf8_lossy(&sklearn.stdout).trim().to_owned();
    let requirements: Vec<&str> = lock["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(
        requirements.contains(&format!("scikit-learn>=1.3,=={sklearn}").as_str()),
        "pinned to the publisher's scikit-learn {sklearn}: {requirements:?}"
    );
    let wheel_bytes: u64 = wheels.iter().map(|w| w["size"].as_u64().unwrap()).sum();

    let (images, labels) = digits(20);
    let node = tempfile::tempdir().unwrap();
    let cache = node.path().join("cache");
    let env = [("PATH", path.clone())];

    let first = far_worker(&mut f, "block-1", &cache, &env, 1);
    let (cold_first, cold_all) = classify(&f, &images, &labels);
    let log = f.worker_log(0);
    assert_eq!(lines_with(&log, "environment prepared", &[]), 1, "{log}");
    assert_eq!(
        lines_with(&log, "environment step done", &["step=pip-install"]),
        1,
        "{log}"
    );
    // The files and every wheel came over the interchange, once.
    assert_eq!(
        lines_with(&log, "servable file fetched from the daemon", &[]),
        2 + wheels.len(),
        "{log}"
    );
    assert!(!cache.with_file_name("no-object-store-here").exists());
    let cold_prepare = field_of(&log, "environment prepared", "duration_ms").unwrap();

    // The next block on the node: the same cache, the environment ready.
    f.kill_worker(first);
    f.wait_workers(0);
    far_worker(&mut f, "block-2", &cache, &env, 1);
    let (warm_first, warm_all) = classify(&f, &images, &labels);
    let log = f.worker_log(1);
    assert!(
        lines_with(&log, "environment found ready on this node", &[]) >= 1,
        "{log}"
    );
    assert_eq!(lines_with(&log, "environment step done", &[]), 0, "{log}");
    assert_eq!(lines_with(&log, "environment prepared", &[]), 0, "{log}");
    assert_eq!(
        lines_with(&log, "servable file fetched from the daemon", &[]),
        0,
        "{log}"
    );
    println!(
        "digits environment: {} wheels, {wheel_bytes} bytes captured; prepared cold in {:.1} s",
        wheels.len(),
        cold_prepare as f64 / 1e3
    );
    println!(
        "time to first result: cold {:.1} s (20 results in {:.1} s), warm {:.2} s (20 in {:.2} s)",
        cold_first.as_secs_f64(),
        cold_all.as_secs_f64(),
        warm_first.as_secs_f64(),
        warm_all.as_secs_f64()
    );
}

#[test]
fn a_package_that_does_not_exist_fails_its_tasks_once_per_node() {
    let wheels = wheelhouse();
    let path = lacking_node();
    let mut f = Flotilla::start(&test_config());
    let src = f.home().join("src/missing-package");
    copy_servable(&workspace().join("tests/servables/missing-package"), &src);
    let out = ok(&f.cli(&["servable", "publish", src.to_str().unwrap(), "--no-wheels"]));
    assert!(out.contains("published missing-package@1.0.0"), "{out}");
    // Without --no-wheels, publishing itself names the package.
    let refused = f.cli(&["servable", "publish", src.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("pip found no package named `no-such-pkg-flotilla`"),
        "{stderr}"
    );

    // Two workers on one node, installing from the node's "index" (the
    // wheelhouse, which has no such package).
    let node = tempfile::tempdir().unwrap();
    let cache = node.path().join("cache");
    let env = [
        ("PATH", path),
        ("PIP_NO_INDEX", "1".into()),
        ("PIP_FIND_LINKS", wheels.into_os_string()),
    ];
    far_worker(&mut f, "w1", &cache, &env, 1);
    far_worker(&mut f, "w2", &cache, &env, 2);
    let inputs: Vec<Value> = (0..8).map(|i| json!(i)).collect();
    let views = run_all(&f, "missing-package", &inputs);
    for view in &views {
        match &view.outcome {
            Some(Outcome::Error(message)) => {
                assert!(
                    message.starts_with(
                        "environment of missing-package@1.0.0 cannot be prepared on node "
                    ) && message.ends_with(": pip found no package named `no-such-pkg-flotilla`"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(view.attempts, 1, "not retried: {view:?}");
    }
    // One attempt to prepare on the node, whichever worker made it.
    let logs = f.worker_log(0) + &f.worker_log(1);
    assert_eq!(
        lines_with(&logs, "environment step done", &["step=venv"]),
        1,
        "{logs}"
    );
    assert_eq!(
        lines_with(&logs, "environment cannot be prepared", &[]),
        1,
        "{logs}"
    );
}
