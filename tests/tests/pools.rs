//! End-to-end: one daemon, two pools (local process groups and the test
//! Slurm, locally or over SSH), servables placed on each by what they
//! declare; a pool whose blocks die or whose login node goes away.
//!
//! Needs the test cluster of `tests/infra/` (`./scripts/test.sh` starts it
//! and exports `SLURM_CONF`) and OpenSSH's `sshd`; without them the tests
//! fail and say how to start them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    // A cancelled block's end is learned at the pool's next poll, which may
    // come after a new block has already run the work.
    let client = f.client();
    wait_until(LONG, "a cancelled Slurm block to be seen", || {
        let status = client.status().ok()?;
        status
            .blocks
            .iter()
            .any(|b| b.pool.as_deref() == Some("slurm") && b.state == "CANCELLED")
            .then_some(())
    });
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

/// A local pool (cost 1) and a Slurm pool (cost 0, preferred), both
/// carrying `site = "here"`, both scaling from nothing; the Slurm pool
/// keeps room to grow, so that work it scaled for stays routed to it.
fn two_eligible_pools_site() -> String {
    two_pool_site()
        .replace("max_blocks = 2", "max_blocks = 4")
        .replace(
            "labels = { kind = \"local\" }",
            "labels = { kind = \"local\", site = \"here\" }\ncost = 1.0",
        )
        .replace(
            "labels = { kind = \"batch\", partition = \"debug\" }",
            "labels = { kind = \"batch\", partition = \"debug\", site = \"here\" }\ncost = 0.0",
        )
}

/// The test servable `counter` published as `name`, placed by
/// `resources`, each call taking `seconds` more.
fn publish_slow(f: &Flotilla, name: &str, resources: &str, seconds: u32) {
    let dir = f.home().join("servables").join(name);
    copy_servable(&workspace().join("tests/servables/counter"), &dir);
    let serve = std::fs::read_to_string(dir.join("serve.py")).unwrap();
    let serve = serve
        .replace("import os\n", "import os\nimport time\n")
        .replace(
            "    calls += 1\n",
            &format!("    calls += 1\n    time.sleep({seconds})\n"),
        );
    std::fs::write(dir.join("serve.py"), serve).unwrap();
    let spec = std::fs::read_to_string(dir.join("servable.toml")).unwrap();
    let spec = spec.replace("name = \"counter\"", &format!("name = \"{name}\""));
    std::fs::write(
        dir.join("servable.toml"),
        format!("{spec}\n[resources]\n{resources}\n"),
    )
    .unwrap();
    f.publish(&dir).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn running_work_moves_off_a_pool_whose_blocks_are_cancelled_to_the_other_eligible_pool() {
    python_bin();
    let mut f = Flotilla::start(&two_eligible_pools_site());
    let jobs = SlurmJobs::of(&f);
    // Each call takes long enough to be caught running.
    publish_slow(&f, "slow", "labels = { site = \"here\" }", 20);
    publish_placed(&f, "on-local", "pools = [\"local\"]");
    // Nothing is warm: the cheaper Slurm pool is scaled and runs them.
    let ids = f.client().submit(requests("slow", 4)).unwrap();
    let client = f.client();
    let running = wait_until(LONG, "the slow tasks to run on the Slurm pool", || {
        let views = client.results(&ids, None).ok()?;
        views
            .iter()
            .all(|v| v.state == TaskState::Running)
            .then_some(views)
    });
    let pools = worker_pools(&f);
    for v in &running {
        let worker = v.worker.as_deref().unwrap();
        assert_eq!(
            pools.get(worker).map(String::as_str),
            Some("slurm"),
            "{v:?}"
        );
    }
    assert_eq!(submitted(&f, "local"), 0);
    // The local pool gets a warm worker (by work only it may run).
    let local = f.client().submit(requests("on-local", 1)).unwrap();
    ran_in(&f, &completed(&f, &local), "local");
    let blocks_before = submitted(&f, "slurm");
    // The Slurm pool's blocks die under the running tasks.
    let slurm_jobs = jobs.jobs();
    assert!(!slurm_jobs.is_empty());
    scancel_all(&jobs);
    // Every task completes, on the local pool's warm worker: none lost,
    // each with its own input.
    let views = completed(&f, &ids);
    ran_in(&f, &views, "local");
    for (i, v) in views.iter().enumerate() {
        let Some(Outcome::Output(out)) = &v.outcome else {
            panic!("{v:?}");
        };
        let out = flotilla_client::payload_to_json(out).unwrap();
        assert_eq!(out["input"], i, "{out}");
        // Its block's cancel was not the task's fault: not an attempt.
        assert_eq!(v.attempts, 1, "{v:?}");
    }
    assert_eq!(
        submitted(&f, "slurm"),
        blocks_before,
        "the work went to the warm pool, not to a new Slurm block"
    );
    let status = f.client().status().unwrap();
    assert_eq!(status.totals.failed, 0, "{status:?}");
    assert!(
        status.totals.requeued >= ids.len() as u64,
        "each was running when its block died: {status:?}"
    );
    assert!(
        f.signal_daemon(nix::sys::signal::Signal::SIGTERM, LONG)
            .success()
    );
    jobs.wait_all_ended();
}

/// An OpenSSH server of this test's own (started by
/// `tests/infra/sshd-up.sh` in a directory of its own, on a port of its
/// own), so that stopping it disturbs no other test; stopped, sessions
/// and all, when dropped.
struct OwnSshd {
    infra: tempfile::TempDir,
    port: u16,
    env: BTreeMap<String, String>,
}

impl OwnSshd {
    fn start() -> OwnSshd {
        let infra = tempfile::Builder::new()
            .prefix("fl-sshd-")
            .tempdir()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut sshd = OwnSshd {
            infra,
            port,
            env: BTreeMap::new(),
        };
        sshd.up();
        sshd
    }

    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(workspace().join("tests/infra").join(name));
        c.env("FLOTILLA_TEST_INFRA", self.infra.path())
            .env("FLOTILLA_TEST_SSH_PORT", self.port.to_string());
        c
    }

    /// Starts the server (again); remote commands see `SLURM_CONF`.
    fn up(&mut self) {
        let out = self.script("sshd-up.sh").output().unwrap();
        assert!(
            out.status.success(),
            "tests/infra/sshd-up.sh failed (is openssh-server installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.env = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    }

    fn var(&self, name: &str) -> &str {
        self.env.get(name).map(String::as_str).unwrap()
    }

    /// Stops the server and ends the sessions it holds open (a daemon's
    /// reused session would otherwise outlive it): only their `sshd`
    /// processes, so that a command a session runs ends on its own (a
    /// shell killed halfway through its start-up files could leave a lock
    /// behind that stalls every later login).
    fn down(&self) {
        let pidfile = self.infra.path().join("sshd/sshd.pid");
        let sessions = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .map(descendants)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, name)| name == "sshd")
            .map(|(pid, _)| pid);
        let _ = self.script("sshd-down.sh").status();
        for pid in sessions {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        wait_until(LONG, "the test sshd to stop listening", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port))
                .is_err()
                .then_some(())
        });
    }

    /// The `[pool.channel]` lines that reach it.
    fn channel(&self) -> String {
        format!(
            "kind = \"ssh\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nkey_file = \"{}\"\nknown_hosts = \"{}\"\n",
            self.port,
            self.var("FLOTILLA_TEST_SSH_USER"),
            self.var("FLOTILLA_TEST_SSH_KEY"),
            self.var("FLOTILLA_TEST_SSH_KNOWN_HOSTS"),
        )
    }
}

impl Drop for OwnSshd {
    fn drop(&mut self) {
        self.down();
    }
}

/// Every process below `root` (from /proc), with its command name.
fn descendants(root: i32) -> Vec<(i32, String)> {
    let procs: Vec<(i32, i32, String)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (name) state ppid ...`: the name may hold spaces.
            let (head, tail) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            let ppid = tail.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, name))
        })
        .collect();
    let mut found: Vec<(i32, String)> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for (pid, ppid, name) in &procs {
            if *ppid == parent {
                found.push((*pid, name.clone()));
                parents.push(*pid);
            }
        }
    }
    found
}

/// A local pool and a Slurm pool reached over SSH through `sshd`.
fn local_and_ssh_site(sshd: &OwnSshd, home: &Path) -> String {
    let python: PathBuf = python_bin();
    let slurm = two_pool_site();
    // The remote login has none of the harness's environment: the block
    // puts the servables' Python first on its PATH.
    let init = format!("init = \"PATH={}:$PATH; export PATH\"\n", python.display());
    let remote = slurm
        .replace("name = \"slurm\"", "name = \"remote\"")
        .replace(
            "[pool.provider]\nkind = \"slurm\"",
            &format!(
                "[pool.channel]\n{}[pool.provider]\nkind = \"slurm\"\nrun_dir = \"{}\"\nsubmit_retry_max_s = 2",
                sshd.channel(),
                home.join("remote-blocks").display()
            ),
        );
    // The Slurm pool's worker table is the last one in the file.
    let at = remote.rfind("[pool.worker]\n").unwrap() + "[pool.worker]\n".len();
    format!("{}{init}{}", &remote[..at], &remote[at..])
}

#[test]
fn a_pool_whose_login_node_goes_away_stops_no_other_and_recovers_when_it_is_back() {
    python_bin();
    let mut sshd = OwnSshd::start();
    let mut f = Flotilla::start_with(|home| local_and_ssh_site(&sshd, home));
    let jobs = SlurmJobs::of(&f);
    publish_placed(&f, "on-remote", "pools = [\"remote\"]");
    publish_placed(&f, "on-local", "pools = [\"local\"]");
    // Both pools serve: the remote one's block submitted over SSH.
    let remote = f.client().submit(requests("on-remote", 2)).unwrap();
    let local = f.client().submit(requests("on-local", 2)).unwrap();
    ran_in(&f, &completed(&f, &remote), "remote");
    ran_in(&f, &completed(&f, &local), "local");
    assert!(f.log().contains("ssh session open"));
    assert_eq!(submitted(&f, "remote"), 1);
    // The login node goes away, and with it (as in a maintenance) the
    // remote pool's running job: its worker is lost, and the daemon cannot
    // learn what became of the block.
    sshd.down();
    scancel_all(&jobs);
    let client = f.client();
    wait_until(LONG, "the remote pool's worker to be lost", || {
        let s = client.status().ok()?;
        s.workers
            .iter()
            .all(|w| w.pool.as_deref() != Some("remote"))
            .then_some(())
    });
    wait_until(
        LONG,
        "the daemon to find the login node unreachable",
        || {
            f.log()
                .lines()
                .any(|l| l.contains("cannot poll block states") && l.contains("pool=remote"))
                .then_some(())
        },
    );
    // Work for the remote pool waits; the local pool keeps serving.
    let waiting = f.client().submit(requests("on-remote", 3)).unwrap();
    for _ in 0..3 {
        let local = f.client().submit(requests("on-local", 4)).unwrap();
        ran_in(&f, &completed(&f, &local), "local");
    }
    let views = f.client().results(&waiting, None).unwrap();
    assert!(
        views.iter().all(|v| v.state == TaskState::Queued),
        "{views:?}"
    );
    // The login node comes back: the block's end is learned, a new block
    // submitted, and the waiting work runs on the remote pool.
    sshd.up();
    let views = completed(&f, &waiting);
    ran_in(&f, &views, "remote");
    assert!(submitted(&f, "remote") >= 2);
    // The first block's end is learned at the pool's next poll, which may
    // come after the new block has already run the work.
    wait_until(LONG, "the first remote block's end to be learned", || {
        let status = client.status().ok()?;
        let first = status
            .blocks
            .iter()
            .find(|b| b.pool.as_deref() == Some("remote"))?;
        (first.state == "CANCELLED").then_some(())
    });
    assert!(
        f.signal_daemon(nix::sys::signal::Signal::SIGTERM, LONG)
            .success()
    );
    jobs.wait_all_ended();
}
