//! End-to-end tests of the Kubernetes provider against a real API server:
//! kube-apiserver, controller-manager and scheduler 1.20 on etcd, started
//! by `tests/infra/kube-up.sh` (`./scripts/test.sh` starts it and exports
//! `FLOTILLA_TEST_KUBECONFIG`). Without it they print why and pass
//! vacuously: the variable is the test control plane's own, so no test
//! ever touches a cluster a developer's `KUBECONFIG` points at.
//!
//! The daemon runs `kubectl` with the service account and Role of
//! `docs/kubernetes.md`; there is no kubelet, so the tests play its part
//! (`flotilla_tests::kube::Kubelet`) and drive pod phases through the
//! `/status` subresource.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use flotilla_protocol::Payload;
use flotilla_protocol::task::{NIL, TaskState};
use flotilla_tests::kube::{Kubelet, Namespace, admin_kubeconfig};
use flotilla_tests::{Flotilla, bin, config_with, sleep_tasks, wait_until};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

/// A site file for a pool of Kubernetes blocks in `ns`, with `extra`
/// settings over the defaults.
fn kube_site(ns: &Namespace, extra: &[(&str, &str, &str)]) -> String {
    let kubeconfig = format!("\"{}\"", ns.daemon_kubeconfig().display());
    let namespace = format!("\"{}\"", ns.name);
    let worker = format!("\"{}\"", bin("flotilla-worker").display());
    let mut settings = vec![
        ("provider", "kind", "\"kubernetes\""),
        ("provider", "nodes_per_block", "1"),
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("provider", "poll_interval_s", "0.3"),
        ("provider", "cooldown_s", "0"),
        ("provider.kubernetes", "namespace", namespace.as_str()),
        ("provider.kubernetes", "kubeconfig", kubeconfig.as_str()),
        ("provider.kubernetes", "image", "\"flotilla/worker:test\""),
        ("provider.kubernetes", "image_pull_policy", "\"Never\""),
        (
            "provider.kubernetes",
            "service_account",
            "\"flotilla-worker\"",
        ),
        ("provider.kubernetes", "cpu_request", "\"100m\""),
        ("provider.kubernetes", "cpu_limit", "\"1\""),
        ("provider.kubernetes", "memory_request", "\"64Mi\""),
        ("provider.kubernetes", "memory_limit", "\"512Mi\""),
        ("provider.kubernetes", "gpus", "1"),
        (
            "provider.kubernetes",
            "node_selector",
            "{ \"flotilla-test/pool\" = \"workers\" }",
        ),
        (
            "provider.kubernetes",
            "tolerations",
            "[{ key = \"flotilla-test/dedicated\", operator = \"Exists\", effect = \"NoSchedule\" }]",
        ),
        ("worker", "command", worker.as_str()),
        ("worker", "slots", "2"),
    ];
    settings.extend_from_slice(extra);
    config_with(&settings)
}

/// The Deployments of the namespace, by name.
fn deployments(ns: &Namespace) -> Vec<String> {
    names(&ns.items(&["get", "deployments"]))
}

/// The Secrets the daemon made (labelled with a block), by name.
fn block_secrets(ns: &Namespace) -> Vec<String> {
    names(&ns.items(&["get", "secrets", "-l", "flotilla/block"]))
}

fn names(items: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// The state the daemon reports for block `id`, if it lists it.
fn block_state(f: &Flotilla, id: u32) -> Option<String> {
    f.client()
        .status()
        .ok()?
        .blocks
        .into_iter()
        .find(|b| b.id == id)
        .map(|b| b.state)
}

/// `Some` when a worker of `block` runs a task.
fn runs_on(f: &Flotilla, block: u32) -> Option<()> {
    let s = f.client().status().ok()?;
    s.workers
        .iter()
        .any(|w| w.block == Some(block) && w.running == 1)
        .then_some(())
}

/// Starts the pods the scheduler placed, waiting until there is one.
fn start_pods(kubelet: &mut Kubelet) -> Vec<String> {
    wait_until(LONG, "a pod scheduled onto the node", || {
        let started = kubelet.start_scheduled();
        (!started.is_empty()).then_some(started)
    })
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Scale-out creates a Deployment the server validated, read back with
/// every setting of the site file; the worker secret is in a Secret, in
/// no manifest and nowhere in `kubectl get -o yaml` of the Deployment or
/// its pod; the pod driven Running is a RUNNING block whose worker (given
/// the secret from the Secret) serves tasks.
#[test]
fn a_block_is_a_deployment_the_server_accepted_and_its_running_pod_serves_tasks() {
    let Some(admin) = admin_kubeconfig() else {
        return;
    };
    let ns = Namespace::create(&admin, "spec");
    let f = Flotilla::start(&kube_site(&ns, &[]));
    let deployment = wait_until(LONG, "the block's Deployment", || {
        ns.items(&["get", "deployments"]).into_iter().next()
    });
    let name = deployment["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("flotilla-") && name.ends_with("-block-0"),
        "{name}"
    );
    assert_eq!(deployment["metadata"]["labels"]["flotilla/block"], name);
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"flotilla/block": name})
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "flotilla-worker");
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(
        pod["nodeSelector"],
        json!({"flotilla-test/pool": "workers"})
    );
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "flotilla-test/dedicated", "operator": "Exists", "effect": "NoSchedule"}])
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "flotilla/worker:test");
    assert_eq!(c["imagePullPolicy"], "Never");
    assert_eq!(
        c["resources"],
        json!({
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "512Mi", "nvidia.com/gpu": "1"},
        })
    );
    let secret_env: Vec<&Value> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "FLOTILLA_SECRET")
        .collect();
    assert_eq!(
        secret_env,
        [
            &json!({"name": "FLOTILLA_SECRET", "valueFrom": {"secretKeyRef": {"name": name, "key": "FLOTILLA_SECRET"}}})
        ]
    );

    // The secret: in the block's Secret, created (not applied, which
    // would copy it into an annotation), and nowhere else.
    let secret = ns.secret_value(&name, "FLOTILLA_SECRET");
    assert_eq!(secret.len(), 64, "a hex secret: {secret}");
    let object = ns.get_json(&["get", "secret", &name]);
    assert!(
        object["metadata"]
            .get("annotations")
            .and_then(|a| a.get("kubectl.kubernetes.io/last-applied-configuration"))
            .is_none(),
        "{object}"
    );
    let yaml = ns.admin_ok(&["get", "deployment", &name, "-o", "yaml"]);
    assert!(yaml.contains("secretKeyRef"), "{yaml}");
    assert!(
        !yaml.contains(&secret),
        "the secret in the Deployment:\n{yaml}"
    );
    let run_files = files_under(&f.home().join("blocks"));
    assert!(
        run_files.iter().any(|p| p.ends_with("block.json")),
        "{run_files:?}"
    );
    for path in &run_files {
        assert!(!path.ends_with("secret.json"), "left behind: {path:?}");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        assert!(!text.contains(&secret), "the secret in {path:?}");
    }

    // Scheduled but not running: a pending block.
    wait_until(LONG, "the block to be pending", || {
        (block_state(&f, 0).as_deref() == Some("PENDING")).then_some(())
    });
    let mut kubelet = Kubelet::new(&ns);
    let pods = start_pods(&mut kubelet);
    assert_eq!(pods.len(), 1, "{pods:?}");
    wait_until(LONG, "the block to run", || {
        (block_state(&f, 0).as_deref() == Some("RUNNING")).then_some(())
    });
    f.wait_workers(1);
    let view = f
        .client()
        .run("noop", Payload::from_static(NIL), Some(LONG))
        .unwrap();
    assert_eq!(
        view.state,
        TaskState::Completed,
        "{view:?}\n{}",
        kubelet.log(&pods[0])
    );
    let pod_yaml = ns.admin_ok(&["get", "pod", &pods[0], "-o", "yaml"]);
    assert!(
        !pod_yaml.contains(&secret),
        "the secret in the pod:\n{pod_yaml}"
    );
}

/// A pod evicted (driven Failed through /status) and a pod deleted each
/// end their block while its worker still holds a task: the daemon's loss
/// handling requeues the task at once, the ended block's Deployment and
/// Secret are deleted, and a new block takes the task.
#[test]
fn evicted_or_deleted_pods_end_their_block_and_requeue_its_tasks() {
    let Some(admin) = admin_kubeconfig() else {
        return;
    };
    let ns = Namespace::create(&admin, "loss");
    let f = Flotilla::start(&kube_site(&ns, &[]));
    let mut kubelet = Kubelet::new(&ns);
    let first = start_pods(&mut kubelet);
    f.wait_workers(1);
    let client = f.client();
    let task = client.submit(sleep_tasks(1, 3600.0)).unwrap()[0];
    wait_until(LONG, "the task to run on block 0", || runs_on(&f, 0));
    let requeued = || f.client().status().unwrap().totals.requeued;
    assert_eq!(requeued(), 0);

    // Evicted: the worker's process is still alive (the tests' kubelet
    // has not stopped it), so only the pod's phase tells.
    ns.set_pod_status(
        &first[0],
        &json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
    );
    wait_until(LONG, "the task to be requeued", || {
        (requeued() == 1).then_some(())
    });
    // The kubelet's part: an evicted pod's processes are killed.
    kubelet.stop(&first[0]);
    let history = f.block_history(0).join("\n");
    assert!(
        history.contains("was evicted: The node was low on resource: memory."),
        "{history}"
    );
    wait_until(LONG, "block 0's Deployment and Secret to go", || {
        let gone = |names: Vec<String>| !names.iter().any(|n| n.ends_with("-block-0"));
        (gone(deployments(&ns)) && gone(block_secrets(&ns))).then_some(())
    });

    // Block 1 takes the task.
    let second = start_pods(&mut kubelet);
    wait_until(LONG, "the task to run on block 1", || runs_on(&f, 1));

    // Deleted: the pod is terminating (no kubelet confirms its end); its
    // worker, still connected, is lost with the block.
    let before = requeued();
    ns.admin_ok(&["delete", "pod", &second[0], "--wait=false"]);
    let history = wait_until(LONG, "block 1 to end", || {
        let h = f.block_history(1).join("\n");
        h.contains("being deleted").then_some(h)
    });
    wait_until(LONG, "the task to be requeued again", || {
        (requeued() > before).then_some(())
    });
    let lost = f.log();
    assert!(lost.contains("its block 1 ended"), "{history}\n{lost}");
    kubelet.stop(&second[0]);
    let view = client.task_status(&[task]).unwrap();
    assert_ne!(view[0].state, TaskState::Completed);
    assert!(!view[0].state.is_final(), "{view:?}");
}

/// Scale-in deletes the idle block's Deployment and Secret, and nothing
/// else: not the block kept by `min_blocks`, not objects of the same
/// namespace that are not the daemon's.
#[test]
fn scale_in_deletes_the_idle_blocks_objects_and_nothing_else() {
    let Some(admin) = admin_kubeconfig() else {
        return;
    };
    let ns = Namespace::create(&admin, "scalein");
    ns.apply(
        &json!({
            "apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bystander"}, "stringData": {"k": "v"}},
                {"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "bystander", "labels": {"app.kubernetes.io/managed-by": "flotilla"}},
                 "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "bystander"}},
                          "template": {"metadata": {"labels": {"app": "bystander"}},
                                       "spec": {"containers": [{"name": "c", "image": "bystander"}]}}}},
            ]
        })
        .to_string(),
    );
    let f = Flotilla::start(&kube_site(
        &ns,
        &[
            ("provider", "max_blocks", "2"),
            ("provider", "max_idle_s", "1"),
            ("provider", "min_block_lifetime_s", "0"),
        ],
    ));
    let mut kubelet = Kubelet::new(&ns);
    // Work for two blocks of one 2-slot worker each, long enough that the
    // second block starts before the first could finish it alone.
    let tasks = f.client().submit(sleep_tasks(6, 10.0)).unwrap();
    wait_until(LONG, "both blocks' pods to start", || {
        kubelet.start_scheduled();
        (kubelet.running().len() == 2).then_some(())
    });
    wait_until(LONG, "the work to be done", || {
        let views = f.client().task_status(&tasks).ok()?;
        views
            .iter()
            .all(|v| v.state == TaskState::Completed)
            .then_some(())
    });
    // One block is cancelled for idleness; min_blocks keeps the other.
    let left = wait_until(LONG, "one block's Deployment to be deleted", || {
        let d = deployments(&ns);
        (d.len() == 2).then_some(d)
    });
    assert!(left.contains(&"bystander".to_owned()), "{left:?}");
    let kept = left.iter().find(|n| *n != "bystander").unwrap().clone();
    assert_eq!(block_secrets(&ns), std::slice::from_ref(&kept));
    let secrets = names(&ns.items(&["get", "secrets"]));
    assert!(secrets.contains(&"bystander".to_owned()), "{secrets:?}");
    let status = f.client().status().unwrap();
    let states: Vec<(u32, String)> = status
        .blocks
        .iter()
        .map(|b| (b.id, b.state.clone()))
        .collect();
    assert!(states.iter().any(|(_, s)| s == "RUNNING"), "{states:?}");
}

/// A malformed quantity is refused by `flotilla config check` with its
/// line; a setting only the server can judge (a request above its limit)
/// is refused at submission, and the block's event carries the server's
/// own message.
#[test]
fn bad_settings_are_refused_before_the_server_and_by_it_with_its_message() {
    let Some(admin) = admin_kubeconfig() else {
        return;
    };
    let ns = Namespace::create(&admin, "refused");
    let bad_quantity = kube_site(&ns, &[("provider.kubernetes", "memory_limit", "\"8GB\"")]);
    let f = Flotilla::start(&kube_site(
        &ns,
        &[
            ("provider.kubernetes", "cpu_request", "\"2\""),
            ("provider.kubernetes", "cpu_limit", "\"1\""),
        ],
    ));
    let site = f.home().join("bad-site.toml");
    std::fs::write(&site, &bad_quantity).unwrap();
    let out = f.cli(&["config", "check", site.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`provider.kubernetes.memory_limit`: `8GB` is not a Kubernetes quantity"),
        "{err}"
    );

    let history = wait_until(LONG, "the server's refusal", || {
        let h = f.block_history(0).join("\n");
        h.contains("block-refused").then_some(h)
    });
    assert!(
        history.contains("must be less than or equal to cpu limit"),
        "{history}"
    );
    assert!(deployments(&ns).is_empty());
    assert!(
        block_secrets(&ns).is_empty(),
        "the refused block's Secret is deleted"
    );
}
