//! End-to-end: accelerators and cores per slot. A local block's worker
//! is told the node has two accelerators (a fake device list: no GPU is
//! touched) and shares them, and the cores, between its two slots; a
//! worker started by hand has neither. A servable that needs a GPU runs
//! only on the block's worker, and each of its processes sees only its
//! slot's device and cores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_client::{json_to_payload, payload_to_json};
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::placement::parse_cpu_list;
use flotilla_protocol::task::{Outcome, TaskState};
use flotilla_tests::{Flotilla, config_with, python_bin, wait_until, workspace};
use serde_json::{Value, json};

#[test]
fn a_gpu_servable_runs_only_on_slots_with_a_device_each_seeing_its_own() {
    python_bin();
    let mut f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("worker", "slots", "2"),
        ("worker", "accelerators", "[\"0\", \"1\"]"),
        ("worker", "accelerator_kind", "\"nvidia\""),
        ("worker", "cpu_affinity", "\"block\""),
    ]));
    f.spawn_worker(&["--slots", "2", "--worker-id", "cpu-only"]);
    f.wait_workers(2);
    f.publish(&workspace().join("tests/servables/gpu-probe"))
        .unwrap_or_else(|e| panic!("{e}"));

    // Each call sleeps a little, so both slots of the GPU worker run at once.
    let tasks: Vec<TaskRequest> = (0..12)
        .map(|_| TaskRequest {
            servable: "gpu-probe".into(),
            input: json_to_payload(&json!(0.2)).unwrap(),
            params: Default::default(),
        })
        .collect();
    let client = f.client();
    let ids = client.submit(tasks).unwrap();
    let done = wait_until(Duration::from_secs(120), "every task to finish", || {
        let views = client.results(&ids, None).ok()?;
        views
            .iter()
            .all(|v| v.state != TaskState::Queued && v.state != TaskState::Running)
            .then_some(views)
    });
    // Slot -> (CUDA_VISIBLE_DEVICES, cores, pid) as its process saw them:
    // one warm process per slot, never reused by another slot.
    let mut seen: BTreeMap<String, (String, String, u64)> = BTreeMap::new();
    for view in &done {
        assert_eq!(view.state, TaskState::Completed, "{view:?}");
        assert_ne!(
            view.worker.as_deref(),
            Some("cpu-only"),
            "a GPU servable ran on a worker without accelerators"
        );
        let Some(Outcome::Output(out)) = &view.outcome else {
            panic!("{view:?}");
        };
        let out: Value = payload_to_json(out).unwrap();
        let slot = out["slot"].as_str().unwrap().to_owned();
        let cuda = out["cuda"].as_str().unwrap_or_default().to_owned();
        let cpus = out["cpus"].as_str().unwrap_or_default().to_owned();
        assert_eq!(cuda, slot, "slot {slot} sees its own device only: {out}");
        assert!(!cpus.is_empty(), "{out}");
        let pid = out["pid"].as_u64().unwrap();
        let before = seen.insert(slot.clone(), (cuda.clone(), cpus.clone(), pid));
        if let Some(before) = before {
            assert_eq!(
                before,
                (cuda, cpus, pid),
                "slot {slot} changed what it holds"
            );
        }
    }
    assert_eq!(seen.len(), 2, "both slots ran the servable: {seen:?}");
    let cores: Vec<Vec<u32>> = seen
        .values()
        .map(|(_, cpus, _)| parse_cpu_list(cpus).unwrap())
        .collect();
    assert!(
        cores[0].iter().all(|c| !cores[1].contains(c)),
        "the slots share no core: {seen:?}"
    );

    // `flotilla status` shows which slot holds which device and cores.
    let out = f.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for (slot, (cuda, cpus, _)) in &seen {
        let line = format!("slot {slot}  accelerators {cuda}  cpus {cpus}");
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
}

#[test]
fn a_gpu_servable_no_worker_can_hold_waits_in_its_queue() {
    python_bin();
    let mut f = Flotilla::start(&config_with(&[]));
    f.spawn_worker(&["--slots", "2", "--worker-id", "cpu-only"]);
    f.wait_workers(1);
    f.publish(&workspace().join("tests/servables/gpu-probe"))
        .unwrap_or_else(|e| panic!("{e}"));
    let client = f.client();
    let ids = client
        .submit(vec![TaskRequest {
            servable: "gpu-probe".into(),
            input: json_to_payload(&json!(0)).unwrap(),
            params: Default::default(),
        }])
        .unwrap();
    // Several heartbeats later it is still queued, not failed.
    let views = client.results(&ids, Some(Duration::from_secs(3))).unwrap();
    assert_eq!(views[0].state, TaskState::Queued, "{views:?}");
    let status = client.status().unwrap();
    let queue = status
        .queues
        .iter()
        .find(|q| q.servable.starts_with("gpu-probe"))
        .unwrap();
    assert_eq!((queue.queued, queue.running), (1, 0));
    // A worker with a device per slot serves it.
    f.spawn_worker(&[
        "--slots",
        "1",
        "--accelerators",
        "7",
        "--accelerator-kind",
        "nvidia",
        "--worker-id",
        "gpu",
    ]);
    let views = client.results(&ids, Some(Duration::from_secs(60))).unwrap();
    assert_eq!(views[0].state, TaskState::Completed, "{views:?}");
    assert_eq!(views[0].worker.as_deref(), Some("gpu"));
    let Some(Outcome::Output(out)) = &views[0].outcome else {
        panic!("{views:?}");
    };
    let out: Value = payload_to_json(out).unwrap();
    assert_eq!(out["cuda"], "7");
    assert_eq!(out["slot"], "0");
}

#[test]
fn a_worker_told_of_cores_its_node_lacks_says_so_and_exits() {
    let mut f = Flotilla::start(&config_with(&[]));
    let pid = f.spawn_worker(&["--slots", "2", "--cpu-affinity", "list:1-51,53-103,60000"]);
    let status = f.wait_worker(pid, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "{}", f.worker_log(0));
    let log = f.worker_log(0);
    assert!(
        log.contains("cpu_affinity names cores this node does not have"),
        "{log}"
    );
    assert!(log.contains("60000"), "{log}");
}
