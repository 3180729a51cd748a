//! Sealed frames: the keys of one connection and the AEAD around every frame
//! after its handshake.
//!
//! Both ends of a connection call the same functions:
//!
//! 1. each draws an [`Ephemeral`] X25519 key for the handshake and sends its
//!    public half (the worker in its probe, the daemon in the answer; both
//!    proofs of [`crate::handshake`] cover them);
//! 2. each derives the connection's [`SessionKeys`] with [`session_keys`]
//!    from the key of the shared secret, the [`Transcript`] and the X25519
//!    shared secret: one key per direction and a connection id. Without
//!    the secret nobody in the middle derives them, and with the ephemeral
//!    keys gone a secret stolen later does not open a recorded connection;
//! 3. each makes a [`Channel`] for its [`Role`] and seals every frame it
//!    sends with [`Channel::seal`] and opens every frame it receives with
//!    [`Channel::open`].
//!
//! A sealed frame carries its own counter. The transport has several
//! requests in flight per connection (nng contexts: a worker's two lanes and
//! its file fetches), so frames of one direction do not arrive in the order
//! they were sealed: the receiving side keeps a window of the last
//! [`REPLAY_WINDOW`] counters instead of expecting the next one, and takes
//! each counter once. A frame that is replayed, older than the window,
//! altered, forged, sealed for the other direction or for another
//! connection does not open.
//!
//! Layout (integers little-endian):
//!
//! | bytes        | field                                                 |
//! |--------------|-------------------------------------------------------|
//! | 0..4         | [`MAGIC`] (its last byte is the format's version)     |
//! | 4..12        | the connection's id ([`SessionKeys::id`])             |
//! | 12..20       | counter: the sender's number for this frame, from 1   |
//! | 20..len-16   | the frame, encrypted                                  |
//! | len-16..len  | the AEAD's tag over the header and the ciphertext     |
//!
//! The AEAD is the connection's [`Cipher`], agreed in the handshake:
//! AES-256-GCM where both ends have AES instructions, which seal several
//! times faster than ChaCha20-Poly1305 (RFC 8439), the cipher every other
//! connection uses. Its nonce is the counter (four zero bytes, then the
//! counter) and its associated data the 20-byte header. Like a part of
//! [`crate::parts`], a sealed frame starts with a byte msgpack never uses,
//! so it can never be read as a clear frame.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

use crate::handshake::{HandshakeKey, PublicKey, Transcript};

/// First bytes of every sealed frame: a byte msgpack never uses, `FS`, and
/// the version of the sealed format.
pub const MAGIC: [u8; 4] = [0xc1, b'F', b'S', 1];

/// Length of a connection id.
pub const ID_LEN: usize = 8;

/// Bytes of a sealed frame before its ciphertext.
pub const HEADER_BYTES: usize = MAGIC.len() + ID_LEN + 8;

/// Bytes of the authentication tag at the end of a sealed frame.
pub const TAG_BYTES: usize = 16;

/// What sealing adds to a frame.
pub const OVERHEAD: usize = HEADER_BYTES + TAG_BYTES;

/// How many of the latest counters the receiving side remembers: a frame
/// may overtake at most this many others of its direction.
pub const REPLAY_WINDOW: u64 = 1024;

/// Context strings of the key derivations (BLAKE3's `derive_key`).
const WORKER_TO_DAEMON: &str = "flotilla 2026-12 interchange worker-to-daemon key v1";
const DAEMON_TO_WORKER: &str = "flotilla 2026-12 interchange daemon-to-worker key v1";
const CONNECTION_ID: &str = "flotilla 2026-12 interchange connection id v1";

/// The AEAD that seals a connection's frames.
///
/// Both are 256-bit AEADs with 16-byte tags; they differ in speed. With AES
/// and carry-less multiply instructions (every x86-64 server CPU of the
/// last decade, Arm v8 with its crypto extension) AES-256-GCM seals and
/// opens a large frame three to four times as fast as ChaCha20-Poly1305 on
/// one core (`bench-sealing`);
/// without them ChaCha20-Poly1305 is the faster and the one that runs in
/// constant time, so it is what any end may always fall back to.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439): fast everywhere in software.
    #[default]
    #[serde(rename = "chacha20-poly1305")]
    Chacha20Poly1305,
    /// AES-256-GCM: the fastest where the CPU has AES instructions.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl Cipher {
    /// Its name, as logs and documents write it.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Chacha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The ciphers this machine seals fast, best first: AES-256-GCM where
    /// the CPU has AES and carry-less multiply instructions, then
    /// ChaCha20-Poly1305, which every end accepts.
    pub fn fast_here() -> Vec<Cipher> {
        if aes_instructions() {
            vec![Cipher::Aes256Gcm, Cipher::Chacha20Poly1305]
        } else {
            vec![Cipher::Chacha20Poly1305]
        }
    }

    /// The cipher of a connection whose dialling end offered `offered`
    /// (its fast ciphers, best first) to an end whose own fast ciphers are
    /// `ours`: the first offered that is fast on both ends, else
    /// ChaCha20-Poly1305. An empty offer is an end that asked for nothing
    /// but the default.
    pub fn agree(offered: &[Cipher], ours: &[Cipher]) -> Cipher {
        offered
            .iter()
            .copied()
            .find(|c| ours.contains(c))
            .unwrap_or_default()
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Cipher::Chacha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// True when the CPU has the instructions that make AES-GCM fast.
fn aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// A connection's id: public (it is in every sealed frame's header), unique
/// per handshake, and bound into every frame's authentication.
pub type ConnectionId = [u8; ID_LEN];

/// Why a handshake yields no keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The peer's public key makes the shared secret predictable (a
    /// low-order point): a peer that tries that is not one of ours.
    #[error("the peer's ephemeral public key is degenerate (a low-order point)")]
    Degenerate,
}

/// Why a sealed frame does not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The bytes are not a sealed frame (too short, or no [`MAGIC`]).
    #[error("not a sealed frame ({0} bytes without the sealed header)")]
    NotSealed(usize),
    /// Another version of the sealed format.
    #[error("sealed format version {0} is not this release's ({ours})", ours = MAGIC[3])]
    Version(u8),
    /// Sealed for another connection (another handshake's keys).
    #[error("sealed for another connection")]
    OtherConnection,
    /// A counter already taken: the frame is a replay.
    #[error("frame {0} was already received (a replay)")]
    Replayed(u64),
    /// A counter below the window: too old to tell from a replay.
    #[error("frame {counter} is older than the replay window (latest {latest})")]
    TooOld {
        /// The frame's counter.
        counter: u64,
        /// The latest counter received.
        latest: u64,
    },
    /// The tag does not match: altered, forged, or sealed for the other
    /// direction.
    #[error("the frame fails authentication (altered, forged, or sealed for the other direction)")]
    Forged,
}

/// Why a frame could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Every counter of the connection is used (2^64 frames): it must
    /// register again for fresh keys.
    #[error("the connection's frame counter is exhausted")]
    Exhausted,
    /// The cipher refused (a frame too large for it).
    #[error("the frame cannot be sealed ({0} bytes)")]
    Cipher(usize),
}

/// An ephemeral X25519 key of one handshake. Its secret half never leaves
/// the process and is dropped (zeroed) with it.
pub struct Ephemeral {
    secret: x25519_dalek::StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ephemeral")
            .field("public", &crate::secret::to_hex(&self.public))
            .finish_non_exhaustive()
    }
}

impl Ephemeral {
    /// The key whose secret half is `random` (32 unpredictable bytes, e.g.
    /// from a [`crate::handshake::NonceSource`]); the caller owns the
    /// randomness, so this crate does no I/O.
    pub fn from_random(random: [u8; 32]) -> Ephemeral {
        let secret = x25519_dalek::StaticSecret::from(random);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ephemeral { secret, public }
    }

    /// The public half, for the peer.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The X25519 agreement of this key with `their_public`, refusing a
    /// low-order point (the client API mixes a token's static key into its
    /// handshake with it, see [`crate::client_auth`]).
    pub fn agree(&self, their_public: &PublicKey) -> Result<[u8; 32], KeyError> {
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(KeyError::Degenerate);
        }
        Ok(*shared.as_bytes())
    }
}

/// Which end of a connection a [`Channel`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that dialled and sent the probe.
    Worker,
    /// The end that answered it.
    Daemon,
}

/// The keys of one connection. Zeroed when dropped.
#[derive(Clone)]
pub struct SessionKeys {
    id: ConnectionId,
    cipher: Cipher,
    worker_to_daemon: [u8; 32],
    daemon_to_worker: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("id", &crate::secret::to_hex(&self.id))
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.worker_to_daemon.zeroize();
        self.daemon_to_worker.zeroize();
    }
}

/// Keys are the same when their ids are: both come from the same
/// derivation input, so this never compares key bytes.
impl PartialEq for SessionKeys {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for SessionKeys {}

impl SessionKeys {
    /// The connection's id (public).
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The cipher the keys are for.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }
}

/// The connection's keys for `cipher`, for the end holding `mine` whose
/// peer sent `their_public`. Both ends get the same keys from the same
/// transcript and cipher; the cipher is part of the derivation (for any
/// but the default), so ends that were told different ciphers (an answer
/// altered on the way) derive keys that open nothing of each other's.
pub fn session_keys(
    key: &HandshakeKey,
    transcript: &Transcript,
    mine: &Ephemeral,
    their_public: &PublicKey,
    cipher: Cipher,
) -> Result<SessionKeys, KeyError> {
    let shared = mine
        .secret
        .diffie_hellman(&x25519_dalek::PublicKey::from(*their_public));
    if !shared.was_contributory() {
        return Err(KeyError::Degenerate);
    }
    let mut material = blake3::Hasher::new();
    material.update(key.bytes());
    transcript.absorb(&mut material);
    material.update(shared.as_bytes());
    if cipher != Cipher::default() {
        material.update(cipher.name().as_bytes());
    }
    let mut input = *material.finalize().as_bytes();
    let derive = |context: &str| blake3::derive_key(context, &input);
    let id_bytes = derive(CONNECTION_ID);
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&id_bytes[..ID_LEN]);
    let keys = SessionKeys {
        id,
        cipher,
        worker_to_daemon: derive(WORKER_TO_DAEMON),
        daemon_to_worker: derive(DAEMON_TO_WORKER),
    };
    zeroize::Zeroize::zeroize(&mut input);
    Ok(keys)
}

/// True when `bytes` is meant as a sealed frame (of any version of the
/// format): a clear frame or a part never starts so.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC[..3])
}

/// The counters a receiving side has taken: the latest, and a bitmap of
/// the [`REPLAY_WINDOW`] counters up to it (bit `c % REPLAY_WINDOW`).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    latest: u64,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            latest: 0,
            seen: [0; (REPLAY_WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    fn bit(counter: u64) -> (usize, u64) {
        let slot = counter % REPLAY_WINDOW;
        ((slot / 64) as usize, 1u64 << (slot % 64))
    }

    /// Whether `counter` may be taken (not taken yet, not too old);
    /// changes nothing.
    pub fn check(&self, counter: u64) -> Result<(), OpenError> {
        if counter > self.latest {
            return Ok(());
        }
        if counter == 0 || counter + REPLAY_WINDOW <= self.latest {
            return Err(OpenError::TooOld {
                counter,
                latest: self.latest,
            });
        }
        let (word, mask) = Self::bit(counter);
        if self.seen[word] & mask != 0 {
            return Err(OpenError::Replayed(counter));
        }
        Ok(())
    }

    /// Takes `counter`, if [`ReplayWindow::check`] allows it.
    pub fn take(&mut self, counter: u64) -> Result<(), OpenError> {
        self.check(counter)?;
        if counter > self.latest {
            let advance = counter - self.latest;
            if advance >= REPLAY_WINDOW {
                self.seen = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                // The slots of the counters skipped over now stand for
                // counters not seen yet.
                for skipped in self.latest + 1..counter {
                    let (word, mask) = Self::bit(skipped);
                    self.seen[word] &= !mask;
                }
            }
            self.latest = counter;
        }
        let (word, mask) = Self::bit(counter);
        self.seen[word] |= mask;
        Ok(())
    }
}

/// One end of a secured connection: seals what it sends and opens what it
/// receives. Shared by every thread that uses the connection (seal and
/// open take `&self`).
pub struct Channel {
    id: ConnectionId,
    cipher: Cipher,
    sealer: LessSafeKey,
    opener: LessSafeKey,
    /// The last counter used for sealing.
    sent: AtomicU64,
    window: Mutex<ReplayWindow>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &crate::secret::to_hex(&self.id))
            .field("cipher", &self.cipher)
            .field("sent", &self.sent.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Channels are the same when they are ends of the same connection's
/// keys in the same role would be; compared by connection id only (for
/// tests and logs: two ends of one connection compare equal too).
impl PartialEq for Channel {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_le_bytes());
    // Unique: a counter is used once per key (see `seal_in_place` and the
    // replay window).
    Nonce::assume_unique_for_key(bytes)
}

/// `cipher` under `key`. Both ciphers take 32-byte keys, so this cannot
/// fail; ring's constructor returns a `Result` for algorithms whose keys
/// have other lengths.
fn aead_key(cipher: Cipher, key: &[u8; 32]) -> LessSafeKey {
    let unbound = UnboundKey::new(cipher.algorithm(), key)
        .unwrap_or_else(|_| unreachable!("{cipher} keys are 32 bytes"));
    LessSafeKey::new(unbound)
}

impl Channel {
    /// The channel of the `role` end of the connection with `keys`.
    pub fn new(keys: &SessionKeys, role: Role) -> Channel {
        let (send, receive) = match role {
            Role::Worker => (&keys.worker_to_daemon, &keys.daemon_to_worker),
            Role::Daemon => (&keys.daemon_to_worker, &keys.worker_to_daemon),
        };
        Channel {
            id: keys.id,
            cipher: keys.cipher,
            sealer: aead_key(keys.cipher, send),
            opener: aead_key(keys.cipher, receive),
            sent: AtomicU64::new(0),
            window: Mutex::new(ReplayWindow::default()),
        }
    }

    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The cipher that seals its frames.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// `frame`, sealed with the next counter.
    pub fn seal(&self, frame: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut sealed = Vec::with_capacity(frame.len() + OVERHEAD);
        sealed.extend_from_slice(&[0; HEADER_BYTES]);
        sealed.extend_from_slice(frame);
        let tag = self.seal_in_place(&mut sealed)?;
        sealed.extend_from_slice(&tag);
        Ok(sealed)
    }

    /// Seals a frame where it lies, for senders that build their message
    /// buffer themselves and so spare a copy of a large frame: `buffer` is
    /// [`HEADER_BYTES`] bytes of room for the header followed by the frame.
    /// Writes the header, encrypts the frame in place and returns the tag,
    /// which the caller appends to make the sealed frame.
    pub fn seal_in_place(&self, buffer: &mut [u8]) -> Result<[u8; TAG_BYTES], SealError> {
        let len = buffer.len().saturating_sub(HEADER_BYTES);
        if buffer.len() < HEADER_BYTES {
            return Err(SealError::Cipher(len));
        }
        let counter = self
            .sent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_add(1))
            .map_err(|_| SealError::Exhausted)?
            + 1;
        let (header, body) = buffer.split_at_mut(HEADER_BYTES);
        header[..MAGIC.len()].copy_from_slice(&MAGIC);
        header[MAGIC.len()..MAGIC.len() + ID_LEN].copy_from_slice(&self.id);
        header[MAGIC.len() + ID_LEN..].copy_from_slice(&counter.to_le_bytes());
        let tag = self
            .sealer
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
            .map_err(|_| SealError::Cipher(len))?;
        let mut out = [0u8; TAG_BYTES];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a frame sealed by the other end, taking its counter.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut copy = sealed.to_vec();
        let len = self.open_in_place(&mut copy)?.len();
        copy.copy_within(HEADER_BYTES..HEADER_BYTES + len, 0);
        copy.truncate(len);
        Ok(copy)
    }

    /// Opens a frame sealed by the other end where it lies, taking its
    /// counter: decrypts the ciphertext in `sealed` and returns the part of
    /// it that is now the clear frame (between the header and the tag), so
    /// a receiver decodes a large frame without copying it. A frame that
    /// does not open keeps its header, and none of its clear text is left
    /// behind: the cipher zeroes what it decrypted when the tag is wrong.
    pub fn open_in_place<'a>(&self, sealed: &'a mut [u8]) -> Result<&'a [u8], OpenError> {
        let counter = self.admit(sealed)?;
        let (header, rest) = sealed.split_at_mut(HEADER_BYTES);
        let frame = self
            .opener
            .open_in_place(nonce(counter), Aad::from(&*header), rest)
            .map_err(|_| OpenError::Forged)?;
        // Only an authentic frame takes its counter, and only once, even
        // when two threads open copies of it at the same time.
        self.lock_window().take(counter)?;
        Ok(frame)
    }

    /// The counter of `sealed` if it is a sealed frame of this connection
    /// whose counter may still be taken: the cheap refusals, before
    /// anything is decrypted.
    fn admit(&self, sealed: &[u8]) -> Result<u64, OpenError> {
        if sealed.len() < OVERHEAD || !is_sealed(sealed) {
            return Err(OpenError::NotSealed(sealed.len()));
        }
        if sealed[3] != MAGIC[3] {
            return Err(OpenError::Version(sealed[3]));
        }
        let header = &sealed[..HEADER_BYTES];
        if header[MAGIC.len()..MAGIC.len() + ID_LEN] != self.id {
            return Err(OpenError::OtherConnection);
        }
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&header[MAGIC.len() + ID_LEN..]);
        let counter = u64::from_le_bytes(counter);
        self.lock_window().check(counter)?;
        Ok(counter)
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, ReplayWindow> {
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{NONCE_LEN, NonceSource};

    /// Both ends of one connection, from a handshake over `secret`.
    fn pair(secret: &[u8], seed: u8) -> (Channel, Channel) {
        pair_with(secret, seed, Cipher::default())
    }

    /// Both ends of one connection sealed with `cipher`.
    fn pair_with(secret: &[u8], seed: u8, cipher: Cipher) -> (Channel, Channel) {
        let mut random = NonceSource::new(&[seed; 32], "test");
        let worker = Ephemeral::from_random(random.next_nonce());
        let daemon = Ephemeral::from_random(random.next_nonce());
        let transcript = Transcript {
            worker_nonce: random.next_nonce(),
            daemon_nonce: random.next_nonce(),
            worker_public: worker.public(),
            daemon_public: daemon.public(),
        };
        let key = HandshakeKey::from_secret(secret);
        let w = session_keys(&key, &transcript, &worker, &daemon.public(), cipher).unwrap();
        let d = session_keys(&key, &transcript, &daemon, &worker.public(), cipher).unwrap();
        assert_eq!(w.id(), d.id());
        assert_eq!(w.cipher(), cipher);
        (
            Channel::new(&w, Role::Worker),
            Channel::new(&d, Role::Daemon),
        )
    }

    #[test]
    fn frames_round_trip_both_ways_and_hide_their_content() {
        let (worker, daemon) = pair(b"secret", 1);
        let frame = b"a distinctive input of forty bytes......";
        let sealed = worker.seal(frame).unwrap();
        assert_eq!(sealed.len(), frame.len() + OVERHEAD);
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(8).any(|w| w == &frame[..8]));
        assert_eq!(daemon.open(&sealed).unwrap(), frame);
        let back = daemon.seal(b"").unwrap();
        assert_eq!(worker.open(&back).unwrap(), b"");
        // The same frame sealed twice differs (fresh counter).
        assert_ne!(worker.seal(frame).unwrap(), sealed);
    }

    #[test]
    fn frames_sealed_and_opened_in_place_are_the_same_frames() {
        let (worker, daemon) = pair(b"secret", 8);
        let frame = b"a frame sealed where it lies".to_vec();
        let mut buffer = vec![0u8; HEADER_BYTES];
        buffer.extend_from_slice(&frame);
        let tag = worker.seal_in_place(&mut buffer).unwrap();
        buffer.extend_from_slice(&tag);
        // What the copying calls make and take, both ways.
        assert_eq!(daemon.open(&buffer).unwrap(), frame);
        let mut sealed = worker.seal(&frame).unwrap();
        assert_eq!(daemon.open_in_place(&mut sealed).unwrap(), &frame[..]);
        // A forged frame does not open in place; its header stays (a
        // receiver may still tell sealed from clear) and no clear text of
        // it is left behind.
        let mut forged = worker.seal(&frame).unwrap();
        forged[HEADER_BYTES] ^= 1;
        let before = forged.clone();
        assert_eq!(daemon.open_in_place(&mut forged), Err(OpenError::Forged));
        assert_eq!(forged[..HEADER_BYTES], before[..HEADER_BYTES]);
        assert!(is_sealed(&forged));
        assert!(
            !forged.windows(frame.len() - 1).any(|w| w == &frame[1..]),
            "no decrypted text of a forged frame is left"
        );
        // Nor does a replay, or a buffer too short to hold a header.
        assert_eq!(
            daemon.open_in_place(&mut sealed.clone()),
            Err(OpenError::Replayed(2))
        );
        assert_eq!(
            worker.seal_in_place(&mut [0u8; HEADER_BYTES - 1]),
            Err(SealError::Cipher(0))
        );
        let mut empty = [0u8; HEADER_BYTES];
        let tag = worker.seal_in_place(&mut empty).unwrap();
        let mut sealed_empty = empty.to_vec();
        sealed_empty.extend_from_slice(&tag);
        assert_eq!(daemon.open_in_place(&mut sealed_empty).unwrap(), b"");
    }

    #[test]
    fn any_bit_flipped_fails_authentication() {
        let (worker, daemon) = pair(b"secret", 2);
        let sealed = worker.seal(b"payload").unwrap();
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            let err = daemon.open(&tampered).unwrap_err();
            assert!(
                matches!(
                    err,
                    OpenError::Forged
                        | OpenError::OtherConnection
                        | OpenError::NotSealed(_)
                        | OpenError::Version(_)
                        | OpenError::TooOld { .. }
                ),
                "byte {i}: {err:?}"
            );
        }
        // A failed open takes no counter: the real frame still opens.
        assert_eq!(daemon.open(&sealed).unwrap(), b"payload");
        assert!(daemon.open(&sealed[..OVERHEAD - 1]).is_err());
    }

    #[test]
    fn a_replay_is_refused() {
        let (worker, daemon) = pair(b"secret", 3);
        let sealed = worker.seal(b"once").unwrap();
        daemon.open(&sealed).unwrap();
        assert_eq!(daemon.open(&sealed), Err(OpenError::Replayed(1)));
    }

    #[test]
    fn frames_reordered_within_the_window_open_once_each() {
        let (worker, daemon) = pair(b"secret", 4);
        let frames: Vec<Vec<u8>> = (0..100u32)
            .map(|i| worker.seal(&i.to_le_bytes()).unwrap())
            .collect();
        for i in (0..100).rev() {
            assert_eq!(daemon.open(&frames[i]).unwrap(), (i as u32).to_le_bytes());
        }
        for frame in &frames {
            assert!(matches!(daemon.open(frame), Err(OpenError::Replayed(_))));
        }
    }

    #[test]
    fn a_frame_older_than_the_window_is_refused() {
        let (worker, daemon) = pair(b"secret", 5);
        let first = worker.seal(b"first").unwrap();
        let mut last = Vec::new();
        for _ in 0..REPLAY_WINDOW {
            last = worker.seal(b"later").unwrap();
        }
        daemon.open(&last).unwrap();
        assert_eq!(
            daemon.open(&first),
            Err(OpenError::TooOld {
                counter: 1,
                latest: REPLAY_WINDOW + 1
            })
        );
    }

    #[test]
    fn a_frame_is_refused_in_the_other_direction_and_on_another_connection() {
        let (worker, daemon) = pair(b"secret", 6);
        let to_daemon = worker.seal(b"for the daemon").unwrap();
        // Reflected back at its sender: the worker opens with the other key.
        assert_eq!(worker.open(&to_daemon), Err(OpenError::Forged));
        // Another connection of the same daemon (another handshake).
        let (_, other_daemon) = pair(b"secret", 7);
        assert_eq!(
            other_daemon.open(&to_daemon),
            Err(OpenError::OtherConnection)
        );
        // Another connection whose id is forged to match still fails.
        let mut relabelled = other_daemon.seal(b"x").unwrap();
        relabelled[MAGIC.len()..MAGIC.len() + ID_LEN].copy_from_slice(&daemon.id());
        assert_eq!(worker.open(&relabelled), Err(OpenError::Forged));
        // A peer with another secret derives other keys.
        let (wrong_worker, _) = pair(b"other secret", 6);
        assert_ne!(wrong_worker.id(), daemon.id());
        assert!(daemon.open(&wrong_worker.seal(b"x").unwrap()).is_err());
        // The right frame still opens.
        assert_eq!(daemon.open(&to_daemon).unwrap(), b"for the daemon");
    }

    #[test]
    fn the_window_slides_and_forgets_nothing_inside_it() {
        let mut w = ReplayWindow::default();
        assert!(w.take(0).is_err(), "counters start at 1");
        w.take(5).unwrap();
        w.take(3).unwrap();
        assert_eq!(w.take(3), Err(OpenError::Replayed(3)));
        w.take(5 + REPLAY_WINDOW - 1).unwrap();
        // 5 is still in the window, 4 was never taken, 3 has dropped out.
        assert_eq!(w.take(5), Err(OpenError::Replayed(5)));
        w.take(6).unwrap();
        assert!(matches!(w.take(3), Err(OpenError::TooOld { .. })));
        // A jump beyond the window forgets everything before it.
        w.take(10 * REPLAY_WINDOW).unwrap();
        w.take(10 * REPLAY_WINDOW - 1).unwrap();
        assert!(matches!(
            w.take(9 * REPLAY_WINDOW),
            Err(OpenError::TooOld { .. })
        ));
    }

    #[test]
    fn a_degenerate_public_key_yields_no_keys() {
        let mine = Ephemeral::from_random([7; 32]);
        let transcript = Transcript {
            worker_nonce: [0; NONCE_LEN],
            daemon_nonce: [0; NONCE_LEN],
            worker_public: mine.public(),
            daemon_public: [0; 32],
        };
        let key = HandshakeKey::from_secret(b"s");
        assert_eq!(
            session_keys(&key, &transcript, &mine, &[0; 32], Cipher::default()).unwrap_err(),
            KeyError::Degenerate
        );
        assert!(!format!("{mine:?} {:?}", pair(b"s", 1).0).contains("secret"));
    }

    #[test]
    fn aes_gcm_connections_seal_open_and_refuse_like_chacha_ones() {
        let (worker, daemon) = pair_with(b"secret", 9, Cipher::Aes256Gcm);
        assert_eq!(worker.cipher(), Cipher::Aes256Gcm);
        let frame = vec![0x5au8; 70_000];
        let sealed = worker.seal(&frame).unwrap();
        assert_eq!(sealed.len(), frame.len() + OVERHEAD);
        assert!(!sealed.windows(16).any(|w| w == &frame[..16]));
        assert_eq!(daemon.open(&sealed).unwrap(), frame);
        assert_eq!(daemon.open(&sealed), Err(OpenError::Replayed(1)));
        let mut forged = worker.seal(b"x").unwrap();
        forged[HEADER_BYTES] ^= 1;
        assert_eq!(daemon.open(&forged), Err(OpenError::Forged));
        let back = daemon.seal(b"back").unwrap();
        assert_eq!(worker.open(&back).unwrap(), b"back");
        assert_eq!(worker.open(&daemon.seal(b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn each_cipher_seals_with_its_own_algorithm() {
        // A frame sealed by a channel opens with the named algorithm of
        // `ring` under the same key, nonce and header, and with no other.
        for (cipher, other) in [
            (Cipher::Aes256Gcm, &CHACHA20_POLY1305),
            (Cipher::Chacha20Poly1305, &AES_256_GCM),
        ] {
            let keys = SessionKeys {
                id: [1; ID_LEN],
                cipher,
                worker_to_daemon: [2; 32],
                daemon_to_worker: [3; 32],
            };
            let sealed = Channel::new(&keys, Role::Worker)
                .seal(b"which cipher")
                .unwrap();
            let (header, body) = sealed.split_at(HEADER_BYTES);
            let open_with = |algorithm| {
                let key = LessSafeKey::new(UnboundKey::new(algorithm, &[2; 32]).unwrap());
                key.open_in_place(nonce(1), Aad::from(header), &mut body.to_vec())
                    .map(|clear| clear.to_vec())
            };
            assert_eq!(open_with(cipher.algorithm()).unwrap(), b"which cipher");
            assert!(open_with(other).is_err(), "{cipher}");
        }
    }

    #[test]
    fn ends_told_different_ciphers_share_no_connection() {
        // The same handshake, one end told AES-256-GCM and the other the
        // default (an answer altered on the way): neither opens the other.
        let (aes_worker, aes_daemon) = pair_with(b"secret", 10, Cipher::Aes256Gcm);
        let (chacha_worker, chacha_daemon) = pair_with(b"secret", 10, Cipher::Chacha20Poly1305);
        assert_ne!(aes_worker.id(), chacha_worker.id());
        assert!(chacha_daemon.open(&aes_worker.seal(b"x").unwrap()).is_err());
        assert!(aes_daemon.open(&chacha_worker.seal(b"x").unwrap()).is_err());
    }

    #[test]
    fn the_agreed_cipher_is_the_first_offered_that_is_fast_on_both_ends() {
        use Cipher::{Aes256Gcm as Aes, Chacha20Poly1305 as Chacha};
        assert_eq!(Cipher::agree(&[Aes, Chacha], &[Aes, Chacha]), Aes);
        // Either end without AES instructions: ChaCha20-Poly1305.
        assert_eq!(Cipher::agree(&[Chacha], &[Aes, Chacha]), Chacha);
        assert_eq!(Cipher::agree(&[Aes, Chacha], &[Chacha]), Chacha);
        // An end that offers nothing, or nothing in common: the default.
        assert_eq!(Cipher::agree(&[], &[Aes, Chacha]), Chacha);
        assert_eq!(Cipher::agree(&[Aes], &[Chacha]), Chacha);
        // The dialling end's order wins.
        assert_eq!(Cipher::agree(&[Chacha, Aes], &[Aes, Chacha]), Chacha);
        // Whatever this machine has, ChaCha20-Poly1305 is among its ciphers,
        // and last.
        assert_eq!(Cipher::fast_here().last(), Some(&Chacha));
        assert_eq!(Cipher::Aes256Gcm.to_string(), "aes-256-gcm");
    }
}
