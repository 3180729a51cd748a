//! Framing: one msgpack array `[version, message]` per transport message.
//!
//! The size cap is checked before a single byte is decoded, so a peer cannot
//! make the daemon allocate for a frame it would refuse anyway. nng's own
//! `RecvMaxSize` enforces the same cap at the socket; this check is the second
//! line for transports that lack one (stdio pipes, tests).

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

/// Version of every message family in this crate. Bump it whenever an encoded
/// message changes shape; peers with another version are refused by name.
pub const PROTOCOL_VERSION: u32 = 6;

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
