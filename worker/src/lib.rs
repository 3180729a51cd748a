//! The Flotilla worker: dials the daemon, pulls batches of work, runs
//! servables in its slots, reports results.
//!
//! The conversation with the daemon is [`session::Session`], a state machine
//! without I/O (also driven by the benchmarks' simulated workers);
//! [`shell`] runs it over nng with slot threads; [`connect`] finds the
//! daemon among its advertised addresses. [`fetch`] and [`cache`] bring a
//! servable's files from the daemon to a node that cannot read its object
//! store.

pub mod affinity;
mod builtin;
pub mod cache;
pub mod connect;
pub mod environment;
mod exec;
mod executor;
pub mod fetch;
pub mod memory;
pub mod node_python;
pub mod onnx;
mod process;
pub mod session;
pub mod shell;
pub mod stop_signal;
mod template;
pub mod verified;
pub mod work_dir;

/// Builtin servables this worker runs; it also runs any published
/// servable whose record the daemon sends it.
pub const BUILTINS: &[&str] = &["noop", "echo", "sleep"];

#[cfg(test)]
mod test_support {
    use nng::options::Options;
    use nng::{Protocol, Socket};

    /// A REP socket listening on a free loopback port, standing in for a
    /// daemon; returns it and the port.
    pub(crate) fn rep_on_loopback() -> (Socket, u16) {
        let socket = Socket::new(Protocol::Rep0).unwrap();
        let listener = nng::ListenerBuilder::new(&socket, "tcp://127.0.0.1:0")
            .unwrap()
            .start()
            .unwrap();
        let port = listener
            .get_opt::<nng::options::transport::tcp::BoundPort>()
            .unwrap();
        (socket, port)
    }
}
