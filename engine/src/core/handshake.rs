//! The daemon's half of the worker handshake (see
//! [`flotilla_protocol::handshake`]): answering probes with a proof, a
//! fresh nonce and a fresh ephemeral key, and checking each hello's proof
//! against a nonce it issued; a hello that passes yields the connection's
//! keys (see [`flotilla_protocol::secure`]).
//!
//! Outstanding nonces are single-use, expire after [`CHALLENGE_TTL_US`] and
//! number at most [`MAX_OUTSTANDING`], so a peer that probes without ever
//! saying hello costs a bounded amount of memory. Time comes from the
//! core's clock, and nonces and ephemeral keys from [`NonceSource`]s seeded
//! by the daemon at start, so the table is deterministic under test. The
//! ephemeral key's secret half lives only in its challenge and is dropped
//! (zeroed) with it.

use std::collections::{HashMap, VecDeque};

use flotilla_protocol::handshake::{
    self, HandshakeKey, Nonce, NonceSource, Proof, PublicKey, Transcript,
};
use flotilla_protocol::interchange::Hello;
use flotilla_protocol::secure::{self, Cipher, Ephemeral, SessionKeys};

/// How long a probe's nonce stays good for its hello (µs).
pub(super) const CHALLENGE_TTL_US: u64 = 30_000_000;

/// Most nonces issued and not yet used or expired.
pub(super) const MAX_OUTSTANDING: usize = 65_536;

/// Why a probe or a hello is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum HandshakeError {
    /// The probe's nonce has the wrong length.
    #[error("the probe's nonce is {0} bytes, not {len}", len = handshake::NONCE_LEN)]
    BadNonce(usize),
    /// The probe's public key has the wrong length (a worker of an older
    /// release sends none).
    #[error(
        "the probe's public key is {0} bytes, not {len}",
        len = handshake::PUBLIC_LEN
    )]
    BadPublic(usize),
    /// The probe's public key yields no keys.
    #[error("{0}")]
    Keys(#[from] secure::KeyError),
    /// Too many probes are waiting for their hello.
    #[error(
        "too many workers are registering at once ({0} challenges outstanding); try again shortly"
    )]
    TooMany(usize),
    /// The hello's nonce was never issued, or was already used.
    #[error(
        "the hello answers no outstanding challenge (never issued, or already used: a replayed hello?); probe again"
    )]
    Unknown,
    /// The hello's nonce is too old.
    #[error(
        "the hello's challenge expired ({age_s} s old, good for {ttl_s} s); probe again",
        ttl_s = CHALLENGE_TTL_US / 1_000_000
    )]
    Expired {
        /// Its age in seconds.
        age_s: u64,
    },
    /// The hello's proof does not match: another daemon's secret.
    #[error("wrong proof")]
    WrongProof,
}

/// One nonce issued to a probe.
#[derive(Debug)]
struct Challenge {
    worker_nonce: Nonce,
    worker_public: PublicKey,
    /// The daemon's ephemeral key for this handshake.
    ephemeral: Ephemeral,
    /// The cipher the answer named.
    cipher: Cipher,
    issued_us: u64,
}

/// The daemon's answer to a probe.
#[derive(Debug)]
pub(super) struct Answer {
    /// A fresh nonce, for the worker's hello.
    pub nonce: Nonce,
    /// The daemon's fresh ephemeral public key.
    pub public: PublicKey,
    /// The daemon's proof over the transcript.
    pub proof: Proof,
    /// The cipher of the connection's sealed frames.
    pub cipher: Cipher,
}

/// Outstanding challenges, and what makes new ones.
#[derive(Debug)]
pub(super) struct Handshakes {
    key: HandshakeKey,
    nonces: NonceSource,
    /// Where the ephemeral keys' secret halves come from.
    keys: NonceSource,
    outstanding: HashMap<Nonce, Challenge>,
    /// The ciphers this machine seals fast, best first.
    ciphers: Vec<Cipher>,
    /// Issue order, for expiry; entries already used are skipped.
    order: VecDeque<(u64, Nonce)>,
    max_outstanding: usize,
}

impl Handshakes {
    /// A table for the daemon's `secret`, its nonces drawn from `seed`,
    /// on a machine that seals fast with `ciphers` (best first).
    pub(super) fn new(secret: &[u8], seed: &[u8; 32], ciphers: Vec<Cipher>) -> Handshakes {
        Handshakes {
            key: HandshakeKey::from_secret(secret),
            nonces: NonceSource::new(seed, "daemon challenges"),
            keys: NonceSource::new(seed, "daemon ephemeral keys"),
            outstanding: HashMap::new(),
            ciphers,
            order: VecDeque::new(),
            max_outstanding: MAX_OUTSTANDING,
        }
    }

    /// Answers a probe carrying `worker_nonce`, `worker_public` and the
    /// ciphers the worker `offered`: a fresh nonce and ephemeral public key
    /// of the daemon's, the proof over the transcript, and the cipher
    /// ([`Cipher::agree`]).
    pub(super) fn probe(
        &mut self,
        worker_nonce: &[u8],
        worker_public: &[u8],
        offered: &[Cipher],
        now: u64,
    ) -> Result<Answer, HandshakeError> {
        let worker_nonce =
            handshake::nonce(worker_nonce).ok_or(HandshakeError::BadNonce(worker_nonce.len()))?;
        let worker_public = handshake::public_key(worker_public)
            .ok_or(HandshakeError::BadPublic(worker_public.len()))?;
        self.expire(now);
        if self.outstanding.len() >= self.max_outstanding {
            return Err(HandshakeError::TooMany(self.outstanding.len()));
        }
        let daemon_nonce = self.nonces.next_nonce();
        let ephemeral = Ephemeral::from_random(self.keys.next_nonce());
        let transcript = Transcript {
            worker_nonce,
            daemon_nonce,
            worker_public,
            daemon_public: ephemeral.public(),
        };
        let proof = self.key.daemon_proof(&transcript);
        let cipher = Cipher::agree(offered, &self.ciphers);
        self.outstanding.insert(
            daemon_nonce,
            Challenge {
                worker_nonce,
                worker_public,
                ephemeral,
                cipher,
                issued_us: now,
            },
        );
        self.order.push_back((now, daemon_nonce));
        Ok(Answer {
            nonce: daemon_nonce,
            public: transcript.daemon_public,
            proof,
            cipher,
        })
    }

    /// Checks `hello`'s proof against the challenge it names, which is used
    /// up whatever the outcome; the connection's keys if it passes.
    pub(super) fn redeem(
        &mut self,
        hello: &Hello,
        now: u64,
    ) -> Result<SessionKeys, HandshakeError> {
        let challenge = handshake::nonce(&hello.challenge)
            .and_then(|n| self.outstanding.remove(&n).map(|c| (n, c)));
        let Some((daemon_nonce, challenge)) = challenge else {
            return Err(HandshakeError::Unknown);
        };
        let age = now.saturating_sub(challenge.issued_us);
        if age > CHALLENGE_TTL_US {
            return Err(HandshakeError::Expired {
                age_s: age / 1_000_000,
            });
        }
        let transcript = Transcript {
            worker_nonce: challenge.worker_nonce,
            daemon_nonce,
            worker_public: challenge.worker_public,
            daemon_public: challenge.ephemeral.public(),
        };
        if !self.key.check_worker(&transcript, hello) {
            return Err(HandshakeError::WrongProof);
        }
        Ok(secure::session_keys(
            &self.key,
            &transcript,
            &challenge.ephemeral,
            &challenge.worker_public,
            challenge.cipher,
        )?)
    }

    /// Forgets challenges past their time (and order entries already used).
    fn expire(&mut self, now: u64) {
        while let Some(&(issued, nonce)) = self.order.front() {
            let used = !self.outstanding.contains_key(&nonce);
            if !used && now.saturating_sub(issued) <= CHALLENGE_TTL_US {
                break;
            }
            self.order.pop_front();
            if !used {
                self.outstanding.remove(&nonce);
            }
        }
        // Used entries deep in the queue are dropped once they reach the
        // front; keep the queue from outgrowing the table by much.
        if self.order.len() > 2 * self.max_outstanding.max(1) {
            let outstanding = &self.outstanding;
            self.order.retain(|(_, n)| outstanding.contains_key(n));
        }
    }

    /// Challenges outstanding now (for tests and status).
    #[cfg(test)]
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The MAC key, for tests that play the worker.
    #[cfg(test)]
    pub(super) fn key(&self) -> &HandshakeKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::Payload;

    /// Both ciphers, AES-256-GCM first: a machine with AES instructions.
    fn both() -> Vec<Cipher> {
        vec![Cipher::Aes256Gcm, Cipher::Chacha20Poly1305]
    }

    fn hello() -> Hello {
        Hello {
            worker_id: "w".into(),
            block_id: None,
            host: "h".into(),
            node: None,
            rank: None,
            pid: 1,
            slots: 1,
            servables: vec![],
            challenge: Payload::new(),
            proof: Payload::new(),
            max_frame_bytes: 1 << 20,
            ends_at_unix_s: None,
            running: vec![],
            slot_resources: vec![],
        }
    }

    /// The worker's ephemeral key for a nonce (deterministic, for tests).
    fn worker_key(worker_nonce: Nonce) -> Ephemeral {
        Ephemeral::from_random(worker_nonce)
    }

    /// Plays the worker: checks the daemon's proof, signs a hello; the
    /// worker's transcript too.
    fn answer_with(t: &mut Handshakes, worker_nonce: Nonce, now: u64) -> (Hello, Transcript) {
        let mine = worker_key(worker_nonce);
        let answer = t
            .probe(&worker_nonce, &mine.public(), &both(), now)
            .unwrap();
        let dn = answer.nonce;
        let transcript = Transcript {
            worker_nonce,
            daemon_nonce: dn,
            worker_public: mine.public(),
            daemon_public: answer.public,
        };
        assert!(t.key().check_daemon(&transcript, &answer.proof));
        let mut h = hello();
        h.challenge = Payload::copy_from_slice(&dn);
        h.proof = Payload::copy_from_slice(&t.key().worker_proof(&transcript, &h));
        (h, transcript)
    }

    fn answer(t: &mut Handshakes, worker_nonce: Nonce, now: u64) -> Hello {
        answer_with(t, worker_nonce, now).0
    }

    #[test]
    fn a_signed_hello_is_taken_once_and_both_ends_get_the_same_keys() {
        use flotilla_protocol::secure::{Channel, Role};
        let mut t = Handshakes::new(b"secret", &[1; 32], both());
        let (h, transcript) = answer_with(&mut t, [5; 32], 100);
        let daemon_keys = t.redeem(&h, 200).unwrap();
        assert_eq!(
            t.redeem(&h, 300).unwrap_err(),
            HandshakeError::Unknown,
            "replay"
        );
        assert_eq!(t.outstanding(), 0);
        let worker_keys = secure::session_keys(
            t.key(),
            &transcript,
            &worker_key([5; 32]),
            &transcript.daemon_public,
            Cipher::Aes256Gcm,
        )
        .unwrap();
        let worker = Channel::new(&worker_keys, Role::Worker);
        let daemon = Channel::new(&daemon_keys, Role::Daemon);
        assert_eq!(daemon.open(&worker.seal(b"hi").unwrap()).unwrap(), b"hi");
    }

    #[test]
    fn wrong_proofs_nonces_and_late_hellos_are_refused() {
        let mut t = Handshakes::new(b"secret", &[1; 32], both());
        // Signed with another secret.
        let (mut h, transcript) = answer_with(&mut t, [5; 32], 0);
        let other = HandshakeKey::from_secret(b"other");
        h.proof = Payload::copy_from_slice(&other.worker_proof(&transcript, &h));
        assert_eq!(t.redeem(&h, 1).unwrap_err(), HandshakeError::WrongProof);
        // A nonce never issued.
        let mut h = answer(&mut t, [6; 32], 0);
        h.challenge = Payload::from(vec![9u8; 32]);
        assert_eq!(t.redeem(&h, 1).unwrap_err(), HandshakeError::Unknown);
        // Too late.
        let h = answer(&mut t, [7; 32], 0);
        assert_eq!(
            t.redeem(&h, CHALLENGE_TTL_US + 2_000_000).unwrap_err(),
            HandshakeError::Expired { age_s: 32 }
        );
        // A probe with a short nonce, or without a public key (an older
        // worker's).
        assert_eq!(
            t.probe(&[1; 8], &[1; 32], &[], 0).unwrap_err(),
            HandshakeError::BadNonce(8)
        );
        assert_eq!(
            t.probe(&[1; 32], &[], &[], 0).unwrap_err(),
            HandshakeError::BadPublic(0)
        );
    }

    #[test]
    fn outstanding_challenges_are_bounded_and_expire() {
        let mut t = Handshakes::new(b"secret", &[1; 32], both());
        t.max_outstanding = 3;
        let first = answer(&mut t, [1; 32], 0);
        let public = worker_key([9; 32]).public();
        for n in 2..=3u8 {
            t.probe(&[n; 32], &public, &[], 0).unwrap();
        }
        assert_eq!(
            t.probe(&[4; 32], &public, &[], 10).unwrap_err(),
            HandshakeError::TooMany(3)
        );
        // Using one makes room.
        assert!(t.redeem(&first, 10).is_ok());
        t.probe(&[4; 32], &public, &[], 10).unwrap();
        assert_eq!(t.outstanding(), 3);
        // Once they expire, the table empties as new probes come.
        t.probe(&[5; 32], &public, &[], CHALLENGE_TTL_US + 11)
            .unwrap();
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn nonces_are_fresh_per_probe_and_seed() {
        let mut a = Handshakes::new(b"secret", &[1; 32], both());
        let mut b = Handshakes::new(b"secret", &[2; 32], both());
        let public = worker_key([9; 32]).public();
        let first = a.probe(&[0; 32], &public, &[], 0).unwrap();
        let second = a.probe(&[0; 32], &public, &[], 0).unwrap();
        let other = b.probe(&[0; 32], &public, &[], 0).unwrap();
        assert!(first.nonce != second.nonce && first.nonce != other.nonce);
        assert!(
            first.public != second.public && first.public != other.public,
            "a fresh ephemeral key per probe"
        );
    }

    #[test]
    fn the_answer_names_the_cipher_both_ends_seal_fast_and_the_keys_are_for_it() {
        use flotilla_protocol::secure::{Channel, Role};
        let public = worker_key([9; 32]).public();
        let aes = [Cipher::Aes256Gcm, Cipher::Chacha20Poly1305];
        let chacha = [Cipher::Chacha20Poly1305];
        // A daemon with AES instructions: AES-256-GCM for a worker that
        // offers it, ChaCha20-Poly1305 for one that does not (or is too old
        // to say).
        let mut t = Handshakes::new(b"secret", &[1; 32], aes.to_vec());
        assert_eq!(
            t.probe(&[1; 32], &public, &aes, 0).unwrap().cipher,
            Cipher::Aes256Gcm
        );
        assert_eq!(
            t.probe(&[2; 32], &public, &chacha, 0).unwrap().cipher,
            Cipher::Chacha20Poly1305
        );
        assert_eq!(
            t.probe(&[3; 32], &public, &[], 0).unwrap().cipher,
            Cipher::Chacha20Poly1305
        );
        // A daemon without: ChaCha20-Poly1305 whatever the worker offers.
        let mut without = Handshakes::new(b"secret", &[1; 32], chacha.to_vec());
        assert_eq!(
            without.probe(&[1; 32], &public, &aes, 0).unwrap().cipher,
            Cipher::Chacha20Poly1305
        );
        // The redeemed keys are for the cipher the answer named: a worker
        // that derives them for it talks to the daemon, one told another
        // cipher does not.
        let (h, transcript) = answer_with(&mut t, [5; 32], 100);
        let daemon = Channel::new(&t.redeem(&h, 200).unwrap(), Role::Daemon);
        assert_eq!(daemon.cipher(), Cipher::Aes256Gcm);
        let worker_for = |cipher| {
            let keys = secure::session_keys(
                t.key(),
                &transcript,
                &worker_key([5; 32]),
                &transcript.daemon_public,
                cipher,
            )
            .unwrap();
            Channel::new(&keys, Role::Worker)
        };
        let right = worker_for(Cipher::Aes256Gcm);
        assert_eq!(daemon.open(&right.seal(b"hi").unwrap()).unwrap(), b"hi");
        let told_otherwise = worker_for(Cipher::Chacha20Poly1305);
        assert!(daemon.open(&told_otherwise.seal(b"hi").unwrap()).is_err());
    }
}
