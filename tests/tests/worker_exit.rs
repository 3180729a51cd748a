//! A worker that ends, whichever way it is asked to, takes its private
//! directory (servable files, scratch space) with it: a node's temporary
//! directory does not fill up with the leftovers of cancelled jobs. One
//! killed outright cannot; the next worker on its host removes it.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use flotilla_protocol::Payload;
use flotilla_protocol::launch::{EXIT_WITH_PID_ENV, flag};
use flotilla_protocol::task::NIL;
use flotilla_tests::{Flotilla, test_config, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A worker with its own temporary directory `tmp`, told to exit with the
/// daemon (as a local block's is), registered and past its first task.
fn busy_worker(f: &mut Flotilla, tmp: &Path) -> u32 {
    let daemon = f.daemon_pid().to_string();
    let pid = f.spawn_worker_env(
        &[flag::SLOTS, "2"],
        &[("TMPDIR", tmp.into()), (EXIT_WITH_PID_ENV, daemon.into())],
    );
    f.wait_workers(1);
    f.client()
        .run("noop", Payload::from_static(NIL), Some(LONG))
        .unwrap();
    let made = entries(tmp);
    assert_eq!(made.len(), 1, "its private directory: {made:?}");
    assert!(made[0].starts_with("flotilla-worker-"), "{made:?}");
    pid
}

#[test]
fn a_worker_cancelled_with_sigterm_cleans_up_and_exits_143() {
    let mut f = Flotilla::start(&test_config());
    let tmp = tempfile::tempdir().unwrap();
    let pid = busy_worker(&mut f, tmp.path());
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let status = f.wait_worker(pid, LONG);
    assert_eq!(status.code(), Some(143), "{}", f.worker_log(0));
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
    assert!(
        f.worker_log(0).contains("stopped by a signal"),
        "{}",
        f.worker_log(0)
    );
}

#[test]
fn a_worker_whose_daemon_died_cleans_up() {
    let mut f = Flotilla::start(&test_config());
    let tmp = tempfile::tempdir().unwrap();
    let pid = busy_worker(&mut f, tmp.path());
    f.kill_daemon();
    let status = f.wait_worker(pid, LONG);
    assert_eq!(status.code(), Some(0), "{}", f.worker_log(0));
    assert_eq!(entries(tmp.path()), Vec::<String>::new());
}

#[test]
fn a_killed_worker_s_directory_goes_with_the_next_worker_on_its_host_and_a_live_one_s_stays() {
    let mut f = Flotilla::start(&test_config());
    let tmp = tempfile::tempdir().unwrap();
    let tmp_env = || [("TMPDIR", tmp.path().into())];
    let killed = busy_worker(&mut f, tmp.path());
    let dead = entries(tmp.path());
    f.spawn_worker_env(&[flag::SLOTS, "1"], &tmp_env());
    let live: Vec<String> = wait_until(LONG, "the second worker's directory", || {
        let now = entries(tmp.path());
        (now.len() == 2).then(|| now.into_iter().filter(|e| !dead.contains(e)).collect())
    });
    f.kill_worker(killed);
    let mut left = entries(tmp.path());
    left.sort();
    let mut both = [dead.clone(), live.clone()].concat();
    both.sort();
    assert_eq!(left, both, "SIGKILL leaves its directory behind");

    f.spawn_worker_env(&[flag::SLOTS, "1"], &tmp_env());
    // The sweep runs on a thread of its own and says when it is done.
    wait_until(LONG, "the third worker's sweep", || {
        f.worker_log(2)
            .contains("removed the private directories of workers that died on this host")
            .then_some(())
    });
    let now = entries(tmp.path());
    assert!(!now.contains(&dead[0]), "the dead worker's stayed: {now:?}");
    assert!(now.contains(&live[0]), "the live worker's went: {now:?}");
}
