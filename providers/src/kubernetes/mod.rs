//! Kubernetes: a block is a Deployment of worker pods.
//!
//! Each block is one Deployment with `nodes_per_block` replicas, labelled
//! `flotilla/block=NAME`; each pod runs the worker image with the block's
//! script as its command, the resources, service account, pull policy,
//! node selector and tolerations of the site file. The block's credentials
//! (the daemon's secret) are a Secret of the same name that the pod reads
//! through `secretKeyRef`: they never appear in the Deployment, its
//! manifest file or what `kubectl get -o yaml` shows of it.
//!
//! Why a Deployment rather than a Job: a pilot's workers are long-running
//! and stateless; their lifetime is the daemon's decision (scale-in deletes
//! the block), not the container's exit status. A Deployment restarts a
//! crashed worker in place and keeps its replica count, where a Job would
//! count a worker that exits (cleanly on the daemon's request or not)
//! towards completion or its backoff limit, and has no way to say "run
//! until deleted". The block's pods are what the daemon watches
//! ([`state`]): a pod lost after running its workers ends the block, so
//! the daemon requeues their tasks at once rather than waiting for the
//! workers' heartbeats. A block that ended while its Deployment remains
//! (a pod evicted, failed or deleted) has the Deployment and Secret
//! deleted by the poll that saw it end: the ReplicaSet would otherwise
//! start workers for a block the daemon has finished with.
//!
//! Flotilla drives the cluster with `kubectl` on a channel rather than
//! through the API with a client library: `kubectl` reads the user's own
//! kubeconfig and runs its auth plugins (OIDC, cloud exec credentials)
//! unchanged, works the same on the daemon's machine or over SSH on a login
//! node that can reach the cluster, and adds no Kubernetes client library
//! to the daemon. The server validates every object (and its admission
//! controllers see it); a refusal carries the server's message. The cost,
//! a process per call, is paid once per poll for all blocks together.

pub mod manifest;
pub mod state;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::channel::Channel;
use crate::scheduler::Scheduler;
use crate::{JobId, JobSpec, JobState, JobStatus, Provider, ProviderError, Submission};

pub use manifest::{deployment as manifest, secret};

/// Label that ties pods, Deployments and Secrets to their block.
pub const BLOCK_LABEL: &str = "flotilla/block";

/// The file in a block's run directory holding its Secret's manifest,
/// private (mode 0600) and removed once the Secret is created.
const SECRET_FILE: &str = "secret.json";

/// A PersistentVolumeClaim holding the object store, mounted read-only in
/// every worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectsVolume {
    /// The claim's name (in the pods' namespace).
    pub claim: String,
    /// Where the pods see it: the workers' object store (`[worker] objects_dir`).
    pub mount_path: String,
}

/// Where and how the worker pods run.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KubernetesOptions {
    /// Namespace.
    pub namespace: String,
    /// The kubeconfig `kubectl` uses, when not its default.
    pub kubeconfig: Option<String>,
    /// The kubeconfig context, when not its current one.
    pub context: Option<String>,
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
    /// Taints the pods tolerate, each as Kubernetes writes a toleration
    /// (`key`, `operator`, `value`, `effect`).
    pub tolerations: Vec<BTreeMap<String, String>>,
    /// The object store as a volume, when the pods mount one (else the
    /// workers fetch servables' files over the interchange).
    pub objects_volume: Option<ObjectsVolume>,
}

/// Blocks as Deployments.
pub struct KubernetesProvider {
    sched: Scheduler,
    options: KubernetesOptions,
    pods: state::PodMemory,
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
            pods: state::PodMemory::default(),
        }
    }

    fn kubectl(&self, args: &str) -> String {
        kubectl(&self.options, args)
    }
}

/// A `kubectl` command line for `o`'s cluster and namespace.
fn kubectl(o: &KubernetesOptions, args: &str) -> String {
    use flotilla_launchers::shell::quote;
    let mut line = "kubectl".to_owned();
    if let Some(k) = &o.kubeconfig {
        line.push_str(&format!(" --kubeconfig {}", quote(k)));
    }
    if let Some(c) = &o.context {
        line.push_str(&format!(" --context {}", quote(c)));
    }
    line.push_str(&format!(" --namespace {} {args}", quote(&o.namespace)));
    line
}

/// The submit command: the Secret (when the job has credentials) created
/// from its private file, which is removed whatever happens, then the
/// Deployment applied from `{script}`; a Deployment the server refuses
/// takes its Secret with it, and the command fails with kubectl's status.
fn submit_command(job: &JobSpec, o: &KubernetesOptions, with_secret: bool) -> String {
    use flotilla_launchers::shell::quote;
    let apply = kubectl(o, "apply -f {script}");
    if !with_secret {
        return apply;
    }
    let file = quote(&job.run_file(SECRET_FILE));
    let delete = kubectl(
        o,
        &format!(
            "delete secret {} --ignore-not-found >/dev/null",
            quote(manifest::secret_name(job))
        ),
    );
    // `create` rather than `apply`: apply would keep a copy of the Secret,
    // credentials included, in an annotation.
    let create = kubectl(o, &format!("create -f {file}"));
    format!(
        "{delete} && {create}; s=$?; rm -f {file}; [ \"$s\" -eq 0 ] || exit \"$s\"; \
         {apply} && exit 0; s=$?; {delete}; exit \"$s\""
    )
}

impl Provider for KubernetesProvider {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn prepare(&self, job: &JobSpec) -> Result<Submission, ProviderError> {
        let manifest = manifest::deployment(job, &self.options);
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| ProviderError::Submit {
            name: job.name.clone(),
            reason: e.to_string(),
        })?;
        let with_secret = manifest::secret(job, &self.options).is_some();
        Ok(Submission::file(
            "block.json",
            text,
            &submit_command(job, &self.options, with_secret),
        ))
    }

    fn submit(&mut self, job: &JobSpec) -> Result<JobId, ProviderError> {
        let s = self.prepare(job)?;
        if let Some(secret) = manifest::secret(job, &self.options) {
            let bad = |reason: String| ProviderError::Submit {
                name: job.name.clone(),
                reason,
            };
            let text = serde_json::to_vec(&secret).map_err(|e| bad(e.to_string()))?;
            self.sched
                .channel
                .write_file(&job.run_file(SECRET_FILE), &text, 0o600)
                .map_err(|e| bad(e.to_string()))?;
        }
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
        let statuses = self
            .pods
            .statuses(ids, &out)
            .map_err(|reason| ProviderError::Command {
                provider: "kubernetes",
                reason,
            })?;
        let ended: Vec<JobId> = statuses
            .iter()
            .filter(|s| s.state.is_terminal() && s.state != JobState::Missing)
            .map(|s| s.id.clone())
            .collect();
        if let Err(e) = self.cancel(&ended) {
            tracing::warn!(error = %e, "could not delete the Deployment of an ended block");
        }
        Ok(statuses)
    }

    /// Deletes each block's Deployment (its pods go with it) and Secret,
    /// and nothing else.
    fn cancel(&mut self, ids: &[JobId]) -> Result<(), ProviderError> {
        for id in ids {
            let name = flotilla_launchers::shell::quote(&id.0);
            let command = self.kubectl(&format!(
                "delete deployment/{name} secret/{name} --ignore-not-found --wait=false"
            ));
            let out = self.sched.run(&command)?;
            if !out.success() {
                return Err(ProviderError::Cancel {
                    id: id.clone(),
                    reason: out.complaint(),
                });
            }
            self.pods.forget(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::launch::SECRET_ENV;
    use serde_json::json;

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
            tolerations: vec![
                [
                    ("key".to_owned(), "nvidia.com/gpu".to_owned()),
                    ("operator".to_owned(), "Exists".to_owned()),
                    ("effect".to_owned(), "NoSchedule".to_owned()),
                ]
                .into(),
            ],
            objects_volume: Some(ObjectsVolume {
                claim: "flotilla-objects".into(),
                mount_path: "/objects".into(),
            }),
            kubeconfig: Some("/etc/flotilla/kube config".into()),
            context: None,
        }
    }

    fn job() -> JobSpec {
        JobSpec {
            name: "flotilla-ab12cd-block-2".into(),
            worker_init: String::new(),
            command: "exec flotilla-worker --block-id 2".into(),
            env: [
                (SECRET_ENV.to_owned(), "00ff".to_owned()),
                ("FLOTILLA_LOG".to_owned(), "info".to_owned()),
            ]
            .into(),
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
            c["env"][1],
            json!({"name": "FLOTILLA_SECRET", "valueFrom": {"secretKeyRef": {"name": "flotilla-ab12cd-block-2", "key": "FLOTILLA_SECRET"}}})
        );
        assert_eq!(
            c["env"][0],
            json!({"name": "FLOTILLA_LOG", "value": "info"})
        );
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"],
            json!({"claimName": "flotilla-objects", "readOnly": true})
        );
        assert_eq!(
            c["volumeMounts"][0],
            json!({"name": "flotilla-objects", "mountPath": "/objects", "readOnly": true})
        );
        assert!(
            !m.to_string().contains("00ff"),
            "the secret is nowhere in the Deployment"
        );
        let command = c["command"][2].as_str().unwrap();
        assert!(command.contains("exec flotilla-worker --block-id 2"));
        assert!(
            !command.contains("00ff"),
            "the secret is not in the command"
        );
    }

    #[test]
    fn the_secret_is_a_secret_object_created_from_a_file_that_is_removed() {
        let j = job();
        let o = options();
        let sec = secret(&j, &o).unwrap();
        assert_eq!(sec["kind"], "Secret");
        assert_eq!(sec["metadata"]["name"], "flotilla-ab12cd-block-2");
        assert_eq!(sec["stringData"], json!({"FLOTILLA_SECRET": "00ff"}));
        let command = submit_command(&j, &o, true);
        let k = "kubectl --kubeconfig '/etc/flotilla/kube config' --namespace science";
        let delete =
            format!("{k} delete secret flotilla-ab12cd-block-2 --ignore-not-found >/dev/null");
        assert_eq!(
            command,
            format!(
                "{delete} && {k} create -f /tmp/fl/blocks/2/secret.json; s=$?; \
                 rm -f /tmp/fl/blocks/2/secret.json; [ \"$s\" -eq 0 ] || exit \"$s\"; \
                 {k} apply -f {{script}} && exit 0; s=$?; {delete}; exit \"$s\""
            )
        );
        let no_credentials = JobSpec {
            env: BTreeMap::new(),
            ..j
        };
        assert!(secret(&no_credentials, &o).is_none());
    }
}
