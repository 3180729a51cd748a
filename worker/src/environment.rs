//! A servable's declared Python environment, prepared once per node.
//!
//! A servable whose `servable.toml` declares `[environment]` packages (or
//! only a Python requirement) runs in a virtual environment made from the
//! node's Python (`[worker] python`, by default `python3` on the PATH that
//! `[worker] init` leaves) and the wheels captured at publication
//! (fetched like the servable's files: from the object store when this
//! worker can read it, else from the daemon into the node's cache), with
//! the servable shim installed into it. The first worker on a node makes
//! it under `CACHE_DIR/envs/KEY`, where KEY hashes the interpreter (path
//! and version), the requirements and the wheels; the others wait on a
//! lock and reuse it, as do later blocks. A venv is built where it will
//! be used (venvs are not relocatable) and marked ready last; one found
//! without the mark is half-built and made again.
//!
//! A node whose Python already has every requirement at its pinned version
//! (and the shim) runs the servable with it as it is: nothing to prepare.
//!
//! An environment that cannot be made (no such package, the wrong Python,
//! no venv module) fails the servable's batches with one message that
//! names what is missing, not retried. A failure mark beside the venv
//! makes every later attempt on the node (other slots, other blocks) fail
//! at once with the same message without running pip again, until it
//! expires ([`RETRY_AFTER`]), so a problem that was fixed heals.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use flotilla_protocol::environment::{PythonRequirement, Requirement, parse_release, pip_missing};
use flotilla_protocol::interchange::FailureKind;
use flotilla_protocol::servable::{FileEntry, ServableRecord};
use nix::fcntl::{Flock, FlockArg};

use crate::node_python::{NodePython, Probe};

/// The servable shim, installed into every environment so the node needs
/// no Flotilla Python package.
const SHIM: &str = include_str!("../../clients/python/flotilla_servable/__init__.py");

/// The package the shim imports.
const SHIM_NEEDS: &str = "msgpack";

/// How long a node remembers that an environment could not be made.
pub const RETRY_AFTER: Duration = Duration::from_secs(600);

/// The file inside a venv that says it is complete.
const READY: &str = ".flotilla-ready";

/// Prints the interpreter's real path and its version, then the
/// directories its packages may come from (its search path, and the user's
/// site directory), one a line ([`Probe::from_output`]).
const PROBE: &str = r#"
import os, site, sys
print(os.path.realpath(sys.executable))
print('%d.%d.%d' % sys.version_info[:3])
for p in sys.path:
    print(p)
print(site.getusersitepackages())
"#;

/// Exits 0 when every `[name, version-or-null]` pair in argv[1] (JSON) is
/// installed (at that version) and the shim imports; else prints the first
/// that is not.
const SATISFIED: &str = r#"
import json, sys
from importlib import metadata
for name, version in json.loads(sys.argv[1]):
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(name); sys.exit(1)
    if version is not None and have != version:
        print("%s==%s (has %s)" % (name, version, have)); sys.exit(1)
try:
    import flotilla_servable
except Exception:
    print("flotilla_servable"); sys.exit(1)
"#;

/// Why an environment is not there; what it makes of the batch.
pub type EnvError = (FailureKind, String);

/// The node's Python, as probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    /// Its real path.
    pub path: String,
    /// Its version (`3.11.7`).
    pub version: String,
}

/// Where a servable's processes find their Python.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The node's Python has everything: run as the PATH says.
    Node,
    /// This venv: its `bin` goes first on the PATH.
    Venv(PathBuf),
}

/// The environments of the servables this worker runs.
pub struct Environments {
    /// `[worker] python`.
    python: String,
    /// The node's cache; environments go in its `envs`.
    cache_dir: PathBuf,
    /// The node, for messages.
    node: String,
    /// The interpreter, probed once (or found probed on this node).
    probe: OnceLock<Result<Probe, String>>,
    /// Environments in place, by servable id.
    ready: Mutex<HashMap<String, Prepared>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What is needed, worked out from the record.
struct Wanted<'a> {
    requirements: Vec<String>,
    wheels: &'a [FileEntry],
}

fn wanted(record: &ServableRecord) -> Option<Wanted<'_>> {
    let env = record.spec.environment.as_ref()?;
    if !env.wants_venv() {
        return None;
    }
    Some(match &record.lock {
        Some(lock) => Wanted {
            requirements: lock.requirements.clone(),
            wheels: &lock.wheels,
        },
        // Published without capturing (by an older client): what it declares.
        None => {
            let mut requirements = env.packages.clone();
            if !env
                .packages
                .iter()
                .any(|p| Requirement::parse(p).is_ok_and(|r| r.normal_name() == SHIM_NEEDS))
            {
                requirements.push(SHIM_NEEDS.to_owned());
            }
            Wanted {
                requirements,
                wheels: &[],
            }
        }
    })
}

/// The name of an environment: a hash of the interpreter, the
/// requirements and the wheels, so anything that changes what would be
/// installed makes another one.
pub fn env_key(interpreter: &Interpreter, requirements: &[String], wheels: &[FileEntry]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"flotilla-env-1\0");
    for part in [&interpreter.path, &interpreter.version] {
        h.update(part.as_bytes());
        h.update(b"\0");
    }
    for r in requirements {
        h.update(r.as_bytes());
        h.update(b"\n");
    }
    h.update(b"\0");
    let mut hashes: Vec<(&str, &str)> = wheels
        .iter()
        .map(|w| (w.path.as_str(), w.blake3.as_str()))
        .collect();
    hashes.sort_unstable();
    for (name, hash) in hashes {
        h.update(name.as_bytes());
        h.update(b" ");
        h.update(hash.as_bytes());
        h.update(b"\n");
    }
    h.finalize().to_hex()[..32].to_owned()
}

/// A failure mark: the reason it holds, if it is younger than `window`.
/// An older one is removed (a problem may have been fixed since).
pub fn read_failure(path: &Path, window: Duration, now: SystemTime) -> Option<String> {
    let meta = fs::symlink_metadata(path).ok()?;
    let age = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or_default();
    if !meta.is_file() || age >= window {
        let _ = fs::remove_file(path);
        return None;
    }
    let reason = fs::read_to_string(path).ok()?;
    let reason = reason.trim();
    (!reason.is_empty()).then(|| reason.to_owned())
}

/// Writes a failure mark holding `reason` (complete or not at all).
pub fn write_failure(path: &Path, reason: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("failed.{}.tmp", std::process::id()));
    fs::write(&tmp, reason)?;
    fs::rename(&tmp, path)
}

/// What a failed `python -m venv` means, for a person.
pub fn venv_problem(python: &str, stderr: &str) -> String {
    if stderr.contains("ensurepip") || stderr.contains("No module named venv") {
        format!(
            "{python} cannot make a venv (its venv or ensurepip module is missing): load a Python module in [worker] init, or set [worker] python"
        )
    } else {
        format!("{python} -m venv failed: {}", last_lines(stderr, 3))
    }
}

/// What a failed `pip install` means, for a person.
pub fn pip_problem(stderr: &str) -> String {
    pip_missing(stderr).unwrap_or_else(|| format!("pip install failed: {}", last_lines(stderr, 4)))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// A step's failure: unrunnable (marked, not retried) or transient.
enum StepError {
    Permanent(String),
    Transient(String),
}

impl Environments {
    /// Environments made with `python` under `cache_dir/envs`, on `node`.
    pub fn new(python: String, cache_dir: PathBuf, node: String) -> Self {
        Environments {
            python,
            cache_dir,
            node,
            probe: OnceLock::new(),
            ready: Mutex::new(HashMap::new()),
        }
    }

    /// The node's remembered answers about its Python, when its cache
    /// directory is usable (see [`crate::node_python`]).
    fn node_python(&self) -> Option<NodePython> {
        crate::cache::NodeCache::open(&self.cache_dir).ok()?;
        let envs = self.cache_dir.join("envs");
        match fs::DirBuilder::new().mode(0o700).create(&envs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        Some(NodePython::new(envs))
    }

    /// The node's Python: as a worker on this node probed it before, if
    /// it has not changed since, else probed now (once per worker).
    fn probe(&self) -> Result<Probe, String> {
        self.probe
            .get_or_init(|| {
                let node = self.node_python();
                let fingerprint = crate::node_python::fingerprint(
                    &self.python,
                    std::env::var_os("PATH").as_deref(),
                    |name| std::env::var_os(name),
                );
                if let (Some(node), Some(fingerprint)) = (&node, &fingerprint)
                    && let Some(probe) = node.probe(fingerprint)
                {
                    tracing::debug!(python = %self.python, interpreter = %probe.interpreter.path, "the node's Python as probed before");
                    return Ok(probe);
                }
                let probe = self.run_probe()?;
                if let (Some(node), Some(fingerprint)) = (&node, &fingerprint)
                    && let Err(e) = node.keep_probe(fingerprint, &probe)
                {
                    tracing::debug!(python = %self.python, error = %e, "cannot keep the probe of the node's Python");
                }
                Ok(probe)
            })
            .clone()
    }

    /// Runs the node's Python to ask what it is.
    fn run_probe(&self) -> Result<Probe, String> {
        let out = Command::new(&self.python)
                    .args(["-c", PROBE])
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| {
                        format!(
                            "`{}` cannot be run ({e}): load a Python module in [worker] init, or set [worker] python",
                            self.python
                        )
                    })?;
        let text = String::from_utf8_lossy(&out.stdout);
        match Probe::from_output(&text).filter(|_| out.status.success()) {
            Some(probe) => Ok(probe),
            None => Err(format!(
                "`{}` is not a working Python ({}): load a Python module in [worker] init, or set [worker] python",
                self.python,
                last_lines(&String::from_utf8_lossy(&out.stderr), 2)
            )),
        }
    }

    /// The environment `record`'s processes run in, prepared if need be;
    /// `None` when it declares none (or an image). `fetch` gives the path
    /// of a wheel's bytes (the object store or the node's cache).
    pub fn prepare(
        &self,
        record: &ServableRecord,
        fetch: &dyn Fn(&FileEntry) -> Result<PathBuf, EnvError>,
    ) -> Result<Option<Prepared>, EnvError> {
        let Some(wanted) = wanted(record) else {
            return Ok(None);
        };
        let id = record.id();
        if let Some(done) = lock(&self.ready).get(&id) {
            return Ok(Some(done.clone()));
        }
        let fail = |reason: String| {
            (
                FailureKind::Unrunnable,
                format!(
                    "environment of {id} cannot be prepared on node {}: {reason}",
                    self.node
                ),
            )
        };
        let probe = self.probe().map_err(fail)?;
        let interpreter = &probe.interpreter;
        if let Some(python) = record
            .spec
            .environment
            .as_ref()
            .and_then(|e| e.python.as_deref())
        {
            let requirement = PythonRequirement::parse(python).map_err(|e| fail(e.to_string()))?;
            let version = parse_release(&interpreter.version).unwrap_or_default();
            if !requirement.matches(&version) {
                return Err(fail(format!(
                    "it needs Python {requirement} and `{}` here is Python {} ({}): load another Python module in [worker] init, or set [worker] python",
                    self.python, interpreter.version, interpreter.path
                )));
            }
        }
        let prepared = self.prepare_venv(&id, &probe, &wanted, fetch, &fail)?;
        lock(&self.ready).insert(id, prepared.clone());
        Ok(Some(prepared))
    }

    fn prepare_venv(
        &self,
        id: &str,
        probe: &Probe,
        wanted: &Wanted<'_>,
        fetch: &dyn Fn(&FileEntry) -> Result<PathBuf, EnvError>,
        fail: &dyn Fn(String) -> EnvError,
    ) -> Result<Prepared, EnvError> {
        let interpreter = &probe.interpreter;
        let key = env_key(interpreter, &wanted.requirements, wanted.wheels);
        crate::cache::NodeCache::open(&self.cache_dir).map_err(|e| fail(e.to_string()))?;
        let envs = self.cache_dir.join("envs");
        match fs::DirBuilder::new().mode(0o700).create(&envs) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(format!("cannot create {}: {e}", envs.display()))),
        }
        let venv = envs.join(&key);
        let failed = envs.join(format!("{key}.failed"));
        let known = |venv: &Path| -> Result<Option<Prepared>, EnvError> {
            if let Some(reason) = read_failure(&failed, RETRY_AFTER, SystemTime::now()) {
                return Err(fail(reason));
            }
            if venv.join(READY).is_file() {
                tracing::info!(servable = %id, env = %key, venv = %venv.display(), "environment found ready on this node");
                return Ok(Some(Prepared::Venv(venv.to_owned())));
            }
            Ok(None)
        };
        if let Some(done) = known(&venv)? {
            return Ok(done);
        }
        if self.node_python_has(&key, probe, &wanted.requirements) {
            tracing::info!(servable = %id, python = %interpreter.path, "the node's Python already has what the servable needs; no environment to prepare");
            return Ok(Prepared::Node);
        }
        let lock_path = envs.join(format!("{key}.lock"));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| fail(format!("{}: {e}", lock_path.display())))?;
        let waited = Instant::now();
        let _held = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((file, _)) => {
                tracing::info!(servable = %id, env = %key, "another worker on this node is preparing the environment; waiting for it");
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
                    fail(format!("cannot lock {}: {errno}", lock_path.display()))
                })?
            }
        };
        // Whoever held the lock may have made it, or failed, meanwhile.
        if let Some(done) = known(&venv)? {
            tracing::info!(servable = %id, env = %key, waited_ms = waited.elapsed().as_millis() as u64, "environment made by another worker");
            return Ok(done);
        }
        let started = Instant::now();
        match self.build(id, &key, &venv, &envs, wanted, fetch) {
            Ok(()) => {
                tracing::info!(
                    servable = %id,
                    env = %key,
                    venv = %venv.display(),
                    wheels = wanted.wheels.len(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "environment prepared"
                );
                Ok(Prepared::Venv(venv))
            }
            Err(StepError::Transient(message)) => {
                let _ = fs::remove_dir_all(&venv);
                Err((FailureKind::Crashed, message))
            }
            Err(StepError::Permanent(reason)) => {
                let _ = fs::remove_dir_all(&venv);
                if let Err(e) = write_failure(&failed, &reason) {
                    tracing::warn!(path = %failed.display(), error = %e, "cannot mark the environment failed");
                }
                tracing::error!(servable = %id, env = %key, reason = %reason, "environment cannot be prepared");
                Err(fail(reason))
            }
        }
    }

    /// Whether the node's Python has every requirement at its pinned
    /// version, and the shim: as found before on this node for environment
    /// `key` if its package directories have not changed since, else
    /// asked (and a yes kept for the next worker).
    fn node_python_has(&self, key: &str, probe: &Probe, requirements: &[String]) -> bool {
        let node = self.node_python();
        if node.as_ref().is_some_and(|n| n.satisfied(key, probe)) {
            return true;
        }
        // Taken before asking: a change made while Python looks is seen
        // by the next worker.
        let state = probe.dirs_state();
        let has = self.ask_node_python(requirements);
        if has
            && let Some(node) = node
            && let Err(e) = node.keep_satisfied(key, &state)
        {
            tracing::debug!(env = %key, error = %e, "cannot keep that the node's Python has the packages");
        }
        has
    }

    /// Runs the node's Python to ask whether it has every requirement.
    fn ask_node_python(&self, requirements: &[String]) -> bool {
        let pairs: Option<Vec<(String, Option<String>)>> = requirements
            .iter()
            .map(|r| {
                let r = Requirement::parse(r).ok()?;
                let pin = r
                    .specifier
                    .split(',')
                    .find_map(|c| c.trim().strip_prefix("=="))
                    .map(|v| v.trim().to_owned());
                Some((r.name, pin))
            })
            .collect();
        let Some(pairs) = pairs else {
            return false;
        };
        let json = serde_json_like(&pairs);
        // The command, not its real path: a venv's python is a link to
        // the interpreter it was made from, and has more packages.
        Command::new(&self.python)
            .args(["-c", SATISFIED, &json])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Makes the venv in `venv` (removing a half-built one), installs the
    /// requirements and the shim, and marks it ready.
    fn build(
        &self,
        id: &str,
        key: &str,
        venv: &Path,
        envs: &Path,
        wanted: &Wanted<'_>,
        fetch: &dyn Fn(&FileEntry) -> Result<PathBuf, EnvError>,
    ) -> Result<(), StepError> {
        let permanent = StepError::Permanent;
        if venv.exists() {
            tracing::warn!(servable = %id, env = %key, venv = %venv.display(), "removing a half-built environment");
            fs::remove_dir_all(venv)
                .map_err(|e| permanent(format!("cannot remove {}: {e}", venv.display())))?;
        }
        let step = |name: &str, started: Instant| {
            tracing::info!(servable = %id, env = %key, step = %name, duration_ms = started.elapsed().as_millis() as u64, "environment step done");
        };

        let t = Instant::now();
        let out = Command::new(&self.python)
            .args(["-m", "venv"])
            .arg(venv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| permanent(format!("cannot run `{} -m venv`: {e}", self.python)))?;
        if !out.status.success() {
            return Err(permanent(venv_problem(
                &self.python,
                &String::from_utf8_lossy(&out.stderr),
            )));
        }
        step("venv", t);

        let wheel_dir = envs.join(format!("{key}.wheels"));
        let _ = fs::remove_dir_all(&wheel_dir);
        if !wanted.wheels.is_empty() {
            let t = Instant::now();
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&wheel_dir)
                .map_err(|e| permanent(format!("cannot create {}: {e}", wheel_dir.display())))?;
            for wheel in wanted.wheels {
                let source = fetch(wheel).map_err(|(kind, message)| match kind {
                    FailureKind::Crashed => StepError::Transient(message),
                    _ => StepError::Permanent(message),
                })?;
                let name = Path::new(&wheel.path)
                    .file_name()
                    .filter(|n| n.to_string_lossy().ends_with(".whl"))
                    .ok_or_else(|| permanent(format!("`{}` is not a wheel", wheel.path)))?;
                let target = wheel_dir.join(name);
                if fs::hard_link(&source, &target).is_err() {
                    std::os::unix::fs::symlink(&source, &target)
                        .map_err(|e| permanent(format!("cannot link {}: {e}", target.display())))?;
                }
            }
            step("wheels", t);
        }

        let t = Instant::now();
        let python = venv.join("bin").join("python");
        let mut pip = Command::new(&python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
        ]);
        if !wanted.wheels.is_empty() {
            pip.arg("--no-index").arg("--find-links").arg(&wheel_dir);
        }
        let out = pip
            .args(&wanted.requirements)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| permanent(format!("cannot run pip in {}: {e}", venv.display())))?;
        let _ = fs::remove_dir_all(&wheel_dir);
        if !out.status.success() {
            return Err(permanent(pip_problem(&String::from_utf8_lossy(
                &out.stderr,
            ))));
        }
        step("pip-install", t);

        let t = Instant::now();
        let out = Command::new(&python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| permanent(format!("cannot run {}: {e}", python.display())))?;
        let site = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || site.is_empty() {
            return Err(permanent(format!(
                "{} does not say where its packages go",
                python.display()
            )));
        }
        let shim_dir = Path::new(&site).join("flotilla_servable");
        fs::create_dir_all(&shim_dir)
            .and_then(|()| fs::write(shim_dir.join("__init__.py"), SHIM))
            .map_err(|e| permanent(format!("cannot install the shim in {site}: {e}")))?;
        step("shim", t);

        let mut ready = File::create(venv.join(READY))
            .map_err(|e| permanent(format!("cannot mark {} ready: {e}", venv.display())))?;
        writeln!(ready, "{}", wanted.requirements.join(" "))
            .and_then(|()| ready.sync_all())
            .map_err(|e| permanent(format!("cannot mark {} ready: {e}", venv.display())))?;
        Ok(())
    }
}

/// `[["name", "1.0"], ["other", null]]`: JSON of name/pin pairs (names and
/// versions hold no characters that need escaping, checked by the parser).
fn serde_json_like(pairs: &[(String, Option<String>)]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let items: Vec<String> = pairs
        .iter()
        .map(|(n, v)| {
            format!(
                "[{}, {}]",
                quote(n),
                v.as_deref().map_or("null".to_owned(), quote)
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interp(path: &str, version: &str) -> Interpreter {
        Interpreter {
            path: path.into(),
            version: version.into(),
        }
    }

    fn wheel(name: &str, hash: char) -> FileEntry {
        FileEntry {
            path: name.into(),
            blake3: hash.to_string().repeat(64),
            size: 1,
        }
    }

    #[test]
    fn the_key_changes_with_what_would_be_installed() {
        let py = interp("/usr/bin/python3.11", "3.11.7");
        let reqs = vec!["numpy==2.1.0".to_owned(), "msgpack".to_owned()];
        let wheels = vec![wheel("a.whl", 'a'), wheel("b.whl", 'b')];
        let key = env_key(&py, &reqs, &wheels);
        assert_eq!(key.len(), 32);
        // Wheel order does not matter; everything else does.
        let swapped = vec![wheel("b.whl", 'b'), wheel("a.whl", 'a')];
        assert_eq!(env_key(&py, &reqs, &swapped), key);
        assert_ne!(
            env_key(&interp("/usr/bin/python3.11", "3.11.8"), &reqs, &wheels),
            key
        );
        assert_ne!(
            env_key(&interp("/opt/py/bin/python3", "3.11.7"), &reqs, &wheels),
            key
        );
        assert_ne!(env_key(&py, &reqs[..1], &wheels), key);
        assert_ne!(env_key(&py, &reqs, &wheels[..1]), key);
        assert_ne!(
            env_key(&py, &reqs, &[wheel("a.whl", 'c'), wheel("b.whl", 'b')]),
            key
        );
        // Requirements do not run into each other.
        assert_ne!(
            env_key(&py, &["ab".into(), "c".into()], &[]),
            env_key(&py, &["a".into(), "bc".into()], &[])
        );
    }

    #[test]
    fn a_failure_mark_holds_its_reason_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("k.failed");
        let now = SystemTime::now();
        assert_eq!(read_failure(&mark, RETRY_AFTER, now), None);
        write_failure(&mark, "pip found no package named `x`\n").unwrap();
        assert_eq!(
            read_failure(&mark, RETRY_AFTER, now).as_deref(),
            Some("pip found no package named `x`")
        );
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // After the window it is gone, and stays gone.
        let later = now + RETRY_AFTER + Duration::from_secs(1);
        assert_eq!(read_failure(&mark, RETRY_AFTER, later), None);
        assert!(!mark.exists());
        assert_eq!(read_failure(&mark, RETRY_AFTER, now), None);
    }

    #[test]
    fn failures_are_told_in_words() {
        let e = venv_problem(
            "python3",
            "The virtual environment was not created successfully because ensurepip is not\navailable.  On Debian/Ubuntu systems, you need to install the python3-venv\n",
        );
        assert!(
            e.starts_with("python3 cannot make a venv") && e.contains("[worker] init"),
            "{e}"
        );
        let e = pip_problem(
            "ERROR: Could not find a version that satisfies the requirement no-such-pkg-flotilla (from versions: none)\nERROR: No matching distribution found for no-such-pkg-flotilla\n",
        );
        assert_eq!(e, "pip found no package named `no-such-pkg-flotilla`");
        let e = pip_problem("a\nb\nERROR: disk full\n");
        assert_eq!(e, "pip install failed: a / b / ERROR: disk full");
    }

    #[test]
    fn pins_travel_to_python_as_json() {
        let json = serde_json_like(&[
            ("numpy".into(), Some("2.1.0".into())),
            ("msgpack".into(), None),
        ]);
        assert_eq!(json, r#"[["numpy", "2.1.0"], ["msgpack", null]]"#);
    }

    /// With no Python at all, the servable's batches fail at once with the
    /// remedy, and nothing is retried.
    #[test]
    fn a_node_without_the_python_says_so() {
        use flotilla_protocol::environment::{Environment, EnvironmentLock};
        let dir = tempfile::tempdir().unwrap();
        let envs = Environments::new(
            "no-such-python-flotilla".into(),
            dir.path().join("cache"),
            "n1".into(),
        );
        let mut record = crate::exec::tests::record(&"ab".repeat(32));
        record.spec.environment = Some(Environment {
            packages: vec!["numpy".into()],
            ..Environment::default()
        });
        record.lock = Some(EnvironmentLock {
            requirements: vec!["numpy==2.1.0".into(), "msgpack".into()],
            wheels: vec![],
        });
        let (kind, message) = envs
            .prepare(&record, &|_| unreachable!("nothing to fetch"))
            .unwrap_err();
        assert_eq!(kind, FailureKind::Unrunnable);
        assert!(
            message.starts_with("environment of raced@1.0.0 cannot be prepared on node n1: `no-such-python-flotilla` cannot be run"),
            "{message}"
        );
        // A servable with no environment needs nothing of it.
        record.spec.environment = None;
        assert_eq!(envs.prepare(&record, &|_| unreachable!()).unwrap(), None);
    }
}
