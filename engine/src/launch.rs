//! What a block runs: the worker command, wrapped by the configured launcher,
//! with the daemon's address and secret in its environment.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_launchers::{LaunchSpec, Launcher, SingleNode, shell};
use flotilla_protocol::secret::{SECRET_ENV, to_hex};
use flotilla_providers::JobSpec;

use crate::config::{ChannelKind, Config, LauncherKind, ProviderKind};
use crate::state_dir::StateDir;

/// Environment variable telling a local worker to exit with the daemon.
pub const EXIT_WITH_PID_ENV: &str = "FLOTILLA_EXIT_WITH_PID";

/// Everything needed to write any block's job.
#[derive(Clone, Debug)]
pub struct BlockTemplate {
    worker_exe: String,
    address: String,
    port: u16,
    secret_hex: String,
    slots: u32,
    lost_daemon_exit_s: f64,
    init: String,
    workers_per_node: u32,
    launcher: LauncherKind,
    exit_with_daemon: bool,
    /// Blocks' run directories live below this, on the scheduler's side.
    run_root: String,
    /// Distinguishes this daemon's jobs from other daemons' (job names).
    tag: String,
    objects: String,
}

/// A block that cannot be described.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the job for block {block}: {source}")]
pub struct LaunchFailed {
    block: u32,
    source: flotilla_launchers::LaunchError,
}

impl BlockTemplate {
    /// A template for blocks of a daemon listening for workers on `port`.
    pub fn new(config: &Config, state_dir: &StateDir, port: u16, secret: &[u8]) -> Self {
        let tag = daemon_tag(state_dir);
        let run_root = match (&config.provider.run_dir, config.channel.kind) {
            (Some(dir), _) => format!("{}/{tag}", dir.trim_end_matches('/')),
            (None, ChannelKind::Local) => state_dir.root().join("blocks").display().to_string(),
            (None, ChannelKind::Ssh) => format!(".flotilla/blocks/{tag}"),
        };
        BlockTemplate {
            run_root,
            objects: flotilla_protocol::paths::objects_dir(state_dir.root())
                .display()
                .to_string(),
            tag,
            worker_exe: config
                .worker
                .command
                .clone()
                .unwrap_or_else(default_worker_exe),
            address: config.interchange.address.clone(),
            port,
            secret_hex: to_hex(secret),
            slots: config.worker.slots,
            lost_daemon_exit_s: config.worker.lost_daemon_exit_s,
            init: config.worker.init.clone(),
            workers_per_node: config.launcher.workers_per_node,
            launcher: config.launcher.kind,
            exit_with_daemon: config.provider.kind == ProviderKind::Local,
        }
    }

    /// The job for block `block`.
    pub fn job(&self, block: u32) -> Result<JobSpec, LaunchFailed> {
        let mut words = vec![
            self.worker_exe.clone(),
            "--address".into(),
            self.address.clone(),
            "--port".into(),
            self.port.to_string(),
            "--block-id".into(),
            block.to_string(),
            "--lost-daemon-exit-s".into(),
            self.lost_daemon_exit_s.to_string(),
        ];
        if self.slots > 0 {
            words.extend(["--slots".into(), self.slots.to_string()]);
        }
        let spec = LaunchSpec {
            worker_command: shell::join(&words),
            workers_per_node: self.workers_per_node,
            nodes: 1,
        };
        let launcher: &dyn Launcher = match self.launcher {
            LauncherKind::SingleNode => &SingleNode,
        };
        let launch = launcher
            .script(&spec)
            .map_err(|source| LaunchFailed { block, source })?;
        let mut env = BTreeMap::from([
            (SECRET_ENV.to_owned(), self.secret_hex.clone()),
            ("FLOTILLA_OBJECTS".to_owned(), self.objects.clone()),
        ]);
        if self.exit_with_daemon {
            env.insert(EXIT_WITH_PID_ENV.into(), std::process::id().to_string());
        }
        Ok(JobSpec {
            name: format!("flotilla-{}-block-{block}", self.tag),
            worker_init: self.init.clone(),
            command: launch,
            env,
            run_dir: format!("{}/{block}", self.run_root),
        })
    }
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
fn default_worker_exe() -> String {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("flotilla-worker"))
        .filter(|p: &PathBuf| p.is_file())
        .map_or_else(|| "flotilla-worker".to_owned(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_carries_address_secret_and_block() {
        let mut config = Config::default();
        config.worker.command = Some("/opt/flotilla worker".into());
        config.worker.slots = 3;
        config.worker.init = "module load python".into();
        let dir = StateDir::at("/tmp/fl");
        let job = BlockTemplate::new(&config, &dir, 5555, &[1, 2])
            .job(7)
            .unwrap();
        assert_eq!(job.worker_init, "module load python");
        assert!(
            job.command
                .contains("'/opt/flotilla worker' --address 127.0.0.1 --port 5555 --block-id 7")
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
    fn remote_blocks_run_under_a_per_daemon_directory() {
        let mut config = Config::default();
        config.provider.kind = ProviderKind::Slurm;
        config.channel.kind = ChannelKind::Ssh;
        config.channel.host = "login".into();
        let dir = StateDir::at("/tmp/fl");
        let tag = daemon_tag(&dir);
        let job = BlockTemplate::new(&config, &dir, 5555, &[1])
            .job(2)
            .unwrap();
        assert_eq!(job.run_dir, format!(".flotilla/blocks/{tag}/2"));
        assert!(
            !job.env.contains_key(EXIT_WITH_PID_ENV),
            "only local blocks die with the daemon"
        );
        config.provider.run_dir = Some("/scratch/me/fl/".into());
        let job = BlockTemplate::new(&config, &dir, 5555, &[1])
            .job(2)
            .unwrap();
        assert_eq!(job.run_dir, format!("/scratch/me/fl/{tag}/2"));
    }
}
