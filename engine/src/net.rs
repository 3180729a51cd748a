//! An nng REP server whose requests can be answered later, from anywhere,
//! and that no peer can take down.
//!
//! Both daemon sockets (the client API and the worker interchange) need
//! request/reply where the reply may come much later: a synchronous run is
//! answered when its task finishes, a worker's long-poll when there is work.
//! nng contexts give exactly that: each context holds one request until it is
//! answered. The server keeps a growing set of contexts (its "receivers")
//! receiving in the background, adds more when nearly all are holding
//! requests, and hands each request to a handler together with its receiver's
//! number; [`RepServer::reply`] later answers through that receiver.
//!
//! Everything runs on nng's own threads through async I/O callbacks, so the
//! daemon needs no thread per connection. The handler must be quick: it
//! decodes and forwards to the scheduling core, nothing more.
//!
//! Connections are tracked as numbered pipes so the core can learn when a
//! worker's connection closes and can close one itself. A request the handler
//! rejects (malformed, oversized, another protocol version) drops that one
//! connection; the server and every other peer carry on.
//!
//! What a peer may do is bounded by [`PeerLimits`] (see [`peers`]): until it
//! registered (the daemon said `Welcome` on its connection, see
//! [`RepServer::register`]) a peer may send frames of at most
//! [`flotilla_protocol::parts::PREAUTH_FRAME_BYTES`], have
//! [`peers::MAX_OUTSTANDING_UNREGISTERED`] requests outstanding, share the
//! server with at most [`peers::MAX_UNREGISTERED`] other such connections and
//! must register within [`peers::HELLO_DEADLINE`]; a registered one gets more
//! room, and may send larger requests in parts, which the server joins
//! before its handler sees them ([`reassembly`]). A connection over its
//! limits is dropped, never the server.
//!
//! A connection whose handshake yielded keys ([`RepServer::secure`]) is
//! sealed from then on (see [`flotilla_protocol::secure`]): every request
//! on it must open with its channel (a part's frame once joined), and every
//! reply to it is sealed, so the handler and whoever replies only ever see
//! and write clear frames. A frame on such a connection that does not open
//! (forged, altered, replayed, of another connection) or that comes in
//! clear drops that connection. A sealed frame on a connection without
//! keys (nng redialled: the daemon restarted, or the connection was
//! replaced) is answered with the "register first" reply and not read.
//! Acknowledgements of parts travel in clear: they say nothing, and a
//! forged one can only make a joined frame fail to open. Every reply gets
//! [`peers::SEND_TIMEOUT`] to be handed to its connection; a peer that does
//! not read its replies loses its connection instead of holding receivers.

pub mod peers;
pub mod reassembly;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use flotilla_protocol::{parts, secure};
use nng::options::{Options, RecvMaxSize};
use nng::{Aio, AioResult, Context, Message, Pipe, PipeEvent, Protocol, Socket};

use peers::{Admission, PartOutcome, PipeTable};
pub use peers::{PeerCred, PeerLimits};

use crate::core::PipeId;

/// Receivers created up front and each time the server adds more.
const GROW_STEP: usize = 32;
/// Add receivers when fewer idle ones than this remain.
const LOW_WATER: usize = 4;

/// Room over a server's frame cap for the header nng puts before a request
/// (the REQ side's request id) and counts against the socket's cap.
const NNG_HEADER_SLACK: usize = 64;

/// How long a peer that is being dropped keeps its connection after its
/// last reply was sent, so the reply reaches it before the close does.
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// How often connections that have not registered are checked against
/// their deadline.
const SWEEP_PERIOD: Duration = Duration::from_millis(500);

/// Refused connections and dropped peers are logged at most this often
/// (with a count), so a flood cannot flood the log too.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(5);

/// Something a peer did.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// A request held by `receiver`, answerable with [`RepServer::reply`].
    Request {
        /// The receiver holding the request.
        receiver: u32,
        /// The connection it came on.
        pipe: PipeId,
        /// Whether that connection has registered (its peer proved who it
        /// is; see [`RepServer::register`]); always true on a trusted
        /// server.
        registered: bool,
        /// The raw frame (opened, on a sealed connection), shared: a
        /// handler may keep slices of it instead of copies (see
        /// [`flotilla_protocol::frame::decode_shared`]).
        bytes: &'a bytes::Bytes,
        /// Who is at the other end, on a trusted server's local (ipc)
        /// connections; none on TCP.
        peer: Option<PeerCred>,
    },
    /// A connection closed.
    PipeClosed(PipeId),
}

/// What to do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// The handler took it; a reply will follow through [`RepServer::reply`].
    Accept,
    /// Answer at once with these bytes; the connection stays.
    Reply(Vec<u8>),
    /// The peer proved who it is and its handshake yielded keys: mark its
    /// connection registered, seal it with `channel` from now on, and
    /// answer `reply` (sealed).
    Secure {
        /// The connection's channel.
        channel: Box<secure::Channel>,
        /// The answer, in clear (it is sealed on its way).
        reply: Vec<u8>,
    },
    /// Drop the peer: send `reply` first if given, then close its connection.
    Drop {
        /// A last word for the peer (e.g. "wrong protocol version").
        reply: Option<Vec<u8>>,
    },
}

/// The handler the server calls from nng's threads.
pub type Handler = Box<dyn Fn(Inbound<'_>) -> Verdict + Send + Sync>;

/// Failure to set up a server.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// nng refused.
    #[error("{what} {url}: {source}")]
    Nng {
        /// What was being done.
        what: &'static str,
        /// The address.
        url: String,
        /// nng's error.
        source: nng::Error,
    },
    /// Setting a socket file's mode failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// An address a server listens on. Dropping it keeps the listener (it
/// lives as long as the socket); [`Listening::close`] stops it.
#[derive(Debug)]
pub struct Listening {
    /// The TCP port bound, or 0 for ipc.
    pub port: u16,
    listener: nng::Listener,
}

impl Listening {
    /// Stops listening here; connections already accepted stay.
    pub fn close(self) {
        self.listener.close();
    }
}

/// One nng context with its I/O handle: it receives a request, holds it
/// until it is answered, then receives the next.
struct Receiver {
    ctx: Context,
    aio: Aio,
    /// The request held: its connection, as nng and the table know it.
    request: Mutex<Option<(Pipe, PipeId)>>,
    close_after_send: Mutex<Option<Pipe>>,
    /// A pipe to close once the receiver's linger sleep ends.
    lingering: Mutex<Option<Pipe>>,
}

/// Counts refusals between two log lines.
#[derive(Default)]
struct RefusalLog {
    since_last: u64,
    last: Option<Instant>,
}

impl RefusalLog {
    /// Counts one; returns how many to report when a line is due.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.since_last += 1;
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_PERIOD);
        if !due {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since_last))
    }
}

struct Shared {
    name: &'static str,
    socket: Socket,
    limits: PeerLimits,
    receivers: RwLock<Vec<Arc<Receiver>>>,
    idle: AtomicUsize,
    sending: AtomicUsize,
    max_receivers: usize,
    closing: AtomicBool,
    pipes: Mutex<PipeTable<Pipe>>,
    refusals: Mutex<RefusalLog>,
    /// Wakes the deadline sweep (none for a trusted server).
    sweeper: Mutex<Option<Aio>>,
    /// The reply to a part from a peer that has not registered, and to a
    /// sealed frame on a connection without keys.
    unregistered_part_reply: Vec<u8>,
    handler: Handler,
}

/// A REP socket with a growing set of receivers. Cheap to clone; the
/// server stops when its last clone is dropped.
#[derive(Clone)]
pub struct RepServer {
    owner: Arc<Owner>,
}

/// What the clones of a server share; its drop stops the server.
///
/// nng runs every callback on its own threads, and each callback holds the
/// server (upgraded from a weak reference) and its own aio while it runs.
/// Were the last reference dropped there, the server's aios would be freed
/// from their own callbacks, which waits for those callbacks to finish: the
/// thread waits for itself, and with it nng's shared threads, so every other
/// socket in the process stalls. The owner's drop therefore stops all of
/// the server's I/O first, on the thread that drops it, waiting for running
/// callbacks; after that no callback runs or holds the server, and the rest
/// is freed right here.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl std::fmt::Debug for RepServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepServer")
            .field("name", &self.owner.shared.name)
            .finish()
    }
}

fn nng_err<'a>(what: &'static str, url: &'a str) -> impl FnOnce(nng::Error) -> NetError + 'a {
    move |source| NetError::Nng {
        what,
        url: url.to_owned(),
        source,
    }
}

impl RepServer {
    /// A server named `name` (for logs) that holds at most `max_receivers`
    /// requests and bounds its peers by `limits`. A part (see
    /// [`flotilla_protocol::parts`]) from a peer that has not registered,
    /// and a sealed frame on a connection without keys, are answered with
    /// `unregistered_part_reply` (the interchange's "register first") and
    /// not kept.
    pub fn new(
        name: &'static str,
        max_receivers: usize,
        limits: PeerLimits,
        unregistered_part_reply: Vec<u8>,
        handler: Handler,
    ) -> Result<RepServer, NetError> {
        let socket =
            Socket::new(Protocol::Rep0).map_err(nng_err("cannot create socket for", name))?;
        socket
            .set_opt::<RecvMaxSize>(limits.frame_cap.saturating_add(NNG_HEADER_SLACK))
            .map_err(nng_err("cannot set the frame cap on", name))?;
        let guarded = !limits.trusted;
        let shared = Arc::new(Shared {
            name,
            socket,
            limits,
            receivers: RwLock::new(Vec::new()),
            idle: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            max_receivers: max_receivers.max(GROW_STEP),
            closing: AtomicBool::new(false),
            pipes: Mutex::new(PipeTable::default()),
            refusals: Mutex::new(RefusalLog::default()),
            sweeper: Mutex::new(None),
            unregistered_part_reply,
            handler,
        });
        let weak = Arc::downgrade(&shared);
        shared
            .socket
            .pipe_notify(move |pipe, event| {
                if let Some(shared) = weak.upgrade() {
                    shared.on_pipe(pipe, event);
                }
            })
            .map_err(nng_err("cannot watch connections of", name))?;
        grow(&shared).map_err(nng_err("cannot create receivers for", name))?;
        if guarded {
            start_sweeper(&shared).map_err(nng_err("cannot start the deadline sweep of", name))?;
        }
        Ok(RepServer {
            owner: Arc::new(Owner { shared }),
        })
    }

    /// Listens on `url` (`ipc://PATH` or `tcp://HOST:PORT`). For ipc, the
    /// socket file gets mode `ipc_mode`. The result tells the TCP port
    /// actually bound (useful with port 0), or 0 for ipc.
    pub fn listen(&self, url: &str, ipc_mode: u32) -> Result<Listening, NetError> {
        let builder = nng::ListenerBuilder::new(&self.owner.shared.socket, url)
            .map_err(nng_err("cannot listen on", url))?;
        let is_tcp = url.starts_with("tcp://");
        if is_tcp {
            builder
                .set_opt::<nng::options::transport::tcp::NoDelay>(true)
                .map_err(nng_err("cannot set TCP_NODELAY on", url))?;
        } else if url.starts_with("ipc://") {
            builder
                .set_opt::<nng::options::transport::ipc::Permissions>(ipc_mode)
                .map_err(nng_err("cannot set permissions on", url))?;
        }
        let listener = builder
            .start()
            .map_err(|(_, e)| nng_err("cannot listen on", url)(e))?;
        let port = if is_tcp {
            listener
                .get_opt::<nng::options::transport::tcp::BoundPort>()
                .map_err(nng_err("cannot read the port of", url))?
        } else {
            if let Some(path) = url.strip_prefix("ipc://") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(ipc_mode)).map_err(
                    |source| NetError::Io {
                        path: path.to_owned(),
                        source,
                    },
                )?;
            }
            0
        };
        tracing::info!(server = self.owner.shared.name, url, port, "listening");
        Ok(Listening { port, listener })
    }

    /// Answers the request held by `receiver`; with `close`, closes the peer's
    /// connection once the reply is sent.
    pub fn reply(&self, receiver: u32, bytes: &[u8], close: bool) {
        self.answer(receiver, Body::Bytes(bytes), close);
    }

    /// Answers the request held by `receiver` with `message`, encoded
    /// straight into the transport message (sized first, so a reply of
    /// large payloads is written once, not encoded and then copied). An
    /// error means nothing was sent and the request is still held.
    pub fn reply_encoded<T: serde::Serialize>(
        &self,
        receiver: u32,
        message: &T,
        close: bool,
    ) -> Result<(), flotilla_protocol::FrameError> {
        let len = flotilla_protocol::encoded_len(message)?;
        let write = |w: &mut dyn std::io::Write| flotilla_protocol::encode_to(w, message);
        self.answer(receiver, Body::Encode(len, &write), close);
        Ok(())
    }

    /// Sends `body` to the request `receiver` holds, if it holds one.
    fn answer(&self, receiver: u32, body: Body<'_>, close: bool) {
        let shared = &self.owner.shared;
        let Some(r) = shared.receiver(receiver) else {
            tracing::error!(
                server = shared.name,
                receiver,
                "reply to an unknown receiver"
            );
            return;
        };
        send(shared, &r, body, close, true);
    }

    /// Seals the connection of the request held by `receiver` with
    /// `channel` from now on, starting with the reply to that request.
    pub fn secure(&self, receiver: u32, channel: secure::Channel) {
        let Some(r) = self.owner.shared.receiver(receiver) else {
            return;
        };
        let request = *lock(&r.request);
        if let Some((_, id)) = request {
            lock(&self.owner.shared.pipes).secure(id, Arc::new(channel));
        }
    }

    /// Marks the connection of the request held by `receiver` as registered
    /// (its peer proved who it is): the registered limits apply to it from
    /// now on. Call it before replying to that request.
    pub fn register(&self, receiver: u32) {
        let Some(r) = self.owner.shared.receiver(receiver) else {
            return;
        };
        let request = *lock(&r.request);
        if let Some((_, id)) = request {
            lock(&self.owner.shared.pipes).register(id);
        }
    }

    /// Closes a connection (the peer sees it drop).
    pub fn close_pipe(&self, pipe: PipeId) {
        let found = lock(&self.owner.shared.pipes).pipe(pipe);
        if let Some(p) = found {
            close_pipe(p);
        }
    }

    /// Connections held, and how many of them have not registered.
    pub fn connections(&self) -> (usize, usize) {
        lock(&self.owner.shared.pipes).counts()
    }

    /// Waits up to `limit` for replies already handed to nng to be sent.
    pub fn drain_sends(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.owner.shared.sending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the server: no more requests are taken; pending ones are
    /// dropped, and callbacks still running are waited for. Not from the
    /// handler.
    pub fn close(&self) {
        self.owner.shared.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Stops all of the server's I/O and waits for its callbacks to finish;
    /// none runs after this returns. Must not be called from one of them.
    fn stop(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(aio) = lock(&self.sweeper).as_ref() {
            stop_aio(aio);
        }
        // Closes every connection and context; nng has run the last
        // connection callback when this returns.
        self.socket.close();
        // A callback that was growing the set may add receivers until it
        // is stopped: stop until no new ones appear.
        let mut stopped = 0;
        loop {
            let fresh: Vec<Arc<Receiver>> = self
                .receivers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .skip(stopped)
                .cloned()
                .collect();
            if fresh.is_empty() {
                break;
            }
            stopped += fresh.len();
            for receiver in fresh {
                stop_aio(&receiver.aio);
            }
        }
    }

    fn receiver(&self, index: u32) -> Option<Arc<Receiver>> {
        self.receivers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(index as usize)
            .cloned()
    }

    /// Logs a refused connection or a dropped peer, at a bounded rate.
    fn log_refusal(&self, pipe: Option<PipeId>, why: &str) {
        if let Some(count) = lock(&self.refusals).note(Instant::now()) {
            let (connections, unregistered) = lock(&self.pipes).counts();
            tracing::warn!(
                server = self.name,
                pipe = pipe.map(|p| p.0),
                count,
                connections,
                unregistered,
                "dropping a peer: {why}"
            );
        }
    }

    fn on_pipe(&self, pipe: Pipe, event: PipeEvent) {
        match event {
            PipeEvent::AddPre => {
                let admitted = lock(&self.pipes).admit(pipe, Instant::now(), &self.limits);
                match admitted {
                    Ok(id) => {
                        // Only the client API's socket is trusted, and only
                        // its ipc connections have credentials.
                        let peer = if self.limits.trusted {
                            peer_credentials(pipe)
                        } else {
                            None
                        };
                        if let Some(peer) = peer {
                            lock(&self.pipes).set_peer(id, peer);
                        }
                        tracing::debug!(
                            server = self.name,
                            pipe = id.0,
                            uid = peer.map(|p| p.uid),
                            "connection opened"
                        );
                    }
                    Err(refusal) => {
                        // Closed before the socket sees it: nng drops it,
                        // and no other event about it reaches the handler.
                        close_pipe(pipe);
                        self.log_refusal(None, refusal.as_str());
                    }
                }
            }
            PipeEvent::RemovePost => {
                let removed = lock(&self.pipes).remove(pipe);
                if let Some(id) = removed {
                    tracing::debug!(server = self.name, pipe = id.0, "connection closed");
                    let _ = (self.handler)(Inbound::PipeClosed(id));
                }
            }
            _ => {}
        }
    }

    /// Closes the connections that did not register in time.
    fn sweep(&self, now: Instant) {
        let overdue = lock(&self.pipes).overdue(now, self.limits.hello_deadline);
        for (id, pipe) in overdue {
            close_pipe(pipe);
            self.log_refusal(Some(id), "it did not register in time");
        }
    }

    fn on_aio(self: &Arc<Self>, index: u32, ctx: &Context, aio: &Aio, result: AioResult) {
        match result {
            AioResult::Recv(Ok(msg)) => {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                if self.idle.load(Ordering::Acquire) < LOW_WATER
                    && let Err(e) = grow(self)
                {
                    tracing::warn!(server = self.name, error = %e, "cannot add receivers");
                }
                let Some(receiver) = self.receiver(index) else {
                    return;
                };
                self.on_request(index, &receiver, msg);
            }
            AioResult::Recv(Err(nng::Error::Closed)) => {}
            AioResult::Recv(Err(e)) => {
                if !self.closing.load(Ordering::Acquire) {
                    tracing::warn!(server = self.name, error = %e, "receive failed");
                    self.idle.fetch_sub(1, Ordering::AcqRel);
                    rearm(self, ctx, aio);
                }
            }
            AioResult::Send(result) => self.on_sent(index, ctx, aio, result),
            AioResult::Sleep(_) => {
                if let Some(receiver) = self.receiver(index)
                    && let Some(p) = lock(&receiver.lingering).take()
                {
                    close_pipe(p);
                }
                rearm(self, ctx, aio);
            }
        }
    }

    /// A request arrived on `receiver`: admit it, join it if it is a part,
    /// and hand it to the handler.
    fn on_request(self: &Arc<Self>, index: u32, receiver: &Receiver, mut msg: Message) {
        let Some(pipe) = msg.pipe() else {
            return rearm(self, &receiver.ctx, &receiver.aio);
        };
        let admission = lock(&self.pipes).begin_request(pipe, &self.limits);
        let (id, registered) = match admission {
            Admission::Admitted { id, registered } => (id, registered),
            // Its connection closed meanwhile: nobody to answer.
            Admission::Unknown => return rearm(self, &receiver.ctx, &receiver.aio),
            Admission::OverCap {
                id,
                outstanding,
                registered,
            } => {
                close_pipe(pipe);
                self.log_refusal(
                    Some(id),
                    &format!(
                        "{outstanding} requests outstanding on one connection ({})",
                        if registered {
                            "registered"
                        } else {
                            "not registered"
                        }
                    ),
                );
                return rearm(self, &receiver.ctx, &receiver.aio);
            }
        };
        *lock(&receiver.request) = Some((pipe, id));
        if !parts::is_part(&msg) {
            return self.unseal(index, receiver, (pipe, id, registered), Whole::Message(msg));
        }
        let outcome = match parts::parse(&msg) {
            Ok(part) => lock(&self.pipes).add_part(id, part, &self.limits),
            Err(e) => {
                self.log_refusal(Some(id), &format!("a bad part: {e}"));
                return self.drop_request(receiver, Some(pipe));
            }
        };
        match outcome {
            PartOutcome::More => send(self, receiver, Body::Bytes(parts::ACK), false, false),
            // Only a registered connection's parts are joined.
            PartOutcome::Whole(frame) => {
                self.unseal(index, receiver, (pipe, id, true), Whole::Joined(frame));
            }
            PartOutcome::Unregistered => {
                tracing::debug!(
                    server = self.name,
                    pipe = id.0,
                    registered,
                    "a part from a connection that has not registered"
                );
                send(
                    self,
                    receiver,
                    Body::Bytes(&self.unregistered_part_reply),
                    false,
                    false,
                );
            }
            PartOutcome::Refused(e) => {
                self.log_refusal(Some(id), &format!("a bad part: {e}"));
                self.drop_request(receiver, Some(pipe));
            }
        }
    }

    /// Opens a whole request on a sealed connection (in place: a large
    /// request is not copied) and hands it on; a request that does not
    /// open, or comes in clear there, drops the connection.
    fn unseal(
        self: &Arc<Self>,
        index: u32,
        receiver: &Receiver,
        (pipe, id, registered): (Pipe, PipeId, bool),
        mut request: Whole,
    ) {
        let channel = lock(&self.pipes).channel(id);
        match channel {
            Some(channel) => match channel.open_in_place(request.as_mut_slice()) {
                Ok(clear) => {
                    let clear = secure::HEADER_BYTES..secure::HEADER_BYTES + clear.len();
                    let frame = request.into_bytes(clear);
                    self.dispatch(index, receiver, (pipe, id, registered), frame);
                }
                Err(e) => {
                    let bytes = request.as_slice();
                    // Logged every time: only a connection that completed
                    // a handshake has keys, so these cannot flood the log.
                    if secure::is_sealed(bytes) {
                        tracing::warn!(
                            server = self.name,
                            pipe = id.0,
                            reason = %e,
                            "dropping a peer: a frame on its sealed connection does not open"
                        );
                    } else {
                        tracing::warn!(
                            server = self.name,
                            pipe = id.0,
                            len = bytes.len(),
                            "dropping a peer: a frame in clear on its sealed connection"
                        );
                    }
                    self.drop_request(receiver, Some(pipe));
                }
            },
            None if secure::is_sealed(request.as_slice()) => {
                tracing::debug!(
                    server = self.name,
                    pipe = id.0,
                    "a sealed frame on a connection without keys: asking it to register"
                );
                send(
                    self,
                    receiver,
                    Body::Bytes(&self.unregistered_part_reply),
                    false,
                    false,
                );
            }
            None => {
                let all = 0..request.as_slice().len();
                let frame = request.into_bytes(all);
                self.dispatch(index, receiver, (pipe, id, registered), frame);
            }
        }
    }

    /// Hands a whole request to the handler and does what it says.
    fn dispatch(
        self: &Arc<Self>,
        index: u32,
        receiver: &Receiver,
        (pipe, id, registered): (Pipe, PipeId, bool),
        bytes: bytes::Bytes,
    ) {
        let peer = if self.limits.trusted {
            lock(&self.pipes).peer(id)
        } else {
            None
        };
        let verdict = (self.handler)(Inbound::Request {
            receiver: index,
            pipe: id,
            registered,
            bytes: &bytes,
            peer,
        });
        match verdict {
            Verdict::Accept => {}
            Verdict::Reply(bytes) => send(self, receiver, Body::Bytes(&bytes), false, true),
            Verdict::Secure { channel, reply } => {
                {
                    let mut pipes = lock(&self.pipes);
                    pipes.register(id);
                    pipes.secure(id, Arc::from(channel));
                }
                send(self, receiver, Body::Bytes(&reply), false, true);
            }
            Verdict::Drop { reply: Some(bytes) } => {
                send(self, receiver, Body::Bytes(&bytes), true, true)
            }
            Verdict::Drop { reply: None } => self.drop_request(receiver, Some(pipe)),
        }
    }

    /// Gives up the request `receiver` holds, closing `pipe` if given.
    fn drop_request(self: &Arc<Self>, receiver: &Receiver, pipe: Option<Pipe>) {
        if let Some(p) = pipe {
            close_pipe(p);
        }
        finish_request(self, receiver);
        rearm(self, &receiver.ctx, &receiver.aio);
    }

    /// A reply went out (or could not): the request is over.
    fn on_sent(
        self: &Arc<Self>,
        index: u32,
        ctx: &Context,
        aio: &Aio,
        result: Result<(), (Message, nng::Error)>,
    ) {
        self.sending.fetch_sub(1, Ordering::AcqRel);
        let Some(receiver) = self.receiver(index) else {
            return;
        };
        let request = finish_request(self, &receiver);
        if let Err((_, e)) = result
            && !self.closing.load(Ordering::Acquire)
        {
            tracing::debug!(server = self.name, error = %e, "reply not sent");
            if e == nng::Error::TimedOut
                && let Some((pipe, id)) = request
            {
                // Its earlier replies are still not taken: it does not read.
                close_pipe(pipe);
                self.log_refusal(Some(id), "it does not take its replies");
            }
        }
        if let Some(p) = lock(&receiver.close_after_send).take() {
            // A sent reply may still sit in the pipe's queue or the
            // socket: closing now can lose it (the peer sees a reset
            // instead of its refusal), so the pipe lingers first.
            *lock(&receiver.lingering) = Some(p);
            if !self.closing.load(Ordering::Acquire) && aio.sleep(CLOSE_LINGER).is_ok() {
                return;
            }
            if let Some(p) = lock(&receiver.lingering).take() {
                close_pipe(p);
            }
        }
        rearm(self, ctx, aio);
    }
}

/// Ends the request `receiver` holds, in its connection's count; returns it.
fn finish_request(shared: &Shared, receiver: &Receiver) -> Option<(Pipe, PipeId)> {
    let request = lock(&receiver.request).take();
    if let Some((_, id)) = request {
        lock(&shared.pipes).end_request(id);
    }
    request
}

/// Cancels what `aio` is doing, waits for its callback to finish and
/// refuses it new work: after this, no callback of it runs.
fn stop_aio(aio: &Aio) {
    // SAFETY: the handle is valid for as long as `aio` lives, and
    // `nng_aio_stop` only cancels, waits and marks the aio stopped; the
    // wrapper's state is updated by the callback the cancellation runs.
    unsafe { nng::ffi::nng_aio_stop(aio.nng_aio()) };
}

/// The uid and gid of the process at the other end of a local (ipc)
/// connection, as the kernel recorded them at connect (`SO_PEERCRED`);
/// none for a TCP connection or a pipe that is gone.
///
/// The nng crate declares these options settable rather than readable on
/// pipes, so they are read with the C call.
fn peer_credentials(pipe: Pipe) -> Option<PeerCred> {
    let read = |option: &'static [u8]| {
        let mut value: u64 = 0;
        // SAFETY: `option` is one of nng's NUL-terminated static option
        // names, `value` is a live u64 that nng writes once, and a pipe id
        // that no longer names a pipe (or a transport without the option)
        // only makes the call return an error code.
        let code = unsafe {
            nng::ffi::nng_pipe_get_uint64(pipe.nng_pipe(), option.as_ptr().cast(), &mut value)
        };
        (code == 0)
            .then_some(value)
            .and_then(|v| u32::try_from(v).ok())
    };
    Some(PeerCred {
        uid: read(nng::ffi::NNG_OPT_IPC_PEER_UID)?,
        gid: read(nng::ffi::NNG_OPT_IPC_PEER_GID)?,
    })
}

/// Closes `pipe`, whatever became of it meanwhile.
///
/// `nng::Pipe::close` panics when the pipe is already gone (`NNG_ENOENT`),
/// which is what happens whenever the peer hangs up first; a panic on one of
/// nng's callback threads would take the daemon down with it. The C call
/// reports that case as an error code, and either way the pipe is closed.
fn close_pipe(pipe: Pipe) {
    // SAFETY: `nng_pipe_close` takes a pipe id by value and looks it up;
    // an id that no longer names a pipe only makes it return NNG_ENOENT.
    let code = unsafe { nng::ffi::nng_pipe_close(pipe.nng_pipe()) };
    if code != 0 {
        tracing::debug!(code, "pipe was already closed");
    }
}

/// A whole request as it arrived: the message, or its parts joined.
enum Whole {
    /// One transport message.
    Message(Message),
    /// Parts joined into one buffer.
    Joined(Vec<u8>),
}

/// A transport message as the owner of shared bytes.
struct MessageBytes(Message);

impl AsRef<[u8]> for MessageBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Whole {
    fn as_slice(&self) -> &[u8] {
        match self {
            Whole::Message(m) => m.as_slice(),
            Whole::Joined(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Whole::Message(m) => m.as_mut_slice(),
            Whole::Joined(v) => v,
        }
    }

    /// `range` of the request, kept in the buffer it came in.
    fn into_bytes(self, range: std::ops::Range<usize>) -> bytes::Bytes {
        match self {
            Whole::Message(m) => bytes::Bytes::from_owner(MessageBytes(m)).slice(range),
            Whole::Joined(v) => bytes::Bytes::from(v).slice(range),
        }
    }
}

/// What a reply carries.
enum Body<'a> {
    /// A frame already encoded.
    Bytes(&'a [u8]),
    /// A frame of this many bytes, written by the function.
    Encode(
        usize,
        &'a dyn Fn(&mut dyn std::io::Write) -> Result<(), flotilla_protocol::FrameError>,
    ),
}

/// Sends `body` as the answer to the request `receiver` holds; with
/// `seal`, sealed if that request's connection is.
fn send(shared: &Arc<Shared>, receiver: &Receiver, body: Body<'_>, close: bool, seal: bool) {
    let request = *lock(&receiver.request);
    if close {
        *lock(&receiver.close_after_send) = request.map(|(p, _)| p);
    }
    let channel = match request {
        Some((_, id)) if seal => lock(&shared.pipes).channel(id),
        _ => None,
    };
    let message = match transport_message(channel.as_deref(), body) {
        Ok(message) => message,
        Err(e) => {
            // The connection cannot say anything more: it goes.
            tracing::warn!(server = shared.name, error = %e, "cannot seal or encode a reply; dropping the peer");
            if let Some((pipe, _)) = request {
                close_pipe(pipe);
            }
            finish_request(shared, receiver);
            rearm(shared, &receiver.ctx, &receiver.aio);
            return;
        }
    };
    // Bounds the wait behind earlier replies to the same peer; receiving
    // again clears it.
    if let Err(e) = receiver.aio.set_timeout(Some(shared.limits.send_timeout)) {
        tracing::debug!(server = shared.name, error = %e, "cannot set the send timeout");
    }
    shared.sending.fetch_add(1, Ordering::AcqRel);
    if let Err((_, e)) = receiver.ctx.send(&receiver.aio, message) {
        shared.sending.fetch_sub(1, Ordering::AcqRel);
        finish_request(shared, receiver);
        if !shared.closing.load(Ordering::Acquire) {
            tracing::warn!(server = shared.name, error = %e, "cannot send reply");
            rearm(shared, &receiver.ctx, &receiver.aio);
        }
    }
}

/// `body` in the message that carries it, sealed with `channel` when there
/// is one: the frame lands in the message once (copied, or encoded there)
/// and is sealed where it lies.
fn transport_message(channel: Option<&secure::Channel>, body: Body<'_>) -> Result<Message, String> {
    let len = match body {
        Body::Bytes(bytes) if channel.is_none() => return Ok(Message::from(bytes)),
        Body::Bytes(bytes) => bytes.len(),
        Body::Encode(len, _) => len,
    };
    let overhead = if channel.is_some() {
        secure::OVERHEAD
    } else {
        0
    };
    let mut message = Message::with_capacity(len + overhead);
    if channel.is_some() {
        message.push_back(&[0; secure::HEADER_BYTES]);
    }
    match body {
        Body::Bytes(bytes) => message.push_back(bytes),
        Body::Encode(_, write) => {
            // Small writes (msgpack headers) gather in the buffer; a large
            // payload goes through it straight into the message.
            let mut out = std::io::BufWriter::with_capacity(8 << 10, &mut message);
            write(&mut out).map_err(|e| e.to_string())?;
            std::io::Write::flush(&mut out).map_err(|e| e.to_string())?;
        }
    }
    if let Some(channel) = channel {
        let tag = channel
            .seal_in_place(&mut message)
            .map_err(|e| e.to_string())?;
        message.push_back(&tag);
    }
    Ok(message)
}

fn rearm(shared: &Shared, ctx: &Context, aio: &Aio) {
    if shared.closing.load(Ordering::Acquire) {
        return;
    }
    // A receiver waits for requests as long as it takes.
    let _ = aio.set_timeout(None);
    shared.idle.fetch_add(1, Ordering::AcqRel);
    if ctx.recv(aio).is_err() {
        shared.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts the timer that closes connections past their deadline to
/// register: an nng sleep that re-arms itself, so no thread waits for it.
fn start_sweeper(shared: &Arc<Shared>) -> Result<(), nng::Error> {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let aio = Aio::new(move |aio, result| {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        if matches!(result, AioResult::Sleep(Ok(()))) {
            shared.sweep(Instant::now());
        }
        if let Err(e) = aio.sleep(SWEEP_PERIOD) {
            tracing::error!(server = shared.name, error = %e, "the deadline sweep stopped");
        }
    })?;
    aio.sleep(SWEEP_PERIOD)?;
    *lock(&shared.sweeper) = Some(aio);
    Ok(())
}

/// Adds up to [`GROW_STEP`] receivers, within the server's limit.
fn grow(shared: &Arc<Shared>) -> Result<(), nng::Error> {
    let mut receivers = shared
        .receivers
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if shared.closing.load(Ordering::Acquire)
        || (shared.idle.load(Ordering::Acquire) >= LOW_WATER && !receivers.is_empty())
    {
        return Ok(());
    }
    let room = shared
        .max_receivers
        .saturating_sub(receivers.len())
        .min(GROW_STEP);
    if room == 0 {
        tracing::warn!(
            server = shared.name,
            receivers = receivers.len(),
            "all receivers are busy; new requests wait"
        );
        return Ok(());
    }
    let mut fresh = Vec::with_capacity(room);
    for _ in 0..room {
        let index = receivers.len() as u32;
        let ctx = Context::new(&shared.socket)?;
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let cb_ctx = ctx.clone();
        let aio = Aio::new(move |aio, result| {
            if let Some(shared) = weak.upgrade() {
                shared.on_aio(index, &cb_ctx, &aio, result);
            }
        })?;
        let receiver = Arc::new(Receiver {
            ctx,
            aio,
            request: Mutex::new(None),
            close_after_send: Mutex::new(None),
            lingering: Mutex::new(None),
        });
        receivers.push(receiver.clone());
        fresh.push(receiver);
    }
    tracing::debug!(
        server = shared.name,
        receivers = receivers.len(),
        "receivers added"
    );
    drop(receivers);
    for receiver in fresh {
        rearm(shared, &receiver.ctx, &receiver.aio);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
