//! What a provider is asked to run and what it reports back.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The provider's own name for a submitted block (a pid, a Slurm job id, a
/// pod name).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One block to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// Human-readable job name (`flotilla-block-3`).
    pub name: String,
    /// POSIX shell script that starts the block's workers (from a launcher).
    pub script: String,
    /// Extra environment for the script (secrets travel here, never in argv).
    pub env: BTreeMap<String, String>,
    /// Directory for the job's script, stdout and stderr; created if missing.
    pub work_dir: PathBuf,
}

impl JobSpec {
    /// Where the job's standard output goes.
    pub fn stdout_path(&self) -> PathBuf {
        self.work_dir.join("stdout")
    }

    /// Where the job's standard error goes.
    pub fn stderr_path(&self) -> PathBuf {
        self.work_dir.join("stderr")
    }
}

/// The life of a block, the same for every provider (Parsl's set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Submitted, waiting for resources.
    Pending,
    /// Running.
    Running,
    /// Cancelled on request.
    Cancelled,
    /// Ended with success.
    Completed,
    /// Ended with an error.
    Failed,
    /// Killed by its time limit.
    Timeout,
    /// Held by the scheduler.
    Held,
    /// The scheduler no longer knows the job.
    Missing,
    /// The provider could not tell.
    Unknown,
}

impl JobState {
    /// True when the job can no longer run workers.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Cancelled
                | JobState::Completed
                | JobState::Failed
                | JobState::Timeout
                | JobState::Missing
        )
    }

    /// Upper-case name, as schedulers and the CLI print it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Cancelled => "CANCELLED",
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Timeout => "TIMEOUT",
            JobState::Held => "HELD",
            JobState::Missing => "MISSING",
            JobState::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state with the provider's explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStatus {
    /// The job.
    pub id: JobId,
    /// Its state.
    pub state: JobState,
    /// Why it is in that state, when the provider knows (exit status and the
    /// tail of stderr for a failed job).
    pub message: Option<String>,
}
