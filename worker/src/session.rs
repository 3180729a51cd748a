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
//! Results stay in memory until the daemon has acknowledged them, so a
//! daemon restart or a dropped connection costs a resend, never a result.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_protocol::interchange::{BatchResult, DaemonMessage, Hello, WorkerMessage};
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, FrameError, decode, encode};
use nng::options::{Options, RecvMaxSize};
use nng::{Aio, AioResult, Context, Message, Protocol, Socket};

use crate::executor::Executor;

/// How the session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The daemon said to shut down.
    Shutdown,
    /// The daemon process this worker belongs to has exited.
    DaemonExited,
    /// No answer from the daemon for longer than the configured limit.
    Lost(Duration),
    /// The daemon refused this worker.
    Refused(String),
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaneName {
    Poll,
    Report,
}

enum Event {
    Reply(LaneName, Result<Message, nng::Error>),
    Done(BatchResult),
}

impl From<BatchResult> for Event {
    fn from(r: BatchResult) -> Self {
        Event::Done(r)
    }
}

struct Lane {
    ctx: Context,
    aio: Aio,
    busy: bool,
}

impl Lane {
    fn new(socket: &Socket, name: LaneName, tx: Sender<Event>) -> anyhow::Result<Lane> {
        let ctx = Context::new(socket).context("cannot open an nng context")?;
        let cb_ctx = ctx.clone();
        let aio = Aio::new(move |aio, result| match result {
            AioResult::Send(Ok(())) => {
                if let Err(e) = cb_ctx.recv(&aio) {
                    let _ = tx.send(Event::Reply(name, Err(e)));
                }
            }
            AioResult::Send(Err((_, e))) | AioResult::Recv(Err(e)) => {
                let _ = tx.send(Event::Reply(name, Err(e)));
            }
            AioResult::Recv(Ok(msg)) => {
                let _ = tx.send(Event::Reply(name, Ok(msg)));
            }
            AioResult::Sleep(_) => {}
        })
        .context("cannot create an nng aio")?;
        Ok(Lane {
            ctx,
            aio,
            busy: false,
        })
    }

    fn send(&mut self, message: &WorkerMessage, timeout: Duration) -> anyhow::Result<()> {
        let bytes = encode(message).context("cannot encode a message for the daemon")?;
        self.aio
            .set_timeout(Some(timeout))
            .context("cannot set a timeout")?;
        match self.ctx.send(&self.aio, Message::from(&bytes[..])) {
            Ok(()) => {
                self.busy = true;
                Ok(())
            }
            Err((_, e)) => Err(anyhow::anyhow!("cannot send to the daemon: {e}")),
        }
    }
}

/// Runs the worker until the daemon lets it go (or is lost).
pub fn run(cfg: &SessionConfig) -> anyhow::Result<Ending> {
    let socket = Socket::new(Protocol::Req0).context("cannot create the worker socket")?;
    // Long-polls are held on purpose; REQ's resend timer would duplicate them.
    socket
        .set_opt::<nng::options::protocol::reqrep::ResendTime>(None)
        .context("cannot disable request resends")?;
    socket
        .set_opt::<RecvMaxSize>(DEFAULT_MAX_FRAME_BYTES)
        .context("cannot set the frame cap")?;
    socket
        .set_opt::<nng::options::transport::tcp::NoDelay>(true)
        .context("cannot set TCP_NODELAY")?;
    socket
        .dial_async(&cfg.url)
        .with_context(|| format!("cannot dial {}", cfg.url))?;

    let (tx, rx) = channel::<Event>();
    let mut poll = Lane::new(&socket, LaneName::Poll, tx.clone())?;
    let mut report = Lane::new(&socket, LaneName::Report, tx.clone())?;
    let executor = Executor::start(cfg.slots, tx).context("cannot start the slot threads")?;
    let mut session = Session {
        cfg,
        registered: false,
        timeout: Duration::from_secs(20),
        pending: Vec::new(),
        in_flight: Vec::new(),
        last_contact: Instant::now(),
        executor,
    };
    session.run(&rx, &mut poll, &mut report)
}

struct Session<'a> {
    cfg: &'a SessionConfig,
    registered: bool,
    timeout: Duration,
    pending: Vec<BatchResult>,
    in_flight: Vec<BatchResult>,
    last_contact: Instant,
    executor: Executor,
}

impl Session<'_> {
    fn run(
        &mut self,
        rx: &Receiver<Event>,
        poll: &mut Lane,
        report: &mut Lane,
    ) -> anyhow::Result<Ending> {
        let mut next_pid_check = Instant::now();
        loop {
            self.issue_requests(poll, report)?;
            match rx.recv_timeout(Duration::from_millis(250)) {
                // Results finished while a report is in flight wait in
                // `pending` and leave together in the next one.
                Ok(Event::Done(result)) => self.pending.push(result),
                Ok(Event::Reply(lane, result)) => {
                    let lane_state = match lane {
                        LaneName::Poll => &mut *poll,
                        LaneName::Report => &mut *report,
                    };
                    lane_state.busy = false;
                    if let Some(ending) = self.on_reply(lane, result)? {
                        return Ok(ending);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    anyhow::bail!("internal channel closed");
                }
            }
            let silent = self.last_contact.elapsed();
            if silent > self.cfg.lost_daemon_exit {
                return Ok(Ending::Lost(silent));
            }
            if let Some(pid) = self.cfg.exit_with_pid
                && Instant::now() >= next_pid_check
            {
                next_pid_check = Instant::now() + Duration::from_millis(500);
                if !process_alive(pid) {
                    return Ok(Ending::DaemonExited);
                }
            }
        }
    }

    fn issue_requests(&mut self, poll: &mut Lane, report: &mut Lane) -> anyhow::Result<()> {
        if !self.registered {
            if !report.busy {
                let hello = WorkerMessage::Hello(Hello {
                    worker_id: self.cfg.worker_id.clone(),
                    block_id: self.cfg.block_id,
                    host: self.cfg.host.clone(),
                    pid: std::process::id(),
                    slots: self.cfg.slots,
                    servables: crate::SERVABLES.iter().map(|s| (*s).to_owned()).collect(),
                    secret: self.cfg.secret.clone().into(),
                });
                report.send(&hello, self.timeout)?;
            }
            return Ok(());
        }
        if !poll.busy {
            poll.send(
                &WorkerMessage::Pull {
                    results: Vec::new(),
                    wait: true,
                },
                self.timeout,
            )?;
        }
        if !report.busy && !self.pending.is_empty() {
            self.in_flight = std::mem::take(&mut self.pending);
            let message = WorkerMessage::Pull {
                results: self.in_flight.clone(),
                wait: false,
            };
            report.send(&message, self.timeout)?;
        }
        Ok(())
    }

    /// Puts unacknowledged results back in line to be sent again.
    fn resend_in_flight(&mut self) {
        if !self.in_flight.is_empty() {
            let mut again = std::mem::take(&mut self.in_flight);
            again.append(&mut self.pending);
            self.pending = again;
        }
    }

    fn on_reply(
        &mut self,
        lane: LaneName,
        result: Result<Message, nng::Error>,
    ) -> anyhow::Result<Option<Ending>> {
        let msg = match result {
            Ok(msg) => msg,
            Err(e) => {
                if lane == LaneName::Report {
                    self.resend_in_flight();
                }
                if e != nng::Error::TimedOut {
                    tracing::debug!(lane = ?lane, error = %e, "request failed; retrying");
                } else {
                    tracing::warn!(lane = ?lane, silent_s = self.last_contact.elapsed().as_secs(), "no answer from the daemon; retrying");
                }
                return Ok(None);
            }
        };
        self.last_contact = Instant::now();
        let message = match decode::<DaemonMessage>(msg.as_slice(), DEFAULT_MAX_FRAME_BYTES) {
            Ok(m) => m,
            Err(e @ FrameError::VersionMismatch { .. }) => {
                return Ok(Some(Ending::Refused(format!(
                    "the daemon speaks another protocol version ({e}); use the same Flotilla release for both"
                ))));
            }
            Err(e) => {
                tracing::error!(error = %e, "daemon reply not understood; registering again");
                self.registered = false;
                if lane == LaneName::Report {
                    self.resend_in_flight();
                }
                return Ok(None);
            }
        };
        match message {
            DaemonMessage::Welcome {
                heartbeat_period_ms,
                heartbeat_threshold_ms,
            } => {
                self.registered = true;
                // A held poll comes back within one period; allow the
                // threshold before calling it lost.
                self.timeout =
                    Duration::from_millis(heartbeat_threshold_ms.max(heartbeat_period_ms + 1000));
                tracing::info!(
                    url = %self.cfg.url,
                    worker = %self.cfg.worker_id,
                    slots = self.cfg.slots,
                    heartbeat_period_ms,
                    "registered with the daemon"
                );
            }
            DaemonMessage::Refused { reason } => return Ok(Some(Ending::Refused(reason))),
            DaemonMessage::Work { batches } => {
                if lane == LaneName::Report {
                    self.in_flight.clear();
                }
                for batch in batches {
                    self.executor.submit(batch);
                }
            }
            DaemonMessage::Reregister => {
                if self.registered {
                    tracing::info!(
                        "the daemon does not know this worker (it restarted?); registering again"
                    );
                }
                self.registered = false;
                if lane == LaneName::Report {
                    self.resend_in_flight();
                }
            }
            DaemonMessage::Shutdown => return Ok(Some(Ending::Shutdown)),
        }
        Ok(None)
    }
}

fn process_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}
