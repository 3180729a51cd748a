//! The worker port under attack by peers that never register, while a real
//! workload runs: a daemon, a worker and a stream of `echo` runs through the
//! client, against raw TCP peers on loopback that
//!
//! * flood `Pull` requests and never read a reply,
//! * open connections (nng's handshake done) and never say a word,
//! * announce 60 MiB frames and send a part of them.
//!
//! Every attack is bounded in count and time. The workload must complete
//! with its p99 latency within [`LATENCY_FACTOR`] times its unloaded p99 (or
//! under [`LATENCY_FLOOR`], whichever is larger: a loaded test machine must
//! not make it flake), the daemon's resident memory must stay under
//! [`RSS_BOUND_MIB`], every attacking connection must be closed by the
//! daemon, and once the attackers are gone the client API must answer.
//!
//! `measure_attack_figures` (ignored; run it by hand with `--ignored
//! --nocapture`) prints the figures of the closing note with heavier
//! attacks, including whether the client API answers after 20,000 idle
//! connections leave, five times over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flotilla_client::{Client, json_to_payload, payload_to_json};
use flotilla_protocol::encode;
use flotilla_protocol::interchange::WorkerMessage;
use flotilla_protocol::task::{Outcome, TaskState};
use flotilla_tests::{Flotilla, test_config, wait_until};
use serde_json::json;

/// Loaded p99 may be this many times the unloaded p99 ...
const LATENCY_FACTOR: u32 = 20;
/// ... or this long, whichever is larger.
const LATENCY_FLOOR: Duration = Duration::from_secs(2);
/// The daemon's resident memory under the attacks, at most (a debug build;
/// peers that never register can make it hold about 1 MiB per connection,
/// for at most 64 connections).
const RSS_BOUND_MIB: u64 = 160;
/// How long any one `echo` run may take before the workload counts as
/// stalled.
const RUN_LIMIT: Duration = Duration::from_secs(20);

/// What the attackers do, at most.
#[derive(Clone, Copy, Debug)]
struct Attacks {
    /// Connections flooding `Pull`s at once (each reconnects once dropped).
    flooders: usize,
    /// `Pull`s one flooding connection sends, at most.
    flood_frames: usize,
    /// Idle connections opened in all (held until the attack ends).
    idle: usize,
    /// Connections sending an unfinished large frame at once.
    large: usize,
    /// Bytes each of them sends of its 60 MiB frame, at most.
    large_sent: usize,
    /// Connections each flooding or large-frame attacker opens in all.
    rounds: usize,
    /// The attack ends after this long, whatever remains to do.
    limit: Duration,
}

/// The bounded attacks of the test.
const TEST_ATTACKS: Attacks = Attacks {
    flooders: 4,
    flood_frames: 50_000,
    idle: 2_000,
    large: 12,
    large_sent: 24 << 20,
    rounds: 50,
    limit: Duration::from_secs(30),
};

/// A peer speaking nng's wire protocol by hand, as an attacker would.
struct RawPeer(TcpStream);

impl RawPeer {
    /// Connects and exchanges nng's header as a REQ socket; `None` when the
    /// daemon refused before the header came back.
    fn connect(port: u16) -> Option<RawPeer> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"\0SP\0\0\x30\0\0").ok()?;
        let mut header = [0u8; 8];
        s.read_exact(&mut header).ok()?;
        Some(RawPeer(s))
    }

    /// Waits up to `limit` for the daemon to close the connection.
    fn closed_by_daemon(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut sink = vec![0u8; 1 << 16];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self
                .0
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.0.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }
}

/// One request frame as nng's REQ side puts it on the wire.
fn request_frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut frame = ((body.len() + 4) as u64).to_be_bytes().to_vec();
    frame.extend_from_slice(&(id | 0x8000_0000).to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// What one kind of attacker saw.
#[derive(Debug, Default)]
struct Tally {
    /// Connections it opened.
    opened: usize,
    /// Of those, the ones the daemon closed (or refused).
    closed: usize,
}

/// Floods `Pull`s on fresh connections until `stop`, never reading.
fn flooder(port: u16, attacks: Attacks, stop: Arc<AtomicBool>) -> Tally {
    let pull = encode(&WorkerMessage::Pull {
        results: Vec::new(),
        wait: true,
    })
    .unwrap();
    let mut batch = Vec::new();
    for id in 0..256 {
        batch.extend(request_frame(id, &pull));
    }
    let mut tally = Tally::default();
    while tally.opened < attacks.rounds && !stop.load(Ordering::Relaxed) {
        tally.opened += 1;
        let Some(mut peer) = RawPeer::connect(port) else {
            tally.closed += 1;
            continue;
        };
        let mut sent = 0;
        while sent < attacks.flood_frames && peer.0.write_all(&batch).is_ok() {
            sent += 256;
        }
        // Dropped by the daemon, or its writes blocked: it must be closed.
        if peer.closed_by_daemon(Duration::from_secs(5)) {
            tally.closed += 1;
        }
    }
    tally
}

/// Opens idle connections until `count` or `stop` (counting them in
/// `opened`), then holds them until `stop`; counts those the daemon closed
/// (refused, or past its deadline) within `grace` after `stop`.
fn idler(
    port: u16,
    count: usize,
    opened: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    grace: Duration,
) -> Tally {
    let mut peers = Vec::new();
    let mut tally = Tally::default();
    while tally.opened < count && !stop.load(Ordering::Relaxed) {
        tally.opened += 1;
        opened.fetch_add(1, Ordering::Relaxed);
        match RawPeer::connect(port) {
            Some(p) => peers.push(p),
            None => tally.closed += 1,
        }
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(Duration::from_millis(50));
    }
    let deadline = Instant::now() + grace;
    for p in &mut peers {
        let left = deadline.saturating_duration_since(Instant::now());
        if p.closed_by_daemon(left.max(Duration::from_millis(10))) {
            tally.closed += 1;
        }
    }
    tally
}

/// Announces 60 MiB frames and sends part of them, reconnecting, until
/// `stop`.
fn large_sender(port: u16, attacks: Attacks, stop: Arc<AtomicBool>) -> Tally {
    let chunk = vec![0u8; 1 << 20];
    let mut tally = Tally::default();
    while tally.opened < attacks.rounds && !stop.load(Ordering::Relaxed) {
        tally.opened += 1;
        let Some(mut peer) = RawPeer::connect(port) else {
            tally.closed += 1;
            continue;
        };
        let mut sent = 0;
        let header = (60u64 << 20).to_be_bytes();
        let mut ok = peer.0.write_all(&header).is_ok();
        while ok && sent < attacks.large_sent && !stop.load(Ordering::Relaxed) {
            ok = peer.0.write_all(&chunk).is_ok();
            sent += chunk.len();
        }
        if peer.closed_by_daemon(Duration::from_secs(5)) {
            tally.closed += 1;
        }
    }
    tally
}

/// The daemon's resident memory in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Raises this process's soft open-file limit to the hard one; returns it.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
    hard
}

/// `n` `echo` runs one after the other; their latencies, sorted.
fn workload(client: &Client, n: usize) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let input = json_to_payload(&json!({"i": i})).unwrap();
        let started = Instant::now();
        let view = client
            .run("echo", input, Some(RUN_LIMIT))
            .unwrap_or_else(|e| panic!("run {i} failed: {e}"));
        assert_eq!(view.state, TaskState::Completed, "run {i}: {view:?}");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// What a run of the attacks measured.
struct Figures {
    unloaded_p99: Duration,
    loaded_p99: Duration,
    loaded_max: Duration,
    runs: usize,
    rss_before_mib: u64,
    rss_peak_mib: u64,
    flood: Tally,
    idle: Tally,
    large: Tally,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} echo runs: p99 {:?} unloaded, {:?} under attack (slowest {:?}); daemon RSS {} MiB before, {} MiB at most; connections opened/closed by the daemon: flood {}/{}, idle {}/{}, large frames {}/{}",
            self.runs,
            self.unloaded_p99,
            self.loaded_p99,
            self.loaded_max,
            self.rss_before_mib,
            self.rss_peak_mib,
            self.flood.opened,
            self.flood.closed,
            self.idle.opened,
            self.idle.closed,
            self.large.opened,
            self.large.closed,
        )
    }
}

/// Runs `runs` `echo` calls unloaded, then again under `attacks`; stops
/// the attackers and checks what they saw.
fn attack(f: &Flotilla, attacks: Attacks, runs: usize) -> Figures {
    let port = f.info().interchange_port;
    let pid = f.daemon_pid();
    let client = f.client();
    workload(&client, 10);
    let unloaded = workload(&client, runs);
    let rss_before_mib = rss_mib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss_before_mib));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_mib(pid), Ordering::Relaxed);
                std::thread::park_timeout(Duration::from_millis(20));
            }
        })
    };
    let spawn = |job: Box<dyn FnOnce() -> Tally + Send>| std::thread::spawn(job);
    let flooders: Vec<JoinHandle<Tally>> = (0..attacks.flooders)
        .map(|_| {
            let stop = stop.clone();
            spawn(Box::new(move || flooder(port, attacks, stop)))
        })
        .collect();
    let large: Vec<JoinHandle<Tally>> = (0..attacks.large)
        .map(|_| {
            let stop = stop.clone();
            spawn(Box::new(move || large_sender(port, attacks, stop)))
        })
        .collect();
    // Idle connections past the daemon's 10 s deadline must be closed.
    let grace = Duration::from_secs(30);
    let idle_threads = 4;
    let idle_opened = Arc::new(AtomicUsize::new(0));
    let idlers: Vec<JoinHandle<Tally>> = (0..idle_threads)
        .map(|_| {
            let (stop, opened) = (stop.clone(), idle_opened.clone());
            let count = attacks.idle / idle_threads;
            spawn(Box::new(move || idler(port, count, opened, stop, grace)))
        })
        .collect();

    let attack_started = Instant::now();
    let loaded = workload(&client, runs);
    // Keep the pressure on until the idle connections are all open (or the
    // attack's time is up), so they, too, meet the workload.
    wait_until(attacks.limit + RUN_LIMIT, "the attack's time", || {
        let all_open =
            idle_opened.load(Ordering::Relaxed) >= attacks.idle / idle_threads * idle_threads;
        (attack_started.elapsed() >= attacks.limit || all_open).then_some(())
    });
    let loaded_tail = workload(&client, 10);
    stop.store(true, Ordering::Relaxed);
    let sum = |handles: Vec<JoinHandle<Tally>>| {
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold(Tally::default(), |a, b| Tally {
                opened: a.opened + b.opened,
                closed: a.closed + b.closed,
            })
    };
    let figures = Figures {
        unloaded_p99: p99(&unloaded),
        loaded_p99: p99(&loaded),
        loaded_max: *loaded.last().unwrap().max(loaded_tail.last().unwrap()),
        runs,
        rss_before_mib,
        rss_peak_mib: 0,
        flood: sum(flooders),
        idle: sum(idlers),
        large: sum(large),
    };
    sampler.join().unwrap();
    Figures {
        rss_peak_mib: peak.load(Ordering::Relaxed),
        ..figures
    }
}

/// After the attackers left: the client API and the worker still answer.
fn still_serving(f: &Flotilla) {
    let client = f.client();
    let view = client
        .run(
            "echo",
            json_to_payload(&json!("after")).unwrap(),
            Some(RUN_LIMIT),
        )
        .unwrap();
    assert_eq!(view.state, TaskState::Completed);
    let out = f.cli(&["run", "echo", r#""cli after""#]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(client.status().unwrap().workers.len(), 1);
}

#[test]
fn the_daemon_keeps_serving_while_peers_that_never_register_attack() {
    raise_fd_limit();
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "2"]);
    f.wait_workers(1);
    let figures = attack(&f, TEST_ATTACKS, 100);
    eprintln!("{figures}");
    let bound = (figures.unloaded_p99 * LATENCY_FACTOR).max(LATENCY_FLOOR);
    assert!(
        figures.loaded_p99 <= bound,
        "p99 {:?} under attack, over {bound:?}",
        figures.loaded_p99
    );
    assert!(
        figures.rss_peak_mib <= RSS_BOUND_MIB,
        "the daemon grew to {} MiB",
        figures.rss_peak_mib
    );
    for (what, tally) in [
        ("flooding", &figures.flood),
        ("idle", &figures.idle),
        ("large-frame", &figures.large),
    ] {
        assert!(tally.opened > 0, "no {what} connection was opened");
        assert_eq!(
            tally.closed, tally.opened,
            "{what} connections the daemon did not close: {tally:?}"
        );
    }
    still_serving(&f);
}

#[test]
fn a_registered_worker_returns_results_larger_than_strangers_may_send() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "1"]);
    f.wait_workers(1);
    let text = "0123456789".repeat(300_000);
    let view = f
        .client()
        .run(
            "echo",
            json_to_payload(&json!(text)).unwrap(),
            Some(Duration::from_secs(60)),
        )
        .unwrap();
    match view.outcome {
        Some(Outcome::Output(bytes)) => assert_eq!(payload_to_json(&bytes).unwrap(), json!(text)),
        other => panic!("{other:?}"),
    }
    assert_eq!(view.attempts, 1, "the worker's result came back at once");
}

/// Opens `count` idle connections (nng's handshake done, never a word)
/// from several threads, holds them a moment, closes them all; then asks
/// the client API, with a deadline. Returns whether it answered.
fn idle_storm(f: &Flotilla, count: usize) -> (usize, bool, Duration) {
    let port = f.info().interchange_port;
    let threads = 8;
    let handles: Vec<JoinHandle<Vec<TcpStream>>> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                (0..count / threads)
                    .filter_map(|_| {
                        let mut s =
                            TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
                        s.write_all(b"\0SP\0\0\x30\0\0").ok()?;
                        Some(s)
                    })
                    .collect()
            })
        })
        .collect();
    let held: Vec<TcpStream> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let opened = held.len();
    drop(held);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let answered = loop {
        if Client::connect(f.home()).and_then(|c| c.ping()).is_ok() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
    };
    (opened, answered, started.elapsed())
}

#[test]
#[ignore = "minutes of heavy load: the figures of the closing note, run by hand"]
fn measure_attack_figures() {
    let fds = raise_fd_limit();
    let heavy = Attacks {
        flooders: 8,
        flood_frames: 400_000,
        idle: 10_000.min(fds as usize / 2),
        large: 12,
        large_sent: 60 << 20,
        rounds: 500,
        limit: Duration::from_secs(60),
    };
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker(&["--slots", "2"]);
    f.wait_workers(1);
    let figures = attack(&f, heavy, 300);
    println!("heavy attacks: {heavy:?}\n{figures}");
    let storm = 20_000.min(fds.saturating_sub(512) as usize);
    let mut answered = 0;
    for run in 1..=5 {
        let (opened, ok, after) = idle_storm(&f, storm);
        println!(
            "idle storm {run}: {opened} connections; client API answered: {ok} after {after:?}"
        );
        answered += usize::from(ok);
    }
    println!("client API answered after {answered} of 5 idle storms");
    still_serving(&f);
}
