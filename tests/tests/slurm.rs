//! End-to-end tests against a real Slurm, locally and over SSH.
//!
//! They need the test cluster and sshd of `tests/infra/` (`./scripts/test.sh`
//! starts both and exports `SLURM_CONF` and `FLOTILLA_TEST_SSH_*`); without
//! them they fail and say how to start them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_engine::launch::daemon_tag;
use flotilla_engine::state_dir::StateDir;
use flotilla_protocol::Payload;
use flotilla_protocol::task::{NIL, Outcome, TaskState};
use flotilla_tests::{
    Flotilla, SlurmJobs, bin, config_with, python_bin, site_example_for_tests, wait_until,
    workspace,
};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(90);

fn slurm_conf() -> String {
    std::env::var("SLURM_CONF").unwrap_or_else(|_| {
        panic!("SLURM_CONF is not set: start the test cluster with `eval \"$(tests/infra/slurm-up.sh 2)\"` (./scripts/test.sh does)")
    })
}

fn ssh_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the test sshd with `eval \"$(tests/infra/sshd-up.sh)\"` (./scripts/test.sh does)")
    })
}

fn run(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn slurm_site(extra: &[(&str, &str, &str)]) -> String {
    slurm_conf();
    let worker = format!("\"{}\"", bin("flotilla-worker").display());
    let mut settings = vec![
        ("provider", "kind", "\"slurm\""),
        ("provider", "partition", "\"debug\""),
        ("provider", "walltime", "\"00:10:00\""),
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("provider", "poll_interval_s", "0.5"),
        ("worker", "slots", "2"),
        ("worker", "command", worker.as_str()),
    ];
    settings.extend_from_slice(extra);
    config_with(&settings)
}

fn noop_completes(f: &Flotilla) {
    let view = f
        .client()
        .run("noop", Payload::from_static(NIL), Some(LONG))
        .unwrap();
    assert_eq!(view.state, TaskState::Completed);
}

/// Publishes the Python servable `counter` and runs one request on it;
/// panics unless it completes with its input echoed.
fn counter_runs(f: &Flotilla) {
    f.publish(&workspace().join("tests/servables/counter"))
        .unwrap_or_else(|e| panic!("{e}"));
    let input = flotilla_client::json_to_payload(&serde_json::json!("layout")).unwrap();
    let view = f.client().run("counter", input, Some(LONG)).unwrap();
    assert_eq!(view.state, TaskState::Completed, "{view:?}");
    let Some(Outcome::Output(output)) = &view.outcome else {
        panic!("no output: {view:?}");
    };
    let output = flotilla_client::payload_to_json(output).unwrap();
    assert_eq!(output["input"], "layout", "{output}");
}

/// The names in `dir`, sorted; none if it does not exist.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The state directory keeps the store and nothing compute nodes need.
fn state_dir_holds_no_shared_files(state: &Path) {
    assert!(state.join("store").is_dir(), "{:?}", names_in(state));
    for shared in ["blocks", "objects"] {
        assert!(
            !state.join(shared).exists(),
            "{shared} in the state directory: {:?}",
            names_in(state)
        );
    }
}

/// The state directory (the harness's, standing for a node-local disk) and
/// the shared directory in different places: the job's script and logs and
/// the object store are in the shared one, with a copy of the contact
/// file; a Python servable published there runs from it, no file fetched.
#[test]
fn the_daemon_runs_its_workers_inside_a_slurm_job() {
    python_bin();
    let shared = tempfile::Builder::new()
        .prefix("fl-shared-")
        .tempdir()
        .unwrap();
    let setting = format!("\"{}\"", shared.path().display());
    let mut f = Flotilla::start(&slurm_site(&[("daemon", "shared_dir", setting.as_str())]));
    let jobs = SlurmJobs::of(&f);
    f.wait_workers(1);
    noop_completes(&f);
    counter_runs(&f);
    let status = f.client().status().unwrap();
    let job = status.blocks[0].job_id.clone().unwrap();
    assert_eq!(status.blocks[0].state, "RUNNING");
    assert_eq!(
        jobs.jobs(),
        [(job.clone(), "R".to_owned())],
        "the block is that Slurm job"
    );
    // The job script carries the request, and names the shared object
    // store; it, the job's logs and the store's objects are in the shared
    // directory.
    let block = shared.path().join("blocks/0");
    let script = std::fs::read_to_string(block.join("block.sh")).unwrap();
    assert!(
        script.contains("#SBATCH --partition=debug") && script.contains("#SBATCH --time=00:10:00"),
        "{script}"
    );
    let objects = shared.path().join("objects");
    assert!(
        script.contains(&format!("export FLOTILLA_OBJECTS={}", objects.display())),
        "{script}"
    );
    assert!(!names_in(&objects).is_empty(), "the published files");
    let log = std::fs::read_to_string(block.join("stderr")).unwrap();
    assert!(log.contains("servable files verified"), "{log}");
    assert!(!log.contains("fetched from the daemon"), "{log}");
    assert!(block.join("stdout").is_file());
    // `flotilla logs` finds the job's output without being told where.
    let out = f.cli(&["logs", "block", "0", "--stream", "stderr"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("servable files verified"), "{printed}");
    state_dir_holds_no_shared_files(f.home());
    // Jobs on other nodes find the daemon through the copy of its contact
    // file; it holds no secret.
    let copy = std::fs::read_to_string(shared.path().join("daemon.toml")).unwrap();
    let info = flotilla_engine::state_dir::DaemonInfo::from_toml(&copy).unwrap();
    assert_eq!(info.pid, f.daemon_pid());
    assert_eq!(info.shared_dir.as_deref(), Some(shared.path()));
    assert_eq!(info, f.info());
    assert!(!copy.contains("secret"), "{copy}");
    // Stopping the daemon cancels the block and removes its contact files.
    assert!(f.signal_daemon(Signal::SIGTERM, LONG).success());
    jobs.wait_all_ended();
    assert!(!shared.path().join("daemon.toml").exists());
    assert!(!f.home().join("daemon.toml").exists());
}

#[test]
fn a_block_cancelled_from_outside_is_noticed_and_replaced() {
    let f = Flotilla::start(&slurm_site(&[]));
    let jobs = SlurmJobs::of(&f);
    f.wait_workers(1);
    let first = f.client().status().unwrap().blocks[0]
        .job_id
        .clone()
        .unwrap();
    run(&format!("scancel {first}"));
    let client = f.client();
    let status = wait_until(LONG, "a replacement block with a worker", || {
        let s = client.status().ok()?;
        let replaced = s.blocks.len() == 2 && s.blocks[0].state == "CANCELLED";
        let serving = s.workers.iter().any(|w| w.block == Some(1));
        (replaced && serving).then_some(s)
    });
    assert_ne!(status.blocks[1].job_id.as_deref(), Some(first.as_str()));
    noop_completes(&f);
    drop(jobs);
}

#[test]
fn a_block_that_fails_at_start_is_reported_with_its_stderr() {
    let f = Flotilla::start(&slurm_site(&[
        ("worker", "init", "\"nosuchcommand-flotilla-init --load\""),
        ("provider", "max_block_failures", "1"),
    ]));
    let _jobs = SlurmJobs::of(&f);
    let client = f.client();
    let started = std::time::Instant::now();
    let block = wait_until(LONG, "the block to fail", || {
        let s = client.status().ok()?;
        s.blocks.first().filter(|b| b.state == "FAILED").cloned()
    });
    let message = block.message.unwrap();
    assert!(
        message.contains("nosuchcommand-flotilla-init"),
        "stderr tail: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "noticed within a few polls"
    );
    assert!(client.status().unwrap().blocks_paused.is_some());
}

fn ssh_site(extra: &[(&str, &str, &str)], home: &str) -> String {
    let host = "\"127.0.0.1\"".to_owned();
    let port = ssh_env("FLOTILLA_TEST_SSH_PORT");
    let user = format!("\"{}\"", ssh_env("FLOTILLA_TEST_SSH_USER"));
    let key = format!("\"{}\"", ssh_env("FLOTILLA_TEST_SSH_KEY"));
    let known = format!("\"{}\"", ssh_env("FLOTILLA_TEST_SSH_KNOWN_HOSTS"));
    let run_dir = format!("\"{home}/remote-blocks\"");
    let mut settings: Vec<(&str, &str, &str)> = vec![
        ("channel", "kind", "\"ssh\""),
        ("channel", "host", host.as_str()),
        ("channel", "port", port.as_str()),
        ("channel", "user", user.as_str()),
        ("channel", "key_file", key.as_str()),
        ("channel", "known_hosts", known.as_str()),
        ("provider", "run_dir", run_dir.as_str()),
    ];
    settings.extend_from_slice(extra);
    slurm_site(&settings)
}

/// Over SSH the daemon's paths mean nothing where the jobs run: the job
/// names no object store, and a Python servable's files reach the worker
/// over the interchange (the worker's log says they were fetched), into
/// the node's cache.
#[test]
fn the_same_flow_works_over_ssh() {
    let python = python_bin();
    let shared = tempfile::Builder::new()
        .prefix("fl-shared-")
        .tempdir()
        .unwrap();
    let setting = format!("\"{}\"", shared.path().display());
    // The remote login has none of the harness's environment: the block
    // puts the servables' Python first on its PATH.
    let init = format!("\"PATH={}:$PATH; export PATH\"", python.display());
    let mut f = Flotilla::start_with(|home| {
        let cache = format!("\"{}\"", home.join("node-cache").display());
        ssh_site(
            &[
                ("daemon", "shared_dir", setting.as_str()),
                ("worker", "init", init.as_str()),
                ("worker", "cache_dir", cache.as_str()),
            ],
            home.to_str().unwrap(),
        )
    });
    let jobs = SlurmJobs::of(&f);
    f.wait_workers(1);
    noop_completes(&f);
    counter_runs(&f);
    assert!(f.log().contains("ssh session open"));
    // The job script was written through SFTP under the run directory.
    let tag = daemon_tag(&StateDir::at(f.home()));
    let block = f.home().join("remote-blocks").join(&tag).join("0");
    let script = block.join("block.sh");
    assert!(script.is_file(), "{}", script.display());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&script).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the script holds the secret");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(
        !text.contains("FLOTILLA_OBJECTS") && !text.contains("--objects-dir"),
        "{text}"
    );
    let log = std::fs::read_to_string(block.join("stderr")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("servable file fetched from the daemon")
                && l.contains("file=serve.py")),
        "{log}"
    );
    // `flotilla logs` says where a remote block's output is.
    let out = f.cli(&["logs", "block", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    let stderr_path = format!("remote-blocks/{tag}/0/stderr");
    assert!(
        said.contains("ran over SSH on") && said.contains(&stderr_path),
        "{said}"
    );
    // The daemon's own files: the object store in the shared directory,
    // the store in the state directory.
    assert!(!names_in(&shared.path().join("objects")).is_empty());
    assert!(!names_in(&f.home().join("node-cache")).is_empty());
    state_dir_holds_no_shared_files(f.home());
    // Cancelling goes over SSH too.
    assert!(f.signal_daemon(Signal::SIGTERM, LONG).success());
    jobs.wait_all_ended();
}

#[test]
fn a_failing_block_s_stderr_is_read_back_over_ssh() {
    let f = Flotilla::start_with(|home| {
        ssh_site(
            &[
                ("worker", "init", "\"nosuchcommand-over-ssh\""),
                ("provider", "max_block_failures", "1"),
            ],
            home.to_str().unwrap(),
        )
    });
    let _jobs = SlurmJobs::of(&f);
    let client = f.client();
    let block = wait_until(LONG, "the block to fail", || {
        client
            .status()
            .ok()?
            .blocks
            .first()
            .filter(|b| b.state == "FAILED")
            .cloned()
    });
    assert!(block.message.unwrap().contains("nosuchcommand-over-ssh"));
}

#[test]
fn an_unknown_host_key_is_refused_with_advice() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let known = format!("\"{}\"", empty.path().display());
    let f = Flotilla::start_with(|home| {
        ssh_site(
            &[
                ("channel", "known_hosts", known.as_str()),
                ("provider", "max_block_failures", "1"),
            ],
            home.to_str().unwrap(),
        )
    });
    let client = f.client();
    let block = wait_until(LONG, "the block to fail", || {
        client
            .status()
            .ok()?
            .blocks
            .first()
            .filter(|b| b.state == "FAILED")
            .cloned()
    });
    let message = block.message.unwrap();
    assert!(
        message.contains("not in") && message.contains("ssh-keyscan"),
        "{message}"
    );
}

#[test]
fn the_two_node_test_cluster_runs_one_rank_per_node() {
    slurm_conf();
    let nodes: usize = run("sinfo -h -o %D").trim().parse().unwrap_or(0);
    assert!(
        nodes >= 2,
        "the test cluster has {nodes} node(s); start it with `tests/infra/slurm-up.sh 2`"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ranks");
    let id = run(&format!(
        "sbatch --parsable -N2 -o {} --wrap 'srun -N2 -n2 printenv SLURMD_NODENAME'",
        out.display()
    ));
    let id = id.trim().to_owned();
    wait_until(LONG, "the 2-node job to finish", || {
        (run(&format!("squeue -h -t all -j {id} -o %t")).trim() == "CD").then_some(())
    });
    let mut ranks: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ranks.sort();
    assert_eq!(ranks, ["n1", "n2"]);
}

#[test]
fn a_hung_scheduler_command_never_blocks_the_daemon() {
    // A stand-in `squeue` that hangs; sbatch and scancel are the real ones.
    let fake = tempfile::tempdir().unwrap();
    let squeue = fake.path().join("squeue");
    std::fs::write(&squeue, "#!/bin/sh\nsleep 60\n").unwrap();
    std::fs::set_permissions(&squeue, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut f = Flotilla::start_with_path(
        |_| slurm_site(&[("provider", "command_timeout_s", "1")]),
        Some(fake.path()),
    );
    let jobs = SlurmJobs::of(&f);
    // The block's worker connects and serves while every poll hangs.
    f.wait_workers(1);
    let client = f.client();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        noop_completes(&f);
        client.status().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "answered while squeue hangs"
        );
    }
    wait_until(LONG, "a poll to time out", || {
        f.log().contains("did not finish within 1s").then_some(())
    });
    // Shutdown is not held up either.
    let t = std::time::Instant::now();
    assert!(f.signal_daemon(Signal::SIGTERM, LONG).success());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    drop(jobs);
}

#[test]
fn the_srun_launcher_starts_the_workers_of_each_node() {
    let f = Flotilla::start(&slurm_site(&[
        ("provider", "nodes_per_block", "2"),
        ("launcher", "kind", "\"srun\""),
    ]));
    let jobs = SlurmJobs::of(&f);
    f.wait_workers(2);
    let status = f.client().status().unwrap();
    let mut placed: Vec<(Option<u32>, Option<String>, Option<u32>)> = status
        .workers
        .iter()
        .map(|w| (w.rank, w.node.clone(), w.block))
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            (Some(0), Some("n1".to_owned()), Some(0)),
            (Some(1), Some("n2".to_owned()), Some(0)),
        ],
        "one worker per node of the one block, each with its own rank"
    );
    assert_eq!(
        jobs.jobs().len(),
        1,
        "both nodes' workers are one Slurm job"
    );
    let script = std::fs::read_to_string(f.home().join("blocks/0/block.sh")).unwrap();
    assert!(
        script.contains("#SBATCH --nodes=2")
            && script.contains("srun --nodes=2 --ntasks=2 --ntasks-per-node=1"),
        "{script}"
    );
    // The workers of both nodes serve.
    let client = f.client();
    let views = client
        .run_all(flotilla_tests::noop_tasks(200), LONG)
        .unwrap();
    assert!(views.iter().all(|v| v.state == TaskState::Completed));
    let out = f.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("node n1  rank 0") && text.contains("node n2  rank 1"),
        "{text}"
    );
}

fn live(s: &flotilla_protocol::client::DaemonStatus) -> usize {
    s.blocks
        .iter()
        .filter(|b| matches!(b.state.as_str(), "PENDING" | "RUNNING" | "UNKNOWN"))
        .count()
}

#[test]
fn queued_work_scales_slurm_blocks_out_to_max_and_idle_ones_back_in() {
    let f = Flotilla::start(&slurm_site(&[
        ("provider", "init_blocks", "0"),
        ("provider", "min_blocks", "0"),
        ("provider", "max_blocks", "2"),
        ("provider", "strategy_period_s", "0.5"),
        ("provider", "max_idle_s", "3"),
        ("provider", "min_block_lifetime_s", "2"),
        ("provider", "cooldown_s", "30"),
    ]));
    let jobs = SlurmJobs::of(&f);
    let client = f.client();
    let ids = client
        .submit(flotilla_tests::sleep_tasks(300, 0.02))
        .unwrap();
    wait_until(LONG, "two blocks with workers", || {
        (client.status().ok()?.workers.len() == 2).then_some(())
    });
    let views = client.results(&ids, Some(LONG)).unwrap();
    assert!(views.iter().all(|v| v.state == TaskState::Completed));
    let after = wait_until(LONG, "both blocks to be given back", || {
        let s = client.status().ok()?;
        (live(&s) == 0).then_some(s)
    });
    assert_eq!(after.pools[0].submitted, 2, "{:?}", after.blocks);
    assert_eq!(
        jobs.jobs().len(),
        2,
        "exactly the two jobs needed: {:?}",
        jobs.jobs()
    );
}

#[test]
fn scancel_of_a_running_block_loses_no_task() {
    let f = Flotilla::start(&slurm_site(&[("provider", "strategy_period_s", "0.5")]));
    let _jobs = SlurmJobs::of(&f);
    f.wait_workers(1);
    let client = f.client();
    let ids = client.submit(flotilla_tests::sleep_tasks(40, 0.5)).unwrap();
    wait_until(LONG, "some tasks done", || {
        let s = client.status().ok()?;
        (s.totals.completed >= 6).then_some(())
    });
    let job = client.status().unwrap().blocks[0].job_id.clone().unwrap();
    let cancelled_at = std::time::SystemTime::now();
    run(&format!("scancel {job}"));
    let views = client.results(&ids, Some(LONG)).unwrap();
    assert!(
        views.iter().all(|v| v.state == TaskState::Completed),
        "{views:?}"
    );
    let status = client.status().unwrap();
    assert!(status.totals.requeued > 0, "the block had tasks running");
    assert_eq!(status.totals.failed, 0);
    // How long from the scancel to the worker's tasks being requeued: it
    // says goodbye on the scheduler's SIGTERM.
    let since = cancelled_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let events = f.events();
    let lost = events
        .iter()
        .find(|e| e.kind == "worker-left" && e.block == Some(0))
        .unwrap_or_else(|| panic!("block 0's worker left: {events:#?}"));
    let after_ms = lost.at_us.saturating_sub(since) / 1000;
    eprintln!(
        "scancel -> tasks requeued: {after_ms} ms ({})",
        lost.message
    );
    assert!(after_ms < 3000, "{after_ms} ms");
}

/// A one-minute block (15 s margin, replaced 25 s ahead) given 60 s of
/// work for its 2 slots, more than it can do before its margin: every task
/// completes, across the block and its replacement. Returns the daemon, its
/// jobs (cancelled when dropped) and the views, for the test to read the
/// events.
fn outlive_a_one_minute_block(
    extra: &[(&str, &str, &str)],
) -> (Flotilla, SlurmJobs, Vec<flotilla_protocol::task::TaskView>) {
    let mut settings = vec![
        ("provider", "walltime", "\"00:01:00\""),
        ("provider", "walltime_margin_s", "15"),
        ("provider", "replace_ahead_s", "25"),
        ("provider", "strategy_period_s", "0.5"),
    ];
    settings.extend_from_slice(extra);
    let f = Flotilla::start(&slurm_site(&settings));
    let jobs = SlurmJobs::of(&f);
    f.wait_workers(1);
    let client = f.client();
    let ids = client.submit(flotilla_tests::sleep_tasks(60, 2.0)).unwrap();
    let views = client
        .results(&ids, Some(Duration::from_secs(240)))
        .unwrap();
    for v in &views {
        assert_eq!(v.state, TaskState::Completed, "{v:?}");
    }
    (f, jobs, views)
}

fn replacement_requested(events: &[flotilla_protocol::client::EventView]) -> u64 {
    events
        .iter()
        .find(|e| e.kind == "block-requested" && e.block == Some(1))
        .expect("a replacement block")
        .seq
}

#[test]
fn a_block_with_a_one_minute_walltime_drains_before_slurm_ends_it() {
    let (f, _jobs, views) = outlive_a_one_minute_block(&[]);
    for v in &views {
        assert_eq!(v.attempts, 1, "interrupted: {v:?}");
    }
    assert_eq!(f.client().status().unwrap().totals.requeued, 0);
    let events = f.events();
    let left = events
        .iter()
        .find(|e| e.kind == "worker-left" && e.block == Some(0))
        .expect("block 0's worker left before the wall time");
    assert!(
        replacement_requested(&events) < left.seq,
        "replacement asked for ahead of time"
    );
    let first = f.block_history(0);
    assert!(
        !first.iter().any(|e| e.contains("TIMEOUT")),
        "Slurm never had to kill it: {first:?}"
    );
}

#[test]
fn in_a_one_job_queue_the_replacement_waits_for_the_leaving_block_to_end() {
    let (f, _jobs, _) = outlive_a_one_minute_block(&[("provider", "queue_job_limit", "1")]);
    let events = f.events();
    let ended = events
        .iter()
        .find(|e| {
            e.kind == "block-state"
                && e.block == Some(0)
                && ["COMPLETED", "CANCELLED", "TIMEOUT", "FAILED", "MISSING"]
                    .iter()
                    .any(|s| e.message.starts_with(s))
        })
        .expect("block 0 ended");
    assert!(
        ended.seq < replacement_requested(&events),
        "never two jobs in the queue: {:?}",
        f.block_history(0)
    );
}

#[test]
fn a_sigkilled_daemon_adopts_its_live_slurm_block_and_finishes_everything() {
    let mut f = Flotilla::start(&slurm_site(&[("provider", "strategy_period_s", "0.5")]));
    let jobs = SlurmJobs::of(&f);
    f.wait_workers(1);
    let client = f.client();
    let ids = client.submit(flotilla_tests::sleep_tasks(60, 0.4)).unwrap();
    wait_until(LONG, "some tasks done", || {
        let s = client.status().ok()?;
        (s.totals.completed >= 10).then_some(())
    });
    let before = jobs.jobs();
    assert_eq!(before.len(), 1);
    f.kill_daemon();
    f.start_daemon();
    let client = f.client();
    let views = client.results(&ids, Some(LONG)).unwrap();
    assert!(
        views.iter().all(|v| v.state == TaskState::Completed),
        "{views:?}"
    );
    let status = client.status().unwrap();
    assert_eq!(
        status.pools[0].submitted, 0,
        "no block submitted after the restart"
    );
    assert_eq!(jobs.jobs().len(), 1, "still the one job: {:?}", jobs.jobs());
    assert_eq!(jobs.jobs()[0].0, before[0].0);
    assert!(
        f.events().iter().any(|e| e.kind == "block-adopted"),
        "{:?}",
        f.events()
    );
    assert_eq!(status.totals.requeued, 0, "nothing was lost");
}

/// A site example's blocks, mapped onto the test cluster by its override
/// file, start workers on both nodes that serve a request; its job script
/// is the one its checked-in preview shows, names aside.
fn site_example_serves(name: &str) {
    slurm_conf();
    let mut f = Flotilla::start(&site_example_for_tests(name));
    let jobs = SlurmJobs::of(&f);
    let client = f.client();
    wait_until(LONG, "a worker on each of the block's two nodes", || {
        let s = client.status().ok()?;
        let nodes: std::collections::BTreeSet<_> =
            s.workers.iter().map(|w| w.node.clone()).collect();
        (s.workers.len() == 2 && nodes.len() == 2).then_some(())
    });
    noop_completes(&f);
    let script = std::fs::read_to_string(f.home().join("blocks/0/block.sh")).unwrap();
    assert!(
        script.contains("#SBATCH --partition=debug") && script.contains("exec srun --nodes=2"),
        "{script}"
    );
    assert!(f.signal_daemon(Signal::SIGTERM, LONG).success());
    jobs.wait_all_ended();
}

#[test]
fn the_perlmutter_example_serves_on_the_test_cluster() {
    site_example_serves("perlmutter");
}

#[test]
fn the_frontier_example_serves_on_the_test_cluster() {
    site_example_serves("frontier");
}

/// A partition made for one test, deleted with any job left in it when
/// dropped (declare it before the test's daemon, which then goes first).
struct ScratchPartition(String);

impl ScratchPartition {
    /// Creates partition `name` on the test cluster's nodes with `limits`
    /// (`MaxNodes=1`, ...).
    fn create(name: &str, limits: &str) -> Self {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "scontrol create PartitionName={name} Nodes=n[1-2] MaxTime=INFINITE State=UP OverSubscribe=YES {limits}"
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scontrol create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ScratchPartition(name.to_owned())
    }

    fn update(&self, limits: &str) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("scontrol update PartitionName={} {limits}", self.0))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scontrol update: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for ScratchPartition {
    fn drop(&mut self) {
        let _ = Command::new("scancel").args(["-p", &self.0]).status();
        // Slurm refuses to delete a partition while a job of it is still
        // ending: try again for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let deleted = Command::new("scontrol")
                .args(["delete", &format!("PartitionName={}", self.0)])
                .status()
                .is_ok_and(|s| s.success());
            if deleted || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn a_submission_refused_by_a_partition_limit_backs_off_and_recovers_without_pausing() {
    slurm_conf();
    let nodes: usize = run("sinfo -h -o %D -p debug").trim().parse().unwrap_or(0);
    assert!(
        nodes >= 2,
        "the test cluster has {nodes} node(s); start it with `tests/infra/slurm-up.sh 2`"
    );
    // EnforcePartLimits=ALL: sbatch refuses a 2-node job at submission.
    let partition = ScratchPartition::create(&format!("flq{}", std::process::id()), "MaxNodes=1");
    let name = format!("\"{}\"", partition.0);
    let f = Flotilla::start(&slurm_site(&[
        ("provider", "partition", name.as_str()),
        ("provider", "nodes_per_block", "2"),
        ("launcher", "kind", "\"srun\""),
        ("provider", "strategy_period_s", "0.2"),
        ("provider", "submit_retry_max_s", "1"),
        // A single failure would pause the pool: refusals must not count.
        ("provider", "max_block_failures", "1"),
    ]));
    let jobs = SlurmJobs::of(&f);
    let client = f.client();
    // Refused several times, the scheduler's words shown, never paused.
    wait_until(LONG, "three refusals", || {
        let refused = f
            .events()
            .iter()
            .filter(|e| e.kind == "block-refused")
            .count();
        (refused >= 3).then_some(())
    });
    let status = client.status().unwrap();
    assert_eq!(status.pools[0].paused, None);
    assert_eq!(status.blocks_paused, None);
    let held = status.pools[0].held.clone().unwrap();
    assert!(
        held.starts_with("submission refused by the scheduler: sbatch: error: ")
            && held.contains("; next try in "),
        "{held}"
    );
    assert_eq!(status.blocks.len(), 1, "one block, tried again: {status:?}");
    assert_eq!(status.blocks[0].state, "REFUSED");
    let text = String::from_utf8_lossy(&f.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("WAITING: submission refused by the scheduler: sbatch: error: "),
        "{text}"
    );
    assert!(jobs.jobs().is_empty(), "{:?}", jobs.jobs());
    // The limit rises: the pool recovers by itself and serves.
    partition.update("MaxNodes=2");
    // The job may wait for other tests' jobs on the cluster's two nodes.
    wait_until(LONG, "a worker on each node of the recovered block", || {
        (client.status().ok()?.workers.len() == 2).then_some(())
    });
    noop_completes(&f);
    let status = client.status().unwrap();
    assert_eq!(status.pools[0].paused, None);
    assert_eq!(status.pools[0].held, None);
    assert_eq!(status.blocks[0].state, "RUNNING");
    let script = std::fs::read_to_string(f.home().join("blocks/0/block.sh")).unwrap();
    assert!(
        script.contains(&format!("#SBATCH --partition={}", partition.0))
            && script.contains("#SBATCH --nodes=2"),
        "{script}"
    );
    drop(client);
    drop(f);
    drop(jobs);
}

#[test]
fn a_login_node_nobody_answers_on_backs_off_without_pausing() {
    // A loopback port just freed: every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port().to_string())
        .unwrap();
    let f = Flotilla::start(&slurm_site(&[
        ("channel", "kind", "\"ssh\""),
        ("channel", "host", "\"127.0.0.1\""),
        ("channel", "port", port.as_str()),
        ("channel", "user", "\"nobody\""),
        ("provider", "run_dir", "\"/tmp/flotilla-unreachable\""),
        ("provider", "strategy_period_s", "0.2"),
        ("provider", "submit_retry_max_s", "1"),
        ("provider", "max_block_failures", "1"),
    ]));
    wait_until(LONG, "three refusals", || {
        let refused = f
            .events()
            .iter()
            .filter(|e| e.kind == "block-refused")
            .count();
        (refused >= 3).then_some(())
    });
    let status = f.client().status().unwrap();
    assert_eq!(status.pools[0].paused, None);
    let held = status.pools[0].held.clone().unwrap();
    assert!(
        held.starts_with("cannot reach the scheduler: ") && held.contains("cannot connect"),
        "{held}"
    );
}

/// Cancels a batch job when dropped, so a failed test leaves none behind.
struct CancelJob(String);

impl Drop for CancelJob {
    fn drop(&mut self) {
        let _ = Command::new("scancel").arg(&self.0).output();
    }
}

/// A batch job script on a compute node whose `FLOTILLA_HOME` holds only
/// the daemon's contact file and a token (no api.sock) runs `flotilla run`,
/// `flotilla submit --batch` with `flotilla result --wait`, and a Python
/// `Client().map`, all over the daemon's TCP client API; the test reads the
/// job's output file.
#[test]
fn a_batch_job_with_only_the_contact_file_and_a_token_calls_the_daemon_over_tcp() {
    slurm_conf();
    let python = python_bin().join("python3");
    let mut f = Flotilla::start(&config_with(&[(
        "daemon",
        "client_listen",
        "\"127.0.0.1:0\"",
    )]));
    f.spawn_worker(&[]);
    f.wait_workers(1);
    let out = f.cli(&["token", "create", "--name", "slurm-job"]);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    // What the job sees: a directory with the contact file and a token.
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node-home");
    std::fs::create_dir(&node).unwrap();
    let info = f.info();
    assert!(info.client_port.is_some(), "{info:?}");
    std::fs::write(node.join("daemon.toml"), info.to_toml().unwrap()).unwrap();
    let token_file = node.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let batch = dir.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        "{\"servable\": \"echo\", \"input\": 11}\n{\"servable\": \"echo\", \"input\": 12}\n",
    )
    .unwrap();
    let script = dir.path().join("job.sh");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
set -eu
export FLOTILLA_HOME='{home}'
unset FLOTILLA_TOKEN
export PYTHONPATH='{package}'
test ! -e "$FLOTILLA_HOME/api.sock"
echo "node: $SLURMD_NODENAME"
echo "run: $('{cli}' run echo '{{"m": "from-the-job"}}' --timeout 60)"
ids=$('{cli}' submit --batch '{batch}')
echo "result: $('{cli}' result --wait --timeout 60 --json $ids | tr -d '\n')"
'{python}' -c '
import json
from flotilla import Client
with Client() as client:
    kind = type(client._core._connection).__name__
    print("map:", kind, json.dumps(list(client.map("echo", range(40), chunk=8, timeout=60))))
'
echo "done"
"#,
            home = node.display(),
            package = workspace().join("clients/python").display(),
            cli = bin("flotilla").display(),
            batch = batch.display(),
            python = python.display(),
        ),
    )
    .unwrap();
    let output = dir.path().join("job.out");
    let id = run(&format!(
        "sbatch --parsable -N1 -t 5 -o {} {}",
        output.display(),
        script.display()
    ));
    let id = id.trim().to_owned();
    assert!(!id.is_empty(), "sbatch gave no job id");
    let _cancel = CancelJob(id.clone());
    let state = wait_until(LONG, "the client job to end", || {
        let state = run(&format!("squeue -h -t all -j {id} -o %t"))
            .trim()
            .to_owned();
        ["CD", "F", "CA", "TO", "NF", "OOM"]
            .contains(&state.as_str())
            .then_some(state)
    });
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    assert_eq!(state, "CD", "job {id} ended {state}:\n{text}");
    assert!(
        text.lines().any(|l| l == "node: n1" || l == "node: n2"),
        "not on a compute node:\n{text}"
    );
    assert!(text.contains("run: {\"m\":\"from-the-job\"}"), "{text}");
    let result = text
        .lines()
        .find(|l| l.starts_with("result: "))
        .unwrap_or_else(|| panic!("no result line:\n{text}"));
    assert_eq!(
        result.matches("\"state\":\"completed\"").count(),
        2,
        "{text}"
    );
    let expected: Vec<u32> = (0..40).collect();
    assert!(
        text.contains(&format!(
            "map: TcpConnection {}",
            serde_json::to_string(&expected).unwrap().replace(',', ", ")
        )),
        "{text}"
    );
    assert!(text.trim_end().ends_with("done"), "{text}");
}
