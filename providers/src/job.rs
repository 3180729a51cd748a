//! What a provider is asked to run and what it reports back.

use std::collections::BTreeMap;
use std::fmt;

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
    /// Job name, unique per daemon, usable as a DNS label
    /// (`flotilla-3fa9c1-block-3`).
    pub name: String,
    /// Shell lines run before the workers start (`module load …`); a
    /// failing line fails the block.
    pub worker_init: String,
    /// Shell text that starts the block's workers (from a launcher).
    pub command: String,
    /// Extra environment for the workers (secrets travel here, never in
    /// argv).
    pub env: BTreeMap<String, String>,
    /// Directory for the job's script, stdout and stderr, on the scheduler's
    /// side of the channel; created if missing.
    pub run_dir: String,
}

impl JobSpec {
    /// A file in the run directory.
    pub fn run_file(&self, name: &str) -> String {
        format!("{}/{name}", self.run_dir.trim_end_matches('/'))
    }

    /// Where the job's standard output goes.
    pub fn stdout_path(&self) -> String {
        self.run_file("stdout")
    }

    /// Where the job's standard error goes.
    pub fn stderr_path(&self) -> String {
        self.run_file("stderr")
    }

    /// The part of every job script after the scheduler's directives:
    /// environment, `worker_init` (stopping at the first failing line), then
    /// the workers.
    pub fn body(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s.push_str(&format!(
                "export {k}={}\n",
                flotilla_launchers::shell::quote(v)
            ));
        }
        if !self.worker_init.trim().is_empty() {
            s.push_str("set -e\n");
            s.push_str(self.worker_init.trim_end());
            s.push_str("\nset +e\n");
        }
        s.push_str(&self.command);
        if !self.command.ends_with('\n') {
            s.push('\n');
        }
        s
    }
}

/// What submitting a block does, before it is done: the file written into
/// the block's run directory and the command that submits it. Providers
/// submit exactly this, so `flotilla block preview` shows what a site
/// will receive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// The file's name in the run directory (`block.sh`, `block.json`).
    pub file: String,
    /// Its contents.
    pub contents: String,
    /// The submit command, with `{script}` where the file's path goes.
    pub command: String,
    /// Environment given to the started process rather than written into
    /// the file (the local provider keeps the secret out of its file).
    pub env: BTreeMap<String, String>,
}

impl Submission {
    /// A file submitted with `command`, everything else in the file.
    pub fn file(file: &str, contents: String, command: &str) -> Self {
        Submission {
            file: file.to_owned(),
            contents,
            command: command.to_owned(),
            env: BTreeMap::new(),
        }
    }

    /// The command as it runs for `job`: the file's path, quoted for the
    /// shell, in place of `{script}`.
    pub fn command_line(&self, job: &JobSpec) -> String {
        submit_command(job, &self.file, &self.command)
    }
}

/// `command` with the path of `job`'s run file `file`, quoted for the
/// shell, in place of `{script}`.
pub fn submit_command(job: &JobSpec, file: &str, command: &str) -> String {
    command.replace(
        "{script}",
        &flotilla_launchers::shell::quote(&job.run_file(file)),
    )
}

/// What a batch scheduler is asked for, from the site file's `[provider]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SchedulerOptions {
    /// Nodes per block.
    pub nodes_per_block: u32,
    /// Wall time per block, `HH:MM:SS`.
    pub walltime: String,
    /// Slurm partition.
    pub partition: Option<String>,
    /// PBS or Cobalt queue.
    pub queue: Option<String>,
    /// Account or project charged.
    pub account: Option<String>,
    /// Slurm quality of service.
    pub qos: Option<String>,
    /// Slurm constraint (node features).
    pub constraint: Option<String>,
    /// PBS resources added to each chunk of the select statement
    /// (`system=polaris`).
    pub select_resources: Option<String>,
    /// PBS placement (`scatter`, `pack`).
    pub place: Option<String>,
    /// Whole nodes only.
    pub exclusive: bool,
    /// GPUs per node (0: none requested).
    pub gpus_per_node: u32,
    /// Raw directive lines appended after Flotilla's own.
    pub scheduler_options: String,
}

/// Seconds in a `HH:MM:SS` (or `MM:SS`, or `D-HH:MM:SS`) wall time;
/// `None` for anything else, a number that is not plain digits included,
/// and for a total too large to count.
pub fn walltime_seconds(walltime: &str) -> Option<u64> {
    let number = |p: &str| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u64>().ok())
            .flatten()
    };
    let (days, rest) = match walltime.split_once('-') {
        Some((d, r)) => (number(d)?, r),
        None => (0, walltime),
    };
    let parts: Vec<u64> = rest.split(':').map(number).collect::<Option<_>>()?;
    let secs = match parts.as_slice() {
        [h, m, s] if *m < 60 && *s < 60 => h.checked_mul(3600)?.checked_add(m * 60 + s)?,
        [m, s] if *s < 60 => m.checked_mul(60)?.checked_add(*s)?,
        _ => return None,
    };
    days.checked_mul(86_400)?.checked_add(secs)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walltimes_read_in_slurm_forms() {
        assert_eq!(walltime_seconds("00:30:00"), Some(1800));
        assert_eq!(walltime_seconds("1-02:00:00"), Some(93_600));
        assert_eq!(walltime_seconds("45:10"), Some(2710));
        assert_eq!(walltime_seconds("1:60:00"), None);
        assert_eq!(walltime_seconds("soon"), None);
        assert_eq!(walltime_seconds("+1:00:00"), None);
    }

    #[test]
    fn walltimes_too_large_to_count_are_refused_not_wrapped() {
        assert_eq!(walltime_seconds("99999999999999999:00:00"), None);
        assert_eq!(walltime_seconds("999999999999999999-00:00:00"), None);
        assert_eq!(walltime_seconds("9999999999999999999:00"), None);
    }
}
