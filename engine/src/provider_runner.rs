//! The thread that talks to the provider.
//!
//! Provider calls block (a local fork, an `sbatch` over SSH), so they run on
//! a thread of their own, never on the scheduling loop. The thread starts and
//! cancels blocks on request and polls the state of live blocks every
//! `poll_interval`, reporting changes as [`BlockEvent`]s.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use flotilla_providers::{JobId, JobSpec, JobState, Provider};

use crate::core::BlockEvent;

enum Command {
    Submit { block: u32, job: Box<JobSpec> },
    Cancel { block: u32 },
    Adopt { block: u32, job: JobId },
    Refuse { block: u32, reason: String },
}

/// Handle to the provider thread. Dropping it waits for the thread to finish
/// the commands already sent (cancellations included).
#[derive(Debug)]
pub struct ProviderRunner {
    /// The pool whose blocks it starts, for log lines.
    pool: String,
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ProviderRunner {
    /// Starts the thread around pool `pool`'s `provider`; `report`
    /// receives block events.
    pub fn spawn(
        pool: &str,
        provider: Box<dyn Provider>,
        poll_interval: Duration,
        report: impl Fn(BlockEvent) + Send + 'static,
    ) -> std::io::Result<ProviderRunner> {
        let (tx, rx) = mpsc::channel();
        let name = pool.to_owned();
        let thread = thread::Builder::new()
            .name("flotilla-provider".into())
            .spawn(move || run(&name, provider, &rx, poll_interval, &report))?;
        Ok(ProviderRunner {
            pool: pool.to_owned(),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Asks the provider to start `job` as block `block`.
    pub fn submit(&self, block: u32, job: JobSpec) {
        self.send(Command::Submit {
            block,
            job: Box::new(job),
        });
    }

    /// Asks the provider to cancel block `block`.
    pub fn cancel(&self, block: u32) {
        self.send(Command::Cancel { block });
    }

    /// Watches `job`, submitted as block `block` by an earlier daemon.
    pub fn adopt(&self, block: u32, job: String) {
        self.send(Command::Adopt {
            block,
            job: JobId(job),
        });
    }

    /// Reports block `block` as not started (its job could not even be
    /// written), in order with the other reports.
    pub fn refuse(&self, block: u32, reason: String) {
        self.send(Command::Refuse { block, reason });
    }

    fn send(&self, command: Command) {
        if let Some(tx) = &self.tx
            && tx.send(command).is_err()
        {
            tracing::error!(pool = %self.pool, "provider thread is gone");
        }
    }
}

impl Drop for ProviderRunner {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    pool: &str,
    mut provider: Box<dyn Provider>,
    rx: &mpsc::Receiver<Command>,
    poll_interval: Duration,
    report: &dyn Fn(BlockEvent),
) {
    let mut live: BTreeMap<u32, (JobId, JobState)> = BTreeMap::new();
    let mut trouble = PollTrouble::default();
    let mut next_poll = Instant::now() + poll_interval;
    loop {
        let timeout = next_poll.saturating_duration_since(Instant::now());
        match rx.recv_timeout(timeout) {
            Ok(Command::Submit { block, job }) => match provider.submit(&job) {
                Ok(id) => {
                    report(BlockEvent::Submitted {
                        block,
                        job: id.0.clone(),
                    });
                    live.insert(block, (id, JobState::Pending));
                }
                Err(e) => report(match e.refusal() {
                    Some((by, message)) => BlockEvent::SubmitRefused {
                        block,
                        by,
                        message: message.to_owned(),
                    },
                    None => BlockEvent::SubmitFailed {
                        block,
                        reason: e.to_string(),
                    },
                }),
            },
            Ok(Command::Cancel { block }) => {
                if let Some((id, _)) = live.remove(&block) {
                    let message = provider
                        .cancel(std::slice::from_ref(&id))
                        .err()
                        .map(|e| e.to_string());
                    report(BlockEvent::State {
                        block,
                        state: JobState::Cancelled,
                        message,
                    });
                }
            }
            Ok(Command::Adopt { block, job }) => {
                tracing::info!(pool = %pool, block, job = %job, "watching a block from before the restart");
                live.insert(block, (job, JobState::Unknown));
                // Learn its state now, not a poll interval from now.
                next_poll = Instant::now();
            }
            Ok(Command::Refuse { block, reason }) => {
                report(BlockEvent::SubmitFailed { block, reason });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + poll_interval;
            poll(pool, provider.as_mut(), &mut live, &mut trouble, report);
        }
    }
}

fn poll(
    pool: &str,
    provider: &mut dyn Provider,
    live: &mut BTreeMap<u32, (JobId, JobState)>,
    trouble: &mut PollTrouble,
    report: &dyn Fn(BlockEvent),
) {
    if live.is_empty() {
        return;
    }
    let ids: Vec<JobId> = live.values().map(|(id, _)| id.clone()).collect();
    let statuses = match provider.status(&ids) {
        Ok(s) => s,
        Err(e) => {
            let error = e.to_string();
            match trouble.failed(&error) {
                Some(failures) => tracing::warn!(
                    pool = %pool,
                    provider = provider.name(),
                    error = %error,
                    failures,
                    "cannot poll block states"
                ),
                None => tracing::debug!(
                    pool = %pool,
                    provider = provider.name(),
                    error = %error,
                    "cannot poll block states (again)"
                ),
            }
            return;
        }
    };
    if let Some(failures) = trouble.recovered() {
        tracing::info!(pool = %pool, provider = provider.name(), failures, "polling block states works again");
    }
    let blocks: Vec<u32> = live.keys().copied().collect();
    for (block, status) in blocks.into_iter().zip(statuses) {
        let Some((_, known)) = live.get_mut(&block) else {
            continue;
        };
        if *known != status.state {
            *known = status.state;
            report(BlockEvent::State {
                block,
                state: status.state,
                message: status.message,
            });
        }
        if status.state.is_terminal() {
            live.remove(&block);
        }
    }
}

/// Keeps a scheduler that stays unreachable from filling the log: the first
/// failure is a warning, then only a changed error or the 2nd, 4th, 8th, …
/// failure in a row, and recovery is said once.
#[derive(Debug, Default)]
struct PollTrouble {
    /// Failures in a row.
    failures: u32,
    /// The last error warned about.
    last_warned: Option<String>,
}

impl PollTrouble {
    /// Records a failed poll; `Some(failures in a row)` when it deserves a
    /// warning.
    fn failed(&mut self, error: &str) -> Option<u32> {
        self.failures = self.failures.saturating_add(1);
        let changed = self.last_warned.as_deref() != Some(error);
        if changed || self.failures.is_power_of_two() {
            self.last_warned = Some(error.to_owned());
            Some(self.failures)
        } else {
            None
        }
    }

    /// Records a successful poll; `Some(failures before it)` when it ends a
    /// run of failures.
    fn recovered(&mut self) -> Option<u32> {
        self.last_warned = None;
        match std::mem::take(&mut self.failures) {
            0 => None,
            n => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PollTrouble;

    #[test]
    fn a_lasting_failure_is_warned_about_ever_more_rarely() {
        let mut trouble = PollTrouble::default();
        let warned: Vec<u32> = (0..20).filter_map(|_| trouble.failed("down")).collect();
        assert_eq!(warned, vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn a_changed_error_is_warned_about_at_once() {
        let mut trouble = PollTrouble::default();
        assert_eq!(trouble.failed("down"), Some(1));
        assert_eq!(trouble.failed("down"), Some(2));
        assert_eq!(trouble.failed("down"), None);
        assert_eq!(trouble.failed("timed out"), Some(4));
        assert_eq!(trouble.failed("timed out"), None);
    }

    #[test]
    fn recovery_is_said_once_and_starts_over() {
        let mut trouble = PollTrouble::default();
        assert_eq!(trouble.recovered(), None);
        trouble.failed("down");
        trouble.failed("down");
        trouble.failed("down");
        assert_eq!(trouble.recovered(), Some(3));
        assert_eq!(trouble.recovered(), None);
        assert_eq!(trouble.failed("down"), Some(1));
    }
}
