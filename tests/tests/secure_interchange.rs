//! End-to-end: the interchange as somebody on the cluster network sees it.
//!
//! A worker dials a relay in this test instead of the daemon; the relay
//! forwards every byte both ways over loopback and records it. Through it
//! the worker registers, runs an `echo` of a random marker and of a payload
//! large enough to travel in parts, and fetches a servable's file. Then:
//!
//! * neither the secret (raw or hex), nor the marker, nor the large
//!   payload, nor the file's content appear in the recorded bytes;
//! * the recorded hello, replayed on a fresh connection, is refused;
//! * a copy of a recorded frame, and a frame with one bit flipped, injected
//!   into the live connection each get that connection dropped, while the
//!   daemon keeps serving an honest worker;
//! * a worker with the wrong secret is refused through the relay with the
//!   message workers print today.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_client::{json_to_payload, payload_to_json};
use flotilla_engine::state_dir::StateDir;
use flotilla_protocol::interchange::{DaemonMessage, WorkerMessage};
use flotilla_protocol::launch::flag;
use flotilla_protocol::task::{Outcome, TaskState};
use flotilla_protocol::{Payload, decode, secure};
use flotilla_tests::{Flotilla, python_bin, test_config, wait_until, workspace};
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

/// Largest SP message the relay takes apart (the daemon's frame cap, and
/// then some): a bound on what it allocates for a length it reads.
const MAX_MESSAGE: u64 = 128 << 20;

/// One relayed connection: what the worker sent, message by message, and
/// the way to the daemon, for injecting.
struct Leg {
    /// SP messages from the worker (REQ header included), in order.
    to_daemon: Vec<Vec<u8>>,
    /// Writes towards the daemon, one whole message at a time.
    upstream: Arc<Mutex<TcpStream>>,
}

/// What crossed the relay.
#[derive(Default)]
struct Recording {
    /// Every byte, both ways, in the order read.
    bytes: Vec<u8>,
    /// The connections, oldest first.
    legs: Vec<Leg>,
}

/// A TCP relay between workers and the daemon's interchange that records
/// what passes and can insert whole messages towards the daemon.
struct Relay {
    port: u16,
    recording: Arc<Mutex<Recording>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(daemon_port: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let recording = Arc::new(Mutex::new(Recording::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, halt) = (recording.clone(), stop.clone());
        std::thread::spawn(move || {
            for worker in listener.incoming() {
                if halt.load(Ordering::Acquire) {
                    break;
                }
                let Ok(worker) = worker else { continue };
                let Ok(daemon) = TcpStream::connect(("127.0.0.1", daemon_port)) else {
                    continue;
                };
                relay_connection(worker, daemon, &rec);
            }
        });
        Relay {
            port,
            recording,
            stop,
        }
    }

    /// Every byte recorded so far.
    fn bytes(&self) -> Vec<u8> {
        self.recording.lock().unwrap().bytes.clone()
    }

    /// The frames (SP body without the REQ header) the worker sent on
    /// connection `leg`.
    fn frames(&self, leg: usize) -> Vec<Vec<u8>> {
        let rec = self.recording.lock().unwrap();
        rec.legs
            .get(leg)
            .map(|l| l.to_daemon.iter().map(|m| m[4..].to_vec()).collect())
            .unwrap_or_default()
    }

    fn legs(&self) -> usize {
        self.recording.lock().unwrap().legs.len()
    }

    /// Sends `message` (an SP message, REQ header included) to the daemon
    /// on connection `leg`, between two of the worker's messages.
    fn inject(&self, leg: usize, message: &[u8]) {
        let upstream = self.recording.lock().unwrap().legs[leg].upstream.clone();
        let mut out = upstream.lock().unwrap();
        out.write_all(&(message.len() as u64).to_be_bytes())
            .unwrap();
        out.write_all(message).unwrap();
    }

    /// The SP message the worker sent as number `index` on `leg`.
    fn message(&self, leg: usize, index: usize) -> Vec<u8> {
        self.recording.lock().unwrap().legs[leg].to_daemon[index].clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accepting thread so it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for leg in &self.recording.lock().unwrap().legs {
            let _ = leg.upstream.lock().unwrap().shutdown(Shutdown::Both);
        }
    }
}

/// Pumps one connection both ways on two threads: messages from the
/// worker one at a time (so injected ones land between them), bytes from
/// the daemon as they come.
fn relay_connection(worker: TcpStream, daemon: TcpStream, rec: &Arc<Mutex<Recording>>) {
    let upstream = Arc::new(Mutex::new(daemon.try_clone().unwrap()));
    let leg = {
        let mut r = rec.lock().unwrap();
        r.legs.push(Leg {
            to_daemon: Vec::new(),
            upstream: upstream.clone(),
        });
        r.legs.len() - 1
    };
    let (mut from_worker, mut to_worker) = (worker.try_clone().unwrap(), worker);
    let mut from_daemon = daemon;
    let up_rec = rec.clone();
    std::thread::spawn(move || {
        // The SP handshake: 8 bytes.
        let mut header = [0u8; 8];
        if from_worker.read_exact(&mut header).is_err() {
            return;
        }
        up_rec.lock().unwrap().bytes.extend_from_slice(&header);
        if upstream.lock().unwrap().write_all(&header).is_err() {
            return;
        }
        loop {
            let mut len = [0u8; 8];
            if from_worker.read_exact(&mut len).is_err() {
                break;
            }
            let n = u64::from_be_bytes(len);
            if n > MAX_MESSAGE {
                break;
            }
            let mut body = vec![0u8; n as usize];
            if from_worker.read_exact(&mut body).is_err() {
                break;
            }
            {
                let mut r = up_rec.lock().unwrap();
                r.bytes.extend_from_slice(&len);
                r.bytes.extend_from_slice(&body);
                r.legs[leg].to_daemon.push(body.clone());
            }
            let mut out = upstream.lock().unwrap();
            if out
                .write_all(&len)
                .and_then(|()| out.write_all(&body))
                .is_err()
            {
                break;
            }
        }
        let _ = upstream.lock().unwrap().shutdown(Shutdown::Both);
    });
    let down_rec = rec.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match from_daemon.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            down_rec.lock().unwrap().bytes.extend_from_slice(&buf[..n]);
            if to_worker.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_worker.shutdown(Shutdown::Both);
    });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn random(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes
}

/// `bytes` as a msgpack `bin`: the input `echo` returns unchanged.
fn bin_payload(bytes: &[u8]) -> Payload {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    rmpv::encode::write_value(&mut out, &rmpv::Value::Binary(bytes.to_vec())).unwrap();
    Payload::from(out)
}

fn echo(f: &Flotilla, input: Payload) -> Payload {
    let view = f.client().run("echo", input, Some(LONG)).unwrap();
    assert_eq!(view.state, TaskState::Completed, "{view:?}");
    match view.outcome {
        Some(Outcome::Output(out)) => out,
        other => panic!("echo gave {other:?}"),
    }
}

/// Byte `i` of the big-file servable's file is `(7 * i) % 256`.
fn blob_window(at: u64, len: u64) -> Vec<u8> {
    (at..at + len).map(|i| ((7 * i) % 256) as u8).collect()
}

/// A raw REQ socket that sends one frame to `url` and returns the reply.
fn send_raw(url: &str, frame: &[u8]) -> Vec<u8> {
    use nng::options::{Options, RecvTimeout};
    let socket = nng::Socket::new(nng::Protocol::Req0).unwrap();
    socket.set_opt::<RecvTimeout>(Some(LONG)).unwrap();
    socket.dial(url).unwrap();
    socket.send(frame).unwrap();
    socket.recv().unwrap().as_slice().to_vec()
}

/// Waits until the daemon's log has `count` lines with `what`.
fn wait_log(f: &Flotilla, what: &str, count: usize) {
    wait_until(LONG, what, || {
        (f.log().lines().filter(|l| l.contains(what)).count() >= count).then_some(())
    });
}

/// The index of the first frame on `leg` sealed with the keys of the
/// hello on `leg` (a frame sealed before it belongs to an earlier
/// connection), once there is one.
fn first_sealed(relay: &Relay, leg: usize) -> usize {
    wait_until(LONG, "a sealed frame on the relayed connection", || {
        let frames = relay.frames(leg);
        let hello = frames
            .iter()
            .position(|f| matches!(decode(f, 1 << 20), Ok(WorkerMessage::Hello(_))))?;
        frames
            .iter()
            .skip(hello)
            .position(|f| secure::is_sealed(f))
            .map(|i| hello + i)
    })
}

#[test]
fn the_relayed_interchange_shows_nothing_and_takes_no_injected_frame() {
    python_bin();
    let mut f = Flotilla::start(&test_config());
    f.publish(&workspace().join("tests/servables/big-file"))
        .unwrap_or_else(|e| panic!("{e}"));
    let secret = std::fs::read(StateDir::at(f.home()).secret_file()).unwrap();
    let daemon_port = f.info().interchange_port;
    let relay = Relay::start(daemon_port);
    let node = tempfile::tempdir().unwrap();
    let port = relay.port.to_string();
    let no_store = node.path().join("no-object-store-here");
    let cache = node.path().join("cache");
    f.spawn_worker(&[
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        flag::SLOTS,
        "2",
        flag::WORKER_ID,
        "relayed",
        flag::OBJECTS_DIR,
        no_store.to_str().unwrap(),
        flag::CACHE_DIR,
        cache.to_str().unwrap(),
    ]);
    f.wait_workers(1);

    // A run with a distinctive input and output, one whose result is
    // larger than a part, and a servable file fetched over the link.
    let marker = random(40);
    let input = bin_payload(&marker);
    assert_eq!(echo(&f, input.clone()), input);
    let large = random(3 << 19);
    let large_input = bin_payload(&large);
    assert_eq!(echo(&f, large_input.clone()), large_input);
    let out = f.cli(&["run", "big-file", "1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let blob: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(blob["size"], json!(5 * (1 << 19) + 7));
    assert!(
        f.worker_log(0)
            .contains("servable file fetched from the daemon"),
        "{}",
        f.worker_log(0)
    );

    // Sealed with the cipher this machine seals fast (AES-256-GCM where
    // the CPU has AES instructions), which both ends offered.
    let cipher = secure::Cipher::fast_here()[0];
    assert!(f.log().contains(&format!("cipher={cipher}")), "{}", f.log());

    let seen = relay.bytes();
    assert!(seen.len() > 2 * large.len(), "the relay saw the traffic");
    let hex = flotilla_protocol::secret::to_hex(&secret);
    assert!(!contains(&seen, &secret), "the secret crossed the wire");
    assert!(
        !contains(&seen, hex.as_bytes()),
        "the secret's hex crossed the wire"
    );
    assert!(!contains(&seen, &marker), "the marker crossed in clear");
    assert!(
        !contains(&seen, &large[1000..1064]),
        "the large payload crossed in clear"
    );
    assert!(
        !contains(&seen, &blob_window(1_000_000, 64)),
        "the servable's file crossed in clear"
    );

    // The captured registration, replayed on a fresh connection: refused.
    let hello = relay
        .frames(0)
        .into_iter()
        .find(|frame| matches!(decode(frame, 1 << 20), Ok(WorkerMessage::Hello(_))))
        .expect("the hello went through the relay");
    let answer = send_raw(&format!("tcp://127.0.0.1:{daemon_port}"), &hello);
    match decode::<DaemonMessage>(&answer, 1 << 20) {
        Ok(DaemonMessage::Refused { reason }) => {
            assert!(reason.contains("replayed"), "{reason}")
        }
        other => panic!("a replayed hello got {other:?}"),
    }

    // An honest worker beside it, straight to the daemon.
    f.spawn_worker_named("honest");

    // A copy of a frame the worker sent earlier, into the live connection.
    let first = first_sealed(&relay, 0);
    relay.inject(0, &relay.message(0, first));
    wait_log(&f, "a frame on its sealed connection does not open", 1);
    assert!(f.log().contains("(a replay)"), "{}", f.log());

    // The worker registers again over a fresh connection of the relay;
    // a frame of that connection with one bit of its counter flipped.
    wait_until(LONG, "the worker to reconnect through the relay", || {
        (relay.legs() >= 2).then_some(())
    });
    let leg = relay.legs() - 1;
    let index = first_sealed(&relay, leg);
    let mut flipped = relay.message(leg, index);
    // REQ header (4) + magic (4) + connection id (8) + counter (8): the
    // counter's most significant bit.
    flipped[4 + secure::HEADER_BYTES - 1] ^= 0x80;
    relay.inject(leg, &flipped);
    wait_log(&f, "a frame on its sealed connection does not open", 2);
    assert!(f.log().contains("fails authentication"), "{}", f.log());

    // The daemon serves on: runs complete, the honest worker is there.
    for i in 0..5 {
        let x = json!(format!("still served {i}"));
        let out = echo(&f, json_to_payload(&x).unwrap());
        assert_eq!(payload_to_json(&out).unwrap(), x);
    }
    let workers = f.client().status().unwrap().workers;
    assert!(workers.iter().any(|w| w.id == "honest"), "{workers:?}");
    assert!(!f.log().contains(&hex), "the daemon logged the secret");

    // A worker with the wrong secret, through the relay: refused, saying so.
    let wrong = f.home().join("wrong-secret");
    std::fs::write(&wrong, [7u8; 32]).unwrap();
    let intruder = f.spawn_worker(&[
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "--secret-file",
        wrong.to_str().unwrap(),
        flag::WORKER_ID,
        "intruder",
        "--connect-timeout-s",
        "10",
    ]);
    let status = f.wait_worker(intruder, LONG);
    assert_eq!(status.code(), Some(4), "{}", f.worker_log(2));
    assert!(
        f.worker_log(2)
            .contains("cannot prove it knows this worker's secret"),
        "{}",
        f.worker_log(2)
    );
    let workers = f.client().status().unwrap().workers;
    assert!(workers.iter().all(|w| w.id != "intruder"), "{workers:?}");
}

#[test]
fn a_worker_registers_again_under_fresh_keys_with_a_restarted_daemon() {
    let mut f = Flotilla::start(&test_config());
    f.spawn_worker_named("survivor");
    let run = |f: &Flotilla, i: u32| {
        let view = f
            .client()
            .run("echo", json_to_payload(&json!(i)).unwrap(), Some(LONG))
            .unwrap();
        assert_eq!(view.state, TaskState::Completed, "{view:?}");
        assert_eq!(view.worker.as_deref(), Some("survivor"));
    };
    run(&f, 1);
    // The worker's next frames are sealed with keys the new daemon never
    // had: it is told to register again, and does, on the same port.
    f.kill_daemon();
    f.start_daemon();
    f.wait_workers(1);
    run(&f, 2);
    assert!(
        f.worker_log(0).contains("registered with the daemon"),
        "{}",
        f.worker_log(0)
    );
    assert_eq!(
        f.worker_log(0)
            .matches("registered with the daemon")
            .count(),
        2,
        "{}",
        f.worker_log(0)
    );
}
