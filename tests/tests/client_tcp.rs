//! End-to-end: the client API over TCP, as a batch job on another node uses
//! it. The client's `FLOTILLA_HOME` holds only a copy of the daemon's
//! contact file and a token (no api.sock); the contact file's TCP endpoint
//! points at a relay in this test that records every byte both ways.
//!
//! * `flotilla run` and `flotilla submit --batch` + `flotilla result` work
//!   over TCP with the token, from the file or from `FLOTILLA_TOKEN`;
//! * neither the token nor the run's input appears in the recorded bytes;
//! * an expired token, a revoked one, a read-only one running, a token
//!   limited to `echo` calling `noop`, and a missing token are each refused
//!   with a message naming the cause, and the daemon serves on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_protocol::launch::DaemonInfo;
use flotilla_tests::{Flotilla, bin, config_with, wait_until};

const LONG: Duration = Duration::from_secs(60);

/// A TCP relay that forwards every connection to the daemon's client port
/// and records every byte both ways.
struct Relay {
    port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(daemon_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, halt) = (bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if halt.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(daemon) = TcpStream::connect(("127.0.0.1", daemon_port)) else {
                    continue;
                };
                pump(
                    client.try_clone().unwrap(),
                    daemon.try_clone().unwrap(),
                    &rec,
                );
                pump(daemon, client, &rec);
            }
        });
        Relay { port, bytes, stop }
    }

    fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` on a thread, recording what passes.
fn pump(mut from: TcpStream, mut to: TcpStream, rec: &Arc<Mutex<Vec<u8>>>) {
    let rec = rec.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            rec.lock().unwrap().extend_from_slice(&buf[..n]);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Runs the CLI as a client on another node: `FLOTILLA_HOME=home`, and the
/// token in the environment when given.
fn remote(home: &Path, token_env: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("flotilla"));
    cmd.args(args)
        .env("FLOTILLA_HOME", home)
        .env_remove("FLOTILLA_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token_env {
        cmd.env("FLOTILLA_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Makes a token on the daemon's host; returns it.
fn create_token(f: &Flotilla, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    let out = f.cli(&all);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A client's state directory with the contact file (its client port
/// pointed at `port`) and, if given, a token file.
fn client_home(f: &Flotilla, port: u16, token: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut info: DaemonInfo = f.info();
    info.client_port = Some(port);
    std::fs::write(dir.path().join("daemon.toml"), info.to_toml().unwrap()).unwrap();
    if let Some(t) = token {
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{t}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

fn run_echo(home: &Path, token_env: Option<&str>, marker: &str) -> Output {
    remote(
        home,
        token_env,
        &[
            "run",
            "echo",
            &format!("{{\"m\": \"{marker}\"}}"),
            "--timeout",
            "60",
        ],
    )
}

#[test]
fn a_client_with_only_the_contact_file_and_a_token_runs_over_sealed_tcp() {
    let mut f = Flotilla::start(&config_with(&[(
        "daemon",
        "client_listen",
        "\"127.0.0.1:0\"",
    )]));
    f.spawn_worker(&[]);
    f.wait_workers(1);
    let info = f.info();
    let daemon_port = info
        .client_port
        .expect("the contact file names the TCP client API");
    assert_eq!(info.client_address.as_deref(), Some("127.0.0.1"));
    let relay = Relay::start(daemon_port);

    let token = create_token(&f, &["--name", "batch"]);
    assert!(token.starts_with("flt_"), "{token}");
    let listed = f.cli(&["token", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("batch") && !listed.contains(&token[20..]),
        "{listed}"
    );

    // A node's FLOTILLA_HOME: no api.sock, the contact file and a token.
    let node = client_home(&f, relay.port, Some(&token));
    assert!(!node.path().join("api.sock").exists());
    let marker = "payload-8f3b1c9e7d2a4f60";
    let out = run_echo(node.path(), None, marker);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(marker),
        "{}",
        text(&out)
    );

    // A batch, then its results, over TCP too; the token from the
    // environment this time.
    let bare = client_home(&f, relay.port, None);
    let batch = bare.path().join("batch.jsonl");
    std::fs::write(
        &batch,
        "{\"servable\": \"echo\", \"input\": 1}\n{\"servable\": \"echo\", \"input\": 2}\n",
    )
    .unwrap();
    let out = remote(
        bare.path(),
        Some(&token),
        &["submit", "--batch", batch.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2, "{}", text(&out));
    let mut args = vec!["result", "--wait", "--timeout", "60", "--json"];
    args.extend(ids.iter().map(String::as_str));
    let out = remote(bare.path(), Some(&token), &args);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("\"state\":\"completed\"")
            .count(),
        2,
        "{}",
        text(&out)
    );

    // What crossed the network: neither the token (nor its secret half in
    // any form) nor the input.
    let seen = relay.bytes();
    assert!(seen.len() > 1000, "the relay saw the traffic");
    let secret_hex = token.rsplit('_').next().unwrap();
    for needle in [token.as_bytes(), secret_hex.as_bytes(), marker.as_bytes()] {
        assert!(
            !contains(&seen, needle),
            "{} crossed the wire in clear",
            String::from_utf8_lossy(needle)
        );
    }
    let secret_bytes = flotilla_protocol::secret::from_hex(secret_hex).unwrap();
    assert!(!contains(&seen, &secret_bytes));

    // Refusals, each by cause; the daemon serves on after each.
    let scoped = create_token(&f, &["--name", "echo-only", "--servables", "echo"]);
    let out = remote(
        bare.path(),
        Some(&scoped),
        &["run", "noop", "--timeout", "60"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("token `echo-only` may not use servable `noop`"),
        "{}",
        text(&out)
    );
    assert!(run_echo(bare.path(), Some(&scoped), "x").status.success());

    let reader = create_token(&f, &["--name", "reader", "--read-only"]);
    let out = run_echo(bare.path(), Some(&reader), "x");
    assert!(
        text(&out).contains("token `reader` is read-only: run is refused"),
        "{}",
        text(&out)
    );
    let out = remote(bare.path(), Some(&reader), &["servable", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = remote(bare.path(), Some(&reader), &["stop"]);
    assert!(
        text(&out).contains("only taken on the daemon's own host"),
        "{}",
        text(&out)
    );

    let revoked = create_token(&f, &["--name", "gone"]);
    assert!(run_echo(bare.path(), Some(&revoked), "x").status.success());
    let out = f.cli(&["token", "revoke", "gone"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run_echo(bare.path(), Some(&revoked), "x");
    assert!(
        text(&out).contains("token `gone` was revoked"),
        "{}",
        text(&out)
    );

    let brief = create_token(&f, &["--name", "brief", "--expires", "1"]);
    let out = wait_until(LONG, "the short-lived token to expire", || {
        let out = run_echo(bare.path(), Some(&brief), "x");
        (!out.status.success()).then_some(out)
    });
    assert!(
        text(&out).contains("token `brief` expired"),
        "{}",
        text(&out)
    );

    let out = run_echo(bare.path(), None, "x");
    assert!(
        text(&out).contains("needs a token: set FLOTILLA_TOKEN"),
        "{}",
        text(&out)
    );
    let forged = format!("{}_{}", &token[..20], "ab".repeat(32));
    let out = run_echo(bare.path(), Some(&forged), "x");
    assert!(
        text(&out).contains("cannot prove it knows this token"),
        "{}",
        text(&out)
    );

    // Still serving, over TCP and on the ipc socket.
    assert!(run_echo(node.path(), None, "after").status.success());
    assert!(f.client().ping().is_ok());
}
