//! Slurm: `sbatch --parsable`, one `squeue` for every block, `scancel`.
//!
//! Rules for what `squeue -t all` does not say, from Slurm 22.05's behaviour
//! (recorded in the tests below):
//!
//! * A job that ended more than `MinJobAge` (300 s by default) ago drops out
//!   of `squeue -t all`. A job id that is not listed is [`JobState::Missing`]
//!   (terminal), never an error.
//! * When *none* of the ids is known, squeue prints `slurm_load_jobs error:
//!   Invalid job id specified` and exits 1: all are missing. Any other
//!   failure of squeue is an error of that poll, retried at the next.
//! * `scancel` of an unknown or finished id exits 0 silently.
//! * A rejected `sbatch` (bad partition, a node count over the partition's
//!   `MaxNodes` with `EnforcePartLimits`, a QOS's job limit) exits non-zero;
//!   its stderr becomes a [`ProviderError::Refused`], which the daemon
//!   retries with backoff rather than counting it as a failed block.

use std::time::Duration;

use crate::channel::Channel;
use crate::scheduler::{Scheduler, directives};
use crate::site_values;
use crate::{
    JobId, JobSpec, JobState, JobStatus, Provider, ProviderError, SchedulerOptions, Submission,
};

/// Blocks as Slurm jobs.
pub struct SlurmProvider {
    sched: Scheduler,
    options: SchedulerOptions,
}

impl std::fmt::Debug for SlurmProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlurmProvider")
            .field("channel", &self.sched.channel.name())
            .finish()
    }
}

impl SlurmProvider {
    /// A provider running Slurm's commands on `channel`, each limited to
    /// `timeout`.
    pub fn new(channel: Box<dyn Channel>, options: SchedulerOptions, timeout: Duration) -> Self {
        SlurmProvider {
            sched: Scheduler::new("slurm", channel, timeout),
            options,
        }
    }
}

/// The batch script for `job`.
pub fn script(job: &JobSpec, o: &SchedulerOptions) -> String {
    let flags = [
        Some(format!("--job-name={}", job.name)),
        Some(format!("--output={}", job.stdout_path())),
        Some(format!("--error={}", job.stderr_path())),
        Some(format!("--nodes={}", o.nodes_per_block.max(1))),
        Some(format!("--time={}", o.walltime)),
        o.partition.as_ref().map(|p| format!("--partition={p}")),
        o.account.as_ref().map(|a| format!("--account={a}")),
        o.qos.as_ref().map(|q| format!("--qos={q}")),
        o.constraint.as_ref().map(|c| format!("--constraint={c}")),
        o.exclusive.then(|| "--exclusive".to_owned()),
        (o.gpus_per_node > 0).then(|| format!("--gpus-per-node={}", o.gpus_per_node)),
    ];
    format!(
        "#!/bin/bash\n{}\n{}",
        directives("SBATCH", &flags, &o.scheduler_options),
        job.body()
    )
}

/// The job id in `sbatch --parsable` output (`123` or `123;cluster`), or
/// why the output holds none.
pub fn parse_sbatch(stdout: &str) -> Result<JobId, String> {
    let id = stdout.trim().split(';').next().unwrap_or_default().trim();
    if id.is_empty() {
        return Err("sbatch printed no job id".into());
    }
    site_values::job_id("sbatch", id, site_values::valid_slurm_id)
}

/// A Slurm state code (`squeue %t`) and reason as a [`JobState`].
pub fn state_of(code: &str, reason: &str) -> JobState {
    match code {
        "PD" if reason.contains("Held") => JobState::Held,
        "PD" | "RQ" | "RF" | "RS" | "CF" => JobState::Pending,
        "R" | "CG" | "SI" | "SO" => JobState::Running,
        "CD" => JobState::Completed,
        "CA" => JobState::Cancelled,
        "TO" => JobState::Timeout,
        "F" | "NF" | "BF" | "DL" | "OOM" | "PR" | "SE" | "RV" => JobState::Failed,
        "S" | "ST" | "RH" | "RD" => JobState::Held,
        _ => JobState::Unknown,
    }
}

/// Statuses of `ids` from the output of `squeue -t all -h -o '%i %t %r'`.
pub fn parse_squeue(
    ids: &[JobId],
    out: &crate::channel::CommandOutput,
) -> Result<Vec<JobStatus>, String> {
    let listed: Vec<(String, String, String)> = if out.success() {
        out.stdout
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let id = parts.next()?.to_owned();
                let code = parts.next()?.to_owned();
                let reason = parts.collect::<Vec<_>>().join(" ");
                Some((id, code, reason))
            })
            .collect()
    } else if out.stderr.contains("Invalid job id") {
        Vec::new()
    } else {
        return Err(format!(
            "squeue failed (exit {}): {}",
            out.status,
            out.complaint()
        ));
    };
    Ok(ids
        .iter()
        .map(|id| match listed.iter().find(|(i, _, _)| *i == id.0) {
            Some((_, code, reason)) => JobStatus {
                id: id.clone(),
                state: state_of(code, reason),
                message: (!reason.is_empty() && reason != "None")
                    .then(|| format!("Slurm state {code}, reason {reason}")),
            },
            None => JobStatus {
                id: id.clone(),
                state: JobState::Missing,
                message: Some(
                    "no longer listed by squeue (it ended more than MinJobAge ago)".into(),
                ),
            },
        })
        .collect())
}

impl Provider for SlurmProvider {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn prepare(&self, job: &JobSpec) -> Result<Submission, ProviderError> {
        Scheduler::check_values(job, &self.options, true)?;
        Ok(Submission::file(
            "block.sh",
            script(job, &self.options),
            "sbatch --parsable {script}",
        ))
    }

    fn submit(&mut self, job: &JobSpec) -> Result<JobId, ProviderError> {
        let s = self.prepare(job)?;
        self.sched
            .submit_script(job, &s.contents, &s.command, parse_sbatch)
    }

    fn status(&mut self, ids: &[JobId]) -> Result<Vec<JobStatus>, ProviderError> {
        self.sched
            .statuses("squeue -t all -h -o '%i %t %r' -j", ids, ",", parse_squeue)
    }

    fn cancel(&mut self, ids: &[JobId]) -> Result<(), ProviderError> {
        self.sched.cancel("scancel", ids, |_| false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::CommandOutput;
    use flotilla_protocol::launch::SECRET_ENV;

    fn out(status: i32, stdout: &str, stderr: &str) -> CommandOutput {
        CommandOutput {
            status,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    fn ids(list: &[&str]) -> Vec<JobId> {
        list.iter().map(|i| JobId((*i).into())).collect()
    }

    #[test]
    fn the_script_carries_every_requested_directive() {
        let job = JobSpec {
            name: "flotilla-ab12cd-block-3".into(),
            worker_init: "module load python".into(),
            command: "exec flotilla-worker --block-id 3".into(),
            env: [(SECRET_ENV.to_owned(), "00ff".to_owned())].into(),
            run_dir: "/scratch/fl/block-3".into(),
        };
        let o = SchedulerOptions {
            nodes_per_block: 2,
            walltime: "00:30:00".into(),
            partition: Some("debug".into()),
            account: Some("m1234".into()),
            qos: Some("regular".into()),
            constraint: Some("gpu".into()),
            exclusive: true,
            gpus_per_node: 4,
            scheduler_options: "#SBATCH --mail-type=NONE".into(),
            ..SchedulerOptions::default()
        };
        let s = script(&job, &o);
        for want in [
            "#!/bin/bash\n#SBATCH --job-name=flotilla-ab12cd-block-3\n",
            "#SBATCH --output=/scratch/fl/block-3/stdout\n",
            "#SBATCH --error=/scratch/fl/block-3/stderr\n",
            "#SBATCH --nodes=2\n#SBATCH --time=00:30:00\n#SBATCH --partition=debug\n",
            "#SBATCH --account=m1234\n#SBATCH --qos=regular\n#SBATCH --constraint=gpu\n#SBATCH --exclusive\n#SBATCH --gpus-per-node=4\n#SBATCH --mail-type=NONE\n",
            "export FLOTILLA_SECRET=00ff\nset -e\nmodule load python\nset +e\nexec flotilla-worker --block-id 3\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
    }

    #[test]
    fn sbatch_ids_are_read_with_or_without_a_cluster() {
        assert_eq!(parse_sbatch("1\n"), Ok(JobId("1".into())));
        assert_eq!(parse_sbatch("4242;perlmutter\n"), Ok(JobId("4242".into())));
        assert!(parse_sbatch("Submitted batch job 6\n").is_err());
        assert_eq!(parse_sbatch(""), Err("sbatch printed no job id".into()));
    }

    #[test]
    fn recorded_squeue_output_maps_to_states() {
        // Lines as Slurm 22.05 printed them (shared/notes/slurm-test-cluster.md).
        let stdout = "18 PD None\n4 PD Resources\n2 R None\n3 CG None\n5 CA None\n1 CD None\n16 F NonZeroExitCode\n17 TO TimeLimit\n8 F JobLaunchFailure\n9 PD JobHeldUser\n";
        let all = ids(&["18", "4", "2", "3", "5", "1", "16", "17", "8", "9", "99"]);
        let s = parse_squeue(&all, &out(0, stdout, "")).unwrap();
        let states: Vec<JobState> = s.iter().map(|x| x.state).collect();
        use JobState::*;
        assert_eq!(
            states,
            [
                Pending, Pending, Running, Running, Cancelled, Completed, Failed, Timeout, Failed,
                Held, Missing
            ]
        );
        assert_eq!(
            s[1].message.as_deref(),
            Some("Slurm state PD, reason Resources")
        );
        assert_eq!(s[0].message, None);
        assert!(s[10].message.as_deref().unwrap().contains("MinJobAge"));
    }

    #[test]
    fn squeue_errors_are_told_apart() {
        let all = ids(&["7", "8"]);
        let none_known = out(1, "", "slurm_load_jobs error: Invalid job id specified\n");
        let s = parse_squeue(&all, &none_known).unwrap();
        assert!(s.iter().all(|x| x.state == JobState::Missing));
        let broken = out(
            1,
            "",
            "squeue: error: Could not establish a configuration source\n",
        );
        let e = parse_squeue(&all, &broken).unwrap_err();
        assert!(e.contains("configuration source"), "{e}");
    }

    #[test]
    fn reasons_with_spaces_are_kept_whole() {
        let stdout = "12 PD ReqNodeNotAvail, UnavailableNodes:nid[001-004]\n";
        let s = parse_squeue(&ids(&["12"]), &out(0, stdout, "")).unwrap();
        assert_eq!(
            s[0].message.as_deref(),
            Some("Slurm state PD, reason ReqNodeNotAvail, UnavailableNodes:nid[001-004]")
        );
    }
}
