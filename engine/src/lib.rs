//! The Flotilla daemon as a library.
//!
//! * [`config`]: the TOML site file and its checks.
//! * [`state_dir`]: the state directory, pid file, secret, contact file.
//! * [`store`]: the durable sled store and its group-commit writer.
//! * [`core`]: the scheduling state machine (no I/O): queues, batching,
//!   dispatch, heartbeats, requeue, shutdown, blocks.
//! * [`net`]: nng REP sockets whose requests are answered later (long-polls).
//! * [`launch`] and [`provider_runner`]: what a block runs and the thread that
//!   asks the provider to run it.
//! * [`hub`]: how events reach the core on the thread that brings them.
//! * [`daemon`]: the process that wires them together.
//!
//! See `docs/architecture.md` for how a request travels through them.

pub mod advertise;
pub mod clock;
pub mod config;
pub mod core;
pub mod daemon;
pub mod hub;
pub mod launch;
pub mod net;
pub mod provider_runner;
pub mod provision;
pub mod servable_spec;
pub mod state_dir;
pub mod store;
pub mod toml_locate;
