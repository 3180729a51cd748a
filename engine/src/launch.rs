//! What a block runs: the worker command, wrapped by the configured launcher,
//! with the daemon's address and secret in its environment.

use std::path::{Path, PathBuf};

use flotilla_launchers::{Bind, Container, Gpus, Inner, LaunchSpec, shell};
use flotilla_protocol::launch::{BLOCK_ENV_VARS, WorkerArgs};
use flotilla_protocol::placement::{CpuAffinity, NodeResources};
use flotilla_protocol::secret::to_hex;
use flotilla_providers::JobSpec;

use crate::config::{
    ChannelKind, Config, ContainerConfig, LauncherConfig, ProviderKind, RuntimeKind, WORKER_MOUNT,
    WorkerSource,
};
use crate::state_dir::StateDir;

pub use flotilla_protocol::launch::{EXIT_WITH_PID_ENV, JOB_END_ENV, OBJECTS_ENV};

/// Everything needed to write any block's job.
#[derive(Clone, Debug)]
pub struct BlockTemplate {
    worker_exe: String,
    /// The daemon's advertised addresses, comma-joined.
    addresses: String,
    port: u16,
    secret_hex: String,
    slots: u32,
    /// The node's accelerators and core rule, shared among the slots.
    node: NodeResources,
    lost_daemon_exit_s: f64,
    connect_timeout_s: f64,
    /// Each block's wall time, when something enforces one.
    walltime_s: Option<u64>,
    walltime_margin_s: f64,
    init: String,
    workers_per_node: u32,
    nodes: u32,
    launcher: LauncherConfig,
    container: ContainerConfig,
    gpus: Gpus,
    exit_with_daemon: bool,
    /// Blocks' run directories live below this, on the scheduler's side.
    run_root: String,
    /// Distinguishes this daemon's jobs from other daemons' (job names).
    tag: String,
    /// The object store as the workers' nodes see it; none when they
    /// cannot (they fetch servables' files from the daemon).
    objects: Option<String>,
    /// `[worker] cache_dir`: where nodes keep fetched servable files.
    cache_dir: Option<String>,
    /// `[worker] python`: what nodes make servables' environments with.
    python: Option<String>,
    /// `[worker] warm_memory_mb`: the workers' budget for warm processes.
    warm_memory_mb: Option<u64>,
    /// `[worker] onnx_threads`: threads of each ONNX Runtime session.
    onnx_threads: Option<u32>,
    /// `[worker] onnx_session`: sessions per slot or per worker.
    onnx_session: Option<String>,
    /// `[daemon] max_frame_bytes`: workers accept frames this large.
    max_frame_bytes: usize,
}

/// What a block's job depends on beyond the site file: where the daemon
/// runs and how workers reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSite {
    /// Distinguishes this daemon's jobs from other daemons' (see
    /// [`daemon_tag`]).
    pub tag: String,
    /// The worker executable the block runs (`[worker] command`, or the
    /// default beside the daemon's own executable).
    pub worker_exe: String,
    /// The daemon's advertised addresses, comma-joined.
    pub addresses: String,
    /// The interchange port.
    pub port: u16,
}

/// A block that cannot be described.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the job for block {block}: {source}")]
pub struct LaunchFailed {
    block: u32,
    source: flotilla_launchers::LaunchError,
}

impl BlockTemplate {
    /// A template for blocks of a daemon that workers reach at `addresses`
    /// (comma-joined entries) on `port`.
    pub fn new(
        config: &Config,
        state_dir: &StateDir,
        addresses: &str,
        port: u16,
        secret: &[u8],
    ) -> Self {
        let worker_exe = config
            .worker
            .command
            .clone()
            .unwrap_or_else(default_worker_exe);
        let site = BlockSite {
            tag: daemon_tag(state_dir),
            worker_exe,
            addresses: addresses.to_owned(),
            port,
        };
        Self::for_site(config, state_dir, &site, secret)
    }

    /// A template for blocks of a daemon at `site` (what `new` works out
    /// from the machine it runs on, given instead: previews and tests).
    pub fn for_site(
        config: &Config,
        state_dir: &StateDir,
        site: &BlockSite,
        secret: &[u8],
    ) -> Self {
        let tag = site.tag.clone();
        let run_root = match (&config.provider.run_dir, config.channel.kind) {
            (Some(dir), _) => format!("{}/{tag}", dir.trim_end_matches('/')),
            (None, ChannelKind::Local) => state_dir.blocks().display().to_string(),
            (None, ChannelKind::Ssh) => format!(".flotilla/blocks/{tag}"),
        };
        BlockTemplate {
            max_frame_bytes: config.daemon.max_frame_bytes,
            run_root,
            objects: workers_objects(config, state_dir),
            cache_dir: config.worker.cache_dir.clone(),
            python: config.worker.python.clone(),
            warm_memory_mb: config.worker.warm_memory_mb,
            onnx_threads: config.worker.onnx_threads,
            onnx_session: config.worker.onnx_session.clone(),
            tag,
            worker_exe: site.worker_exe.clone(),
            addresses: site.addresses.clone(),
            port: site.port,
            secret_hex: to_hex(secret),
            slots: config.worker.slots,
            node: config.worker.node_resources(),
            lost_daemon_exit_s: config.worker.lost_daemon_exit_s,
            connect_timeout_s: config.worker.connect_timeout_s,
            walltime_s: config.block_walltime_s(),
            walltime_margin_s: config.provider.walltime_margin_s,
            init: config.worker.init.clone(),
            workers_per_node: config.launcher.workers_per_node,
            // Each Kubernetes pod runs its own launcher on its own node.
            nodes: match config.provider.kind {
                ProviderKind::Kubernetes => 1,
                _ => config.provider.nodes_per_block,
            },
            launcher: config.launcher.clone(),
            container: config.container.clone(),
            gpus: config
                .container
                .gpus(config.provider.gpus_per_node > 0 || config.provider.kubernetes.gpus > 0),
            exit_with_daemon: config.provider.kind == ProviderKind::Local,
        }
    }

    /// The job for block `block`.
    pub fn job(&self, block: u32) -> Result<JobSpec, LaunchFailed> {
        let failed = |source| LaunchFailed { block, source };
        let workers_container = self.container.workers_container(self.gpus);
        let exe = match (&workers_container, self.container.worker) {
            (None, _) => self.worker_exe.clone(),
            (Some(_), WorkerSource::Image) => self.container.worker_path.clone(),
            (Some(_), WorkerSource::Host) => {
                let name = Path::new(&self.worker_exe)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{WORKER_MOUNT}/{name}")
            }
        };
        let mut args = self.worker_args(block);
        if workers_container.is_none() {
            self.servable_container_args(&mut args);
        }
        let words: Vec<String> = std::iter::once(exe).chain(args.to_argv()).collect();
        let (worker_command, copy_setup) = match workers_container {
            None => (shell::join(&words), String::new()),
            Some(container) => {
                let invocation = self
                    .with_worker_binds(container)
                    .map_err(failed)?
                    .invocation(Inner {
                        command: &words,
                        pass_env: &self.forwarded_env(),
                        workdir: None,
                        interactive: false,
                    })
                    .map_err(failed)?;
                (invocation.command_line(), invocation.setup())
            }
        };
        let spec = LaunchSpec {
            worker_command,
            copy_setup,
            workers_per_node: self.workers_per_node,
            nodes: self.nodes,
            block_id: block,
        };
        let mut launch = self.launcher.launcher().script(&spec).map_err(failed)?;
        if let Some(walltime) = self.walltime_s {
            // When the job ends, from the scheduler if it says, else from
            // the wall time counted from now (the job's start).
            launch = format!(
                "{JOB_END_ENV}=\"${{SLURM_JOB_END_TIME:-$(( $(date +%s) + {walltime} ))}}\"; export {JOB_END_ENV}\n{launch}"
            );
        }
        Ok(JobSpec {
            name: format!("flotilla-{}-block-{block}", self.tag),
            worker_init: self.init.clone(),
            command: launch,
            env: args.to_env(),
            run_dir: format!("{}/{block}", self.run_root),
        })
    }

    /// The workers' container with what the worker needs bound in: its own
    /// executable (unless the image has one), the object store and the
    /// blocks' directory, at the same paths.
    fn with_worker_binds(
        &self,
        mut container: Container,
    ) -> Result<Container, flotilla_launchers::LaunchError> {
        let mut binds = Vec::new();
        if self.container.worker == WorkerSource::Host {
            let dir = Path::new(&self.worker_exe)
                .parent()
                .filter(|d| d.is_absolute())
                .ok_or_else(|| {
                    flotilla_launchers::LaunchError::Container(format!(
                        "worker = \"host\" bind-mounts the worker executable, so it needs an absolute path, not `{}`; set [worker] command, or worker = \"image\"",
                        self.worker_exe
                    ))
                })?;
            binds.push(Bind {
                host: dir.display().to_string(),
                container: WORKER_MOUNT.into(),
                read_only: true,
            });
        }
        let dirs = [(self.objects.as_ref(), true), (Some(&self.run_root), false)];
        for (dir, read_only) in dirs {
            if let Some(dir) = dir.filter(|d| Path::new(d).is_absolute()) {
                binds.push(Bind::same(dir, read_only));
            }
        }
        binds.append(&mut container.binds);
        container.binds = binds;
        Ok(container)
    }

    /// What block `block`'s workers are told, on their command line and in
    /// their environment (the secret never goes on the command line).
    fn worker_args(&self, block: u32) -> WorkerArgs {
        WorkerArgs {
            address: Some(self.addresses.clone()),
            port: Some(self.port),
            block_id: Some(block),
            lost_daemon_exit_s: Some(self.lost_daemon_exit_s),
            connect_timeout_s: Some(self.connect_timeout_s),
            slots: (self.slots > 0).then_some(self.slots),
            walltime_margin_s: self.walltime_s.map(|_| self.walltime_margin_s),
            secret_hex: Some(self.secret_hex.clone()),
            objects_dir: self.objects.as_ref().map(PathBuf::from),
            cache_dir: self.cache_dir.as_ref().map(PathBuf::from),
            python: self.python.clone(),
            warm_memory_mb: self.warm_memory_mb,
            onnx_threads: self.onnx_threads,
            onnx_session: self.onnx_session.clone(),
            exit_with_pid: self.exit_with_daemon.then(|| std::process::id() as i32),
            max_frame_bytes: Some(self.max_frame_bytes),
            accelerators: self.node.devices.clone(),
            accelerator_kind: self.node.kind.map(|k| k.name().to_owned()),
            cpu_affinity: (self.node.affinity != CpuAffinity::None)
                .then(|| self.node.affinity.to_string()),
            ..WorkerArgs::default()
        }
    }

    /// The variables a containerised worker needs from outside.
    fn forwarded_env(&self) -> Vec<&'static str> {
        let mut names = BLOCK_ENV_VARS.to_vec();
        if self.exit_with_daemon {
            names.push(EXIT_WITH_PID_ENV);
        }
        names
    }

    /// Worker options telling it to start servables that name an image in
    /// that image, when the site has a runtime and the workers run on the host.
    fn servable_container_args(&self, args: &mut WorkerArgs) {
        let c = &self.container;
        let Some(runtime) = c.runtime.runtime() else {
            return;
        };
        debug_assert!(c.runtime != RuntimeKind::None);
        args.container_runtime = Some(runtime.name().to_owned());
        args.container_command = c.command.clone();
        args.container_binds = c.binds.clone();
        args.container_options = c.options.clone();
        args.container_template = (!c.template.is_empty()).then(|| c.template.clone());
        args.gpus = (self.gpus != Gpus::None).then(|| self.gpus.name().to_owned());
    }
}

/// The object store as a block's workers see it: `[worker] objects_dir`,
/// else the shared directory's for blocks on this machine's channel. Over
/// SSH or on Kubernetes the daemon's paths mean nothing where the workers
/// run, so they get none and fetch servables' files over the interchange.
fn workers_objects(config: &Config, state_dir: &StateDir) -> Option<String> {
    if let Some(dir) = &config.worker.objects_dir {
        return Some(dir.clone());
    }
    let sees_our_paths = config.channel.kind == ChannelKind::Local
        && config.provider.kind != ProviderKind::Kubernetes;
    sees_our_paths.then(|| state_dir.objects().display().to_string())
}

/// Six hex digits naming this daemon in job names, derived from its state
/// directory, so two daemons sharing a scheduler account or a Kubernetes
/// namespace never take each other's jobs for their own.
pub fn daemon_tag(state_dir: &StateDir) -> String {
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut hasher = blake3::Hasher::new();
    hasher.update(host.as_bytes());
    hasher.update(state_dir.root().as_os_str().as_encoded_bytes());
    hasher.finalize().to_hex()[..6].to_owned()
}

/// `flotilla-worker` beside the running executable if it is there, else
/// whatever `flotilla-worker` the PATH finds.
pub fn default_worker_exe() -> String {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("flotilla-worker"))
        .filter(|p: &PathBuf| p.is_file())
        .map_or_else(|| "flotilla-worker".to_owned(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::secret::SECRET_ENV;

    #[test]
    fn job_carries_address_secret_and_block() {
        let mut config = Config::default();
        config.worker.command = Some("/opt/flotilla worker".into());
        config.worker.slots = 3;
        config.worker.init = "module load python".into();
        let dir = StateDir::at("/tmp/fl");
        let job = BlockTemplate::new(&config, &dir, "127.0.0.1", 5555, &[1, 2])
            .job(7)
            .unwrap();
        assert_eq!(job.worker_init, "module load python");
        assert!(
            job.command
                .contains("'/opt/flotilla worker' --address 127.0.0.1 --port 5555 --block-id 7"),
            "{}",
            job.command
        );
        assert!(job.command.contains("--slots 3"));
        assert!(
            !job.command.contains("0102"),
            "the secret never goes into the command"
        );
        assert_eq!(job.env[SECRET_ENV], "0102");
        assert_eq!(job.run_dir, "/tmp/fl/blocks/7");
        assert!(
            job.name.starts_with("flotilla-") && job.name.ends_with("-block-7"),
            "{}",
            job.name
        );
        assert_eq!(job.name.len(), "flotilla-abcdef-block-7".len());
    }

    #[test]
    fn a_worker_parses_back_what_its_block_is_told() {
        let mut config = Config::default();
        config.worker.slots = 2;
        config.worker.accelerators = vec!["0.0".into(), "0.1".into()];
        config.worker.accelerator_kind = Some(flotilla_protocol::placement::AcceleratorKind::Intel);
        config.worker.cpu_affinity = CpuAffinity::parse("list:1-51,53-103").unwrap();
        config.worker.cache_dir = Some("/local/scratch/fl-cache".into());
        let template =
            BlockTemplate::new(&config, &StateDir::at("/tmp/fl"), "127.0.0.1", 5555, &[1]);
        let job = template.job(4).unwrap();
        let told = template.worker_args(4);
        assert_eq!(job.env, told.to_env());
        let argv = told.to_argv();
        assert!(job.command.contains(&argv.join(" ")), "{}", job.command);
        let parsed = WorkerArgs::parse(argv, |name| job.env.get(name).cloned()).unwrap();
        assert_eq!(parsed, told);
        assert_eq!(parsed.block_id, Some(4));
        assert_eq!(parsed.secret_hex.as_deref(), Some("01"));
        // Workers accept the frames the daemon may send them.
        assert_eq!(parsed.max_frame_bytes, Some(config.daemon.max_frame_bytes));
        assert_eq!(parsed.exit_with_pid, Some(std::process::id() as i32));
        // Each worker learns the node's accelerators and core rule.
        assert!(
            job.command.contains(
                "--accelerators 0.0,0.1 --accelerator-kind intel --cpu-affinity list:1-51,53-103"
            ),
            "{}",
            job.command
        );
        assert_eq!(parsed.accelerators, ["0.0", "0.1"]);
        // And where the node keeps fetched servable files.
        assert_eq!(
            parsed.cache_dir.as_deref(),
            Some(Path::new("/local/scratch/fl-cache"))
        );
    }

    #[test]
    fn remote_blocks_run_under_a_per_daemon_directory() {
        let mut config = Config::default();
        config.provider.kind = ProviderKind::Slurm;
        config.channel.kind = ChannelKind::Ssh;
        config.channel.host = "login".into();
        let dir = StateDir::at("/tmp/fl");
        let tag = daemon_tag(&dir);
        let job = BlockTemplate::new(&config, &dir, "10.0.0.1,login1:7000", 5555, &[1])
            .job(2)
            .unwrap();
        assert_eq!(job.run_dir, format!(".flotilla/blocks/{tag}/2"));
        assert!(
            !job.env.contains_key(EXIT_WITH_PID_ENV),
            "only local blocks die with the daemon"
        );
        config.provider.run_dir = Some("/scratch/me/fl/".into());
        let job = BlockTemplate::new(&config, &dir, "10.0.0.1,login1:7000", 5555, &[1])
            .job(2)
            .unwrap();
        assert_eq!(job.run_dir, format!("/scratch/me/fl/{tag}/2"));
    }

    #[test]
    fn local_blocks_and_the_object_store_are_in_the_shared_directory() {
        let mut config = Config::default();
        config.provider.kind = ProviderKind::Slurm;
        let dir = StateDir::at("/local/fl").with_shared("/scratch/me/fl");
        let template = BlockTemplate::new(&config, &dir, "10.0.0.1", 5555, &[1]);
        let job = template.job(3).unwrap();
        assert_eq!(job.run_dir, "/scratch/me/fl/blocks/3");
        assert_eq!(job.env[OBJECTS_ENV], "/scratch/me/fl/objects");
        assert_eq!(
            template.worker_args(3).objects_dir.as_deref(),
            Some(Path::new("/scratch/me/fl/objects"))
        );
        assert!(!job.command.contains("/local/fl"), "{}", job.command);
        // `[provider] run_dir` still decides where blocks run.
        config.provider.run_dir = Some("/scratch/me/runs".into());
        let job = BlockTemplate::new(&config, &dir, "10.0.0.1", 5555, &[1])
            .job(3)
            .unwrap();
        let tag = daemon_tag(&dir);
        assert_eq!(job.run_dir, format!("/scratch/me/runs/{tag}/3"));
        // And a container binds the shared directory's paths.
        config.container.runtime = RuntimeKind::Podman;
        config.container.image = "localhost/flotilla:test".into();
        config.worker.command = Some("/opt/fl/bin/flotilla-worker".into());
        config.provider.run_dir = None;
        let job = BlockTemplate::new(&config, &dir, "10.0.0.1", 5555, &[1])
            .job(0)
            .unwrap();
        assert!(
            job.command.contains(
                "-v /scratch/me/fl/objects:/scratch/me/fl/objects:ro -v /scratch/me/fl/blocks:/scratch/me/fl/blocks"
            ),
            "{}",
            job.command
        );
    }

    #[test]
    fn workers_elsewhere_get_no_object_store_of_the_daemons_machine() {
        let dir = StateDir::at("/home/alice/.flotilla");
        let mut ssh = Config::default();
        ssh.provider.kind = ProviderKind::Slurm;
        ssh.channel.kind = ChannelKind::Ssh;
        ssh.channel.host = "login".into();
        let mut kubernetes = Config::default();
        kubernetes.provider.kind = ProviderKind::Kubernetes;
        for config in [&ssh, &kubernetes] {
            let template = BlockTemplate::new(config, &dir, "10.0.0.1", 5555, &[1]);
            let job = template.job(0).unwrap();
            assert!(!job.env.contains_key(OBJECTS_ENV), "{:?}", job.env);
            assert!(!job.command.contains("/home/alice"), "{}", job.command);
            assert_eq!(template.worker_args(0).objects_dir, None);
        }
        // Over SSH blocks run under the remote home, not the daemon's
        // directory (a Kubernetes pod has no run directory; its manifest is
        // written on this machine).
        let job = BlockTemplate::new(&ssh, &dir, "10.0.0.1", 5555, &[1])
            .job(0)
            .unwrap();
        assert!(
            job.run_dir.starts_with(".flotilla/blocks/"),
            "{}",
            job.run_dir
        );
        // Unless the site says where the remote machine sees it.
        ssh.worker.objects_dir = Some("/remote/scratch/fl/objects".into());
        let job = BlockTemplate::new(&ssh, &dir, "10.0.0.1", 5555, &[1])
            .job(0)
            .unwrap();
        assert_eq!(job.env[OBJECTS_ENV], "/remote/scratch/fl/objects");
    }

    #[test]
    fn srun_blocks_span_their_nodes() {
        let mut config = Config::default();
        config.provider.kind = ProviderKind::Slurm;
        config.provider.nodes_per_block = 2;
        config.launcher.kind = crate::config::LauncherKind::Srun;
        config.launcher.workers_per_node = 2;
        let dir = StateDir::at("/tmp/fl");
        let job = BlockTemplate::new(&config, &dir, "10.0.0.1,login1:7000", 5555, &[1])
            .job(3)
            .unwrap();
        assert!(
            job.command
                .contains("exec srun --nodes=2 --ntasks=4 --ntasks-per-node=2 sh -c "),
            "{}",
            job.command
        );
        assert!(
            job.command
                .contains("--address 10.0.0.1,login1:7000 --port 5555 --block-id 3")
        );
        assert!(
            job.command.starts_with(
                "FLOTILLA_JOB_END=\"${SLURM_JOB_END_TIME:-$(( $(date +%s) + 3600 ))}\"; export FLOTILLA_JOB_END\nFLOTILLA_BLOCK_ID=3; export FLOTILLA_BLOCK_ID\n"
            ),
            "{}",
            job.command
        );
        assert!(job.command.contains("--walltime-margin-s 60"));
    }

    #[test]
    fn workers_in_an_image_get_the_host_worker_and_their_environment() {
        let mut config = Config::default();
        config.worker.command = Some("/opt/fl/bin/flotilla-worker".into());
        config.container.runtime = RuntimeKind::Podman;
        config.container.image = "localhost/flotilla:test".into();
        let dir = StateDir::at("/tmp/fl");
        let job = BlockTemplate::new(&config, &dir, "127.0.0.1", 5555, &[1])
            .job(0)
            .unwrap();
        let c = &job.command;
        assert!(
            c.contains("podman run --rm --network=host --pid=host -v /opt/fl/bin:/opt/flotilla/bin:ro -v /tmp/fl/objects:/tmp/fl/objects:ro -v /tmp/fl/blocks:/tmp/fl/blocks -e FLOTILLA_SECRET -e FLOTILLA_OBJECTS -e FLOTILLA_WORKER_RANK"),
            "{c}"
        );
        assert!(
            c.contains(
                "localhost/flotilla:test /opt/flotilla/bin/flotilla-worker --address 127.0.0.1"
            ),
            "{c}"
        );
        assert!(!c.contains("--container-runtime"), "{c}");

        config.container.worker = WorkerSource::Image;
        config.container.worker_path = "/usr/local/bin/flotilla-worker".into();
        config.container.runtime = RuntimeKind::Apptainer;
        config.container.image = "/images/fl.sif".into();
        let job = BlockTemplate::new(&config, &dir, "127.0.0.1", 5555, &[1])
            .job(0)
            .unwrap();
        assert!(
            job.command
                .contains("APPTAINERENV_FLOTILLA_SECRET=\"${FLOTILLA_SECRET:-}\"; export APPTAINERENV_FLOTILLA_SECRET"),
            "{}",
            job.command
        );
        assert!(
            job.command
                .contains("/images/fl.sif /usr/local/bin/flotilla-worker --address")
        );
        assert!(!job.command.contains("/opt/flotilla/bin"));
    }

    #[test]
    fn a_host_worker_needs_an_absolute_path_to_bind() {
        let mut config = Config::default();
        config.worker.command = Some("flotilla-worker".into());
        config.container.runtime = RuntimeKind::Charliecloud;
        config.container.image = "/var/tmp/img".into();
        let err = BlockTemplate::new(&config, &StateDir::at("/tmp/fl"), "127.0.0.1", 1, &[1])
            .job(0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs an absolute path"), "{err}");
    }

    #[test]
    fn without_a_workers_image_servable_images_use_the_site_runtime() {
        let mut config = Config::default();
        config.container.runtime = RuntimeKind::Apptainer;
        config.container.binds = vec!["/scratch".into()];
        config.provider.gpus_per_node = 1;
        let job = BlockTemplate::new(&config, &StateDir::at("/tmp/fl"), "127.0.0.1", 1, &[1])
            .job(0)
            .unwrap();
        assert!(
            job.command
                .contains("--container-runtime apptainer --container-bind /scratch --gpus nvidia"),
            "{}",
            job.command
        );
    }
}
