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
            poll(pool, provider.as_mut(), &mut live, report);
        }
    }
}

fn poll(
    pool: &str,
    provider: &mut dyn Provider,
    live: &mut BTreeMap<u32, (JobId, JobState)>,
    report: &dyn Fn(BlockEvent),
) {
    if live.is_empty() {
        return;
    }
    let ids: Vec<JobId> = live.values().map(|(id, _)| id.clone()).collect();
    let statuses = match provider.status(&ids) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(pool = %pool, provider = provider.name(), error = %e, "cannot poll block states");
            return;
        }
    };
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
