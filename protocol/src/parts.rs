//! Requests larger than the daemon takes from a stranger, sent in parts.
//!
//! nng reads a frame's length from its header and buffers the whole frame
//! before anybody can look at the peer that sent it. So the daemon's
//! interchange refuses every frame over [`PREAUTH_FRAME_BYTES`] at the socket:
//! that cap, not `max_frame_bytes`, is what a peer that never registers can
//! make the daemon hold per connection. A registered worker may still send a
//! request up to the daemon's `max_frame_bytes` (a batch of large results):
//! it splits the encoded frame into parts with [`split`], each sent as a
//! request of its own and answered with [`ACK`], and the daemon joins the
//! parts of a registered connection back into the frame before anything
//! decodes it. A part from a connection that has not registered drops that
//! connection.
//!
//! A part is not a msgpack frame: it starts with [`MAGIC`], whose first byte
//! (`0xc1`) msgpack never uses, so a part can never be read as a frame nor a
//! frame as a part. Layout, integers little-endian:
//!
//! | bytes | field                                                    |
//! |-------|----------------------------------------------------------|
//! | 0..4  | [`MAGIC`] (its last byte is the part format's version)   |
//! | 4     | flags: [`FIRST`], [`LAST`]                               |
//! | 5..9  | stream: which of the peer's requests this is a part of   |
//! | 9..17 | total: the whole frame's size                            |
//! | 17..  | this part's bytes of the frame                           |

/// Largest frame the daemon's interchange takes from a connection that has
/// not registered (1 MiB); also the largest part a worker sends.
pub const PREAUTH_FRAME_BYTES: usize = 1 << 20;

/// First bytes of every part: a byte msgpack never uses, `FP`, and the
/// version of the part format.
pub const MAGIC: [u8; 4] = [0xc1, b'F', b'P', 1];

/// The daemon's answer to every part but the last (the last one is answered
/// with the reply to the whole request).
pub const ACK: &[u8] = &[0xc1, b'F', b'P', 1, b'A'];

/// Flag: the part starts a frame (a stream's earlier, unfinished parts are
/// discarded).
pub const FIRST: u8 = 1;
/// Flag: the part ends the frame.
pub const LAST: u8 = 2;

/// Bytes of a part before its data.
pub const HEADER_BYTES: usize = 17;

/// One part, as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    /// It starts a frame.
    pub first: bool,
    /// It ends the frame.
    pub last: bool,
    /// Which of the peer's requests it belongs to (a worker uses its lane).
    pub stream: u32,
    /// The whole frame's size.
    pub total: u64,
    /// This part's bytes of the frame.
    pub data: &'a [u8],
}

/// Why bytes that start like a part are not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    /// Shorter than a part's header.
    #[error("a part of {0} bytes is shorter than its header")]
    Short(usize),
    /// Another version of the part format.
    #[error("part format version {0} is not this release's ({ours})", ours = MAGIC[3])]
    Version(u8),
    /// Flags this release does not know.
    #[error("unknown part flags {0:#04x}")]
    Flags(u8),
}

/// True when `bytes` is meant as a part (of any version of the format): a
/// frame never starts so.
pub fn is_part(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC[..3])
}

/// Reads a part (see [`is_part`]).
pub fn parse(bytes: &[u8]) -> Result<Part<'_>, PartError> {
    if bytes.len() < HEADER_BYTES || !is_part(bytes) {
        return Err(PartError::Short(bytes.len()));
    }
    if bytes[3] != MAGIC[3] {
        return Err(PartError::Version(bytes[3]));
    }
    let flags = bytes[4];
    if flags & !(FIRST | LAST) != 0 {
        return Err(PartError::Flags(flags));
    }
    let mut stream = [0u8; 4];
    stream.copy_from_slice(&bytes[5..9]);
    let mut total = [0u8; 8];
    total.copy_from_slice(&bytes[9..17]);
    Ok(Part {
        first: flags & FIRST != 0,
        last: flags & LAST != 0,
        stream: u32::from_le_bytes(stream),
        total: u64::from_le_bytes(total),
        data: &bytes[HEADER_BYTES..],
    })
}

/// The parts of `frame` for `stream`, none longer than `part_bytes` (at
/// least one byte of data each: a `part_bytes` below `HEADER_BYTES + 1` is
/// taken as that). Send them in order, each once the previous one got
/// [`ACK`].
pub fn split(frame: &[u8], stream: u32, part_bytes: usize) -> Vec<Vec<u8>> {
    let room = part_bytes.saturating_sub(HEADER_BYTES).max(1);
    let total = (frame.len() as u64).to_le_bytes();
    let count = frame.len().div_ceil(room).max(1);
    let mut parts = Vec::with_capacity(count);
    for (i, chunk) in frame
        .chunks(room)
        .chain(frame.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let mut flags = 0;
        if i == 0 {
            flags |= FIRST;
        }
        if i + 1 == count {
            flags |= LAST;
        }
        let mut part = Vec::with_capacity(HEADER_BYTES + chunk.len());
        part.extend_from_slice(&MAGIC);
        part.push(flags);
        part.extend_from_slice(&stream.to_le_bytes());
        part.extend_from_slice(&total);
        part.extend_from_slice(chunk);
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_carry_the_frame_in_order_and_fit_the_cap() {
        let frame: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let parts = split(&frame, 7, 1000);
        assert_eq!(parts.len(), frame.len().div_ceil(1000 - HEADER_BYTES));
        let mut joined = Vec::new();
        for (i, bytes) in parts.iter().enumerate() {
            assert!(bytes.len() <= 1000);
            assert!(is_part(bytes));
            let part = parse(bytes).unwrap();
            assert_eq!(part.first, i == 0);
            assert_eq!(part.last, i + 1 == parts.len());
            assert_eq!(part.stream, 7);
            assert_eq!(part.total, frame.len() as u64);
            joined.extend_from_slice(part.data);
        }
        assert_eq!(joined, frame);
    }

    #[test]
    fn a_small_frame_is_one_part_that_both_starts_and_ends() {
        let parts = split(b"abc", 1, PREAUTH_FRAME_BYTES);
        assert_eq!(parts.len(), 1);
        let part = parse(&parts[0]).unwrap();
        assert!(part.first && part.last);
        assert_eq!(part.data, b"abc");
    }

    #[test]
    fn frames_are_never_parts_and_bad_parts_are_named() {
        let frame = crate::encode(&crate::interchange::WorkerMessage::Leave { reason: "x".into() })
            .unwrap();
        assert!(!is_part(&frame));
        assert!(!is_part(ACK) || ACK.len() < HEADER_BYTES);
        assert_eq!(parse(&MAGIC), Err(PartError::Short(4)));
        let mut other = split(b"abc", 1, 100).remove(0);
        other[3] = 9;
        assert_eq!(parse(&other), Err(PartError::Version(9)));
        other[3] = MAGIC[3];
        other[4] = 0x80;
        assert_eq!(parse(&other), Err(PartError::Flags(0x80)));
    }
}
