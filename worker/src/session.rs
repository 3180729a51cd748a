//! One worker's conversation with its daemon.
//!
//! The worker holds two request lanes on one REQ socket (two nng contexts):
//!
//! * the *poll* lane always carries a long-poll (`Pull { wait: true }`); the
//!   daemon answers it with work, or empty after a heartbeat period, which is
//!   also how the worker knows the daemon is alive;
//! * the *report* lane carries `Hello`, then finished results as soon as
//!   there are any (`Pull { wait: false }`); its answer may hold more work.
//!
//! The session state sits behind one lock and is driven directly by whoever
//! has news: nng's callback threads when a reply arrives (work goes straight
//! to the slots, the next request goes straight out) and the slot threads
//! when a batch finishes (its results go straight out if the report lane is
//! free). No thread relays messages for another, so a request costs no
//! wake-ups beyond the slot that runs it. The main thread only watches for
//! the end: a shutdown, a refusal, a lost daemon.
//!
//! Results stay in memory until the daemon has acknowledged them, so a
//! daemon restart or a dropped connection costs a resend, never a result.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_protocol::TaskId;
use flotilla_protocol::interchange::{BatchId, BatchResult, DaemonMessage, Hello, WorkerMessage};
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, FrameError, decode, encode};
use nng::{Aio, AioResult, Context, Message, Socket};

use crate::exec::ExecRuntime;
use crate::executor::Executor;

/// How the session ended.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Ending {
    /// The daemon said to shut down.
    Shutdown,
    /// The daemon process this worker belongs to has exited.
    DaemonExited,
    /// No answer from the daemon for longer than the configured limit.
    Lost(Duration),
    /// The daemon refused this worker.
    Refused(String),
    /// Its job's wall time is nearly over: it finished its tasks and left.
    WalltimeOver,
    /// The socket failed in a way retrying cannot fix.
    Failed(String),
}

/// Everything a session needs.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// `tcp://HOST:PORT` of the daemon's interchange.
    pub url: String,
    /// The daemon's secret.
    pub secret: Vec<u8>,
    /// This worker's id.
    pub worker_id: String,
    /// Block it belongs to.
    pub block_id: Option<u32>,
    /// Batches run at once.
    pub slots: u32,
    /// Give up after this long without the daemon.
    pub lost_daemon_exit: Duration,
    /// Exit as soon as this process is gone (local blocks).
    pub exit_with_pid: Option<i32>,
    /// Host name for the hello.
    pub host: String,
    /// Node name from the launcher.
    pub node: Option<String>,
    /// Rank within the block from the launcher.
    pub rank: Option<u32>,
    /// The daemon's object store (published servables' files).
    pub objects: Option<std::path::PathBuf>,
    /// How servables that name an image are run (no runtime: on the host).
    pub containers: Option<flotilla_launchers::Container>,
    /// When the worker's job ends (Unix seconds), if known.
    pub job_end_unix_s: Option<u64>,
    /// The worker stops taking tasks and leaves this long before the end.
    pub walltime_margin: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaneName {
    Poll,
    Report,
}

struct Lane {
    ctx: Context,
    aio: Aio,
    busy: bool,
}

type SessionSlot = Arc<OnceLock<Weak<Session>>>;

impl Lane {
    fn new(socket: &Socket, name: LaneName, session: SessionSlot) -> anyhow::Result<Lane> {
        let ctx = Context::new(socket).context("cannot open an nng context")?;
        let cb_ctx = ctx.clone();
        let aio = Aio::new(move |aio, result| {
            let reply = match result {
                AioResult::Send(Ok(())) => match cb_ctx.recv(&aio) {
                    Ok(()) => return,
                    Err(e) => Err(e),
                },
                AioResult::Send(Err((_, e))) | AioResult::Recv(Err(e)) => Err(e),
                AioResult::Recv(Ok(msg)) => Ok(msg),
                AioResult::Sleep(_) => return,
            };
            if let Some(session) = session.get().and_then(Weak::upgrade) {
                session.on_reply(name, reply);
            }
        })
        .context("cannot create an nng aio")?;
        Ok(Lane {
            ctx,
            aio,
            busy: false,
        })
    }

    fn send(&mut self, message: &WorkerMessage, timeout: Duration) -> Result<(), String> {
        let bytes = encode(message).map_err(|e| e.to_string())?;
        self.aio
            .set_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        self.ctx
            .send(&self.aio, Message::from(&bytes[..]))
            .map_err(|(_, e)| format!("cannot send to the daemon: {e}"))?;
        self.busy = true;
        Ok(())
    }
}

struct State {
    poll: Lane,
    report: Lane,
    registered: bool,
    timeout: Duration,
    pending: Vec<BatchResult>,
    in_flight: Vec<BatchResult>,
    /// Batches received whose results the daemon has not acknowledged yet
    /// (told to a restarted daemon in the hello, so they stay ours).
    unacked: std::collections::BTreeMap<BatchId, Vec<TaskId>>,
    /// The job's end is near: no more polls; leave once idle.
    leaving: bool,
    /// `Leave` was sent.
    left: bool,
    last_contact: Instant,
    ending: Option<Ending>,
}

struct Session {
    cfg: SessionConfig,
    state: Mutex<State>,
    ended: Condvar,
    executor: Executor,
    runtime: Arc<ExecRuntime>,
    /// Keeps the socket open for the session's life.
    _socket: Socket,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the worker on `socket` (connected to the daemon, see
/// [`crate::connect`]) until the daemon lets it go (or is lost).
pub fn run(cfg: &SessionConfig, socket: Socket) -> anyhow::Result<Ending> {
    let slot: SessionSlot = Arc::new(OnceLock::new());
    let poll = Lane::new(&socket, LaneName::Poll, slot.clone())?;
    let report = Lane::new(&socket, LaneName::Report, slot.clone())?;
    let done_slot = slot.clone();
    let work_dir = std::env::temp_dir().join(format!(
        "flotilla-worker-{}-{}",
        std::process::id(),
        cfg.worker_id.replace(['/', ' '], "_")
    ));
    let runtime = Arc::new(ExecRuntime::new(
        cfg.objects.clone(),
        work_dir,
        cfg.containers.clone(),
    ));
    let executor = Executor::start(cfg.slots, runtime.clone(), move |result| {
        if let Some(session) = done_slot.get().and_then(Weak::upgrade) {
            session.on_done(result);
        }
    })
    .context("cannot start the slot threads")?;
    let session = Arc::new(Session {
        cfg: cfg.clone(),
        state: Mutex::new(State {
            poll,
            report,
            registered: false,
            timeout: Duration::from_secs(20),
            pending: Vec::new(),
            in_flight: Vec::new(),
            unacked: std::collections::BTreeMap::new(),
            leaving: false,
            left: false,
            last_contact: Instant::now(),
            ending: None,
        }),
        ended: Condvar::new(),
        executor,
        runtime,
        _socket: socket.clone(),
    });
    let _ = slot.set(Arc::downgrade(&session));
    Ok(session.watch())
}

impl Session {
    /// The main thread: (re)issues requests and waits for the end.
    fn watch(&self) -> Ending {
        let mut state = lock(&self.state);
        loop {
            self.issue_requests(&mut state);
            if let Some(ending) = state.ending.clone() {
                return ending;
            }
            let silent = state.last_contact.elapsed();
            if silent > self.cfg.lost_daemon_exit {
                return Ending::Lost(silent);
            }
            if let Some(pid) = self.cfg.exit_with_pid
                && !process_alive(pid)
            {
                return Ending::DaemonExited;
            }
            if let Some(end) = self.cfg.job_end_unix_s {
                let now = unix_now();
                let margin = self.cfg.walltime_margin.as_secs();
                if now >= end {
                    return Ending::WalltimeOver;
                }
                if !state.leaving && now + margin >= end {
                    tracing::info!(
                        ends_in_s = end - now,
                        running_batches = state.unacked.len(),
                        "the job's wall time is nearly over: taking no more tasks, leaving once idle"
                    );
                    state.leaving = true;
                }
            }
            state = self
                .ended
                .wait_timeout(state, Duration::from_millis(250))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn finish(&self, state: &mut State, ending: Ending) {
        state.ending.get_or_insert(ending);
        self.ended.notify_all();
    }

    /// Sends whatever is due: a hello, the long-poll, pending results.
    fn issue_requests(&self, state: &mut State) {
        if state.ending.is_some() {
            return;
        }
        let timeout = state.timeout;
        let sent = if !state.registered {
            if state.report.busy {
                Ok(())
            } else {
                let running = state.unacked.iter().map(|(b, t)| (*b, t.clone())).collect();
                let hello = WorkerMessage::Hello(Hello {
                    ends_at_unix_s: self.cfg.job_end_unix_s,
                    running,
                    worker_id: self.cfg.worker_id.clone(),
                    block_id: self.cfg.block_id,
                    host: self.cfg.host.clone(),
                    node: self.cfg.node.clone(),
                    rank: self.cfg.rank,
                    pid: std::process::id(),
                    slots: self.cfg.slots,
                    servables: crate::BUILTINS
                        .iter()
                        .map(|s| (*s).to_owned())
                        .chain(std::iter::once("*".to_owned()))
                        .collect(),
                    secret: self.cfg.secret.clone().into(),
                });
                state.report.send(&hello, timeout)
            }
        } else if state.leaving && state.unacked.is_empty() && state.pending.is_empty() {
            // Idle at the end of the job: say goodbye (once).
            if state.left || state.report.busy {
                Ok(())
            } else {
                state.left = true;
                let leave = WorkerMessage::Leave {
                    reason: format!(
                        "its job's wall time ends within {} s",
                        self.cfg.walltime_margin.as_secs()
                    ),
                };
                state.report.send(&leave, timeout)
            }
        } else {
            let poll = if state.poll.busy || state.leaving {
                Ok(())
            } else {
                state.poll.send(
                    &WorkerMessage::Pull {
                        results: Vec::new(),
                        wait: true,
                    },
                    timeout,
                )
            };
            poll.and_then(|()| {
                if state.report.busy || state.pending.is_empty() {
                    return Ok(());
                }
                state.in_flight = std::mem::take(&mut state.pending);
                let sent_us = unix_now_us();
                for result in &mut state.in_flight {
                    result.sent_us = sent_us;
                }
                let message = WorkerMessage::Pull {
                    results: state.in_flight.clone(),
                    wait: false,
                };
                state.report.send(&message, timeout)
            })
        };
        if let Err(e) = sent {
            self.finish(state, Ending::Failed(e));
        }
    }

    /// A slot finished a batch.
    fn on_done(&self, result: BatchResult) {
        tracing::debug!(batch = result.batch.0, run_us = result.run_us, "batch done");
        let mut state = lock(&self.state);
        state.pending.push(result);
        self.issue_requests(&mut state);
    }

    /// Puts unacknowledged results back in line to be sent again.
    fn resend_in_flight(state: &mut State) {
        if !state.in_flight.is_empty() {
            let mut again = std::mem::take(&mut state.in_flight);
            again.append(&mut state.pending);
            state.pending = again;
        }
    }

    /// A reply (or a failure) arrived on `lane`.
    fn on_reply(&self, lane: LaneName, reply: Result<Message, nng::Error>) {
        let mut state = lock(&self.state);
        match lane {
            LaneName::Poll => state.poll.busy = false,
            LaneName::Report => state.report.busy = false,
        }
        match reply {
            Ok(msg) => {
                state.last_contact = Instant::now();
                self.on_message(&mut state, lane, &msg);
            }
            Err(e) => {
                if lane == LaneName::Report {
                    Self::resend_in_flight(&mut state);
                }
                match e {
                    nng::Error::Closed => return,
                    nng::Error::TimedOut => tracing::warn!(
                        lane = ?lane,
                        silent_s = state.last_contact.elapsed().as_secs(),
                        "no answer from the daemon; retrying"
                    ),
                    other => {
                        tracing::debug!(lane = ?lane, error = %other, "request failed; retrying")
                    }
                }
                // Retry from the watching thread, not in a tight loop here.
                self.ended.notify_all();
                return;
            }
        }
        self.issue_requests(&mut state);
    }

    fn on_message(&self, state: &mut State, lane: LaneName, msg: &Message) {
        let message = match decode::<DaemonMessage>(msg.as_slice(), DEFAULT_MAX_FRAME_BYTES) {
            Ok(m) => m,
            Err(e @ FrameError::VersionMismatch { .. }) => {
                let reason = format!(
                    "the daemon speaks another protocol version ({e}); use the same Flotilla release for both"
                );
                return self.finish(state, Ending::Refused(reason));
            }
            Err(e) => {
                tracing::error!(error = %e, "daemon reply not understood; registering again");
                state.registered = false;
                if lane == LaneName::Report {
                    Self::resend_in_flight(state);
                }
                return;
            }
        };
        match message {
            DaemonMessage::Welcome {
                heartbeat_period_ms,
                heartbeat_threshold_ms,
            } => {
                state.registered = true;
                // A held poll comes back within one period; allow the
                // threshold before calling it lost.
                state.timeout =
                    Duration::from_millis(heartbeat_threshold_ms.max(heartbeat_period_ms + 1000));
                tracing::info!(
                    url = %self.cfg.url,
                    worker = %self.cfg.worker_id,
                    slots = self.cfg.slots,
                    heartbeat_period_ms,
                    "registered with the daemon"
                );
            }
            DaemonMessage::Refused { reason } => self.finish(state, Ending::Refused(reason)),
            DaemonMessage::Work { batches } => {
                let received_us = unix_now_us();
                if lane == LaneName::Report {
                    for acked in std::mem::take(&mut state.in_flight) {
                        state.unacked.remove(&acked.batch);
                    }
                }
                for batch in batches {
                    state
                        .unacked
                        .insert(batch.id, batch.items.iter().map(|i| i.task).collect());
                    if let Some(record) = &batch.spec {
                        self.runtime.learn(record);
                    }
                    tracing::debug!(batch = batch.id.0, servable = %batch.servable, inputs = batch.items.len(), lane = ?lane, "batch received");
                    self.executor.submit(batch, received_us);
                }
            }
            DaemonMessage::Reregister => {
                if state.registered {
                    tracing::info!(
                        "the daemon does not know this worker (it restarted?); registering again"
                    );
                }
                state.registered = false;
                if lane == LaneName::Report {
                    Self::resend_in_flight(state);
                }
            }
            DaemonMessage::Shutdown if state.left => self.finish(state, Ending::WalltimeOver),
            DaemonMessage::Shutdown => self.finish(state, Ending::Shutdown),
            DaemonMessage::ProbeOk => {
                tracing::debug!("a late probe answer; ignored");
            }
        }
    }
}

/// Microseconds since the Unix epoch, for the timestamps results carry.
fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn process_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}
