//! Published servables' files as workers fetch them over the interchange.
//!
//! A published file is stored in the daemon's object store under the
//! lower-case hex blake3 hash of its content (its *object name*). A worker
//! that cannot read that store asks the daemon for the file by name, a
//! chunk at a time ([`crate::interchange::WorkerMessage::Fetch`]), so no
//! frame grows with the file; it checks the hash of the whole file before
//! using it. This module says what a valid object name is and how large a
//! chunk may be, for both ends.

/// The largest chunk the daemon sends in one reply, whatever is asked.
pub const MAX_CHUNK_BYTES: u32 = 1 << 20;

/// Length of an object name: 32 bytes of blake3, in hex.
pub const NAME_LEN: usize = 64;

/// Whether `name` is an object name: exactly [`NAME_LEN`] lower-case hex
/// digits. Anything else (a path, `..`, upper case) names no object, so a
/// request for it can never reach outside the object store.
pub fn is_object_name(name: &str) -> bool {
    name.len() == NAME_LEN && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The chunk a worker that accepts frames of `max_frame_bytes` asks for:
/// [`MAX_CHUNK_BYTES`] or a quarter of its frame limit, whichever is
/// smaller, so a reply (the chunk and a few dozen bytes around it) always
/// fits the frame limit.
pub fn chunk_len(max_frame_bytes: usize) -> u32 {
    let quarter = u32::try_from(max_frame_bytes / 4).unwrap_or(u32::MAX);
    quarter.clamp(1, MAX_CHUNK_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interchange::DaemonMessage;

    #[test]
    fn object_names_are_hex_hashes_and_nothing_else() {
        let good = blake3::hash(b"x").to_hex().to_string();
        assert!(is_object_name(&good));
        for bad in [
            "",
            "../secret",
            &good[..63],
            &format!("{good}0"),
            &good.to_uppercase(),
            &format!("../{}", &good[3..]),
        ] {
            assert!(!is_object_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_full_chunk_fits_every_frame_limit_a_worker_may_have() {
        assert_eq!(chunk_len(64 << 20), MAX_CHUNK_BYTES);
        assert_eq!(chunk_len(crate::MIN_FRAME_BYTES), 1024);
        for cap in [crate::MIN_FRAME_BYTES, 5000, 1 << 20, 4 << 20, 64 << 20] {
            let len = chunk_len(cap);
            let reply = DaemonMessage::Object {
                object: "f".repeat(NAME_LEN),
                offset: u64::MAX,
                size: u64::MAX,
                executable: true,
                data: vec![0xff; len as usize].into(),
            };
            let bytes = crate::encode(&reply).unwrap();
            assert!(bytes.len() <= cap, "{} > {cap}", bytes.len());
        }
    }
}
