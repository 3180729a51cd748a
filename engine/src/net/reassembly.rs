//! Joining the parts of one connection's large requests back into frames.
//!
//! A registered worker sends a request larger than the pre-registration
//! frame cap as parts (see [`flotilla_protocol::parts`]); each connection
//! keeps a [`Reassembly`] with at most [`MAX_STREAMS`] frames under way, each
//! at most the server's cap on a whole frame. Anything out of order (a part
//! of a frame that was never started, more bytes than announced, a frame
//! that ends short) is a protocol violation: the caller drops the
//! connection.

use flotilla_protocol::parts::Part;

/// Frames one connection may have under way at once (a worker has two
/// request lanes).
pub const MAX_STREAMS: usize = 2;

/// Why a part cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// The frame would be larger than the server takes.
    #[error("a frame of {total} bytes in parts exceeds the {max}-byte limit")]
    TooLarge {
        /// The announced size.
        total: u64,
        /// The cap in force.
        max: usize,
    },
    /// A part of a frame whose first part never came.
    #[error("a part of stream {stream}, whose first part never came")]
    NotStarted {
        /// The stream.
        stream: u32,
    },
    /// A part whose announced size differs from its first part's.
    #[error("a part of stream {stream} announces {total} bytes, its first part {first}")]
    TotalChanged {
        /// The stream.
        stream: u32,
        /// What this part says.
        total: u64,
        /// What the first part said.
        first: u64,
    },
    /// More bytes than announced, or fewer by the last part.
    #[error("stream {stream} carries {got} bytes where {total} were announced")]
    WrongLength {
        /// The stream.
        stream: u32,
        /// Bytes received so far, this part included.
        got: u64,
        /// The announced size.
        total: u64,
    },
    /// A part without data that does not end its frame.
    #[error("an empty part of stream {stream} that does not end it")]
    Empty {
        /// The stream.
        stream: u32,
    },
    /// More frames under way than a connection may have.
    #[error("more than {MAX_STREAMS} frames in parts at once")]
    TooManyStreams,
}

/// A frame under way.
#[derive(Debug)]
struct Partial {
    stream: u32,
    total: u64,
    bytes: Vec<u8>,
}

/// One connection's frames under way.
#[derive(Debug, Default)]
pub struct Reassembly {
    partials: Vec<Partial>,
}

impl Reassembly {
    /// Takes `part`; returns the whole frame once its last part came.
    /// Frames are capped at `max_frame` bytes.
    pub fn add(
        &mut self,
        part: Part<'_>,
        max_frame: usize,
    ) -> Result<Option<Vec<u8>>, ReassemblyError> {
        let stream = part.stream;
        if part.total > max_frame as u64 {
            return Err(ReassemblyError::TooLarge {
                total: part.total,
                max: max_frame,
            });
        }
        if part.data.is_empty() && !part.last {
            return Err(ReassemblyError::Empty { stream });
        }
        if part.first {
            // A first part restarts its stream: the peer gave up on an
            // earlier frame (its request timed out) and sends anew.
            self.partials.retain(|p| p.stream != stream);
            if self.partials.len() >= MAX_STREAMS {
                return Err(ReassemblyError::TooManyStreams);
            }
            self.partials.push(Partial {
                stream,
                total: part.total,
                bytes: Vec::new(),
            });
        }
        let Some(index) = self.partials.iter().position(|p| p.stream == stream) else {
            return Err(ReassemblyError::NotStarted { stream });
        };
        let partial = &mut self.partials[index];
        if partial.total != part.total {
            let first = partial.total;
            self.partials.swap_remove(index);
            return Err(ReassemblyError::TotalChanged {
                stream,
                total: part.total,
                first,
            });
        }
        let got = (partial.bytes.len() + part.data.len()) as u64;
        if got > partial.total || (part.last && got != partial.total) {
            self.partials.swap_remove(index);
            return Err(ReassemblyError::WrongLength {
                stream,
                got,
                total: part.total,
            });
        }
        partial.bytes.extend_from_slice(part.data);
        if !part.last {
            return Ok(None);
        }
        Ok(Some(self.partials.swap_remove(index).bytes))
    }

    /// Bytes held for frames under way.
    pub fn buffered(&self) -> usize {
        self.partials.iter().map(|p| p.bytes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::parts::{parse, split};

    fn feed(r: &mut Reassembly, parts: &[Vec<u8>], max: usize) -> Vec<Vec<u8>> {
        let mut whole = Vec::new();
        for p in parts {
            if let Some(frame) = r.add(parse(p).unwrap(), max).unwrap() {
                whole.push(frame);
            }
        }
        whole
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn parts_in_order_give_back_the_frame() {
        let f = frame(5000, 1);
        let mut r = Reassembly::default();
        assert_eq!(feed(&mut r, &split(&f, 1, 600), 1 << 20), vec![f]);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn two_streams_interleave() {
        let (a, b) = (frame(3000, 1), frame(2000, 2));
        let (pa, pb) = (split(&a, 0, 500), split(&b, 1, 500));
        let mut mixed = Vec::new();
        for i in 0..pa.len().max(pb.len()) {
            mixed.extend(pa.get(i).cloned());
            mixed.extend(pb.get(i).cloned());
        }
        let mut r = Reassembly::default();
        let whole = feed(&mut r, &mixed, 1 << 20);
        assert_eq!(whole.len(), 2);
        assert!(whole.contains(&a) && whole.contains(&b));
    }

    #[test]
    fn a_frame_over_the_cap_is_refused_at_its_first_part() {
        let parts = split(&frame(5000, 3), 0, 600);
        let mut r = Reassembly::default();
        let err = r.add(parse(&parts[0]).unwrap(), 4999).unwrap_err();
        assert_eq!(
            err,
            ReassemblyError::TooLarge {
                total: 5000,
                max: 4999
            }
        );
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn parts_out_of_order_are_refused() {
        let parts = split(&frame(3000, 4), 5, 600);
        let mut r = Reassembly::default();
        assert_eq!(
            r.add(parse(&parts[1]).unwrap(), 1 << 20),
            Err(ReassemblyError::NotStarted { stream: 5 })
        );
        // A skipped middle part makes the last one come short.
        r.add(parse(&parts[0]).unwrap(), 1 << 20).unwrap();
        for p in &parts[2..parts.len() - 1] {
            r.add(parse(p).unwrap(), 1 << 20).unwrap();
        }
        let last = parse(parts.last().unwrap()).unwrap();
        assert!(matches!(
            r.add(last, 1 << 20),
            Err(ReassemblyError::WrongLength { stream: 5, .. })
        ));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn a_first_part_restarts_its_stream() {
        let (old, new) = (frame(3000, 6), frame(2500, 7));
        let mut r = Reassembly::default();
        let stale = split(&old, 1, 600);
        feed(&mut r, &stale[..2], 1 << 20);
        assert_eq!(feed(&mut r, &split(&new, 1, 600), 1 << 20), vec![new]);
    }

    #[test]
    fn a_third_stream_is_refused() {
        let mut r = Reassembly::default();
        for stream in 0..2 {
            let parts = split(&frame(2000, 8), stream, 600);
            r.add(parse(&parts[0]).unwrap(), 1 << 20).unwrap();
        }
        let parts = split(&frame(2000, 8), 9, 600);
        assert_eq!(
            r.add(parse(&parts[0]).unwrap(), 1 << 20),
            Err(ReassemblyError::TooManyStreams)
        );
    }
}
