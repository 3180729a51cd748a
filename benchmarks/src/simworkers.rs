//! Simulated workers: many worker connections from one process, to load the
//! daemon's dispatch path without paying for thousands of worker processes.
//!
//! Each simulated worker is its own nng REQ socket with one TCP connection to
//! the daemon's interchange (the daemon tells workers apart by connection),
//! and runs the real worker's conversation: the same
//! [`flotilla_worker::session::Session`] state machine, with its two request
//! lanes (the long-poll and the report lane), its `Hello` with the daemon's
//! secret and its re-registration. Only the slot is simulated: a batch is
//! "run" at once, every item getting `Outcome::Output(nil)`, as one slot of a
//! real worker whose servable costs nothing would answer.
//!
//! Nothing here has a thread per connection: every lane has one context and
//! one asynchronous I/O handle whose callback, on nng's own threads, feeds the
//! reply to the session and carries out what it says (send the next request,
//! "run" the batch). Callbacks only count; the caller watches the counters
//! against its own deadlines. No timer ticks the sessions: a request that
//! fails or times out fails that simulated worker instead of being retried.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::unix_us;
use anyhow::{Context as _, bail};
use flotilla_protocol::interchange::{BatchResult, WorkBatch};
use flotilla_protocol::task::{NIL, Outcome};
use flotilla_protocol::{Payload, encode};
use flotilla_worker::connect::worker_socket;
use flotilla_worker::session::{
    Action, Ending, Event, Frame, Lane, LaneError, Notice, Now, Session, SessionConfig,
};
use nng::{Aio, AioResult, Context, Message, Socket};

/// How errors are kept: the first few, verbatim.
const KEPT_ERRORS: usize = 5;

/// What a [`SimWorkers`] needs to connect.
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
    /// It replaces the session's own request timeouts.
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
    /// Microseconds after the workers' start at which the last worker was
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

/// One lane's nng context and its asynchronous I/O handle.
struct LaneIo {
    ctx: Context,
    aio: Aio,
}

/// One simulated worker: its socket, its session and its lanes.
struct Conn {
    index: usize,
    socket: Socket,
    session: Mutex<Session>,
    /// Set once, right after the connection is made (the lanes' callbacks
    /// need the connection first).
    lanes: OnceLock<[LaneIo; 2]>,
    reply_timeout: Duration,
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
    /// Empty `Work` answers to the long-poll (the daemon's heartbeats).
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
pub struct SimWorkers {
    conns: Vec<Arc<Conn>>,
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

/// A slot whose servable costs nothing: every input's output is nil.
fn run_at_once(batch: &WorkBatch, received_us: u64) -> BatchResult {
    BatchResult {
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
    }
}

impl Conn {
    fn now(&self) -> Now {
        Now {
            since_start: self.started.elapsed(),
            unix_us: unix_us(),
        }
    }

    /// A lane's callback: a request went out (wait for its reply), or its
    /// reply or failure came.
    fn on_lane(&self, lane: Lane, aio: &Aio, result: AioResult) {
        if self.shared.closing.load(Ordering::Acquire) {
            return;
        }
        match result {
            AioResult::Send(Ok(())) => {
                if let Some(io) = self.lane(lane)
                    && let Err(e) = io.ctx.recv(aio)
                {
                    self.shared.fail(self.index, format!("cannot receive: {e}"));
                }
            }
            AioResult::Send(Err((_, e))) | AioResult::Recv(Err(e)) => {
                let error = match e {
                    nng::Error::Closed => LaneError::Closed,
                    nng::Error::TimedOut => LaneError::TimedOut,
                    other => LaneError::Other(other.to_string()),
                };
                if error != LaneError::Closed {
                    self.shared
                        .fail(self.index, format!("no reply from the daemon: {e}"));
                }
                self.feed(Event::LaneFailed { lane, error });
            }
            AioResult::Recv(Ok(msg)) => self.feed(Event::Reply {
                lane,
                // One connection per simulated worker.
                pipe: None,
                frame: Frame::from(msg),
            }),
            AioResult::Sleep(_) => {}
        }
    }

    fn lane(&self, lane: Lane) -> Option<&LaneIo> {
        let [poll, report] = self.lanes.get()?;
        Some(match lane {
            Lane::Poll => poll,
            Lane::Report => report,
        })
    }

    /// Feeds `event` to the session and carries out what it says.
    fn feed(&self, event: Event) {
        let now = self.now();
        let actions = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .handle(event, now);
        for action in actions {
            self.perform(action);
        }
    }

    fn perform(&self, action: Action) {
        match action {
            Action::Send {
                lane,
                message,
                seal,
                ..
            } => {
                let wire =
                    encode(&message)
                        .map_err(|e| e.to_string())
                        .and_then(|bytes| match &seal {
                            Some(channel) => channel.seal(&bytes).map_err(|e| e.to_string()),
                            None => Ok(bytes),
                        });
                let sent = match (self.lane(lane), wire) {
                    (None, _) => Err("the lane is not open".to_owned()),
                    (_, Err(e)) => Err(format!("cannot encode: {e}")),
                    (Some(io), Ok(bytes)) => io
                        .aio
                        .set_timeout(Some(self.reply_timeout))
                        .map_err(|e| format!("cannot set the timeout: {e}"))
                        .and_then(|()| {
                            io.ctx
                                .send(&io.aio, Message::from(&bytes[..]))
                                .map_err(|(_, e)| format!("cannot send: {e}"))
                        }),
                };
                if let Err(reason) = sent {
                    self.feed(Event::SendFailed { lane, reason });
                }
            }
            Action::Run { batch, received_us } => {
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .tasks
                    .fetch_add(batch.items.len() as u64, Ordering::Relaxed);
                self.feed(Event::BatchDone(run_at_once(&batch, received_us)));
            }
            Action::Notify(Notice::Registered { .. }) => {
                let now = self.shared.registered.fetch_add(1, Ordering::AcqRel) + 1;
                if now == self.shared.count {
                    let us = self.started.elapsed().as_micros() as u64;
                    self.shared.all_registered_us.store(us, Ordering::Release);
                }
            }
            Action::Notify(Notice::Heartbeat) => {
                self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Action::Notify(Notice::ReregisterAsked) => {
                self.shared.reregistered.fetch_add(1, Ordering::Relaxed);
            }
            // A failed request already failed this simulated worker.
            // Simulated workers do not report their slots, so the daemon
            // never places batches or sends warm-up orders to them.
            Action::RunOn { .. } | Action::Warm(_) | Action::Release(_) => {}
            Action::TickSoon => {}
            Action::End(Ending::Shutdown) => {
                self.shared.shutdowns.fetch_add(1, Ordering::Relaxed);
            }
            Action::End(Ending::Refused(reason)) => {
                self.shared.fail(self.index, format!("refused: {reason}"));
            }
            Action::End(other) => self.shared.fail(self.index, format!("ended: {other:?}")),
        }
    }
}

/// A lane of `conn`, its callback feeding `conn`'s session (through a weak
/// link: the connection owns its lanes).
fn lane_io(conn: &Arc<Conn>, lane: Lane) -> anyhow::Result<LaneIo> {
    let index = conn.index;
    let ctx = Context::new(&conn.socket)
        .with_context(|| format!("simulated worker {index}: cannot open a context"))?;
    let link: Weak<Conn> = Arc::downgrade(conn);
    let aio = Aio::new(move |aio, result| {
        if let Some(conn) = link.upgrade() {
            conn.on_lane(lane, &aio, result);
        }
    })
    .with_context(|| format!("simulated worker {index}: cannot create an aio"))?;
    Ok(LaneIo { ctx, aio })
}

impl SimWorkers {
    /// Opens `cfg.count` connections, at most `cfg.window` of them
    /// registering at once, and sends each one's `Hello` at once (nng holds
    /// it until the connection is up). The first connection is dialled
    /// synchronously, so an unreachable daemon is reported with nng's own
    /// error; the others in the background. Returns once every connection
    /// is open; [`SimWorkers::wait_registered`] waits for the last `Welcome`.
    /// Fails on the first connection that fails, naming it and the error,
    /// or when `cfg.register_limit` passes.
    pub fn connect(cfg: &SimConfig) -> anyhow::Result<SimWorkers> {
        let shared = Arc::new(Shared {
            count: cfg.count,
            ..Shared::default()
        });
        let started = Instant::now();
        let deadline = started + cfg.register_limit;
        let mut sim = SimWorkers {
            conns: Vec::with_capacity(cfg.count),
            shared: shared.clone(),
            started,
            dialled: Duration::ZERO,
        };
        let host = "simulated".to_owned();
        for index in 0..cfg.count {
            // Wait for room in the window (bounded by the deadline).
            loop {
                let stats = sim.stats();
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
            let session = Session::new(
                SessionConfig {
                    secret: cfg.secret.clone(),
                    nonce_seed: sim_seed(index),
                    max_frame_bytes: flotilla_protocol::DEFAULT_MAX_FRAME_BYTES,
                    // What a real worker on this machine offers.
                    ciphers: flotilla_protocol::secure::Cipher::fast_here(),
                    worker_id: format!("{}-{index}", cfg.id_prefix),
                    block_id: None,
                    host: host.clone(),
                    node: None,
                    rank: None,
                    pid: std::process::id(),
                    slots: 1,
                    slot_resources: Vec::new(),
                    servables: vec!["noop".to_owned()],
                    lost_daemon_exit: cfg.reply_timeout,
                    job_end_unix_s: None,
                    walltime_margin: Duration::ZERO,
                },
                Now {
                    since_start: started.elapsed(),
                    unix_us: unix_us(),
                },
            );
            let conn = Arc::new(Conn {
                index,
                socket,
                session: Mutex::new(session),
                lanes: OnceLock::new(),
                reply_timeout: cfg.reply_timeout,
                shared: shared.clone(),
                started,
            });
            let lanes = [Lane::Poll, Lane::Report].map(|lane| lane_io(&conn, lane));
            let [poll, report] = lanes;
            let lanes = [poll?, report?];
            let _ = conn.lanes.set(lanes);
            // The hello goes out at once; nng holds it until the
            // connection is up.
            conn.feed(Event::Tick);
            sim.conns.push(conn);
        }
        sim.dialled = started.elapsed();
        Ok(sim)
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

impl Drop for SimWorkers {
    fn drop(&mut self) {
        // Pending operations end with `Closed`, which the callbacks ignore
        // (they start nothing new). Waiting for each aio before dropping it
        // means no callback is running when the last handle goes: an aio
        // freed from inside its own callback would wait for itself.
        self.shared.closing.store(true, Ordering::Release);
        for conn in &self.conns {
            conn.socket.close();
        }
        for conn in &self.conns {
            for io in conn.lanes.get().into_iter().flatten() {
                io.aio.cancel();
                io.aio.wait();
            }
        }
        self.conns.clear();
    }
}

/// A seed for simulated worker `index`'s handshake nonces: distinct per
/// worker and per run (unpredictability does not matter here).
fn sim_seed(index: usize) -> [u8; 32] {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&unix_us().to_le_bytes());
    seed[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    seed
}
