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
    /// `[worker]`: what each worker looks like.
    pub worker: WorkerConfig,
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
}

/// `[daemon]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// State directory; unset means `$FLOTILLA_HOME`, else `~/.flotilla`.
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
}

/// `[interchange]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InterchangeConfig {
    /// Address to listen on and to give workers.
    pub address: String,
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
}

/// Which launcher a block uses.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LauncherKind {
    /// Background processes of the block's shell.
    SingleNode,
}

/// `[launcher]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LauncherConfig {
    /// The launcher.
    pub kind: LauncherKind,
    /// Worker processes per node.
    pub workers_per_node: u32,
}

/// `[worker]`.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Concurrent servable calls per worker; 0 = cores.
    pub slots: u32,
    /// A worker without its daemon for this long exits.
    pub lost_daemon_exit_s: f64,
    /// Worker executable; unset = next to `flotilla`, else PATH.
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
            max_attempts: 5,
        }
    }
}

impl Default for InterchangeConfig {
    fn default() -> Self {
        InterchangeConfig {
            address: "127.0.0.1".into(),
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
        }
    }
}

impl Default for LauncherConfig {
    fn default() -> Self {
        LauncherConfig {
            kind: LauncherKind::SingleNode,
            workers_per_node: 1,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 0,
            lost_daemon_exit_s: 60.0,
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
                "worker.lost_daemon_exit_s",
                self.worker.lost_daemon_exit_s,
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
        if self.interchange.address.trim().is_empty() {
            return Err(invalid(
                "interchange.address",
                "must name an address workers can reach, e.g. \"127.0.0.1\" or the login node's interconnect address".into(),
            ));
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
        if self.launcher.workers_per_node == 0 {
            return Err(invalid(
                "launcher.workers_per_node",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The settings in force, as TOML (for `flotilla config check`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
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
