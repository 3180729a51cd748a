//! The real worker around its [`Session`]: nng lanes, slot threads and a
//! watching thread, carrying out what the session decides.
//!
//! The session sits behind one lock and is driven directly by whoever has
//! news: nng's callback threads when a reply arrives, the slot threads when
//! a batch finishes. Each takes the lock, feeds its event, releases the lock
//! and carries out the actions (work straight to the slots, the next request
//! straight out). No thread relays messages for another, so a request costs
//! no wake-ups beyond the slot that runs it. The main thread only ticks the
//! session's timer and waits for the end.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_protocol::encode;
use nng::{Aio, AioResult, Context, Message, Socket};

use crate::exec::ExecRuntime;
use crate::executor::Executor;
use crate::session::{Action, Ending, Event, Lane, LaneError, Notice, Now, Session, SessionConfig};

/// How often the watching thread ticks the session when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);

/// Everything the real worker needs to run a session.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// What the session itself needs.
    pub session: SessionConfig,
    /// `tcp://HOST:PORT` of the daemon's interchange (for logs).
    pub url: String,
    /// Exit as soon as this process is gone (local blocks).
    pub exit_with_pid: Option<i32>,
    /// The daemon's object store (published servables' files).
    pub objects: Option<std::path::PathBuf>,
    /// How servables that name an image are run (no runtime: on the host).
    pub containers: Option<flotilla_launchers::Container>,
}

/// An nng context and its aio: one request at a time.
struct LaneIo {
    ctx: Context,
    aio: Aio,
}

/// Where callbacks created before the shell find it once it exists.
type ShellLink = Arc<OnceLock<Weak<Shell>>>;

impl LaneIo {
    fn new(socket: &Socket, lane: Lane, link: ShellLink) -> anyhow::Result<LaneIo> {
        let ctx = Context::new(socket).context("cannot open an nng context")?;
        let cb_ctx = ctx.clone();
        let aio = Aio::new(move |aio, result| {
            let event = match result {
                AioResult::Send(Ok(())) => match cb_ctx.recv(&aio) {
                    Ok(()) => return,
                    Err(e) => Err(e),
                },
                AioResult::Send(Err((_, e))) | AioResult::Recv(Err(e)) => Err(e),
                AioResult::Recv(Ok(msg)) => Ok(msg),
                AioResult::Sleep(_) => return,
            };
            if let Some(shell) = link.get().and_then(Weak::upgrade) {
                match event {
                    Ok(mut msg) => shell.feed(Event::Reply {
                        lane,
                        pipe: msg.pipe().map(crate::connect::pipe_key),
                        frame: msg.as_slice(),
                    }),
                    Err(e) => shell.feed(Event::LaneFailed {
                        lane,
                        error: lane_error(e),
                    }),
                }
            }
        })
        .context("cannot create an nng aio")?;
        Ok(LaneIo { ctx, aio })
    }

    fn send(
        &self,
        message: &flotilla_protocol::interchange::WorkerMessage,
        timeout: Duration,
    ) -> Result<(), String> {
        let bytes = encode(message).map_err(|e| e.to_string())?;
        self.aio
            .set_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        self.ctx
            .send(&self.aio, Message::from(&bytes[..]))
            .map_err(|(_, e)| format!("cannot send to the daemon: {e}"))
    }
}

fn lane_error(e: nng::Error) -> LaneError {
    match e {
        nng::Error::Closed => LaneError::Closed,
        nng::Error::TimedOut => LaneError::TimedOut,
        other => LaneError::Other(other.to_string()),
    }
}

/// The session and the I/O it drives.
struct Shell {
    url: String,
    worker_id: String,
    slots: u32,
    session: Mutex<Session>,
    /// Wakes the watching thread (an ending, a retry).
    wake: Condvar,
    started: Instant,
    poll: LaneIo,
    report: LaneIo,
    executor: Executor,
    runtime: Arc<ExecRuntime>,
    /// Keeps the socket open for the session's life.
    _socket: Socket,
}

fn lock(m: &Mutex<Session>) -> MutexGuard<'_, Session> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the worker on `socket` (connected to the daemon, see
/// [`crate::connect`]) until the daemon lets it go (or is lost); its first
/// hello answers the challenge of the probe `proven`.
pub fn run(
    cfg: &WorkerConfig,
    socket: Socket,
    proven: crate::connect::Proven,
) -> anyhow::Result<Ending> {
    let link: ShellLink = Arc::new(OnceLock::new());
    let poll = LaneIo::new(&socket, Lane::Poll, link.clone())?;
    let report = LaneIo::new(&socket, Lane::Report, link.clone())?;
    let done_link = link.clone();
    let work_dir = std::env::temp_dir().join(format!(
        "flotilla-worker-{}-{}",
        std::process::id(),
        cfg.session.worker_id.replace(['/', ' '], "_")
    ));
    let runtime = Arc::new(ExecRuntime::new(
        cfg.objects.clone(),
        work_dir,
        cfg.containers.clone(),
    ));
    let executor = Executor::start(cfg.session.slots, runtime.clone(), move |result| {
        if let Some(shell) = done_link.get().and_then(Weak::upgrade) {
            shell.feed(Event::BatchDone(result));
        }
    })
    .context("cannot start the slot threads")?;
    let started = Instant::now();
    let session = Session::new(cfg.session.clone(), now(started)).proven(
        proven.worker_nonce,
        proven.daemon_nonce,
        proven.pipe,
    );
    let shell = Arc::new(Shell {
        url: cfg.url.clone(),
        worker_id: cfg.session.worker_id.clone(),
        slots: cfg.session.slots,
        session: Mutex::new(session),
        wake: Condvar::new(),
        started,
        poll,
        report,
        executor,
        runtime,
        _socket: socket.clone(),
    });
    let _ = link.set(Arc::downgrade(&shell));
    Ok(shell.watch(cfg.exit_with_pid))
}

fn now(started: Instant) -> Now {
    Now {
        since_start: started.elapsed(),
        unix_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    }
}

impl Shell {
    /// The main thread: ticks the session and waits for its end.
    fn watch(&self, exit_with_pid: Option<i32>) -> Ending {
        loop {
            let daemon_gone = exit_with_pid.is_some_and(|pid| !process_alive(pid));
            let event = if daemon_gone {
                Event::DaemonExited
            } else {
                Event::Tick
            };
            self.feed(event);
            let session = lock(&self.session);
            if let Some(ending) = session.ending() {
                return ending.clone();
            }
            // Woken early by an ending or a failed request (to retry).
            drop(
                self.wake
                    .wait_timeout(session, TICK)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// Feeds `event` to the session and carries out what it says.
    fn feed(&self, event: Event<'_>) {
        let actions = {
            let mut session = lock(&self.session);
            session.handle(event, now(self.started))
        };
        for action in actions {
            self.perform(action);
        }
    }

    fn perform(&self, action: Action) {
        match action {
            Action::Send {
                lane,
                message,
                timeout,
            } => {
                let io = match lane {
                    Lane::Poll => &self.poll,
                    Lane::Report => &self.report,
                };
                if let Err(reason) = io.send(&message, timeout) {
                    self.feed(Event::SendFailed { lane, reason });
                }
            }
            Action::Run { batch, received_us } => {
                if let Some(record) = &batch.spec {
                    self.runtime.learn(record);
                }
                self.executor.submit(batch, received_us);
            }
            Action::Notify(Notice::Registered {
                heartbeat_period_ms,
            }) => {
                tracing::info!(
                    url = %self.url,
                    worker = %self.worker_id,
                    slots = self.slots,
                    heartbeat_period_ms,
                    "registered with the daemon"
                );
            }
            Action::Notify(_) => {}
            Action::TickSoon | Action::End(_) => self.wake.notify_all(),
        }
    }
}

fn process_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}
