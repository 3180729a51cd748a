//! The Flotilla worker: dials the daemon, pulls batches of work, runs
//! servables in its slots, reports results.
//!
//! The conversation with the daemon is [`session::Session`], a state machine
//! without I/O (also driven by the benchmarks' simulated workers);
//! [`shell`] runs it over nng with slot threads; [`connect`] finds the
//! daemon among its advertised addresses.

mod builtin;
pub mod connect;
mod exec;
mod executor;
mod process;
pub mod session;
pub mod shell;

/// Builtin servables this worker runs; it also runs any published
/// servable whose record the daemon sends it.
pub const BUILTINS: &[&str] = &["noop", "echo", "sleep"];
