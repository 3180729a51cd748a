//! Finding the daemon: every advertised address is tried at once, and the
//! first that answers a probe with a valid proof that it knows our secret
//! wins (see [`flotilla_protocol::handshake`]; the secret itself is never
//! sent).
//!
//! Login nodes are multi-homed and the address a compute node can route to
//! is not always the first one anybody thinks of. Trying them one after the
//! other costs a full timeout per dead address; trying them in parallel
//! costs the time of the fastest good one. When none works, the worker says
//! for each address what went wrong (nothing listening, no answer, another
//! daemon's secret, another release) instead of hanging silently.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flotilla_protocol::address::Endpoint;
use flotilla_protocol::handshake::{self, HandshakeKey, Nonce, NonceSource, Transcript};
use flotilla_protocol::interchange::{DaemonMessage, WorkerMessage};
use flotilla_protocol::peer_text::shown;
use flotilla_protocol::secure::{self, Cipher, Ephemeral, SessionKeys};
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, FrameError, Payload, decode, encode};
use nng::options::{Options, RecvTimeout, SendTimeout};
use nng::{Protocol, Socket};

/// A socket connected to the daemon, and where.
pub struct Connected {
    /// The socket, dialled and probed.
    pub socket: Socket,
    /// `tcp://HOST:PORT` it dialled.
    pub url: String,
    /// The probe the daemon there answered with a valid proof: the
    /// session's first hello answers its challenge.
    pub proven: Proven,
}

/// A probe answered with a valid proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// What the proofs cover: both nonces (the daemon's is its challenge
    /// for the hello) and both ephemeral public keys.
    pub transcript: Transcript,
    /// The connection's keys the handshake yields.
    pub keys: SessionKeys,
    /// The connection the answer came over (see [`pipe_key`]).
    pub pipe: Option<u64>,
}

/// A number that tells `pipe` (one connection) apart from the others.
pub fn pipe_key(pipe: nng::Pipe) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    pipe.hash(&mut hasher);
    hasher.finish()
}

/// Why no address worked: one line per address.
#[derive(Debug)]
pub struct Unreachable {
    /// `(address, why)` in the order the addresses were given.
    pub tried: Vec<(String, String)>,
    /// How long the worker tried.
    pub waited: Duration,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "flotilla-worker: cannot reach the daemon at any of its {} address{} (tried for {:.1} s):",
            self.tried.len(),
            if self.tried.len() == 1 { "" } else { "es" },
            self.waited.as_secs_f64()
        )?;
        for (address, why) in &self.tried {
            writeln!(f, "  {address}: {why}")?;
        }
        Ok(())
    }
}

/// Tries every endpoint at once for at most `timeout`; `socket` makes a
/// fresh, configured socket. Probe nonces come from `nonces`; each probe
/// offers `ciphers` (this machine's fast ones, best first).
pub fn connect(
    endpoints: &[Endpoint],
    default_port: u16,
    (secret, ciphers): (&[u8], &[Cipher]),
    nonces: &mut NonceSource,
    timeout: Duration,
    socket: impl Fn() -> anyhow::Result<Socket>,
) -> Result<Connected, Unreachable> {
    let started = Instant::now();
    let deadline = started + timeout;
    let addresses: Vec<String> = endpoints
        .iter()
        .map(|e| e.with_port(default_port))
        .collect();
    let (tx, rx) = mpsc::channel::<(usize, Result<Connected, String>)>();
    for (i, address) in addresses.iter().enumerate() {
        let thread_tx = tx.clone();
        let address = address.clone();
        let key = HandshakeKey::from_secret(secret);
        let nonce = nonces.next_nonce();
        let ephemeral = Ephemeral::from_random(nonces.next_nonce());
        let made = socket().map_err(|e| format!("{e:#}"));
        let ciphers = ciphers.to_vec();
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{i}"))
            .spawn(move || {
                let outcome = made
                    .and_then(|s| probe(s, &address, &key, (nonce, ephemeral, ciphers), deadline));
                // The receiver is gone once a winner is chosen; dropping the
                // socket here closes a losing connection.
                let _ = thread_tx.send((i, outcome));
            });
        if let Err(e) = spawned {
            let _ = tx.send((i, Err(format!("cannot start a probe thread: {e}"))));
        }
    }
    drop(tx);
    let mut outcomes: Vec<Option<String>> = vec![None; addresses.len()];
    let mut waiting = addresses.len();
    while waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        // A probe gives up at the deadline by itself; the margin lets its
        // own, more precise, reason arrive.
        match rx.recv_timeout(left + Duration::from_millis(200)) {
            Ok((i, Ok(connected))) => {
                tracing::info!(address = %addresses[i], after_ms = started.elapsed().as_millis() as u64, "reached the daemon");
                return Ok(connected);
            }
            Ok((i, Err(why))) => {
                tracing::warn!(address = %addresses[i], reason = %why, "cannot reach the daemon there");
                outcomes[i] = Some(why);
                waiting -= 1;
            }
            Err(_) => break,
        }
    }
    let secs = timeout.as_secs_f64();
    let tried = std::thread::scope(|scope| {
        let pending: Vec<_> = addresses
            .into_iter()
            .zip(outcomes)
            .map(|(address, why)| match why {
                Some(why) => (address, Ok(why)),
                None => {
                    let a = address.clone();
                    (
                        address,
                        Err(scope.spawn(move || classify_silence(&a, secs))),
                    )
                }
            })
            .collect();
        pending
            .into_iter()
            .map(|(address, why)| {
                let why = why.unwrap_or_else(|handle| {
                    handle
                        .join()
                        .unwrap_or_else(|_| format!("no answer within {secs:.1} s"))
                });
                (address, why)
            })
            .collect()
    });
    Err(Unreachable {
        tried,
        waited: started.elapsed(),
    })
}

/// Dials `address`, then asks the daemon there to prove that it knows our
/// secret (the probe carries `nonce`, the public half of `ephemeral` and
/// the `ciphers` offered; the answer must carry a valid proof, and names
/// the cipher the keys are for).
///
/// The dial is nng's own: a bare TCP check first would cost the daemon's
/// listener a pause per probe (it backs off after a connection that closes
/// before the SP handshake), which thousands of starting workers would add
/// up. So "is anything listening" is only asked of addresses that never
/// answered, by [`classify_silence`], once the worker has given up.
fn probe(
    socket: Socket,
    address: &str,
    key: &HandshakeKey,
    (nonce, ephemeral, ciphers): (Nonce, Ephemeral, Vec<Cipher>),
    deadline: Instant,
) -> Result<Connected, String> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let resolved: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve the name: {e}"))?
        .collect();
    let mut dialled = None;
    let mut last_error = String::from("the name resolves to no address");
    for addr in &resolved {
        let url = format!("tcp://{addr}");
        match socket.dial(&url) {
            Ok(()) => {
                dialled = Some(url);
                break;
            }
            Err(e) => last_error = dial_reason(e),
        }
    }
    let url = dialled.ok_or(last_error)?;
    let unanswered = || {
        "connected, but no daemon answered within the connect timeout (something else listens there, or the replies are dropped)".to_owned()
    };
    let timeout = Some(left().max(Duration::from_millis(1)));
    socket
        .set_opt::<SendTimeout>(timeout)
        .and_then(|()| socket.set_opt::<RecvTimeout>(timeout))
        .map_err(|e| format!("cannot configure the socket: {e}"))?;
    let message = encode(&WorkerMessage::Probe {
        nonce: Payload::copy_from_slice(&nonce),
        public: Payload::copy_from_slice(&ephemeral.public()),
        ciphers,
    })
    .map_err(|e| e.to_string())?;
    socket.send(&message[..]).map_err(|(_, e)| match e {
        nng::Error::TimedOut => unanswered(),
        other => format!("cannot send the probe: {other}"),
    })?;
    let mut reply = socket.recv().map_err(|e| match e {
        nng::Error::TimedOut => unanswered(),
        other => format!("no reply to the probe: {other}"),
    })?;
    let pipe = reply.pipe().map(pipe_key);
    let proven = match decode::<DaemonMessage>(reply.as_slice(), DEFAULT_MAX_FRAME_BYTES) {
        Ok(DaemonMessage::ProbeOk {
            nonce: daemon_nonce,
            public,
            proof,
            cipher,
        }) => {
            let (Some(daemon_nonce), Some(daemon_public)) = (
                handshake::nonce(&daemon_nonce),
                handshake::public_key(&public),
            ) else {
                return Err(UNPROVEN.to_owned());
            };
            let transcript = Transcript {
                worker_nonce: nonce,
                daemon_nonce,
                worker_public: ephemeral.public(),
                daemon_public,
            };
            if !key.check_daemon(&transcript, &proof) {
                return Err(UNPROVEN.to_owned());
            }
            let keys = secure::session_keys(key, &transcript, &ephemeral, &daemon_public, cipher)
                .map_err(|e| format!("{UNPROVEN} ({e})"))?;
            Proven {
                transcript,
                keys,
                pipe,
            }
        }
        Ok(DaemonMessage::Refused { reason }) => {
            return Err(format!("refused by the daemon there: {}", shown(&reason)));
        }
        Ok(_) => return Err(UNPROVEN.to_owned()),
        Err(e @ FrameError::VersionMismatch { .. }) => {
            return Err(format!(
                "a daemon of another release answers there ({e}); use the same Flotilla release for both"
            ));
        }
        Err(e) => return Err(format!("the answer is not Flotilla's protocol: {e}")),
    };
    socket
        .set_opt::<SendTimeout>(None)
        .and_then(|()| socket.set_opt::<RecvTimeout>(None))
        .map_err(|e| format!("cannot configure the socket: {e}"))?;
    Ok(Connected {
        socket,
        url,
        proven,
    })
}

/// Why an address that answers without a valid proof is not used.
const UNPROVEN: &str = "something answers there but cannot prove it knows this worker's secret (another daemon, or an impostor): not registering there";

fn dial_reason(e: nng::Error) -> String {
    match e {
        nng::Error::ConnectionRefused => {
            "connection refused (nothing listens there: wrong port, or the daemon is not running)"
                .into()
        }
        nng::Error::TimedOut => {
            "no answer to the connection attempt (a firewall, or an address this node cannot route to)".into()
        }
        nng::Error::DestUnreachable => "unreachable from this node (no route)".into(),
        nng::Error::ConnectionShutdown
        | nng::Error::ConnectionReset
        | nng::Error::ConnectionAborted
        | nng::Error::Protocol => {
            "connected, but the other end hung up without speaking Flotilla's protocol (something else listens there)".into()
        }
        other => format!("cannot connect: {other}"),
    }
}

/// Why an address never answered: is something listening there at all?
fn classify_silence(address: &str, timeout_s: f64) -> String {
    let listening = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok());
    if listening {
        format!(
            "connected, but no daemon answered within {timeout_s:.1} s (something else listens there, or the replies are dropped)"
        )
    } else {
        format!(
            "no answer within {timeout_s:.1} s (a firewall, or an address this node cannot route to)"
        )
    }
}

/// A REQ socket set up for the worker's session, accepting frames of the
/// default size ([`DEFAULT_MAX_FRAME_BYTES`]).
pub fn worker_socket() -> anyhow::Result<Socket> {
    worker_socket_with_cap(DEFAULT_MAX_FRAME_BYTES)
}

/// A REQ socket set up for the worker's session that accepts frames of up
/// to `max_frame_bytes` (the worker's announced cap).
///
/// The socket itself takes frames up to twice that, so that one just over
/// the cap reaches the session, which says what happened (its size, the
/// cap) instead of the connection dropping without a word.
pub fn worker_socket_with_cap(max_frame_bytes: usize) -> anyhow::Result<Socket> {
    use anyhow::Context as _;
    let socket = Socket::new(Protocol::Req0).context("cannot create the worker socket")?;
    // Long-polls are held on purpose; REQ's resend timer would duplicate them.
    socket
        .set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
        .context("cannot disable request resends")?;
    socket
        .set_opt::<nng::options::RecvMaxSize>(max_frame_bytes.saturating_mul(2))
        .context("cannot set the frame cap")?;
    socket
        .set_opt::<nng::options::transport::tcp::NoDelay>(true)
        .context("cannot set TCP_NODELAY")?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn ep(address: &str) -> Endpoint {
        Endpoint::parse(address).unwrap()
    }

    /// A REP socket answering every request with `answer`.
    fn fake_daemon(answer: Vec<u8>) -> (Socket, u16) {
        answering(move |_| answer.clone())
    }

    /// A REP socket answering every request with what `answer` makes of it.
    fn answering(answer: impl Fn(&[u8]) -> Vec<u8> + Send + 'static) -> (Socket, u16) {
        let (socket, port) = crate::test_support::rep_on_loopback();
        let s = socket.clone();
        std::thread::spawn(move || {
            while let Ok(request) = s.recv() {
                if s.send(&answer(request.as_slice())[..]).is_err() {
                    break;
                }
            }
        });
        (socket, port)
    }

    /// A daemon that knows `secret`: answers probes with a valid proof.
    fn proving_daemon(secret: &'static [u8]) -> (Socket, u16) {
        answering(move |request| {
            let Ok(WorkerMessage::Probe {
                nonce,
                public,
                ciphers,
            }) = decode(request, 1 << 20)
            else {
                panic!("not a probe");
            };
            let daemon_nonce = [9u8; 32];
            let daemon_public = Ephemeral::from_random([8; 32]).public();
            let proof = HandshakeKey::from_secret(secret).daemon_proof(&Transcript {
                worker_nonce: handshake::nonce(&nonce).unwrap(),
                daemon_nonce,
                worker_public: handshake::public_key(&public).unwrap(),
                daemon_public,
            });
            encode(&DaemonMessage::ProbeOk {
                nonce: Payload::copy_from_slice(&daemon_nonce),
                public: Payload::copy_from_slice(&daemon_public),
                proof: Payload::copy_from_slice(&proof),
                cipher: Cipher::agree(&ciphers, &Cipher::fast_here()),
            })
            .unwrap()
        })
    }

    fn nonces() -> NonceSource {
        NonceSource::new(&[1; 32], "test")
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_dead_address_does_not_delay_a_good_one() {
        let (_daemon, port) = proving_daemon(b"s");
        // Accepts connections but never speaks.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let started = Instant::now();
        let connected = connect(
            &[
                ep(&format!("127.0.0.1:{silent_port}")),
                ep(&format!("127.0.0.1:{}", free_port())),
                ep("127.0.0.1"),
            ],
            port,
            (b"s", &Cipher::fast_here()),
            &mut nonces(),
            Duration::from_secs(10),
            worker_socket,
        )
        .map_err(|e| e.to_string())
        .unwrap();
        assert_eq!(connected.url, format!("tcp://127.0.0.1:{port}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn every_failure_is_reported_by_address() {
        let (_other, other_port) = fake_daemon(
            encode(&DaemonMessage::Refused {
                reason: "wrong secret: this worker was not started for this daemon".into(),
            })
            .unwrap(),
        );
        let newer = rmp_serde::to_vec(&(flotilla_protocol::PROTOCOL_VERSION + 1, "hello")).unwrap();
        let (_newer, newer_port) = fake_daemon(newer);
        // Knows another secret: its proof does not check out.
        let (_impostor, impostor_port) = proving_daemon(b"another secret");
        // Answers the probe with work, as if it were registered.
        let (_eager, eager_port) =
            fake_daemon(encode(&DaemonMessage::Work { batches: vec![] }).unwrap());
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let dead_port = free_port();
        let err = match connect(
            &[
                ep(&format!("127.0.0.1:{dead_port}")),
                ep(&format!("127.0.0.1:{silent_port}")),
                ep(&format!("127.0.0.1:{other_port}")),
                ep(&format!("127.0.0.1:{newer_port}")),
                ep(&format!("127.0.0.1:{impostor_port}")),
                ep(&format!("127.0.0.1:{eager_port}")),
            ],
            1,
            (b"s", &Cipher::fast_here()),
            &mut nonces(),
            Duration::from_millis(1500),
            worker_socket,
        ) {
            Ok(c) => panic!("connected to {}", c.url),
            Err(e) => e,
        };
        let report = err.to_string();
        let lines: Vec<&str> = report.lines().collect();
        assert!(
            lines[0].contains("cannot reach the daemon at any of its 6 addresses"),
            "{report}"
        );
        assert!(
            lines[1].starts_with(&format!("  127.0.0.1:{dead_port}: connection refused")),
            "{report}"
        );
        assert!(
            lines[2].starts_with(&format!(
                "  127.0.0.1:{silent_port}: connected, but no daemon answered"
            )),
            "{report}"
        );
        assert!(
            lines[3].contains("refused by the daemon there: wrong secret"),
            "{report}"
        );
        assert!(lines[4].contains("another release"), "{report}");
        for line in &lines[5..7] {
            assert!(
                line.contains("cannot prove it knows this worker's secret"),
                "{report}"
            );
        }
        assert!(err.waited < Duration::from_secs(3), "{:?}", err.waited);
    }
}
