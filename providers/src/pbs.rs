//! PBS Pro (and OpenPBS): `qsub`, `qstat -f -F json -x`, `qdel`.
//!
//! No PBS server can be installed where Flotilla is tested, so this module is
//! tested against output in the format PBS Pro 2022 documents and prints
//! (`qstat -f -F json` with `-x` to include finished jobs), recorded in the
//! tests below. Rules:
//!
//! * `qsub` prints the job id (`1234.server`); a rejection exits non-zero
//!   with the reason on stderr.
//! * `qstat -x` keeps finished jobs (state `F`) with their `Exit_status`;
//!   ids it does not know are reported on stderr (`Unknown Job Id`) and are
//!   [`JobState::Missing`].
//! * Finished jobs: exit status 0 is Completed, -29 (`JOB_EXEC_KILL_WALLTIME`)
//!   is Timeout, 271 (killed by SIGTERM, what `qdel` sends) is Cancelled,
//!   anything else is Failed. The job's `comment` is kept as the reason.

use std::time::Duration;

use crate::channel::{Channel, CommandOutput};
use crate::scheduler::{Scheduler, directives};
use crate::site_values;
use crate::{
    JobId, JobSpec, JobState, JobStatus, Provider, ProviderError, SchedulerOptions, Submission,
};

/// Blocks as PBS Pro jobs.
pub struct PbsProvider {
    sched: Scheduler,
    options: SchedulerOptions,
}

impl std::fmt::Debug for PbsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PbsProvider")
            .field("channel", &self.sched.channel.name())
            .finish()
    }
}

impl PbsProvider {
    /// A provider running PBS's commands on `channel`, each limited to
    /// `timeout`.
    pub fn new(channel: Box<dyn Channel>, options: SchedulerOptions, timeout: Duration) -> Self {
        PbsProvider {
            sched: Scheduler::new("pbspro", channel, timeout),
            options,
        }
    }
}

/// The batch script for `job`.
pub fn script(job: &JobSpec, o: &SchedulerOptions) -> String {
    let mut select = format!("select={}", o.nodes_per_block.max(1));
    if o.gpus_per_node > 0 {
        select.push_str(&format!(":ngpus={}", o.gpus_per_node));
    }
    if let Some(resources) = &o.select_resources {
        select.push(':');
        select.push_str(resources);
    }
    // Whole nodes are PBS's `excl` sharing, added to the placement asked
    // for (scatter unless one is).
    let place = match (&o.place, o.exclusive) {
        (Some(place), true) if !place.contains("excl") => Some(format!("{place}:excl")),
        (Some(place), _) => Some(place.clone()),
        (None, true) => Some("scatter:excl".to_owned()),
        (None, false) => None,
    };
    let flags = [
        Some(format!("-N {}", job.name)),
        Some(format!("-o {}", job.stdout_path())),
        Some(format!("-e {}", job.stderr_path())),
        Some(format!("-l {select}")),
        Some(format!("-l walltime={}", o.walltime)),
        place.map(|p| format!("-l place={p}")),
        o.queue.as_ref().map(|q| format!("-q {q}")),
        o.account.as_ref().map(|a| format!("-A {a}")),
    ];
    format!(
        "#!/bin/bash\n{}\n{}",
        directives("PBS", &flags, &o.scheduler_options),
        job.body()
    )
}

/// The job id `qsub` printed (its first line), or why it is none: the id
/// goes into `qstat` and `qdel` commands, so it must have a job id's shape.
pub fn parse_qsub(stdout: &str) -> Result<JobId, String> {
    let Some(id) = stdout.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Err("qsub printed no job id".into());
    };
    site_values::job_id("qsub", id, site_values::valid_pbs_id)
}

fn finished(exit: Option<i64>) -> JobState {
    match exit {
        Some(0) => JobState::Completed,
        Some(-29) => JobState::Timeout,
        Some(271) => JobState::Cancelled,
        Some(_) => JobState::Failed,
        None => JobState::Unknown,
    }
}

/// A PBS `job_state` letter (with the exit status of finished jobs).
pub fn state_of(code: &str, exit: Option<i64>) -> JobState {
    match code {
        "Q" | "W" | "T" => JobState::Pending,
        "H" | "S" | "U" => JobState::Held,
        "R" | "E" | "B" => JobState::Running,
        "F" | "X" => finished(exit),
        "M" => JobState::Missing,
        _ => JobState::Unknown,
    }
}

/// Statuses of `ids` from `qstat -f -F json -x` output.
pub fn parse_qstat(ids: &[JobId], out: &CommandOutput) -> Result<Vec<JobStatus>, String> {
    let unknown_only = !out.success()
        && out.stdout.trim().is_empty()
        && out
            .stderr
            .lines()
            .all(|l| l.contains("Unknown Job Id") || l.trim().is_empty());
    if !out.success() && !unknown_only && out.stdout.trim().is_empty() {
        return Err(format!(
            "qstat failed (exit {}): {}",
            out.status,
            out.complaint()
        ));
    }
    let json: serde_json::Value = if out.stdout.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(&out.stdout)
            .map_err(|e| format!("qstat printed something that is not JSON: {e}"))?
    };
    let jobs = json.get("Jobs").and_then(|j| j.as_object());
    Ok(ids
        .iter()
        .map(|id| {
            let job = jobs.and_then(|j| {
                j.get(&id.0).or_else(|| {
                    // `qstat` may name the job with its full server name.
                    j.iter()
                        .find(|(k, _)| k.split('.').next() == id.0.split('.').next())
                        .map(|(_, v)| v)
                })
            });
            match job {
                Some(j) => {
                    let code = j.get("job_state").and_then(|s| s.as_str()).unwrap_or("?");
                    let exit = j.get("Exit_status").and_then(serde_json::Value::as_i64);
                    let comment = j.get("comment").and_then(|c| c.as_str());
                    let mut message = comment.map(|c| format!("PBS state {code}: {c}"));
                    if let (Some(e), Some(m)) = (exit, message.as_mut()) {
                        m.push_str(&format!(" (exit status {e})"));
                    }
                    JobStatus {
                        id: id.clone(),
                        state: state_of(code, exit),
                        message,
                    }
                }
                None => JobStatus {
                    id: id.clone(),
                    state: JobState::Missing,
                    message: Some("PBS no longer knows this job".into()),
                },
            }
        })
        .collect())
}

impl Provider for PbsProvider {
    fn name(&self) -> &'static str {
        "pbspro"
    }

    fn prepare(&self, job: &JobSpec) -> Result<Submission, ProviderError> {
        Scheduler::check_values(job, &self.options, true)?;
        Ok(Submission::file(
            "block.sh",
            script(job, &self.options),
            "qsub {script}",
        ))
    }

    fn submit(&mut self, job: &JobSpec) -> Result<JobId, ProviderError> {
        let s = self.prepare(job)?;
        self.sched
            .submit_script(job, &s.contents, &s.command, parse_qsub)
    }

    fn status(&mut self, ids: &[JobId]) -> Result<Vec<JobStatus>, ProviderError> {
        self.sched
            .statuses("qstat -f -F json -x", ids, " ", parse_qstat)
    }

    fn cancel(&mut self, ids: &[JobId]) -> Result<(), ProviderError> {
        // Deleting a job that already finished is not an error.
        self.sched.cancel("qdel", ids, |out| {
            out.stderr.lines().all(|l| {
                l.trim().is_empty()
                    || l.contains("Unknown Job Id")
                    || l.contains("Job has finished")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(status: i32, stdout: &str, stderr: &str) -> CommandOutput {
        CommandOutput {
            status,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// `qstat -f -F json -x` output in PBS Pro 2022's format (trimmed to
    /// the fields Flotilla reads and a few it does not).
    const QSTAT: &str = r#"{
    "timestamp":1796000000,
    "pbs_version":"2022.1.3.20230614134139",
    "pbs_server":"polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov",
    "Jobs":{
        "101.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov":{
            "Job_Name":"flotilla-ab12cd-block-0",
            "job_state":"Q",
            "queue":"debug",
            "comment":"Not Running: Insufficient amount of resource: ngpus"
        },
        "102.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov":{
            "Job_Name":"flotilla-ab12cd-block-1",
            "job_state":"R",
            "comment":"Job run at Thu Nov 26 at 10:00 on (x3001c0s1b0n0:ncpus=64)"
        },
        "103.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov":{
            "job_state":"F",
            "comment":"Job run at Thu Nov 26 at 10:00 on (x3001c0s1b0n0:ncpus=64) and finished",
            "Exit_status":0
        },
        "104.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov":{
            "job_state":"F",
            "comment":"Job run at Thu Nov 26 at 10:00 on (x3001c0s1b0n0:ncpus=64) and finished",
            "Exit_status":2
        },
        "105.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov":{
            "job_state":"F",
            "comment":"Job run at Thu Nov 26 at 10:00 on (x3001c0s1b0n0:ncpus=64) and terminated",
            "Exit_status":271
        },
        "106.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov":{
            "job_state":"F",
            "comment":"Job run at Thu Nov 26 at 10:00 on (x3001c0s1b0n0:ncpus=64) and finished",
            "Exit_status":-29
        },
        "107.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov":{
            "job_state":"H",
            "comment":"job held, too many failed attempts to run"
        }
    }
}"#;

    #[test]
    fn recorded_qstat_json_maps_to_states() {
        let ids: Vec<JobId> = ["101", "102", "103", "104", "105", "106", "107", "108"]
            .iter()
            .map(|n| JobId(format!("{n}.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov")))
            .collect();
        let stderr = "qstat: Unknown Job Id 108.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n";
        let s = parse_qstat(&ids, &out(153, QSTAT, stderr)).unwrap();
        use JobState::*;
        assert_eq!(
            s.iter().map(|x| x.state).collect::<Vec<_>>(),
            [
                Pending, Running, Completed, Failed, Cancelled, Timeout, Held, Missing
            ]
        );
        assert_eq!(
            s[0].message.as_deref(),
            Some("PBS state Q: Not Running: Insufficient amount of resource: ngpus")
        );
        assert!(
            s[3].message
                .as_deref()
                .unwrap()
                .ends_with("(exit status 2)")
        );
    }

    #[test]
    fn short_ids_match_full_server_names() {
        let s = parse_qstat(&[JobId("102.polaris-pbs-01".into())], &out(0, QSTAT, "")).unwrap();
        assert_eq!(s[0].state, JobState::Running);
    }

    #[test]
    fn qstat_errors_are_told_apart() {
        let ids = [JobId("9.srv".into())];
        let unknown = out(153, "", "qstat: Unknown Job Id 9.srv\n");
        assert_eq!(
            parse_qstat(&ids, &unknown).unwrap()[0].state,
            JobState::Missing
        );
        let down = out(
            1,
            "",
            "Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)\n",
        );
        assert!(
            parse_qstat(&ids, &down)
                .unwrap_err()
                .contains("cannot connect")
        );
        let garbage = out(0, "{not json", "");
        assert!(
            parse_qstat(&ids, &garbage)
                .unwrap_err()
                .contains("not JSON")
        );
    }

    fn block_zero() -> JobSpec {
        JobSpec {
            name: "flotilla-ab12cd-block-0".into(),
            worker_init: String::new(),
            command: "exec flotilla-worker".into(),
            env: Default::default(),
            run_dir: "/home/a/.flotilla/blocks/0".into(),
        }
    }

    #[test]
    fn qsub_output_and_the_script() {
        assert_eq!(
            parse_qsub("1234.polaris-pbs-01\n"),
            Ok(JobId("1234.polaris-pbs-01".into()))
        );
        assert_eq!(parse_qsub(""), Err("qsub printed no job id".into()));
        let job = block_zero();
        let o = SchedulerOptions {
            nodes_per_block: 2,
            walltime: "01:00:00".into(),
            queue: Some("debug".into()),
            account: Some("myproject".into()),
            gpus_per_node: 4,
            exclusive: true,
            scheduler_options: "#PBS -l filesystems=home:eagle".into(),
            ..SchedulerOptions::default()
        };
        let s = script(&job, &o);
        assert!(
            s.contains(
                "#PBS -N flotilla-ab12cd-block-0\n#PBS -o /home/a/.flotilla/blocks/0/stdout\n"
            ),
            "{s}"
        );
        assert!(s.contains("#PBS -l select=2:ngpus=4\n#PBS -l walltime=01:00:00\n#PBS -l place=scatter:excl\n#PBS -q debug\n#PBS -A myproject\n#PBS -l filesystems=home:eagle\n"), "{s}");
    }

    #[test]
    fn select_resources_join_each_chunk_and_placement_keeps_exclusive() {
        let job = block_zero();
        let polaris = SchedulerOptions {
            nodes_per_block: 2,
            walltime: "01:00:00".into(),
            select_resources: Some("system=polaris".into()),
            place: Some("scatter".into()),
            ..SchedulerOptions::default()
        };
        let s = script(&job, &polaris);
        assert!(
            s.contains("#PBS -l select=2:system=polaris\n#PBS -l walltime=01:00:00\n#PBS -l place=scatter\n"),
            "{s}"
        );
        let whole_nodes = SchedulerOptions {
            exclusive: true,
            ..polaris.clone()
        };
        assert!(script(&job, &whole_nodes).contains("#PBS -l place=scatter:excl\n"));
        let bad = SchedulerOptions {
            place: Some("scatter\n#PBS -q other".into()),
            ..polaris
        };
        assert!(bad.check(true).is_err());
    }
}
