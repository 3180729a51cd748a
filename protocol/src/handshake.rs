//! The worker–daemon handshake: each side proves it knows the daemon's
//! secret without the secret ever crossing the wire.
//!
//! 1. The worker sends [`WorkerMessage::Probe`] with a fresh random nonce
//!    and a fresh ephemeral X25519 public key.
//! 2. The daemon answers [`DaemonMessage::ProbeOk`] with a fresh nonce and
//!    ephemeral public key of its own and a proof: a keyed BLAKE3 MAC over
//!    the [`Transcript`] (both nonces, both public keys) under the label
//!    [`DAEMON_LABEL`]. The worker checks it and registers with, or runs
//!    work from, nothing that fails the check.
//! 3. The worker sends [`WorkerMessage::Hello`] carrying the daemon's nonce
//!    and its own proof: the same MAC under [`WORKER_LABEL`], over the
//!    transcript and every field of the hello. The daemon checks it against
//!    the probe it answered, and takes each of its nonces once.
//!
//! The MAC key is derived from the secret with [`blake3::derive_key`], so the
//! secret itself is never used as a key anywhere else. Labels keep a daemon's
//! proof from ever passing as a worker's. Both sides then derive the
//! connection's keys from the MAC key, the transcript and the X25519 shared
//! secret (see [`crate::secure`]), and every later frame is sealed.
//!
//! [`WorkerMessage::Probe`]: crate::interchange::WorkerMessage::Probe
//! [`WorkerMessage::Hello`]: crate::interchange::WorkerMessage::Hello
//! [`DaemonMessage::ProbeOk`]: crate::interchange::DaemonMessage::ProbeOk

use crate::interchange::Hello;
use crate::task::Payload;

/// Length of a handshake nonce in bytes.
pub const NONCE_LEN: usize = 32;

/// Length of a proof (a BLAKE3 MAC) in bytes.
pub const PROOF_LEN: usize = 32;

/// A handshake nonce.
pub type Nonce = [u8; NONCE_LEN];

/// A handshake proof.
pub type Proof = [u8; PROOF_LEN];

/// Length of an ephemeral X25519 public key in bytes.
pub const PUBLIC_LEN: usize = 32;

/// An ephemeral X25519 public key, as it travels in a probe and its answer.
pub type PublicKey = [u8; PUBLIC_LEN];

/// What both proofs of one handshake cover, and what the connection's keys
/// are derived from besides the shared secret: changing any of it (an
/// attacker swapping in a public key of its own, say) breaks the proofs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    /// The worker's nonce of the probe.
    pub worker_nonce: Nonce,
    /// The daemon's nonce from its answer.
    pub daemon_nonce: Nonce,
    /// The worker's ephemeral public key of the probe.
    pub worker_public: PublicKey,
    /// The daemon's ephemeral public key from its answer.
    pub daemon_public: PublicKey,
}

impl Transcript {
    /// Feeds the transcript to a MAC or key derivation, in a fixed order.
    pub(crate) fn absorb(&self, hasher: &mut blake3::Hasher) {
        hasher.update(&self.worker_nonce);
        hasher.update(&self.daemon_nonce);
        hasher.update(&self.worker_public);
        hasher.update(&self.daemon_public);
    }
}

/// Context string of the key derivation (BLAKE3's `derive_key`): names the
/// application, the purpose and a version, as BLAKE3 asks.
const KEY_CONTEXT: &str = "flotilla 2026-12 worker-daemon handshake v1";

/// What the daemon's proof is about.
pub const DAEMON_LABEL: &[u8] = b"flotilla handshake: daemon\0";

/// What the worker's proof is about.
pub const WORKER_LABEL: &[u8] = b"flotilla handshake: worker\0";

/// What a TCP API client's proof is about (see [`crate::client_auth`]).
pub const CLIENT_LABEL: &[u8] = b"flotilla handshake: client\0";

/// The MAC key both sides derive from the daemon's secret.
#[derive(Clone)]
pub struct HandshakeKey([u8; 32]);

impl std::fmt::Debug for HandshakeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandshakeKey(..)")
    }
}

impl HandshakeKey {
    /// The key for `secret`.
    pub fn from_secret(secret: &[u8]) -> HandshakeKey {
        HandshakeKey(blake3::derive_key(KEY_CONTEXT, secret))
    }

    /// A key derived under `context` from `parts` fed in order (each
    /// prefixed with its length, so no two part lists give one input):
    /// the client API's key comes from a token's agreement, not a secret.
    pub(crate) fn from_parts(context: &str, parts: &[&[u8]]) -> HandshakeKey {
        let mut derive = blake3::Hasher::new_derive_key(context);
        for part in parts {
            derive.update(&(part.len() as u64).to_le_bytes());
            derive.update(part);
        }
        HandshakeKey(*derive.finalize().as_bytes())
    }

    /// A TCP API client's proof for the transcript.
    pub fn client_proof(&self, transcript: &Transcript) -> Proof {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(CLIENT_LABEL);
        transcript.absorb(&mut mac);
        *mac.finalize().as_bytes()
    }

    /// True if `proof` is a client's proof for the transcript (compared in
    /// constant time).
    pub fn check_client(&self, transcript: &Transcript, proof: &[u8]) -> bool {
        same_proof(&self.client_proof(transcript), proof)
    }

    /// The key's bytes, for deriving the connection's keys.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The daemon's proof for the transcript.
    pub fn daemon_proof(&self, transcript: &Transcript) -> Proof {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(DAEMON_LABEL);
        transcript.absorb(&mut mac);
        *mac.finalize().as_bytes()
    }

    /// The worker's proof for the transcript and `hello` (every field but
    /// its `proof`, which it is).
    pub fn worker_proof(&self, transcript: &Transcript, hello: &Hello) -> Proof {
        let mut mac = blake3::Hasher::new_keyed(&self.0);
        mac.update(WORKER_LABEL);
        transcript.absorb(&mut mac);
        let unsigned = Hello {
            proof: Payload::new(),
            ..hello.clone()
        };
        // The encoding is deterministic, and the hasher cannot fail to
        // take bytes; a hello that cannot be encoded gets a proof no one
        // can match (the label alone differs from any real input).
        if rmp_serde::encode::write(&mut mac, &unsigned).is_err() {
            return [0; PROOF_LEN];
        }
        *mac.finalize().as_bytes()
    }

    /// True if `proof` is the daemon's proof for the transcript (compared
    /// in constant time).
    pub fn check_daemon(&self, transcript: &Transcript, proof: &[u8]) -> bool {
        same_proof(&self.daemon_proof(transcript), proof)
    }

    /// True if `hello.proof` is the worker's proof for the transcript and
    /// the hello (compared in constant time).
    pub fn check_worker(&self, transcript: &Transcript, hello: &Hello) -> bool {
        same_proof(&self.worker_proof(transcript, hello), &hello.proof)
    }
}

/// Compares a proof with what was received, in constant time (BLAKE3's
/// `Hash` equality is constant-time); a wrong length is simply wrong.
fn same_proof(expected: &Proof, received: &[u8]) -> bool {
    let Ok(received) = <[u8; PROOF_LEN]>::try_from(received) else {
        return false;
    };
    blake3::Hash::from_bytes(*expected) == blake3::Hash::from_bytes(received)
}

/// `bytes` as a nonce, if it has the right length.
pub fn nonce(bytes: &[u8]) -> Option<Nonce> {
    <Nonce>::try_from(bytes).ok()
}

/// `bytes` as a public key, if it has the right length.
pub fn public_key(bytes: &[u8]) -> Option<PublicKey> {
    <PublicKey>::try_from(bytes).ok()
}

/// A stream of unpredictable nonces from one random seed: BLAKE3 keyed by
/// the seed over a counter, so its owner stays deterministic (a test seeds
/// it with a constant) and does no I/O of its own; the process that owns
/// it seeds it from the operating system's randomness.
#[derive(Clone)]
pub struct NonceSource {
    key: [u8; 32],
    counter: u64,
}

impl std::fmt::Debug for NonceSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSource")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl NonceSource {
    /// A source for `purpose` from `seed`: sources of one seed with
    /// different purposes never give the same nonce.
    pub fn new(seed: &[u8; 32], purpose: &str) -> NonceSource {
        let mut derive = blake3::Hasher::new_keyed(seed);
        derive.update(b"flotilla nonce source\0");
        derive.update(purpose.as_bytes());
        NonceSource {
            key: *derive.finalize().as_bytes(),
            counter: 0,
        }
    }

    /// The next nonce.
    pub fn next_nonce(&mut self) -> Nonce {
        self.counter += 1;
        *blake3::keyed_hash(&self.key, &self.counter.to_le_bytes()).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            worker_id: "w1".into(),
            block_id: Some(3),
            host: "node7".into(),
            node: None,
            rank: None,
            pid: 42,
            slots: 2,
            servables: vec!["echo".into()],
            challenge: Payload::from(vec![2u8; NONCE_LEN]),
            proof: Payload::new(),
            max_frame_bytes: 1 << 20,
            ends_at_unix_s: None,
            running: vec![],
            slot_resources: vec![],
        }
    }

    fn transcript() -> Transcript {
        Transcript {
            worker_nonce: [1u8; NONCE_LEN],
            daemon_nonce: [2u8; NONCE_LEN],
            worker_public: [3u8; PUBLIC_LEN],
            daemon_public: [4u8; PUBLIC_LEN],
        }
    }

    #[test]
    fn each_side_checks_the_others_proof() {
        let key = HandshakeKey::from_secret(b"secret");
        let t = transcript();
        let proof = key.daemon_proof(&t);
        assert!(key.check_daemon(&t, &proof));
        // Another secret, swapped nonces, a truncated proof: all refused.
        assert!(!HandshakeKey::from_secret(b"other").check_daemon(&t, &proof));
        let swapped = Transcript {
            worker_nonce: t.daemon_nonce,
            daemon_nonce: t.worker_nonce,
            ..t
        };
        assert!(!key.check_daemon(&swapped, &proof));
        assert!(!key.check_daemon(&t, &proof[..31]));
        // The proof covers both public keys: one swapped in by somebody in
        // the middle breaks it.
        for changed in [
            Transcript {
                worker_public: [9; PUBLIC_LEN],
                ..t
            },
            Transcript {
                daemon_public: [9; PUBLIC_LEN],
                ..t
            },
        ] {
            assert!(!key.check_daemon(&changed, &proof));
        }

        let mut h = hello();
        h.proof = Payload::copy_from_slice(&key.worker_proof(&t, &h));
        assert!(key.check_worker(&t, &h));
        // A daemon's proof never passes as a worker's.
        let mut forged = h.clone();
        forged.proof = Payload::copy_from_slice(&proof);
        assert!(!key.check_worker(&t, &forged));
        // The proof covers the hello's fields.
        let mut changed = h.clone();
        changed.slots = 64;
        assert!(!key.check_worker(&t, &changed));
    }

    #[test]
    fn nonce_sources_differ_by_seed_purpose_and_draw() {
        let mut a = NonceSource::new(&[7; 32], "a");
        let mut b = NonceSource::new(&[7; 32], "b");
        let mut c = NonceSource::new(&[8; 32], "a");
        let first = a.next_nonce();
        assert_ne!(first, a.next_nonce());
        assert_ne!(first, b.next_nonce());
        assert_ne!(first, c.next_nonce());
        assert_eq!(first, NonceSource::new(&[7; 32], "a").next_nonce());
        assert!(!format!("{a:?}").contains("key"));
    }
}
