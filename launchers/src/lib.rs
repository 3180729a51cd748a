//! Launchers turn "run this worker command" into "run it on every node of
//! this allocation", and container wrappers put each copy inside the site's
//! container runtime.
//!
//! A provider acquires nodes (a block); inside the block's job script a
//! launcher starts the block's workers, `workers_per_node` on each of its
//! nodes: a shell loop of background processes on one node, or `srun`,
//! `mpiexec` or `aprun` across many. Launchers only
//! write shell text and container wrappers only build command lines: nothing
//! here runs anything, so the same text serves a local process group, a batch
//! script or a Kubernetes pod, and every launcher is testable by reading its
//! output.
//!
//! Every started copy sees [`RANK_ENV`] (0-based across the block),
//! [`NODE_ENV`] (the node it runs on) and [`BLOCK_ENV`], so workers of one
//! block can tell themselves apart and the daemon can show where each runs.

pub mod container;
mod multi_node;
pub mod shell;
mod single_node;

pub use container::{Bind, Container, ContainerRuntime, Gpus, Inner, Invocation};
pub use multi_node::{Aprun, MpiFlavor, Mpiexec, Simple, Srun, Wrapped};
pub use single_node::SingleNode;

// The variables every copy sees (its rank within the block, 0-based; the
// node it runs on; its block), as the worker's launch contract names them.
pub use flotilla_protocol::launch::{BLOCK_ENV, NODE_ENV, RANK_ENV};

/// A shell expression for the name of the node a copy runs on: what
/// [`NODE_ENV`] already says (a pod sets it), else the host name.
fn node_name_or_host() -> String {
    format!("\"${{{NODE_ENV}:-$(uname -n)}}\"")
}

/// What one block should run: `workers_per_node` copies of `worker_command`
/// on each of `nodes` nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The worker command line, already shell-quoted.
    pub worker_command: String,
    /// Shell lines each copy runs after its rank, node and block variables
    /// are exported and before it `exec`s the command (container wrappers
    /// put their environment forwarding here).
    pub copy_setup: String,
    /// Copies per node.
    pub workers_per_node: u32,
    /// Nodes in the block.
    pub nodes: u32,
    /// The block these copies belong to.
    pub block_id: u32,
}

impl LaunchSpec {
    /// Copies in the whole block.
    pub fn total_workers(&self) -> u32 {
        self.workers_per_node.saturating_mul(self.nodes)
    }

    /// The body of one copy: export rank and node (from the shell
    /// expressions given, evaluated in the copy), run the setup, `exec` the
    /// worker.
    fn copy_body(&self, rank_expr: &str, node_expr: &str) -> String {
        let mut s = format!(
            "{RANK_ENV}={rank_expr}; {NODE_ENV}={node_expr}; export {RANK_ENV} {NODE_ENV}; "
        );
        let setup = self.copy_setup.trim();
        if !setup.is_empty() {
            s.push_str(&setup.replace('\n', "; "));
            s.push_str("; ");
        }
        s.push_str("exec ");
        s.push_str(&self.worker_command);
        s
    }

    /// The first lines of every launcher's script.
    fn preamble(&self) -> String {
        format!("{BLOCK_ENV}={}; export {BLOCK_ENV}\n", self.block_id)
    }

    fn check(&self) -> Result<(), LaunchError> {
        if self.workers_per_node == 0 {
            return Err(LaunchError::NoWorkers);
        }
        if self.nodes == 0 {
            return Err(LaunchError::NoNodes);
        }
        Ok(())
    }
}

/// Something that can start workers inside an allocation.
pub trait Launcher: Send + Sync {
    /// Short name used in configuration (`kind = "srun"`).
    fn name(&self) -> &'static str;

    /// Shell text that starts every worker of `spec`, waits for them and
    /// exits non-zero when the block failed.
    fn script(&self, spec: &LaunchSpec) -> Result<String, LaunchError>;
}

/// A launch that cannot work as specified.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    /// The launcher cannot span several nodes.
    #[error(
        "the {launcher} launcher runs on one node, but the block asks for {nodes} nodes; use srun, mpiexec or aprun"
    )]
    SingleNodeOnly {
        /// Launcher name.
        launcher: &'static str,
        /// Nodes requested.
        nodes: u32,
    },
    /// Zero workers were requested.
    #[error("workers_per_node must be at least 1")]
    NoWorkers,
    /// Zero nodes were requested.
    #[error("a block needs at least one node")]
    NoNodes,
    /// A container wrapper is missing something it needs.
    #[error("container: {0}")]
    Container(String),
}

#[cfg(test)]
pub(crate) mod testing {
    use std::process::{Command, Output};

    /// Runs `script` with `sh -c` and `env` added to its environment.
    pub fn run(script: &str, env: &[(&str, &str)]) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .envs(env.iter().copied())
            .output()
            .expect("sh runs")
    }

    /// Stdout's lines, sorted.
    pub fn sorted_lines(out: &Output) -> Vec<String> {
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }
}
