//! Providers acquire compute for worker pools, one *block* at a time.
//!
//! A block is the unit a provider hands out: a local process group, a Slurm or
//! PBS job, a Kubernetes pod. The daemon asks a provider to `submit` a block
//! (a shell script that starts the block's workers through a launcher), polls
//! `status` of the blocks it holds, and `cancel`s blocks it no longer needs.
//!
//! Every provider reports the same [`JobState`] set, borrowed from Parsl's,
//! so the daemon's scaling logic does not care which scheduler is behind it.
//! Providers are plain blocking libraries with no knowledge of the daemon;
//! the daemon calls them from a thread of their own so a slow scheduler
//! command never stalls request handling.

mod job;
pub mod local;
mod tail;

pub use job::{JobId, JobSpec, JobState, JobStatus};
pub use local::LocalProvider;
pub use tail::tail_lines;

/// Something that can start, watch and stop blocks.
pub trait Provider: Send {
    /// Short name used in configuration (`kind = "local"`).
    fn name(&self) -> &'static str;

    /// Starts a block running `job.script`; returns the provider's job id.
    fn submit(&mut self, job: &JobSpec) -> Result<JobId, ProviderError>;

    /// Current state of each job in `ids`, in the same order. A job the
    /// provider no longer knows is [`JobState::Missing`], not an error.
    fn status(&mut self, ids: &[JobId]) -> Result<Vec<JobStatus>, ProviderError>;

    /// Stops the jobs in `ids`. Cancelling a finished job is not an error.
    fn cancel(&mut self, ids: &[JobId]) -> Result<(), ProviderError>;
}

/// A provider operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The job could not be started.
    #[error("cannot start block `{name}`: {reason}")]
    Submit {
        /// The job's name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing the block's files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Signalling a job failed for a reason other than "already gone".
    #[error("cannot cancel job {id}: {reason}")]
    Cancel {
        /// The job.
        id: JobId,
        /// What went wrong.
        reason: String,
    },
}
