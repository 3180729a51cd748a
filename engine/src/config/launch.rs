//! `[launcher]` and `[container]`: how a block starts its workers, and in
//! which image.

use flotilla_launchers::{
    Aprun, Bind, Container, ContainerRuntime, Gpus, Launcher, MpiFlavor, Mpiexec, Simple,
    SingleNode, Srun, Wrapped,
};
use serde::{Deserialize, Serialize};

/// Which launcher a block uses.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LauncherKind {
    /// Background processes of the block's shell, on one node.
    SingleNode,
    /// Slurm's `srun` across the job's nodes.
    Srun,
    /// `mpiexec` across the nodes in the scheduler's node file.
    Mpiexec,
    /// Cray ALPS `aprun`.
    Aprun,
    /// The worker command as is, once.
    Simple,
    /// The worker command behind `prefix`.
    Wrapped,
}

impl LauncherKind {
    /// The name used in site files.
    pub fn as_str(self) -> &'static str {
        match self {
            LauncherKind::SingleNode => "single-node",
            LauncherKind::Srun => "srun",
            LauncherKind::Mpiexec => "mpiexec",
            LauncherKind::Aprun => "aprun",
            LauncherKind::Simple => "simple",
            LauncherKind::Wrapped => "wrapped",
        }
    }

    /// Whether one launch can span several nodes.
    pub fn spans_nodes(self) -> bool {
        !matches!(self, LauncherKind::SingleNode)
    }
}

/// Which `mpiexec` the site has.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MpiFlavorConfig {
    /// MPICH Hydra, Intel MPI.
    Mpich,
    /// Cray PALS (Polaris, Aurora).
    Pals,
    /// Open MPI.
    Openmpi,
}

/// `[launcher]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LauncherConfig {
    /// The launcher.
    pub kind: LauncherKind,
    /// Worker processes per node.
    pub workers_per_node: u32,
    /// Extra srun/mpiexec/aprun options (shell text, after Flotilla's own).
    pub options: String,
    /// Which mpiexec (`kind = "mpiexec"`).
    pub mpi_flavor: MpiFlavorConfig,
    /// Shell expression naming the node file (`kind = "mpiexec"`).
    pub nodefile: String,
    /// Shell text before each worker (`kind = "wrapped"`).
    pub prefix: String,
    /// Fail the block when any of its workers fails (`kind =
    /// "single-node"`; default: only when all fail).
    pub fail_on_any: bool,
}

impl Default for LauncherConfig {
    fn default() -> Self {
        LauncherConfig {
            kind: LauncherKind::SingleNode,
            workers_per_node: 1,
            options: String::new(),
            mpi_flavor: MpiFlavorConfig::Mpich,
            nodefile: "$PBS_NODEFILE".into(),
            prefix: String::new(),
            fail_on_any: false,
        }
    }
}

impl LauncherConfig {
    /// The launcher these settings describe.
    pub fn launcher(&self) -> Box<dyn Launcher> {
        match self.kind {
            LauncherKind::SingleNode => Box::new(SingleNode {
                fail_on_any: self.fail_on_any,
            }),
            LauncherKind::Srun => Box::new(Srun {
                options: self.options.clone(),
            }),
            LauncherKind::Mpiexec => Box::new(Mpiexec {
                flavor: match self.mpi_flavor {
                    MpiFlavorConfig::Mpich => MpiFlavor::Mpich,
                    MpiFlavorConfig::Pals => MpiFlavor::Pals,
                    MpiFlavorConfig::Openmpi => MpiFlavor::OpenMpi,
                },
                nodefile: self.nodefile.clone(),
                options: self.options.clone(),
            }),
            LauncherKind::Aprun => Box::new(Aprun {
                options: self.options.clone(),
            }),
            LauncherKind::Simple => Box::new(Simple),
            LauncherKind::Wrapped => Box::new(Wrapped {
                prefix: self.prefix.clone(),
            }),
        }
    }

    /// What is wrong with these settings, as (key, message).
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        if self.workers_per_node == 0 {
            return Some(("launcher.workers_per_node", "must be at least 1".into()));
        }
        if self.kind == LauncherKind::Wrapped && self.prefix.trim().is_empty() {
            return Some((
                "launcher.prefix",
                "kind = \"wrapped\" needs the prefix to put before each worker".into(),
            ));
        }
        if self.kind == LauncherKind::Mpiexec && self.nodefile.trim().is_empty() {
            return Some((
                "launcher.nodefile",
                "kind = \"mpiexec\" needs the node file (\"$PBS_NODEFILE\", \"$COBALT_NODEFILE\" or a path)".into(),
            ));
        }
        None
    }
}

/// A container runtime, or none.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// No container runtime: everything runs on the host.
    None,
    /// Apptainer.
    Apptainer,
    /// Singularity.
    Singularity,
    /// Shifter.
    Shifter,
    /// Podman (or a wrapper such as podman-hpc, through `command`).
    Podman,
    /// Docker.
    Docker,
    /// Charliecloud's ch-run.
    Charliecloud,
    /// `template`.
    Custom,
}

impl RuntimeKind {
    /// The launchers crate's runtime, unless none.
    pub fn runtime(self) -> Option<ContainerRuntime> {
        Some(match self {
            RuntimeKind::None => return None,
            RuntimeKind::Apptainer => ContainerRuntime::Apptainer,
            RuntimeKind::Singularity => ContainerRuntime::Singularity,
            RuntimeKind::Shifter => ContainerRuntime::Shifter,
            RuntimeKind::Podman => ContainerRuntime::Podman,
            RuntimeKind::Docker => ContainerRuntime::Docker,
            RuntimeKind::Charliecloud => ContainerRuntime::Charliecloud,
            RuntimeKind::Custom => ContainerRuntime::Custom,
        })
    }
}

/// Where a containerised worker's executable comes from.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerSource {
    /// The host's `flotilla-worker`, bind-mounted read-only.
    Host,
    /// Already in the image, at `worker_path`.
    Image,
}

/// Whose GPUs the nodes have, for the runtime's GPU options.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GpuVendor {
    /// NVIDIA.
    Nvidia,
    /// AMD.
    Amd,
}

/// `[container]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerConfig {
    /// The site's container runtime.
    pub runtime: RuntimeKind,
    /// Image every worker pool runs in; empty: pools run on the host, and
    /// servables that name an image run their processes in it.
    pub image: String,
    /// Where the worker executable comes from.
    pub worker: WorkerSource,
    /// The worker's path inside the image (`worker = "image"`).
    pub worker_path: String,
    /// The runtime's executable, when not the usual one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Extra binds, `HOST[:CONTAINER[:ro]]`.
    pub binds: Vec<String>,
    /// Extra runtime options, before the image.
    pub options: Vec<String>,
    /// `runtime = "custom"`: the command with `{image}`, `{binds}`,
    /// `{command}` placeholders.
    pub template: String,
    /// Whose GPUs to expose when the provider requests GPUs.
    pub gpu_vendor: GpuVendor,
}

impl Default for ContainerConfig {
    fn default() -> Self {
        ContainerConfig {
            runtime: RuntimeKind::None,
            image: String::new(),
            worker: WorkerSource::Host,
            worker_path: "flotilla-worker".into(),
            command: None,
            binds: Vec::new(),
            options: Vec::new(),
            template: String::new(),
            gpu_vendor: GpuVendor::Nvidia,
        }
    }
}

/// Where the host's worker executable appears inside a pool's image.
pub const WORKER_MOUNT: &str = "/opt/flotilla/bin";

impl ContainerConfig {
    /// The GPUs to expose, given whether the nodes have any.
    pub fn gpus(&self, nodes_have_gpus: bool) -> Gpus {
        match (nodes_have_gpus, self.gpu_vendor) {
            (false, _) => Gpus::None,
            (true, GpuVendor::Nvidia) => Gpus::Nvidia,
            (true, GpuVendor::Amd) => Gpus::Amd,
        }
    }

    /// The container for `image` with this site's runtime, or `None` when
    /// the site has no runtime.
    pub fn container(&self, image: &str, gpus: Gpus) -> Option<Container> {
        Some(Container {
            runtime: self.runtime.runtime()?,
            image: image.to_owned(),
            command: self.command.clone(),
            binds: self
                .binds
                .iter()
                .filter_map(|b| Bind::parse(b).ok())
                .collect(),
            options: self.options.clone(),
            gpus,
            template: self.template.clone(),
        })
    }

    /// The container worker pools run in, if any.
    pub fn pool_container(&self, gpus: Gpus) -> Option<Container> {
        if self.image.trim().is_empty() {
            return None;
        }
        self.container(&self.image, gpus)
    }

    /// What is wrong with these settings, as (key, message).
    pub(super) fn problem(&self) -> Option<(String, String)> {
        for (i, b) in self.binds.iter().enumerate() {
            if let Err(e) = Bind::parse(b) {
                return Some((format!("container.binds[{i}]"), e.to_string()));
            }
        }
        let none = self.runtime == RuntimeKind::None;
        if none && !self.image.trim().is_empty() {
            return Some((
                "container.image".into(),
                "is set but runtime = \"none\"; name the runtime that runs it (apptainer, singularity, shifter, podman, docker, charliecloud or custom)".into(),
            ));
        }
        if self.runtime == RuntimeKind::Custom && !self.template.contains("{command}") {
            return Some((
                "container.template".into(),
                "runtime = \"custom\" needs a template containing {command}, e.g. \"enroot start {image} {command}\"".into(),
            ));
        }
        if self.worker == WorkerSource::Image && self.worker_path.trim().is_empty() {
            return Some((
                "container.worker_path".into(),
                "worker = \"image\" needs the worker's path inside the image".into(),
            ));
        }
        if let Some(container) = self.container("image", Gpus::None)
            && let Err(e) = container.invocation(flotilla_launchers::Inner {
                command: &["flotilla-worker".to_owned()],
                pass_env: &[],
                workdir: None,
                interactive: false,
            })
        {
            return Some(("container.template".into(), e.to_string()));
        }
        None
    }
}
