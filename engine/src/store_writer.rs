//! The group-commit writer: the one thread that writes to the store.
//!
//! It applies everything queued since its last flush, flushes once, and
//! reports the highest sequence number now durable. A batch it cannot
//! write is reported as failed (with the last sequence number in it), so
//! the core can answer the requests that waited on it with the reason
//! instead of leaving them unanswered.
//!
//! Two kinds of failure:
//!
//! * **No room.** Before each batch the writer checks the room on the
//!   store's file system ([`crate::store_room`]); a batch that would not fit
//!   is refused whole, before sled sees it, so the store stays healthy.
//!   While short of room the writer checks every [`ROOM_POLL`] and reports
//!   [`WriterReport::Recovered`] once there is room again (or once a later
//!   batch is written).
//! * **A failed write** (an I/O error, or the disk filling between the check
//!   and the write). sled 0.34 cannot go on after that: its next flush, and
//!   dropping it (which flushes), wait forever. The writer never touches
//!   that database again, fails every later batch with a reason that says
//!   to restart the daemon, and leaves the database to the process's exit.
//!
//! Closing is bounded: [`StoreWriter::sync`] takes a time limit, and
//! dropping the writer waits at most [`CLOSE_LIMIT`] for the final flush.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::core::tally::{Histogram, LATENCY_BUCKETS_S};
use crate::store::{ChunkIndex, Store, StoreOp};
use crate::store_room::{self, NoRoom, RESERVE_BYTES, Room};

/// Most ops applied between two flushes, bounding the latency of a flush.
const MAX_OPS_PER_FLUSH: usize = 4096;

/// How often a writer short of room checks whether there is room again.
pub const ROOM_POLL: Duration = Duration::from_millis(250);

/// Longest the writer's drop waits for its thread (and the store's final
/// flush) before leaving it to the process's exit.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(10);

/// Asks whether a batch of so many bytes fits.
pub(crate) type RoomCheck = Box<dyn FnMut(u64) -> Result<(), NoRoom> + Send>;

/// What the writer thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterReport {
    /// Every op with a sequence number up to this one that was not reported
    /// failed is durable.
    Durable(u64),
    /// The ops up to `through` not yet reported durable were not stored.
    Failed {
        /// The last sequence number of the failed batch.
        through: u64,
        /// Why, in words for the client whose request it was.
        reason: String,
    },
    /// After a failure for want of room, the store writes again.
    Recovered,
}

/// Where the writer stands once everything submitted before a
/// [`StoreWriter::sync`] was handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The last sequence number written and flushed.
    pub durable: u64,
    /// The last failure (its batch's last sequence number, and why), if
    /// any batch ever failed.
    pub failed: Option<(u64, String)>,
}

enum WriterMsg {
    Op(u64, StoreOp),
    Barrier(mpsc::Sender<Settled>),
}

/// The group-commit writer: owns the only thread that writes to the store.
#[derive(Debug)]
pub struct StoreWriter {
    tx: mpsc::Sender<WriterMsg>,
    thread: Option<thread::JoinHandle<()>>,
    /// Disconnected once the thread is done (its store closed or left).
    exited: mpsc::Receiver<()>,
    /// How long each group commit took, for the metrics endpoint.
    flush_times: FlushTimes,
}

/// Seconds each group commit took to apply and flush, shared with whoever
/// reports them.
pub type FlushTimes = Arc<Mutex<Histogram>>;

impl StoreWriter {
    /// Starts the writer on `store` with the chunk `index` from recovery;
    /// `report` is called from the writer thread after every batch.
    pub fn spawn(
        store: Store,
        index: ChunkIndex,
        report: impl Fn(WriterReport) + Send + 'static,
    ) -> std::io::Result<StoreWriter> {
        let room = Room::new(std::path::Path::new(store.path()), RESERVE_BYTES);
        StoreWriter::spawn_with_room(store, index, Box::new(move |b| room.check(b)), report)
    }

    /// [`StoreWriter::spawn`] with another way to tell whether a batch
    /// fits.
    pub(crate) fn spawn_with_room(
        store: Store,
        index: ChunkIndex,
        room: RoomCheck,
        report: impl Fn(WriterReport) + Send + 'static,
    ) -> std::io::Result<StoreWriter> {
        let (tx, rx) = mpsc::channel::<WriterMsg>();
        let (exited_tx, exited) = mpsc::channel::<()>();
        let flush_times: FlushTimes = Arc::new(Mutex::new(Histogram::new(&LATENCY_BUCKETS_S)));
        let times = flush_times.clone();
        let thread = thread::Builder::new()
            .name("flotilla-store".into())
            .spawn(move || {
                let writer = Writer {
                    store: Some(store),
                    index,
                    room,
                    report,
                    durable: 0,
                    failed: None,
                    broken: None,
                    short_of_room: false,
                    flush_times: times,
                };
                writer.run(&rx);
                drop(exited_tx);
            })?;
        Ok(StoreWriter {
            tx,
            thread: Some(thread),
            exited,
            flush_times,
        })
    }

    /// The group commits' durations so far (shared: it keeps growing).
    pub fn flush_times(&self) -> FlushTimes {
        self.flush_times.clone()
    }

    /// Queues `op` as sequence number `seq` (numbers must increase).
    pub fn submit(&self, seq: u64, op: StoreOp) {
        if self.tx.send(WriterMsg::Op(seq, op)).is_err() {
            tracing::error!(seq, "store writer is gone; op dropped");
        }
    }

    /// Waits up to `limit` until everything submitted before this call was
    /// written or refused; `None` if that did not happen in time.
    pub fn sync(&self, limit: Duration) -> Option<Settled> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(WriterMsg::Barrier(tx)).ok()?;
        rx.recv_timeout(limit).ok()
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        match self.exited.recv_timeout(CLOSE_LIMIT) {
            Err(RecvTimeoutError::Timeout) => tracing::error!(
                limit_s = CLOSE_LIMIT.as_secs(),
                "the store did not close in time; leaving it without its final flush (what was reported durable is on disk)"
            ),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }
    }
}

/// The writer thread's state.
struct Writer<R> {
    /// `None` once a write failed: that database is never touched again.
    store: Option<Store>,
    index: ChunkIndex,
    room: RoomCheck,
    report: R,
    durable: u64,
    failed: Option<(u64, String)>,
    /// Why the store cannot be used again, once a write failed.
    broken: Option<String>,
    /// True after a batch was refused for want of room, until there is room.
    short_of_room: bool,
    flush_times: FlushTimes,
}

impl<R: Fn(WriterReport)> Writer<R> {
    fn run(mut self, rx: &mpsc::Receiver<WriterMsg>) {
        let mut ops = Vec::new();
        let mut barriers = Vec::new();
        while let Some(first) = self.next_message(rx) {
            let mut last_seq = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Op(seq, op) => {
                        last_seq = Some(seq);
                        ops.push(op);
                    }
                    WriterMsg::Barrier(done) => barriers.push(done),
                }
                if ops.len() < MAX_OPS_PER_FLUSH {
                    next = rx.try_recv().ok();
                }
            }
            if let Some(seq) = last_seq {
                self.write(&ops, seq);
            }
            ops.clear();
            let settled = Settled {
                durable: self.durable,
                failed: self.failed.clone(),
            };
            for b in barriers.drain(..) {
                let _ = b.send(settled.clone());
            }
        }
        if let Some(store) = self.store.take() {
            // Healthy: sled's drop makes its last flush.
            drop(store);
        }
    }

    /// The next message; while short of room, checks the room meanwhile.
    fn next_message(&mut self, rx: &mpsc::Receiver<WriterMsg>) -> Option<WriterMsg> {
        loop {
            if !self.short_of_room {
                return rx.recv().ok();
            }
            match rx.recv_timeout(ROOM_POLL) {
                Ok(msg) => return Some(msg),
                Err(RecvTimeoutError::Timeout) => {
                    if (self.room)(0).is_ok() {
                        self.room_again();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Writes and flushes `ops`, whose last sequence number is `seq`, or
    /// reports why not.
    fn write(&mut self, ops: &[StoreOp], seq: u64) {
        let Some(store) = &self.store else {
            let reason = self.broken.clone().unwrap_or_default();
            return self.fail(seq, reason);
        };
        if let Err(no_room) = (self.room)(store_room::estimate(ops)) {
            if !self.short_of_room {
                tracing::error!(error = %no_room, "store writes refused until there is room");
            }
            self.short_of_room = true;
            return self.fail(seq, no_room.to_string());
        }
        let started = Instant::now();
        match store
            .apply(ops, &mut self.index)
            .and_then(|()| store.flush())
        {
            Ok(()) => {
                self.flush_times
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .observe(started.elapsed().as_secs_f64());
                self.durable = seq;
                (self.report)(WriterReport::Durable(seq));
                if self.short_of_room {
                    self.room_again();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store write failed; the store cannot be used again until the daemon restarts");
                // After a failed write sled's next flush, and its drop
                // (which flushes), wait forever: leave it alone for good.
                if let Some(store) = self.store.take() {
                    std::mem::forget(store);
                }
                let reason = format!(
                    "{e}; the daemon cannot use its store again until it restarts (make room if the disk is full, then `flotilla stop` and start it again)"
                );
                self.broken = Some(reason.clone());
                self.short_of_room = false;
                self.fail(seq, reason);
            }
        }
    }

    fn fail(&mut self, through: u64, reason: String) {
        self.failed = Some((through, reason.clone()));
        (self.report)(WriterReport::Failed { through, reason });
    }

    fn room_again(&mut self) {
        self.short_of_room = false;
        tracing::info!("the store has room again; writes resume");
        (self.report)(WriterReport::Recovered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewTask;
    use crate::store::tests::new_task;
    use flotilla_protocol::task::Payload;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const LIMIT: Duration = Duration::from_secs(30);

    fn reports() -> (
        impl Fn(WriterReport) + Send + 'static,
        mpsc::Receiver<WriterReport>,
    ) {
        let (tx, rx) = mpsc::channel();
        (
            move |r| {
                let _ = tx.send(r);
            },
            rx,
        )
    }

    #[test]
    fn writer_reports_durable_sequence_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (report, rx) = reports();
        let writer = StoreWriter::spawn(store.clone(), ChunkIndex::default(), report).unwrap();
        for seq in 1..=50 {
            writer.submit(seq, StoreOp::PutTasks(vec![new_task(seq)]));
        }
        let settled = writer.sync(LIMIT).unwrap();
        assert_eq!(
            settled,
            Settled {
                durable: 50,
                failed: None
            }
        );
        let mut last = 0;
        while let Ok(WriterReport::Durable(seq)) = rx.try_recv() {
            assert!(seq > last);
            last = seq;
        }
        assert_eq!(last, 50);
        assert_eq!(store.recover().unwrap().tasks.len(), 50);
    }

    #[test]
    fn a_batch_without_room_is_refused_whole_and_writing_resumes_with_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let has_room = Arc::new(AtomicBool::new(true));
        let room = {
            let has_room = has_room.clone();
            let path = dir.path().to_path_buf();
            Box::new(move |needed| {
                if has_room.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(NoRoom {
                        path: path.clone(),
                        free: 0,
                        needed,
                    })
                }
            })
        };
        let (report, rx) = reports();
        let writer =
            StoreWriter::spawn_with_room(store.clone(), ChunkIndex::default(), room, report)
                .unwrap();
        writer.submit(1, StoreOp::PutTasks(vec![new_task(1)]));
        assert_eq!(writer.sync(LIMIT).unwrap().durable, 1);
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), WriterReport::Durable(1));

        has_room.store(false, Ordering::SeqCst);
        writer.submit(2, StoreOp::PutTasks(vec![new_task(2)]));
        writer.submit(3, StoreOp::PutTasks(vec![new_task(3)]));
        let settled = writer.sync(LIMIT).unwrap();
        assert_eq!(settled.durable, 1);
        let (through, reason) = settled.failed.unwrap();
        assert_eq!(through, 3);
        assert!(
            reason.starts_with("no space left for the store"),
            "{reason}"
        );
        // One failure per batch the two ops fell into, the last one for 3.
        loop {
            match rx.recv_timeout(LIMIT).unwrap() {
                WriterReport::Failed { through: 3, .. } => break,
                WriterReport::Failed { through: 2, .. } => {}
                other => panic!("{other:?}"),
            }
        }
        // Nothing of the refused batch reached the store.
        assert_eq!(store.recover().unwrap().tasks.len(), 1);

        // Room again: the writer notices by itself, then writes.
        has_room.store(true, Ordering::SeqCst);
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), WriterReport::Recovered);
        writer.submit(4, StoreOp::PutTasks(vec![new_task(4)]));
        assert_eq!(writer.sync(LIMIT).unwrap().durable, 4);
        assert_eq!(rx.recv_timeout(LIMIT).unwrap(), WriterReport::Durable(4));
        let ids: Vec<u64> = store
            .recover()
            .unwrap()
            .tasks
            .iter()
            .map(|t| t.0.0)
            .collect();
        assert_eq!(ids, [1, 4]);
    }

    /// A tmpfs mounted for a test, lazily unmounted when dropped.
    struct Tmpfs(std::path::PathBuf);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    fn mount_tmpfs(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    #[test]
    fn a_write_that_fails_in_sled_fails_every_later_batch_and_the_writer_still_closes() {
        let tmp = tempfile::tempdir().unwrap();
        let Some(_tmpfs) = mount_tmpfs(&tmp.path().join("fs"), "4m") else {
            println!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        };
        let path = tmp.path().join("fs/store");
        let store = Store::open(&path).unwrap();
        let (report, rx) = reports();
        // No room check: the disk fills under sled itself.
        let writer = StoreWriter::spawn_with_room(
            store,
            ChunkIndex::default(),
            Box::new(|_| Ok(())),
            report,
        )
        .unwrap();
        let big = |id: u64| NewTask {
            input: Payload::from(vec![0x5a; 1 << 20]),
            ..new_task(id)
        };
        let mut failed_at = None;
        for seq in 1..=16 {
            writer.submit(seq, StoreOp::PutTasks(vec![big(seq)]));
            let settled = writer
                .sync(LIMIT)
                .expect("a failed write must not hang the writer");
            if settled.failed.is_some() {
                failed_at = Some(seq);
                break;
            }
        }
        let failed_at = failed_at.expect("a 4 MiB file system cannot hold 16 MiB");
        let mut saw_failure = false;
        while let Ok(report) = rx.try_recv() {
            if let WriterReport::Failed { through, reason } = report {
                assert_eq!(through, failed_at);
                assert!(reason.contains("restart"), "{reason}");
                saw_failure = true;
            }
        }
        assert!(saw_failure);
        // Later batches fail at once, whatever their size.
        writer.submit(100, StoreOp::PutTasks(vec![new_task(100)]));
        let settled = writer.sync(LIMIT).expect("no hang after a failure");
        assert_eq!(settled.failed.unwrap().0, 100);
        assert_eq!(
            rx.recv_timeout(LIMIT).unwrap(),
            WriterReport::Failed {
                through: 100,
                reason: settled_reason(&writer)
            }
        );
        // Closing does not wait on sled's final flush, which never ends.
        let started = std::time::Instant::now();
        drop(writer);
        assert!(started.elapsed() < CLOSE_LIMIT, "{:?}", started.elapsed());
    }

    fn settled_reason(writer: &StoreWriter) -> String {
        writer.sync(LIMIT).unwrap().failed.unwrap().1
    }
}
