//! The worker binary's refusals and its exit when the daemon is gone.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};
use std::time::Instant;

use flotilla_protocol::launch::{HOME_ENV, SECRET_ENV, USAGE};

fn worker(args: &[&str], secret: Option<&str>) -> Output {
    let home = std::env::temp_dir().join("flotilla-worker-args-no-daemon");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla-worker"));
    cmd.args(args).env(HOME_ENV, &home).env_remove(SECRET_ENV);
    if let Some(s) = secret {
        cmd.env(SECRET_ENV, s);
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
    assert!(stderr(&out).contains(SECRET_ENV), "{}", stderr(&out));
    let out = worker(&[], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "no daemon to read: {}",
        stderr(&out)
    );
}

/// Numbers out of range are refused with the option's name, never a panic.
#[test]
fn numbers_out_of_range_exit_2_naming_the_option() {
    let secret = "00".repeat(32);
    for (flag, value) in [
        ("--lost-daemon-exit-s", "1e300"),
        ("--connect-timeout-s", "1e300"),
        ("--walltime-margin-s", "inf"),
        ("--slots", "1000000"),
    ] {
        let out = worker(
            &["--address", "127.0.0.1", "--port", "9", flag, value],
            Some(&secret),
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {value}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(flag), "{flag}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn a_worker_without_a_daemon_reports_every_address_and_exits() {
    // Port 9 (discard) on loopback: nothing listens.
    let secret = "00".repeat(32);
    let started = Instant::now();
    let out = worker(
        &[
            "--address",
            "127.0.0.1,127.0.0.1:19",
            "--port",
            "9",
            "--connect-timeout-s",
            "2",
        ],
        Some(&secret),
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    let report: Vec<&str> = err
        .lines()
        .skip_while(|l| !l.starts_with("flotilla-worker: cannot reach the daemon"))
        .collect();
    assert_eq!(report.len(), 3, "{err}");
    assert!(report[0].contains("any of its 2 addresses"), "{err}");
    assert!(
        report[1].starts_with("  127.0.0.1:9: connection refused"),
        "{err}"
    );
    assert!(
        report[2].starts_with("  127.0.0.1:19: connection refused"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 10);
}

#[test]
fn bad_addresses_are_named() {
    let secret = "00".repeat(32);
    let out = worker(
        &["--address", "10.0.0.1:http", "--port", "9"],
        Some(&secret),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`10.0.0.1:http` is not an address"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_lists_every_option_of_the_launch_contract() {
    let out = worker(&["--help"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for option in USAGE {
        assert!(
            help.contains(option.flag),
            "{} missing from {help}",
            option.flag
        );
    }
    let out = worker(&["--version"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flotilla-worker "));
    let out = worker(&["--no-such-option", "1"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--no-such-option"),
        "{}",
        stderr(&out)
    );
}
