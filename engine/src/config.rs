//! The daemon's configuration: a TOML site file, checked strictly.
//!
//! Sites describe themselves in TOML. Every key has a documented default
//! (`configs/local.toml`, which is also the embedded default used when no file
//! is given), unknown keys are errors, and every error names the file, the
//! line and the key, because a pilot-job system's users mostly suffer from
//! configuration they cannot debug.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeMap;

use flotilla_protocol::servable::BatchDelay;
use serde::{Deserialize, Serialize};

mod launch;

pub use launch::{
    ContainerConfig, GpuVendor, LauncherConfig, LauncherKind, MpiFlavorConfig, RuntimeKind,
    WORKER_MOUNT, WorkerSource,
};

/// The embedded default site file.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../configs/local.toml");

/// Name shown for the embedded default in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded configs/local.toml>";

/// A whole site file.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[daemon]`: state, limits, retention.
    pub daemon: DaemonConfig,
    /// `[interchange]`: where workers dial, heartbeats.
    pub interchange: InterchangeConfig,
    /// `[provider]`: where blocks come from and how many.
    pub provider: ProviderConfig,
    /// `[launcher]`: how a block starts its workers.
    pub launcher: LauncherConfig,
    /// `[container]`: the image workers (or servables) run in.
    pub container: ContainerConfig,
    /// `[worker]`: what each worker looks like.
    pub worker: WorkerConfig,
    /// `[channel]`: where the provider's commands run.
    pub channel: ChannelConfig,
    /// `[memo]`: the memo store's bounds.
    pub memo: MemoConfig,
    /// `[servables.NAME]`: this site's overrides of servables' serving
    /// options (every version of NAME; builtins too).
    pub servables: BTreeMap<String, ServableOverride>,
}

/// `[memo]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MemoConfig {
    /// Most entries kept.
    pub max_entries: u64,
    /// Most bytes kept (outputs plus per-entry overhead).
    pub max_bytes: u64,
}

impl Default for MemoConfig {
    fn default() -> Self {
        MemoConfig {
            max_entries: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

/// `[servables.NAME]`: serving options that replace the spec's.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServableOverride {
    /// Answer repeated identical requests from the memo store.
    pub memoize: Option<bool>,
    /// Most inputs in one call.
    pub max_batch_size: Option<u32>,
    /// Milliseconds a request may wait for its batch to fill, or "auto".
    pub max_batch_delay_ms: Option<BatchDelay>,
    /// The latency bound "auto" batching keeps within.
    pub latency_target_ms: Option<u64>,
    /// Dispatches before worker losses fail a task (default:
    /// `[daemon] max_attempts`).
    pub max_attempts: Option<u32>,
}

/// `[daemon]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// State directory; unset means `$FLOTILLA_HOME`, else `~/.flotilla`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Largest frame accepted on any socket.
    pub max_frame_bytes: usize,
    /// Time running tasks get to finish on shutdown.
    pub shutdown_grace_s: f64,
    /// Retention of a result after its first fetch.
    pub result_retention_s: f64,
    /// Retention of a result nobody fetched.
    pub unfetched_result_retention_s: f64,
    /// Dispatches per task before worker losses fail it.
    pub max_attempts: u32,
    /// After a restart with blocks still running, tasks that were running
    /// wait this long for their workers to reconnect and claim them before
    /// they are queued again.
    pub recovery_grace_s: f64,
}

/// `[interchange]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InterchangeConfig {
    /// Addresses workers dial: `"auto"`, an interface name, an address or
    /// host name (optionally with a forwarded port), or a list of them.
    pub address: crate::advertise::AddressSetting,
    /// Local addresses to listen on; empty: the advertised ones.
    pub bind: Vec<String>,
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// Longest the daemon holds a worker's poll.
    pub heartbeat_period_s: f64,
    /// Silence after which a peer is lost.
    pub heartbeat_threshold_s: f64,
}

/// Which provider starts blocks.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Process groups on this machine.
    Local,
    /// Slurm jobs (`sbatch`).
    Slurm,
    /// PBS Pro or OpenPBS jobs (`qsub`).
    Pbspro,
    /// Cobalt jobs (`qsub --mode script`).
    Cobalt,
    /// Kubernetes Deployments (`kubectl`).
    Kubernetes,
}

impl ProviderKind {
    /// The name used in site files.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Slurm => "slurm",
            ProviderKind::Pbspro => "pbspro",
            ProviderKind::Cobalt => "cobalt",
            ProviderKind::Kubernetes => "kubernetes",
        }
    }
}

/// `[provider.kubernetes]`: where and how worker pods run.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    /// Namespace of the Deployments.
    pub namespace: String,
    /// Worker image (required with `kind = "kubernetes"`).
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    pub image_pull_policy: String,
    /// Service account of the pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// CPU request per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<String>,
    /// CPU limit per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<String>,
    /// Memory request per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<String>,
    /// Memory limit per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
    /// GPUs per pod.
    pub gpus: u32,
    /// Node labels the pods must land on.
    pub node_selector: BTreeMap<String, String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: "default".into(),
            image: String::new(),
            image_pull_policy: "IfNotPresent".into(),
            service_account: None,
            cpu_request: None,
            cpu_limit: None,
            memory_request: None,
            memory_limit: None,
            gpus: 0,
            node_selector: BTreeMap::new(),
        }
    }
}

/// Where scheduler commands run.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// This machine's shell.
    Local,
    /// An SSH session to a login node.
    Ssh,
}

/// `[channel]`: where the provider's commands run.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// `local` or `ssh`.
    pub kind: ChannelKind,
    /// SSH host.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// SSH user (default: `$USER`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Private key file (default: the SSH agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// known_hosts file (default: `~/.ssh/known_hosts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// Refuse hosts whose key is not in known_hosts.
    pub check_host_key: bool,
    /// Time allowed to connect and log in.
    pub connect_timeout_s: f64,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            kind: ChannelKind::Local,
            host: String::new(),
            port: 22,
            user: None,
            key_file: None,
            known_hosts: None,
            check_host_key: true,
            connect_timeout_s: 10.0,
        }
    }
}

/// `[provider]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// The provider.
    pub kind: ProviderKind,
    /// Blocks started with the daemon.
    pub init_blocks: u32,
    /// Fewest blocks kept alive.
    pub min_blocks: u32,
    /// Most blocks held at once.
    pub max_blocks: u32,
    /// Block state polling period.
    pub poll_interval_s: f64,
    /// Consecutive failed blocks before block starts are paused.
    pub max_block_failures: u32,
    /// The pool's name (`flotilla pool resume NAME`).
    pub pool: String,
    /// How often the scaling strategy runs.
    pub strategy_period_s: f64,
    /// Worker slots requested per outstanding task (0 to 1).
    pub parallelism: f64,
    /// An idle block beyond `min_blocks` is cancelled after this long.
    pub max_idle_s: f64,
    /// No block is cancelled for being idle before it is this old.
    pub min_block_lifetime_s: f64,
    /// No block is requested for more work this soon after a cancel.
    pub cooldown_s: f64,
    /// A running block none of whose workers connected within this long is
    /// cancelled and counted as a failure.
    pub block_connect_timeout_s: f64,
    /// Workers stop taking tasks and leave this long before their job's
    /// wall time ends.
    pub walltime_margin_s: f64,
    /// A block with less wall time left than this no longer counts as
    /// capacity: a replacement is requested while work is queued.
    pub replace_ahead_s: f64,
    /// Limit for every scheduler command.
    pub command_timeout_s: f64,
    /// Nodes per block (batch schedulers).
    pub nodes_per_block: u32,
    /// Wall time per block, `HH:MM:SS`: batch schedulers get it (default
    /// 01:00:00); the local provider enforces it only when it is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub walltime: Option<String>,
    /// Slurm partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// PBS or Cobalt queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Account or project charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Slurm quality of service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// Slurm constraint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
    /// Whole nodes only.
    pub exclusive: bool,
    /// GPUs per node.
    pub gpus_per_node: u32,
    /// Raw directive lines added to the job script (or qsub options for
    /// Cobalt).
    pub scheduler_options: String,
    /// Where block scripts and output go on the scheduler's side (default:
    /// STATE_DIR/blocks with a local channel, `.flotilla/blocks` under the
    /// remote home over SSH).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
    /// `[provider.kubernetes]`.
    pub kubernetes: KubernetesConfig,
}

/// `[worker]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Concurrent servable calls per worker; 0 = cores.
    pub slots: u32,
    /// A worker without its daemon for this long exits.
    pub lost_daemon_exit_s: f64,
    /// How long a starting worker tries the daemon's addresses before it
    /// gives up and reports why each failed.
    pub connect_timeout_s: f64,
    /// Worker executable; unset = next to `flotilla`, else PATH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Shell lines run before the workers start.
    pub init: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: None,
            max_frame_bytes: flotilla_protocol::DEFAULT_MAX_FRAME_BYTES,
            shutdown_grace_s: 30.0,
            result_retention_s: 600.0,
            unfetched_result_retention_s: 7.0 * 24.0 * 3600.0,
            max_attempts: 3,
            recovery_grace_s: 10.0,
        }
    }
}

impl Default for InterchangeConfig {
    fn default() -> Self {
        InterchangeConfig {
            address: crate::advertise::AddressSetting::One("127.0.0.1".into()),
            bind: Vec::new(),
            port: 0,
            heartbeat_period_s: 5.0,
            heartbeat_threshold_s: 20.0,
        }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            kind: ProviderKind::Local,
            init_blocks: 1,
            min_blocks: 1,
            max_blocks: 1,
            poll_interval_s: 1.0,
            max_block_failures: 3,
            pool: "default".into(),
            strategy_period_s: 1.0,
            parallelism: 1.0,
            max_idle_s: 120.0,
            min_block_lifetime_s: 60.0,
            cooldown_s: 30.0,
            block_connect_timeout_s: 600.0,
            walltime_margin_s: 60.0,
            replace_ahead_s: 300.0,
            command_timeout_s: 60.0,
            nodes_per_block: 1,
            walltime: None,
            partition: None,
            queue: None,
            account: None,
            qos: None,
            constraint: None,
            exclusive: false,
            gpus_per_node: 0,
            scheduler_options: String::new(),
            run_dir: None,
            kubernetes: KubernetesConfig::default(),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 0,
            lost_daemon_exit_s: 60.0,
            connect_timeout_s: 10.0,
            command: None,
            init: String::new(),
        }
    }
}

/// A site file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    /// `message` already carries the line, column and key from the parser.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's explanation, with line and key.
        message: String,
    },
    /// A value is well-formed but unusable.
    #[error("{file}{}: `{key}`{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default(), if line.is_none() { " (not set: its default)" } else { "" })]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the key, when it is in the file.
        line: Option<usize>,
        /// Dotted key (`provider.min_blocks`).
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl Config {
    /// Reads and checks a site file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The embedded default (`configs/local.toml`).
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT_CONFIG_TOML, DEFAULT_CONFIG_NAME)
    }

    /// Parses and checks site-file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(text, file)?;
        Ok(config)
    }

    fn validate(&self, text: &str, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            line: crate::toml_locate::locate(text, key),
            key: key.to_owned(),
            message,
        };
        let positive = [
            (
                "daemon.shutdown_grace_s",
                self.daemon.shutdown_grace_s,
                true,
            ),
            (
                "daemon.result_retention_s",
                self.daemon.result_retention_s,
                true,
            ),
            (
                "daemon.unfetched_result_retention_s",
                self.daemon.unfetched_result_retention_s,
                true,
            ),
            (
                "interchange.heartbeat_period_s",
                self.interchange.heartbeat_period_s,
                false,
            ),
            (
                "interchange.heartbeat_threshold_s",
                self.interchange.heartbeat_threshold_s,
                false,
            ),
            (
                "provider.poll_interval_s",
                self.provider.poll_interval_s,
                false,
            ),
            (
                "provider.strategy_period_s",
                self.provider.strategy_period_s,
                false,
            ),
            ("provider.max_idle_s", self.provider.max_idle_s, true),
            (
                "provider.min_block_lifetime_s",
                self.provider.min_block_lifetime_s,
                true,
            ),
            ("provider.cooldown_s", self.provider.cooldown_s, true),
            (
                "provider.block_connect_timeout_s",
                self.provider.block_connect_timeout_s,
                false,
            ),
            (
                "provider.walltime_margin_s",
                self.provider.walltime_margin_s,
                true,
            ),
            (
                "provider.replace_ahead_s",
                self.provider.replace_ahead_s,
                true,
            ),
            (
                "daemon.recovery_grace_s",
                self.daemon.recovery_grace_s,
                true,
            ),
            (
                "worker.lost_daemon_exit_s",
                self.worker.lost_daemon_exit_s,
                false,
            ),
            (
                "worker.connect_timeout_s",
                self.worker.connect_timeout_s,
                false,
            ),
        ];
        for (key, value, zero_ok) in positive {
            let ok = value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0));
            if !ok || value > 1.0e9 {
                return Err(invalid(
                    key,
                    format!(
                        "must be a {} number of seconds, got {value}",
                        if zero_ok { "non-negative" } else { "positive" }
                    ),
                ));
            }
        }
        if self.interchange.heartbeat_threshold_s <= self.interchange.heartbeat_period_s {
            return Err(invalid(
                "interchange.heartbeat_threshold_s",
                format!(
                    "must be greater than heartbeat_period_s ({}), or every idle worker is declared lost; got {}",
                    self.interchange.heartbeat_period_s, self.interchange.heartbeat_threshold_s
                ),
            ));
        }
        if self.daemon.max_frame_bytes < 4096 {
            return Err(invalid(
                "daemon.max_frame_bytes",
                format!(
                    "must be at least 4096 bytes, got {}",
                    self.daemon.max_frame_bytes
                ),
            ));
        }
        if self.daemon.max_attempts == 0 {
            return Err(invalid("daemon.max_attempts", "must be at least 1".into()));
        }
        let entries = self.interchange.address.entries();
        if entries.is_empty() {
            return Err(invalid(
                "interchange.address",
                "must name at least one address workers can reach, e.g. \"127.0.0.1\", \"auto\" or the login node's high-speed interface (\"hsn0\")".into(),
            ));
        }
        for entry in entries {
            if entry.trim() != "auto"
                && let Err(e) = flotilla_protocol::address::Endpoint::parse(entry)
            {
                return Err(invalid("interchange.address", e.to_string()));
            }
        }
        for b in &self.interchange.bind {
            if b.trim().parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "interchange.bind",
                    format!("`{b}` is not an IP address (\"0.0.0.0\" listens on every interface)"),
                ));
            }
        }
        let p = &self.provider;
        if p.min_blocks > p.max_blocks {
            return Err(invalid(
                "provider.min_blocks",
                format!(
                    "is {} but max_blocks is {}; min_blocks must not exceed max_blocks",
                    p.min_blocks, p.max_blocks
                ),
            ));
        }
        if p.init_blocks > p.max_blocks {
            return Err(invalid(
                "provider.init_blocks",
                format!(
                    "is {} but max_blocks is {}; init_blocks must not exceed max_blocks",
                    p.init_blocks, p.max_blocks
                ),
            ));
        }
        if !(0.0..=1.0).contains(&p.parallelism) {
            return Err(invalid(
                "provider.parallelism",
                format!(
                    "is {}; it is the share of a worker slot asked per outstanding task, between 0 and 1",
                    p.parallelism
                ),
            ));
        }
        if p.pool.trim().is_empty() {
            return Err(invalid("provider.pool", "must name the pool".into()));
        }
        if let Some(wall) = self.block_walltime_s()
            && p.walltime_margin_s * 2.0 >= wall as f64
        {
            return Err(invalid(
                "provider.walltime_margin_s",
                format!(
                    "is {} s but a block's wall time is {} s; workers would leave before doing half of it",
                    p.walltime_margin_s, wall
                ),
            ));
        }
        if p.max_block_failures == 0 {
            return Err(invalid(
                "provider.max_block_failures",
                "must be at least 1".into(),
            ));
        }
        if self.memo.max_entries == 0 || self.memo.max_bytes < 1024 {
            return Err(invalid(
                "memo.max_entries",
                "the memo store needs room for at least one entry and 1024 bytes; to turn memoization off, leave `memoize` off".into(),
            ));
        }
        for (name, o) in &self.servables {
            if let Some(n) = o.max_batch_size
                && !(1..=1_000_000).contains(&n)
            {
                return Err(invalid(
                    &format!("servables.{name}.max_batch_size"),
                    format!("must be between 1 and 1000000, got {n}"),
                ));
            }
            if o.latency_target_ms == Some(0) {
                return Err(invalid(
                    &format!("servables.{name}.latency_target_ms"),
                    "must be at least 1".into(),
                ));
            }
        }
        if !(self.provider.command_timeout_s.is_finite() && self.provider.command_timeout_s > 0.0) {
            return Err(invalid(
                "provider.command_timeout_s",
                format!(
                    "must be a positive number of seconds, got {}",
                    self.provider.command_timeout_s
                ),
            ));
        }
        if let Some(w) = &self.provider.walltime
            && flotilla_providers::walltime_seconds(w).is_none_or(|s| s == 0)
        {
            return Err(invalid(
                "provider.walltime",
                format!("`{w}` is not a wall time; write HH:MM:SS (or D-HH:MM:SS)"),
            ));
        }
        if self.provider.nodes_per_block == 0 {
            return Err(invalid(
                "provider.nodes_per_block",
                "must be at least 1".into(),
            ));
        }
        let kind = self.provider.kind;
        let only_for = |key: &str, set: bool, kinds: &[ProviderKind], use_instead: &str| {
            if set && !kinds.contains(&kind) {
                Err(invalid(
                    &format!("provider.{key}"),
                    format!(
                        "does not apply to kind = \"{}\"{use_instead}",
                        kind.as_str()
                    ),
                ))
            } else {
                Ok(())
            }
        };
        use ProviderKind::{Cobalt, Pbspro, Slurm};
        only_for(
            "partition",
            self.provider.partition.is_some(),
            &[Slurm],
            if matches!(kind, Pbspro | Cobalt) {
                "; PBS and Cobalt call it `queue`"
            } else {
                ""
            },
        )?;
        only_for(
            "queue",
            self.provider.queue.is_some(),
            &[Pbspro, Cobalt],
            if kind == Slurm {
                "; Slurm calls it `partition`"
            } else {
                ""
            },
        )?;
        only_for("qos", self.provider.qos.is_some(), &[Slurm], "")?;
        only_for(
            "constraint",
            self.provider.constraint.is_some(),
            &[Slurm],
            "",
        )?;
        only_for(
            "account",
            self.provider.account.is_some(),
            &[Slurm, Pbspro, Cobalt],
            "",
        )?;
        if kind == ProviderKind::Kubernetes && self.provider.kubernetes.image.trim().is_empty() {
            return Err(invalid(
                "provider.kubernetes.image",
                "kind = \"kubernetes\" needs the worker image to run (an image with flotilla-worker in it)".into(),
            ));
        }
        if !matches!(
            self.provider.kubernetes.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            return Err(invalid(
                "provider.kubernetes.image_pull_policy",
                format!(
                    "must be Always, IfNotPresent or Never, got `{}`",
                    self.provider.kubernetes.image_pull_policy
                ),
            ));
        }
        if self.channel.kind == ChannelKind::Ssh && self.channel.host.trim().is_empty() {
            return Err(invalid(
                "channel.host",
                "kind = \"ssh\" needs the login node to connect to".into(),
            ));
        }
        if kind == ProviderKind::Local && self.channel.kind == ChannelKind::Ssh {
            return Err(invalid(
                "channel.kind",
                "the local provider starts blocks on this machine; use a scheduler provider with an SSH channel".into(),
            ));
        }
        if !(self.channel.connect_timeout_s.is_finite() && self.channel.connect_timeout_s > 0.0) {
            return Err(invalid(
                "channel.connect_timeout_s",
                format!(
                    "must be a positive number of seconds, got {}",
                    self.channel.connect_timeout_s
                ),
            ));
        }
        // Kubernetes pods each run their own launcher; elsewhere one
        // launcher must span the block's nodes.
        if self.provider.nodes_per_block > 1
            && !self.launcher.kind.spans_nodes()
            && kind != ProviderKind::Kubernetes
        {
            return Err(invalid(
                "provider.nodes_per_block",
                format!(
                    "is {} but launcher.kind = \"single-node\" starts workers on one node only",
                    self.provider.nodes_per_block
                ),
            ));
        }
        if let Some((key, message)) = self.launcher.problem() {
            return Err(invalid(key, message));
        }
        if let Some((key, message)) = self.container.problem() {
            return Err(invalid(&key, message));
        }
        Ok(())
    }

    /// The settings in force, as TOML (for `flotilla config check`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// The wall time batch schedulers are asked for.
    pub fn scheduler_walltime(&self) -> String {
        self.provider
            .walltime
            .clone()
            .unwrap_or_else(|| "01:00:00".into())
    }

    /// The wall time each block lives, when something enforces one: the
    /// batch scheduler, or the local provider when `walltime` is set.
    pub fn block_walltime_s(&self) -> Option<u64> {
        match self.provider.kind {
            ProviderKind::Slurm | ProviderKind::Pbspro | ProviderKind::Cobalt => {
                flotilla_providers::walltime_seconds(&self.scheduler_walltime())
            }
            ProviderKind::Local => self
                .provider
                .walltime
                .as_deref()
                .and_then(flotilla_providers::walltime_seconds),
            ProviderKind::Kubernetes => None,
        }
    }

    /// `interchange.heartbeat_period_s` as a duration.
    pub fn heartbeat_period(&self) -> Duration {
        Duration::from_secs_f64(self.interchange.heartbeat_period_s)
    }

    /// `interchange.heartbeat_threshold_s` as a duration.
    pub fn heartbeat_threshold(&self) -> Duration {
        Duration::from_secs_f64(self.interchange.heartbeat_threshold_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_documents_the_real_defaults() {
        assert_eq!(Config::embedded_default().unwrap(), Config::default());
    }

    #[test]
    fn scheduler_keys_are_checked_against_the_provider() {
        let err = Config::parse(
            "[provider]\nkind = \"pbspro\"\npartition = \"debug\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("s.toml:3: `provider.partition`") && err.contains("`queue`"),
            "{err}"
        );
        let err = Config::parse(
            "[provider]\nkind = \"slurm\"\nwalltime = \"half an hour\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("s.toml:3: `provider.walltime`"), "{err}");
        let err = Config::parse("[provider]\nkind = \"kubernetes\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`provider.kubernetes.image`"), "{err}");
        let err = Config::parse(
            "[provider]\nkind = \"slurm\"\n[channel]\nkind = \"ssh\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`channel.host`"), "{err}");
        let err = Config::parse(
            "[provider]\nkind = \"slurm\"\nnodes_per_block = 2\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("s.toml:3: `provider.nodes_per_block`"),
            "{err}"
        );
    }

    #[test]
    fn interchange_addresses_are_checked_entry_by_entry() {
        let c = Config::parse(
            "[interchange]\naddress = [\"hsn0\", \"login1:7000\", \"auto\"]\nbind = [\"0.0.0.0\"]\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(
            c.interchange.address.entries(),
            ["hsn0", "login1:7000", "auto"]
        );
        let err = Config::parse("[interchange]\naddress = [\"login1:http\"]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.toml:2: `interchange.address`")
                && err.contains("`http` is not a port"),
            "{err}"
        );
        let err = Config::parse("[interchange]\naddress = []\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one address"), "{err}");
        let err = Config::parse("[interchange]\nbind = [\"eth0\"]\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.toml:2: `interchange.bind`"), "{err}");
    }

    #[test]
    fn launcher_and_container_settings_are_checked() {
        let cases = [
            ("[launcher]\nkind = \"wrapped\"\n", "`launcher.prefix`"),
            (
                "[launcher]\nkind = \"mpiexec\"\nnodefile = \"\"\n",
                "`launcher.nodefile`",
            ),
            ("[launcher]\nkind = \"qsub\"\n", "unknown variant `qsub`"),
            ("[container]\nimage = \"x.sif\"\n", "runtime = \"none\""),
            (
                "[container]\nruntime = \"podman\"\nbinds = [\"data:/data\"]\n",
                "`container.binds[0]`",
            ),
            (
                "[container]\nruntime = \"custom\"\ntemplate = \"run {image}\"\n",
                "`container.template`",
            ),
            (
                "[container]\nruntime = \"custom\"\ntemplate = \"run {img} {command}\"\n",
                "unknown placeholder {img}",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        // A multi-node launcher lifts the one-node limit.
        let c = Config::parse(
            "[provider]\nkind = \"slurm\"\nnodes_per_block = 4\n[launcher]\nkind = \"srun\"\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(c.launcher.kind, LauncherKind::Srun);
    }

    #[test]
    fn every_site_example_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../site-examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
            }
        }
        assert!(checked > 0, "no site examples in {}", dir.display());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("", "empty.toml").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text =
            "[daemon]\nshutdown_grace_s = 3\n\n[provider]\ninit_blocks = 1\nmax_blokcs = 4\n";
        let err = Config::parse(text, "site.toml").unwrap_err().to_string();
        assert!(err.starts_with("site.toml:"), "{err}");
        assert!(err.contains("line 6"), "{err}");
        assert!(err.contains("max_blokcs"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = Config::parse("[interchange]\nport = \"eighty\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("port"), "{err}");
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let text = "[provider]\ninit_blocks = 0\nmin_blocks = 3\nmax_blocks = 2\n";
        let err = Config::parse(text, "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml:3: `provider.min_blocks`"), "{err}");
        let text = "[interchange]\nheartbeat_period_s = 10\nheartbeat_threshold_s = 5\n";
        let err = Config::parse(text, "s.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("s.toml:3: `interchange.heartbeat_threshold_s`"),
            "{err}"
        );
    }

    #[test]
    fn a_default_in_conflict_is_named_as_such() {
        let err = Config::parse("[provider]\ninit_blocks = 0\nmax_blocks = 0\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.toml: `provider.min_blocks` (not set: its default)"),
            "{err}"
        );
    }

    #[test]
    fn settings_render_back_to_equivalent_toml() {
        let cfg = Config::default();
        assert_eq!(Config::parse(&cfg.to_toml(), "x").unwrap(), cfg);
    }

    #[test]
    fn servable_overrides_are_read_and_checked() {
        let text = "[servables.digits]\nmemoize = true\nmax_batch_delay_ms = \"auto\"\n\n[servables.noop]\nmax_batch_size = 0\n";
        let err = Config::parse(text, "s.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("s.toml:6: `servables.noop.max_batch_size`"),
            "{err}"
        );
        let cfg = Config::parse(
            "[servables.digits]\nmemoize = true\nmax_batch_delay_ms = 5\n",
            "s.toml",
        )
        .unwrap();
        let o = &cfg.servables["digits"];
        assert_eq!(
            (o.memoize, o.max_batch_delay_ms),
            (Some(true), Some(BatchDelay::Fixed(5)))
        );
        let err = Config::parse("[servables.digits]\nmemoise = true\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("memoise"), "{err}");
    }

    #[test]
    fn unknown_provider_kind_is_refused() {
        let err = Config::parse("[provider]\nkind = \"lsf\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lsf") && err.contains("local"), "{err}");
    }
}
