//! The daemon's hold on its state: one daemon per state directory however
//! it is started, and a store that runs out of space without losing,
//! hanging or lying about anything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_client::Client;
use flotilla_protocol::launch::HOME_ENV;
use flotilla_tests::{Flotilla, bin, noop_tasks, test_config, wait_until};

const LONG: Duration = Duration::from_secs(60);

/// A child process killed when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A copy of the `flotilla` binary under a name that does not say
/// "flotilla", in a directory of its own.
fn renamed_binary(dir: &Path) -> PathBuf {
    let copy = dir.join("fleet");
    std::fs::copy(bin("flotilla"), &copy).unwrap();
    copy
}

/// Runs `program daemon --config CONFIG` on state directory `home`.
fn daemon_command(program: &Path, home: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.arg("daemon")
        .arg("--config")
        .arg(config)
        .env(HOME_ENV, home)
        .stdin(Stdio::null());
    cmd
}

/// Starts a second daemon on `home` and waits (bounded) for it to give up.
fn second_start(program: &Path, home: &Path, config: &Path) -> (Option<i32>, String) {
    let child = daemon_command(program, home, config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let status = wait_until(LONG, "the second daemon to give up", || {
        child.0.try_wait().unwrap()
    });
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        use std::io::Read;
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status.code(), stderr)
}

#[test]
fn a_second_daemon_under_any_name_fails_and_leaves_the_first_serving() {
    let home = tempfile::Builder::new()
        .prefix("fl-e2e-")
        .tempdir()
        .unwrap();
    let home = home.path();
    let config = home.join("site.toml");
    std::fs::write(&config, test_config()).unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    let renamed = renamed_binary(bin_dir.path());

    // The first daemon runs under a name that does not say "flotilla".
    let log = std::fs::File::create(home.join("daemon.log")).unwrap();
    let first = daemon_command(&renamed, home, &config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut first = Reaped(first);
    let pid = first.0.id();
    wait_until(LONG, "the first daemon to answer", || {
        if let Some(status) = first.0.try_wait().unwrap() {
            panic!(
                "the first daemon exited ({status}): {}",
                std::fs::read_to_string(home.join("daemon.log")).unwrap_or_default()
            );
        }
        Client::connect(home).ok()?.ping().ok()
    });

    for program in [bin("flotilla"), renamed.clone()] {
        let (code, stderr) = second_start(&program, home, &config);
        assert_eq!(code, Some(2), "{}: {stderr}", program.display());
        assert!(
            stderr.contains("already running")
                && stderr.contains(&format!("pid {pid}"))
                && stderr.contains(&home.display().to_string()),
            "{stderr}"
        );
        // Nothing of the first daemon's was touched.
        assert!(home.join("api.sock").exists(), "api.sock was removed");
        assert!(home.join("daemon.toml").exists(), "daemon.toml was removed");
        assert_eq!(
            std::fs::read_to_string(home.join("daemon.pid"))
                .unwrap()
                .trim(),
            pid.to_string()
        );
        let status = Command::new(bin("flotilla"))
            .arg("status")
            .env(HOME_ENV, home)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "the first daemon stopped answering: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first daemon died"
    );
}

/// A tmpfs mounted for a test, lazily unmounted when dropped (also when the
/// test fails, and while the daemon still has files open there).
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `at`, or
    /// says why it cannot.
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs {
                at: at.to_path_buf(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// `n` noop tasks, each with a msgpack `bin` input of `bytes` bytes: big
/// enough that storing them needs fresh pages on the file system.
fn big_tasks(n: usize, bytes: usize) -> Vec<flotilla_protocol::client::TaskRequest> {
    let mut input = vec![0xc6];
    input.extend_from_slice(&(bytes as u32).to_be_bytes());
    input.resize(5 + bytes, 0x5a);
    let input = flotilla_protocol::Payload::from(input);
    noop_tasks(n)
        .into_iter()
        .map(|mut t| {
            t.input = input.clone();
            t
        })
        .collect()
}

/// Fills the file system under `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    // The last partial chunk.
    while file.write_all(&chunk[..4096]).is_ok() {}
    path
}

#[test]
fn a_full_disk_is_refused_promptly_recovered_from_and_stop_still_finishes() {
    // Mounting needs privileges the machine may not give.
    let probe = tempfile::tempdir().unwrap();
    if let Err(why) = Tmpfs::mount(&probe.path().join("probe"), "1m") {
        println!("skipped: cannot mount a tmpfs here: {why}");
        return;
    }

    let mut mounted = Err(String::new());
    let mut f = Flotilla::start_with(|home| {
        mounted = Tmpfs::mount(&home.join("store"), "48m");
        test_config()
    });
    let store = f.home().join("store");
    let _tmpfs = mounted.unwrap();
    let client = f.client();
    client.submit(noop_tasks(1)).unwrap();

    let filler = fill(&store);

    // The submit whose write does not fit is answered at once, with why.
    let started = Instant::now();
    let err = client
        .submit(big_tasks(3, 1 << 20))
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    assert!(err.contains("no space left"), "{err}");
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    // While the disk is full, new tasks are refused at once.
    let err = client.submit(noop_tasks(1)).unwrap_err().to_string();
    assert!(err.contains("no space left"), "{err}");
    // What was accepted before is still there; the refused tasks were
    // withdrawn, not left queued.
    let views = client
        .task_status(&[flotilla_protocol::TaskId(1), flotilla_protocol::TaskId(2)])
        .unwrap();
    assert_eq!(views[0].state, flotilla_protocol::task::TaskState::Queued);
    assert_eq!(
        views[1].state,
        flotilla_protocol::task::TaskState::Cancelled
    );

    // Room again: the daemon accepts work without a restart.
    std::fs::remove_file(&filler).unwrap();
    let ids = wait_until(LONG, "a submit to be accepted again", || {
        match client.submit(noop_tasks(2)) {
            Ok(ids) => Some(ids),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("no space left"), "{e}");
                None
            }
        }
    });
    assert_eq!(ids.len(), 2);
    let views = client.task_status(&ids).unwrap();
    assert!(
        views
            .iter()
            .all(|v| v.state == flotilla_protocol::task::TaskState::Queued),
        "{views:?}"
    );
    drop(client);

    // Stop finishes, well within its deadline.
    let started = Instant::now();
    let out = f.cli(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(f.wait_daemon_exit(LONG).success(), "{}", f.log());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stop took {:?}",
        started.elapsed()
    );

    // What was acknowledged is stored: a restarted daemon has it.
    f.start_daemon();
    let client = f.client();
    let views = client.task_status(&ids).unwrap();
    assert!(
        views
            .iter()
            .all(|v| v.state == flotilla_protocol::task::TaskState::Queued),
        "{views:?}"
    );

    // Shutting down finishes also while the disk is full and a write was
    // refused (the same path as `flotilla stop`, by signal).
    let _filler = fill(&store);
    let err = client
        .submit(big_tasks(1, 1 << 20))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no space left"), "{err}");
    drop(client);
    let started = Instant::now();
    let status = f.signal_daemon(nix::sys::signal::Signal::SIGTERM, LONG);
    assert!(status.success(), "{status}\n{}", f.log());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// Kills the daemon whose pid is in `home/daemon.pid` when dropped, so a
/// failing test leaves no detached daemon behind.
struct DetachedDaemon(PathBuf);

impl Drop for DetachedDaemon {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string(self.0.join("daemon.pid"))
            && let Ok(pid) = text.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn a_detached_daemon_writes_its_log_without_colour_codes() {
    let home = tempfile::Builder::new()
        .prefix("fl-e2e-")
        .tempdir()
        .unwrap();
    let home = home.path();
    let config = home.join("site.toml");
    std::fs::write(&config, test_config()).unwrap();
    let guard = DetachedDaemon(home.to_path_buf());
    let flotilla = |args: &[&str]| {
        Command::new(bin("flotilla"))
            .args(args)
            .env(HOME_ENV, home)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let started = flotilla(&["daemon", "--detach", "--config", config.to_str().unwrap()]);
    assert!(started.status.success(), "{started:?}");
    let pid: i32 = std::fs::read_to_string(home.join("daemon.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stopped = flotilla(&["stop"]);
    assert!(stopped.status.success(), "{stopped:?}");
    wait_until(LONG, "the detached daemon to exit", || {
        (!flotilla_tests::process_running(pid as u32)).then_some(())
    });
    drop(guard);
    let log = std::fs::read_to_string(home.join("daemon.log")).unwrap();
    assert!(log.contains("INFO"), "the daemon logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in daemon.log: {:?}",
        &log[..log.len().min(400)]
    );
}
