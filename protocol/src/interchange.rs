//! The worker interchange: how a worker joins the daemon and pulls work.
//!
//! A worker dials the daemon, makes it prove that it knows the per-daemon
//! secret ([`WorkerMessage::Probe`], see [`crate::handshake`]) and then
//! sends [`WorkerMessage::Hello`] with a proof of its own; the secret never
//! crosses the wire. From then on it keeps one *long-poll*
//! ([`WorkerMessage::Pull`] with `wait: true`) outstanding: the daemon answers
//! it with [`DaemonMessage::Work`] as soon as it has work for the worker, or
//! with an empty `Work` after one heartbeat period, which is the daemon's
//! heartbeat. Finished results ride on a second, non-waiting `Pull` that the
//! daemon answers at once, possibly with more work. So a busy worker costs one
//! round trip per batch of results, and an idle one a round trip per
//! heartbeat.
//!
//! Work arrives in [`WorkBatch`]es: inputs for one servable with one set of
//! parameters, meant to be run as one model call.

use serde::{Deserialize, Serialize};

use crate::servable::ServableRecord;
use crate::task::{Outcome, Payload, TaskId};

/// Identity of one batch of work, unique within a daemon's life.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
#[serde(transparent)]
pub struct BatchId(pub u64);

/// A worker introducing itself.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Hello {
    /// Worker id, unique per worker process (host, pid and a random part).
    pub worker_id: String,
    /// Block the worker belongs to, when a provider started it.
    pub block_id: Option<u32>,
    /// Host name, for status output.
    pub host: String,
    /// Node name as the scheduler knows it (`SLURMD_NODENAME`), when the
    /// launcher said.
    pub node: Option<String>,
    /// Rank within the block (0-based), when the launcher said.
    pub rank: Option<u32>,
    /// Process id, for status output.
    pub pid: u32,
    /// How many batches it runs at once.
    pub slots: u32,
    /// Servables it can run.
    pub servables: Vec<String>,
    /// The daemon's nonce from its `ProbeOk` (single use).
    pub challenge: Payload,
    /// The worker's proof that it knows the daemon's secret: a MAC over
    /// both nonces and every other field of this hello (see
    /// [`crate::handshake`]).
    pub proof: Payload,
    /// Largest frame the worker accepts: the daemon sends it no `Work`
    /// reply larger than this.
    pub max_frame_bytes: u64,
    /// When the worker's job ends (Unix seconds), if it knows: the daemon
    /// sends it no task that would not finish in time.
    pub ends_at_unix_s: Option<u64>,
    /// Batches it is running or holds results for, when it registers again
    /// (after a daemon restart): the daemon keeps them assigned to it
    /// instead of running them a second time elsewhere.
    pub running: Vec<(BatchId, Vec<TaskId>)>,
    /// What each of its slots holds (accelerators, cores), one entry per
    /// slot; empty from a worker told of none. The daemon sends a servable
    /// that needs accelerators only to workers whose slots have enough.
    #[serde(default)]
    pub slot_resources: Vec<SlotResources>,
}

/// The accelerators and cores of one of a worker's slots.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct SlotResources {
    /// Its accelerators, by the names the vendor's variable takes.
    pub devices: Vec<String>,
    /// The cores its servable processes run on, as a core list
    /// (`0-7,16`); empty: wherever the worker may run.
    pub cpus: String,
}

/// The results of one batch.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct BatchResult {
    /// The batch.
    pub batch: BatchId,
    /// Microseconds the servable spent on the whole batch.
    pub run_us: u64,
    /// When the worker received the batch (µs since the Unix epoch, the
    /// worker's clock): with `sent_us` and the daemon's own stamps it splits
    /// a request's time between network, worker and servable.
    #[serde(default)]
    pub received_us: u64,
    /// When the worker sent this result (µs since the Unix epoch, the
    /// worker's clock; stamped again if it is resent).
    #[serde(default)]
    pub sent_us: u64,
    /// One outcome per task of the batch (empty when `failure` is set).
    pub outcomes: Vec<(TaskId, Outcome)>,
    /// The call failed as a whole; no input has an outcome of its own.
    pub failure: Option<BatchFailure>,
}

/// Why a whole batch has no per-input outcomes.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct BatchFailure {
    /// What kind of failure, which decides what the daemon does next.
    pub kind: FailureKind,
    /// What happened, for the task's error.
    pub message: String,
}

/// Kinds of [`BatchFailure`].
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub enum FailureKind {
    /// The servable process died or broke the protocol, or its files could
    /// not be prepared: the tasks are retried per the retry policy.
    Crashed,
    /// The servable rejected the call as a whole: each input is retried once
    /// on its own, so one bad input cannot fail its neighbours.
    Failed,
    /// The servable cannot run here (unknown to the worker, tampered files):
    /// the tasks fail with the message.
    Unrunnable,
}

/// What a worker sends.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum WorkerMessage {
    /// Join the daemon. Answered with `Welcome` or `Refused`. Boxed: sent
    /// once per connection, it would otherwise size every message.
    Hello(Box<Hello>),
    /// Is this the right daemon? Answered with `ProbeOk` (which carries the
    /// daemon's proof, for the worker to check) or `Refused`; registers
    /// nothing, so a worker can ask every address it was given at once and
    /// keep the first that proves it knows the secret.
    Probe {
        /// A fresh random nonce of the worker's
        /// ([`crate::handshake::NONCE_LEN`] bytes).
        nonce: Payload,
        /// A fresh ephemeral X25519 public key of the worker's
        /// ([`crate::handshake::PUBLIC_LEN`] bytes), for the connection's
        /// keys (see [`crate::secure`]).
        public: Payload,
        /// The ciphers the worker seals fast, best first
        /// ([`crate::secure::Cipher::fast_here`]); the daemon picks one.
        #[serde(default)]
        ciphers: Vec<crate::secure::Cipher>,
    },
    /// The worker is leaving on its own (its job's wall time is nearly
    /// over) with nothing running: not a loss.
    Leave {
        /// Why, for the daemon's log and event stream.
        reason: String,
    },
    /// Report results and ask for work. With `wait`, the daemon holds the
    /// request until it has work or a heartbeat period passes.
    Pull {
        /// Batches finished since the last report.
        results: Vec<BatchResult>,
        /// Hold the request (long-poll) instead of answering at once.
        wait: bool,
    },
    /// Send part of a published servable file (see [`crate::objects`]):
    /// for a worker that cannot read the daemon's object store. Answered
    /// with `Object`, `ObjectUnavailable`, or `Reregister` on a connection
    /// that has not registered.
    Fetch {
        /// The file's object name (its blake3 hash, hex).
        object: String,
        /// Where the chunk starts, in bytes.
        offset: u64,
        /// The most bytes wanted; the daemon sends at most
        /// [`crate::objects::MAX_CHUNK_BYTES`].
        len: u32,
    },
    /// What each slot holds warm now (sent when it changed: a warm-up
    /// started or finished, a process was started, lost or let go).
    /// Answered at once like a `Pull` without results. A worker that sends
    /// it is sent [`DaemonMessage::Assign`]: work for named slots, and
    /// orders to warm and release servables.
    Slots {
        /// One entry per slot, in slot order.
        slots: Vec<SlotWarmth>,
    },
}

/// What one slot of a worker holds warm, as the worker reports it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct SlotWarmth {
    /// Servables with a process started and initialised in this slot
    /// (idle or running a batch), each with its memory.
    pub warm: Vec<WarmProcessInfo>,
    /// The servable this slot is warming now, at the daemon's request.
    pub warming: Option<String>,
    /// Warm orders for this slot finished (ready or failed) since the
    /// worker started: the daemon counts the slot as warming until this
    /// reaches the number of orders it sent.
    pub orders_done: u64,
    /// Servables whose last warm-up in this slot failed: the daemon then
    /// sends their batches cold, so the failure reaches their tasks.
    pub failed: Vec<String>,
}

/// One warm servable process.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
pub struct WarmProcessInfo {
    /// The servable (`NAME@VERSION`).
    pub servable: String,
    /// Its resident memory in KiB (0: unknown), as `/proc` said when
    /// reported.
    pub rss_kb: u64,
}

/// Start `servable`'s process in slot `slot` and initialise it, in the
/// background; the slot takes no batch meanwhile.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct WarmOrder {
    /// The slot (0-based).
    pub slot: u32,
    /// The servable (`NAME@VERSION`).
    pub servable: String,
    /// The servable's record, when the worker has not been sent it yet.
    pub spec: Option<Box<ServableRecord>>,
}

/// Let `servable`'s idle process in slot `slot` go (it has been idle
/// longer than its servable's `warm_idle_s`).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
pub struct ReleaseOrder {
    /// The slot (0-based).
    pub slot: u32,
    /// The servable (`NAME@VERSION`).
    pub servable: String,
}

/// A batch for one named slot.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct SlotBatch {
    /// The slot (0-based) that runs it.
    pub slot: u32,
    /// The batch.
    pub batch: WorkBatch,
}

/// What the daemon sends to a worker.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum DaemonMessage {
    /// The answer to a probe: the daemon's proof that it knows the secret,
    /// and the nonce the worker's `Hello` must carry.
    ProbeOk {
        /// A fresh nonce of the daemon's, valid for one `Hello` and for a
        /// short time.
        nonce: Payload,
        /// A fresh ephemeral X25519 public key of the daemon's, for the
        /// connection's keys (see [`crate::secure`]).
        public: Payload,
        /// MAC over both nonces and both public keys (see
        /// [`crate::handshake`]).
        proof: Payload,
        /// The cipher of the connection's sealed frames, of those the
        /// probe offered ([`crate::secure::Cipher::agree`]). Bound into the
        /// connection's keys, so an altered answer makes a connection that
        /// opens nothing.
        #[serde(default)]
        cipher: crate::secure::Cipher,
    },
    /// Registration accepted.
    Welcome {
        /// The daemon answers a held poll at least this often.
        heartbeat_period_ms: u64,
        /// Either side declares the other lost after this much silence.
        heartbeat_threshold_ms: u64,
    },
    /// Registration refused (bad proof, protocol mismatch); the worker
    /// should exit and show the reason.
    Refused {
        /// Why, in words for the operator.
        reason: String,
    },
    /// Work to do; empty when it is only a heartbeat.
    Work {
        /// Batches, each to be run as one servable call.
        batches: Vec<WorkBatch>,
    },
    /// Work for named slots, and warm-up and release orders: sent instead
    /// of `Work` to a worker that reports its slots
    /// ([`WorkerMessage::Slots`]).
    Assign {
        /// Batches, each for the slot it names.
        batches: Vec<SlotBatch>,
        /// Servables to warm, each in a slot.
        warm: Vec<WarmOrder>,
        /// Idle processes to let go.
        release: Vec<ReleaseOrder>,
    },
    /// The daemon does not know this worker (it restarted, or declared the
    /// worker lost): send `Hello` again, then resend unacknowledged results.
    Reregister,
    /// The daemon is shutting down: exit.
    Shutdown,
    /// A chunk of a published servable file, the answer to `Fetch`.
    Object {
        /// The object name asked for.
        object: String,
        /// Where the chunk starts, in bytes.
        offset: u64,
        /// The whole file's size, in bytes.
        size: u64,
        /// Whether the stored file is executable (a servable may ship a
        /// program).
        executable: bool,
        /// The chunk: empty at or past the end of the file.
        data: Payload,
    },
    /// The daemon cannot send that file (it has no such object, or cannot
    /// read it).
    ObjectUnavailable {
        /// The object name asked for.
        object: String,
        /// Why, in words for the operator.
        reason: String,
    },
}

/// Inputs for one servable call.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct WorkBatch {
    /// Batch id, echoed in [`BatchResult`].
    pub id: BatchId,
    /// Servable to run.
    pub servable: String,
    /// msgpack parameters shared by every input; empty for none.
    pub params: Payload,
    /// The inputs.
    pub items: Vec<WorkItem>,
    /// The servable's published record, sent with the first batch a worker
    /// gets for it (builtins have none).
    pub spec: Option<Box<ServableRecord>>,
}

/// One input of a batch.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct WorkItem {
    /// Task it belongs to.
    pub task: TaskId,
    /// msgpack input (a slice of the frame it came in, when decoded with
    /// [`crate::frame::decode_shared`]).
    #[serde(deserialize_with = "crate::frame::shared_payload")]
    pub input: Payload,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode};

    #[test]
    fn ciphers_travel_by_name_and_a_probe_without_them_offers_none() {
        use crate::secure::Cipher;
        let probe = WorkerMessage::Probe {
            nonce: Payload::from(vec![2u8; 32]),
            public: Payload::from(vec![5u8; 32]),
            ciphers: vec![Cipher::Aes256Gcm, Cipher::Chacha20Poly1305],
        };
        let bytes = encode(&probe).unwrap();
        assert!(bytes.windows(11).any(|w| w == b"aes-256-gcm"));
        assert!(bytes.windows(17).any(|w| w == b"chacha20-poly1305"));
        assert_eq!(decode::<WorkerMessage>(&bytes, 1 << 20).unwrap(), probe);
        // The probe's two older fields alone: it offers nothing, and the
        // daemon answers with the default cipher.
        let bare = (
            crate::PROTOCOL_VERSION,
            std::collections::BTreeMap::from([(
                "Probe",
                (Payload::from(vec![2u8; 32]), Payload::from(vec![5u8; 32])),
            )]),
        );
        let bare = rmp_serde::to_vec(&bare).unwrap();
        let Ok(WorkerMessage::Probe { ciphers, .. }) = decode::<WorkerMessage>(&bare, 1 << 20)
        else {
            panic!("a probe without ciphers does not decode");
        };
        assert!(ciphers.is_empty());
    }

    #[test]
    fn payloads_travel_as_msgpack_bin() {
        let batch = WorkBatch {
            id: BatchId(1),
            servable: "echo".into(),
            params: Payload::new(),
            items: vec![WorkItem {
                task: TaskId(9),
                input: Payload::from(vec![7u8; 300]),
            }],
            spec: None,
        };
        let bytes = encode(&DaemonMessage::Work {
            batches: vec![batch.clone()],
        })
        .unwrap();
        // bin 16 marker followed by the 300-byte length: the payload is raw bytes.
        assert!(bytes.windows(3).any(|w| w == [0xc5, 0x01, 0x2c]));
        assert!(bytes.len() < 360);
        let back: DaemonMessage = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(
            back,
            DaemonMessage::Work {
                batches: vec![batch]
            }
        );
    }
}
