//! The wire protocol shared by the Flotilla daemon, its workers and its clients.
//!
//! Every byte that crosses a socket in Flotilla is one *frame*: a msgpack array
//! `[protocol_version, message]` produced by [`frame::encode`] and checked by
//! [`frame::decode`]. Carrying the version in every frame (and therefore in
//! every hello) lets each side refuse a peer built from another release with an
//! error that names both versions, instead of failing somewhere deep in
//! deserialisation.
//!
//! The crate has three message families, one module each:
//!
//! * [`client`]: what the CLI, the Python client and batch scripts send to the
//!   daemon's API socket, and the replies.
//! * [`interchange`]: what workers and the daemon say to each other: hello,
//!   long-poll pulls that carry finished results, and batches of work.
//! * [`task`]: the task vocabulary both of them share (ids, states, outcomes).
//!
//! [`objects`] is how a worker that cannot read the daemon's object store
//! fetches a servable's files over the interchange.
//!
//! [`secure`] seals every interchange frame after the handshake: the
//! connection's keys, the AEAD and the replay window, as functions both
//! ends call.
//!
//! [`token`] and [`client_auth`] are the TCP client API's tokens, their
//! scope checks and its handshake; after it, frames are sealed as on the
//! interchange.
//!
//! [`parts`] is how a registered worker sends a request larger than the
//! daemon takes from a peer that has not registered.
//!
//! [`launch`] is how a worker is started: its options, its environment and
//! the daemon's contact file, for the daemon that writes them and the worker
//! that reads them.
//!
//! Payloads (servable inputs, outputs, parameters) are opaque msgpack bytes
//! held in [`Payload`] (`bytes::Bytes`), so the daemon moves them without
//! decoding them and clones are reference-count bumps. `bytes` serialises them
//! as msgpack `bin`, not as arrays of integers, which is 17× faster to encode.
//!
//! There is no I/O here: the crate is used by processes with very different
//! runtimes (a tokio daemon, a threaded worker, a blocking CLI).

pub mod access;
pub mod address;
pub mod builtin;
pub mod client;
pub mod client_auth;
pub mod environment;
pub mod frame;
pub mod handshake;
pub mod interchange;
pub mod launch;
pub mod objects;
pub mod parts;
pub mod paths;
pub mod peer_text;
pub mod placement;
pub mod secret;
pub mod secure;
pub mod servable;
pub mod stdio;
pub mod task;
pub mod token;
pub mod watch;

pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, FrameError, MIN_FRAME_BYTES, PROTOCOL_VERSION, decode, decode_shared,
    encode, encode_to, encoded_len,
};
pub use task::{Payload, TaskId};
