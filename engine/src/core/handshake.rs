//! The daemon's half of the worker handshake (see
//! [`flotilla_protocol::handshake`]): answering probes with a proof and a
//! fresh nonce, and checking each hello's proof against a nonce it issued.
//!
//! Outstanding nonces are single-use, expire after [`CHALLENGE_TTL_US`] and
//! number at most [`MAX_OUTSTANDING`], so a peer that probes without ever
//! saying hello costs a bounded amount of memory. Time comes from the
//! core's clock and nonces from a [`NonceSource`] seeded by the daemon at
//! start, so the table is deterministic under test.

use std::collections::{HashMap, VecDeque};

use flotilla_protocol::handshake::{self, HandshakeKey, Nonce, NonceSource, Proof};
use flotilla_protocol::interchange::Hello;

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
#[derive(Debug, Clone, Copy)]
struct Challenge {
    worker_nonce: Nonce,
    issued_us: u64,
}

/// Outstanding challenges, and what makes new ones.
#[derive(Debug)]
pub(super) struct Handshakes {
    key: HandshakeKey,
    nonces: NonceSource,
    outstanding: HashMap<Nonce, Challenge>,
    /// Issue order, for expiry; entries already used are skipped.
    order: VecDeque<(u64, Nonce)>,
    max_outstanding: usize,
}

impl Handshakes {
    /// A table for the daemon's `secret`, its nonces drawn from `seed`.
    pub(super) fn new(secret: &[u8], seed: &[u8; 32]) -> Handshakes {
        Handshakes {
            key: HandshakeKey::from_secret(secret),
            nonces: NonceSource::new(seed, "daemon challenges"),
            outstanding: HashMap::new(),
            order: VecDeque::new(),
            max_outstanding: MAX_OUTSTANDING,
        }
    }

    /// Answers a probe carrying `worker_nonce`: a fresh nonce of the
    /// daemon's and the proof over both.
    pub(super) fn probe(
        &mut self,
        worker_nonce: &[u8],
        now: u64,
    ) -> Result<(Nonce, Proof), HandshakeError> {
        let worker_nonce =
            handshake::nonce(worker_nonce).ok_or(HandshakeError::BadNonce(worker_nonce.len()))?;
        self.expire(now);
        if self.outstanding.len() >= self.max_outstanding {
            return Err(HandshakeError::TooMany(self.outstanding.len()));
        }
        let daemon_nonce = self.nonces.next_nonce();
        self.outstanding.insert(
            daemon_nonce,
            Challenge {
                worker_nonce,
                issued_us: now,
            },
        );
        self.order.push_back((now, daemon_nonce));
        Ok((
            daemon_nonce,
            self.key.daemon_proof(&worker_nonce, &daemon_nonce),
        ))
    }

    /// Checks `hello`'s proof against the challenge it names, which is used
    /// up whatever the outcome.
    pub(super) fn redeem(&mut self, hello: &Hello, now: u64) -> Result<(), HandshakeError> {
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
        if self
            .key
            .check_worker(&challenge.worker_nonce, &daemon_nonce, hello)
        {
            Ok(())
        } else {
            Err(HandshakeError::WrongProof)
        }
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

    /// Plays the worker: checks the daemon's proof, signs a hello.
    fn answer(t: &mut Handshakes, worker_nonce: Nonce, now: u64) -> Hello {
        let (dn, proof) = t.probe(&worker_nonce, now).unwrap();
        assert!(t.key().check_daemon(&worker_nonce, &dn, &proof));
        let mut h = hello();
        h.challenge = Payload::copy_from_slice(&dn);
        h.proof = Payload::copy_from_slice(&t.key().worker_proof(&worker_nonce, &dn, &h));
        h
    }

    #[test]
    fn a_signed_hello_is_taken_once() {
        let mut t = Handshakes::new(b"secret", &[1; 32]);
        let h = answer(&mut t, [5; 32], 100);
        assert_eq!(t.redeem(&h, 200), Ok(()));
        assert_eq!(t.redeem(&h, 300), Err(HandshakeError::Unknown), "replay");
        assert_eq!(t.outstanding(), 0);
    }

    #[test]
    fn wrong_proofs_nonces_and_late_hellos_are_refused() {
        let mut t = Handshakes::new(b"secret", &[1; 32]);
        // Signed with another secret.
        let mut h = answer(&mut t, [5; 32], 0);
        let other = HandshakeKey::from_secret(b"other");
        let dn = handshake::nonce(&h.challenge).unwrap();
        h.proof = Payload::copy_from_slice(&other.worker_proof(&[5; 32], &dn, &h));
        assert_eq!(t.redeem(&h, 1), Err(HandshakeError::WrongProof));
        // A nonce never issued.
        let mut h = answer(&mut t, [6; 32], 0);
        h.challenge = Payload::from(vec![9u8; 32]);
        assert_eq!(t.redeem(&h, 1), Err(HandshakeError::Unknown));
        // Too late.
        let h = answer(&mut t, [7; 32], 0);
        assert_eq!(
            t.redeem(&h, CHALLENGE_TTL_US + 2_000_000),
            Err(HandshakeError::Expired { age_s: 32 })
        );
        // A probe with a short nonce.
        assert_eq!(t.probe(&[1; 8], 0), Err(HandshakeError::BadNonce(8)));
    }

    #[test]
    fn outstanding_challenges_are_bounded_and_expire() {
        let mut t = Handshakes::new(b"secret", &[1; 32]);
        t.max_outstanding = 3;
        let first = answer(&mut t, [1; 32], 0);
        for n in 2..=3u8 {
            t.probe(&[n; 32], 0).unwrap();
        }
        assert_eq!(t.probe(&[4; 32], 10), Err(HandshakeError::TooMany(3)));
        // Using one makes room.
        assert_eq!(t.redeem(&first, 10), Ok(()));
        t.probe(&[4; 32], 10).unwrap();
        assert_eq!(t.outstanding(), 3);
        // Once they expire, the table empties as new probes come.
        t.probe(&[5; 32], CHALLENGE_TTL_US + 11).unwrap();
        assert_eq!(t.outstanding(), 1);
    }

    #[test]
    fn nonces_are_fresh_per_probe_and_seed() {
        let mut a = Handshakes::new(b"secret", &[1; 32]);
        let mut b = Handshakes::new(b"secret", &[2; 32]);
        let (n1, _) = a.probe(&[0; 32], 0).unwrap();
        let (n2, _) = a.probe(&[0; 32], 0).unwrap();
        let (m1, _) = b.probe(&[0; 32], 0).unwrap();
        assert!(n1 != n2 && n1 != m1);
    }
}
