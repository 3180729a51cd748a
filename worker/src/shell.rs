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

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flotilla_protocol::interchange::BatchResult;
use flotilla_protocol::secure::Channel;
use flotilla_protocol::{encode, parts};
use nng::{Aio, AioResult, Context, Message, Socket};

use crate::exec::ExecRuntime;
use crate::executor::Executor;
use crate::session::{
    Action, Ending, Event, Frame, Lane, LaneError, Notice, Now, Session, SessionConfig,
};

/// How often the watching thread ticks the session when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// Longest wait for one chunk of a servable file from the daemon.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The node's cache of files fetched from the daemon (those the object
    /// store does not show this worker).
    pub cache_dir: std::path::PathBuf,
    /// The Python servables' declared environments are made with.
    pub python: String,
    /// How servables that name an image are run (no runtime: on the host).
    pub containers: Option<flotilla_launchers::Container>,
    /// Resident memory, MiB, its warm servable processes may hold; none:
    /// no limit.
    pub warm_memory_mb: Option<u64>,
    /// How ONNX servables run (sessions per slot or per worker, threads).
    pub onnx: crate::onnx::Settings,
    /// What each slot holds (devices, cores); empty: nothing.
    pub placements: Vec<flotilla_protocol::placement::SlotPlacement>,
}

/// An nng context and its aio: one request at a time.
///
/// A request larger than the daemon takes from a peer it has not registered
/// ([`parts::PREAUTH_FRAME_BYTES`]) goes out in parts (see
/// [`flotilla_protocol::parts`]): the first part is sent, and each
/// acknowledgement sends the next, until the reply to the last part, the
/// answer to the whole request, goes to the session. Parts are this lane's
/// business only; the session sees one request and one reply.
struct LaneIo {
    ctx: Context,
    aio: Aio,
    /// Which of this worker's requests the daemon joins parts into.
    stream: u32,
    /// Parts of the current request still to send, in order.
    parts: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

/// Where callbacks created before the shell find it once it exists.
type ShellLink = Arc<OnceLock<Weak<Shell>>>;

/// What became of a lane's request: the daemon's reply, or why none came.
type LaneOutcome = Result<Message, LaneError>;

impl LaneIo {
    /// A lane on `socket` whose outcomes go to `deliver` (on nng's threads).
    fn new(
        socket: &Socket,
        lane: Lane,
        deliver: impl Fn(LaneOutcome) + Send + Sync + 'static,
    ) -> anyhow::Result<LaneIo> {
        let ctx = Context::new(socket).context("cannot open an nng context")?;
        let cb_ctx = ctx.clone();
        let parts: Arc<Mutex<VecDeque<Vec<u8>>>> = Arc::default();
        let cb_parts = parts.clone();
        let aio = Aio::new(move |aio, result| {
            let event = match result {
                AioResult::Send(Ok(())) => match cb_ctx.recv(&aio) {
                    Ok(()) => return,
                    Err(e) => Err(lane_error(e)),
                },
                AioResult::Send(Err((_, e))) | AioResult::Recv(Err(e)) => Err(lane_error(e)),
                AioResult::Recv(Ok(msg)) if msg.as_slice() == parts::ACK => {
                    let next = lock_parts(&cb_parts).pop_front();
                    match next {
                        Some(part) => match cb_ctx.send(&aio, Message::from(&part[..])) {
                            Ok(()) => return,
                            Err((_, e)) => Err(lane_error(e)),
                        },
                        None => Err(LaneError::Other(
                            "the daemon acknowledged a part that was not sent".into(),
                        )),
                    }
                }
                AioResult::Recv(Ok(msg)) => Ok(msg),
                AioResult::Sleep(_) => return,
            };
            // A reply before the last part (the daemon asks the worker to
            // register again) or a failure ends the request: its other
            // parts are not sent.
            lock_parts(&cb_parts).clear();
            deliver(event);
        })
        .context("cannot create an nng aio")?;
        let stream = match lane {
            Lane::Poll => 0,
            Lane::Report => 1,
        };
        Ok(LaneIo {
            ctx,
            aio,
            stream,
            parts,
        })
    }

    /// Cancels the lane's request and waits for a callback that is
    /// running; no callback runs after it. Called on the thread that ends
    /// the session, so the last handle to the shell (and with it this aio)
    /// is never dropped inside the aio's own callback: freeing an aio from
    /// its callback waits for that callback, and the nng thread running it
    /// would wait for itself, with nng's reaper and every socket behind it.
    fn stop(&self) {
        // SAFETY: the handle is valid while `self.aio` lives, and
        // `nng_aio_stop` only cancels, waits for the callback and refuses
        // the aio new work.
        unsafe { nng::ffi::nng_aio_stop(self.aio.nng_aio()) };
    }

    /// Sends `message`, sealed with `seal` if given, in parts if it is
    /// larger than a part (the sealed frame is split: each part carries a
    /// piece of it, and the daemon opens the joined frame).
    fn send(
        &self,
        message: &flotilla_protocol::interchange::WorkerMessage,
        seal: Option<&Channel>,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut bytes = encode(message).map_err(|e| e.to_string())?;
        if let Some(channel) = seal {
            bytes = channel.seal(&bytes).map_err(|e| e.to_string())?;
        }
        self.aio
            .set_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let first = {
            let mut pending = lock_parts(&self.parts);
            pending.clear();
            if bytes.len() <= parts::PREAUTH_FRAME_BYTES {
                bytes
            } else {
                pending.extend(parts::split(
                    &bytes,
                    self.stream,
                    parts::PREAUTH_FRAME_BYTES,
                ));
                pending.pop_front().unwrap_or_default()
            }
        };
        self.ctx
            .send(&self.aio, Message::from(&first[..]))
            .map_err(|(_, e)| format!("cannot send to the daemon: {e}"))
    }
}

/// A reply in the nng message it arrived in, kept as a [`Frame`].
struct Received(Message);

impl From<Message> for Frame {
    fn from(message: Message) -> Frame {
        Frame::new(Received(message))
    }
}

impl AsRef<[u8]> for Received {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl AsMut<[u8]> for Received {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}

/// Hands a lane's outcome to the shell, once it exists.
fn deliver(link: &ShellLink, lane: Lane, outcome: LaneOutcome) {
    if let Some(shell) = link.get().and_then(Weak::upgrade) {
        match outcome {
            Ok(mut msg) => {
                let pipe = msg.pipe().map(crate::connect::pipe_key);
                shell.feed(Event::Reply {
                    lane,
                    pipe,
                    frame: Frame::from(msg),
                });
            }
            Err(error) => shell.feed(Event::LaneFailed { lane, error }),
        }
    }
}

fn lock_parts(m: &Mutex<VecDeque<Vec<u8>>>) -> MutexGuard<'_, VecDeque<Vec<u8>>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// The channel the file fetches are sealed with.
    fetch_channel: Arc<crate::fetch::ChannelSlot>,
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
    let (poll_link, report_link) = (link.clone(), link.clone());
    let poll = LaneIo::new(&socket, Lane::Poll, move |outcome| {
        deliver(&poll_link, Lane::Poll, outcome);
    })?;
    let report = LaneIo::new(&socket, Lane::Report, move |outcome| {
        deliver(&report_link, Lane::Report, outcome);
    })?;
    let done_link = link.clone();
    let warmth_link = link.clone();
    let temp = std::env::temp_dir();
    sweep_in_background(temp.clone(), cfg.session.host.clone());
    let work_dir =
        crate::work_dir::WorkDir::create(&temp, &cfg.session.worker_id, &cfg.session.host)
            .context("cannot create the worker's private directory")?;
    let max_frame = cfg.session.max_frame_bytes;
    let fetch_channel = Arc::new(crate::fetch::ChannelSlot::default());
    let source = crate::fetch::InterchangeSource::new(&socket, FETCH_TIMEOUT, max_frame)
        .context("cannot open an nng context for fetching files")?
        .sealed_by(fetch_channel.clone());
    let runtime = Arc::new(
        ExecRuntime::new(cfg.objects.clone(), work_dir, cfg.containers.clone())
            .with_slots(cfg.placements.clone())
            .with_slot_count(cfg.session.slots as usize, cfg.onnx)
            .with_environments(crate::environment::Environments::new(
                cfg.python.clone(),
                cfg.cache_dir.clone(),
                cfg.session
                    .node
                    .clone()
                    .unwrap_or_else(|| cfg.session.host.clone()),
            ))
            .with_fetcher(
                Arc::new(source),
                cfg.cache_dir.clone(),
                crate::fetch::chunk_len_for(max_frame),
            )
            .with_templates(cfg.cache_dir.clone())
            .with_verified_hashes(&cfg.cache_dir)
            .with_memory_budget(cfg.warm_memory_mb),
    );
    let executor = Executor::start(
        cfg.session.slots,
        runtime.clone(),
        move |result| {
            if stopping_took(&result) {
                return;
            }
            if let Some(shell) = done_link.get().and_then(Weak::upgrade) {
                shell.feed(Event::BatchDone(result));
            }
        },
        move |slots| {
            if let Some(shell) = warmth_link.get().and_then(Weak::upgrade) {
                shell.feed(Event::Slots(slots));
            }
        },
    )
    .context("cannot start the slot threads")?;
    let started = Instant::now();
    let session = Session::new(cfg.session.clone(), now(started))
        .proven(proven.transcript, proven.keys, proven.pipe)
        .reporting_slots(cfg.session.slots);
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
        fetch_channel,
        _socket: socket.clone(),
    });
    let _ = link.set(Arc::downgrade(&shell));
    let ending = shell.watch(cfg.exit_with_pid);
    // A lane's callback holds the shell while it runs; with both lanes
    // stopped, this is the last handle that can drop it.
    shell.poll.stop();
    shell.report.stop();
    // Slot threads still hold the runtime when the process exits, so its
    // private directory would outlive the worker without this.
    if let Err(e) = shell.runtime.remove_work_dir() {
        tracing::warn!(error = %e, "cannot remove the worker's private directory");
    }
    Ok(ending)
}

/// Removes dead workers' directories from `temp` on a thread of its own:
/// thousands of them must not hold up this worker's start.
fn sweep_in_background(temp: std::path::PathBuf, host: String) {
    let spawned = std::thread::Builder::new()
        .name("sweep-temp".into())
        .spawn(move || report_sweep(&crate::work_dir::sweep_abandoned(&temp, &host)));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread that removes dead workers' directories");
    }
}

/// Logs the directories of dead workers a sweep removed or could not.
fn report_sweep(swept: &crate::work_dir::Swept) {
    if let Some(first) = swept.removed.first() {
        tracing::info!(
            count = swept.removed.len(),
            first = %first.display(),
            "removed the private directories of workers that died on this host"
        );
    }
    for (dir, error) in &swept.failed {
        tracing::warn!(dir = %dir.display(), error = %error, "cannot remove a dead worker's private directory");
    }
}

/// Whether `result` is a failure to leave unreported because the worker
/// is stopping on a termination signal: a scheduler cancelling the job
/// signals the whole job, so the servable processes die of the same signal,
/// and their batches go back to the queue uncharged with the worker's
/// goodbye (see `Session`'s stopping), not as failed attempts.
fn stopping_took(result: &BatchResult) -> bool {
    let Some(signal) = crate::stop_signal::received() else {
        return false;
    };
    if result.failure.is_none() {
        return false;
    }
    tracing::info!(
        batch = result.batch.0,
        signal,
        "not reporting a batch that failed while the worker stops on a signal"
    );
    true
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
            let event = if let Some(signal) = crate::stop_signal::received() {
                Event::Signalled(signal)
            } else if daemon_gone {
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
    fn feed(&self, event: Event) {
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
                seal,
                timeout,
            } => {
                let io = match lane {
                    Lane::Poll => &self.poll,
                    Lane::Report => &self.report,
                };
                // File fetches follow the session's latest request: sealed
                // once it seals, in clear while it registers again.
                self.fetch_channel.set(seal.clone());
                if let Err(reason) = io.send(&message, seal.as_deref(), timeout) {
                    self.feed(Event::SendFailed { lane, reason });
                }
            }
            Action::Run { batch, received_us } => {
                if let Some(record) = &batch.spec {
                    self.runtime.learn(record);
                }
                self.executor.submit(batch, received_us, None);
            }
            Action::RunOn {
                slot,
                batch,
                received_us,
            } => {
                if let Some(record) = &batch.spec {
                    self.runtime.learn(record);
                }
                self.executor.submit(batch, received_us, Some(slot));
            }
            Action::Warm(order) => {
                if let Some(record) = &order.spec {
                    self.runtime.learn(record);
                }
                self.executor.warm(order.slot, order.servable);
            }
            Action::Release(order) => self.executor.release(order.slot, order.servable),
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

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::interchange::{BatchId, WorkerMessage};
    use flotilla_protocol::task::Outcome;
    use std::sync::mpsc;

    /// A stand-in daemon: joins parts as the real one does, acknowledging
    /// each but the last, and answers every whole request with its size;
    /// with `refuse_at`, answers that part "no" instead. Reports each whole
    /// request.
    fn fake_daemon(refuse_at: Option<usize>) -> (String, mpsc::Receiver<Vec<u8>>) {
        let (socket, port) = crate::test_support::rep_on_loopback();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut joined = Vec::new();
            let mut seen = 0;
            while let Ok(msg) = socket.recv() {
                let bytes = msg.as_slice();
                assert!(bytes.len() <= parts::PREAUTH_FRAME_BYTES);
                if !parts::is_part(bytes) {
                    let _ = tx.send(bytes.to_vec());
                    let _ = socket.send(&bytes.len().to_le_bytes()[..]);
                    continue;
                }
                seen += 1;
                if refuse_at == Some(seen) {
                    let _ = socket.send(&b"no"[..]);
                    continue;
                }
                let part = parts::parse(bytes).unwrap();
                if part.first {
                    joined.clear();
                }
                joined.extend_from_slice(part.data);
                if part.last {
                    let whole = std::mem::take(&mut joined);
                    let _ = socket.send(&whole.len().to_le_bytes()[..]);
                    let _ = tx.send(whole);
                } else {
                    let _ = socket.send(parts::ACK);
                }
            }
        });
        (format!("tcp://127.0.0.1:{port}"), rx)
    }

    fn lane(url: &str) -> (LaneIo, mpsc::Receiver<Result<Vec<u8>, LaneError>>, Socket) {
        let socket = crate::connect::worker_socket().unwrap();
        socket.dial(url).unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let io = LaneIo::new(&socket, Lane::Report, move |outcome| {
            let _ = tx
                .lock()
                .unwrap()
                .send(outcome.map(|m| m.as_slice().to_vec()));
        })
        .unwrap();
        (io, rx, socket)
    }

    fn results(bytes: usize) -> WorkerMessage {
        WorkerMessage::Pull {
            results: vec![BatchResult {
                batch: BatchId(1),
                run_us: 1,
                received_us: 0,
                sent_us: 0,
                outcomes: vec![(
                    flotilla_protocol::TaskId(1),
                    Outcome::Output(vec![9u8; bytes].into()),
                )],
                failure: None,
            }],
            wait: false,
        }
    }

    const WAIT: Duration = Duration::from_secs(20);

    /// What the shell is to its lanes: the owner of the lane, reached by
    /// the lane's callback through a weak link that it upgrades while it
    /// delivers.
    struct Owner {
        io: OnceLock<LaneIo>,
    }

    /// The owner dropped right after an answer, while the callback that
    /// delivered it may still hold it: stopped first, the lane's aio is
    /// never freed from its own callback (which hangs nng).
    #[test]
    fn an_owner_stopped_then_dropped_right_after_an_answer_ends_cleanly() {
        let (url, _whole) = fake_daemon(None);
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let socket = crate::connect::worker_socket().unwrap();
            socket.dial(&url).unwrap();
            for _ in 0..300 {
                let link: Arc<OnceLock<Weak<Owner>>> = Arc::new(OnceLock::new());
                let cb_link = link.clone();
                let (tx, replies) = mpsc::channel();
                let tx = Mutex::new(tx);
                let io = LaneIo::new(&socket, Lane::Report, move |outcome| {
                    if let Some(owner) = cb_link.get().and_then(Weak::upgrade) {
                        let _ = tx.lock().unwrap().send(outcome.is_ok());
                        drop(owner);
                    }
                })
                .unwrap();
                let owner = Arc::new(Owner {
                    io: OnceLock::new(),
                });
                let _ = owner.io.set(io);
                let _ = link.set(Arc::downgrade(&owner));
                owner
                    .io
                    .get()
                    .unwrap()
                    .send(&results(10), None, WAIT)
                    .unwrap();
                assert!(replies.recv_timeout(WAIT).unwrap());
                owner.io.get().unwrap().stop();
                drop(owner);
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(300))
            .expect("300 lanes answered, stopped and dropped within 300 s (a hang means an aio freed from its callback)");
    }

    #[test]
    fn a_request_over_the_cap_goes_in_parts_and_one_reply_comes_back() {
        let (url, whole) = fake_daemon(None);
        let (io, replies, _socket) = lane(&url);
        for size in [100, 3 * parts::PREAUTH_FRAME_BYTES + 5] {
            let message = results(size);
            let encoded = encode(&message).unwrap();
            io.send(&message, None, WAIT).unwrap();
            let reply = replies.recv_timeout(WAIT).unwrap().unwrap();
            assert_eq!(reply, encoded.len().to_le_bytes());
            assert_eq!(whole.recv_timeout(WAIT).unwrap(), encoded);
        }
        assert!(replies.try_recv().is_err(), "one reply per request");
    }

    #[test]
    fn a_reply_instead_of_an_acknowledgement_ends_the_request() {
        let (url, whole) = fake_daemon(Some(2));
        let (io, replies, _socket) = lane(&url);
        io.send(&results(3 * parts::PREAUTH_FRAME_BYTES), None, WAIT)
            .unwrap();
        assert_eq!(replies.recv_timeout(WAIT).unwrap().unwrap(), b"no");
        assert!(lock_parts(&io.parts).is_empty(), "the rest is not sent");
        // The lane is free again: the next request goes out whole.
        let small = results(10);
        io.send(&small, None, WAIT).unwrap();
        replies.recv_timeout(WAIT).unwrap().unwrap();
        assert_eq!(whole.recv_timeout(WAIT).unwrap(), encode(&small).unwrap());
    }
}
