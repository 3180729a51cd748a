//! Fetching a published servable's file from the daemon over the
//! interchange, for a worker that cannot read the daemon's object store.
//!
//! The file is asked for by its object name (the blake3 hash of its
//! content) a chunk at a time ([`WorkerMessage::Fetch`]), so no frame grows
//! with the file and none is larger than the worker accepts
//! ([`objects::chunk_len`]); the bytes are hashed as they arrive, and the
//! file is accepted only if the whole has the published hash and size.
//! Where the bytes go (a temporary file of the node's cache) is the
//! caller's business: see [`crate::cache`].

use std::io::Write;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flotilla_protocol::interchange::{DaemonMessage, WorkerMessage};
use flotilla_protocol::secure::{self, Channel};
use flotilla_protocol::{Payload, decode, encode, objects};
use nng::{Aio, AioResult, Context, Message, Socket};
use std::sync::Arc;

/// A chunk of a file, as the daemon sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The whole file's size.
    pub size: u64,
    /// Whether the stored file is executable.
    pub executable: bool,
    /// The bytes from the offset asked for.
    pub data: Payload,
}

/// Where chunks of objects come from: the daemon (over nng), or a stand-in
/// in tests.
pub trait ObjectSource: Send + Sync {
    /// Up to `len` bytes of `object` from `offset`.
    fn chunk(&self, object: &str, offset: u64, len: u32) -> Result<Chunk, FetchError>;
}

/// Why a file could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The daemon answered that it cannot send the file.
    #[error("the daemon cannot send it: {0}")]
    Unavailable(String),
    /// No answer came (the connection failed, timed out, or the worker was
    /// registering again): worth trying again later.
    #[error("no answer from the daemon: {0}")]
    Transport(String),
    /// The daemon answered something that is not the chunk asked for.
    #[error("the daemon's answer is not the chunk asked for: {0}")]
    Protocol(String),
    /// The daemon's file is not the size that was published.
    #[error("the daemon's copy is {actual} bytes, the published file {expected}")]
    Size {
        /// The published size.
        expected: u64,
        /// The size the daemon reported or sent.
        actual: u64,
    },
    /// The bytes received do not have the published hash.
    #[error("the bytes received have blake3 {actual}, not the published {expected}")]
    HashMismatch {
        /// The published hash.
        expected: String,
        /// The hash of what arrived.
        actual: String,
    },
    /// The received bytes could not be written.
    #[error("cannot write what was received: {0}")]
    Write(#[source] std::io::Error),
}

impl FetchError {
    /// Whether trying again later may succeed (the batch is retried rather
    /// than failed).
    pub fn is_transient(&self) -> bool {
        matches!(self, FetchError::Transport(_) | FetchError::Write(_))
    }
}

/// What a completed fetch took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Bytes received.
    pub bytes: u64,
    /// Requests made.
    pub chunks: u32,
    /// Whether the stored file is executable.
    pub executable: bool,
}

/// Fetches `object`, published with `size` bytes, from `source` in chunks
/// of at most `chunk_len` bytes into `out`; succeeds only if what arrived
/// is exactly `size` bytes with blake3 `object`. `out` holds garbage after
/// a failure: write to a temporary file.
pub fn fetch_into(
    source: &dyn ObjectSource,
    object: &str,
    size: u64,
    chunk_len: u32,
    out: &mut impl Write,
) -> Result<FetchStats, FetchError> {
    let chunk_len = chunk_len.max(1);
    let mut hasher = blake3::Hasher::new();
    let mut stats = FetchStats {
        bytes: 0,
        chunks: 0,
        executable: false,
    };
    // At least one request, so even an empty file is known to exist.
    loop {
        let chunk = source.chunk(object, stats.bytes, chunk_len)?;
        stats.chunks += 1;
        stats.executable = chunk.executable;
        if chunk.size != size {
            return Err(FetchError::Size {
                expected: size,
                actual: chunk.size,
            });
        }
        let got = chunk.data.len() as u64;
        if got > u64::from(chunk_len) || stats.bytes + got > size {
            return Err(FetchError::Protocol(format!(
                "{got} bytes at offset {} of a {size}-byte file, asked for at most {chunk_len}",
                stats.bytes
            )));
        }
        if got == 0 && stats.bytes < size {
            return Err(FetchError::Size {
                expected: size,
                actual: stats.bytes,
            });
        }
        hasher.update(&chunk.data);
        out.write_all(&chunk.data).map_err(FetchError::Write)?;
        stats.bytes += got;
        if stats.bytes >= size {
            break;
        }
    }
    let actual = hasher.finalize().to_hex().to_string();
    if actual != object {
        return Err(FetchError::HashMismatch {
            expected: object.to_owned(),
            actual,
        });
    }
    Ok(stats)
}

/// How often a chunk is asked for before the fetch gives up, when no
/// answer comes (the worker may be registering again meanwhile).
const ATTEMPTS: u32 = 4;
/// The pause before the first retry; doubled before each next one.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// The channel a worker's connection is sealed with, shared by the session
/// (which sets it as the handshake goes) and the file fetches (which seal
/// their requests and open the answers with it).
#[derive(Debug, Default)]
pub struct ChannelSlot(Mutex<Option<Arc<Channel>>>);

impl ChannelSlot {
    /// Seals with `channel` from now on (`None`: in clear).
    pub fn set(&self, channel: Option<Arc<Channel>>) {
        *lock(&self.0) = channel;
    }

    /// The channel now.
    pub fn get(&self) -> Option<Arc<Channel>> {
        lock(&self.0).clone()
    }
}

/// The daemon as an [`ObjectSource`]: a REQ context of its own on the
/// worker's socket, one request at a time (a registered connection may
/// have only a few outstanding, and two lanes already hold one each).
pub struct InterchangeSource {
    ctx: Context,
    aio: Aio,
    /// Answers delivered by the aio's callback; held for a whole request.
    answers: Mutex<mpsc::Receiver<Result<Message, String>>>,
    /// Longest wait for one answer.
    timeout: Duration,
    /// The worker's frame limit (what `decode` accepts).
    max_frame_bytes: usize,
    /// Seals the requests and opens the answers once the connection is.
    channel: Arc<ChannelSlot>,
}

impl InterchangeSource {
    /// A source on `socket` (connected to the daemon) that waits up to
    /// `timeout` for each answer.
    pub fn new(
        socket: &Socket,
        timeout: Duration,
        max_frame_bytes: usize,
    ) -> Result<InterchangeSource, nng::Error> {
        let ctx = Context::new(socket)?;
        let cb_ctx = ctx.clone();
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let aio = Aio::new(move |aio, result| {
            let answer = match result {
                AioResult::Send(Ok(())) => match cb_ctx.recv(&aio) {
                    Ok(()) => return,
                    Err(e) => Err(e.to_string()),
                },
                AioResult::Send(Err((_, e))) | AioResult::Recv(Err(e)) => Err(e.to_string()),
                AioResult::Recv(Ok(msg)) => Ok(msg),
                AioResult::Sleep(_) => return,
            };
            let _ = lock(&tx).send(answer);
        })?;
        Ok(InterchangeSource {
            ctx,
            aio,
            answers: Mutex::new(rx),
            timeout,
            max_frame_bytes,
            channel: Arc::default(),
        })
    }

    /// The source, sealing with whatever `channel` holds at each request.
    pub fn sealed_by(mut self, channel: Arc<ChannelSlot>) -> InterchangeSource {
        self.channel = channel;
        self
    }

    /// One request and its answer.
    fn ask(
        &self,
        answers: &mpsc::Receiver<Result<Message, String>>,
        request: &WorkerMessage,
    ) -> Result<DaemonMessage, FetchError> {
        // An answer to an earlier request that was given up on.
        while answers.try_recv().is_ok() {}
        let mut bytes = encode(request).map_err(|e| FetchError::Protocol(e.to_string()))?;
        let channel = self.channel.get();
        if let Some(channel) = &channel {
            bytes = channel
                .seal(&bytes)
                .map_err(|e| FetchError::Transport(e.to_string()))?;
        }
        self.aio
            .set_timeout(Some(self.timeout))
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        self.ctx
            .send(&self.aio, Message::from(&bytes[..]))
            .map_err(|(_, e)| FetchError::Transport(e.to_string()))?;
        // The aio's own timeout ends the request; this only guards
        // against a callback that never comes.
        let answer = match answers.recv_timeout(self.timeout + Duration::from_secs(5)) {
            Ok(answer) => answer.map_err(FetchError::Transport)?,
            Err(_) => {
                // Frees the aio for the next request; the cancellation's
                // own report is drained then.
                self.aio.cancel();
                return Err(FetchError::Transport("timed out".into()));
            }
        };
        let answer = answer.as_slice();
        let opened;
        let frame = match &channel {
            Some(channel) if secure::is_sealed(answer) => {
                opened = channel.open(answer).map_err(|e| {
                    tracing::warn!(reason = %e, "a file chunk on the sealed connection does not open");
                    FetchError::Transport(format!("the answer does not open: {e}"))
                })?;
                &opened[..]
            }
            // The keys changed meanwhile (the worker registers again), or
            // the daemon asks the connection to register: try again later.
            _ if secure::is_sealed(answer) => {
                return Err(FetchError::Transport(
                    "a sealed answer without keys to open it (registering again)".into(),
                ));
            }
            Some(_) => {
                return match decode::<DaemonMessage>(answer, self.max_frame_bytes) {
                    Ok(DaemonMessage::Reregister) => Ok(DaemonMessage::Reregister),
                    _ => Err(FetchError::Transport(
                        "an answer in clear on the sealed connection".into(),
                    )),
                };
            }
            None => answer,
        };
        decode::<DaemonMessage>(frame, self.max_frame_bytes)
            .map_err(|e| FetchError::Protocol(e.to_string()))
    }
}

impl Drop for InterchangeSource {
    /// Stops the aio here, waiting for a callback that is running, so the
    /// last handle to it is never the callback's own: freeing an aio from
    /// its callback waits for that callback, and the nng thread running it
    /// would wait for itself (and with it every socket nng reaps).
    fn drop(&mut self) {
        // SAFETY: the handle is valid while `self.aio` lives, and
        // `nng_aio_stop` only cancels, waits for the callback and refuses
        // the aio new work; the wrapper's state is updated by the callback
        // the cancellation runs.
        unsafe { nng::ffi::nng_aio_stop(self.aio.nng_aio()) };
    }
}

impl ObjectSource for InterchangeSource {
    fn chunk(&self, object: &str, offset: u64, len: u32) -> Result<Chunk, FetchError> {
        let answers = lock(&self.answers);
        let request = WorkerMessage::Fetch {
            object: object.to_owned(),
            offset,
            len,
        };
        let mut pause = FIRST_RETRY;
        let mut attempt = 1;
        loop {
            let error = match self.ask(&answers, &request) {
                Ok(DaemonMessage::Object {
                    object: named,
                    offset: at,
                    size,
                    executable,
                    data,
                }) if named == object && at == offset => {
                    return Ok(Chunk {
                        size,
                        executable,
                        data,
                    });
                }
                Ok(DaemonMessage::ObjectUnavailable { reason, .. }) => {
                    return Err(FetchError::Unavailable(reason));
                }
                Ok(DaemonMessage::Reregister) => {
                    FetchError::Transport("the daemon asked this worker to register again".into())
                }
                Ok(other) => {
                    return Err(FetchError::Protocol(
                        format!("{other:?}").chars().take(200).collect(),
                    ));
                }
                Err(e) => e,
            };
            if !error.is_transient() || attempt >= ATTEMPTS {
                return Err(error);
            }
            tracing::info!(object, offset, attempt, error = %error, "fetching a servable file: trying again");
            // A pause for the session to register again, not a
            // synchronisation: the next attempt checks for itself.
            std::thread::sleep(pause);
            pause *= 2;
            attempt += 1;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The chunk this worker asks for, by its frame limit.
pub fn chunk_len_for(max_frame_bytes: usize) -> u32 {
    objects::chunk_len(max_frame_bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A daemon stand-in holding files in memory; counts requests.
    pub(crate) struct MemorySource {
        pub files: Vec<Vec<u8>>,
        pub requests: AtomicU32,
        pub largest: AtomicU32,
    }

    impl MemorySource {
        pub(crate) fn new(files: Vec<Vec<u8>>) -> Self {
            MemorySource {
                files,
                requests: AtomicU32::new(0),
                largest: AtomicU32::new(0),
            }
        }
    }

    impl ObjectSource for MemorySource {
        fn chunk(&self, object: &str, offset: u64, len: u32) -> Result<Chunk, FetchError> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            self.largest.fetch_max(len, Ordering::SeqCst);
            let file = self
                .files
                .iter()
                .find(|f| blake3::hash(f).to_hex().as_str() == object)
                .ok_or_else(|| FetchError::Unavailable("no such object".into()))?;
            let start = (offset as usize).min(file.len());
            let end = (start + len as usize).min(file.len());
            Ok(Chunk {
                size: file.len() as u64,
                executable: false,
                data: file[start..end].to_vec().into(),
            })
        }
    }

    fn name(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    #[test]
    fn a_file_arrives_in_bounded_chunks_and_whole() {
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let source = MemorySource::new(vec![content.clone()]);
        let mut out = Vec::new();
        let stats = fetch_into(&source, &name(&content), 10_000, 1024, &mut out).unwrap();
        assert_eq!(out, content);
        assert_eq!(stats.bytes, 10_000);
        assert_eq!(stats.chunks, 10);
        assert_eq!(source.largest.load(Ordering::SeqCst), 1024);
        // An empty file is asked for once.
        let mut out = Vec::new();
        let empty = MemorySource::new(vec![Vec::new()]);
        assert_eq!(
            fetch_into(&empty, &name(b""), 0, 1024, &mut out)
                .unwrap()
                .chunks,
            1
        );
    }

    /// A source that serves other bytes under a file's name.
    struct Lying(Vec<u8>);

    impl ObjectSource for Lying {
        fn chunk(&self, _: &str, offset: u64, len: u32) -> Result<Chunk, FetchError> {
            let start = (offset as usize).min(self.0.len());
            let end = (start + len as usize).min(self.0.len());
            Ok(Chunk {
                size: self.0.len() as u64,
                executable: false,
                data: self.0[start..end].to_vec().into(),
            })
        }
    }

    /// Over real nng, with the smallest frame limit a worker may have: the
    /// daemon stand-in answers as the daemon does (at most what was asked
    /// for), every answer fits the limit, and the file arrives whole.
    #[test]
    fn over_the_interchange_no_frame_passes_the_limit() {
        let cap = flotilla_protocol::MIN_FRAME_BYTES;
        let content: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let object = name(&content);
        let (daemon, port) = crate::test_support::rep_on_loopback();
        let served = content.clone();
        std::thread::spawn(move || {
            let mut first = true;
            while let Ok(msg) = daemon.recv() {
                let Ok(WorkerMessage::Fetch {
                    object,
                    offset,
                    len,
                }) = decode::<WorkerMessage>(msg.as_slice(), 1 << 20)
                else {
                    return;
                };
                // The first request is told to register again, as a
                // replaced connection would be: the fetch tries again.
                let answer = if std::mem::take(&mut first) {
                    DaemonMessage::Reregister
                } else {
                    let start = (offset as usize).min(served.len());
                    let end = (start + len as usize).min(served.len());
                    DaemonMessage::Object {
                        object,
                        offset,
                        size: served.len() as u64,
                        executable: false,
                        data: served[start..end].to_vec().into(),
                    }
                };
                let bytes = encode(&answer).unwrap();
                assert!(bytes.len() <= cap, "{} > {cap}", bytes.len());
                let _ = daemon.send(&bytes[..]);
            }
        });
        let socket = crate::connect::worker_socket_with_cap(cap).unwrap();
        socket.dial(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let source = InterchangeSource::new(&socket, Duration::from_secs(10), cap).unwrap();
        let mut out = Vec::new();
        let stats = fetch_into(&source, &object, 5000, chunk_len_for(cap), &mut out).unwrap();
        assert_eq!(out, content);
        assert_eq!(stats.chunks, 5, "1024 bytes at a time");
    }

    /// A source dropped right after its answer arrived, while the aio's
    /// callback may still be returning: the callback must never hold the
    /// last handle to the aio (freeing an aio from its own callback waits
    /// for that callback, and hung the suite with nng's reaper behind it).
    #[test]
    fn sources_dropped_right_after_an_answer_stop_cleanly() {
        let content = b"one small file".to_vec();
        let object = name(&content);
        let (daemon, port) = crate::test_support::rep_on_loopback();
        let served = content.clone();
        std::thread::spawn(move || {
            while let Ok(msg) = daemon.recv() {
                let Ok(WorkerMessage::Fetch { object, offset, .. }) =
                    decode::<WorkerMessage>(msg.as_slice(), 1 << 20)
                else {
                    return;
                };
                let answer = DaemonMessage::Object {
                    object,
                    offset,
                    size: served.len() as u64,
                    executable: false,
                    data: served.clone().into(),
                };
                let _ = daemon.send(&encode(&answer).unwrap()[..]);
            }
        });
        let socket = crate::connect::worker_socket_with_cap(1 << 20).unwrap();
        socket.dial(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..500 {
                let source =
                    InterchangeSource::new(&socket, Duration::from_secs(10), 1 << 20).unwrap();
                let chunk = source.chunk(&object, 0, 1024).unwrap();
                assert_eq!(&chunk.data[..], &content[..]);
                drop(source);
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(300))
            .expect("500 sources fetched and dropped within 300 s (a hang means an aio freed from its callback)");
    }

    #[test]
    fn bytes_that_do_not_have_the_published_hash_are_refused() {
        let published = b"print('hello')".to_vec();
        let tampered = b"print('pwned')".to_vec();
        let mut out = Vec::new();
        let e = fetch_into(&Lying(tampered), &name(&published), 14, 4, &mut out).unwrap_err();
        assert!(matches!(e, FetchError::HashMismatch { .. }), "{e}");
        assert!(!e.is_transient());
        // Another size than published is refused before anything is kept.
        let e = fetch_into(
            &Lying(vec![0; 20]),
            &name(&published),
            14,
            4,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                FetchError::Size {
                    expected: 14,
                    actual: 20
                }
            ),
            "{e}"
        );
        let e = fetch_into(
            &MemorySource::new(Vec::new()),
            &name(&published),
            14,
            4,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no such object"), "{e}");
    }
}
