//! The daemon's configuration: a TOML site file, checked strictly.
//!
//! Sites describe themselves in TOML. Every key has a documented default
//! (`configs/local.toml`, which is also the embedded default used when no file
//! is given), unknown keys are errors, and every error names the file, the
//! line and the key, because a pilot-job system's users mostly suffer from
//! configuration they cannot debug.
//!
//! Reading a file takes two steps. The text is parsed into raw sections
//! (`RawDaemon`, `RawProvider`, ...): every key optional, each value with its
//! place in the text, unknown keys refused by the parser. Each raw section
//! is then checked into its typed settings ([`DaemonConfig`],
//! [`ProviderConfig`], ...) by the module that defines them, with the
//! defaults filled in; a provider kind's own keys and demands live in its
//! module under `provider/`, a launcher kind's beside [`LauncherKind`].
//! Checks across sections run last, on the typed settings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod channel;
mod container;
mod daemon;
mod error;
mod interchange;
mod launcher;
mod memo;
mod metrics;
mod pool;
mod provider;
mod servables;
mod site;
mod strings;
mod worker;

pub use channel::{ChannelConfig, ChannelKind};
pub use container::{ContainerConfig, GpuVendor, RuntimeKind, WORKER_MOUNT, WorkerSource};
pub use daemon::{DaemonConfig, LogFormat};
pub use error::ConfigError;
pub use interchange::InterchangeConfig;
pub use launcher::{LauncherConfig, LauncherKind, MpiFlavorConfig};
pub use memo::MemoConfig;
pub use metrics::MetricsConfig;
pub use pool::{PoolConfig, is_name as is_pool_name};
pub use provider::{KubernetesConfig, ProviderConfig, ProviderKind};
pub use servables::ServableOverride;
pub use worker::WorkerConfig;

use site::Site;

/// The embedded default site file.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../configs/local.toml");

/// Name shown for the embedded default in messages.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded configs/local.toml>";

/// A whole site file, checked: the settings in force.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
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
    /// `[metrics]`: the Prometheus endpoint, when asked for.
    pub metrics: MetricsConfig,
    /// `[servables.NAME]`: this site's overrides of servables' serving
    /// options (every version of NAME; builtins too).
    pub servables: BTreeMap<String, ServableOverride>,
    /// `[[pool]]`: the pools, when the file describes several; empty for a
    /// file of one pool, which the sections above describe (see
    /// [`Config::pool_configs`]). With pools, the sections above hold the
    /// first pool's settings, for what reads one pool's.
    #[serde(rename = "pool", skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolConfig>,
}

/// A whole site file as written: every section may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct Config")]
struct RawConfig {
    daemon: Option<daemon::RawDaemon>,
    interchange: Option<interchange::RawInterchange>,
    provider: Option<provider::RawProvider>,
    launcher: Option<launcher::RawLauncher>,
    container: Option<container::RawContainer>,
    worker: Option<worker::RawWorker>,
    channel: Option<channel::RawChannel>,
    memo: Option<memo::RawMemo>,
    metrics: Option<metrics::RawMetrics>,
    servables: Option<BTreeMap<String, servables::RawServableOverride>>,
    pool: Option<Vec<pool::RawPool>>,
}

/// What a file with `[[pool]]` tables renders as: the pools' sections
/// only inside the pools.
#[derive(Serialize)]
struct RenderedPools<'a> {
    daemon: &'a DaemonConfig,
    interchange: &'a InterchangeConfig,
    memo: &'a MemoConfig,
    metrics: &'a MetricsConfig,
    servables: &'a BTreeMap<String, ServableOverride>,
    pool: &'a [PoolConfig],
}

impl RawConfig {
    /// Every section checked, then the rules across sections.
    fn check(self, site: &mut Site) -> Result<Config, ConfigError> {
        let pools = self.pool.unwrap_or_default();
        if !pools.is_empty() {
            let sections = [
                ("provider", self.provider.is_some()),
                ("channel", self.channel.is_some()),
                ("launcher", self.launcher.is_some()),
                ("container", self.container.is_some()),
                ("worker", self.worker.is_some()),
            ];
            if let Some((name, _)) = sections.iter().find(|(_, set)| *set) {
                return Err(site.invalid_at(
                    name,
                    site.locate(name),
                    format!(
                        "a file with [[pool]] tables describes each pool's {name} in its own [pool.{name}]; move this section into the pools"
                    ),
                ));
            }
        }
        let mut config = Config {
            daemon: self.daemon.unwrap_or_default().check(site)?,
            interchange: self.interchange.unwrap_or_default().check(site)?,
            provider: self.provider.unwrap_or_default().check(site)?,
            channel: self.channel.unwrap_or_default().check(site)?,
            launcher: self.launcher.unwrap_or_default().check(site)?,
            container: self.container.unwrap_or_default().check(site)?,
            worker: self.worker.unwrap_or_default().check(site)?,
            memo: self.memo.unwrap_or_default().check(site)?,
            metrics: self.metrics.unwrap_or_default().check(site)?,
            servables: servables::check(self.servables.unwrap_or_default(), site)?,
            pools: Vec::new(),
        };
        if pools.is_empty() {
            config.provider.kind.rules().check(&config, site)?;
            config.launcher.check_fits(&config.provider, site)?;
            return Ok(config);
        }
        let mut checked: Vec<PoolConfig> = Vec::with_capacity(pools.len());
        for (index, raw) in pools.into_iter().enumerate() {
            let pool = raw.check(index, &checked, &config, site)?;
            checked.push(pool);
        }
        if let Some(first) = checked.first() {
            config = config.with_pool(first);
        }
        config.pools = checked;
        Ok(config)
    }
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_owned(),
            message: crate::toml_locate::parse_error(text, &e),
        })?;
        let mut site = Site::new(file, text);
        strings::check(text, &site)?;
        raw.check(&mut site)
    }

    /// The settings in force, as TOML (for `flotilla config check`).
    pub fn to_toml(&self) -> String {
        let rendered = if self.pools.is_empty() {
            toml::to_string(self)
        } else {
            toml::to_string(&RenderedPools {
                daemon: &self.daemon,
                interchange: &self.interchange,
                memo: &self.memo,
                metrics: &self.metrics,
                servables: &self.servables,
                pool: &self.pools,
            })
        };
        rendered.unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// The wall time batch schedulers are asked for.
    pub fn scheduler_walltime(&self) -> String {
        self.provider
            .walltime
            .clone()
            .unwrap_or_else(|| provider::DEFAULT_SCHEDULER_WALLTIME.into())
    }

    /// The wall time each block lives, when something enforces one: the
    /// batch scheduler, or the local provider when `walltime` is set.
    pub fn block_walltime_s(&self) -> Option<u64> {
        self.provider
            .kind
            .rules()
            .block_walltime_s(self.provider.walltime.as_deref())
    }

    /// `interchange.heartbeat_period_s` as a duration.
    pub fn heartbeat_period(&self) -> Duration {
        duration(self.interchange.heartbeat_period_s)
    }

    /// `interchange.heartbeat_threshold_s` as a duration.
    pub fn heartbeat_threshold(&self) -> Duration {
        duration(self.interchange.heartbeat_threshold_s)
    }
}

/// A setting in seconds as a duration, without panicking whatever the
/// number: a checked file's are in range, but settings can be built in
/// code too. Negative and NaN become zero, too large the longest duration.
pub fn duration(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::servable::BatchDelay;

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
    fn durations_never_panic() {
        assert_eq!(duration(1.5), Duration::from_millis(1500));
        assert_eq!(duration(1e300), Duration::MAX);
        assert_eq!(duration(f64::INFINITY), Duration::MAX);
        assert_eq!(duration(f64::NAN), Duration::ZERO);
        assert_eq!(duration(-3.0), Duration::ZERO);
    }

    /// Every number a site file gives has a range, checked with the file
    /// so that nothing overflows or exhausts resources later.
    #[test]
    fn numbers_out_of_range_are_refused_naming_the_key() {
        let cases = [
            (
                "[provider]\ncommand_timeout_s = 1e300\n",
                "s.toml:2: `provider.command_timeout_s`: must be at most 1e9 seconds (about 31 years), got 1e300",
            ),
            (
                "[launcher]\nworkers_per_node = 1000000\n",
                "s.toml:2: `launcher.workers_per_node`: must be at most 1024, got 1000000",
            ),
            (
                "[provider]\nkind = \"slurm\"\nwalltime = \"99999999999999999:00:00\"\n",
                "s.toml:3: `provider.walltime`: `99999999999999999:00:00` is not a wall time",
            ),
            (
                "[provider]\nkind = \"slurm\"\nwalltime = \"9999:00:00\"\n",
                "s.toml:3: `provider.walltime`: `9999:00:00` is 35996400 s; a block may ask for at most",
            ),
            (
                "[provider]\nmax_blocks = 4000000000\n",
                "s.toml:2: `provider.max_blocks`: must be at most 10000",
            ),
            (
                "[worker]\nslots = 100000\n",
                "s.toml:2: `worker.slots`: must be at most 4096",
            ),
            (
                "[daemon]\nmax_frame_bytes = 100000000000\n",
                "s.toml:2: `daemon.max_frame_bytes`: must be at most",
            ),
            (
                "[servables.x]\nmax_attempts = 1000000\n",
                "s.toml:2: `servables.x.max_attempts`: must be between 1 and 100",
            ),
            (
                "[memo]\nmax_bytes = 18446744073709551615\n",
                "s.toml:2: `memo.max_bytes`: must be at most",
            ),
            (
                "[channel]\nport = 0\n",
                "s.toml:2: `channel.port`: must be at least 1",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
    }

    #[test]
    fn scheduler_values_have_the_shape_of_their_field() {
        let cases = [
            (
                "[provider]\nkind = \"slurm\"\naccount = \"m1 --x\"\n",
                "s.toml:3: `provider.account`: `m1 --x` holds ' '",
            ),
            (
                "[provider]\nkind = \"pbspro\"\nqueue = \"q;touch X\"\n",
                "s.toml:3: `provider.queue`",
            ),
            (
                "[provider]\nkind = \"slurm\"\nscheduler_options = \"\"\"\n#SBATCH -x\ntouch X\n\"\"\"\n",
                "s.toml:3: `provider.scheduler_options`: line 2 `touch X` is not a directive",
            ),
            (
                "[provider]\nkind = \"slurm\"\nrun_dir = \"/scratch/my runs\"\n",
                "s.toml:3: `provider.run_dir`",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
    }

    /// A key set in an inline table, a multi-line one or under a dotted
    /// key is named with its line, never as "not set".
    #[test]
    fn keys_set_in_inline_tables_are_named_with_their_line() {
        let cases = [
            (
                "provider = {\n  min_blocks = 3,\n  max_blocks = 2,\n}\n",
                "s.toml:2: `provider.min_blocks`",
            ),
            (
                "channel = { kind = \"ssh\", host = \" \" }\n",
                "s.toml:1: `channel.host`: kind",
            ),
            (
                "servables.x = { latency_target_ms = 0 }\n",
                "s.toml:1: `servables.x.latency_target_ms`",
            ),
            (
                "[provider]\nkind = \"kubernetes\"\nkubernetes = { image = \" \" }\n",
                "s.toml:3: `provider.kubernetes.image`",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}: {err}");
            assert!(!err.contains("not set"), "{text}: {err}");
        }
    }

    #[test]
    fn a_huge_unterminated_line_gives_a_short_error() {
        let text = format!("[provider]\npool = \"{}", "x".repeat(10 << 20));
        let err = Config::parse(&text, "s.toml").unwrap_err().to_string();
        assert!(err.len() < 2000, "{} bytes", err.len());
        assert!(
            err.starts_with("s.toml: TOML parse error at line 2"),
            "{err}"
        );
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
    fn queue_limits_are_read_and_checked() {
        let text = "[provider]\nkind = \"pbspro\"\nmax_blocks = 2\nqueue_job_limit = 1\nmax_queued_blocks = 1\nsubmit_retry_max_s = 60\n";
        let p = Config::parse(text, "s.toml").unwrap().provider;
        assert_eq!(p.queue_job_limit, Some(1));
        assert_eq!(p.max_queued_blocks, Some(1));
        assert_eq!(p.submit_retry_max_s, 60.0);
        let d = Config::default().provider;
        assert_eq!((d.queue_job_limit, d.max_queued_blocks), (None, None));
        let cases = [
            (
                "[provider]\nqueue_job_limit = 0\n",
                "s.toml:2: `provider.queue_job_limit`: must be at least 1, got 0",
            ),
            (
                "[provider]\nmax_queued_blocks = 0\n",
                "s.toml:2: `provider.max_queued_blocks`: must be at least 1, got 0",
            ),
            (
                "[provider]\nmin_blocks = 2\nmax_blocks = 2\nqueue_job_limit = 1\n",
                "s.toml:4: `provider.queue_job_limit`: is 1 but min_blocks is 2",
            ),
            (
                "[provider]\nsubmit_retry_max_s = 0\n",
                "s.toml:2: `provider.submit_retry_max_s`",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
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

    /// Each raw section names its keys as strings when it takes them; they
    /// must be the keys the file uses, or errors would name the wrong line.
    #[test]
    fn every_key_is_taken_under_its_own_name() {
        let optional = "[daemon]\nstate_dir = \"/var/fl\"\n[provider]\nkind = \"slurm\"\nwalltime = \"02:00:00\"\npartition = \"p\"\naccount = \"a\"\nqos = \"q\"\nconstraint = \"c\"\nrun_dir = \"/scratch\"\n[provider.kubernetes]\nservice_account = \"sa\"\ncpu_request = \"1\"\ncpu_limit = \"2\"\nmemory_request = \"1Gi\"\nmemory_limit = \"2Gi\"\n[channel]\nkind = \"ssh\"\nhost = \"login\"\nuser = \"me\"\nkey_file = \"/k\"\nknown_hosts = \"/kh\"\n[container]\ncommand = \"podman-hpc\"\n[worker]\ncommand = \"fw\"\n[servables.x]\nmemoize = true\nmax_batch_size = 8\nmax_batch_delay_ms = 2\nlatency_target_ms = 9\nmax_attempts = 2\n";
        let mut keys = 0;
        for text in [DEFAULT_CONFIG_TOML, optional] {
            let raw: RawConfig = toml::from_str(text).unwrap();
            let mut site = Site::new("s.toml", text);
            raw.check(&mut site).unwrap();
            for (key, line) in site.located() {
                assert_eq!(crate::toml_locate::locate(text, key), Some(line), "{key}");
                keys += 1;
            }
        }
        assert!(keys >= 85, "only {keys} keys located");
    }

    /// A section of the wrong type is named by its settings' type, as
    /// before the sections were read raw.
    #[test]
    fn a_section_of_the_wrong_type_names_its_settings() {
        let cases = [
            ("daemon = 3\n", "expected struct DaemonConfig"),
            (
                "[provider]\nkubernetes = \"x\"\n",
                "expected struct KubernetesConfig",
            ),
            ("[servables]\nx = 3\n", "expected struct ServableOverride"),
            ("worker = 1\n", "expected struct WorkerConfig"),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn a_list_entry_is_named_on_its_list_line() {
        let err = Config::parse(
            "[container]\nruntime = \"podman\"\nbinds = [\"/ok\", \"data:/data\"]\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("s.toml:3: `container.binds[1]`"), "{err}");
    }
}
