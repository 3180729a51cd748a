//! Cobalt (ALCF Theta's scheduler): `qsub --mode script`, `qstat`, `qdel`.
//!
//! Cobalt's own machines are retired, so this module is tested against
//! output in the formats Cobalt's documentation and logs show, recorded in
//! the tests below. Rules:
//!
//! * `qsub` prints the job id (a number) on stdout; warnings may precede it
//!   on stderr. Its options carry the request (`-n` nodes, `-t` minutes,
//!   `-q` queue, `-A` project) and `-O` the prefix of the job's files
//!   (`PREFIX.output`, `PREFIX.error`, `PREFIX.cobaltlog`).
//! * `qstat JOBID…` lists queued and running jobs in a table; finished jobs
//!   are not listed. An unlisted job is settled from its `.cobaltlog`: "exit
//!   code of 0" is Completed, another exit code Failed, a walltime kill
//!   Timeout, a user delete Cancelled; without a log it is Missing.

use std::time::Duration;

use crate::channel::{Channel, CommandOutput};
use crate::scheduler::Scheduler;
use crate::site_values;
use crate::{
    JobId, JobSpec, JobState, JobStatus, Provider, ProviderError, SchedulerOptions, Submission,
    walltime_seconds,
};

/// The prefix of Cobalt's files in a block's run directory.
const PREFIX: &str = "cobalt";

/// Blocks as Cobalt jobs.
pub struct CobaltProvider {
    sched: Scheduler,
    options: SchedulerOptions,
}

impl std::fmt::Debug for CobaltProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CobaltProvider")
            .field("channel", &self.sched.channel.name())
            .finish()
    }
}

impl CobaltProvider {
    /// A provider running Cobalt's commands on `channel`, each limited to
    /// `timeout`.
    pub fn new(channel: Box<dyn Channel>, options: SchedulerOptions, timeout: Duration) -> Self {
        CobaltProvider {
            sched: Scheduler::new("cobalt", channel, timeout),
            options,
        }
    }
}

/// The `qsub` command (with `{script}` for the script's path) for `job`.
pub fn qsub_command(job: &JobSpec, o: &SchedulerOptions) -> String {
    use flotilla_launchers::shell::quote;
    let minutes = walltime_seconds(&o.walltime).map_or(30, |s| s.div_ceil(60).max(1));
    let mut cmd = format!(
        "qsub --mode script -n {} -t {minutes} -O {} --cwd {}",
        o.nodes_per_block.max(1),
        quote(&job.run_file(PREFIX)),
        quote(&job.run_dir)
    );
    if let Some(q) = &o.queue {
        cmd.push_str(&format!(" -q {}", quote(q)));
    }
    if let Some(a) = &o.account {
        cmd.push_str(&format!(" -A {}", quote(a)));
    }
    // Each word of the options is one argument, quoted: nothing in them
    // reaches the shell as syntax.
    for word in o.scheduler_options.split_whitespace() {
        cmd.push(' ');
        cmd.push_str(&quote(word));
    }
    cmd.push_str(" {script}");
    cmd
}

/// The job id in `qsub`'s output (its last line that is a number), or
/// why it holds none.
pub fn parse_qsub(stdout: &str) -> Result<JobId, String> {
    stdout
        .lines()
        .map(str::trim)
        .rfind(|l| site_values::valid_cobalt_id(l))
        .map(|l| JobId(l.to_owned()))
        .ok_or_else(|| {
            format!(
                "qsub printed no job id: `{}`",
                site_values::shown(stdout.trim())
            )
        })
}

/// A Cobalt state word as a [`JobState`].
pub fn state_of(state: &str) -> JobState {
    match state {
        "queued" | "starting" | "ready" => JobState::Pending,
        "running" | "exiting" | "killing" => JobState::Running,
        s if s.ends_with("hold") => JobState::Held,
        "dep_fail" => JobState::Failed,
        _ => JobState::Unknown,
    }
}

/// (job id, state) rows of `qstat`'s table.
pub fn parse_qstat(stdout: &str) -> Vec<(String, String)> {
    let mut lines = stdout.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split_whitespace().collect();
    let (Some(id_col), Some(state_col)) = (
        columns.iter().position(|c| c.eq_ignore_ascii_case("JobID")),
        columns.iter().position(|c| c.eq_ignore_ascii_case("State")),
    ) else {
        return Vec::new();
    };
    lines
        .filter(|l| !l.starts_with('='))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            Some((
                cells.get(id_col)?.to_string(),
                cells.get(state_col)?.to_string(),
            ))
        })
        .collect()
}

/// How a finished job ended, from its `.cobaltlog`.
pub fn settle_from_log(log: &str) -> JobStatus {
    let lower = log.to_lowercase();
    let state = if lower.contains("maximum execution time exceeded") || lower.contains("walltime") {
        JobState::Timeout
    } else if lower.contains("user delete")
        || lower.contains("job deleted")
        || lower.contains("qdel")
    {
        JobState::Cancelled
    } else if let Some(code) = exit_code(&lower) {
        if code == 0 {
            JobState::Completed
        } else {
            JobState::Failed
        }
    } else {
        JobState::Unknown
    };
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    JobStatus {
        id: JobId(String::new()),
        state,
        message: Some(format!("from the cobaltlog: {last}")),
    }
}

fn exit_code(lower: &str) -> Option<i64> {
    let at = lower.rfind("exit code of ")? + "exit code of ".len();
    let digits: String = lower[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// The states of `ids` from `qstat`'s output, `None` for a job it does
/// not list (the provider then settles it from its `.cobaltlog`). Public
/// for the fuzz targets, which feed it arbitrary scheduler output.
#[doc(hidden)]
pub fn status_from(ids: &[JobId], out: &CommandOutput) -> Result<Vec<Option<JobStatus>>, String> {
    if !out.success()
        && !out.stdout.contains("JobID")
        && !out.stderr.to_lowercase().contains("no matching")
    {
        return Err(format!(
            "qstat failed (exit {}): {}",
            out.status,
            out.complaint()
        ));
    }
    let rows = parse_qstat(&out.stdout);
    Ok(ids
        .iter()
        .map(|id| {
            rows.iter()
                .find(|(i, _)| *i == id.0)
                .map(|(_, state)| JobStatus {
                    id: id.clone(),
                    state: state_of(state),
                    message: Some(format!("Cobalt state {state}")),
                })
        })
        .collect())
}

impl Provider for CobaltProvider {
    fn name(&self) -> &'static str {
        "cobalt"
    }

    fn prepare(&self, job: &JobSpec) -> Result<Submission, ProviderError> {
        Scheduler::check_values(job, &self.options, false)?;
        Ok(Submission::file(
            "block.sh",
            format!("#!/bin/bash\n{}", job.body()),
            &qsub_command(job, &self.options),
        ))
    }

    fn submit(&mut self, job: &JobSpec) -> Result<JobId, ProviderError> {
        let s = self.prepare(job)?;
        self.sched
            .submit_script(job, &s.contents, &s.command, parse_qsub)
    }

    fn status(&mut self, ids: &[JobId]) -> Result<Vec<JobStatus>, ProviderError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.sched.run_on("qstat", ids, " ")?;
        let found = status_from(ids, &out).map_err(|reason| ProviderError::Command {
            provider: "cobalt",
            reason,
        })?;
        let mut statuses = Vec::with_capacity(ids.len());
        for (id, status) in ids.iter().zip(found) {
            let status = match status {
                Some(s) => s,
                None => {
                    let log = self
                        .sched
                        .jobs
                        .get(id)
                        .map(|j| j.run_file(&format!("{PREFIX}.cobaltlog")))
                        .and_then(|p| self.sched.channel.read_file(&p).ok());
                    match log {
                        Some(bytes) => JobStatus {
                            id: id.clone(),
                            ..settle_from_log(&String::from_utf8_lossy(&bytes))
                        },
                        None => JobStatus {
                            id: id.clone(),
                            state: JobState::Missing,
                            message: Some(
                                "Cobalt no longer lists this job and it left no cobaltlog".into(),
                            ),
                        },
                    }
                }
            };
            statuses.push(self.sched.explain(status, &format!("{PREFIX}.error")));
        }
        Ok(statuses)
    }

    fn cancel(&mut self, ids: &[JobId]) -> Result<(), ProviderError> {
        self.sched.cancel("qdel", ids, |out| {
            out.complaint().to_lowercase().contains("no jobs")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qsub_command_carries_the_request() {
        let job = JobSpec {
            name: "flotilla-ab12cd-block-1".into(),
            worker_init: String::new(),
            command: "exec flotilla-worker".into(),
            env: Default::default(),
            run_dir: "/home/a/fl/block-1".into(),
        };
        let o = SchedulerOptions {
            nodes_per_block: 8,
            walltime: "01:30:30".into(),
            queue: Some("debug-cache-quad".into()),
            account: Some("Alpha".into()),
            scheduler_options: "--attrs filesystems=home,theta-fs0".into(),
            ..SchedulerOptions::default()
        };
        assert_eq!(
            qsub_command(&job, &o),
            "qsub --mode script -n 8 -t 91 -O /home/a/fl/block-1/cobalt --cwd /home/a/fl/block-1 -q debug-cache-quad -A Alpha --attrs filesystems=home,theta-fs0 {script}"
        );
    }

    #[test]
    fn qsub_prints_the_id_after_any_warnings() {
        let out = "Job routed to queue \"debug-cache-quad\".\nMemory mode set to cache quad for queue debug-cache-quad\n368154\n";
        assert_eq!(parse_qsub(out), Ok(JobId("368154".into())));
        assert!(parse_qsub("qsub: error\n").is_err());
    }

    #[test]
    fn recorded_qstat_tables_map_to_states() {
        let table = "JobID   User   WallTime  Nodes  State       Location\n\
                     ======================================================\n\
                     368154  alice  00:30:00  8      queued      None\n\
                     368155  alice  00:30:00  8      running     3834-3841\n\
                     368156  alice  00:30:00  8      user_hold   None\n\
                     368157  alice  00:30:00  8      exiting     3842-3849\n";
        let rows = parse_qstat(table);
        assert_eq!(rows.len(), 4);
        let states: Vec<JobState> = rows.iter().map(|(_, s)| state_of(s)).collect();
        use JobState::*;
        assert_eq!(states, [Pending, Running, Held, Running]);
        let ids = [JobId("368155".into()), JobId("1".into())];
        let out = CommandOutput {
            status: 0,
            stdout: table.into(),
            stderr: String::new(),
        };
        let found = status_from(&ids, &out).unwrap();
        assert_eq!(found[0].as_ref().unwrap().state, Running);
        assert!(found[1].is_none(), "not listed: settled from its log");
        let broken = CommandOutput {
            status: 1,
            stdout: String::new(),
            stderr: "failed to connect to the queue manager\n".into(),
        };
        assert!(
            status_from(&ids, &broken)
                .unwrap_err()
                .contains("queue manager")
        );
    }

    #[test]
    fn finished_jobs_are_settled_from_their_cobaltlog() {
        let ok = "Thu Nov 26 10:00:01 +0000 (UTC) Command: '/home/a/fl/block-1/block.sh'\n\
                  Thu Nov 26 10:30:02 +0000 (UTC) Info: task completed normally with an exit code of 0; initiating job cleanup and removal\n";
        assert_eq!(settle_from_log(ok).state, JobState::Completed);
        let failed = "Thu Nov 26 10:00:05 +0000 (UTC) Info: task completed normally with an exit code of 127; initiating job cleanup and removal\n";
        assert_eq!(settle_from_log(failed).state, JobState::Failed);
        let killed = "Thu Nov 26 10:30:00 +0000 (UTC) Info: maximum execution time exceeded; initiating job termination\n";
        assert_eq!(settle_from_log(killed).state, JobState::Timeout);
        let deleted = "Thu Nov 26 10:10:00 +0000 (UTC) Info: user delete requested by alice\n";
        let s = settle_from_log(deleted);
        assert_eq!(s.state, JobState::Cancelled);
        assert!(s.message.unwrap().contains("user delete requested"));
    }
}
