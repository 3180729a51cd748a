//! Framing: one msgpack array `[version, message]` per transport message.
//!
//! The size cap is checked before a single byte is decoded, so a peer cannot
//! make the daemon allocate for a frame it would refuse anyway. nng's own
//! `RecvMaxSize` enforces the same cap at the socket; this check is the second
//! line for transports that lack one (stdio pipes, tests).

use std::cell::RefCell;
use std::io::Write;

use bytes::Bytes;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize};

use crate::Payload;

/// Version of every message family in this crate. Bump it whenever an encoded
/// message changes shape; peers with another version are refused by name.
pub const PROTOCOL_VERSION: u32 = 7;

/// Default cap on one frame: 64 MiB (`[daemon] max_frame_bytes` overrides it).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 << 20;

/// The smallest frame cap either side may have: it still carries a
/// worker's registration.
pub const MIN_FRAME_BYTES: usize = 4096;

/// Why a frame could not be produced or understood.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than the configured cap; it was not decoded.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Size of the offending frame.
        len: usize,
        /// The cap in force.
        max: usize,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer speaks version {peer}, this side speaks {ours}")]
    VersionMismatch {
        /// The version the peer put in its frame.
        peer: u32,
        /// [`PROTOCOL_VERSION`].
        ours: u32,
    },
    /// The bytes are not a valid message of the expected family.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The message could not be encoded (a bug or an unserialisable value).
    #[error("cannot encode message: {0}")]
    Encode(String),
}

#[derive(Serialize)]
struct OutFrame<'a, T>(u32, &'a T);

#[derive(Deserialize)]
struct InFrame<T>(u32, T);

/// Encodes `message` as a frame tagged with [`PROTOCOL_VERSION`].
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    rmp_serde::to_vec(&OutFrame(PROTOCOL_VERSION, message))
        .map_err(|e| FrameError::Encode(e.to_string()))
}

/// The length of `message`'s frame, found without writing it: a sender
/// sizes the buffer it encodes into once, so a frame of large payloads is
/// neither copied again nor grown on the way.
pub fn encoded_len<T: Serialize>(message: &T) -> Result<usize, FrameError> {
    let mut counter = Counter(0);
    encode_to(&mut counter, message)?;
    Ok(counter.0)
}

/// Encodes `message` as a frame into `out` (a transport message sized with
/// [`encoded_len`], say).
pub fn encode_to<W: Write, T: Serialize>(out: W, message: &T) -> Result<(), FrameError> {
    let mut out = out;
    rmp_serde::encode::write(&mut out, &OutFrame(PROTOCOL_VERSION, message))
        .map_err(|e| FrameError::Encode(e.to_string()))
}

/// A writer that only counts.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// The frame [`decode_shared`] is decoding on this thread.
    static SHARED_SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Clears [`SHARED_SOURCE`] when decoding ends, however it ends.
struct SourceGuard;

impl Drop for SourceGuard {
    fn drop(&mut self) {
        SHARED_SOURCE.with(|s| s.borrow_mut().take());
    }
}

/// Decodes `frame` like [`decode`], except that payloads read with
/// [`shared_payload`] are slices of `frame` rather than copies: a receiver
/// of a batch of large inputs keeps the one buffer they came in.
///
/// Those payloads keep the whole frame alive, so this is for frames whose
/// parts live about as long as each other (a batch while it runs), not for
/// frames whose parts are kept apart for long.
pub fn decode_shared<T: DeserializeOwned>(frame: &Bytes, max_len: usize) -> Result<T, FrameError> {
    SHARED_SOURCE.with(|s| *s.borrow_mut() = Some(frame.clone()));
    let _clear = SourceGuard;
    decode(frame, max_len)
}

/// Deserializes a [`Payload`] as a slice of the frame [`decode_shared`] is
/// decoding, when it lies in it; otherwise (plain [`decode`], or an input
/// that is not borrowed binary) as a copy, exactly as `Payload`'s own
/// deserialization would. Use with `#[serde(deserialize_with = ...)]`.
pub fn shared_payload<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Payload, D::Error> {
    deserializer.deserialize_byte_buf(PayloadVisitor)
}

struct PayloadVisitor;

impl<'de> serde::de::Visitor<'de> for PayloadVisitor {
    type Value = Payload;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Payload, E> {
        Ok(SHARED_SOURCE.with(|s| match &*s.borrow() {
            Some(source) if contains(source, v) => source.slice_ref(v),
            _ => Payload::copy_from_slice(v),
        }))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
        Ok(Payload::copy_from_slice(v))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Payload, E> {
        Ok(Payload::from(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Payload, E> {
        Ok(Payload::copy_from_slice(v.as_bytes()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Payload, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(Payload::from(out))
    }
}

/// True if `part` lies within `whole`'s bytes.
fn contains(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    at >= start && at + part.len() <= start + whole.len()
}

/// Decodes a frame of at most `max_len` bytes.
///
/// A frame from a peer of another protocol version is reported as
/// [`FrameError::VersionMismatch`] even when its body would not decode, so the
/// operator learns which side to upgrade.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, FrameError> {
    if bytes.len() > max_len {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    match rmp_serde::from_slice::<InFrame<T>>(bytes) {
        Ok(InFrame(PROTOCOL_VERSION, message)) => Ok(message),
        Ok(InFrame(peer, _)) => Err(FrameError::VersionMismatch {
            peer,
            ours: PROTOCOL_VERSION,
        }),
        Err(err) => match rmp_serde::from_slice::<InFrame<IgnoredAny>>(bytes) {
            Ok(InFrame(peer, _)) if peer != PROTOCOL_VERSION => Err(FrameError::VersionMismatch {
                peer,
                ours: PROTOCOL_VERSION,
            }),
            // The message may quote the peer's bytes: bounded and escaped.
            _ => Err(FrameError::Malformed(
                crate::peer_text::shown(&err.to_string()).to_string(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Msg {
        A { x: u32 },
        B(String),
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&Msg::A { x: 7 }).unwrap();
        assert_eq!(decode::<Msg>(&bytes, 1024).unwrap(), Msg::A { x: 7 });
    }

    #[test]
    fn oversize_frame_is_refused_before_decoding() {
        let bytes = encode(&Msg::B("x".repeat(100))).unwrap();
        match decode::<Msg>(&bytes, 10) {
            Err(FrameError::TooLarge { len, max: 10 }) => assert_eq!(len, bytes.len()),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn other_version_is_named_even_if_body_differs() {
        let bytes = rmp_serde::to_vec(&(PROTOCOL_VERSION + 1, "something new")).unwrap();
        match decode::<Msg>(&bytes, 1024) {
            Err(FrameError::VersionMismatch { peer, ours }) => {
                assert_eq!(peer, PROTOCOL_VERSION + 1);
                assert_eq!(ours, PROTOCOL_VERSION);
            }
            other => panic!("expected VersionMismatch, got {other:?}"),
        }
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Carrier {
        #[serde(deserialize_with = "shared_payload")]
        shared: Payload,
        copied: Payload,
    }

    #[test]
    fn encoded_len_is_the_length_encode_writes() {
        let carrier = Carrier {
            shared: Payload::from(vec![3u8; 70_000]),
            copied: Payload::from_static(b"small"),
        };
        let bytes = encode(&carrier).unwrap();
        assert_eq!(encoded_len(&carrier).unwrap(), bytes.len());
        let mut out = Vec::new();
        encode_to(&mut out, &carrier).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn shared_payloads_are_slices_of_the_frame_and_plain_decoding_copies() {
        let carrier = Carrier {
            shared: Payload::from(vec![3u8; 70_000]),
            copied: Payload::from(vec![4u8; 70_000]),
        };
        let frame = Bytes::from(encode(&carrier).unwrap());
        let within = |p: &Payload| contains(&frame, p);
        let shared: Carrier = decode_shared(&frame, usize::MAX).unwrap();
        assert_eq!(shared, carrier);
        assert!(within(&shared.shared), "read where it lies");
        assert!(
            !within(&shared.copied),
            "a field without the attribute is copied"
        );
        let plain: Carrier = decode(&frame, usize::MAX).unwrap();
        assert_eq!(plain, carrier);
        assert!(!within(&plain.shared), "plain decoding copies");
        // The thread no longer refers to the frame once decoding is done.
        let again: Carrier = decode(&encode(&carrier).unwrap(), usize::MAX).unwrap();
        assert!(!within(&again.shared));
    }

    #[test]
    fn garbage_is_malformed() {
        for garbage in [&b""[..], b"\xff\xff\xff", b"hello", &[0x92, 0x01, 0xc1]] {
            assert!(matches!(
                decode::<Msg>(garbage, 1024),
                Err(FrameError::Malformed(_))
            ));
        }
    }
}
