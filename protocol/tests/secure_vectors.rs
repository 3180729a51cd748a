//! Shared test vectors for the TCP client API's handshake and sealed frames.
//!
//! A client in another language (the Python client in `clients/python`)
//! implements [`flotilla_protocol::client_auth`], [`flotilla_protocol::secure`]
//! and [`flotilla_protocol::parts`] on its own, with other libraries for
//! X25519, ChaCha20-Poly1305 and BLAKE3. This test runs one handshake with
//! fixed keys and nonces, seals fixed frames both ways and splits one into
//! parts, and compares every byte with `testdata/secure-vectors.json`, which
//! the other clients' tests recompute from the same inputs. A change to the
//! handshake, the key derivations or the sealed layout therefore fails here
//! first, and again in every client until it is updated.
//!
//! After an intended change, regenerate the file with
//!
//! ```sh
//! FLOTILLA_WRITE_VECTORS=1 cargo test -p flotilla-protocol --test secure_vectors
//! ```

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use flotilla_protocol::client::{ApiError, ApiErrorKind, ClientCall, ClientReply};
use flotilla_protocol::client_auth::{ClientHandshake, DaemonHandshake, GateCall, GateReply};
use flotilla_protocol::secure::{Channel, Ephemeral, Role};
use flotilla_protocol::token::Token;
use flotilla_protocol::{PROTOCOL_VERSION, encode, parts};

/// Environment variable that makes the test write the file instead of
/// checking it.
const WRITE_ENV: &str = "FLOTILLA_WRITE_VECTORS";

/// The fixed inputs: what a real client and daemon draw at random.
const TOKEN_ID: [u8; 8] = [0x5e, 0xc0, 0x4e, 0x7a, 0x11, 0x22, 0x33, 0x44];
const TOKEN_SECRET: [u8; 32] = [0x42; 32];
const CLIENT_NONCE: [u8; 32] = [0x01; 32];
const CLIENT_EPHEMERAL: [u8; 32] = [0x02; 32];
const DAEMON_NONCE: [u8; 32] = [0x03; 32];
const DAEMON_EPHEMERAL: [u8; 32] = [0x04; 32];
/// Part size of the split vector: small, so a short frame gives several.
const PART_BYTES: usize = 40;

struct Vector {
    name: &'static str,
    description: &'static str,
    bytes: Vec<u8>,
}

fn v(name: &'static str, description: &'static str, bytes: impl Into<Vec<u8>>) -> Vector {
    Vector {
        name,
        description,
        bytes: bytes.into(),
    }
}

fn manifest_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/secure-vectors.json")
}

fn vectors() -> Vec<Vector> {
    let token = Token::from_random(TOKEN_ID, TOKEN_SECRET);
    let client = ClientHandshake::new(token.clone(), CLIENT_NONCE, CLIENT_EPHEMERAL);
    let probe = client.probe();
    let (daemon, daemon_proof) = DaemonHandshake::challenge(
        token.id(),
        &token.verifier(),
        CLIENT_NONCE,
        Ephemeral::from_random(CLIENT_EPHEMERAL).public(),
        DAEMON_NONCE,
        Ephemeral::from_random(DAEMON_EPHEMERAL),
    )
    .unwrap();
    let challenge = GateReply::Challenge {
        nonce: DAEMON_NONCE.to_vec().into(),
        public: daemon.public().to_vec().into(),
        proof: daemon_proof.to_vec().into(),
    };
    let (hello, client_keys) = client
        .answer(&DAEMON_NONCE, &daemon.public(), &daemon_proof)
        .unwrap();
    let GateCall::Hello { proof, .. } = &hello else {
        panic!("the answer is a hello")
    };
    let daemon_keys = daemon.finish(proof).expect("the proof checks").unwrap();
    assert_eq!(client_keys.id(), daemon_keys.id());
    let client_end = Channel::new(&client_keys, Role::Worker);
    let daemon_end = Channel::new(&daemon_keys, Role::Daemon);

    let welcome = encode(&GateReply::Welcome { pid: 4242 }).unwrap();
    let ping = encode(&ClientCall::Ping).unwrap();
    let status = encode(&ClientCall::DaemonStatus).unwrap();
    let forbidden = encode(&ClientReply::Error(ApiError {
        kind: ApiErrorKind::Forbidden,
        message: "token `ci` was revoked".into(),
    }))
    .unwrap();
    let sealed_welcome = daemon_end.seal(&welcome).unwrap();
    let sealed_ping = client_end.seal(&ping).unwrap();
    let sealed_status = client_end.seal(&status).unwrap();
    let sealed_forbidden = daemon_end.seal(&forbidden).unwrap();
    // Each end opens what the other sealed.
    assert_eq!(client_end.open(&sealed_welcome).unwrap(), welcome);
    assert_eq!(daemon_end.open(&sealed_ping).unwrap(), ping);
    assert_eq!(daemon_end.open(&sealed_status).unwrap(), status);
    assert_eq!(client_end.open(&sealed_forbidden).unwrap(), forbidden);

    let mut vectors = vec![
        v(
            "input.token-id",
            "The token's public id (drawn at random).",
            TOKEN_ID,
        ),
        v(
            "input.token-secret",
            "The token's secret (drawn at random).",
            TOKEN_SECRET,
        ),
        v(
            "input.client-nonce",
            "The client's handshake nonce.",
            CLIENT_NONCE,
        ),
        v(
            "input.client-ephemeral",
            "The secret half of the client's ephemeral X25519 key.",
            CLIENT_EPHEMERAL,
        ),
        v(
            "input.daemon-nonce",
            "The daemon's handshake nonce.",
            DAEMON_NONCE,
        ),
        v(
            "input.daemon-ephemeral",
            "The secret half of the daemon's ephemeral X25519 key.",
            DAEMON_EPHEMERAL,
        ),
        v(
            "token.text",
            "The token as its holder writes it (UTF-8).",
            token.reveal(),
        ),
        v(
            "token.verifier",
            "What the daemon stores: the public half of the token's static key.",
            token.verifier(),
        ),
        v(
            "frame.probe",
            "Step 1, in clear: the client's probe.",
            encode(&probe).unwrap(),
        ),
        v(
            "frame.challenge",
            "Step 2, in clear: the daemon's challenge with its proof.",
            encode(&challenge).unwrap(),
        ),
        v(
            "frame.hello",
            "Step 3, in clear: the client's hello with its proof.",
            encode(&hello).unwrap(),
        ),
        v(
            "frame.refused",
            "A refusal of the handshake, in clear.",
            encode(&GateReply::Refused {
                reason: "token `gone` was revoked".into(),
            })
            .unwrap(),
        ),
        v(
            "frame.handshake-again",
            "The answer to a sealed frame on a connection without keys, in clear.",
            encode(&GateReply::Handshake).unwrap(),
        ),
        v(
            "session.connection-id",
            "The connection's id both ends derive.",
            client_keys.id(),
        ),
        v(
            "sealed.welcome",
            "Step 4: the daemon's welcome (pid 4242), its frame 1.",
            sealed_welcome,
        ),
        v(
            "sealed.call-ping",
            "The client's frame 1: a ping.",
            sealed_ping,
        ),
        v(
            "sealed.call-status",
            "The client's frame 2: a daemon status call.",
            sealed_status.clone(),
        ),
        v(
            "sealed.reply-forbidden",
            "The daemon's frame 2: a Forbidden refusal.",
            sealed_forbidden,
        ),
    ];
    let pieces = parts::split(&sealed_status, 0, PART_BYTES);
    assert!(pieces.len() > 1);
    let names = [
        "parts.call-status.0",
        "parts.call-status.1",
        "parts.call-status.2",
    ];
    assert_eq!(pieces.len(), names.len(), "the split vector's part count");
    for (name, piece) in names.into_iter().zip(pieces) {
        vectors.push(v(
            name,
            "sealed.call-status split into parts of at most 40 bytes, stream 0.",
            piece,
        ));
    }
    vectors.push(v(
        "parts.ack",
        "The daemon's answer to every part but the last.",
        parts::ACK,
    ));
    vectors
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest's text: one vector per line, so a diff names the vector.
fn manifest(vectors: &[Vector]) -> String {
    let mut out = String::from("{\n");
    out.push_str(
        "  \"about\": \"The TCP client API's handshake and sealed frames with fixed keys and nonces, as the Rust protocol crate computes them. Checked byte for byte by protocol/tests/secure_vectors.rs and by the Python client's tests.\",\n",
    );
    out.push_str(
        "  \"regenerate\": \"FLOTILLA_WRITE_VECTORS=1 cargo test -p flotilla-protocol --test secure_vectors\",\n",
    );
    out.push_str(&format!("  \"protocol_version\": {PROTOCOL_VERSION},\n"));
    out.push_str(&format!("  \"part_bytes\": {PART_BYTES},\n"));
    out.push_str("  \"vectors\": [\n");
    for (i, v) in vectors.iter().enumerate() {
        let comma = if i + 1 < vectors.len() { "," } else { "" };
        out.push_str(&format!(
            "    {{\"name\": \"{}\", \"description\": \"{}\", \"hex\": \"{}\"}}{comma}\n",
            v.name,
            v.description.replace('"', "\\\""),
            hex(&v.bytes)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[test]
fn names_are_unique() {
    let vectors = vectors();
    let mut names: Vec<&str> = vectors.iter().map(|v| v.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "two vectors share a name");
}

#[test]
fn the_handshake_and_sealed_frames_match_the_shared_vectors() {
    let expected = manifest(&vectors());
    let path = manifest_path();
    if std::env::var_os(WRITE_ENV).is_some_and(|v| v == "1") {
        std::fs::write(&path, &expected)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
        return;
    }
    let found = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); make it with {WRITE_ENV}=1 cargo test -p flotilla-protocol --test secure_vectors",
            path.display()
        )
    });
    let changed: Vec<&str> = expected
        .lines()
        .zip(found.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a)
        .collect();
    assert!(
        found == expected,
        "{} differs from what this crate computes ({} lines changed, first: {:?}); after an intended change run {WRITE_ENV}=1 cargo test -p flotilla-protocol --test secure_vectors",
        path.display(),
        changed.len(),
        changed.first()
    );
}
