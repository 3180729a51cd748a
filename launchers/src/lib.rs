//! Launchers turn "run this worker command" into "run it N times across the
//! nodes of this allocation".
//!
//! A provider acquires nodes (a block); inside the block's job script a
//! launcher starts the worker pools. On a single node that is a shell loop of
//! background processes; on a cluster it is `srun`, `mpiexec` or `aprun`. The
//! launcher only writes shell text: it does not run anything, so it is equally
//! usable for a local process group, a batch script or a Kubernetes pod.
//!
//! Each started copy sees `FLOTILLA_WORKER_RANK` (0-based), so workers of one
//! block can tell themselves apart in logs.

pub mod shell;
mod single_node;

pub use single_node::SingleNode;

/// What one block should run: `workers_per_node` copies of `worker_command`
/// on each of `nodes` nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The worker command line, already shell-quoted.
    pub worker_command: String,
    /// Copies per node.
    pub workers_per_node: u32,
    /// Nodes in the block.
    pub nodes: u32,
}

/// Something that can start workers inside an allocation.
pub trait Launcher: Send + Sync {
    /// Short name used in configuration (`kind = "single-node"`).
    fn name(&self) -> &'static str;

    /// Shell text that starts every worker of `spec` and exits with a
    /// non-zero status if any of them failed.
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
}
