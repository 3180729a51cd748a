//! The core's interface to the world: the [`Event`]s it reacts to and the
//! [`Action`]s it asks the I/O layer to carry out.

use flotilla_protocol::client::{ClientCall, ClientReply};
use flotilla_protocol::interchange::{DaemonMessage, WorkerMessage};

use super::blocks::BlockEvent;
use super::records::StoreOp;

/// A pending request on one of the daemon's reply sockets (the number of
/// the socket's receiver that holds it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyTo(pub u32);

/// One connection of a worker, as the I/O layer numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PipeId(pub u64);

/// Something that happened, for the core to react to.
#[derive(Debug)]
pub enum Event {
    /// A client request arrived.
    Client {
        /// Where the reply goes.
        from: ReplyTo,
        /// Who calls (see [`super::access`]).
        caller: super::access::Caller,
        /// The request.
        call: ClientCall,
    },
    /// A worker message arrived.
    Worker {
        /// Where the reply goes.
        from: ReplyTo,
        /// Connection it came on.
        pipe: PipeId,
        /// The message.
        message: WorkerMessage,
    },
    /// A worker connection closed.
    PipeClosed {
        /// The connection.
        pipe: PipeId,
    },
    /// Store writes up to `seq` are durable.
    Durable {
        /// Highest durable sequence number.
        seq: u64,
    },
    /// Store writes up to `through` that were not yet durable were not
    /// stored; refuse new tasks until [`Event::StoreRecovered`].
    StoreFailed {
        /// The last sequence number of the failed write.
        through: u64,
        /// Why, in words for the clients whose requests it held.
        reason: String,
    },
    /// After a failure, the store writes again.
    StoreRecovered,
    /// The provider reported on a block.
    Block(BlockEvent),
    /// Time passed (heartbeats, deadlines, retention).
    Tick,
    /// Shut down gracefully (SIGTERM, SIGINT).
    Shutdown,
}

/// Something the I/O layer must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Answer a client request.
    ReplyClient {
        /// The request.
        to: ReplyTo,
        /// The answer.
        reply: ClientReply,
    },
    /// Answer a worker request; with `close`, close its connection once sent.
    ReplyWorker {
        /// The request.
        to: ReplyTo,
        /// The answer.
        message: DaemonMessage,
        /// Close the connection after sending.
        close: bool,
    },
    /// Seal everything on the connection of the request `to` with `keys`
    /// from now on, starting with the reply to that request (a hello that
    /// proved the secret).
    Secure {
        /// The hello.
        to: ReplyTo,
        /// The connection's keys (see [`flotilla_protocol::secure`]).
        keys: Box<flotilla_protocol::secure::SessionKeys>,
    },
    /// Drop a worker connection.
    ClosePipe {
        /// The connection.
        pipe: PipeId,
    },
    /// Write to the store; report [`Event::Durable`] once flushed.
    Persist {
        /// Sequence number of this write.
        seq: u64,
        /// The write.
        op: StoreOp,
    },
    /// Start block `block` through the provider.
    SubmitBlock {
        /// The pool whose provider it goes through.
        pool: String,
        /// Block id.
        block: u32,
    },
    /// Cancel block `block`.
    CancelBlock {
        /// The pool whose provider it goes through.
        pool: String,
        /// Block id.
        block: u32,
    },
    /// Watch block `block`, submitted by an earlier daemon as `job`.
    AdoptBlock {
        /// The pool whose provider watches it.
        pool: String,
        /// Block id.
        block: u32,
        /// The provider's job id.
        job: String,
    },
    /// Shutdown is complete: flush the store and exit.
    Exit,
}
