//! Blocks: the worker pools the daemon acquires from its provider.
//!
//! This is the scaling policy in its simplest useful form: start
//! `init_blocks`, keep at least `min_blocks` alive by replacing blocks that
//! end, never hold more than `max_blocks`. A block that ends before any of its
//! workers connected is a failure; after `max_block_failures` of those in a
//! row the daemon stops starting blocks (instead of churning through the
//! scheduler) and says why in `flotilla status`.

use std::collections::BTreeMap;

use flotilla_protocol::client::BlockView;
use flotilla_providers::JobState;

use super::Action;

/// Limits from `[provider]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPolicy {
    /// Blocks started with the daemon.
    pub init_blocks: u32,
    /// Fewest blocks kept alive.
    pub min_blocks: u32,
    /// Most blocks held at once.
    pub max_blocks: u32,
    /// Consecutive failed blocks before starts are paused.
    pub max_failures: u32,
}

/// What the provider side reports about a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockEvent {
    /// The provider accepted the block under `job`.
    Submitted {
        /// Block id.
        block: u32,
        /// Provider's job id.
        job: String,
    },
    /// The provider refused to start the block.
    SubmitFailed {
        /// Block id.
        block: u32,
        /// Why.
        reason: String,
    },
    /// The block's job changed state.
    State {
        /// Block id.
        block: u32,
        /// New state.
        state: JobState,
        /// The provider's explanation.
        message: Option<String>,
    },
}

#[derive(Debug)]
struct Block {
    state: JobState,
    job: Option<String>,
    workers: u32,
    ever_connected: bool,
    message: Option<String>,
    cancelling: bool,
}

/// The block table and its policy.
#[derive(Debug)]
pub struct Blocks {
    policy: BlockPolicy,
    blocks: BTreeMap<u32, Block>,
    next_id: u32,
    consecutive_failures: u32,
    paused: Option<String>,
    stopping: bool,
}

impl Blocks {
    /// An empty table under `policy`.
    pub fn new(policy: BlockPolicy) -> Self {
        Blocks {
            policy,
            blocks: BTreeMap::new(),
            next_id: 0,
            consecutive_failures: 0,
            paused: None,
            stopping: false,
        }
    }

    /// Starts the initial blocks.
    pub fn start(&mut self, out: &mut Vec<Action>) {
        let want = self.policy.init_blocks.max(self.policy.min_blocks);
        while self.active() < want {
            self.submit(out);
        }
    }

    fn active(&self) -> u32 {
        self.blocks
            .values()
            .filter(|b| !b.state.is_terminal() && !b.cancelling)
            .count() as u32
    }

    fn submit(&mut self, out: &mut Vec<Action>) {
        let id = self.next_id;
        self.next_id += 1;
        self.blocks.insert(
            id,
            Block {
                state: JobState::Pending,
                job: None,
                workers: 0,
                ever_connected: false,
                message: None,
                cancelling: false,
            },
        );
        tracing::info!(block = id, "starting block");
        out.push(Action::SubmitBlock { block: id });
    }

    /// Applies a provider report.
    pub fn on_event(&mut self, event: BlockEvent, out: &mut Vec<Action>) {
        match event {
            BlockEvent::Submitted { block, job } => {
                if let Some(b) = self.blocks.get_mut(&block) {
                    tracing::info!(block, job = %job, "block submitted");
                    b.job = Some(job);
                }
            }
            BlockEvent::SubmitFailed { block, reason } => {
                tracing::error!(block, reason = %reason, "block could not be started");
                if let Some(b) = self.blocks.get_mut(&block) {
                    b.state = JobState::Failed;
                    b.message = Some(reason);
                }
                self.failed(block);
                self.replenish(out);
            }
            BlockEvent::State {
                block,
                state,
                message,
            } => {
                let Some(b) = self.blocks.get_mut(&block) else {
                    return;
                };
                if b.state == state {
                    return;
                }
                tracing::info!(block, from = %b.state, to = %state, message = message.as_deref().unwrap_or(""), "block state");
                b.state = state;
                if message.is_some() {
                    b.message = message;
                }
                if state.is_terminal() && !b.cancelling {
                    let failed = !b.ever_connected || state != JobState::Completed;
                    if failed && !b.ever_connected {
                        self.failed(block);
                    }
                    self.replenish(out);
                }
            }
        }
    }

    fn failed(&mut self, block: u32) {
        self.consecutive_failures += 1;
        if self.consecutive_failures >= self.policy.max_failures && self.paused.is_none() {
            let last = self
                .blocks
                .get(&block)
                .and_then(|b| b.message.clone())
                .unwrap_or_else(|| "no message from the provider".into());
            let reason = format!(
                "{} blocks in a row ended before any worker connected; not starting more. Last block {block}: {last}",
                self.consecutive_failures
            );
            tracing::error!(reason = %reason, "block starts paused");
            self.paused = Some(reason);
        }
    }

    fn replenish(&mut self, out: &mut Vec<Action>) {
        if self.stopping || self.paused.is_some() {
            return;
        }
        while self.active() < self.policy.min_blocks.min(self.policy.max_blocks) {
            self.submit(out);
        }
    }

    /// A worker of `block` registered.
    pub fn worker_joined(&mut self, block: u32) {
        if let Some(b) = self.blocks.get_mut(&block) {
            b.workers += 1;
            b.ever_connected = true;
            if b.state == JobState::Pending {
                b.state = JobState::Running;
            }
            self.consecutive_failures = 0;
        }
    }

    /// A worker of `block` left or was lost.
    pub fn worker_left(&mut self, block: u32) {
        if let Some(b) = self.blocks.get_mut(&block) {
            b.workers = b.workers.saturating_sub(1);
        }
    }

    /// Cancels every live block (shutdown).
    pub fn cancel_all(&mut self, out: &mut Vec<Action>) {
        self.stopping = true;
        for (&id, b) in &mut self.blocks {
            if !b.state.is_terminal() && !b.cancelling {
                b.cancelling = true;
                out.push(Action::CancelBlock { block: id });
            }
        }
    }

    /// Why block starts are paused, if they are.
    pub fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    /// Rows for `flotilla status`.
    pub fn views(&self) -> Vec<BlockView> {
        self.blocks
            .iter()
            .map(|(&id, b)| BlockView {
                id,
                state: if b.cancelling && !b.state.is_terminal() {
                    "CANCELLING".into()
                } else {
                    b.state.to_string()
                },
                job_id: b.job.clone(),
                workers: b.workers,
                message: b.message.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(init: u32, min: u32, max: u32) -> BlockPolicy {
        BlockPolicy {
            init_blocks: init,
            min_blocks: min,
            max_blocks: max,
            max_failures: 3,
        }
    }

    fn submitted(out: &[Action]) -> Vec<u32> {
        out.iter()
            .filter_map(|a| match a {
                Action::SubmitBlock { block } => Some(*block),
                _ => None,
            })
            .collect()
    }

    fn ended(b: &mut Blocks, block: u32, state: JobState, out: &mut Vec<Action>) {
        b.on_event(
            BlockEvent::State {
                block,
                state,
                message: Some("boom".into()),
            },
            out,
        );
    }

    #[test]
    fn starts_init_blocks_and_replaces_a_lost_one() {
        let mut b = Blocks::new(policy(2, 2, 3));
        let mut out = Vec::new();
        b.start(&mut out);
        assert_eq!(submitted(&out), [0, 1]);
        b.worker_joined(0);
        out.clear();
        ended(&mut b, 0, JobState::Failed, &mut out);
        assert_eq!(submitted(&out), [2]);
    }

    #[test]
    fn blocks_that_never_connect_pause_starts_after_the_limit() {
        let mut b = Blocks::new(policy(1, 1, 1));
        let mut out = Vec::new();
        b.start(&mut out);
        for id in 0..3 {
            out.clear();
            ended(&mut b, id, JobState::Failed, &mut out);
        }
        assert!(submitted(&out).is_empty(), "{out:?}");
        let reason = b.paused().unwrap();
        assert!(
            reason.contains("3 blocks in a row") && reason.contains("boom"),
            "{reason}"
        );
    }

    #[test]
    fn a_worker_connecting_resets_the_failure_count() {
        let mut b = Blocks::new(policy(1, 1, 1));
        let mut out = Vec::new();
        b.start(&mut out);
        ended(&mut b, 0, JobState::Failed, &mut out);
        ended(&mut b, 1, JobState::Failed, &mut out);
        b.worker_joined(2);
        ended(&mut b, 2, JobState::Completed, &mut out);
        out.clear();
        ended(&mut b, 3, JobState::Failed, &mut out);
        assert!(b.paused().is_none());
        assert_eq!(submitted(&out), [4]);
    }

    #[test]
    fn cancelled_blocks_are_not_replaced() {
        let mut b = Blocks::new(policy(1, 1, 1));
        let mut out = Vec::new();
        b.start(&mut out);
        out.clear();
        b.cancel_all(&mut out);
        assert!(matches!(out[..], [Action::CancelBlock { block: 0 }]));
        out.clear();
        ended(&mut b, 0, JobState::Cancelled, &mut out);
        assert!(out.is_empty());
    }
}
