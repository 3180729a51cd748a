//! A worker pointed at something that is not its daemon: a listener on the
//! daemon's address that does not know the secret (a port taken over while
//! the daemon restarts) and answers like a daemon, with work that would run
//! a command from a forged servable record. The real worker binary must
//! never run it, and never send the secret.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_protocol::interchange::{BatchId, DaemonMessage, WorkBatch, WorkItem, WorkerMessage};
use flotilla_protocol::launch::{SECRET_ENV, flag};
use flotilla_protocol::secret::to_hex;
use flotilla_protocol::servable::{
    Runtime, ServableOptions, ServableRecord, ServableSpec, TypeSpec,
};
use flotilla_protocol::task::NIL;
use flotilla_protocol::{Payload, TaskId, decode, encode};
use flotilla_tests::{bin, wait_until};
use nng::options::Options;
use nng::{Protocol, Socket};

/// A record whose servable runs `sh -c 'touch MARKER'`.
fn forged_record(marker: &Path) -> ServableRecord {
    let any = || TypeSpec::Number {
        description: String::new(),
    };
    ServableRecord {
        spec: ServableSpec {
            name: "forged".into(),
            version: "1.0.0".into(),
            title: "runs a command".into(),
            description: String::new(),
            creators: vec![],
            domains: vec![],
            license: "MIT".into(),
            doi: None,
            related_identifiers: vec![],
            model_type: "other".into(),
            input: any(),
            output: any(),
            runtime: Runtime::Exec {
                command: "sh".into(),
                args: vec!["-c".into(), format!("touch '{}'", marker.display())],
                working_dir: None,
                env: Default::default(),
            },
            container: None,
            files: vec![],
            build: None,
            resources: Default::default(),
            environment: None,
            options: ServableOptions::default(),
        },
        files: vec![],
        published_us: 1,
        lock: None,
        access: None,
    }
}

/// How the fake answers a probe.
#[derive(Clone, Copy, Debug)]
enum Pretence {
    /// With a proof it made up.
    ForgedProof,
    /// With work straight away, as if the worker were registered.
    WorkAtOnce,
}

/// The fake: a REP socket that records every request's bytes and answers
/// like a daemon that does not know the secret.
struct Fake {
    socket: Socket,
    port: u16,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Fake {
    fn start(pretence: Pretence, marker: &Path) -> Fake {
        let socket = Socket::new(Protocol::Rep0).unwrap();
        let listener = nng::ListenerBuilder::new(&socket, "tcp://127.0.0.1:0")
            .unwrap()
            .start()
            .unwrap();
        let port = listener
            .get_opt::<nng::options::transport::tcp::BoundPort>()
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = forged_record(marker);
        let (s, log) = (socket.clone(), received.clone());
        std::thread::spawn(move || {
            while let Ok(request) = s.recv() {
                log.lock().unwrap().push(request.as_slice().to_vec());
                let message = decode::<WorkerMessage>(request.as_slice(), 1 << 30).ok();
                let answer = match (pretence, message) {
                    (Pretence::ForgedProof, Some(WorkerMessage::Probe { .. })) => {
                        DaemonMessage::ProbeOk {
                            nonce: Payload::from(vec![7u8; 32]),
                            public: Payload::from(vec![9u8; 32]),
                            proof: Payload::from(vec![0u8; 32]),
                            cipher: Default::default(),
                        }
                    }
                    (_, Some(WorkerMessage::Hello(_))) => DaemonMessage::Welcome {
                        heartbeat_period_ms: 500,
                        heartbeat_threshold_ms: 3000,
                    },
                    _ => DaemonMessage::Work {
                        batches: vec![WorkBatch {
                            id: BatchId(1),
                            servable: record.id(),
                            params: Payload::new(),
                            items: vec![WorkItem {
                                task: TaskId(1),
                                input: Payload::from_static(NIL),
                            }],
                            spec: Some(Box::new(record.clone())),
                        }],
                    },
                };
                if s.send(&encode(&answer).unwrap()[..]).is_err() {
                    break;
                }
            }
        });
        Fake {
            socket,
            port,
            received,
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.socket.close();
    }
}

#[test]
fn a_worker_never_runs_work_from_a_listener_that_cannot_prove_the_secret() {
    let secret = [0x5au8; 32];
    for pretence in [Pretence::ForgedProof, Pretence::WorkAtOnce] {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("MARKER");
        let fake = Fake::start(pretence, &marker);
        let mut worker = Command::new(bin("flotilla-worker"))
            .args([flag::ADDRESS, "127.0.0.1", flag::PORT])
            .arg(fake.port.to_string())
            .args([flag::CONNECT_TIMEOUT_S, "5", flag::WORKER_ID, "victim"])
            .arg(flag::OBJECTS_DIR)
            .arg(tmp.path())
            .env(SECRET_ENV, to_hex(&secret))
            .env_remove("FLOTILLA_HOME")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_until(Duration::from_secs(30), "the worker to exit", || {
            worker.try_wait().unwrap()
        });
        let output = worker.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!status.success(), "{pretence:?}: {stderr}");
        assert!(
            stderr.contains("cannot prove it knows this worker's secret"),
            "{pretence:?}: {stderr}"
        );
        assert!(!marker.exists(), "{pretence:?}: the forged servable ran");
        let received = fake.received.lock().unwrap().clone();
        assert!(!received.is_empty(), "{pretence:?}: the worker never asked");
        let hex = to_hex(&secret);
        for bytes in &received {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{pretence:?}: the secret went to the fake"
            );
            assert!(
                !bytes.windows(hex.len()).any(|w| w == hex.as_bytes()),
                "{pretence:?}: the hex secret went to the fake"
            );
            let message = decode::<WorkerMessage>(bytes, 1 << 30).unwrap();
            assert!(
                matches!(message, WorkerMessage::Probe { .. }),
                "{pretence:?}: only probes, got {message:?}"
            );
        }
    }
}
