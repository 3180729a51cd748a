//! The handshake of the daemon's TCP client API: a client proves it holds a
//! token ([`crate::token`]) without sending it, the daemon proves it holds
//! the token's record, and both derive the connection's keys; every frame
//! after it is sealed with [`crate::secure`], exactly as on the interchange.
//!
//! 1. The client sends [`GateCall::Probe`]: the token's public id, a fresh
//!    nonce and a fresh ephemeral X25519 public key `Ec`.
//! 2. The daemon finds the token's record (refusing an unknown, revoked or
//!    expired one by name), draws a nonce and an ephemeral key `ed`, and
//!    computes `ss = X25519(ed, V)` with the record's verifier `V` (the
//!    public half of the token's static key, [`crate::token::Token::verifier`]).
//!    The MAC key is `K = BLAKE3-derive_key(context, id ‖ V ‖ ss)`. It
//!    answers [`GateReply::Challenge`] with its nonce, `Ed` and the daemon
//!    proof under `K` over the transcript (both nonces, both public keys).
//! 3. The client computes the same `ss = X25519(v, Ed)` with the token's
//!    static secret `v`, so the same `K`; checks the daemon's proof (only
//!    a holder of the record can make it) and sends [`GateCall::Hello`] with
//!    the daemon's nonce and its own proof under `K` (label
//!    [`crate::handshake::CLIENT_LABEL`]).
//! 4. The daemon checks it (each nonce once, within a deadline), and both
//!    derive the connection's keys with [`crate::secure::session_keys`]
//!    from `K`, the transcript and the ephemeral agreement `X25519(ed, Ec)`;
//!    the daemon answers [`GateReply::Welcome`] sealed, and everything after
//!    is sealed.
//!
//! Only the holder of `v` (the token) can compute `ss` for a fresh `Ed`, so
//! a stolen token file (verifiers) lets nobody pass for a client; the
//! ephemeral agreement gives forward secrecy.

use serde::{Deserialize, Serialize};

use crate::Payload;
use crate::handshake::{self, HandshakeKey, Nonce, Proof, PublicKey, Transcript};
use crate::secure::{self, Ephemeral, KeyError, SessionKeys};
use crate::token::Token;

/// Context of the client API's MAC key (BLAKE3's `derive_key`).
const CLIENT_KEY_CONTEXT: &str = "flotilla 2026-12 client api handshake v1";

/// What a client says on a TCP connection before it has keys.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum GateCall {
    /// Step 1: which token, a nonce and an ephemeral public key.
    Probe {
        /// The token's public id.
        token: String,
        /// The client's nonce.
        nonce: Payload,
        /// The client's ephemeral X25519 public key.
        public: Payload,
    },
    /// Step 3: the daemon's nonce back, and the client's proof.
    Hello {
        /// The nonce of the daemon's challenge.
        challenge: Payload,
        /// The client's proof.
        proof: Payload,
    },
}

/// What the daemon answers a [`GateCall`].
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum GateReply {
    /// Step 2.
    Challenge {
        /// The daemon's nonce.
        nonce: Payload,
        /// The daemon's ephemeral X25519 public key.
        public: Payload,
        /// The daemon's proof.
        proof: Payload,
    },
    /// Step 4, sealed: the connection is open for calls.
    Welcome {
        /// The daemon's process id.
        pid: u32,
    },
    /// The handshake failed; the reason names the token and the cause. The
    /// connection closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// A sealed frame on a connection that has no keys (the daemon
    /// restarted, or nng redialled): do the handshake again.
    Handshake,
}

/// Why a client cannot go on with the handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    /// The daemon's nonce or key has the wrong length.
    #[error("the daemon's challenge is malformed")]
    Malformed,
    /// A degenerate key.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The daemon could not prove it holds this token's record: another
    /// daemon, or somebody in the middle.
    #[error(
        "the daemon at this address cannot prove it knows this token: another daemon, or somebody in the middle"
    )]
    WrongDaemon,
}

/// The MAC key of one handshake.
fn client_key(token_id: &str, verifier: &PublicKey, agreement: &[u8; 32]) -> HandshakeKey {
    HandshakeKey::from_parts(
        CLIENT_KEY_CONTEXT,
        &[token_id.as_bytes(), verifier, agreement],
    )
}

/// The client's side of one handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    token: Token,
    nonce: Nonce,
    ephemeral: Ephemeral,
}

impl ClientHandshake {
    /// A handshake for `token`, with a fresh `nonce` and `ephemeral` key
    /// seed (unpredictable bytes the caller drew).
    pub fn new(token: Token, nonce: Nonce, ephemeral: [u8; 32]) -> ClientHandshake {
        ClientHandshake {
            token,
            nonce,
            ephemeral: Ephemeral::from_random(ephemeral),
        }
    }

    /// Step 1.
    pub fn probe(&self) -> GateCall {
        GateCall::Probe {
            token: self.token.id().to_owned(),
            nonce: Payload::copy_from_slice(&self.nonce),
            public: Payload::copy_from_slice(&self.ephemeral.public()),
        }
    }

    /// Step 3: checks the daemon's challenge; the hello to send and the
    /// connection's keys.
    pub fn answer(
        &self,
        nonce: &[u8],
        public: &[u8],
        proof: &[u8],
    ) -> Result<(GateCall, SessionKeys), ClientAuthError> {
        let daemon_nonce = handshake::nonce(nonce).ok_or(ClientAuthError::Malformed)?;
        let daemon_public = handshake::public_key(public).ok_or(ClientAuthError::Malformed)?;
        let transcript = Transcript {
            worker_nonce: self.nonce,
            daemon_nonce,
            worker_public: self.ephemeral.public(),
            daemon_public,
        };
        let agreement = self.token.static_key().agree(&daemon_public)?;
        let key = client_key(self.token.id(), &self.token.verifier(), &agreement);
        if !key.check_daemon(&transcript, proof) {
            return Err(ClientAuthError::WrongDaemon);
        }
        // The client API keeps the default cipher: clients in other
        // languages implement it.
        let keys = secure::session_keys(
            &key,
            &transcript,
            &self.ephemeral,
            &daemon_public,
            secure::Cipher::default(),
        )?;
        let hello = GateCall::Hello {
            challenge: Payload::copy_from_slice(&daemon_nonce),
            proof: Payload::copy_from_slice(&key.client_proof(&transcript)),
        };
        Ok((hello, keys))
    }
}

/// The daemon's side of one handshake, between its challenge and the
/// client's hello.
#[derive(Debug)]
pub struct DaemonHandshake {
    key: HandshakeKey,
    transcript: Transcript,
    ephemeral: Ephemeral,
}

impl DaemonHandshake {
    /// Step 2 for a probe of a token whose verifier is `verifier`: the
    /// state to keep and the challenge's proof.
    pub fn challenge(
        token_id: &str,
        verifier: &PublicKey,
        client_nonce: Nonce,
        client_public: PublicKey,
        daemon_nonce: Nonce,
        ephemeral: Ephemeral,
    ) -> Result<(DaemonHandshake, Proof), KeyError> {
        let agreement = ephemeral.agree(verifier)?;
        let key = client_key(token_id, verifier, &agreement);
        let transcript = Transcript {
            worker_nonce: client_nonce,
            daemon_nonce,
            worker_public: client_public,
            daemon_public: ephemeral.public(),
        };
        let proof = key.daemon_proof(&transcript);
        Ok((
            DaemonHandshake {
                key,
                transcript,
                ephemeral,
            },
            proof,
        ))
    }

    /// The daemon's public key of this handshake.
    pub fn public(&self) -> PublicKey {
        self.ephemeral.public()
    }

    /// Step 4: the connection's keys if `proof` is the client's.
    pub fn finish(&self, proof: &[u8]) -> Option<Result<SessionKeys, KeyError>> {
        if !self.key.check_client(&self.transcript, proof) {
            return None;
        }
        Some(secure::session_keys(
            &self.key,
            &self.transcript,
            &self.ephemeral,
            &self.transcript.worker_public,
            secure::Cipher::default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::{Channel, Role};

    fn token(seed: u8) -> Token {
        Token::from_random([seed; 8], [seed; 32])
    }

    /// Runs a handshake between a client holding `held` and a daemon
    /// holding the record of `stored`.
    fn run(held: &Token, stored: &Token) -> Result<(Channel, Channel), String> {
        let client = ClientHandshake::new(held.clone(), [1; 32], [2; 32]);
        let GateCall::Probe {
            token,
            nonce,
            public,
        } = client.probe()
        else {
            unreachable!()
        };
        let (daemon, proof) = DaemonHandshake::challenge(
            &token,
            &stored.verifier(),
            handshake::nonce(&nonce).unwrap(),
            handshake::public_key(&public).unwrap(),
            [3; 32],
            Ephemeral::from_random([4; 32]),
        )
        .unwrap();
        let (hello, client_keys) = client
            .answer(&[3; 32], &daemon.public(), &proof)
            .map_err(|e| e.to_string())?;
        let GateCall::Hello { proof, .. } = hello else {
            unreachable!()
        };
        let daemon_keys = daemon.finish(&proof).ok_or("wrong client proof")?.unwrap();
        Ok((
            Channel::new(&client_keys, Role::Worker),
            Channel::new(&daemon_keys, Role::Daemon),
        ))
    }

    #[test]
    fn a_token_holder_and_the_daemon_agree_on_keys() {
        let t = token(5);
        let (client, daemon) = run(&t, &t).unwrap();
        assert_eq!(
            daemon.open(&client.seal(b"call").unwrap()).unwrap(),
            b"call"
        );
        assert_eq!(
            client.open(&daemon.seal(b"reply").unwrap()).unwrap(),
            b"reply"
        );
    }

    #[test]
    fn another_token_or_another_daemon_is_found_out() {
        // The daemon holds another token's record under this id: the
        // client finds the daemon's proof wrong.
        let e = run(&token(5), &token(6)).unwrap_err();
        assert!(e.contains("cannot prove it knows this token"), "{e}");
    }

    #[test]
    fn a_stolen_verifier_does_not_make_a_client() {
        // Somebody with the token file has the verifier, not the token:
        // without the static secret they cannot compute the agreement.
        let t = token(5);
        let client = ClientHandshake::new(t.clone(), [1; 32], [2; 32]);
        let (daemon, _) = DaemonHandshake::challenge(
            t.id(),
            &t.verifier(),
            [1; 32],
            Ephemeral::from_random([2; 32]).public(),
            [3; 32],
            Ephemeral::from_random([4; 32]),
        )
        .unwrap();
        // The best they can do is key with the verifier itself.
        let guess = client_key(t.id(), &t.verifier(), &t.verifier());
        let transcript = Transcript {
            worker_nonce: [1; 32],
            daemon_nonce: [3; 32],
            worker_public: Ephemeral::from_random([2; 32]).public(),
            daemon_public: daemon.public(),
        };
        assert!(daemon.finish(&guess.client_proof(&transcript)).is_none());
        assert!(daemon.finish(&[0; 32]).is_none());
        drop(client);
    }
}
