//! Room on the store's file system, checked before every write.
//!
//! sled 0.34 does not survive running out of space: after a write fails
//! with `ENOSPC` its next flush waits forever on a condition that never
//! comes, and so does dropping the database (which flushes). So the store
//! writer never lets sled find the disk full: before each batch it asks the
//! file system how much room is left and refuses the batch (nothing of it
//! is written) when the batch, with a reserve for sled's own log segments
//! and clean-up, would not fit. A refused batch leaves the store as healthy
//! as it was, and writing resumes as soon as there is room again.

use std::path::{Path, PathBuf};

use crate::core::records::StoreOp;

/// Room kept free beyond a batch's own size: a few of sled's 512 KiB log
/// segments and what its background clean-up rewrites.
pub const RESERVE_BYTES: u64 = 8 << 20;

/// Bytes a batch is assumed to need for each byte of its payloads (sled
/// writes a value to its log, and may rewrite it once when cleaning).
const WRITE_FACTOR: u64 = 2;

/// Fixed bytes counted per record besides its payloads (keys, framing).
const RECORD_OVERHEAD: u64 = 128;

/// Not enough room for a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no space left for the store: {free_mib:.1} MiB free on the file system of {path}, {needed_mib:.1} MiB needed (the write and a reserve); make room, then submit again",
    path = .path.display(),
    free_mib = *.free as f64 / 1048576.0,
    needed_mib = *.needed as f64 / 1048576.0
)]
pub struct NoRoom {
    /// The store's directory.
    pub path: PathBuf,
    /// Bytes available to this process.
    pub free: u64,
    /// Bytes the batch would need, reserve included.
    pub needed: u64,
}

/// Checks the room on the file system holding one directory.
#[derive(Debug, Clone)]
pub struct Room {
    path: PathBuf,
    reserve: u64,
}

impl Room {
    /// Checks room under `path`, keeping `reserve` bytes free.
    pub fn new(path: &Path, reserve: u64) -> Room {
        Room {
            path: path.to_path_buf(),
            reserve,
        }
    }

    /// Ok if `bytes` more (plus the reserve) fit. A file system that cannot
    /// be asked is assumed to have room: the write itself then says what is
    /// wrong.
    pub fn check(&self, bytes: u64) -> Result<(), NoRoom> {
        let Some(free) = self.free() else {
            return Ok(());
        };
        let needed = bytes.saturating_add(self.reserve);
        if free >= needed {
            Ok(())
        } else {
            Err(NoRoom {
                path: self.path.clone(),
                free,
                needed,
            })
        }
    }

    /// Bytes available to unprivileged writers, if the file system says.
    // The field types are narrower than u64 on some platforms.
    #[allow(clippy::useless_conversion)]
    fn free(&self) -> Option<u64> {
        match nix::sys::statvfs::statvfs(&self.path) {
            Ok(s) => {
                Some(u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot ask the store's file system for its free space");
                None
            }
        }
    }
}

/// The bytes writing `ops` may take on disk (an upper estimate).
pub fn estimate(ops: &[StoreOp]) -> u64 {
    let payload: u64 = ops.iter().map(op_bytes).sum();
    payload.saturating_mul(WRITE_FACTOR)
}

fn op_bytes(op: &StoreOp) -> u64 {
    let len = |n: usize| n as u64;
    match op {
        StoreOp::PutTasks(tasks) => tasks
            .iter()
            .map(|t| len(t.input.len() + t.params.len() + t.servable.len()) + RECORD_OVERHEAD)
            .sum(),
        StoreOp::PutResults(results) => results
            .iter()
            .map(|(_, r)| {
                let outcome = match &r.outcome {
                    flotilla_protocol::task::Outcome::Output(p) => p.len(),
                    flotilla_protocol::task::Outcome::Error(m) => m.len(),
                };
                len(outcome + r.worker.as_ref().map_or(0, String::len)) + RECORD_OVERHEAD
            })
            .sum(),
        StoreOp::PutMemo {
            servable, output, ..
        } => len(servable.len() + output.len()) + RECORD_OVERHEAD,
        // A servable record is a manifest and a file list: small, but not
        // tiny.
        StoreOp::PutServable(_) => 64 * 1024,
        // Forgetting rewrites the chunks it touches.
        StoreOp::Forget(ids) => len(ids.len()) * RECORD_OVERHEAD,
        StoreOp::RemoveMemo(keys) => len(keys.len()) * RECORD_OVERHEAD,
        StoreOp::ReserveIds { .. }
        | StoreOp::RemoveServable(_)
        | StoreOp::PutBlock(_)
        | StoreOp::RemoveBlock(_) => RECORD_OVERHEAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::records::NewTask;
    use flotilla_protocol::task::{Payload, TaskId};
    use std::sync::Arc;

    #[test]
    fn a_batch_fits_only_with_its_reserve() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(Room::new(tmp.path(), 0).check(0).is_ok());
        let err = Room::new(tmp.path(), u64::MAX).check(1).unwrap_err();
        assert_eq!(err.needed, u64::MAX);
        let message = err.to_string();
        assert!(
            message.starts_with("no space left for the store"),
            "{message}"
        );
        assert!(
            message.contains(&tmp.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn the_estimate_counts_payloads_twice() {
        let task = NewTask {
            id: TaskId(1),
            servable: Arc::from("noop"),
            params: Payload::new(),
            input: Payload::from(vec![0u8; 1000]),
            submitted_us: 0,
            owner: 0,
        };
        let bytes = estimate(&[StoreOp::PutTasks(vec![task])]);
        assert_eq!(bytes, 2 * (1000 + 4 + RECORD_OVERHEAD));
    }
}
