//! `[container]`: the image a block's workers (or a servable's processes)
//! run in, and the runtime that runs it.

use flotilla_launchers::{Bind, Container, ContainerRuntime, Gpus};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::{Section, Site};

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
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ContainerConfig {
    /// The site's container runtime.
    pub runtime: RuntimeKind,
    /// Image every block's workers run in; empty: workers run on the host,
    /// and servables that name an image run their processes in it.
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

/// Where the host's worker executable appears inside the workers' image.
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

    /// The container every block's workers run in, if any.
    pub fn workers_container(&self, gpus: Gpus) -> Option<Container> {
        if self.image.trim().is_empty() {
            return None;
        }
        self.container(&self.image, gpus)
    }

    /// What the runtime needs of the other keys: an image needs a
    /// runtime, and the runtime must be able to wrap a worker.
    fn check(&self, s: &Section) -> Result<(), ConfigError> {
        if self.runtime == RuntimeKind::None && !self.image.trim().is_empty() {
            return Err(s.invalid(
                "image",
                "is set but runtime = \"none\"; name the runtime that runs it (apptainer, singularity, shifter, podman, docker, charliecloud or custom)",
            ));
        }
        if self.runtime == RuntimeKind::Custom && !self.template.contains("{command}") {
            return Err(s.invalid(
                "template",
                "runtime = \"custom\" needs a template containing {command}, e.g. \"enroot start {image} {command}\"",
            ));
        }
        if self.worker == WorkerSource::Image && self.worker_path.trim().is_empty() {
            return Err(s.invalid(
                "worker_path",
                "worker = \"image\" needs the worker's path inside the image",
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
            return Err(s.invalid("template", e.to_string()));
        }
        Ok(())
    }
}

/// `[container]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct ContainerConfig")]
pub(crate) struct RawContainer {
    runtime: Option<Spanned<RuntimeKind>>,
    image: Option<Spanned<String>>,
    worker: Option<Spanned<WorkerSource>>,
    worker_path: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    binds: Option<Spanned<Vec<String>>>,
    options: Option<Spanned<Vec<String>>>,
    template: Option<Spanned<String>>,
    gpu_vendor: Option<Spanned<GpuVendor>>,
}

impl RawContainer {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<ContainerConfig, ConfigError> {
        let d = ContainerConfig::default();
        let mut s = site.section("container");
        let binds = s.or("binds", self.binds, d.binds);
        for (i, b) in binds.iter().enumerate() {
            if let Err(e) = Bind::parse(b) {
                return Err(s.invalid_entry("binds", &format!("binds[{i}]"), e.to_string()));
            }
        }
        let settings = ContainerConfig {
            runtime: s.or("runtime", self.runtime, d.runtime),
            image: s.or("image", self.image, d.image),
            worker: s.or("worker", self.worker, d.worker),
            worker_path: s.or("worker_path", self.worker_path, d.worker_path),
            command: s.opt("command", self.command),
            binds,
            options: s.or("options", self.options, d.options),
            template: s.or("template", self.template, d.template),
            gpu_vendor: s.or("gpu_vendor", self.gpu_vendor, d.gpu_vendor),
        };
        settings.check(&s)?;
        Ok(settings)
    }
}
