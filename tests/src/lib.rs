//! A harness for end-to-end tests: real `flotilla` daemons and
//! `flotilla-worker` processes in a throw-away state directory, talking on
//! loopback.
//!
//! The binaries are the ones `cargo test --workspace` builds (the `cli` and
//! `worker` packages have integration tests of their own, which makes cargo
//! build their executables before any test runs). Every process a test starts
//! is killed when its handle is dropped, so a failing test leaves nothing
//! behind. Nothing here sleeps to synchronise: [`wait_until`] polls a
//! condition against a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod kube;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::Client;
use flotilla_engine::state_dir::{DaemonInfo, StateDir};
use flotilla_protocol::launch::{HOME_ENV, LOG_ENV, SECRET_ENV, flag};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of a workspace binary (`flotilla`, `flotilla-worker`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    // Tests run from target/<profile>/deps/, harness binaries from
    // target/<profile>/: look beside the executable, then one level up.
    let exe = std::env::current_exe().unwrap();
    let here = exe.parent().unwrap();
    let path = [here, here.parent().unwrap_or(here)]
        .iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| here.join(name));
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --workspace --bins` (or run `cargo test --workspace`)",
        path.display()
    );
    path
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `bin` directory of the Python environment servables run with
/// (`FLOTILLA_TEST_PYTHON_BIN`, else the workspace's `.venv/bin`, which
/// `scripts/test.sh` creates with msgpack, numpy, scikit-learn and the
/// `flotilla_servable` shim). Panics with instructions when it is missing.
pub fn python_bin() -> PathBuf {
    let dir = std::env::var_os("FLOTILLA_TEST_PYTHON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin"));
    let python = dir.join("python3");
    let ok = Command::new(&python)
        .args(["-c", "import flotilla_servable, msgpack, numpy, sklearn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import flotilla_servable, msgpack, numpy and sklearn: run ./scripts/test.sh (it makes .venv) or set FLOTILLA_TEST_PYTHON_BIN",
        python.display()
    );
    dir
}

/// The wheelhouse the servable-environment tests publish from with no
/// package index (`FLOTILLA_TEST_WHEELHOUSE`, else the workspace's
/// `.wheelhouse`, which `scripts/test.sh` fills with the wheels of
/// msgpack, numpy and scikit-learn at .venv's versions). Panics with
/// instructions when it is missing.
pub fn wheelhouse() -> PathBuf {
    let dir = wheelhouse_dir();
    assert!(
        dir.join(".complete").is_file(),
        "{} has no complete wheelhouse: run ./scripts/test.sh, or `. scripts/python-env.sh && . scripts/test-wheelhouse.sh` (it downloads msgpack, numpy and scikit-learn wheels at .venv's versions once), or set FLOTILLA_TEST_WHEELHOUSE",
        dir.display()
    );
    dir
}

fn wheelhouse_dir() -> PathBuf {
    std::env::var_os("FLOTILLA_TEST_WHEELHOUSE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".wheelhouse"))
}

/// pip's settings for publishing from the wheelhouse, with no index, when
/// there is one (servables with an `[environment]` capture wheels).
fn pip_offline() -> Vec<(&'static str, std::ffi::OsString)> {
    let dir = wheelhouse_dir();
    if dir.join(".complete").is_file() {
        vec![
            ("PIP_NO_INDEX", "1".into()),
            ("PIP_FIND_LINKS", dir.into_os_string()),
        ]
    } else {
        Vec::new()
    }
}

/// `PATH` with the servables' Python environment first, if there is one.
fn path_with_python() -> std::ffi::OsString {
    let venv = std::env::var_os("FLOTILLA_TEST_PYTHON_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin"));
    let mut parts = vec![venv];
    if let Some(path) = std::env::var_os("PATH") {
        parts.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(parts).unwrap_or_default()
}

/// The standard output of a command that must have succeeded; panics with
/// both of its outputs otherwise.
pub fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The standard output of a command that must have succeeded, as JSON.
pub fn json_of(out: &Output) -> serde_json::Value {
    let text = ok(out);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// How many lines of `log` carry `message` and every one of `fields`.
pub fn lines_with(log: &str, message: &str, fields: &[&str]) -> usize {
    log.lines()
        .filter(|l| l.contains(message) && fields.iter().all(|f| l.contains(f)))
        .count()
}

/// The first `n` images of scikit-learn's digits dataset and their labels,
/// read with the test Python ([`python_bin`]).
pub fn digits(n: usize) -> (Vec<serde_json::Value>, Vec<i64>) {
    let out = Command::new(python_bin().join("python3"))
        .args([
            "-c",
            &format!(
                "import json; from sklearn import datasets; d = datasets.load_digits(); \
                 print(json.dumps([d.images[:{n}].tolist(), d.target[:{n}].tolist()]))"
            ),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the test Python: {e}"));
    let v = json_of(&out);
    let images = v[0].as_array().cloned().unwrap_or_default();
    let labels = v[1]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_i64()).collect())
        .unwrap_or_default();
    (images, labels)
}

/// Runs `cmd` to its end with `stdin` as its standard input (none: no
/// input); its outputs.
pub fn output_with_stdin(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if let Some(text) = stdin
        && let Some(mut input) = child.stdin.take()
    {
        input
            .write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write to {cmd:?}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {cmd:?}: {e}"))
}

/// Polls `check` every few milliseconds until it returns `Some`, or panics
/// after `limit` naming `what`.
pub fn wait_until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A site file for tests: no blocks, even for queued work (tests start
/// workers themselves; `max_blocks` lets a test's pool scale), fast
/// heartbeats, short grace. `extra` is appended (later keys must not repeat
/// these tables; use [`config_with`] to override).
pub fn test_config() -> String {
    config_with(&[])
}

/// [`test_config`] with `(table, key, value)` overrides.
pub fn config_with(overrides: &[(&str, &str, &str)]) -> String {
    let mut tables: Vec<(&str, Vec<(String, String)>)> = vec![
        ("daemon", vec![("shutdown_grace_s".into(), "10".into())]),
        (
            "interchange",
            vec![
                ("heartbeat_period_s".into(), "0.5".into()),
                ("heartbeat_threshold_s".into(), "3".into()),
            ],
        ),
        (
            "provider",
            vec![
                ("init_blocks".into(), "0".into()),
                ("min_blocks".into(), "0".into()),
                ("max_blocks".into(), "0".into()),
                ("poll_interval_s".into(), "0.1".into()),
            ],
        ),
        ("worker", vec![("lost_daemon_exit_s".into(), "10".into())]),
    ];
    for (table, key, value) in overrides {
        let entry = match tables.iter_mut().find(|(t, _)| t == table) {
            Some(e) => e,
            None => {
                tables.push((table, Vec::new()));
                tables.last_mut().unwrap()
            }
        };
        entry.1.retain(|(k, _)| k != key);
        entry.1.push(((*key).to_owned(), (*value).to_owned()));
    }
    let mut text = String::new();
    for (table, keys) in tables {
        text.push_str(&format!("[{table}]\n"));
        for (k, v) in keys {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text.push('\n');
    }
    text
}

/// `site-examples/NAME.toml` mapped onto this machine's test systems by
/// `tests/site-overrides/NAME.toml`: its tables are merged over the
/// example's, and its top-level `remove` list drops dotted keys (settings
/// the test systems lack, such as a facility's account). The override file
/// says why each change is needed, so what a test runs stays the example.
pub fn site_example_for_tests(name: &str) -> String {
    let read = |path: PathBuf| -> toml::Table {
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let mut site = read(workspace().join(format!("site-examples/{name}.toml")));
    let mut overrides = read(workspace().join(format!("tests/site-overrides/{name}.toml")));
    let remove = overrides.remove("remove");
    merge_tables(&mut site, overrides);
    for key in remove
        .iter()
        .flat_map(|v| v.as_array().cloned().unwrap_or_default())
    {
        let key = key
            .as_str()
            .unwrap_or_else(|| panic!("remove: {key} is not a string"));
        let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
        let mut at = &mut site;
        for part in table.split('.').filter(|p| !p.is_empty()) {
            at = at
                .get_mut(part)
                .and_then(toml::Value::as_table_mut)
                .unwrap_or_else(|| panic!("remove: {key}: no table {part}"));
        }
        assert!(at.remove(leaf).is_some(), "remove: {key} is not set");
    }
    toml::to_string(&site).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => {
                merge_tables(mine, theirs);
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A daemon under test, its state directory and the workers started for it.
pub struct Flotilla {
    home: tempfile::TempDir,
    config: PathBuf,
    daemon: Option<Child>,
    workers: Vec<Child>,
}

impl Flotilla {
    /// Starts a daemon with `config_toml` and waits until it answers.
    pub fn start(config_toml: &str) -> Flotilla {
        Flotilla::start_with(|_| config_toml.to_owned())
    }

    /// Starts a daemon with the site file `site(home)` makes from the test's
    /// state directory.
    pub fn start_with(site: impl FnOnce(&Path) -> String) -> Flotilla {
        Flotilla::start_with_path(site, None)
    }

    /// [`Flotilla::start_with`], with `first` ahead on the daemon's `PATH`.
    pub fn start_with_path(site: impl FnOnce(&Path) -> String, first: Option<&Path>) -> Flotilla {
        let home = tempfile::Builder::new()
            .prefix("fl-e2e-")
            .tempdir()
            .unwrap();
        let config = home.path().join("site.toml");
        std::fs::write(&config, site(home.path())).unwrap();
        let mut f = Flotilla {
            home,
            config,
            daemon: None,
            workers: Vec::new(),
        };
        f.start_daemon_with_path(first);
        f
    }

    /// The state directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Starts the daemon (again) on the same state directory.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with_path(None);
    }

    /// Starts the daemon with `first` ahead of everything on its `PATH` (to
    /// shadow a command with a stand-in).
    pub fn start_daemon_with_path(&mut self, first: Option<&Path>) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home().join("daemon.log"))
            .unwrap();
        let mut path = path_with_python();
        if let Some(dir) = first {
            let mut parts = vec![dir.to_path_buf()];
            parts.extend(std::env::split_paths(&path));
            path = std::env::join_paths(parts).unwrap_or_default();
        }
        let mut cmd = Command::new(bin("flotilla"));
        cmd.arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env("PATH", path)
            .env(HOME_ENV, self.home());
        self.daemon = Some(spawn_logged(cmd, log));
        wait_until(Duration::from_secs(30), "the daemon to answer", || {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start ({status}):\n{}", self.log());
            }
            let c = Client::connect(self.home()).ok()?;
            c.ping().ok()
        });
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home().join("daemon.log")).unwrap_or_default()
    }

    /// A fresh client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.home()).unwrap()
    }

    /// The daemon's contact file (interchange port).
    pub fn info(&self) -> DaemonInfo {
        StateDir::at(self.home()).read_info().unwrap()
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("no daemon").id()
    }

    /// Runs the `flotilla` CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    /// Runs the CLI with `stdin` piped in.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(bin("flotilla"));
        cmd.args(args)
            .envs(pip_offline())
            .env("PATH", path_with_python())
            .env(HOME_ENV, self.home());
        output_with_stdin(cmd, stdin)
    }

    /// Starts a worker attached through the state directory; returns its pid.
    pub fn spawn_worker(&mut self, extra: &[&str]) -> u32 {
        let index = self.workers.len();
        let log = std::fs::File::create(self.home().join(format!("worker-{index}.log"))).unwrap();
        let mut cmd = Command::new(bin("flotilla-worker"));
        cmd.arg(flag::STATE_DIR)
            .arg(self.home())
            .args(extra)
            .env("PATH", path_with_python())
            // Servable templates outlive their workers by design; a
            // test's end within seconds of its last use.
            .env("FLOTILLA_TEMPLATE_IDLE_S", "5")
            .env_remove(SECRET_ENV);
        let child = spawn_logged(cmd, log);
        let pid = child.id();
        self.workers.push(child);
        pid
    }

    /// Starts a worker like [`Flotilla::spawn_worker`], with `env` set
    /// over its environment (a `PATH` of a node without the test Python).
    pub fn spawn_worker_env(&mut self, extra: &[&str], env: &[(&str, std::ffi::OsString)]) -> u32 {
        let index = self.workers.len();
        let log = std::fs::File::create(self.home().join(format!("worker-{index}.log"))).unwrap();
        let mut cmd = Command::new(bin("flotilla-worker"));
        cmd.arg(flag::STATE_DIR)
            .arg(self.home())
            .args(extra)
            .env("PATH", path_with_python())
            .env("FLOTILLA_TEMPLATE_IDLE_S", "5")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove(SECRET_ENV);
        let child = spawn_logged(cmd, log);
        let pid = child.id();
        self.workers.push(child);
        pid
    }

    /// Starts a worker with 2 slots and id `name`, and waits until it is
    /// registered (with any workers already there).
    pub fn spawn_worker_named(&mut self, name: &str) -> u32 {
        let before = self.client().status().map_or(0, |s| s.workers.len());
        let pid = self.spawn_worker(&[flag::SLOTS, "2", flag::WORKER_ID, name]);
        self.wait_workers(before + 1);
        pid
    }

    /// Publishes a copy of the servable in `dir` (so its build step never
    /// writes into the source tree); returns the CLI's output, or its error.
    pub fn publish(&self, dir: &Path) -> Result<String, String> {
        let copy = self
            .home()
            .join("src")
            .join(dir.strip_prefix(workspace()).unwrap_or(dir));
        if !copy.exists() {
            copy_servable(dir, &copy);
        }
        let out = self.cli(&["servable", "publish", copy.to_str().unwrap_or_default()]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The log of the `index`th worker started.
    pub fn worker_log(&self, index: usize) -> String {
        std::fs::read_to_string(self.home().join(format!("worker-{index}.log"))).unwrap_or_default()
    }

    /// Waits for worker `pid` to exit; returns its status.
    pub fn wait_worker(&mut self, pid: u32, limit: Duration) -> ExitStatus {
        let child = self.workers.iter_mut().find(|c| c.id() == pid).unwrap();
        wait_until(limit, "the worker to exit", || child.try_wait().unwrap())
    }

    /// SIGKILLs worker `pid`.
    pub fn kill_worker(&mut self, pid: u32) {
        let child = self.workers.iter_mut().find(|c| c.id() == pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits until `n` workers are registered.
    pub fn wait_workers(&self, n: usize) {
        let client = self.client();
        wait_until(
            Duration::from_secs(30),
            &format!("{n} workers to register"),
            || (client.status().ok()?.workers.len() == n).then_some(()),
        );
    }

    /// SIGKILLs the daemon (no shutdown, no flush beyond what it did).
    pub fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().expect("no daemon");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    pub fn signal_daemon(&mut self, signal: Signal, limit: Duration) -> ExitStatus {
        let mut child = self.daemon.take().expect("no daemon");
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        wait_until(limit, "the daemon to exit", || child.try_wait().unwrap())
    }

    /// Waits for a daemon stopped some other way (e.g. `flotilla stop`).
    pub fn wait_daemon_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.daemon.take().expect("no daemon");
        wait_until(limit, "the daemon to exit", || child.try_wait().unwrap())
    }
}

impl Drop for Flotilla {
    fn drop(&mut self) {
        // Workers are asked to stop first, so they remove their private
        // directories from the machine's temporary directory; whatever has
        // not exited within a few seconds is killed.
        for child in &self.workers {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.workers {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for child in self.workers.iter_mut().chain(self.daemon.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Keep the logs of a failed test (or on request) for a post-mortem.
        if std::thread::panicking() || std::env::var_os("FLOTILLA_TEST_KEEP").is_some() {
            let kept = std::mem::replace(&mut self.home, tempfile::tempdir().unwrap()).keep();
            eprintln!("state directory and logs kept in {}", kept.display());
        }
    }
}

/// Copies a servable's files (following links, skipping build outputs).
pub fn copy_servable(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_none_or(|e| e != "pkl") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Starts `cmd` with stdout and stderr going to `log`, at the log level of
/// `FLOTILLA_TEST_LOG` (default `info`).
fn spawn_logged(mut cmd: Command, log: std::fs::File) -> Child {
    let level = std::env::var("FLOTILLA_TEST_LOG").unwrap_or_else(|_| "info".into());
    cmd.env(LOG_ENV, level)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `n` requests for the builtin `noop` servable.
pub fn noop_tasks(n: usize) -> Vec<flotilla_protocol::client::TaskRequest> {
    (0..n)
        .map(|_| flotilla_protocol::client::TaskRequest {
            servable: "noop".into(),
            input: flotilla_protocol::Payload::from_static(flotilla_protocol::task::NIL),
            params: flotilla_protocol::Payload::new(),
        })
        .collect()
}

/// `n` requests for the builtin `sleep` servable, `seconds` each.
pub fn sleep_tasks(n: usize, seconds: f64) -> Vec<flotilla_protocol::client::TaskRequest> {
    let input = flotilla_client::json_to_payload(&serde_json::json!(seconds)).unwrap();
    (0..n)
        .map(|_| flotilla_protocol::client::TaskRequest {
            servable: "sleep".into(),
            input: input.clone(),
            params: flotilla_protocol::Payload::new(),
        })
        .collect()
}

impl Flotilla {
    /// Every event the daemon still keeps.
    pub fn events(&self) -> Vec<flotilla_protocol::client::EventView> {
        self.client().events(0, None).unwrap()
    }

    /// The kinds of the events about `block`, in order.
    pub fn block_history(&self, block: u32) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| e.block == Some(block))
            .map(|e| format!("{} {}", e.kind, e.message))
            .collect()
    }
}

/// True while a process with this pid exists and is not a zombie.
pub fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The Slurm jobs of one daemon's state directory, all cancelled when this
/// is dropped, so a failed test or benchmark leaves no job behind.
pub struct SlurmJobs(String);

impl SlurmJobs {
    /// The jobs of `f`'s daemon (by the name prefix it gives its blocks).
    pub fn of(f: &Flotilla) -> Self {
        let tag = flotilla_engine::launch::daemon_tag(&StateDir::at(f.home()));
        SlurmJobs(format!("flotilla-{tag}-"))
    }

    /// (job id, state code) of the daemon's jobs; none when `squeue` cannot
    /// run.
    pub fn jobs(&self) -> Vec<(String, String)> {
        let Ok(out) = Command::new("squeue")
            .args(["-t", "all", "-h", "-o", "%i %t %j"])
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                let (id, state, name) = (p.next()?, p.next()?, p.next()?);
                name.starts_with(&self.0)
                    .then(|| (id.to_owned(), state.to_owned()))
            })
            .collect()
    }

    /// Waits (up to a minute and a half) until every job of the daemon is
    /// cancelled or completed.
    pub fn wait_all_ended(&self) {
        wait_until(Duration::from_secs(90), "the jobs to be cancelled", || {
            self.jobs()
                .iter()
                .all(|(_, s)| s == "CA" || s == "CD")
                .then_some(())
        });
    }
}

impl Drop for SlurmJobs {
    fn drop(&mut self) {
        for (id, _) in self.jobs() {
            let _ = Command::new("scancel").arg(&id).status();
        }
    }
}
