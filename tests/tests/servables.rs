//! End-to-end tests of servables: publishing, the catalog, warm Python
//! processes, pipelines, integrity checks, crashes. Real daemon, real
//! workers, real Python (the environment `scripts/test.sh` makes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use flotilla_client::{json_to_payload, payload_to_json};
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{Outcome, TaskState};
use flotilla_tests::{
    Flotilla, config_with, copy_servable, digits, json_of, ok, python_bin, test_config, workspace,
};
use serde_json::json;

const LONG: Duration = Duration::from_secs(120);

fn example(name: &str) -> PathBuf {
    workspace().join("site-examples/servables").join(name)
}

fn test_servable(name: &str) -> PathBuf {
    workspace().join("tests/servables").join(name)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn publish(f: &Flotilla, dir: &Path) -> String {
    f.publish(dir).unwrap_or_else(|e| panic!("{e}"))
}

/// A Flotilla with one worker (2 slots) and the Python environment checked.
fn start(config: &str) -> Flotilla {
    python_bin();
    let mut f = Flotilla::start(config);
    f.spawn_worker(&["--slots", "2", "--worker-id", "w"]);
    f.wait_workers(1);
    f
}

fn publish_formation_enthalpy(f: &Flotilla) {
    for step in ["parse", "features", "model"] {
        publish(f, &example("formation-enthalpy").join(step));
    }
    ok(&f.cli(&[
        "pipeline",
        "create",
        "formation-enthalpy",
        "--steps",
        "formation-enthalpy-parse,formation-enthalpy-features,formation-enthalpy-model",
    ]));
}

#[test]
fn the_example_servables_are_published_found_and_invoked() {
    let f = start(&test_config());
    assert!(publish(&f, &example("noop-py")).contains("published noop-py@1.0.0"));
    assert!(publish(&f, &example("digits")).contains("published digits@1.0.0"));
    publish_formation_enthalpy(&f);
    // Publishing the same directory again changes nothing.
    assert!(publish(&f, &example("noop-py")).contains("already published with the same content"));

    let list = json_of(&f.cli(&["servable", "list", "--json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "digits",
            "formation-enthalpy",
            "formation-enthalpy-features",
            "formation-enthalpy-model",
            "formation-enthalpy-parse",
            "noop-py"
        ]
    );

    // Search: free text ranked, filters exact.
    let hits = json_of(&f.cli(&["servable", "search", "handwritten", "digit", "--json"]));
    assert_eq!(hits[0]["name"], "digits");
    let hits = json_of(&f.cli(&[
        "servable",
        "search",
        "--domain",
        "materials science",
        "--json",
    ]));
    assert_eq!(hits.as_array().unwrap().len(), 4);
    let hits = json_of(&f.cli(&["servable", "search", "--model-type", "sklearn", "--json"]));
    let names: Vec<&str> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["digits", "formation-enthalpy-model"]);
    let hits = json_of(&f.cli(&["servable", "search", "formula", "--json"]));
    assert_eq!(hits[0]["name"], "formation-enthalpy-parse");

    let shown = json_of(&f.cli(&["servable", "show", "digits", "--json"]));
    assert_eq!(shown["spec"]["model_type"], "sklearn");
    assert_eq!(shown["files"][1]["path"], "model.pkl");
    assert_eq!(shown["files"][1]["blake3"].as_str().unwrap().len(), 64);

    // noop-py: a warm Python process answering.
    assert_eq!(ok(&f.cli(&["run", "noop-py", "[1, 2]"])).trim(), "null");

    // digits: the classifier knows its training images.
    let (images, labels) = digits(20);
    let client = f.client();
    let tasks = images
        .iter()
        .map(|img| TaskRequest {
            servable: "digits".into(),
            input: json_to_payload(img).unwrap(),
            params: Payload::new(),
        })
        .collect();
    let ids = client.submit(tasks).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    for (view, label) in views.iter().zip(&labels) {
        assert_eq!(view.servable, "digits@1.0.0");
        match &view.outcome {
            Some(Outcome::Output(p)) => assert_eq!(payload_to_json(p).unwrap(), json!(label)),
            other => panic!("{other:?}"),
        }
    }
    // Inputs are checked against the declared type, naming the field.
    let out = f.cli(&["run", "digits", "[[1, 2]]"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("digits@1.0.0: input: expected 8 elements, got 1"),
        "{}",
        stderr(&out)
    );

    // The pipeline gives what its three steps give when called by hand.
    let piped = ok(&f.cli(&["run", "formation-enthalpy", "\"SiO2\""]));
    let parsed = ok(&f.cli(&["run", "formation-enthalpy-parse", "\"SiO2\""]));
    let features = ok(&f.cli(&["run", "formation-enthalpy-features", parsed.trim()]));
    let by_hand = ok(&f.cli(&["run", "formation-enthalpy-model", features.trim()]));
    assert_eq!(piped.trim(), by_hand.trim());
    let value: f64 = piped.trim().parse().unwrap();
    assert!(
        value < -50.0,
        "SiO2 releases energy by the Pauling rule: {value}"
    );
    // A failing step is named.
    let out = f.cli(&["run", "formation-enthalpy", "\"XxO\""]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "step 1 of 3 (`formation-enthalpy-parse@1.0.0`) failed: ValueError: Xx is not one of"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn versions_are_immutable_and_resolved_by_name_or_version() {
    let f = start(&test_config());
    let dir = f.home().join("noop-copy");
    copy_servable(&example("noop-py"), &dir);
    ok(&f.cli(&["servable", "publish", dir.to_str().unwrap()]));
    // Same version, other content: refused.
    let spec = dir.join("servable.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, text.replace("No-op in Python", "Another no-op")).unwrap();
    let out = f.cli(&["servable", "publish", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already published with different content"),
        "{}",
        stderr(&out)
    );
    // As a new version it is fine, and becomes the latest.
    std::fs::write(
        &spec,
        text.replace("version = \"1.0.0\"", "version = \"1.1.0\""),
    )
    .unwrap();
    ok(&f.cli(&["servable", "publish", dir.to_str().unwrap()]));
    assert_eq!(
        ok(&f.cli(&["servable", "versions", "noop-py"])),
        "noop-py@1.0.0\nnoop-py@1.1.0\n"
    );
    let task = json_of(&f.cli(&["run", "noop-py", "--json"]));
    assert_eq!(task["servable"], "noop-py@1.1.0");
    let task = json_of(&f.cli(&["run", "noop-py@1.0.0", "--json"]));
    assert_eq!(task["servable"], "noop-py@1.0.0");
    // A bad spec is refused before anything is stored, naming line and key.
    std::fs::write(
        &spec,
        text.replace("version = \"1.0.0\"", "version = \"one\""),
    )
    .unwrap();
    let out = f.cli(&["servable", "publish", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("servable.toml:2: `version`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_tampered_file_is_detected_and_named() {
    let f = start(&test_config());
    publish(&f, &example("noop-py"));
    let shown = json_of(&f.cli(&["servable", "show", "noop-py", "--json"]));
    let hash = shown["files"][0]["blake3"].as_str().unwrap().to_owned();
    let object = f.home().join("objects").join(&hash);
    std::fs::set_permissions(&object, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&object, "import os\nos.system('echo pwned')\n").unwrap();
    let out = f.cli(&["run", "noop-py", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("file `serve.py` of noop-py@1.0.0 does not match its published hash"),
        "{err}"
    );
}

#[test]
fn a_crashing_servable_fails_clearly_and_the_worker_recovers() {
    let f = start(&config_with(&[("daemon", "max_attempts", "2")]));
    publish(&f, &test_servable("crashy"));
    let client = f.client();
    let input = |s: &str| json_to_payload(&json!(s)).unwrap();
    let crashed = client.run("crashy", input("crash"), Some(LONG)).unwrap();
    assert_eq!(crashed.state, TaskState::Failed);
    assert_eq!(crashed.attempts, 2, "retried per the retry policy");
    match &crashed.outcome {
        Some(Outcome::Error(e)) => {
            assert!(e.contains("exit status: 3"), "{e}");
            assert!(
                e.contains("about to crash on purpose"),
                "the stderr tail reaches the user: {e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The same worker goes on, with a fresh process.
    let fine = client.run("crashy", input("fine"), Some(LONG)).unwrap();
    assert_eq!(fine.state, TaskState::Completed);
    assert_eq!(fine.worker.as_deref(), Some("w"));
    // A servable's own error fails only that input, without retries.
    let bad = client.run("crashy", input("bad"), Some(LONG)).unwrap();
    assert_eq!(bad.state, TaskState::Failed);
    assert_eq!(bad.attempts, 1);
    assert_eq!(
        bad.outcome,
        Some(Outcome::Error("ValueError: bad input".into()))
    );
    assert_eq!(client.status().unwrap().workers.len(), 1);
    assert!(
        f.worker_log(0).contains("about to crash on purpose"),
        "stderr is in the worker's log"
    );
}

#[test]
fn the_catalog_survives_a_restart_and_removal_waits_for_unfinished_tasks() {
    let mut f = Flotilla::start(&test_config());
    python_bin();
    publish(&f, &example("noop-py"));
    // No worker yet: the task stays queued and blocks removal.
    let id = ok(&f.cli(&["submit", "noop-py", "1"])).trim().to_owned();
    let out = f.cli(&["servable", "remove", "noop-py@1.0.0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("1 unfinished task"),
        "{}",
        stderr(&out)
    );
    let status = f.signal_daemon(nix::sys::signal::Signal::SIGTERM, LONG);
    assert!(status.success());
    f.start_daemon();
    f.spawn_worker(&["--slots", "1"]);
    let out = ok(&f.cli(&["result", &id, "--wait", "--timeout", "120"]));
    assert_eq!(out.trim(), "null");
    assert!(ok(&f.cli(&["servable", "remove", "noop-py@1.0.0"])).contains("removed noop-py@1.0.0"));
    let out = f.cli(&["run", "noop-py"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown servable `noop-py`"),
        "{}",
        stderr(&out)
    );
}
