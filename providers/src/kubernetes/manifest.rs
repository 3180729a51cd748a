//! The objects a block is made of: a Deployment of worker pods, and the
//! Secret holding the block's credentials, which the pods read through
//! `secretKeyRef` so no credential is ever in the Deployment's spec.

use std::collections::BTreeMap;

use flotilla_protocol::launch::CREDENTIAL_ENV_VARS;
use serde_json::{Value, json};

use super::{BLOCK_LABEL, KubernetesOptions};
use crate::JobSpec;

/// The labels every object of block `name` carries.
fn labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "flotilla-worker",
        "app.kubernetes.io/managed-by": "flotilla",
        BLOCK_LABEL: name,
    })
}

/// The name of block `job`'s Secret (the block's own name: Secrets and
/// Deployments have separate namespaces of names).
pub fn secret_name(job: &JobSpec) -> &str {
    &job.name
}

/// Whether `name` is one of the variables that carry a credential.
fn is_credential(name: &str) -> bool {
    CREDENTIAL_ENV_VARS.contains(&name)
}

/// The Secret holding `job`'s credentials (`stringData`, which the server
/// stores encoded), or `None` when the job carries none.
pub fn secret(job: &JobSpec, o: &KubernetesOptions) -> Option<Value> {
    let data: BTreeMap<&str, &str> = job
        .env
        .iter()
        .filter(|(k, _)| is_credential(k))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if data.is_empty() {
        return None;
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(job), "namespace": o.namespace, "labels": labels(&job.name)},
        "type": "Opaque",
        "stringData": data,
    }))
}

/// The container's resources from the pool's settings.
fn resources(o: &KubernetesOptions) -> Value {
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
    json!({"requests": requests, "limits": limits})
}

/// The Deployment manifest (JSON, which `kubectl apply` takes) for `job`.
/// Credentials come from the block's Secret ([`secret`]); every other
/// variable is a plain value.
pub fn deployment(job: &JobSpec, o: &KubernetesOptions) -> Value {
    let labels = labels(&job.name);
    // The environment goes into the pod spec, not the command line.
    let body = JobSpec {
        env: BTreeMap::new(),
        ..job.clone()
    }
    .body();
    let env: Vec<Value> = job
        .env
        .iter()
        .map(|(k, v)| {
            if is_credential(k) {
                json!({"name": k, "valueFrom": {"secretKeyRef": {"name": secret_name(job), "key": k}}})
            } else {
                json!({"name": k, "value": v})
            }
        })
        .collect();
    let mut container = json!({
        "name": "worker",
        "image": o.image,
        "imagePullPolicy": o.image_pull_policy,
        "command": ["/bin/sh", "-c", body],
        "env": env,
        "resources": resources(o),
    });
    let mut pod = json!({
        "restartPolicy": "Always",
        "containers": [],
    });
    if let Some(v) = &o.objects_volume {
        container["volumeMounts"] =
            json!([{"name": "flotilla-objects", "mountPath": v.mount_path, "readOnly": true}]);
        pod["volumes"] = json!([{
            "name": "flotilla-objects",
            "persistentVolumeClaim": {"claimName": v.claim, "readOnly": true},
        }]);
    }
    pod["containers"] = json!([container]);
    if let Some(sa) = &o.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    if !o.node_selector.is_empty() {
        pod["nodeSelector"] = json!(o.node_selector);
    }
    if !o.tolerations.is_empty() {
        pod["tolerations"] = json!(o.tolerations);
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
