//! Block states from the pods the server reports.
//!
//! One `kubectl get deployments,pods -o json` call covers every block. A
//! block with no Deployment is missing. A block whose pod ran workers and
//! then was evicted, is being deleted or is gone has lost those workers by
//! the cluster's doing: the block ends as cancelled (from outside), and the
//! daemon's loss handling requeues their tasks at once, whatever the
//! ReplicaSet does next. A pod that failed otherwise fails the block. A
//! container
//! that cannot start (image pull errors, crash loops, bad configuration)
//! fails the block with the container's reason. Otherwise a running pod is
//! a running block, and pods that all wait are a pending one.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::BLOCK_LABEL;
use crate::channel::CommandOutput;
use crate::{JobId, JobState, JobStatus};

/// Container waiting reasons that mean the block's pods will not start.
const FATAL_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
];

/// What the provider remembers between polls: the pods of each block seen
/// running, so a pod deleted between two polls is noticed.
#[derive(Debug, Default)]
pub struct PodMemory {
    running: HashMap<JobId, BTreeSet<String>>,
}

impl PodMemory {
    /// Forgets `id` (it was cancelled).
    pub fn forget(&mut self, id: &JobId) {
        self.running.remove(id);
    }

    /// Statuses of blocks `ids` from `kubectl get deployments,pods -o json`.
    pub fn statuses(
        &mut self,
        ids: &[JobId],
        out: &CommandOutput,
    ) -> Result<Vec<JobStatus>, String> {
        let items = items(out)?;
        Ok(ids
            .iter()
            .map(|id| {
                let mine: Vec<&Value> = items
                    .iter()
                    .filter(|i| block_of(i) == Some(id.0.as_str()))
                    .collect();
                let has_deployment = mine.iter().any(|i| kind(i) == Some("Deployment"));
                let pods: Vec<&Value> = mine
                    .iter()
                    .copied()
                    .filter(|i| kind(i) == Some("Pod"))
                    .collect();
                let seen = self.running.entry(id.clone()).or_default();
                let (state, message) = block_state(&pods, has_deployment, seen);
                JobStatus {
                    id: id.clone(),
                    state,
                    message,
                }
            })
            .collect())
    }
}

/// The `items` of a `kubectl get -o json` listing.
fn items(out: &CommandOutput) -> Result<Vec<Value>, String> {
    if !out.success() {
        return Err(format!(
            "kubectl get failed (exit {}): {}",
            out.status,
            out.complaint()
        ));
    }
    let list: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("kubectl printed something that is not JSON: {e}"))?;
    Ok(list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

fn kind(item: &Value) -> Option<&str> {
    item.get("kind").and_then(Value::as_str)
}

fn block_of(item: &Value) -> Option<&str> {
    item.pointer("/metadata/labels")
        .and_then(|l| l.get(BLOCK_LABEL))
        .and_then(Value::as_str)
}

fn text<'a>(item: &'a Value, pointer: &str) -> Option<&'a str> {
    item.pointer(pointer).and_then(Value::as_str)
}

fn pod_name(pod: &Value) -> &str {
    text(pod, "/metadata/name").unwrap_or("?")
}

fn phase(pod: &Value) -> &str {
    text(pod, "/status/phase").unwrap_or("Unknown")
}

/// How and why `pod` ended its workers, if it did.
fn lost(pod: &Value) -> Option<(JobState, String)> {
    let name = pod_name(pod);
    if phase(pod) == "Failed" {
        let reason = text(pod, "/status/reason");
        let message = text(pod, "/status/message").unwrap_or("");
        return Some(match reason {
            Some("Evicted") => (
                JobState::Cancelled,
                format!("pod {name} was evicted: {message}"),
            ),
            Some(r) => (
                JobState::Failed,
                format!("pod {name} failed: {r}: {message}"),
            ),
            None => (JobState::Failed, format!("pod {name} failed")),
        });
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Some((JobState::Cancelled, format!("pod {name} is being deleted")));
    }
    None
}

/// Why a container of `pod` will not start, if one will not.
fn cannot_start(pod: &Value) -> Option<String> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)?;
    statuses.iter().find_map(|c| {
        let waiting = c.pointer("/state/waiting")?;
        let reason = text(waiting, "/reason")?;
        FATAL_WAITING.contains(&reason).then(|| {
            let msg = text(waiting, "/message").unwrap_or("");
            format!("pod {}: {reason}: {msg}", pod_name(pod))
        })
    })
}

/// The state of a block from its pods; `seen` holds the pods seen running
/// before and is updated.
fn block_state(
    pods: &[&Value],
    has_deployment: bool,
    seen: &mut BTreeSet<String>,
) -> (JobState, Option<String>) {
    if !has_deployment {
        return (
            JobState::Missing,
            Some("the block's Deployment does not exist".into()),
        );
    }
    if let Some((state, why)) = pods.iter().find_map(|p| lost(p)) {
        return (state, Some(why));
    }
    let present: BTreeSet<&str> = pods.iter().map(|p| pod_name(p)).collect();
    if let Some(gone) = seen.iter().find(|n| !present.contains(n.as_str())) {
        return (JobState::Cancelled, Some(format!("pod {gone} was deleted")));
    }
    if let Some(why) = pods.iter().find_map(|p| cannot_start(p)) {
        return (JobState::Failed, Some(why));
    }
    let phases: Vec<&str> = pods.iter().map(|p| phase(p)).collect();
    for p in pods.iter().filter(|p| phase(p) == "Running") {
        seen.insert(pod_name(p).to_owned());
    }
    if phases.contains(&"Running") {
        (JobState::Running, None)
    } else if phases.iter().all(|p| *p == "Pending") {
        let why = pods
            .iter()
            .find_map(|p| {
                p.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find_map(|c| text(c, "/message")))
            })
            .map(str::to_owned);
        (JobState::Pending, why)
    } else if phases.iter().all(|p| *p == "Succeeded") {
        (JobState::Completed, None)
    } else {
        (
            JobState::Unknown,
            Some(format!("pod phases: {}", phases.join(", "))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stdout: &str) -> CommandOutput {
        CommandOutput {
            status: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    fn ids(names: &[&str]) -> Vec<JobId> {
        names.iter().map(|i| JobId((*i).into())).collect()
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
     "status": {"phase": "Pending", "containerStatuses": [{"name": "worker", "ready": false, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"registry.example.org/flotilla/worker:0.9\""}}}]}},
    {"kind": "Deployment", "metadata": {"name": "b-evicted", "labels": {"flotilla/block": "b-evicted"}}},
    {"kind": "Pod", "metadata": {"name": "b-evicted-2b-q", "labels": {"flotilla/block": "b-evicted"}},
     "status": {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}},
    {"kind": "Pod", "metadata": {"name": "b-evicted-2b-r", "labels": {"flotilla/block": "b-evicted"}},
     "status": {"phase": "Pending"}}
  ]
}"#;

    #[test]
    fn recorded_kubectl_output_maps_to_states() {
        let mut memory = PodMemory::default();
        let s = memory
            .statuses(
                &ids(&["b-run", "b-wait", "b-bad", "b-evicted", "b-gone"]),
                &out(GET),
            )
            .unwrap();
        use JobState::*;
        assert_eq!(
            s.iter().map(|x| x.state).collect::<Vec<_>>(),
            [Running, Pending, Failed, Cancelled, Missing]
        );
        let message = |i: usize| s[i].message.clone().unwrap();
        assert!(message(1).contains("Insufficient nvidia.com/gpu"));
        assert!(message(2).contains("ImagePullBackOff"));
        assert_eq!(
            message(3),
            "pod b-evicted-2b-q was evicted: The node was low on resource: memory."
        );
    }

    #[test]
    fn a_running_pod_that_disappears_ends_its_block_even_if_replaced() {
        let mut memory = PodMemory::default();
        let id = ids(&["b"]);
        let list = |pod: &str, phase: &str| {
            format!(
                r#"{{"items": [
                {{"kind": "Deployment", "metadata": {{"name": "b", "labels": {{"flotilla/block": "b"}}}}}},
                {{"kind": "Pod", "metadata": {{"name": "{pod}", "labels": {{"flotilla/block": "b"}}}}, "status": {{"phase": "{phase}"}}}}
            ]}}"#
            )
        };
        let state = |m: &mut PodMemory, text: String| m.statuses(&id, &out(&text)).unwrap();
        // A pending pod replaced by another loses nothing.
        assert_eq!(
            state(&mut memory, list("b-1", "Pending"))[0].state,
            JobState::Pending
        );
        assert_eq!(
            state(&mut memory, list("b-2", "Pending"))[0].state,
            JobState::Pending
        );
        assert_eq!(
            state(&mut memory, list("b-2", "Running"))[0].state,
            JobState::Running
        );
        let s = state(&mut memory, list("b-3", "Pending"));
        assert_eq!(s[0].state, JobState::Cancelled);
        assert_eq!(s[0].message.as_deref(), Some("pod b-2 was deleted"));
        memory.forget(&id[0]);
        assert_eq!(
            state(&mut memory, list("b-3", "Pending"))[0].state,
            JobState::Pending
        );
    }

    #[test]
    fn a_pod_being_deleted_ends_its_block() {
        let mut memory = PodMemory::default();
        let text = r#"{"items": [
            {"kind": "Deployment", "metadata": {"name": "b", "labels": {"flotilla/block": "b"}}},
            {"kind": "Pod", "metadata": {"name": "b-1", "deletionTimestamp": "2026-11-26T10:00:00Z", "labels": {"flotilla/block": "b"}}, "status": {"phase": "Running"}}
        ]}"#;
        let s = memory.statuses(&ids(&["b"]), &out(text)).unwrap();
        assert_eq!(s[0].state, JobState::Cancelled);
        assert_eq!(s[0].message.as_deref(), Some("pod b-1 is being deleted"));
    }

    #[test]
    fn kubectl_errors_are_errors_of_the_poll() {
        let failed = CommandOutput {
            status: 1,
            stdout: String::new(),
            stderr: "error: You must be logged in to the server (Unauthorized)\n".into(),
        };
        let e = PodMemory::default()
            .statuses(&ids(&["b"]), &failed)
            .unwrap_err();
        assert!(e.contains("Unauthorized"), "{e}");
    }
}
