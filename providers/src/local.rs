//! The local provider: each block is a process group on this machine.
//!
//! This is the embedded default and what a laptop or a login node without a
//! scheduler uses. The block's script runs under `/bin/sh` as the leader of a
//! new process group, so cancelling the block signals every worker it started
//! (SIGTERM, then SIGKILL after a grace period) and nothing leaks.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{JobId, JobSpec, JobState, JobStatus, Provider, ProviderError, Submission, tail_lines};

/// How many stderr lines a failed block's message carries.
const STDERR_TAIL_LINES: usize = 10;

/// Runs blocks as local process groups.
#[derive(Debug)]
pub struct LocalProvider {
    jobs: HashMap<JobId, LocalJob>,
    cancel_grace: Duration,
    walltime: Option<Duration>,
}

#[derive(Debug)]
struct LocalJob {
    child: Child,
    spec: JobSpec,
    started: Instant,
    /// Set once the leader has been reaped or the job was cancelled.
    ended: Option<JobStatus>,
}

impl Default for LocalProvider {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl LocalProvider {
    /// A provider that gives a cancelled block `cancel_grace` to exit after
    /// SIGTERM before it is killed.
    pub fn new(cancel_grace: Duration) -> Self {
        LocalProvider {
            jobs: HashMap::new(),
            cancel_grace,
            walltime: None,
        }
    }

    /// Ends every block after `walltime`, as a batch scheduler would (its
    /// process group gets SIGTERM, then SIGKILL after the cancel grace), so
    /// wall-time handling behaves the same on a laptop as on a cluster.
    pub fn with_walltime(mut self, walltime: Option<Duration>) -> Self {
        self.walltime = walltime;
        self
    }

    /// Ends jobs that outlived the wall time.
    fn enforce_walltime(&mut self) {
        let Some(limit) = self.walltime else {
            return;
        };
        // A block whose process already exited ended on its own, however
        // late this look comes (a busy provider thread may poll after the
        // limit): the poll reports how it ended.
        let expired: Vec<JobId> = self
            .jobs
            .iter_mut()
            .filter_map(|(id, j)| {
                let over = j.ended.is_none()
                    && j.started.elapsed() >= limit
                    && matches!(j.child.try_wait(), Ok(None));
                over.then(|| id.clone())
            })
            .collect();
        for id in expired {
            let Some(mut job) = self.jobs.remove(&id) else {
                continue;
            };
            tracing::info!(job = %id, walltime_s = limit.as_secs(), "local block reached its wall time");
            if let Err(e) = self.stop(&mut job, &id) {
                tracing::warn!(job = %id, error = %e, "cannot end a block at its wall time");
            }
            job.ended = Some(JobStatus {
                id: id.clone(),
                state: JobState::Timeout,
                message: Some(format!("wall time of {} s reached", limit.as_secs())),
            });
            self.jobs.insert(id, job);
        }
    }

    fn poll(job: &mut LocalJob, id: &JobId) -> JobStatus {
        if let Some(done) = &job.ended {
            return done.clone();
        }
        match job.child.try_wait() {
            Ok(None) => JobStatus {
                id: id.clone(),
                state: JobState::Running,
                message: None,
            },
            Ok(Some(exit)) => {
                let status = if exit.success() {
                    JobStatus {
                        id: id.clone(),
                        state: JobState::Completed,
                        message: None,
                    }
                } else {
                    let tail = tail_lines(
                        std::path::Path::new(&job.spec.stderr_path()),
                        STDERR_TAIL_LINES,
                    );
                    JobStatus {
                        id: id.clone(),
                        state: JobState::Failed,
                        message: Some(match tail {
                            Some(t) => {
                                format!("block script ended with {exit}; stderr ends with:\n{t}")
                            }
                            None => format!("block script ended with {exit}; stderr was empty"),
                        }),
                    }
                };
                job.ended = Some(status.clone());
                status
            }
            Err(e) => JobStatus {
                id: id.clone(),
                state: JobState::Unknown,
                message: Some(format!("cannot query process: {e}")),
            },
        }
    }

    fn stop(&self, job: &mut LocalJob, id: &JobId) -> Result<(), ProviderError> {
        if job.ended.is_some() {
            return Ok(());
        }
        let group = Pid::from_raw(job.child.id() as i32);
        signal_group(group, Signal::SIGTERM, id)?;
        let deadline = Instant::now() + self.cancel_grace;
        let mut leader_reaped = false;
        while Instant::now() < deadline {
            if !leader_reaped {
                leader_reaped = matches!(job.child.try_wait(), Ok(Some(_)));
            }
            if leader_reaped && group_is_empty(group) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        signal_group(group, Signal::SIGKILL, id)?;
        if !leader_reaped {
            let _ = job.child.wait();
        }
        // SIGKILL is delivered asynchronously; give the kernel a moment so the
        // block is really gone when cancel returns (zombies of reparented
        // children may linger until init reaps them, hence the bound).
        let deadline = Instant::now() + Duration::from_secs(1);
        while !group_is_empty(group) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        job.ended = Some(JobStatus {
            id: id.clone(),
            state: JobState::Cancelled,
            message: None,
        });
        Ok(())
    }
}

fn signal_group(group: Pid, signal: Signal, id: &JobId) -> Result<(), ProviderError> {
    match killpg(group, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(ProviderError::Cancel {
            id: id.clone(),
            reason: format!("{signal} to process group {group}: {e}"),
        }),
    }
}

/// True when no live process is left in `group`.
///
/// A zombie keeps its group alive for kill(2) until its parent reaps it. The
/// block's processes are reparented to init when the leader exits, and some
/// inits (in containers, in micro-VMs) reap late or never; waiting for them
/// would stretch every cancel to the full grace period. So where `/proc` can
/// tell, only members that are not zombies count.
fn group_is_empty(group: Pid) -> bool {
    if matches!(killpg(group, None), Err(Errno::ESRCH)) {
        return true;
    }
    live_members(group) == Some(0)
}

/// How many processes of `group` are not zombies, from `/proc`; `None`
/// where `/proc` cannot be read.
fn live_members(group: Pid) -> Option<usize> {
    let entries = fs::read_dir("/proc").ok()?;
    let mut live = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may vanish between the listing and the read.
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat)
            && pgrp == group.as_raw()
            && !matches!(state, 'Z' | 'X')
        {
            live += 1;
        }
    }
    Some(live)
}

/// The state letter and process group of a `/proc/PID/stat` line. The
/// command name in parentheses may itself hold spaces and parentheses, so
/// the fields are read after the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn prepare(&self, job: &JobSpec) -> Result<Submission, ProviderError> {
        // The environment (the secret) goes to the process, not into the file.
        let script = JobSpec {
            env: Default::default(),
            ..job.clone()
        };
        Ok(Submission {
            env: job.env.clone(),
            ..Submission::file(
                "block.sh",
                format!("#!/bin/sh\n{}", script.body()),
                "/bin/sh {script}",
            )
        })
    }

    fn submit(&mut self, job: &JobSpec) -> Result<JobId, ProviderError> {
        let io = |path: &str| {
            let path = std::path::PathBuf::from(path);
            move |source| ProviderError::Io { path, source }
        };
        fs::create_dir_all(&job.run_dir).map_err(io(&job.run_dir))?;
        let submission = self.prepare(job)?;
        let script_path = job.run_file(&submission.file);
        fs::write(&script_path, &submission.contents).map_err(io(&script_path))?;
        let stdout = File::create(job.stdout_path()).map_err(io(&job.stdout_path()))?;
        let stderr = File::create(job.stderr_path()).map_err(io(&job.stderr_path()))?;
        let child = Command::new("/bin/sh")
            .arg(&script_path)
            .envs(&job.env)
            .current_dir(&job.run_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| ProviderError::Submit {
                name: job.name.clone(),
                reason: format!("cannot run /bin/sh {script_path}: {e}"),
            })?;
        let id = JobId(child.id().to_string());
        tracing::info!(job = %id, name = %job.name, dir = %job.run_dir, "local block started");
        self.jobs.insert(
            id.clone(),
            LocalJob {
                child,
                spec: job.clone(),
                started: Instant::now(),
                ended: None,
            },
        );
        Ok(id)
    }

    fn status(&mut self, ids: &[JobId]) -> Result<Vec<JobStatus>, ProviderError> {
        self.enforce_walltime();
        Ok(ids
            .iter()
            .map(|id| match self.jobs.get_mut(id) {
                Some(job) => Self::poll(job, id),
                None => JobStatus {
                    id: id.clone(),
                    state: JobState::Missing,
                    message: Some("not started by this provider".into()),
                },
            })
            .collect())
    }

    fn cancel(&mut self, ids: &[JobId]) -> Result<(), ProviderError> {
        let mut first_error = None;
        for id in ids {
            if let Some(mut job) = self.jobs.remove(id) {
                if let Err(e) = self.stop(&mut job, id) {
                    first_error.get_or_insert(e);
                }
                tracing::info!(job = %id, "local block cancelled");
                self.jobs.insert(id.clone(), job);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for LocalProvider {
    fn drop(&mut self) {
        for (id, job) in &mut self.jobs {
            if job.ended.is_none() {
                let group = Pid::from_raw(job.child.id() as i32);
                let _ = signal_group(group, Signal::SIGKILL, id);
                let _ = job.child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(dir: &std::path::Path, script: &str) -> JobSpec {
        JobSpec {
            name: "test-block".into(),
            worker_init: String::new(),
            command: script.into(),
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            run_dir: dir.display().to_string(),
        }
    }

    fn wait_terminal(p: &mut LocalProvider, id: &JobId) -> JobStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = p.status(std::slice::from_ref(id)).unwrap().remove(0);
            if s.state.is_terminal() || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_block_runs_with_its_environment_and_completes() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalProvider::default();
        let id = p.submit(&spec(dir.path(), "echo $GREETING")).unwrap();
        assert_eq!(wait_terminal(&mut p, &id).state, JobState::Completed);
        assert_eq!(
            fs::read_to_string(dir.path().join("stdout")).unwrap(),
            "hi\n"
        );
    }

    #[test]
    fn a_failed_block_reports_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalProvider::default();
        let id = p
            .submit(&spec(
                dir.path(),
                "echo 'cannot find the worker' >&2; exit 7",
            ))
            .unwrap();
        let s = wait_terminal(&mut p, &id);
        assert_eq!(s.state, JobState::Failed);
        let msg = s.message.unwrap();
        assert!(
            msg.contains("7") && msg.contains("cannot find the worker"),
            "{msg}"
        );
    }

    #[test]
    fn a_block_still_running_at_its_wall_time_is_ended_as_timed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalProvider::default().with_walltime(Some(Duration::from_millis(100)));
        let id = p.submit(&spec(dir.path(), "exec sleep 30")).unwrap();
        let s = wait_terminal(&mut p, &id);
        assert_eq!(s.state, JobState::Timeout, "{s:?}");
    }

    #[test]
    fn a_block_that_ended_before_its_wall_time_completed_however_late_it_is_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let limit = Duration::from_millis(100);
        let mut p = LocalProvider::default().with_walltime(Some(limit));
        let id = p.submit(&spec(dir.path(), "true")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let job = p.jobs.get_mut(&id).unwrap();
            if matches!(job.child.try_wait(), Ok(Some(_))) && job.started.elapsed() >= limit {
                break;
            }
            assert!(Instant::now() < deadline, "the block did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        // The first look comes after the limit, as from a busy provider thread.
        assert_eq!(wait_terminal(&mut p, &id).state, JobState::Completed);
    }

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        let line = "4242 (a (weird) name) Z 1 4200 4200 0 -1 4194308 0 0";
        assert_eq!(parse_stat(line), Some(('Z', 4200)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_group_with_only_zombies_left_counts_as_empty() {
        // The leader's child exits and is never reaped (the leader execs a
        // program that does not wait): a zombie in the group.
        let mut leader = Command::new("/bin/sh")
            .args(["-c", "(exit 0) & exec sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = Pid::from_raw(leader.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        while live_members(group) != Some(1) || !has_zombie(group) {
            assert!(Instant::now() < deadline, "no zombie appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!group_is_empty(group), "the leader is alive");
        leader.kill().unwrap();
        leader.wait().unwrap();
        // Whoever reaps the reparented zombie, and whenever: the group is
        // empty now.
        assert!(group_is_empty(group));
    }

    fn has_zombie(group: Pid) -> bool {
        fs::read_dir("/proc").unwrap().flatten().any(|e| {
            fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(state, pgrp)| state == 'Z' && pgrp == group.as_raw())
        })
    }

    #[test]
    fn cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalProvider::new(Duration::from_millis(200));
        // A child that ignores SIGTERM must still die.
        let id = p
            .submit(&spec(
                dir.path(),
                "sh -c 'trap \"\" TERM; echo $$ > child.pid; while :; do sleep 1; done' & wait",
            ))
            .unwrap();
        let pid_file = dir.path().join("child.pid");
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(&pid_file).map_or(true, |s| s.trim().is_empty()) {
            assert!(Instant::now() < deadline, "child never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let child: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        p.cancel(std::slice::from_ref(&id)).unwrap();
        assert_eq!(p.status(&[id]).unwrap()[0].state, JobState::Cancelled);
        // The grandchild is gone (or a zombie awaiting its reaper, never running).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z") {
                break;
            }
            assert!(Instant::now() < deadline, "grandchild survived: {stat}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_failing_worker_init_fails_the_block_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = LocalProvider::default();
        let mut job = spec(dir.path(), "echo should-not-run");
        job.worker_init = "true\nnosuchcommand-flotilla --load\necho after".into();
        let id = p.submit(&job).unwrap();
        let s = wait_terminal(&mut p, &id);
        assert_eq!(s.state, JobState::Failed);
        let msg = s.message.unwrap();
        assert!(msg.contains("nosuchcommand-flotilla"), "{msg}");
        assert_eq!(fs::read_to_string(dir.path().join("stdout")).unwrap(), "");
    }

    #[test]
    fn unknown_jobs_are_missing() {
        let mut p = LocalProvider::default();
        let s = p.status(&[JobId("123456789".into())]).unwrap();
        assert_eq!(s[0].state, JobState::Missing);
    }
}
