//! Kubernetes: a block is a Deployment of worker pods.
//!
//! Each block is one Deployment with `nodes_per_block` replicas, labelled
//! `flotilla/block=NAME`; each pod runs the worker image with the block's
//! script as its command, the resources, service account, pull policy and
//! node selector of the site file. A Deployment (rather than a Job) puts a
//! crashed worker pod back, which is what long-running workers want;
//! cancelling deletes it.
//!
//! Flotilla drives the cluster with `kubectl` on a channel rather than
//! through the API with a client library: `kubectl` reads the user's own
//! kubeconfig and runs its auth plugins (OIDC, cloud exec credentials)
//! unchanged, works the same on the daemon's machine or over SSH on a login
//! node that can reach the cluster, and adds no Kubernetes client library
//! to the daemon. The cost, a process per call, is paid once per poll for
//! all blocks together.
//!
//! State comes from the pods (`kubectl get deployments,pods -l … -o json`,
//! one call for every block): a pod running is a running block; pods that
//! cannot start (image pull errors, crash loops, bad configuration) fail the
//! block with the container's reason; no Deployment is a missing block.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::channel::{Channel, CommandOutput};
use crate::scheduler::Scheduler;
use crate::{JobId, JobSpec, JobState, JobStatus, Provider, ProviderError, Submission};

/// Label that ties pods and Deployments to their block.
pub const BLOCK_LABEL: &str = "flotilla/block";

/// Where and how the worker pods run.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KubernetesOptions {
    /// Namespace.
    pub namespace: String,
    /// Worker image.
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Service account of the pods.
    pub service_account: Option<String>,
    /// Pods per block: the block's nodes (`nodes_per_block`). Each pod
    /// runs the block's script, whose launcher starts `workers_per_node`
    /// workers in it.
    pub pods_per_block: u32,
    /// CPU request, e.g. `"2"`.
    pub cpu_request: Option<String>,
    /// CPU limit.
    pub cpu_limit: Option<String>,
    /// Memory request, e.g. `"4Gi"`.
    pub memory_request: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
    /// GPUs per pod (`nvidia.com/gpu`).
    pub gpus: u32,
    /// Node labels the pods must land on.
    pub node_selector: BTreeMap<String, String>,
}

/// Blocks as Deployments.
pub struct KubernetesProvider {
    sched: Scheduler,
    options: KubernetesOptions,
}

impl std::fmt::Debug for KubernetesProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesProvider")
            .field("channel", &self.sched.channel.name())
            .field("namespace", &self.options.namespace)
            .finish()
    }
}

impl KubernetesProvider {
    /// A provider running `kubectl` on `channel`, each call limited to
    /// `timeout`.
    pub fn new(channel: Box<dyn Channel>, options: KubernetesOptions, timeout: Duration) -> Self {
        KubernetesProvider {
            sched: Scheduler::new("kubernetes", channel, timeout),
            options,
        }
    }

    fn kubectl(&self, args: &str) -> String {
        format!(
            "kubectl --namespace {} {args}",
            flotilla_launchers::shell::quote(&self.options.namespace)
        )
    }
}

/// The Deployment manifest (JSON, which `kubectl apply` takes) for `job`.
pub fn manifest(job: &JobSpec, o: &KubernetesOptions) -> Value {
    let labels = json!({
        "app.kubernetes.io/name": "flotilla-worker",
        "app.kubernetes.io/managed-by": "flotilla",
        BLOCK_LABEL: job.name,
    });
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    if let Some(c) = &o.cpu_request {
        requests.insert("cpu".into(), json!(c));
    }
    if let Some(m) = &o.memory_request {
        requests.insert("memory".into(), json!(m));
    }
    if let Some(c) = &o.cpu_limit {
        limits.insert("cpu".into(), json!(c));
    }
    if let Some(m) = &o.memory_limit {
        limits.insert("memory".into(), json!(m));
    }
    if o.gpus > 0 {
        limits.insert("nvidia.com/gpu".into(), json!(o.gpus.to_string()));
    }
    // The environment goes into the pod spec, not the command line.
    let body = JobSpec {
        env: BTreeMap::new(),
        ..job.clone()
    }
    .body();
    let env: Vec<Value> = job
        .env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let mut pod = json!({
        "restartPolicy": "Always",
        "containers": [{
            "name": "worker",
            "image": o.image,
            "imagePullPolicy": o.image_pull_policy,
            "command": ["/bin/sh", "-c", body],
            "env": env,
            "resources": {"requests": requests, "limits": limits},
        }],
    });
    if let Some(sa) = &o.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    if !o.node_selector.is_empty() {
        pod["nodeSelector"] = json!(o.node_selector);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": job.name, "namespace": o.namespace, "labels": labels},
        "spec": {
            "replicas": o.pods_per_block.max(1),
            "selector": {"matchLabels": {BLOCK_LABEL: job.name}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    })
}

/// Container waiting reasons that mean the block's pods will not start.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// Statuses of blocks `ids` from `kubectl get deployments,pods -o json`.
pub fn parse_get(ids: &[JobId], out: &CommandOutput) -> Result<Vec<JobStatus>, String> {
    if !out.success() {
        return Err(format!(
            "kubectl get failed (exit {}): {}",
            out.status,
            out.complaint()
        ));
    }
    let list: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("kubectl printed something that is not JSON: {e}"))?;
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let block_of = |item: &Value| {
        item.pointer("/metadata/labels")
            .and_then(|l| l.get(BLOCK_LABEL))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(ids
        .iter()
        .map(|id| {
            let mine: Vec<&Value> = items
                .iter()
                .filter(|i| block_of(i).as_deref() == Some(&id.0))
                .collect();
            let has_deployment = mine
                .iter()
                .any(|i| i.get("kind").and_then(Value::as_str) == Some("Deployment"));
            let pods: Vec<&&Value> = mine
                .iter()
                .filter(|i| i.get("kind").and_then(Value::as_str) == Some("Pod"))
                .collect();
            let (state, message) = pods_state(&pods, has_deployment);
            JobStatus {
                id: id.clone(),
                state,
                message,
            }
        })
        .collect())
}

fn pods_state(pods: &[&&Value], has_deployment: bool) -> (JobState, Option<String>) {
    if !has_deployment {
        return (
            JobState::Missing,
            Some("the block's Deployment does not exist".into()),
        );
    }
    let phases: Vec<&str> = pods
        .iter()
        .map(|p| {
            p.pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Unknown")
        })
        .collect();
    for pod in pods {
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in statuses {
            if let Some(waiting) = c.pointer("/state/waiting") {
                let reason = waiting.get("reason").and_then(Value::as_str).unwrap_or("");
                if FATAL_WAITING.contains(&reason) {
                    let msg = waiting.get("message").and_then(Value::as_str).unwrap_or("");
                    let name = pod
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("?");
                    return (
                        JobState::Failed,
                        Some(format!("pod {name}: {reason}: {msg}")),
                    );
                }
            }
        }
    }
    if phases.contains(&"Running") {
        (JobState::Running, None)
    } else if phases.is_empty() || phases.iter().all(|p| *p == "Pending") {
        let why = pods
            .iter()
            .find_map(|p| {
                p.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter()
                            .find_map(|c| c.get("message").and_then(Value::as_str))
                    })
            })
            .map(str::to_owned);
        (JobState::Pending, why)
    } else if phases.iter().all(|p| *p == "Succeeded") {
        (JobState::Completed, None)
    } else if phases.contains(&"Failed") {
        (JobState::Failed, Some("a worker pod failed".into()))
    } else {
        (
            JobState::Unknown,
            Some(format!("pod phases: {}", phases.join(", "))),
        )
    }
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn prepare(&self, job: &JobSpec) -> Result<Submission, ProviderError> {
        let manifest = manifest(job, &self.options);
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| ProviderError::Submit {
            name: job.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Submission::file(
            "block.json",
            text,
            &self.kubectl("apply -f {script}"),
        ))
    }

    fn submit(&mut self, job: &JobSpec) -> Result<JobId, ProviderError> {
        let s = self.prepare(job)?;
        self.sched.submit(job, &s.file, &s.contents, &s.command)?;
        let id = JobId(job.name.clone());
        self.sched.jobs.insert(id.clone(), job.clone());
        Ok(id)
    }

    fn status(&mut self, ids: &[JobId]) -> Result<Vec<JobStatus>, ProviderError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = ids.iter().map(|i| i.0.as_str()).collect();
        let selector = format!("{BLOCK_LABEL} in ({})", names.join(","));
        let command = self.kubectl(&format!(
            "get deployments,pods -l {} -o json",
            flotilla_launchers::shell::quote(&selector)
        ));
        let out = self.sched.run(&command)?;
        parse_get(ids, &out).map_err(|reason| ProviderError::Command {
            provider: "kubernetes",
            reason,
        })
    }

    fn cancel(&mut self, ids: &[JobId]) -> Result<(), ProviderError> {
        for id in ids {
            let command = self.kubectl(&format!(
                "delete deployment {} --ignore-not-found --wait=false",
                flotilla_launchers::shell::quote(&id.0)
            ));
            let out = self.sched.run(&command)?;
            if !out.success() {
                return Err(ProviderError::Cancel {
                    id: id.clone(),
                    reason: out.complaint(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::launch::SECRET_ENV;

    fn options() -> KubernetesOptions {
        KubernetesOptions {
            namespace: "science".into(),
            image: "registry.example.org/flotilla/worker:0.1".into(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: Some("flotilla".into()),
            pods_per_block: 3,
            cpu_request: Some("2".into()),
            cpu_limit: Some("4".into()),
            memory_request: Some("4Gi".into()),
            memory_limit: Some("8Gi".into()),
            gpus: 1,
            node_selector: [("nvidia.com/gpu.present".to_owned(), "true".to_owned())].into(),
        }
    }

    fn job() -> JobSpec {
        JobSpec {
            name: "flotilla-ab12cd-block-2".into(),
            worker_init: String::new(),
            command: "exec flotilla-worker --block-id 2".into(),
            env: [(SECRET_ENV.to_owned(), "00ff".to_owned())].into(),
            run_dir: "/tmp/fl/blocks/2".into(),
        }
    }

    #[test]
    fn the_manifest_is_a_deployment_with_every_setting() {
        let m = manifest(&job(), &options());
        assert_eq!(m["kind"], "Deployment");
        assert_eq!(m["metadata"]["namespace"], "science");
        assert_eq!(m["spec"]["replicas"], 3);
        assert_eq!(
            m["spec"]["selector"]["matchLabels"][BLOCK_LABEL],
            "flotilla-ab12cd-block-2"
        );
        let pod = &m["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "flotilla");
        assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example.org/flotilla/worker:0.1");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "2", "memory": "4Gi"})
        );
        assert_eq!(
            c["resources"]["limits"],
            json!({"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "1"})
        );
        assert_eq!(
            c["env"][0],
            json!({"name": "FLOTILLA_SECRET", "value": "00ff"})
        );
        let command = c["command"][2].as_str().unwrap();
        assert!(command.contains("exec flotilla-worker --block-id 2"));
        assert!(
            !command.contains("00ff"),
            "the secret is not in the command"
        );
    }

    fn out(stdout: &str) -> CommandOutput {
        CommandOutput {
            status: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// `kubectl get deployments,pods -o json` in the shape kubectl prints.
    const GET: &str = r#"{
  "apiVersion": "v1",
  "kind": "List",
  "items": [
    {"kind": "Deployment", "metadata": {"name": "b-run", "labels": {"flotilla/block": "b-run"}}},
    {"kind": "Pod", "metadata": {"name": "b-run-5d9c-x", "labels": {"flotilla/block": "b-run"}},
     "status": {"phase": "Running", "containerStatuses": [{"name": "worker", "ready": true, "state": {"running": {"startedAt": "2026-11-26T10:00:00Z"}}}]}},
    {"kind": "Deployment", "metadata": {"name": "b-wait", "labels": {"flotilla/block": "b-wait"}}},
    {"kind": "Pod", "metadata": {"name": "b-wait-7f-y", "labels": {"flotilla/block": "b-wait"}},
     "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}},
    {"kind": "Deployment", "metadata": {"name": "b-bad", "labels": {"flotilla/block": "b-bad"}}},
    {"kind": "Pod", "metadata": {"name": "b-bad-1a-z", "labels": {"flotilla/block": "b-bad"}},
     "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "ready": false, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"registry.example.org/flotilla/worker:0.9\""}}}]}}
  ]
}"#;

    #[test]
    fn recorded_kubectl_output_maps_to_states() {
        let ids: Vec<JobId> = ["b-run", "b-wait", "b-bad", "b-gone"]
            .iter()
            .map(|i| JobId((*i).into()))
            .collect();
        let s = parse_get(&ids, &out(GET)).unwrap();
        use JobState::*;
        assert_eq!(
            s.iter().map(|x| x.state).collect::<Vec<_>>(),
            [Running, Pending, Failed, Missing]
        );
        assert!(
            s[1].message
                .as_deref()
                .unwrap()
                .contains("Insufficient nvidia.com/gpu")
        );
        assert!(
            s[2].message
                .as_deref()
                .unwrap()
                .contains("ImagePullBackOff")
        );
    }

    #[test]
    fn kubectl_errors_are_errors_of_the_poll() {
        let failed = CommandOutput {
            status: 1,
            stdout: String::new(),
            stderr: "error: You must be logged in to the server (Unauthorized)\n".into(),
        };
        let e = parse_get(&[JobId("b".into())], &failed).unwrap_err();
        assert!(e.contains("Unauthorized"), "{e}");
    }
}
