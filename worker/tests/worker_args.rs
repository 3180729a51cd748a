//! The worker binary's refusals and its exit when the daemon is gone.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::Instant;

fn worker(args: &[&str], secret: Option<&str>) -> Output {
    let home = std::env::temp_dir().join("flotilla-worker-args-no-daemon");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla-worker"));
    cmd.args(args)
        .env("FLOTILLA_HOME", &home)
        .env_remove("FLOTILLA_SECRET");
    if let Some(s) = secret {
        cmd.env("FLOTILLA_SECRET", s);
    }
    cmd.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_arguments_exit_2_with_a_reason() {
    let secret = "00".repeat(32);
    let out = worker(
        &["--address", "127.0.0.1", "--port", "9", "--slots", "0"],
        Some(&secret),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--slots"), "{}", stderr(&out));
    let out = worker(&["--address", "127.0.0.1"], Some(&secret));
    assert_eq!(out.status.code(), Some(2));
    let out = worker(&["--address", "127.0.0.1", "--port", "9"], Some("xyz"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("FLOTILLA_SECRET"), "{}", stderr(&out));
    let out = worker(&[], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no daemon to read: {}",
        stderr(&out)
    );
}

#[test]
fn a_worker_without_a_daemon_gives_up_after_its_limit() {
    // Port 9 (discard) on loopback: nothing listens.
    let secret = "00".repeat(32);
    let started = Instant::now();
    let out = worker(
        &[
            "--address",
            "127.0.0.1",
            "--port",
            "9",
            "--lost-daemon-exit-s",
            "0.5",
        ],
        Some(&secret),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("lost the daemon"));
    assert!(started.elapsed().as_secs() < 10);
}
