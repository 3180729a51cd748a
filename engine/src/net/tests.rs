//! The server against real sockets on loopback: holding and answering
//! requests, dropping bad peers, and the limits on peers that have not
//! registered (raw TCP peers stand in for attackers).

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;

use peers::MAX_OUTSTANDING_UNREGISTERED;

/// What the test servers answer to a part from a peer that has not
/// registered.
const UNREGISTERED_PART: &[u8] = b"register first";

type Requests = mpsc::Receiver<(u32, PipeId, Vec<u8>)>;

fn echo_server(url: &str) -> (RepServer, Requests, u16) {
    server_with(url, PeerLimits::trusted(1024))
}

/// A server bounded by `limits` that hands every request to the test
/// (through the returned channel) and drops a peer that says `bad`.
fn server_with(url: &str, limits: PeerLimits) -> (RepServer, Requests, u16) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = RepServer::new(
        "test",
        10_000,
        limits,
        UNREGISTERED_PART.to_vec(),
        Box::new(move |inbound| match inbound {
            Inbound::Request { bytes, .. } if bytes[..] == b"bad"[..] => Verdict::Drop {
                reply: Some(b"bye".to_vec()),
            },
            Inbound::Request {
                receiver,
                pipe,
                bytes,
                ..
            } => {
                let _ = lock(&tx).send((receiver, pipe, bytes.to_vec()));
                Verdict::Accept
            }
            Inbound::PipeClosed(_) => Verdict::Accept,
        }),
    )
    .unwrap();
    let port = server.listen(url, 0o600).unwrap().port;
    (server, rx, port)
}

fn client(url: &str) -> Socket {
    let s = Socket::new(Protocol::Req0).unwrap();
    s.set_opt::<nng::options::RecvTimeout>(Some(Duration::from_secs(10)))
        .unwrap();
    s.dial(url).unwrap();
    s
}

#[test]
fn holds_many_requests_and_answers_them_later() {
    let (server, rx, port) = echo_server("tcp://127.0.0.1:0");
    assert!(port > 0);
    let url = format!("tcp://127.0.0.1:{port}");
    let clients: Vec<Socket> = (0..100).map(|_| client(&url)).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send(Message::from(&i.to_le_bytes()[..])).unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
    }
    // More requests than the initial receivers: the server added more.
    assert!(held.iter().map(|h| h.0).max().unwrap() >= GROW_STEP as u32);
    for (receiver, _, bytes) in &held {
        server.reply(*receiver, bytes, false);
    }
    for (i, c) in clients.iter().enumerate() {
        let back = c.recv().unwrap();
        assert_eq!(back.as_slice(), &i.to_le_bytes()[..]);
    }
}

#[test]
fn a_rejected_peer_is_dropped_and_others_carry_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("ipc://{}/t.sock", dir.path().display());
    let (server, rx, _) = echo_server(&url);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("t.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let bad = client(&url);
    bad.send(Message::from(&b"bad"[..])).unwrap();
    assert_eq!(bad.recv().unwrap().as_slice(), b"bye");
    // Oversized frames never reach the handler.
    let big = client(&url);
    big.send(Message::from(&vec![0u8; 4096][..])).unwrap();
    let good = client(&url);
    good.send(Message::from(&b"ok"[..])).unwrap();
    let (receiver, _, bytes) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(bytes, b"ok");
    server.reply(receiver, b"fine", false);
    assert_eq!(good.recv().unwrap().as_slice(), b"fine");
    assert!(
        rx.try_recv().is_err(),
        "the oversized frame was not delivered"
    );
}

#[test]
fn a_dropped_peer_gets_its_last_reply_before_the_close() {
    let (_server, _rx, port) = echo_server("tcp://127.0.0.1:0");
    let url = format!("tcp://127.0.0.1:{port}");
    for _ in 0..200 {
        let bad = client(&url);
        // As workers do: no resend, so a reply lost to the close is
        // an error here, not a silent retry.
        bad.set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
            .unwrap();
        bad.send(Message::from(&b"bad"[..])).unwrap();
        assert_eq!(bad.recv().unwrap().as_slice(), b"bye");
    }
}

/// Polls `check` until it holds, or panics after `limit` naming `what`.
fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Interchange limits with room for a test: small caps, short deadlines.
fn guarded(max_frame: usize) -> PeerLimits {
    PeerLimits {
        max_unregistered: 3,
        hello_deadline: Duration::from_secs(2),
        send_timeout: Duration::from_millis(500),
        ..PeerLimits::interchange(max_frame, 100)
    }
}

/// A peer speaking nng's wire protocol by hand, as an attacker would: it
/// sends what it likes and reads only when told.
struct RawPeer(TcpStream);

impl RawPeer {
    /// Connects and exchanges the SP header as a REQ socket.
    fn connect(port: u16) -> RawPeer {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A server that stops reading fails the test, not hangs it.
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"\0SP\0\0\x30\0\0").unwrap();
        let mut header = [0u8; 8];
        s.read_exact(&mut header).unwrap();
        assert_eq!(&header[..4], b"\0SP\0");
        RawPeer(s)
    }

    /// Sends request `id` with `body`; false once the server hung up.
    fn request(&mut self, id: u32, body: &[u8]) -> bool {
        let mut frame = ((body.len() + 4) as u64).to_be_bytes().to_vec();
        frame.extend_from_slice(&(id | 0x8000_0000).to_be_bytes());
        frame.extend_from_slice(body);
        self.0.write_all(&frame).is_ok()
    }

    /// Reads one reply's body.
    fn reply(&mut self) -> Vec<u8> {
        let mut len = [0u8; 8];
        self.0.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u64::from_be_bytes(len) as usize];
        self.0.read_exact(&mut body).unwrap();
        body.split_off(4)
    }

    /// True once the server closed the connection (reading what is left).
    fn closed_by_server(&mut self) -> bool {
        let mut sink = [0u8; 4096];
        loop {
            match self.0.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

#[test]
fn a_peer_flooding_requests_without_reading_is_dropped_and_others_carry_on() {
    let (server, rx, port) = server_with("tcp://127.0.0.1:0", guarded(1 << 20));
    let mut flood = RawPeer::connect(port);
    let mut sent = 0;
    while sent < 100_000 && flood.request(sent, b"pull") {
        sent += 1;
    }
    assert!(
        flood.closed_by_server(),
        "the flooding peer was not dropped"
    );
    // Only what the cap allows reached the handler; nothing was answered.
    let held: Vec<_> = rx.try_iter().collect();
    assert!(held.len() <= MAX_OUTSTANDING_UNREGISTERED, "{held:?}");
    wait_until(
        Duration::from_secs(10),
        "the flood's connection to go",
        || server.connections().0 == 0,
    );
    let good = client(&format!("tcp://127.0.0.1:{port}"));
    good.send(Message::from(&b"ok"[..])).unwrap();
    let (receiver, _, bytes) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(bytes, b"ok");
    server.reply(receiver, b"fine", false);
    assert_eq!(good.recv().unwrap().as_slice(), b"fine");
}

#[test]
fn unregistered_peers_are_capped_and_must_register_in_time() {
    let (server, rx, port) = server_with("tcp://127.0.0.1:0", guarded(1 << 20));
    // A worker registers at once: it stays.
    let mut worker = RawPeer::connect(port);
    assert!(worker.request(1, b"hello"));
    let (receiver, _, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    server.register(receiver);
    server.reply(receiver, b"welcome", false);
    assert_eq!(worker.reply(), b"welcome");
    // Three that never say anything: a fourth is refused as it comes.
    let started = Instant::now();
    let mut idle: Vec<RawPeer> = (0..3).map(|_| RawPeer::connect(port)).collect();
    wait_until(Duration::from_secs(10), "four connections", || {
        server.connections() == (4, 3)
    });
    assert!(RawPeer::connect(port).closed_by_server());
    // The three are closed at their deadline, not before.
    for peer in &mut idle {
        assert!(peer.closed_by_server());
    }
    assert!(started.elapsed() >= guarded(1).hello_deadline);
    wait_until(Duration::from_secs(10), "the idle ones to go", || {
        server.connections() == (1, 0)
    });
    assert!(worker.request(2, b"still here"));
    let (receiver, _, bytes) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(bytes, b"still here");
    server.reply(receiver, b"yes", false);
    assert_eq!(worker.reply(), b"yes");
}

#[test]
fn an_unfinished_large_frame_is_refused_from_its_header() {
    let (server, _rx, port) = server_with("tcp://127.0.0.1:0", guarded(64 << 20));
    let mut peer = RawPeer::connect(port);
    // The header announces 60 MiB; a megabyte follows, the rest never does.
    let mut start = (60u64 << 20).to_be_bytes().to_vec();
    start.extend_from_slice(&[0u8; 1 << 20]);
    let _ = peer.0.write_all(&start);
    assert!(peer.closed_by_server());
    wait_until(Duration::from_secs(10), "the connection to go", || {
        server.connections().0 == 0
    });
}

#[test]
fn parts_are_joined_for_registered_peers_only() {
    let (server, rx, port) = server_with("tcp://127.0.0.1:0", guarded(8 << 20));
    let url = format!("tcp://127.0.0.1:{port}");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let parts = parts::split(&big, 1, parts::PREAUTH_FRAME_BYTES);
    assert!(parts.len() >= 3);
    // Not registered: the part is answered "register first" and not kept.
    let stranger = client(&url);
    stranger.send(Message::from(&parts[0][..])).unwrap();
    assert_eq!(stranger.recv().unwrap().as_slice(), UNREGISTERED_PART);
    drop(stranger);
    // Sent whole, the frame is refused at the socket: the connection drops.
    let whole = client(&url);
    whole
        .set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
        .unwrap();
    whole.send(Message::from(&big[..])).unwrap();
    assert_eq!(whole.recv().unwrap_err(), nng::Error::ConnectionReset);
    drop(whole);
    wait_until(Duration::from_secs(10), "the strangers to go", || {
        server.connections().0 == 0
    });
    // Two registered peers send their frames in parts, interleaved.
    let peers: Vec<Socket> = (0..2).map(|_| client(&url)).collect();
    for p in &peers {
        p.send(Message::from(&b"hello"[..])).unwrap();
        let (receiver, _, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        server.register(receiver);
        server.reply(receiver, b"welcome", false);
        assert_eq!(p.recv().unwrap().as_slice(), b"welcome");
    }
    let other: Vec<u8> = big.iter().rev().copied().collect();
    let other_parts = parts::split(&other, 1, parts::PREAUTH_FRAME_BYTES);
    for i in 0..parts.len() - 1 {
        for (p, ps) in peers.iter().zip([&parts, &other_parts]) {
            p.send(Message::from(&ps[i][..])).unwrap();
            assert_eq!(p.recv().unwrap().as_slice(), parts::ACK);
        }
    }
    for (p, ps) in peers.iter().zip([&parts, &other_parts]) {
        p.send(Message::from(&ps[ps.len() - 1][..])).unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let (receiver, pipe, bytes) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        server.reply(receiver, &pipe.0.to_le_bytes(), false);
        got.push(bytes);
    }
    assert!(got.contains(&big) && got.contains(&other));
    for p in &peers {
        assert_eq!(p.recv().unwrap().len(), 8);
    }
    assert!(
        rx.try_recv().is_err(),
        "the whole frame and the stray part were kept"
    );
}

#[test]
fn a_peer_that_does_not_read_its_replies_is_dropped() {
    let (server, rx, port) = server_with("tcp://127.0.0.1:0", guarded(1 << 20));
    let mut peer = RawPeer::connect(port);
    assert!(peer.request(1, b"hello"));
    let (receiver, _, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    server.register(receiver);
    server.reply(receiver, b"welcome", false);
    assert_eq!(peer.reply(), b"welcome");
    // Replies far larger than the socket buffers, to a peer that stops
    // reading: the first sticks in the connection, the next waits behind it
    // until its timeout drops the peer.
    for id in 2..5 {
        assert!(peer.request(id, b"pull"));
    }
    let held: Vec<_> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    let large = vec![7u8; 32 << 20];
    for (receiver, _, _) in &held {
        server.reply(*receiver, &large, false);
    }
    wait_until(Duration::from_secs(20), "the peer to be dropped", || {
        server.connections().0 == 0
    });
}

#[test]
fn servers_dropped_while_their_callbacks_run_stop_cleanly() {
    // Each round drops a server right after its reply went out, while
    // nng may still be running the reply's callback: were the server freed
    // from that callback, nng's threads would wait for themselves and every
    // socket in the process would stall. A stall fails the test at its
    // deadline instead of hanging it.
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        for round in 0..1_000u32 {
            let (server, rx, port) = server_with("tcp://127.0.0.1:0", guarded(1 << 20));
            let c = client(&format!("tcp://127.0.0.1:{port}"));
            c.send(Message::from(&round.to_le_bytes()[..])).unwrap();
            let (receiver, _, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            server.reply(receiver, b"ok", false);
            assert_eq!(c.recv().unwrap().as_slice(), b"ok");
            drop(server);
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(300))
        .expect("dropping servers stalled nng");
}

#[test]
fn an_encoded_reply_carries_exactly_the_frame_encode_makes() {
    let (server, rx, port) = echo_server("tcp://127.0.0.1:0");
    let c = client(&format!("tcp://127.0.0.1:{port}"));
    // Large enough that the payload bypasses the writer's buffer.
    let value = (
        "a reply",
        bytes::Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>()),
        7u64,
    );
    c.send(Message::from(&b"ask"[..])).unwrap();
    let (receiver, _, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    server.reply_encoded(receiver, &value, false).unwrap();
    let back = c.recv().unwrap();
    assert_eq!(
        back.as_slice(),
        &flotilla_protocol::encode(&value).unwrap()[..]
    );
}
