//! An nng REP server whose requests can be answered later, from anywhere.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use nng::options::{Options, RecvMaxSize};
use nng::{Aio, AioResult, Context, Message, Pipe, PipeEvent, Protocol, Socket};

use crate::core::PipeId;

/// Receivers created up front and each time the server adds more.
const GROW_STEP: usize = 32;
/// Add receivers when fewer idle ones than this remain.
const LOW_WATER: usize = 4;

/// How long a peer that is being dropped keeps its connection after its
/// last reply was sent, so the reply reaches it before the close does.
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// Something a peer did.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// A request held by `receiver`, answerable with [`RepServer::reply`].
    Request {
        /// The receiver holding the request.
        receiver: u32,
        /// The connection it came on.
        pipe: PipeId,
        /// The raw frame.
        bytes: &'a [u8],
    },
    /// A connection closed.
    PipeClosed(PipeId),
}

/// What to do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// The handler took it; a reply will follow through [`RepServer::reply`].
    Accept,
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
    request_pipe: Mutex<Option<Pipe>>,
    close_after_send: Mutex<Option<Pipe>>,
    /// A pipe to close once the receiver's linger sleep ends.
    lingering: Mutex<Option<Pipe>>,
}

#[derive(Default)]
struct PipeTable {
    ids: HashMap<Pipe, PipeId>,
    pipes: HashMap<PipeId, Pipe>,
    next: u64,
}

impl PipeTable {
    fn id_of(&mut self, pipe: Pipe) -> PipeId {
        if let Some(id) = self.ids.get(&pipe) {
            return *id;
        }
        self.next += 1;
        let id = PipeId(self.next);
        self.ids.insert(pipe, id);
        self.pipes.insert(id, pipe);
        id
    }
}

struct Shared {
    name: &'static str,
    socket: Socket,
    receivers: RwLock<Vec<Arc<Receiver>>>,
    idle: AtomicUsize,
    sending: AtomicUsize,
    max_receivers: usize,
    closing: AtomicBool,
    pipes: Mutex<PipeTable>,
    handler: Handler,
}

/// A REP socket with a growing set of receivers. Cheap to clone.
#[derive(Clone)]
pub struct RepServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RepServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepServer")
            .field("name", &self.shared.name)
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
    /// A server named `name` (for logs) that refuses frames over
    /// `max_frame` bytes at the socket and holds at most `max_receivers` requests.
    pub fn new(
        name: &'static str,
        max_frame: usize,
        max_receivers: usize,
        handler: Handler,
    ) -> Result<RepServer, NetError> {
        let socket =
            Socket::new(Protocol::Rep0).map_err(nng_err("cannot create socket for", name))?;
        socket
            .set_opt::<RecvMaxSize>(max_frame)
            .map_err(nng_err("cannot set the frame cap on", name))?;
        let shared = Arc::new(Shared {
            name,
            socket,
            receivers: RwLock::new(Vec::new()),
            idle: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            max_receivers: max_receivers.max(GROW_STEP),
            closing: AtomicBool::new(false),
            pipes: Mutex::new(PipeTable::default()),
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
        Ok(RepServer { shared })
    }

    /// Listens on `url` (`ipc://PATH` or `tcp://HOST:PORT`). For ipc, the
    /// socket file gets mode `ipc_mode`. The result tells the TCP port
    /// actually bound (useful with port 0), or 0 for ipc.
    pub fn listen(&self, url: &str, ipc_mode: u32) -> Result<Listening, NetError> {
        let builder = nng::ListenerBuilder::new(&self.shared.socket, url)
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
        tracing::info!(server = self.shared.name, url, port, "listening");
        Ok(Listening { port, listener })
    }

    /// Answers the request held by `receiver`; with `close`, closes the peer's
    /// connection once the reply is sent.
    pub fn reply(&self, receiver: u32, bytes: &[u8], close: bool) {
        let shared = &self.shared;
        let Some(r) = shared.receiver(receiver) else {
            tracing::error!(
                server = shared.name,
                receiver,
                "reply to an unknown receiver"
            );
            return;
        };
        send(shared, &r, bytes, close);
    }

    /// Closes a connection (the peer sees it drop).
    pub fn close_pipe(&self, pipe: PipeId) {
        let found = lock(&self.shared.pipes).pipes.get(&pipe).copied();
        if let Some(p) = found {
            close_pipe(p);
        }
    }

    /// Waits up to `limit` for replies already handed to nng to be sent.
    pub fn drain_sends(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.shared.sending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the server: no more requests are taken; pending ones are dropped.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.socket.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn receiver(&self, index: u32) -> Option<Arc<Receiver>> {
        self.receivers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(index as usize)
            .cloned()
    }

    fn on_pipe(&self, pipe: Pipe, event: PipeEvent) {
        match event {
            PipeEvent::AddPost => {
                let id = lock(&self.pipes).id_of(pipe);
                tracing::debug!(server = self.name, pipe = id.0, "connection opened");
            }
            PipeEvent::RemovePost => {
                let removed = {
                    let mut table = lock(&self.pipes);
                    let id = table.ids.remove(&pipe);
                    if let Some(id) = id {
                        table.pipes.remove(&id);
                    }
                    id
                };
                if let Some(id) = removed {
                    tracing::debug!(server = self.name, pipe = id.0, "connection closed");
                    let _ = (self.handler)(Inbound::PipeClosed(id));
                }
            }
            _ => {}
        }
    }

    fn on_aio(self: &Arc<Self>, index: u32, ctx: &Context, aio: &Aio, result: AioResult) {
        match result {
            AioResult::Recv(Ok(mut msg)) => {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                if self.idle.load(Ordering::Acquire) < LOW_WATER
                    && let Err(e) = grow(self)
                {
                    tracing::warn!(server = self.name, error = %e, "cannot add receivers");
                }
                let pipe = msg.pipe();
                let pipe_id = pipe.map_or(PipeId(0), |p| lock(&self.pipes).id_of(p));
                let Some(receiver) = self.receiver(index) else {
                    return;
                };
                *lock(&receiver.request_pipe) = pipe;
                let verdict = (self.handler)(Inbound::Request {
                    receiver: index,
                    pipe: pipe_id,
                    bytes: msg.as_slice(),
                });
                match verdict {
                    Verdict::Accept => {}
                    Verdict::Drop { reply: Some(bytes) } => send(self, &receiver, &bytes, true),
                    Verdict::Drop { reply: None } => {
                        if let Some(p) = pipe {
                            close_pipe(p);
                        }
                        rearm(self, ctx, aio);
                    }
                }
            }
            AioResult::Recv(Err(nng::Error::Closed)) => {}
            AioResult::Recv(Err(e)) => {
                if !self.closing.load(Ordering::Acquire) {
                    tracing::warn!(server = self.name, error = %e, "receive failed");
                    self.idle.fetch_sub(1, Ordering::AcqRel);
                    rearm(self, ctx, aio);
                }
            }
            AioResult::Send(result) => {
                self.sending.fetch_sub(1, Ordering::AcqRel);
                if let Err((_, e)) = result
                    && !self.closing.load(Ordering::Acquire)
                {
                    tracing::debug!(server = self.name, error = %e, "reply not sent");
                }
                if let Some(receiver) = self.receiver(index)
                    && let Some(p) = lock(&receiver.close_after_send).take()
                {
                    // A sent reply may still sit in the pipe's queue or the
                    // socket: closing now can lose it (the peer sees a reset
                    // instead of its refusal), so the pipe lingers first.
                    *lock(&receiver.lingering) = Some(p);
                    if aio.sleep(CLOSE_LINGER).is_ok() {
                        return;
                    }
                    if let Some(p) = lock(&receiver.lingering).take() {
                        close_pipe(p);
                    }
                }
                rearm(self, ctx, aio);
            }
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

fn send(shared: &Arc<Shared>, receiver: &Receiver, bytes: &[u8], close: bool) {
    if close {
        *lock(&receiver.close_after_send) = *lock(&receiver.request_pipe);
    }
    shared.sending.fetch_add(1, Ordering::AcqRel);
    if let Err((_, e)) = receiver.ctx.send(&receiver.aio, Message::from(bytes)) {
        shared.sending.fetch_sub(1, Ordering::AcqRel);
        if !shared.closing.load(Ordering::Acquire) {
            tracing::warn!(server = shared.name, error = %e, "cannot send reply");
            rearm(shared, &receiver.ctx, &receiver.aio);
        }
    }
}

fn rearm(shared: &Shared, ctx: &Context, aio: &Aio) {
    if shared.closing.load(Ordering::Acquire) {
        return;
    }
    shared.idle.fetch_add(1, Ordering::AcqRel);
    if ctx.recv(aio).is_err() {
        shared.idle.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds up to [`GROW_STEP`] receivers, within the server's limit.
fn grow(shared: &Arc<Shared>) -> Result<(), nng::Error> {
    let mut receivers = shared
        .receivers
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if shared.idle.load(Ordering::Acquire) >= LOW_WATER && !receivers.is_empty() {
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
            request_pipe: Mutex::new(None),
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
mod tests {
    use super::*;
    use std::sync::mpsc;

    type Requests = mpsc::Receiver<(u32, PipeId, Vec<u8>)>;

    fn echo_server(url: &str) -> (RepServer, Requests, u16) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let server = RepServer::new(
            "test",
            1024,
            10_000,
            Box::new(move |inbound| match inbound {
                Inbound::Request { bytes, .. } if bytes == b"bad" => Verdict::Drop {
                    reply: Some(b"bye".to_vec()),
                },
                Inbound::Request {
                    receiver,
                    pipe,
                    bytes,
                } => {
                    let _ = lock(&tx).send((receiver, pipe, bytes.to_vec()));
                    Verdict::Accept
                }
                Inbound::PipeClosed(_) => Verdict::Accept,
            }),
        )
        .unwrap();
        let port = server.listen(url, 0o600).unwrap().port;
        (server, rx, port)
    }

    fn client(url: &str) -> Socket {
        let s = Socket::new(Protocol::Req0).unwrap();
        s.set_opt::<nng::options::RecvTimeout>(Some(Duration::from_secs(10)))
            .unwrap();
        s.dial(url).unwrap();
        s
    }

    #[test]
    fn holds_many_requests_and_answers_them_later() {
        let (server, rx, port) = echo_server("tcp://127.0.0.1:0");
        assert!(port > 0);
        let url = format!("tcp://127.0.0.1:{port}");
        let clients: Vec<Socket> = (0..100).map(|_| client(&url)).collect();
        for (i, c) in clients.iter().enumerate() {
            c.send(Message::from(&i.to_le_bytes()[..])).unwrap();
        }
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(rx.recv_timeout(Duration::from_secs(10)).unwrap());
        }
        // More requests than the initial receivers: the server added more.
        assert!(held.iter().map(|h| h.0).max().unwrap() >= GROW_STEP as u32);
        for (receiver, _, bytes) in &held {
            server.reply(*receiver, bytes, false);
        }
        for (i, c) in clients.iter().enumerate() {
            let back = c.recv().unwrap();
            assert_eq!(back.as_slice(), &i.to_le_bytes()[..]);
        }
    }

    #[test]
    fn a_rejected_peer_is_dropped_and_others_carry_on() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("ipc://{}/t.sock", dir.path().display());
        let (server, rx, _) = echo_server(&url);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("t.sock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let bad = client(&url);
        bad.send(Message::from(&b"bad"[..])).unwrap();
        assert_eq!(bad.recv().unwrap().as_slice(), b"bye");
        // Oversized frames never reach the handler.
        let big = client(&url);
        big.send(Message::from(&vec![0u8; 4096][..])).unwrap();
        let good = client(&url);
        good.send(Message::from(&b"ok"[..])).unwrap();
        let (receiver, _, bytes) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(bytes, b"ok");
        server.reply(receiver, b"fine", false);
        assert_eq!(good.recv().unwrap().as_slice(), b"fine");
        assert!(
            rx.try_recv().is_err(),
            "the oversized frame was not delivered"
        );
    }

    #[test]
    fn a_dropped_peer_gets_its_last_reply_before_the_close() {
        let (_server, _rx, port) = echo_server("tcp://127.0.0.1:0");
        let url = format!("tcp://127.0.0.1:{port}");
        for _ in 0..200 {
            let bad = client(&url);
            // As workers do: no resend, so a reply lost to the close is
            // an error here, not a silent retry.
            bad.set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
                .unwrap();
            bad.send(Message::from(&b"bad"[..])).unwrap();
            assert_eq!(bad.recv().unwrap().as_slice(), b"bye");
        }
    }
}
