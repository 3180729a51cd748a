//! The test Kubernetes control plane of `tests/infra/kube-up.sh`, seen from
//! a test: a namespace of its own (deleted on drop), the daemon's
//! kubeconfig with only the Role of `docs/kubernetes.md`, and a stand-in
//! kubelet.
//!
//! The control plane has no kubelet: its one node is a Node object marked
//! Ready. [`Kubelet`] plays the kubelet's part for the pods scheduled onto
//! it: it runs the container's command on this host with the environment
//! the pod spec names (values from Secrets read through the API, as the
//! kubelet does) and reports the pod `Running` through its `/status`
//! subresource.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// Where `kube-up.sh` says its admin kubeconfig is.
pub const KUBECONFIG_ENV: &str = "FLOTILLA_TEST_KUBECONFIG";

/// The admin kubeconfig of the test control plane, or `None` (after saying
/// so) when it is not running.
pub fn admin_kubeconfig() -> Option<String> {
    match std::env::var(KUBECONFIG_ENV) {
        Ok(k) if !k.is_empty() => Some(k),
        _ => {
            println!(
                "skipped: {KUBECONFIG_ENV} is not set; start the test control plane with `eval \"$(tests/infra/kube-up.sh)\"` (./scripts/test.sh does)"
            );
            None
        }
    }
}

/// A namespace of the test control plane, deleted (with everything in it)
/// when dropped.
pub struct Namespace {
    admin: String,
    /// The namespace's name.
    pub name: String,
    dir: tempfile::TempDir,
}

impl Namespace {
    /// A fresh namespace named after `test`, with the daemon's RBAC of
    /// `docs/kubernetes.md` applied in it.
    pub fn create(admin: &str, test: &str) -> Namespace {
        let dir = tempfile::Builder::new()
            .prefix("fl-kube-")
            .tempdir()
            .unwrap();
        let suffix: String = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        let name = format!("fl-{test}-{}", &suffix[suffix.len().saturating_sub(6)..]);
        let ns = Namespace {
            admin: admin.to_owned(),
            name,
            dir,
        };
        ns.admin_ok(&["create", "namespace", &ns.name]);
        let rbac =
            rbac_manifest().replace("namespace: flotilla", &format!("namespace: {}", ns.name));
        ns.apply(&rbac);
        ns
    }

    /// A scratch directory that lives as long as the namespace.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl` as the admin, in this namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, None)
    }

    fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.admin)
            .arg("--namespace")
            .arg(&self.name)
            .args(args);
        crate::output_with_stdin(cmd, stdin)
    }

    /// `kubectl` as the admin, which must succeed; its standard output.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        crate::ok(&self.kubectl(args))
    }

    /// Objects as JSON (`kubectl get ARGS -o json`).
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.admin_ok(&all)).unwrap()
    }

    /// The `items` of `kubectl get ARGS -o json`.
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.get_json(args)["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Creates the objects of `manifest` (YAML or JSON).
    pub fn apply(&self, manifest: &str) {
        crate::ok(&self.kubectl_stdin(&["create", "-f", "-"], Some(manifest)));
    }

    /// Value `key` of Secret `name`, decoded.
    pub fn secret_value(&self, name: &str, key: &str) -> String {
        self.admin_ok(&[
            "get",
            "secret",
            name,
            "-o",
            &format!("go-template={{{{index .data \"{key}\" | base64decode}}}}"),
        ])
    }

    /// Sets `pod`'s status through its `/status` subresource (a merge patch
    /// of `status`).
    pub fn set_pod_status(&self, pod: &str, status: &Value) {
        let patch = serde_json::json!({ "status": status }).to_string();
        self.admin_ok(&[
            "patch",
            "pod",
            pod,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// A kubeconfig for the `flotilla-daemon` service account (bound to the
    /// Role of `docs/kubernetes.md`), written in the scratch directory.
    pub fn daemon_kubeconfig(&self) -> PathBuf {
        let secret = crate::wait_until(
            std::time::Duration::from_secs(60),
            "the daemon's service account token",
            || {
                let out = self.kubectl(&[
                    "get",
                    "serviceaccount",
                    "flotilla-daemon",
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ]);
                let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                (out.status.success() && !name.is_empty()).then_some(name)
            },
        );
        let token = self.secret_value(&secret, "token");
        let cluster = |path: &str| {
            self.admin_ok(&[
                "config",
                "view",
                "--minify",
                "--raw",
                "-o",
                &format!("jsonpath={{.clusters[0].cluster.{path}}}"),
            ])
        };
        let server = cluster("server");
        let ca = cluster("certificate-authority");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": "flotilla-daemon", "user": {"token": token}}],
            "contexts": [{"name": "daemon", "context": {"cluster": "test", "user": "flotilla-daemon", "namespace": self.name}}],
            "current-context": "daemon",
        });
        let path = self.dir().join("daemon.kubeconfig");
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
        // No kubelet confirms a pod's end: force the deletion of the pods
        // the namespace's deletion (or the garbage collector) started, so
        // the namespace can go. A few rounds at most.
        for _ in 0..5 {
            let _ = self.kubectl(&["delete", "pods", "--all", "--grace-period=0", "--force"]);
            let left = self.kubectl(&["get", "pods", "-o", "name"]);
            if left.status.success() && left.stdout.is_empty() {
                break;
            }
        }
    }
}

/// The RBAC manifest of `docs/kubernetes.md` (its first YAML block).
pub fn rbac_manifest() -> String {
    let doc = std::fs::read_to_string(crate::workspace().join("docs/kubernetes.md")).unwrap();
    let start = doc
        .find("```yaml\n")
        .expect("docs/kubernetes.md has no YAML block")
        + 8;
    let len = doc[start..].find("```").unwrap();
    doc[start..start + len].to_owned()
}

/// The kubelet's part for the pods of one namespace: their commands run on
/// this host, killed when the pod is let go or this is dropped.
pub struct Kubelet<'a> {
    ns: &'a Namespace,
    pods: HashMap<String, Child>,
}

impl<'a> Kubelet<'a> {
    /// A kubelet for `ns`, running nothing yet.
    pub fn new(ns: &'a Namespace) -> Self {
        Kubelet {
            ns,
            pods: HashMap::new(),
        }
    }

    /// Starts every pod scheduled onto the node and not started yet (and
    /// not being deleted, nor left by a block whose Deployment is gone and
    /// which the garbage collector has yet to delete); returns the names of
    /// those it started.
    pub fn start_scheduled(&mut self) -> Vec<String> {
        let live: Vec<String> = self
            .ns
            .items(&["get", "deployments"])
            .iter()
            .filter(|d| d["metadata"].get("deletionTimestamp").is_none())
            .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        let mut started = Vec::new();
        for pod in self.ns.items(&["get", "pods"]) {
            let name = pod["metadata"]["name"].as_str().unwrap().to_owned();
            let scheduled = pod["spec"]["nodeName"].as_str().is_some();
            let pending = pod["status"]["phase"] == "Pending";
            let deleting = pod["metadata"].get("deletionTimestamp").is_some();
            let block = pod["metadata"]["labels"]["flotilla/block"].as_str();
            let orphan = !block.is_some_and(|b| live.iter().any(|d| d == b));
            if !scheduled || !pending || deleting || orphan || self.pods.contains_key(&name) {
                continue;
            }
            let child = self.run(&name, &pod["spec"]["containers"][0]);
            self.pods.insert(name.clone(), child);
            self.ns.set_pod_status(
                &name,
                &serde_json::json!({
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "containerStatuses": [{
                        "name": "worker", "ready": true, "restartCount": 0,
                        "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                        "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                    }],
                }),
            );
            started.push(name);
        }
        started
    }

    /// Runs `container`'s command with the environment its spec names.
    fn run(&self, pod: &str, container: &Value) -> Child {
        let command: Vec<&str> = container["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let home = self.ns.dir().join(pod);
        std::fs::create_dir_all(&home).unwrap();
        let mut cmd = Command::new(command[0]);
        cmd.args(&command[1..])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("FLOTILLA_NODE_NAME", pod);
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap();
            let value = match var.pointer("/valueFrom/secretKeyRef") {
                Some(r) => self
                    .ns
                    .secret_value(r["name"].as_str().unwrap(), r["key"].as_str().unwrap()),
                None => var["value"].as_str().unwrap_or("").to_owned(),
            };
            cmd.env(name, value);
        }
        let log = std::fs::File::create(home.join("container.log")).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        cmd.spawn().unwrap()
    }

    /// Stops `pod`'s processes, as the kubelet does when a pod ends.
    pub fn stop(&mut self, pod: &str) {
        if let Some(mut child) = self.pods.remove(pod) {
            kill_group(&mut child);
        }
    }

    /// The names of the pods running here.
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self.pods.keys().cloned().collect();
        names.sort();
        names
    }

    /// The log of `pod`'s container.
    pub fn log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.ns.dir().join(pod).join("container.log")).unwrap_or_default()
    }
}

impl Drop for Kubelet<'_> {
    fn drop(&mut self) {
        for (_, mut child) in self.pods.drain() {
            kill_group(&mut child);
        }
    }
}

fn kill_group(child: &mut Child) {
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}
