//! What the batch-scheduler providers share: writing the job script,
//! submitting it, and explaining a block's end with its stderr.

use std::collections::HashMap;
use std::time::Duration;

use crate::channel::{Channel, CommandOutput, tail};
use crate::site_values::check_path;
use crate::{JobId, JobSpec, JobState, JobStatus, ProviderError, SchedulerOptions};

/// Lines of a failed block's stderr shown to the user.
const STDERR_TAIL_LINES: usize = 10;

/// A channel with a command timeout, and the jobs a provider submitted.
pub struct Scheduler {
    /// Where commands run.
    pub channel: Box<dyn Channel>,
    /// Limit for every scheduler command.
    pub timeout: Duration,
    /// Jobs submitted, with their specs (for run directories).
    pub jobs: HashMap<JobId, JobSpec>,
    /// Provider name, for messages.
    pub name: &'static str,
}

impl Scheduler {
    /// A scheduler driver on `channel`.
    pub fn new(name: &'static str, channel: Box<dyn Channel>, timeout: Duration) -> Self {
        Scheduler {
            channel,
            timeout,
            jobs: HashMap::new(),
            name,
        }
    }

    /// Runs a scheduler command; channel failures (timeouts included) are
    /// errors of this call only.
    pub fn run(&mut self, command: &str) -> Result<CommandOutput, ProviderError> {
        let name = self.name;
        self.channel
            .run(command, self.timeout)
            .map_err(|e| channel_trouble(name, &e))
    }

    /// Writes `script` as the job's `block.sh` (mode 0700: it holds the
    /// secret) and runs `submit` with `{script}` replaced by its path;
    /// returns the command's stdout.
    pub fn submit(
        &mut self,
        job: &JobSpec,
        file: &str,
        script: &str,
        submit: &str,
    ) -> Result<String, ProviderError> {
        let path = job.run_file(file);
        let provider = self.name;
        self.channel
            .write_file(&path, script.as_bytes(), 0o700)
            .map_err(|e| {
                if e.is_transient() {
                    channel_trouble(provider, &e)
                } else {
                    ProviderError::Submit {
                        name: job.name.clone(),
                        reason: e.to_string(),
                    }
                }
            })?;
        let command = crate::job::submit_command(job, file, submit);
        let out = self.run(&command)?;
        if !out.success() {
            return Err(ProviderError::Refused {
                name: job.name.clone(),
                command,
                status: out.status,
                message: out.complaint(),
            });
        }
        Ok(out.stdout)
    }

    /// Checks that `options` and the job's run directory have the shapes
    /// a job script can carry (see [`crate::site_values`]), so no value
    /// breaks out of its directive whatever checked it before.
    pub fn check_values(
        job: &JobSpec,
        options: &SchedulerOptions,
        directive_lines: bool,
    ) -> Result<(), ProviderError> {
        let bad = |e: crate::BadValue| ProviderError::Submit {
            name: job.name.clone(),
            reason: e.to_string(),
        };
        options.check(directive_lines).map_err(bad)?;
        check_path("run_dir", &job.run_dir).map_err(bad)
    }

    /// Submits `script` as the job's `block.sh` with `command` (see
    /// [`Scheduler::submit`]), reads the job id from its output with
    /// `parse`, and remembers the job; the error names the submit tool when
    /// its output holds no id, or says why what it holds is not one.
    pub fn submit_script(
        &mut self,
        job: &JobSpec,
        script: &str,
        command: &str,
        parse: impl Fn(&str) -> Result<JobId, String>,
    ) -> Result<JobId, ProviderError> {
        let out = self.submit(job, "block.sh", script, command)?;
        let id = parse(&out).map_err(|reason| ProviderError::Submit {
            name: job.name.clone(),
            reason,
        })?;
        self.jobs.insert(id.clone(), job.clone());
        Ok(id)
    }

    /// Runs `command` with the ids appended, each quoted for the shell,
    /// joined by `separator` (one call for every job, as the schedulers
    /// take them).
    pub fn run_on(
        &mut self,
        command: &str,
        ids: &[JobId],
        separator: &str,
    ) -> Result<CommandOutput, ProviderError> {
        let list: Vec<String> = ids
            .iter()
            .map(|i| flotilla_launchers::shell::quote(&i.0))
            .collect();
        self.run(&format!("{command} {}", list.join(separator)))
    }

    /// The states of `ids` from one `command` (see [`Scheduler::run_on`])
    /// read by `parse`, blocks that ended badly explained by their stderr.
    pub fn statuses(
        &mut self,
        command: &str,
        ids: &[JobId],
        separator: &str,
        parse: impl Fn(&[JobId], &CommandOutput) -> Result<Vec<JobStatus>, String>,
    ) -> Result<Vec<JobStatus>, ProviderError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.run_on(command, ids, separator)?;
        let statuses = parse(ids, &out).map_err(|reason| ProviderError::Command {
            provider: self.name,
            reason,
        })?;
        Ok(statuses
            .into_iter()
            .map(|s| self.explain(s, "stderr"))
            .collect())
    }

    /// Cancels `ids` with `command` (see [`Scheduler::run_on`]); a failure
    /// `harmless` accepts (the jobs had already ended) is not an error.
    pub fn cancel(
        &mut self,
        command: &str,
        ids: &[JobId],
        harmless: impl Fn(&CommandOutput) -> bool,
    ) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let out = self.run_on(command, ids, " ")?;
        if !out.success() && !harmless(&out) {
            return Err(ProviderError::Cancel {
                id: ids[0].clone(),
                reason: out.complaint(),
            });
        }
        Ok(())
    }

    /// For a block that ended badly, adds the tail of its stderr (read from
    /// `stderr_file` in its run directory) to the status message.
    pub fn explain(&mut self, mut status: JobStatus, stderr_file: &str) -> JobStatus {
        let bad = matches!(
            status.state,
            JobState::Failed | JobState::Timeout | JobState::Missing | JobState::Cancelled
        );
        if !bad {
            return status;
        }
        let Some(path) = self.jobs.get(&status.id).map(|j| j.run_file(stderr_file)) else {
            return status;
        };
        if let Some(t) = tail(self.channel.as_mut(), &path, STDERR_TAIL_LINES) {
            let head = status
                .message
                .take()
                .unwrap_or_else(|| status.state.to_string());
            status.message = Some(format!("{head}; stderr ends with:\n{t}"));
        }
        status
    }
}

/// A channel failure as a provider error: [`ProviderError::Unreachable`]
/// when a later try may succeed by itself, else [`ProviderError::Command`].
fn channel_trouble(provider: &'static str, e: &crate::ChannelError) -> ProviderError {
    let reason = e.to_string();
    if e.is_transient() {
        ProviderError::Unreachable { provider, reason }
    } else {
        ProviderError::Command { provider, reason }
    }
}

/// `#PREFIX flag` lines for each set option, then the raw lines.
pub fn directives(prefix: &str, flags: &[Option<String>], raw: &str) -> String {
    let mut s = String::new();
    for f in flags.iter().flatten() {
        s.push_str(&format!("#{prefix} {f}\n"));
    }
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(line.trim());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::channel::ChannelError;
    use crate::{PbsProvider, Provider, RefusedBy, SlurmProvider};

    /// A channel that records what it is asked and answers every command
    /// with `stdout`, or with `refusal` (an exit status and stderr), or
    /// fails as an unreachable host would when `unreachable`.
    struct Recording {
        log: Arc<Mutex<Vec<String>>>,
        stdout: String,
        refusal: Option<(i32, String)>,
        unreachable: bool,
    }

    impl Channel for Recording {
        fn name(&self) -> String {
            "recording".into()
        }

        fn run(&mut self, command: &str, _: Duration) -> Result<CommandOutput, ChannelError> {
            self.log.lock().unwrap().push(command.to_owned());
            if self.unreachable {
                return Err(ChannelError::Timeout {
                    channel: self.name(),
                    command: command.to_owned(),
                    after: Duration::from_secs(5),
                });
            }
            let (status, stderr) = self.refusal.clone().unwrap_or_default();
            Ok(CommandOutput {
                status,
                stdout: self.stdout.clone(),
                stderr,
            })
        }

        fn write_file(&mut self, path: &str, _: &[u8], _: u32) -> Result<(), ChannelError> {
            self.log.lock().unwrap().push(format!("write {path}"));
            if self.unreachable {
                return Err(ChannelError::Unreachable {
                    channel: self.name(),
                    reason: "cannot connect: Connection refused (os error 111)".into(),
                });
            }
            Ok(())
        }

        fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ChannelError> {
            Err(ChannelError::File {
                channel: self.name(),
                path: path.to_owned(),
                reason: "none".into(),
            })
        }
    }

    fn recording(stdout: &str) -> (Box<dyn Channel>, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let channel = Recording {
            log: log.clone(),
            stdout: stdout.to_owned(),
            refusal: None,
            unreachable: false,
        };
        (Box::new(channel), log)
    }

    /// A channel whose every command exits with `status` and `stderr`.
    fn refusing(status: i32, stderr: &str) -> Box<dyn Channel> {
        Box::new(Recording {
            log: Arc::default(),
            stdout: String::new(),
            refusal: Some((status, stderr.to_owned())),
            unreachable: false,
        })
    }

    fn options() -> SchedulerOptions {
        SchedulerOptions {
            walltime: "00:10:00".into(),
            ..SchedulerOptions::default()
        }
    }

    // What sbatch prints when a QOS's MaxSubmitJobsPerUser is reached, as
    // users of such sites report it.
    const SBATCH_QOS_LIMIT: &str = "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)\n";

    // Recorded from Slurm 22.05 (the test cluster, EnforcePartLimits=ALL):
    // `sbatch -N2` into a partition of MaxNodes=1, exit 1.
    const SBATCH_PARTITION_MAX_NODES: &str =
        "sbatch: error: Batch job submission failed: Node count specification invalid\n";

    // PBS Pro's qsub on a queue with a per-user limit such as ALCF's
    // debug queue (the message from the issue this answers).
    const QSUB_QUEUE_LIMIT: &str = "qsub: would exceed queue generic's per-user limit\n";

    #[test]
    fn a_scheduler_that_says_no_is_a_refusal_with_its_own_words() {
        let mut slurm = SlurmProvider::new(
            refusing(1, SBATCH_QOS_LIMIT),
            options(),
            Duration::from_secs(5),
        );
        let e = slurm.submit(&job()).unwrap_err();
        let (by, message) = e.refusal().unwrap();
        assert_eq!(by, RefusedBy::Scheduler);
        assert!(message.starts_with("sbatch: error: QOSMaxSubmitJobPerUserLimit"));
        assert!(message.ends_with("time limits)"), "trimmed: {message:?}");
        assert!(e.to_string().contains("exit 1"), "{e}");

        let mut slurm = SlurmProvider::new(
            refusing(1, SBATCH_PARTITION_MAX_NODES),
            options(),
            Duration::from_secs(5),
        );
        let e = slurm.submit(&job()).unwrap_err();
        assert_eq!(
            e.refusal(),
            Some((
                RefusedBy::Scheduler,
                "sbatch: error: Batch job submission failed: Node count specification invalid"
            ))
        );

        let mut pbs = PbsProvider::new(
            refusing(1, QSUB_QUEUE_LIMIT),
            options(),
            Duration::from_secs(5),
        );
        let e = pbs.submit(&job()).unwrap_err();
        assert_eq!(
            e.refusal(),
            Some((
                RefusedBy::Scheduler,
                "qsub: would exceed queue generic's per-user limit"
            ))
        );
    }

    #[test]
    fn an_unreachable_scheduler_is_a_refusal_by_the_channel() {
        let channel = Box::new(Recording {
            log: Arc::default(),
            stdout: String::new(),
            refusal: None,
            unreachable: true,
        });
        let mut slurm = SlurmProvider::new(channel, options(), Duration::from_secs(5));
        let e = slurm.submit(&job()).unwrap_err();
        let (by, message) = e.refusal().unwrap();
        assert_eq!(by, RefusedBy::Channel);
        assert!(message.contains("Connection refused"), "{message}");
    }

    #[test]
    fn a_submit_command_that_times_out_is_a_refusal_by_the_channel() {
        struct Hangs;
        impl Channel for Hangs {
            fn name(&self) -> String {
                "hangs".into()
            }
            fn run(
                &mut self,
                command: &str,
                after: Duration,
            ) -> Result<CommandOutput, ChannelError> {
                Err(ChannelError::Timeout {
                    channel: self.name(),
                    command: command.to_owned(),
                    after,
                })
            }
            fn write_file(&mut self, _: &str, _: &[u8], _: u32) -> Result<(), ChannelError> {
                Ok(())
            }
            fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ChannelError> {
                Err(ChannelError::File {
                    channel: self.name(),
                    path: path.to_owned(),
                    reason: "none".into(),
                })
            }
        }
        let mut pbs = PbsProvider::new(Box::new(Hangs), options(), Duration::from_secs(5));
        let e = pbs.submit(&job()).unwrap_err();
        let (by, message) = e.refusal().unwrap();
        assert_eq!(by, RefusedBy::Channel);
        assert!(message.contains("did not finish within 5s"), "{message}");
    }

    #[test]
    fn a_channel_that_cannot_write_the_script_for_good_is_no_refusal() {
        // A host key or login refused, a full disk: only a person fixes it.
        struct NoWrite;
        impl Channel for NoWrite {
            fn name(&self) -> String {
                "nowrite".into()
            }
            fn run(&mut self, _: &str, _: Duration) -> Result<CommandOutput, ChannelError> {
                Err(ChannelError::Connection {
                    channel: self.name(),
                    reason: "the host key is not in known_hosts".into(),
                })
            }
            fn write_file(&mut self, path: &str, _: &[u8], _: u32) -> Result<(), ChannelError> {
                Err(ChannelError::File {
                    channel: self.name(),
                    path: path.to_owned(),
                    reason: "No space left on device".into(),
                })
            }
            fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ChannelError> {
                Err(ChannelError::File {
                    channel: self.name(),
                    path: path.to_owned(),
                    reason: "none".into(),
                })
            }
        }
        let mut slurm = SlurmProvider::new(Box::new(NoWrite), options(), Duration::from_secs(5));
        assert!(slurm.submit(&job()).unwrap_err().refusal().is_none());
    }

    #[test]
    fn a_broken_block_is_no_refusal() {
        // A value that would break out of its directive: retrying cannot
        // help, so it counts as a failed block.
        let (channel, _) = recording("1\n");
        let mut o = options();
        o.partition = Some("debug\ntouch X".into());
        let mut slurm = SlurmProvider::new(channel, o, Duration::from_secs(5));
        assert!(slurm.submit(&job()).unwrap_err().refusal().is_none());
        // An answer without a job id.
        let (channel, _) = recording("no id here\n");
        let mut pbs = PbsProvider::new(channel, options(), Duration::from_secs(5));
        assert!(pbs.submit(&job()).unwrap_err().refusal().is_none());
    }

    fn job() -> JobSpec {
        JobSpec {
            name: "flotilla-ab12cd-block-0".into(),
            worker_init: String::new(),
            command: "exec flotilla-worker".into(),
            env: Default::default(),
            run_dir: "/scratch/fl/block-0".into(),
        }
    }

    #[test]
    fn a_value_that_breaks_out_of_its_directive_submits_nothing() {
        let (channel, log) = recording("1\n");
        let options = SchedulerOptions {
            walltime: "00:10:00".into(),
            partition: Some("debug\ntouch X".into()),
            ..SchedulerOptions::default()
        };
        let mut slurm = SlurmProvider::new(channel, options, Duration::from_secs(5));
        let e = slurm.submit(&job()).unwrap_err().to_string();
        assert!(
            e.contains("`partition`") && e.contains("debug\\ntouch X"),
            "{e}"
        );
        assert!(log.lock().unwrap().is_empty(), "{:?}", log.lock().unwrap());

        let (channel, log) = recording("1\n");
        let options = SchedulerOptions {
            walltime: "00:10:00".into(),
            scheduler_options: "#PBS -l x=y\ntouch X".into(),
            ..SchedulerOptions::default()
        };
        let mut pbs = PbsProvider::new(channel, options, Duration::from_secs(5));
        let e = pbs.submit(&job()).unwrap_err().to_string();
        assert!(e.contains("`scheduler_options`"), "{e}");
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn a_job_id_that_is_not_one_never_reaches_a_command() {
        let (channel, log) = recording("12.srv;touch X\n");
        let options = SchedulerOptions {
            walltime: "00:10:00".into(),
            ..SchedulerOptions::default()
        };
        let mut pbs = PbsProvider::new(channel, options, Duration::from_secs(5));
        let e = pbs.submit(&job()).unwrap_err().to_string();
        assert!(e.contains("qsub printed `12.srv;touch X`"), "{e}");
        // Only the script was written and qsub run; nothing used the id.
        assert_eq!(log.lock().unwrap().len(), 2);
    }

    #[test]
    fn ids_are_quoted_in_the_commands_they_go_into() {
        let (channel, log) = recording("");
        let mut sched = Scheduler::new("test", channel, Duration::from_secs(5));
        let ids = [JobId("7".into()), JobId("8;touch X".into())];
        sched.run_on("scancel", &ids, " ").unwrap();
        assert_eq!(log.lock().unwrap()[0], "scancel 7 '8;touch X'");
    }
}
