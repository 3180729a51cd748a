//! End-to-end: one daemon, two pools (local process groups and the test
//! Slurm), servables placed on each by what they declare.
//!
//! Needs the test cluster of `tests/infra/` (`./scripts/test.sh` starts it
//! and exports `SLURM_CONF`); without it the test fails and says how to
//! start it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use flotilla_client::json_to_payload;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{Outcome, TaskState, TaskView};
use flotilla_protocol::{Payload, TaskId};
use flotilla_tests::{Flotilla, SlurmJobs, bin, copy_servable, python_bin, wait_until, workspace};

const LONG: Duration = Duration::from_secs(120);

fn slurm_conf() {
    if std::env::var_os("SLURM_CONF").is_none() {
        panic!(
            "SLURM_CONF is not set: start the test cluster with `eval \"$(tests/infra/slurm-up.sh 2)\"` (./scripts/test.sh does)"
        );
    }
}

/// A local pool and a Slurm pool, both scaling from nothing.
fn two_pool_site() -> String {
    slurm_conf();
    let worker = bin("flotilla-worker").display().to_string();
    format!(
        r#"[daemon]
shutdown_grace_s = 10

[interchange]
heartbeat_period_s = 0.5
heartbeat_threshold_s = 3

[[pool]]
name = "local"
labels = {{ kind = "local" }}
[pool.provider]
kind = "local"
init_blocks = 0
min_blocks = 0
max_blocks = 1
poll_interval_s = 0.2
max_idle_s = 600
[pool.worker]
slots = 2
command = "{worker}"
lost_daemon_exit_s = 10

[[pool]]
name = "slurm"
labels = {{ kind = "batch", partition = "debug" }}
[pool.provider]
kind = "slurm"
partition = "debug"
walltime = "00:10:00"
init_blocks = 0
min_blocks = 0
max_blocks = 2
poll_interval_s = 0.5
max_idle_s = 600
[pool.worker]
slots = 2
command = "{worker}"
lost_daemon_exit_s = 10
"#
    )
}

/// The test servable `counter` published as `name`, with `resources`
/// (a `[resources]` table's lines) added to its spec.
fn publish_placed(f: &Flotilla, name: &str, resources: &str) {
    let dir = f.home().join("servables").join(name);
    copy_servable(&workspace().join("tests/servables/counter"), &dir);
    let spec = std::fs::read_to_string(dir.join("servable.toml")).unwrap();
    let spec = spec.replace("name = \"counter\"", &format!("name = \"{name}\""));
    std::fs::write(
        dir.join("servable.toml"),
        format!("{spec}\n[resources]\n{resources}\n"),
    )
    .unwrap();
    f.publish(&dir).unwrap_or_else(|e| panic!("{e}"));
}

/// A pipeline of `steps` published as `name`.
fn publish_pipeline(f: &Flotilla, name: &str, steps: &[&str]) {
    let dir = f.home().join("servables").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let steps: Vec<String> = steps.iter().map(|s| format!("\"{s}\"")).collect();
    std::fs::write(
        dir.join("servable.toml"),
        format!(
            "name = \"{name}\"\nversion = \"1.0.0\"\ntitle = \"Crosses pools\"\nlicense = \"Apache-2.0\"\nmodel_type = \"pipeline\"\n\n[input]\nkind = \"any\"\n\n[output]\nkind = \"any\"\n\n[runtime]\nkind = \"pipeline\"\nsteps = [{}]\n",
            steps.join(", ")
        ),
    )
    .unwrap();
    f.publish(&dir).unwrap_or_else(|e| panic!("{e}"));
}

fn requests(servable: &str, n: usize) -> Vec<TaskRequest> {
    (0..n)
        .map(|i| TaskRequest {
            servable: servable.into(),
            input: json_to_payload(&serde_json::json!(i)).unwrap(),
            params: Payload::new(),
        })
        .collect()
}

/// Waits for every task to end; returns them, all completed.
fn completed(f: &Flotilla, ids: &[TaskId]) -> Vec<TaskView> {
    let client = f.client();
    let views = wait_until(LONG, "the tasks to finish", || {
        let views = client.results(ids, Some(Duration::from_secs(5))).ok()?;
        views.iter().all(|v| v.state.is_final()).then_some(views)
    });
    for v in &views {
        assert_eq!(v.state, TaskState::Completed, "{v:?}");
    }
    views
}

/// Every worker that ever registered, with its pool (from the events).
fn worker_pools(f: &Flotilla) -> BTreeMap<String, String> {
    f.events()
        .into_iter()
        .filter(|e| e.kind == "worker-registered")
        .filter_map(|e| Some((e.worker?, e.pool?)))
        .collect()
}

/// The pool `name`'s blocks submitted so far.
fn submitted(f: &Flotilla, name: &str) -> u32 {
    let s = f.client().status().unwrap();
    s.pools.iter().find(|p| p.name == name).unwrap().submitted
}

fn ran_in(f: &Flotilla, views: &[TaskView], pool: &str) {
    let pools = worker_pools(f);
    for v in views {
        let worker = v.worker.as_deref().unwrap();
        assert_eq!(
            pools.get(worker).map(String::as_str),
            Some(pool),
            "{v:?} ran on {worker}; pools: {pools:?}"
        );
    }
}

fn scancel_all(jobs: &SlurmJobs) {
    for (id, _) in jobs.jobs() {
        let _ = Command::new("scancel").arg(&id).status();
    }
}

#[test]
fn servables_pinned_to_a_local_and_a_slurm_pool_each_scale_and_run_only_there() {
    python_bin();
    let mut f = Flotilla::start(&two_pool_site());
    let jobs = SlurmJobs::of(&f);
    publish_placed(&f, "on-slurm", "pools = [\"slurm\"]");
    publish_placed(&f, "on-local", "labels = { kind = \"local\" }");
    // Queued work only the Slurm pool can serve scales only that pool.
    let ids = f.client().submit(requests("on-slurm", 3)).unwrap();
    let views = completed(&f, &ids);
    ran_in(&f, &views, "slurm");
    assert!(submitted(&f, "slurm") >= 1);
    assert_eq!(submitted(&f, "local"), 0, "the local pool was not asked");
    assert!(!jobs.jobs().is_empty(), "the Slurm pool's blocks are jobs");
    // And the other way round.
    let ids = f.client().submit(requests("on-local", 2)).unwrap();
    ran_in(&f, &completed(&f, &ids), "local");
    assert_eq!(submitted(&f, "local"), 1);
    // A pipeline crossing both pools: each step where it fits, no client
    // round trip between them.
    publish_pipeline(&f, "cross", &["on-local@1.0.0", "on-slurm@1.0.0"]);
    let view = f
        .client()
        .run(
            "cross",
            json_to_payload(&serde_json::json!("x")).unwrap(),
            Some(LONG),
        )
        .unwrap();
    assert_eq!(view.state, TaskState::Completed, "{view:?}");
    let Some(Outcome::Output(out)) = &view.outcome else {
        panic!("{view:?}");
    };
    let out = flotilla_client::payload_to_json(out).unwrap();
    assert_eq!(
        out["input"]["input"], "x",
        "step 2 got step 1's output: {out}"
    );
    ran_in(&f, std::slice::from_ref(&view), "slurm");
    // The Slurm pool's blocks killed from outside with work in flight:
    // nothing moves to the local pool (not eligible), nothing is lost.
    let ids = f.client().submit(requests("on-slurm", 8)).unwrap();
    scancel_all(&jobs);
    let views = completed(&f, &ids);
    ran_in(&f, &views, "slurm");
    let status = f.client().status().unwrap();
    assert!(
        status
            .blocks
            .iter()
            .any(|b| b.pool.as_deref() == Some("slurm") && b.state == "CANCELLED"),
        "{status:?}"
    );
    // `flotilla status` groups blocks and workers by pool.
    let out = f.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let local = text.find("pool local (local)").unwrap();
    let slurm = text.find("pool slurm (slurm)").unwrap();
    assert!(local < slurm, "{text}");
    let out = f.cli(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["pools"][0]["name"], "local");
    assert_eq!(json["pools"][0]["blocks"].as_array().unwrap().len(), 1);
    // Stopping the daemon cancels both pools' blocks.
    assert!(
        f.signal_daemon(nix::sys::signal::Signal::SIGTERM, LONG)
            .success()
    );
    jobs.wait_all_ended();
}
