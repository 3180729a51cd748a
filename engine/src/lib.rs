//! The Flotilla daemon as a library.
//!
//! * [`config`]: the TOML site file and its checks; [`toml_locate`] finds
//!   the line of a key for its error messages.
//! * [`state_dir`]: the state directory (pid file, secret, contact file,
//!   store) and the shared directory (object store, blocks' files);
//!   [`fs_check`] warns when either is on the wrong kind of file system.
//! * [`store`]: the durable sled store and its group-commit writer; it lays
//!   out the records the core defines (`core::records`).
//! * [`core`]: the scheduling state machine (no I/O): typed tables of tasks,
//!   workers and batches, queues and batching, dispatch, heartbeats,
//!   requeue, memoization, the catalog, blocks, shutdown.
//! * [`servable_spec`]: reading and checking `servable.toml`.
//! * [`net`]: nng REP sockets whose requests are answered later (long-polls).
//! * [`object_server`]: servable files for workers that cannot read the
//!   object store, a chunk at a time.
//! * [`advertise`]: the addresses workers dial and the daemon listens on.
//! * [`block_runs`]: where each block ran, for `flotilla logs`.
//! * [`launch`] and [`provider_runner`]: what a block runs and the thread that
//!   asks the provider to run it; [`provision`] picks the provider.
//! * [`hub`]: how events reach the core on the thread that brings them.
//! * [`clock`]: the core's clock.
//! * [`metrics`] and [`metrics_http`]: the opt-in Prometheus endpoint.
//! * [`daemon`]: the process that wires them together.
//!
//! See `docs/architecture.md` for how a request travels through them.

pub mod advertise;
pub mod block_runs;
pub mod client_gate;
pub mod clock;
pub mod config;
pub mod core;
pub mod daemon;
pub mod entropy;
pub mod fs_check;
pub mod hub;
pub mod identity;
pub mod launch;
pub mod metrics;
pub mod metrics_http;
pub mod net;
pub mod object_server;
pub mod preview;
pub mod provider_runner;
pub mod provision;
pub mod servable_spec;
pub mod state_dir;
pub mod store;
mod store_room;
mod store_writer;
pub mod tokens;
pub mod toml_locate;
