//! One worker's conversation with its daemon, as a state machine without I/O.
//!
//! The worker holds two request *lanes* on one REQ socket (two nng
//! contexts):
//!
//! * the *poll* lane always carries a long-poll (`Pull { wait: true }`); the
//!   daemon answers it with work, or empty after a heartbeat period, which is
//!   also how the worker knows the daemon is alive;
//! * the *report* lane carries `Hello`, then finished results as soon as
//!   there are any (`Pull { wait: false }`); its answer may hold more work.
//!
//! [`Session`] decides everything: what to send on which lane, which batches
//! go to the slots, when to register again, when to leave and why the
//! conversation ended. It is fed [`Event`]s (a lane's reply or failure, a
//! finished batch, a timer tick), each with the current time, and answers
//! with [`Action`]s for its caller to carry out. The caller is the thin
//! shell in [`crate::shell`] for the real worker (nng callbacks and slot
//! threads), or the simulated workers of the benchmarks; the tests below
//! feed it by hand.
//!
//! Before it registers, the worker makes the daemon prove that it knows the
//! secret (see [`flotilla_protocol::handshake`]): a `Probe` with a fresh
//! nonce, whose `ProbeOk` must carry a valid proof, and only then the
//! `Hello` with the worker's own proof. An answer without a valid proof
//! ends the session; nothing it sent is run. Replies are only acted on when
//! they come over the connection the proof came over: nng redials a dropped
//! connection by itself, and whoever answers at the daemon's address then
//! has to prove itself again.
//!
//! The probe and its answer carry ephemeral X25519 keys, and both proofs
//! cover them: once the daemon proved itself, the session knows the
//! connection's keys (see [`flotilla_protocol::secure`]), for the cipher
//! the answer picked from those the probe offered. Its hello goes
//! in clear (it proves the secret itself), and from the answer to it on,
//! every frame is sealed both ways: the session says which [`Channel`]
//! seals each request ([`Action::Send`], whose channel the caller also
//! takes for requests of its own, the file fetches), and opens every reply
//! itself. A reply that does not open, or
//! comes in clear on the sealed connection, is not acted on: the worker
//! registers again (the daemon drops a connection that sends it a clear
//! frame after sealing it, so that is a fresh connection).
//!
//! Results stay in memory until the daemon has acknowledged them, so a
//! daemon restart or a dropped connection costs a resend, never a result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::handshake::{self, HandshakeKey, Nonce, NonceSource, Transcript};
use flotilla_protocol::interchange::{
    BatchId, BatchResult, DaemonMessage, Hello, ReleaseOrder, SlotBatch, SlotResources, SlotWarmth,
    WarmOrder, WorkBatch, WorkerMessage,
};
use flotilla_protocol::launch::{MAX_FRAME_BYTES_ENV, flag};
use flotilla_protocol::peer_text::shown;
use flotilla_protocol::secure::{self, Channel, Cipher, Ephemeral, Role, SessionKeys};
use flotilla_protocol::{FrameError, Payload, TaskId, decode, decode_shared};

/// How long a request may wait for its reply before the daemon says how
/// long it holds a long-poll (in its `Welcome`).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a worker stopping on a signal waits for the daemon to take its
/// goodbye: well within a scheduler's grace time before SIGKILL (Slurm's
/// `KillWait` defaults to 30 s).
const STOP_GRACE: Duration = Duration::from_secs(2);

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
    /// Whoever answered did not prove it knows the daemon's secret: it was
    /// sent no hello and nothing it sent was run.
    Untrusted(String),
    /// A termination signal (its number) asked the worker to stop: its job
    /// was cancelled, or a user pressed Ctrl-C.
    Signalled(i32),
}

/// What the session needs to know about its worker.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The daemon's secret (never sent: the handshake proves it).
    pub secret: Vec<u8>,
    /// Random bytes, fresh for each worker process, from which the
    /// handshake nonces are drawn.
    pub nonce_seed: [u8; 32],
    /// The largest frame this worker accepts (its socket's cap), announced
    /// in the hello so that the daemon sends nothing larger.
    pub max_frame_bytes: usize,
    /// The ciphers this machine seals fast, best first
    /// ([`flotilla_protocol::secure::Cipher::fast_here`]): the probe offers
    /// them and the daemon's answer picks one.
    pub ciphers: Vec<Cipher>,
    /// This worker's id.
    pub worker_id: String,
    /// Block it belongs to.
    pub block_id: Option<u32>,
    /// Host name for the hello.
    pub host: String,
    /// Node name from the launcher.
    pub node: Option<String>,
    /// Rank within the block from the launcher.
    pub rank: Option<u32>,
    /// Process id for the hello.
    pub pid: u32,
    /// Batches run at once.
    pub slots: u32,
    /// What each slot holds, for the hello (empty: nothing to say).
    pub slot_resources: Vec<SlotResources>,
    /// Servables it can run (`*`: any published one it is sent).
    pub servables: Vec<String>,
    /// Give up after this long without the daemon.
    pub lost_daemon_exit: Duration,
    /// When the worker's job ends (Unix seconds), if known.
    pub job_end_unix_s: Option<u64>,
    /// The worker stops taking tasks and leaves this long before the end.
    pub walltime_margin: Duration,
}

/// One of the two request lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Carries the long-poll.
    Poll,
    /// Carries `Hello`, results and `Leave`.
    Report,
}

/// Why a lane's request got no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaneError {
    /// The socket was closed (the session is over): nothing to retry.
    Closed,
    /// No reply within the request's timeout.
    TimedOut,
    /// Any other transport failure, in words.
    Other(String),
}

/// The current time, as the caller's clocks tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since the session started (silences are measured
    /// with it, so a wall-clock step cannot fake a lost daemon).
    pub since_start: Duration,
    /// Microseconds since the Unix epoch (the job's end, result stamps).
    pub unix_us: u64,
}

/// A reply as it came off the wire, owned: a sealed one is opened where
/// it lies, and the inputs of the batches it carries are slices of it
/// rather than copies (a batch of 64 Inception-sized images is 69 MB).
pub struct Frame(Box<dyn FrameBuffer>);

/// What a [`Frame`] can be kept in: any owned, writable bytes (the nng
/// message it arrived in, a `Vec` in tests).
pub trait FrameBuffer: AsRef<[u8]> + AsMut<[u8]> + Send + 'static {}

impl<T: AsRef<[u8]> + AsMut<[u8]> + Send + 'static> FrameBuffer for T {}

impl Frame {
    /// The frame held in `buffer`.
    pub fn new(buffer: impl FrameBuffer) -> Frame {
        Frame(Box::new(buffer))
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        (*self.0).as_mut()
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.as_ref().len())
    }
}

/// What happened to the session.
#[derive(Debug)]
pub enum Event {
    /// Time passed: issue whatever is due, check the silence and the wall
    /// time. The first tick sends the `Hello`.
    Tick,
    /// A lane's request was answered with this frame.
    Reply {
        /// The lane that got the reply.
        lane: Lane,
        /// The connection it came over, if the transport says (any number
        /// that tells connections apart).
        pipe: Option<u64>,
        /// The reply as it came off the wire.
        frame: Frame,
    },
    /// A lane's request failed before a reply came.
    LaneFailed {
        /// The lane whose request failed.
        lane: Lane,
        /// Why.
        error: LaneError,
    },
    /// A request could not even be handed to the socket.
    SendFailed {
        /// The lane it was for.
        lane: Lane,
        /// Why, in words.
        reason: String,
    },
    /// A slot finished a batch.
    BatchDone(BatchResult),
    /// What the slots hold warm changed (a session that reports its slots
    /// tells the daemon).
    Slots(Vec<SlotWarmth>),
    /// The daemon process the worker was told to die with is gone.
    DaemonExited,
    /// A termination signal (its number) arrived.
    Signalled(i32),
}

/// Something worth knowing that needs no action (logs, counters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The daemon welcomed the worker.
    Registered {
        /// The daemon answers a held poll at least this often.
        heartbeat_period_ms: u64,
    },
    /// An empty answer to the long-poll: the daemon is alive, no work.
    Heartbeat,
    /// The daemon does not know the worker and asked it to register again.
    ReregisterAsked,
}

/// What the caller must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send `message` on `lane`; give up waiting for the reply after
    /// `timeout`.
    Send {
        /// The lane to send on (it is free: the session keeps track).
        lane: Lane,
        /// The request.
        message: WorkerMessage,
        /// Seal the encoded request with this channel (`None`: in clear,
        /// for the handshake). Requests of the caller's own on this
        /// connection (file fetches) take the channel of the latest
        /// request.
        seal: Option<Arc<Channel>>,
        /// How long its reply may take.
        timeout: Duration,
    },
    /// Hand this batch, received at `received_us`, to the next free slot.
    Run {
        /// The batch (with the servable's record, the first time).
        batch: WorkBatch,
        /// When it arrived (µs since the Unix epoch).
        received_us: u64,
    },
    /// Hand this batch, received at `received_us`, to slot `slot` (the
    /// daemon placed it there: the slot holds its servable warm).
    RunOn {
        /// The slot.
        slot: u32,
        /// The batch (with the servable's record, the first time).
        batch: WorkBatch,
        /// When it arrived (µs since the Unix epoch).
        received_us: u64,
    },
    /// Warm a servable in a slot, in the background.
    Warm(WarmOrder),
    /// Let a slot's idle process of a servable go.
    Release(ReleaseOrder),
    /// Tick again soon (a request failed; retrying belongs to the timer,
    /// not to the failing lane's callback).
    TickSoon,
    /// For logs and counters only.
    Notify(Notice),
    /// The conversation is over.
    End(Ending),
}

/// How far the worker is with registering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// A probe is due (at the start, when asked to register again, after a
    /// failed attempt).
    Unverified,
    /// The probe carrying this nonce is out.
    Probing(Nonce),
    /// The daemon proved itself; the hello is due (the connection's keys
    /// wait in the session).
    Verified(Transcript),
    /// The hello is out.
    Greeting,
    /// Welcomed.
    Registered,
}

/// The state of one worker's conversation with its daemon.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    key: HandshakeKey,
    nonces: NonceSource,
    /// Where the ephemeral keys' secret halves come from.
    ephemerals: NonceSource,
    /// The ephemeral key of the probe that is out.
    probing_key: Option<Ephemeral>,
    /// The keys of a verified probe, for the connection the hello opens.
    verified_keys: Option<SessionKeys>,
    /// Seals and opens the connection's frames from the hello on.
    channel: Option<Arc<Channel>>,
    poll_busy: bool,
    report_busy: bool,
    registration: Registration,
    /// The connection the daemon's proof came over (`None` until then, or
    /// when the transport does not tell connections apart).
    trusted_pipe: Option<u64>,
    /// The daemon has proved itself on the current connection.
    verified: bool,
    timeout: Duration,
    /// Results not sent yet.
    pending: Vec<BatchResult>,
    /// Results sent on the report lane, waiting for its answer.
    in_flight: Vec<BatchResult>,
    /// Batches received whose results the daemon has not acknowledged yet
    /// (told to a restarted daemon in the hello, so they stay ours).
    unacked: BTreeMap<BatchId, Vec<TaskId>>,
    /// The job's end is near: no more polls; leave once idle.
    leaving: bool,
    /// `Leave` was sent.
    left: bool,
    /// A termination signal came: the worker says goodbye (so the daemon
    /// requeues its running tasks without counting the attempt) and ends
    /// by the deadline, answered or not.
    stopping: Option<Stopping>,
    last_contact: Duration,
    ending: Option<Ending>,
    /// The slots' warm servables, for a session that reports them.
    slots: Option<SlotReports>,
}

/// A worker stopping on a termination signal.
#[derive(Debug, Clone, Copy)]
struct Stopping {
    /// The signal's number.
    signal: i32,
    /// The session ends by then (time since start).
    deadline: Duration,
}

/// Reporting the slots' warm servables to the daemon.
#[derive(Debug, Default)]
struct SlotReports {
    /// What the slots hold now.
    latest: Vec<SlotWarmth>,
    /// `latest` has not been sent since it changed (or since registering).
    due: bool,
    /// A report is on the report lane, unanswered.
    in_flight: bool,
    /// The daemon has had a report since this worker registered: until
    /// then the worker holds no long-poll, so no batch is placed without
    /// knowing its slots.
    known: bool,
}

impl Session {
    /// A session that has not said anything yet; `now` starts the silence
    /// clock.
    pub fn new(cfg: SessionConfig, now: Now) -> Session {
        Session {
            key: HandshakeKey::from_secret(&cfg.secret),
            nonces: NonceSource::new(&cfg.nonce_seed, "worker probes"),
            ephemerals: NonceSource::new(&cfg.nonce_seed, "worker ephemeral keys"),
            probing_key: None,
            verified_keys: None,
            channel: None,
            cfg,
            poll_busy: false,
            report_busy: false,
            registration: Registration::Unverified,
            trusted_pipe: None,
            verified: false,
            timeout: FIRST_REQUEST_TIMEOUT,
            pending: Vec::new(),
            in_flight: Vec::new(),
            unacked: BTreeMap::new(),
            leaving: false,
            left: false,
            stopping: None,
            last_contact: now.since_start,
            ending: None,
            slots: None,
        }
    }

    /// The same session, reporting what its `slots` hold warm (starting
    /// with `slots` empty ones): the daemon then places each batch in a
    /// slot warm for its servable and asks cold slots to warm up.
    pub fn reporting_slots(mut self, slots: u32) -> Session {
        self.slots = Some(SlotReports {
            latest: vec![SlotWarmth::default(); slots as usize],
            ..SlotReports::default()
        });
        self
    }

    /// The session of a worker whose probe the daemon already answered
    /// with a valid proof over `transcript`, over connection `pipe` (see
    /// [`crate::connect`]), yielding `keys`: its first hello answers that
    /// challenge, without probing again.
    pub fn proven(
        mut self,
        transcript: Transcript,
        keys: SessionKeys,
        pipe: Option<u64>,
    ) -> Session {
        self.registration = Registration::Verified(transcript);
        self.verified_keys = Some(keys);
        self.trusted_pipe = pipe;
        self.verified = true;
        self
    }

    /// How the session ended, once it has.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        if self.ending.is_some() {
            return out;
        }
        match event {
            Event::Tick => self.on_tick(now, &mut out),
            Event::Reply { lane, pipe, frame } => {
                self.free(lane);
                self.last_contact = now.since_start;
                self.on_frame(lane, pipe, frame, now, &mut out);
                self.issue_requests(now, &mut out);
            }
            Event::LaneFailed { lane, error } => {
                if let Some(stopping) = self.stopping {
                    self.free(lane);
                    self.finish(Ending::Signalled(stopping.signal), &mut out);
                } else {
                    self.on_lane_failed(lane, error, now, &mut out);
                }
            }
            Event::SendFailed { lane, reason } => {
                self.free(lane);
                self.finish(Ending::Failed(reason), &mut out);
            }
            Event::BatchDone(result) => {
                tracing::debug!(batch = result.batch.0, run_us = result.run_us, "batch done");
                self.pending.push(result);
                self.issue_requests(now, &mut out);
            }
            Event::Slots(latest) => {
                if let Some(r) = &mut self.slots {
                    r.latest = latest;
                    r.due = true;
                }
                self.issue_requests(now, &mut out);
            }
            Event::DaemonExited => self.finish(Ending::DaemonExited, &mut out),
            Event::Signalled(signal) => self.on_signal(signal, now, &mut out),
        }
        out
    }

    fn free(&mut self, lane: Lane) {
        match lane {
            Lane::Poll => self.poll_busy = false,
            Lane::Report => self.report_busy = false,
        }
    }

    fn finish(&mut self, ending: Ending, out: &mut Vec<Action>) {
        if self.ending.is_none() {
            self.ending = Some(ending.clone());
            out.push(Action::End(ending));
        }
    }

    /// A termination signal (fed again every tick until the end): a
    /// registered worker sends its finished results and leaves, so its
    /// running tasks go back to the queue as not their fault; it ends once
    /// the daemon answers, or at the deadline.
    fn on_signal(&mut self, signal: i32, now: Now, out: &mut Vec<Action>) {
        match self.stopping {
            Some(stopping) if now.since_start >= stopping.deadline => {
                self.finish(Ending::Signalled(stopping.signal), out);
            }
            Some(_) => {}
            None if self.registration != Registration::Registered => {
                self.finish(Ending::Signalled(signal), out);
            }
            None => {
                tracing::info!(
                    signal,
                    running_batches = self.unacked.len(),
                    "stopping on a signal: telling the daemon, then exiting"
                );
                self.stopping = Some(Stopping {
                    signal,
                    deadline: now.since_start + STOP_GRACE,
                });
                self.leaving = true;
                self.issue_requests(now, out);
            }
        }
    }

    fn on_tick(&mut self, now: Now, out: &mut Vec<Action>) {
        self.issue_requests(now, out);
        if self.ending.is_some() {
            return;
        }
        let silent = now.since_start.saturating_sub(self.last_contact);
        if silent > self.cfg.lost_daemon_exit {
            return self.finish(Ending::Lost(silent), out);
        }
        if let Some(end) = self.cfg.job_end_unix_s {
            let now_s = now.unix_us / 1_000_000;
            if now_s >= end {
                return self.finish(Ending::WalltimeOver, out);
            }
            if !self.leaving && now_s + self.cfg.walltime_margin.as_secs() >= end {
                tracing::info!(
                    ends_in_s = end - now_s,
                    running_batches = self.unacked.len(),
                    "the job's wall time is nearly over: taking no more tasks, leaving once idle"
                );
                self.leaving = true;
                self.issue_requests(now, out);
            }
        }
    }

    fn on_lane_failed(&mut self, lane: Lane, error: LaneError, now: Now, out: &mut Vec<Action>) {
        self.free(lane);
        if lane == Lane::Report {
            self.resend_in_flight();
            self.slots_unanswered();
            if matches!(
                self.registration,
                Registration::Probing(_) | Registration::Greeting
            ) {
                // Start over with a fresh probe.
                self.registration = Registration::Unverified;
            }
        }
        match error {
            LaneError::Closed => return,
            LaneError::TimedOut => tracing::warn!(
                lane = ?lane,
                silent_s = now.since_start.saturating_sub(self.last_contact).as_secs(),
                "no answer from the daemon; retrying"
            ),
            LaneError::Other(error) => {
                tracing::debug!(lane = ?lane, error = %error, "request failed; retrying");
            }
        }
        out.push(Action::TickSoon);
    }

    fn send(&mut self, lane: Lane, message: WorkerMessage, out: &mut Vec<Action>) {
        match lane {
            Lane::Poll => self.poll_busy = true,
            Lane::Report => self.report_busy = true,
        }
        // The handshake goes in clear; everything after it sealed.
        let seal = match message {
            WorkerMessage::Probe { .. } | WorkerMessage::Hello(_) => None,
            _ => self.channel.clone(),
        };
        out.push(Action::Send {
            lane,
            message,
            seal,
            timeout: self.timeout,
        });
    }

    /// Seals the connection with `channel` from now on (or stops sealing).
    fn set_channel(&mut self, channel: Option<Arc<Channel>>) {
        self.channel = channel;
    }

    /// Sends whatever is due: a hello, the long-poll, pending results, or
    /// the goodbye.
    fn issue_requests(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.ending.is_some() {
            return;
        }
        if self.registration != Registration::Registered {
            if !self.report_busy {
                self.next_registration_step(out);
            }
        } else if self.leaving
            && self.pending.is_empty()
            && (self.unacked.is_empty() || self.stopping.is_some())
        {
            // Idle at the end of the job, or stopping on a signal with
            // batches still running: say goodbye (once).
            if !self.left && !self.report_busy {
                self.left = true;
                let reason = match self.stopping {
                    Some(Stopping { signal, .. }) => format!(
                        "it was stopped by signal {signal}: its job was cancelled or its node is going down"
                    ),
                    None => format!(
                        "its job's wall time ends within {} s",
                        self.cfg.walltime_margin.as_secs()
                    ),
                };
                self.send(Lane::Report, WorkerMessage::Leave { reason }, out);
            }
        } else {
            let slots_known = self.slots.as_ref().is_none_or(|r| r.known);
            if !self.poll_busy && !self.leaving && slots_known {
                let poll = WorkerMessage::Pull {
                    results: Vec::new(),
                    wait: true,
                };
                self.send(Lane::Poll, poll, out);
            }
            if !self.report_busy && !self.pending.is_empty() {
                self.in_flight = std::mem::take(&mut self.pending);
                for result in &mut self.in_flight {
                    result.sent_us = now.unix_us;
                }
                let report = WorkerMessage::Pull {
                    results: self.in_flight.clone(),
                    wait: false,
                };
                self.send(Lane::Report, report, out);
            }
            if !self.report_busy
                && let Some(r) = &mut self.slots
                && r.due
            {
                r.due = false;
                r.in_flight = true;
                let report = WorkerMessage::Slots {
                    slots: r.latest.clone(),
                };
                self.send(Lane::Report, report, out);
            }
        }
    }

    /// Sends the probe or the hello, whichever is due.
    fn next_registration_step(&mut self, out: &mut Vec<Action>) {
        match self.registration {
            Registration::Unverified => {
                // Keys of an earlier connection seal nothing any more.
                self.set_channel(None);
                let nonce = self.nonces.next_nonce();
                let ephemeral = Ephemeral::from_random(self.ephemerals.next_nonce());
                let probe = WorkerMessage::Probe {
                    nonce: Payload::copy_from_slice(&nonce),
                    public: Payload::copy_from_slice(&ephemeral.public()),
                    ciphers: self.cfg.ciphers.clone(),
                };
                self.registration = Registration::Probing(nonce);
                self.probing_key = Some(ephemeral);
                self.send(Lane::Report, probe, out);
            }
            Registration::Verified(transcript) => {
                self.registration = Registration::Greeting;
                let hello = self.hello(&transcript);
                self.send(Lane::Report, WorkerMessage::Hello(Box::new(hello)), out);
                // The answer to the hello comes sealed with the keys the
                // proof yielded.
                let channel = self
                    .verified_keys
                    .take()
                    .map(|keys| Arc::new(Channel::new(&keys, Role::Worker)));
                self.set_channel(channel);
            }
            Registration::Probing(_) | Registration::Greeting | Registration::Registered => {}
        }
    }

    /// The hello for the daemon's challenge, with this worker's proof.
    fn hello(&self, transcript: &Transcript) -> Hello {
        let cfg = &self.cfg;
        let mut hello = Hello {
            ends_at_unix_s: cfg.job_end_unix_s,
            running: self.unacked.iter().map(|(b, t)| (*b, t.clone())).collect(),
            worker_id: cfg.worker_id.clone(),
            block_id: cfg.block_id,
            host: cfg.host.clone(),
            node: cfg.node.clone(),
            rank: cfg.rank,
            pid: cfg.pid,
            slots: cfg.slots,
            servables: cfg.servables.clone(),
            challenge: Payload::copy_from_slice(&transcript.daemon_nonce),
            proof: Payload::new(),
            max_frame_bytes: cfg.max_frame_bytes as u64,
            slot_resources: cfg.slot_resources.clone(),
        };
        let proof = self.key.worker_proof(transcript, &hello);
        hello.proof = Payload::copy_from_slice(&proof);
        hello
    }

    /// Checks the daemon's answer (`nonce`, `public`, `proof`, `cipher`) to
    /// the probe carrying `worker_nonce`.
    fn on_probe_answer(
        &mut self,
        worker_nonce: Nonce,
        pipe: Option<u64>,
        (nonce, public, proof, cipher): (&[u8], &[u8], &[u8], Cipher),
        out: &mut Vec<Action>,
    ) {
        let ephemeral = self.probing_key.take();
        let verified = match (
            handshake::nonce(nonce),
            handshake::public_key(public),
            ephemeral,
        ) {
            (Some(daemon_nonce), Some(daemon_public), Some(ephemeral)) => {
                let transcript = Transcript {
                    worker_nonce,
                    daemon_nonce,
                    worker_public: ephemeral.public(),
                    daemon_public,
                };
                // The cipher is bound into the keys: an answer altered on
                // the way makes keys that open nothing of the daemon's.
                if self.key.check_daemon(&transcript, proof) {
                    secure::session_keys(&self.key, &transcript, &ephemeral, &daemon_public, cipher)
                        .ok()
                        .map(|keys| (transcript, keys))
                } else {
                    None
                }
            }
            _ => None,
        };
        match verified {
            Some((transcript, keys)) => {
                self.registration = Registration::Verified(transcript);
                self.verified_keys = Some(keys);
                self.trusted_pipe = pipe;
                self.verified = true;
            }
            None => self.distrust(
                "it answered the probe without a valid proof that it knows the daemon's secret",
                out,
            ),
        }
    }

    /// Ends the session: whoever answers is not this worker's daemon.
    fn distrust(&mut self, why: &str, out: &mut Vec<Action>) {
        let reason = format!(
            "{why} (another daemon's address, or an impostor): it was sent no hello and nothing it sent was run"
        );
        self.finish(Ending::Untrusted(reason), out);
    }

    /// A slots report got no answer: it is due again.
    fn slots_unanswered(&mut self) {
        if let Some(r) = &mut self.slots
            && r.in_flight
        {
            r.in_flight = false;
            r.due = true;
        }
    }

    /// Puts unacknowledged results back in line to be sent again.
    fn resend_in_flight(&mut self) {
        if !self.in_flight.is_empty() {
            let mut again = std::mem::take(&mut self.in_flight);
            again.append(&mut self.pending);
            self.pending = again;
        }
    }

    fn on_frame(
        &mut self,
        lane: Lane,
        pipe: Option<u64>,
        mut frame: Frame,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let clear = if secure::is_sealed(frame.as_ref()) {
            let Some(channel) = self.channel.as_ref() else {
                // Sealed with the keys of a connection given up since.
                tracing::debug!(lane = ?lane, "a sealed reply without keys to open it; ignored");
                if lane == Lane::Report {
                    self.resend_in_flight();
                }
                return;
            };
            match channel.open_in_place(frame.as_mut_slice()) {
                Ok(clear) => secure::HEADER_BYTES..secure::HEADER_BYTES + clear.len(),
                Err(e) => return self.on_unsealable(lane, &e.to_string()),
            }
        } else if self.channel.is_some() && self.trusts_reply_over(pipe) {
            return self.on_clear_when_sealed(lane, frame.as_ref(), out);
        } else {
            0..frame.as_ref().len()
        };
        let frame = Payload::from_owner(frame).slice(clear);
        match decode_shared::<DaemonMessage>(&frame, self.cfg.max_frame_bytes) {
            Ok(message) => self.on_message(lane, pipe, message, now, out),
            Err(e @ FrameError::VersionMismatch { .. }) => {
                let reason = format!(
                    "the daemon speaks another protocol version ({e}); use the same Flotilla release for both"
                );
                self.finish(Ending::Refused(reason), out);
            }
            Err(FrameError::TooLarge { len, max }) => {
                tracing::error!(
                    size = len,
                    cap = max,
                    "the daemon sent a frame larger than this worker accepts; raise the worker's cap with {} or {MAX_FRAME_BYTES_ENV}",
                    flag::MAX_FRAME_BYTES
                );
                let reason = format!(
                    "the daemon sent a frame of {len} bytes, more than this worker's cap of {max} bytes ({} or {MAX_FRAME_BYTES_ENV})",
                    flag::MAX_FRAME_BYTES
                );
                self.finish(Ending::Failed(reason), out);
            }
            Err(e) => {
                tracing::error!(error = %e, "daemon reply not understood; registering again");
                self.registration = Registration::Unverified;
                if lane == Lane::Report {
                    self.resend_in_flight();
                }
            }
        }
    }

    /// A reply on the sealed connection did not open (forged, altered,
    /// replayed): it is not acted on, and the worker registers again, on
    /// a fresh connection (the daemon drops this one when the probe comes
    /// in clear).
    fn on_unsealable(&mut self, lane: Lane, why: &str) {
        tracing::warn!(lane = ?lane, reason = %why, "a reply on the sealed connection does not open; registering again");
        self.set_channel(None);
        self.verified = false;
        self.trusted_pipe = None;
        if !matches!(self.registration, Registration::Probing(_)) {
            self.registration = Registration::Unverified;
        }
        if lane == Lane::Report {
            self.resend_in_flight();
        }
    }

    /// A reply in clear on the sealed connection: only the refusal of the
    /// hello (which the daemon sends before it seals anything) and a
    /// version refusal count; anything else is not acted on, and the
    /// worker registers again, as for a reply that does not open.
    fn on_clear_when_sealed(&mut self, lane: Lane, frame: &[u8], out: &mut Vec<Action>) {
        match decode::<DaemonMessage>(frame, self.cfg.max_frame_bytes) {
            Ok(DaemonMessage::Refused { reason })
                if self.registration == Registration::Greeting =>
            {
                self.finish(refused(&reason), out);
            }
            Err(e @ FrameError::VersionMismatch { .. }) => {
                let reason = format!(
                    "the daemon speaks another protocol version ({e}); use the same Flotilla release for both"
                );
                self.finish(Ending::Refused(reason), out);
            }
            _ => self.on_unsealable(lane, "a reply in clear on the sealed connection"),
        }
    }

    /// True if a reply over `pipe` comes from the daemon that proved
    /// itself.
    fn trusts_reply_over(&self, pipe: Option<u64>) -> bool {
        self.verified
            && match (pipe, self.trusted_pipe) {
                (Some(p), Some(t)) => p == t,
                _ => true,
            }
    }

    fn on_message(
        &mut self,
        lane: Lane,
        pipe: Option<u64>,
        message: DaemonMessage,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if let (Lane::Report, Registration::Probing(worker_nonce)) = (lane, self.registration) {
            // The answer to the probe: a proof, or a refusal; anything else
            // comes from something that is not a daemon of ours.
            return match message {
                DaemonMessage::ProbeOk {
                    nonce,
                    public,
                    proof,
                    cipher,
                } => self.on_probe_answer(
                    worker_nonce,
                    pipe,
                    (&nonce, &public, &proof, cipher),
                    out,
                ),
                DaemonMessage::Refused { reason } => self.finish(refused(&reason), out),
                other => self.distrust(
                    &format!(
                        "it answered the probe with {} instead of a proof that it knows the daemon's secret",
                        message_kind(&other)
                    ),
                    out,
                ),
            };
        }
        if !self.trusts_reply_over(pipe) {
            return self.on_unverified(lane, message, out);
        }
        match message {
            DaemonMessage::Welcome {
                heartbeat_period_ms,
                heartbeat_threshold_ms,
            } => {
                if self.registration != Registration::Greeting {
                    tracing::debug!("a welcome without a hello outstanding; ignored");
                    return;
                }
                self.registration = Registration::Registered;
                if let Some(r) = &mut self.slots {
                    r.due = true;
                    r.known = false;
                    r.in_flight = false;
                }
                // A held poll comes back within one period; allow the
                // threshold before calling it lost.
                self.timeout =
                    Duration::from_millis(heartbeat_threshold_ms.max(heartbeat_period_ms + 1000));
                out.push(Action::Notify(Notice::Registered {
                    heartbeat_period_ms,
                }));
            }
            DaemonMessage::Refused { reason } => self.finish(refused(&reason), out),
            DaemonMessage::Work { batches } => {
                let placed = batches.into_iter().map(|batch| (None, batch)).collect();
                self.on_work(lane, placed, now, out);
            }
            DaemonMessage::Assign {
                batches,
                warm,
                release,
            } => {
                for order in release {
                    out.push(Action::Release(order));
                }
                for order in warm {
                    out.push(Action::Warm(order));
                }
                let placed = batches
                    .into_iter()
                    .map(|SlotBatch { slot, batch }| (Some(slot), batch))
                    .collect();
                self.on_work(lane, placed, now, out);
            }
            // Stopping: the goodbye is out, and the daemon answers it
            // whether it knows this worker or not.
            DaemonMessage::Reregister if self.stopping.is_some() => {}
            DaemonMessage::Reregister => {
                if self.registration == Registration::Registered {
                    tracing::info!(
                        "the daemon does not know this worker (it restarted?); registering again"
                    );
                }
                out.push(Action::Notify(Notice::ReregisterAsked));
                self.restart_registration();
                if lane == Lane::Report {
                    self.resend_in_flight();
                }
            }
            DaemonMessage::Shutdown if self.left => {
                let ending = match self.stopping {
                    Some(stopping) => Ending::Signalled(stopping.signal),
                    None => Ending::WalltimeOver,
                };
                self.finish(ending, out);
            }
            DaemonMessage::Shutdown => self.finish(Ending::Shutdown, out),
            DaemonMessage::ProbeOk { .. } => {
                tracing::debug!("a late probe answer; ignored");
            }
            // Answers to fetches come on the fetching context, never on
            // the session's lanes.
            DaemonMessage::Object { .. } | DaemonMessage::ObjectUnavailable { .. } => {
                tracing::debug!(lane = ?lane, "a file chunk on a session lane; ignored");
            }
        }
    }

    /// Registration starts over with a probe, unless an attempt is already
    /// under way (its answer then carries on).
    fn restart_registration(&mut self) {
        if self.registration == Registration::Registered {
            self.registration = Registration::Unverified;
        }
    }

    /// A reply from a connection the daemon has not proved itself on: it
    /// is not acted on. A reply from a new connection means nng redialled
    /// the daemon's address: the worker registers again, proof first.
    fn on_unverified(&mut self, lane: Lane, message: DaemonMessage, out: &mut Vec<Action>) {
        if let DaemonMessage::Refused { reason } = message {
            return self.finish(refused(&reason), out);
        }
        if self.verified {
            tracing::warn!(
                lane = ?lane,
                "the connection to the daemon changed; registering again once the daemon proves itself"
            );
            self.verified = false;
            self.trusted_pipe = None;
            if !matches!(self.registration, Registration::Probing(_)) {
                self.registration = Registration::Unverified;
            }
        } else {
            tracing::warn!(
                lane = ?lane,
                answer = message_kind(&message),
                "ignoring a reply from a peer that has not proved it knows the daemon's secret"
            );
        }
        if lane == Lane::Report {
            self.resend_in_flight();
        }
    }

    /// Work from the verified daemon, each batch for its slot if the
    /// daemon named one: into the slots.
    fn on_work(
        &mut self,
        lane: Lane,
        batches: Vec<(Option<u32>, WorkBatch)>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if lane == Lane::Report {
            for acked in std::mem::take(&mut self.in_flight) {
                self.unacked.remove(&acked.batch);
            }
            if let Some(r) = &mut self.slots
                && std::mem::take(&mut r.in_flight)
            {
                r.known = true;
            }
        } else if batches.is_empty() {
            out.push(Action::Notify(Notice::Heartbeat));
        }
        for (slot, batch) in batches {
            self.unacked
                .insert(batch.id, batch.items.iter().map(|i| i.task).collect());
            tracing::debug!(batch = batch.id.0, servable = %batch.servable, inputs = batch.items.len(), lane = ?lane, "batch received");
            let received_us = now.unix_us;
            out.push(match slot {
                Some(slot) => Action::RunOn {
                    slot,
                    batch,
                    received_us,
                },
                None => Action::Run { batch, received_us },
            });
        }
    }
}

/// The end for a refusal: its reason as the peer gave it, bounded and
/// escaped (it goes to the log and the block's stderr tail).
fn refused(reason: &str) -> Ending {
    Ending::Refused(shown(reason).to_string())
}

/// A daemon message's kind, for logs and reasons (never its contents).
fn message_kind(message: &DaemonMessage) -> &'static str {
    match message {
        DaemonMessage::ProbeOk { .. } => "a probe answer",
        DaemonMessage::Welcome { .. } => "a welcome",
        DaemonMessage::Refused { .. } => "a refusal",
        DaemonMessage::Work { .. } => "work",
        DaemonMessage::Assign { .. } => "work for named slots",
        DaemonMessage::Reregister => "a request to register again",
        DaemonMessage::Shutdown => "a shutdown",
        DaemonMessage::Object { .. } => "a file chunk",
        DaemonMessage::ObjectUnavailable { .. } => "a missing file",
    }
}

#[cfg(test)]
mod tests;
