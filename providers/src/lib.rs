//! Providers acquire compute for a pool, one *block* at a time.
//!
//! A block is the unit a provider hands out, and the workers one job script
//! starts: a local process group, a Slurm, PBS or Cobalt job of
//! `nodes_per_block` nodes, or a Kubernetes Deployment of `nodes_per_block`
//! pods, each pod running the block's script. The daemon asks a provider to
//! `submit` a block (a shell script that starts the block's workers through
//! a launcher), polls `status` of the blocks it holds, and `cancel`s blocks
//! it no longer needs; which blocks to hold is the pool's scaling strategy,
//! in the daemon, not here.
//!
//! Every provider reports the same [`JobState`] set, with the scheduler's
//! own reason text, so the daemon's scaling logic does not care which
//! scheduler is behind it. Providers are plain blocking libraries with no
//! knowledge of the daemon; the daemon calls them from a thread of their own
//! so a slow scheduler command never stalls request handling.
//!
//! | provider | a block is | commands | tested against |
//! |---|---|---|---|
//! | [`LocalProvider`] | a process group | fork/exec | the real thing |
//! | [`SlurmProvider`] | a job | `sbatch`, `squeue`, `scancel` | a real Slurm (tests/infra) and recorded output |
//! | [`PbsProvider`] | a job | `qsub`, `qstat -F json`, `qdel` | recorded output in PBS Pro's documented format |
//! | [`CobaltProvider`] | a job | `qsub`, `qstat`, `qdel` | recorded output in Cobalt's documented formats |
//! | [`KubernetesProvider`] | a Deployment of pods | `kubectl apply/get/delete` | generated manifests, recorded output, a real API server |
//!
//! Modules: one per provider ([`local`], [`slurm`], [`pbs`], [`cobalt`],
//! [`kubernetes`]); [`channel`] and [`ssh`], where every provider but the
//! local one runs its commands (this machine's shell, or one reused SSH
//! session to a login node); and, private, the job script and states every
//! provider shares (`job`), the submit, query and cancel steps the
//! command-driven providers share (`scheduler`), and reading the end of a
//! block's output (`tail`); and [`site_values`], the shapes of the site
//! values that reach a job script and of the job ids schedulers print.

pub mod channel;
pub mod cobalt;
mod job;
pub mod kubernetes;
pub mod local;
pub mod pbs;
mod scheduler;
pub mod site_values;
pub mod slurm;
pub mod ssh;
mod tail;

pub use channel::{Channel, ChannelError, CommandOutput, LocalChannel};
pub use cobalt::CobaltProvider;
pub use job::{
    JobId, JobSpec, JobState, JobStatus, SchedulerOptions, Submission, walltime_seconds,
};
pub use kubernetes::{KubernetesOptions, KubernetesProvider, ObjectsVolume};
pub use local::LocalProvider;
pub use pbs::PbsProvider;
pub use site_values::BadValue;
pub use slurm::SlurmProvider;
pub use ssh::{SshChannel, SshConfig};
pub use tail::tail_lines;

/// Who turned a submission down when it started nothing but a later try
/// may succeed without anyone's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedBy {
    /// The scheduler's submit command answered no.
    Scheduler,
    /// The scheduler could not be asked: the channel failed or the command
    /// timed out (an unreachable login node).
    Channel,
}

impl ProviderError {
    /// For an error of [`Provider::submit`]: who refused it and their words
    /// when a later try may succeed (a limit that frees up, a login node
    /// that comes back); `None` when the block itself is broken (its script
    /// could not be written, a value has the wrong shape, the scheduler's
    /// answer held no job id), which retrying cannot fix.
    pub fn refusal(&self) -> Option<(RefusedBy, &str)> {
        match self {
            ProviderError::Refused { message, .. } => Some((RefusedBy::Scheduler, message)),
            ProviderError::Unreachable { reason, .. } => Some((RefusedBy::Channel, reason)),
            _ => None,
        }
    }
}

/// Something that can start, watch and stop blocks.
pub trait Provider: Send {
    /// Short name used in configuration (`kind = "local"`).
    fn name(&self) -> &'static str;

    /// What submitting `job` would write and run, without doing it; the
    /// error is the one `submit` would give for a job it cannot describe.
    fn prepare(&self, job: &JobSpec) -> Result<Submission, ProviderError>;

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
    /// The scheduler's submit command ran and refused the job (a per-user
    /// or per-queue job limit, a node count over the partition's limit):
    /// nothing started, and a later try may succeed once the limit allows.
    #[error("cannot start block `{name}`: `{command}` refused it (exit {status}): {message}")]
    Refused {
        /// The job's name.
        name: String,
        /// The submit command.
        command: String,
        /// Its exit status.
        status: i32,
        /// What the scheduler said (its stderr, else its stdout).
        message: String,
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
    /// The scheduler could not be asked: the channel could not reach it,
    /// or a command did not finish in time. A later try may succeed.
    #[error("{provider}: {reason}")]
    Unreachable {
        /// Provider name.
        provider: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A scheduler command failed; the next poll retries.
    #[error("{provider}: {reason}")]
    Command {
        /// Provider name.
        provider: &'static str,
        /// What went wrong.
        reason: String,
    },
}
