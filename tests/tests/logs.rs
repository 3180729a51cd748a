//! The daemon's log (`--detach`, JSON, rotation by size) and `flotilla
//! logs block|worker`, with real daemons, blocks and workers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_protocol::launch::HOME_ENV;
use flotilla_tests::{Flotilla, bin, config_with, noop_tasks, wait_until};

const LONG: Duration = Duration::from_secs(120);

/// A daemon started with `flotilla daemon --detach` in its own state
/// directory, stopped (or killed) when dropped.
struct Detached {
    home: tempfile::TempDir,
    pid: Option<u32>,
}

impl Detached {
    /// Writes `site` and runs `flotilla daemon --detach --config SITE
    /// EXTRA…`, through a pseudo-terminal (`script`) when `tty`, so the
    /// command that starts it has a terminal the log must not be coloured
    /// for. `before` may put files in the state directory first.
    fn start(site: &str, extra: &[&str], tty: bool, before: impl FnOnce(&Path)) -> Detached {
        let home = tempfile::tempdir().unwrap();
        before(home.path());
        let config = home.path().join("site.toml");
        std::fs::write(&config, site).unwrap();
        let mut args = vec![
            bin("flotilla").display().to_string(),
            "daemon".into(),
            "--detach".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let out = if tty {
            // `script -qec CMD /dev/null`: CMD on a new pseudo-terminal.
            let line: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
            Command::new("script")
                .args(["-qec", &line.join(" "), "/dev/null"])
                .env(HOME_ENV, home.path())
                .output()
                .expect("`script` (util-linux) runs")
        } else {
            Command::new(&args[0])
                .args(&args[1..])
                .env(HOME_ENV, home.path())
                .output()
                .unwrap()
        };
        let mut d = Detached { home, pid: None };
        assert!(out.status.success(), "{}", text(&out));
        d.pid = Some(d.client().ping().unwrap());
        d
    }

    fn client(&self) -> flotilla_client::Client {
        flotilla_client::Client::connect(self.home.path()).unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("flotilla"))
            .args(args)
            .env(HOME_ENV, self.home.path())
            .output()
            .unwrap()
    }

    fn log_path(&self) -> PathBuf {
        self.home.path().join("daemon.log")
    }

    /// `flotilla stop`, then the log.
    fn stop(&mut self) -> String {
        let out = self.cli(&["stop"]);
        assert!(out.status.success(), "{}", text(&out));
        self.pid = None;
        std::fs::read_to_string(self.log_path()).unwrap()
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a few tasks on a worker attached to `d`, so the log has more than
/// its start-up lines.
fn some_work(d: &Detached) {
    let mut worker = Command::new(bin("flotilla-worker"))
        .args(["--slots", "1"])
        .env(HOME_ENV, d.home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = d.client();
    let ids = client.submit(noop_tasks(5)).unwrap();
    let views = client.results(&ids, Some(LONG)).unwrap();
    assert!(views.iter().all(|v| v.outcome.is_some()), "{views:?}");
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn a_detached_daemon_started_from_a_terminal_logs_without_escape_sequences() {
    let mut d = Detached::start(&config_with(&[]), &[], true, |_| {});
    some_work(&d);
    let log = d.stop();
    assert!(log.contains("daemon ready"), "{log}");
    assert!(log.contains("daemon stopped"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "daemon.log has escape sequences:\n{log:?}"
    );
}

#[test]
fn the_json_log_format_writes_one_object_a_line() {
    let site = config_with(&[("daemon", "log_format", "\"json\"")]);
    let mut d = Detached::start(&site, &[], false, |_| {});
    some_work(&d);
    let log = d.stop();
    let mut ready = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        ready |= v["fields"]["message"] == "daemon ready";
    }
    assert!(ready, "{log}");
    // --log-format overrides the file.
    let mut d = Detached::start(&site, &["--log-format", "text"], false, |_| {});
    let log = d.stop();
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO ") && l.contains("daemon ready")),
        "{log}"
    );
}

#[test]
fn a_full_daemon_log_is_rotated_keeping_the_configured_number_of_files() {
    let site = config_with(&[("daemon", "log_max_mb", "1"), ("daemon", "log_keep", "2")]);
    let full = "x".repeat((1 << 20) - 10) + "\nold-log\n";
    let mut d = Detached::start(&site, &[], false, |home| {
        std::fs::write(home.join("daemon.log"), &full).unwrap();
        std::fs::write(home.join("daemon.log.1"), "older\n").unwrap();
        std::fs::write(home.join("daemon.log.2"), "oldest\n").unwrap();
    });
    let log = d.stop();
    let home = d.home.path();
    let mut logs: Vec<String> = std::fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("daemon.log"))
        .collect();
    logs.sort();
    assert_eq!(logs, ["daemon.log", "daemon.log.1", "daemon.log.2"]);
    assert!(
        log.contains("daemon ready") && !log.contains("old-log"),
        "{log}"
    );
    let read = |n: &str| std::fs::read_to_string(home.join(n)).unwrap();
    assert!(read("daemon.log.1").ends_with("old-log\n"));
    assert_eq!(read("daemon.log.2"), "older\n", "the oldest went");
}

#[test]
fn logs_print_a_local_blocks_output_and_its_workers_log() {
    let worker = format!("\"{}\"", bin("flotilla-worker").display());
    let f = Flotilla::start(&config_with(&[
        ("provider", "init_blocks", "1"),
        ("provider", "min_blocks", "1"),
        ("provider", "max_blocks", "1"),
        ("worker", "command", &worker),
        ("worker", "slots", "1"),
    ]));
    let client = f.client();
    let worker_id = wait_until(LONG, "the block's worker", || {
        let s = client.status().ok()?;
        s.workers.first().map(|w| w.id.clone())
    });
    let ids = client.submit(noop_tasks(3)).unwrap();
    client.results(&ids, Some(LONG)).unwrap();

    let out = f.cli(&["logs", "block", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("==> ") && printed.contains("/0/stderr <=="),
        "{printed}"
    );
    assert!(printed.contains("reached the daemon"), "{printed}");

    let out = f.cli(&["logs", "worker", &worker_id, "--tail", "50"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("reached the daemon"), "{printed}");
    assert!(
        !printed.contains("==> "),
        "one stream, no header: {printed}"
    );

    let out = f.cli(&["logs", "block", "7"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no block 7"),
        "{}",
        text(&out)
    );
    let out = f.cli(&["logs", "worker", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
