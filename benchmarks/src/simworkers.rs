//! Simulated workers: many worker connections from one process, to load the
//! daemon's dispatch path without paying for thousands of worker processes.
//!
//! Each simulated worker is its own nng REQ socket with one TCP connection to
//! the daemon's interchange (the daemon tells workers apart by connection),
//! and speaks the real worker protocol of
//! [`flotilla_protocol::interchange`]: `Hello` with the daemon's secret, then
//! a long-poll (`Pull { wait: true }`) always outstanding. A batch is
//! "run" at once: every item gets `Outcome::Output(nil)`, and the results ride
//! on the next long-poll, as one slot of a real worker whose servable costs
//! nothing would send them.
//!
//! Nothing here has a thread per connection: every socket has one context and
//! one asynchronous I/O handle whose callback, on nng's own threads, is a
//! small state machine (sent → wait for the reply → decode → send the next
//! request). Callbacks only count; the caller watches the counters against
//! its own deadlines.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::unix_us;
use anyhow::{Context as _, bail};
use flotilla_protocol::interchange::{BatchResult, DaemonMessage, Hello, WorkerMessage};
use flotilla_protocol::task::{NIL, Outcome};
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, Payload, decode, encode};
use nng::options::Options;
use nng::{Aio, AioResult, Context, Message, Protocol, Socket};

/// How errors are kept: the first few, verbatim.
const KEPT_ERRORS: usize = 5;

/// What a [`SimPool`] needs to connect.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// `tcp://HOST:PORT` of the daemon's interchange.
    pub url: String,
    /// The daemon's secret (its `secret` file).
    pub secret: Vec<u8>,
    /// How many simulated workers (connections) to open.
    pub count: usize,
    /// Longest wait for any one reply (a long-poll comes back within one
    /// heartbeat period); a reply later than this fails that connection.
    pub reply_timeout: Duration,
    /// Prefix of the worker ids (`PREFIX-N`), unique per daemon.
    pub id_prefix: String,
    /// Most connections opened but not yet welcomed at any time: workers
    /// start together, as a block's would, but no more of them knock at
    /// once than the daemon's listen backlog (128 in nng) takes without
    /// dropping connection attempts.
    pub window: usize,
    /// Longest time for all of them to be welcomed.
    pub register_limit: Duration,
}

/// Counters every connection updates.
#[derive(Default)]
struct Shared {
    count: usize,
    registered: AtomicUsize,
    /// Microseconds after the pool's start at which the last worker was
    /// welcomed (0 until all are).
    all_registered_us: AtomicU64,
    tasks: AtomicU64,
    batches: AtomicU64,
    heartbeats: AtomicU64,
    reregistered: AtomicU64,
    shutdowns: AtomicUsize,
    failed: AtomicUsize,
    errors: Mutex<Vec<String>>,
    closing: AtomicBool,
}

/// One simulated worker: its socket, its request context, and the
/// configuration its messages need.
struct Conn {
    index: usize,
    socket: Socket,
    ctx: Context,
    hello: Vec<u8>,
    shared: Arc<Shared>,
    started: Instant,
}

/// What the simulated workers did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Workers the daemon welcomed (each counts once per `Welcome`).
    pub registered: usize,
    /// Tasks answered.
    pub tasks: u64,
    /// Batches answered.
    pub batches: u64,
    /// Empty `Work` replies (the daemon's heartbeats).
    pub heartbeats: u64,
    /// `Reregister` answers (the daemon forgot a worker).
    pub reregistered: u64,
    /// Workers told to shut down.
    pub shutdowns: usize,
    /// Connections that failed and stopped.
    pub failed: usize,
    /// The first few failures, verbatim.
    pub errors: Vec<String>,
}

/// A set of simulated workers connected to one daemon. Dropping it closes
/// every connection.
pub struct SimPool {
    conns: Vec<(Arc<Conn>, Aio)>,
    shared: Arc<Shared>,
    started: Instant,
    dialled: Duration,
}

impl Shared {
    fn fail(&self, index: usize, what: String) {
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        self.failed.fetch_add(1, Ordering::AcqRel);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < KEPT_ERRORS {
            errors.push(format!("simulated worker {index}: {what}"));
        }
    }
}

impl Conn {
    /// Sends `bytes` as this connection's next request.
    fn send(&self, aio: &Aio, bytes: &[u8]) {
        if let Err((_, e)) = self.ctx.send(aio, Message::from(bytes)) {
            self.shared.fail(self.index, format!("cannot send: {e}"));
        }
    }

    fn send_message(&self, aio: &Aio, message: &WorkerMessage) {
        match encode(message) {
            Ok(bytes) => self.send(aio, &bytes),
            Err(e) => self.shared.fail(self.index, format!("cannot encode: {e}")),
        }
    }

    /// The callback: one step of the state machine.
    fn on_event(&self, aio: Aio, result: AioResult) {
        match result {
            AioResult::Send(Ok(())) => {
                if let Err(e) = self.ctx.recv(&aio) {
                    self.shared.fail(self.index, format!("cannot receive: {e}"));
                }
            }
            AioResult::Send(Err((_, e))) => {
                if e != nng::Error::Closed {
                    self.shared.fail(self.index, format!("send failed: {e}"));
                }
            }
            AioResult::Recv(Err(e)) => {
                if e != nng::Error::Closed {
                    self.shared
                        .fail(self.index, format!("no reply from the daemon: {e}"));
                }
            }
            AioResult::Recv(Ok(msg)) => self.on_reply(&aio, &msg),
            AioResult::Sleep(_) => {}
        }
    }

    fn on_reply(&self, aio: &Aio, msg: &Message) {
        if self.shared.closing.load(Ordering::Acquire) {
            return;
        }
        let message = match decode::<DaemonMessage>(msg.as_slice(), DEFAULT_MAX_FRAME_BYTES) {
            Ok(m) => m,
            Err(e) => return self.shared.fail(self.index, format!("bad reply: {e}")),
        };
        let poll = |results: Vec<BatchResult>| WorkerMessage::Pull {
            results,
            wait: true,
        };
        match message {
            DaemonMessage::Welcome { .. } => {
                let now = self.shared.registered.fetch_add(1, Ordering::AcqRel) + 1;
                if now == self.shared.count {
                    let us = self.started.elapsed().as_micros() as u64;
                    self.shared.all_registered_us.store(us, Ordering::Release);
                }
                self.send_message(aio, &poll(Vec::new()));
            }
            DaemonMessage::Work { batches } if batches.is_empty() => {
                self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                self.send_message(aio, &poll(Vec::new()));
            }
            DaemonMessage::Work { batches } => {
                let received_us = unix_us();
                let mut tasks = 0u64;
                let mut results = Vec::with_capacity(batches.len());
                for batch in batches {
                    tasks += batch.items.len() as u64;
                    results.push(BatchResult {
                        batch: batch.id,
                        run_us: 0,
                        received_us,
                        sent_us: 0,
                        outcomes: batch
                            .items
                            .iter()
                            .map(|i| (i.task, Outcome::Output(Payload::from_static(NIL))))
                            .collect(),
                        failure: None,
                    });
                }
                self.shared
                    .batches
                    .fetch_add(results.len() as u64, Ordering::Relaxed);
                self.shared.tasks.fetch_add(tasks, Ordering::Relaxed);
                let sent_us = unix_us();
                for r in &mut results {
                    r.sent_us = sent_us;
                }
                self.send_message(aio, &poll(results));
            }
            DaemonMessage::Reregister => {
                self.shared.reregistered.fetch_add(1, Ordering::Relaxed);
                self.send(aio, &self.hello);
            }
            DaemonMessage::Shutdown => {
                self.shared.shutdowns.fetch_add(1, Ordering::Relaxed);
            }
            DaemonMessage::Refused { reason } => {
                self.shared.fail(self.index, format!("refused: {reason}"));
            }
            DaemonMessage::ProbeOk => {
                self.shared
                    .fail(self.index, "unexpected ProbeOk".to_owned());
            }
        }
    }
}

/// A REQ socket set up as the real worker sets up its own.
fn worker_socket() -> anyhow::Result<Socket> {
    let socket = Socket::new(Protocol::Req0).context("cannot create a REQ socket")?;
    // Long-polls are held on purpose; REQ's resend timer would duplicate them.
    socket
        .set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
        .context("cannot disable request resends")?;
    socket
        .set_opt::<nng::options::RecvMaxSize>(DEFAULT_MAX_FRAME_BYTES)
        .context("cannot set the frame cap")?;
    socket
        .set_opt::<nng::options::transport::tcp::NoDelay>(true)
        .context("cannot set TCP_NODELAY")?;
    Ok(socket)
}

impl SimPool {
    /// Opens `cfg.count` connections, at most `cfg.window` of them
    /// registering at once, and sends each one's `Hello` at once (nng holds
    /// it until the connection is up). The first connection is dialled
    /// synchronously, so an unreachable daemon is reported with nng's own
    /// error; the others in the background. Returns once every connection
    /// is open; [`SimPool::wait_registered`] waits for the last `Welcome`.
    /// Fails on the first connection that fails, naming it and the error,
    /// or when `cfg.register_limit` passes.
    pub fn connect(cfg: &SimConfig) -> anyhow::Result<SimPool> {
        let shared = Arc::new(Shared {
            count: cfg.count,
            ..Shared::default()
        });
        let started = Instant::now();
        let deadline = started + cfg.register_limit;
        let mut pool = SimPool {
            conns: Vec::with_capacity(cfg.count),
            shared: shared.clone(),
            started,
            dialled: Duration::ZERO,
        };
        let host = "simulated".to_owned();
        for index in 0..cfg.count {
            // Wait for room in the window (bounded by the deadline).
            loop {
                let stats = pool.stats();
                if stats.failed > 0 {
                    bail!(
                        "{} of {} simulated workers failed while registering: {}",
                        stats.failed,
                        cfg.count,
                        stats.errors.join("; ")
                    );
                }
                if index < stats.registered + cfg.window.max(1) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "only {} of {} simulated workers registered within {:?}",
                        stats.registered,
                        cfg.count,
                        cfg.register_limit
                    );
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            let socket = worker_socket()?;
            let dialled = if index == 0 {
                socket.dial(&cfg.url)
            } else {
                socket.dial_async(&cfg.url)
            };
            dialled.with_context(|| {
                format!(
                    "simulated worker {index} of {}: cannot connect to {}",
                    cfg.count, cfg.url
                )
            })?;
            let ctx = Context::new(&socket)
                .with_context(|| format!("simulated worker {index}: cannot open a context"))?;
            let hello = encode(&WorkerMessage::Hello(Hello {
                worker_id: format!("{}-{index}", cfg.id_prefix),
                block_id: None,
                host: host.clone(),
                node: None,
                rank: None,
                pid: std::process::id(),
                slots: 1,
                servables: vec!["noop".to_owned()],
                secret: cfg.secret.clone().into(),
                ends_at_unix_s: None,
                running: Vec::new(),
            }))
            .context("cannot encode the hello")?;
            let conn = Arc::new(Conn {
                index,
                socket,
                ctx,
                hello,
                shared: shared.clone(),
                started,
            });
            let in_callback = conn.clone();
            let aio = Aio::new(move |aio, result| in_callback.on_event(aio, result))
                .with_context(|| format!("simulated worker {index}: cannot create an aio"))?;
            aio.set_timeout(Some(cfg.reply_timeout))
                .with_context(|| format!("simulated worker {index}: cannot set the timeout"))?;
            conn.send(&aio, &conn.hello);
            pool.conns.push((conn, aio));
        }
        pool.dialled = started.elapsed();
        Ok(pool)
    }

    /// How long opening every connection took (from the first dial to the
    /// last dial started).
    pub fn dial_time(&self) -> Duration {
        self.dialled
    }

    /// Waits until every worker has been welcomed, or fails at `limit` or
    /// at the first failed connection. Returns the time from the first dial
    /// to the last `Welcome`.
    pub fn wait_registered(&self, limit: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.stats();
            if stats.registered >= self.shared.count {
                let us = self.shared.all_registered_us.load(Ordering::Acquire);
                return Ok(if us > 0 {
                    Duration::from_micros(us)
                } else {
                    self.age()
                });
            }
            if stats.failed > 0 {
                bail!(
                    "{} of {} simulated workers failed while registering: {}",
                    stats.failed,
                    self.shared.count,
                    stats.errors.join("; ")
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {} of {} simulated workers registered within {:?}",
                    stats.registered,
                    self.shared.count,
                    limit
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> SimStats {
        let s = &self.shared;
        SimStats {
            registered: s.registered.load(Ordering::Acquire),
            tasks: s.tasks.load(Ordering::Acquire),
            batches: s.batches.load(Ordering::Acquire),
            heartbeats: s.heartbeats.load(Ordering::Acquire),
            reregistered: s.reregistered.load(Ordering::Acquire),
            shutdowns: s.shutdowns.load(Ordering::Acquire),
            failed: s.failed.load(Ordering::Acquire),
            errors: s
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Time since the first dial.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for SimPool {
    fn drop(&mut self) {
        // Pending operations end with `Closed`, which the callbacks ignore
        // (they start nothing new). Waiting for each aio before dropping it
        // means no callback is running when the last handle goes: an aio
        // freed from inside its own callback would wait for itself.
        self.shared.closing.store(true, Ordering::Release);
        for (conn, _) in &self.conns {
            conn.socket.close();
        }
        for (_, aio) in &self.conns {
            aio.cancel();
            aio.wait();
        }
        self.conns.clear();
    }
}
