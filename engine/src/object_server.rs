//! Serves published servables' files to workers that cannot read the
//! object store (over the SSH channel, on Kubernetes, with node-local
//! scratch): [`WorkerMessage::Fetch`] is answered with one chunk of the
//! file ([`DaemonMessage::Object`]) read from the object store.
//!
//! This is served beside the scheduling core, not through it: the object
//! store is not core state (the core knows servables' hashes, never their
//! files), answering needs no scheduling decision and changes nothing, and
//! chunks of large files would otherwise pass through the core's lock. The
//! one check that concerns who asks — only a registered worker may fetch —
//! is the connection's registration, which the server records when the
//! core welcomes it ([`crate::net::RepServer::register`]). Reading a chunk
//! can block on a slow disk, so it runs on a thread of its own, never on
//! nng's callback threads (which carry every other request), just as the
//! store's writes run on the writer thread.
//!
//! [`WorkerMessage::Fetch`]: flotilla_protocol::interchange::WorkerMessage::Fetch

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use flotilla_protocol::interchange::DaemonMessage;
use flotilla_protocol::objects::{self, MAX_CHUNK_BYTES};

/// One chunk asked for, and where its answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The receiver holding the request (see [`crate::net::RepServer::reply`]).
    pub receiver: u32,
    /// The object name (checked with [`objects::is_object_name`]).
    pub object: String,
    /// Where the chunk starts.
    pub offset: u64,
    /// The most bytes wanted.
    pub len: u32,
}

/// Handle to the thread that reads chunks. Dropping it lets the thread
/// answer what it was given, then waits for it.
#[derive(Debug)]
pub struct ObjectServer {
    tx: Option<mpsc::Sender<ChunkRequest>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ObjectServer {
    /// Starts the thread reading from `objects`; `reply` sends an encoded
    /// answer through the receiver that holds its request.
    pub fn spawn(
        objects: PathBuf,
        reply: impl Fn(u32, &DaemonMessage) + Send + 'static,
    ) -> std::io::Result<ObjectServer> {
        let (tx, rx) = mpsc::channel::<ChunkRequest>();
        let thread = thread::Builder::new()
            .name("flotilla-objects".into())
            .spawn(move || {
                // Requests queued here are bounded by the connections'
                // limits on outstanding requests.
                for request in rx {
                    let answer = read_chunk(&objects, &request.object, request.offset, request.len);
                    reply(request.receiver, &answer);
                }
            })?;
        Ok(ObjectServer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `request` for the reading thread.
    pub fn serve(&self, request: ChunkRequest) {
        if let Some(tx) = &self.tx
            && tx.send(request).is_err()
        {
            tracing::error!("the object reading thread is gone; a fetch goes unanswered");
        }
    }
}

impl Drop for ObjectServer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to a fetch of `len` bytes of `object` from `offset`: at most
/// [`MAX_CHUNK_BYTES`] of the file in `objects` (fewer at its end, none past
/// it), or why it cannot be sent. `object` must be an object name; anything
/// else is answered as unknown without touching the file system.
pub fn read_chunk(objects: &Path, object: &str, offset: u64, len: u32) -> DaemonMessage {
    let unavailable = |reason: String| {
        tracing::warn!(
            object = %flotilla_protocol::peer_text::shown(object),
            reason = %reason,
            "cannot send a servable file to a worker"
        );
        DaemonMessage::ObjectUnavailable {
            object: object.to_owned(),
            reason,
        }
    };
    if !objects::is_object_name(object) {
        return unavailable("not an object name (64 lower-case hex digits)".into());
    }
    let path = objects.join(object);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return unavailable(format!(
                "the daemon's object store has no file with blake3 {object} (was it published to this daemon?)"
            ));
        }
        Err(e) => return unavailable(format!("cannot open {}: {e}", path.display())),
    };
    let meta = match file.metadata() {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return unavailable(format!("{} is not a regular file", path.display())),
        Err(e) => return unavailable(format!("cannot read {}: {e}", path.display())),
    };
    let size = meta.len();
    let want = u64::from(len.min(MAX_CHUNK_BYTES)).min(size.saturating_sub(offset));
    let mut data = vec![0u8; want as usize];
    if let Err(e) = file.read_exact_at(&mut data, offset) {
        return unavailable(format!("cannot read {}: {e}", path.display()));
    }
    if offset == 0 {
        tracing::info!(object, size, "sending a servable file to a worker");
    }
    DaemonMessage::Object {
        object: object.to_owned(),
        offset,
        size,
        executable: meta.permissions().mode() & 0o111 != 0,
        data: data.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, String, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..(MAX_CHUNK_BYTES as usize + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        let name = blake3::hash(&content).to_hex().to_string();
        std::fs::write(dir.path().join(&name), &content).unwrap();
        (dir, name, content)
    }

    fn chunk(answer: DaemonMessage) -> (u64, Vec<u8>) {
        match answer {
            DaemonMessage::Object { size, data, .. } => (size, data.to_vec()),
            other => panic!("not a chunk: {other:?}"),
        }
    }

    #[test]
    fn chunks_are_bounded_and_end_with_the_file() {
        let (dir, name, content) = store();
        let (size, first) = chunk(read_chunk(dir.path(), &name, 0, u32::MAX));
        assert_eq!(size, content.len() as u64);
        assert_eq!(
            first.len(),
            MAX_CHUNK_BYTES as usize,
            "never more than a chunk"
        );
        let (_, rest) = chunk(read_chunk(dir.path(), &name, first.len() as u64, u32::MAX));
        assert_eq!(rest.len(), 1000);
        assert_eq!([first, rest].concat(), content);
        let (_, small) = chunk(read_chunk(dir.path(), &name, 10, 5));
        assert_eq!(small, &content[10..15]);
        let (_, past) = chunk(read_chunk(dir.path(), &name, size + 7, 100));
        assert!(past.is_empty());
    }

    #[test]
    fn unknown_objects_and_other_names_are_answered_with_a_reason() {
        let (dir, _, _) = store();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        let unknown = "0".repeat(64);
        for (name, says) in [
            (unknown.as_str(), "has no file with blake3"),
            ("secret", "not an object name"),
            ("../objects/secret", "not an object name"),
        ] {
            match read_chunk(dir.path(), name, 0, 10) {
                DaemonMessage::ObjectUnavailable { object, reason } => {
                    assert_eq!(object, name);
                    assert!(reason.contains(says), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
