//! A secured connection as either end reads it: a sealed frame opened by
//! the daemon (a request) and by the client or worker (a reply), the client
//! API's handshake messages before a connection has keys, and the replay
//! window behind every open.
//!
//! The connection is the one of `protocol/testdata/secure-vectors.json`:
//! the same token, nonces and ephemeral keys, so the seeds taken from those
//! vectors (`fuzz/make_corpus.py`) open, and the fuzzer reaches past the tag
//! into what an authentic frame carries.
//!
//! Properties:
//! - opening a copy and opening in place agree; a frame that opens has the
//!   sealed length less the overhead, and does not open a second time (a
//!   replay); one refused before decrypting is left as it came, and one
//!   whose tag is wrong keeps its header and tag with its ciphertext zeroed;
//! - an opened frame decodes as the end's peer would send it, or is refused;
//!   what decodes encodes again to the same message;
//! - a probe, hello or challenge never panics a handshake step, and only
//!   the real proofs yield keys (those of the vectors' connection);
//! - the bytes read as a stream of counters are taken or refused exactly as
//!   a plain model of a replay window says.

#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use flotilla_fuzz::assert_round_trip;
use flotilla_protocol::client::{ClientCall, ClientReply};
use flotilla_protocol::client_auth::{ClientHandshake, DaemonHandshake, GateCall, GateReply};
use flotilla_protocol::handshake;
use flotilla_protocol::parts::PREAUTH_FRAME_BYTES;
use flotilla_protocol::secure::{
    Channel, Ephemeral, HEADER_BYTES, OVERHEAD, OpenError, REPLAY_WINDOW, ReplayWindow, Role,
    SessionKeys, TAG_BYTES,
};
use flotilla_protocol::token::Token;
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, decode};
use libfuzzer_sys::fuzz_target;

/// The fixed inputs of `protocol/tests/secure_vectors.rs`.
const TOKEN_ID: [u8; 8] = [0x5e, 0xc0, 0x4e, 0x7a, 0x11, 0x22, 0x33, 0x44];
const TOKEN_SECRET: [u8; 32] = [0x42; 32];
const CLIENT_NONCE: [u8; 32] = [0x01; 32];
const CLIENT_EPHEMERAL: [u8; 32] = [0x02; 32];
const DAEMON_NONCE: [u8; 32] = [0x03; 32];
const DAEMON_EPHEMERAL: [u8; 32] = [0x04; 32];

/// Both sides of the vectors' handshake, and the keys it yields.
struct Connection {
    token: Token,
    client: ClientHandshake,
    daemon: DaemonHandshake,
    keys: SessionKeys,
}

fn connection() -> &'static Connection {
    static CONNECTION: OnceLock<Connection> = OnceLock::new();
    CONNECTION.get_or_init(|| {
        let token = Token::from_random(TOKEN_ID, TOKEN_SECRET);
        let client = ClientHandshake::new(token.clone(), CLIENT_NONCE, CLIENT_EPHEMERAL);
        let (daemon, proof) = DaemonHandshake::challenge(
            token.id(),
            &token.verifier(),
            CLIENT_NONCE,
            Ephemeral::from_random(CLIENT_EPHEMERAL).public(),
            DAEMON_NONCE,
            Ephemeral::from_random(DAEMON_EPHEMERAL),
        )
        .expect("the vectors' keys are not degenerate");
        let (_, keys) = client
            .answer(&DAEMON_NONCE, &daemon.public(), &proof)
            .expect("the vectors' handshake succeeds");
        Connection {
            token,
            client,
            daemon,
            keys,
        }
    })
}

/// Opens `data` as the `role` end does, copying and in place, on fresh
/// channels; the frame, if it opens.
fn open_both_ways(keys: &SessionKeys, role: Role, data: &[u8]) -> Option<Vec<u8>> {
    let copying = Channel::new(keys, role);
    let in_place = Channel::new(keys, role);
    let opened = copying.open(data);
    let mut buffer = data.to_vec();
    let opened_in_place = in_place.open_in_place(&mut buffer).map(<[u8]>::to_vec);
    assert_eq!(opened, opened_in_place, "copying and in place disagree");
    match opened {
        Ok(frame) => {
            assert_eq!(frame.len() + OVERHEAD, data.len());
            assert!(
                matches!(copying.open(data), Err(OpenError::Replayed(_))),
                "a frame opened twice"
            );
            Some(frame)
        }
        Err(OpenError::Forged) => {
            // The tag was wrong: the header and tag are as they came, and
            // what was decrypted is zeroed, so no unauthenticated clear
            // text is left behind.
            let body = HEADER_BYTES..data.len() - TAG_BYTES;
            assert_eq!(buffer[..body.start], data[..body.start], "header changed");
            assert_eq!(buffer[body.end..], data[body.end..], "tag changed");
            assert!(
                buffer[body].iter().all(|b| *b == 0),
                "clear text left behind"
            );
            None
        }
        Err(_) => {
            assert_eq!(
                buffer, data,
                "a frame refused before decrypting was changed"
            );
            None
        }
    }
}

/// The handshake steps on whatever the bytes decode to.
fn handshake_messages(c: &Connection, data: &[u8]) {
    if let Ok(call) = decode::<GateCall>(data, PREAUTH_FRAME_BYTES) {
        assert_round_trip(&call);
        match &call {
            GateCall::Probe {
                token,
                nonce,
                public,
            } => {
                if let (Some(nonce), Some(public)) =
                    (handshake::nonce(nonce), handshake::public_key(public))
                {
                    // A degenerate key is refused, anything else challenged.
                    let _ = DaemonHandshake::challenge(
                        token,
                        &c.token.verifier(),
                        nonce,
                        public,
                        DAEMON_NONCE,
                        Ephemeral::from_random(DAEMON_EPHEMERAL),
                    );
                }
            }
            GateCall::Hello { proof, .. } => {
                if let Some(keys) = c.daemon.finish(proof) {
                    let keys = keys.expect("the vectors' keys are not degenerate");
                    assert_eq!(keys, c.keys, "a proof yields another connection's keys");
                }
            }
        }
    }
    if let Ok(reply) = decode::<GateReply>(data, PREAUTH_FRAME_BYTES) {
        assert_round_trip(&reply);
        if let GateReply::Challenge {
            nonce,
            public,
            proof,
        } = &reply
            && let Ok((_, keys)) = c.client.answer(nonce, public, proof)
        {
            assert_eq!(keys, c.keys, "a challenge yields another connection's keys");
        }
    }
}

/// The bytes as counters (each pair a signed step from the latest, a zero
/// pair a jump past the window), taken by a window and by a model of one.
fn replay_window(data: &[u8]) {
    let mut window = ReplayWindow::default();
    let mut latest = 0u64;
    let mut taken = BTreeSet::new();
    for pair in data.chunks_exact(2) {
        let step = i16::from_le_bytes([pair[0], pair[1]]);
        let counter = if step == 0 {
            latest + 3 * REPLAY_WINDOW
        } else {
            latest.saturating_add_signed(i64::from(step))
        };
        let expected = if counter > latest {
            Ok(())
        } else if counter == 0 || counter + REPLAY_WINDOW <= latest {
            Err(OpenError::TooOld { counter, latest })
        } else if taken.contains(&counter) {
            Err(OpenError::Replayed(counter))
        } else {
            Ok(())
        };
        assert_eq!(window.take(counter), expected, "counter {counter}");
        if expected.is_ok() {
            taken.insert(counter);
            latest = latest.max(counter);
            taken = taken.split_off(&latest.saturating_sub(REPLAY_WINDOW));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let c = connection();
    // A request as the daemon opens it, a reply as the client does.
    if let Some(frame) = open_both_ways(&c.keys, Role::Daemon, data)
        && let Ok(call) = decode::<ClientCall>(&frame, DEFAULT_MAX_FRAME_BYTES)
    {
        assert_round_trip(&call);
    }
    if let Some(frame) = open_both_ways(&c.keys, Role::Worker, data) {
        if let Ok(reply) = decode::<ClientReply>(&frame, DEFAULT_MAX_FRAME_BYTES) {
            assert_round_trip(&reply);
        }
        if let Ok(reply) = decode::<GateReply>(&frame, PREAUTH_FRAME_BYTES) {
            assert_round_trip(&reply);
        }
    }
    handshake_messages(c, data);
    replay_window(data);
});
