//! `[provider]`: where blocks come from, how many, and how the pool of them
//! scales.
//!
//! The keys every provider reads are checked here. What only some kinds
//! read or demand lives in each kind's module under `provider/`, behind
//! [`ProviderRules`]; [`ProviderKind::rules`] is the one place that ties a
//! kind to its rules.

mod cobalt;
mod kubernetes;
mod local;
mod pbspro;
mod slurm;

use flotilla_providers::site_values;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use kubernetes::KubernetesConfig;
pub(crate) use kubernetes::RawKubernetes;

use super::site::{Seconds, Section, Site};
use super::{Config, ConfigError};

/// Most blocks a pool may start with, keep or hold.
const MAX_BLOCKS: u32 = 10_000;

/// Most consecutive failed blocks before starts are paused.
const MAX_BLOCK_FAILURES: u32 = 1_000;

/// Most nodes (or pods) one block may ask for.
const MAX_NODES_PER_BLOCK: u32 = 100_000;

/// Most GPUs per node a block may ask for.
pub(crate) const MAX_GPUS_PER_NODE: u32 = 64;

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
    /// Kubernetes Deployments (`kubectl`), one per block.
    Kubernetes,
}

impl ProviderKind {
    /// The name used in site files.
    pub fn as_str(self) -> &'static str {
        self.rules().name()
    }

    /// What this kind reads from the site file and demands of it.
    pub(crate) fn rules(self) -> &'static dyn ProviderRules {
        match self {
            ProviderKind::Local => &local::Local,
            ProviderKind::Slurm => &slurm::Slurm,
            ProviderKind::Pbspro => &pbspro::PBSPRO,
            ProviderKind::Cobalt => &cobalt::COBALT,
            ProviderKind::Kubernetes => &kubernetes::Kubernetes,
        }
    }
}

/// `[provider]` keys that only some batch schedulers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchedulerKey {
    /// Slurm's partition.
    Partition,
    /// PBS's or Cobalt's queue.
    Queue,
    /// Slurm's quality of service.
    Qos,
    /// Slurm's node constraint.
    Constraint,
    /// The account or project charged.
    Account,
    /// PBS's resources for each select chunk.
    SelectResources,
    /// PBS's placement.
    Place,
}

impl SchedulerKey {
    /// Every key, in the order they are checked.
    const ALL: [SchedulerKey; 7] = [
        SchedulerKey::Partition,
        SchedulerKey::Queue,
        SchedulerKey::Qos,
        SchedulerKey::Constraint,
        SchedulerKey::Account,
        SchedulerKey::SelectResources,
        SchedulerKey::Place,
    ];

    /// The key's name in `[provider]`.
    fn name(self) -> &'static str {
        match self {
            SchedulerKey::Partition => "partition",
            SchedulerKey::Queue => "queue",
            SchedulerKey::Qos => "qos",
            SchedulerKey::Constraint => "constraint",
            SchedulerKey::Account => "account",
            SchedulerKey::SelectResources => "select_resources",
            SchedulerKey::Place => "place",
        }
    }

    /// Whether `provider` sets it.
    fn is_set(self, provider: &ProviderConfig) -> bool {
        match self {
            SchedulerKey::Partition => provider.partition.is_some(),
            SchedulerKey::Queue => provider.queue.is_some(),
            SchedulerKey::Qos => provider.qos.is_some(),
            SchedulerKey::Constraint => provider.constraint.is_some(),
            SchedulerKey::Account => provider.account.is_some(),
            SchedulerKey::SelectResources => provider.select_resources.is_some(),
            SchedulerKey::Place => provider.place.is_some(),
        }
    }
}

/// What one provider kind reads from the site file and demands of it.
pub(crate) trait ProviderRules: Sync {
    /// The name site files use (`kind = "slurm"`).
    fn name(&self) -> &'static str;

    /// Whether this kind reads `key`; setting a key it does not read is an
    /// error.
    fn reads(&self, key: SchedulerKey) -> bool {
        let _ = key;
        false
    }

    /// A hint for `key` set with this kind though it does not read it,
    /// such as the name this scheduler has for the same thing.
    fn hint(&self, key: SchedulerKey) -> Option<&'static str> {
        let _ = key;
        None
    }

    /// The wall time each block lives, in seconds, when something enforces
    /// one, given `[provider] walltime` as written.
    fn block_walltime_s(&self, walltime: Option<&str>) -> Option<u64>;

    /// Whether each node of a block runs a launcher of its own, so the
    /// launcher need not span the block's nodes.
    fn launcher_per_node(&self) -> bool {
        false
    }

    /// Checks of this kind's own, once every section is typed.
    fn check(&self, config: &Config, site: &Site) -> Result<(), ConfigError> {
        let _ = (config, site);
        Ok(())
    }
}

/// The wall time batch schedulers get when `[provider] walltime` is unset.
pub(crate) const DEFAULT_SCHEDULER_WALLTIME: &str = "01:00:00";

/// A batch scheduler's blocks live the wall time they asked for.
fn scheduler_walltime_s(walltime: Option<&str>) -> Option<u64> {
    flotilla_providers::walltime_seconds(walltime.unwrap_or(DEFAULT_SCHEDULER_WALLTIME))
}

/// The rules of schedulers with queues (PBS Pro, Cobalt): they read
/// `queue` and `account`, and a `partition` is pointed at `queue`; PBS also
/// reads `select_resources` and `place`.
struct QueueScheduler {
    /// The name site files use.
    name: &'static str,
    /// Whether it takes PBS's select and placement.
    pbs: bool,
}

impl ProviderRules for QueueScheduler {
    fn name(&self) -> &'static str {
        self.name
    }

    fn reads(&self, key: SchedulerKey) -> bool {
        matches!(key, SchedulerKey::Queue | SchedulerKey::Account)
            || self.pbs && matches!(key, SchedulerKey::SelectResources | SchedulerKey::Place)
    }

    fn hint(&self, key: SchedulerKey) -> Option<&'static str> {
        (key == SchedulerKey::Partition).then_some("PBS and Cobalt call it `queue`")
    }

    fn block_walltime_s(&self, walltime: Option<&str>) -> Option<u64> {
        scheduler_walltime_s(walltime)
    }
}

/// `[provider]`.
#[derive(Serialize, Debug, Clone, PartialEq)]
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
    /// The pool's name (`flotilla pool resume NAME`): the pool is the set
    /// of blocks this scaling strategy keeps.
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
    /// Most blocks submitted but not yet running; unset: no limit beyond
    /// `max_blocks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_blocks: Option<u32>,
    /// Most jobs of this pool the scheduler's queue holds at once, pending,
    /// running, near their wall time or being cancelled: the queue's
    /// per-user job limit (1 for a one-job debug queue), so that no
    /// submission is refused for it and no replacement is submitted before
    /// the block it replaces has ended. Unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_job_limit: Option<u32>,
    /// After a refused submission the pool tries again after
    /// `strategy_period_s`, doubling the wait after each refusal in a row
    /// up to this.
    pub submit_retry_max_s: f64,
    /// Nodes per block (batch schedulers); pods per block (Kubernetes).
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
    /// PBS resources added to each select chunk (`system=polaris`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select_resources: Option<String>,
    /// PBS placement (`scatter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<String>,
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
            max_queued_blocks: None,
            queue_job_limit: None,
            submit_retry_max_s: 300.0,
            nodes_per_block: 1,
            walltime: None,
            partition: None,
            queue: None,
            account: None,
            qos: None,
            constraint: None,
            select_resources: None,
            place: None,
            exclusive: false,
            gpus_per_node: 0,
            scheduler_options: String::new(),
            run_dir: None,
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// `[provider]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct ProviderConfig")]
pub(crate) struct RawProvider {
    kind: Option<Spanned<ProviderKind>>,
    init_blocks: Option<Spanned<u32>>,
    min_blocks: Option<Spanned<u32>>,
    max_blocks: Option<Spanned<u32>>,
    poll_interval_s: Option<Spanned<f64>>,
    max_block_failures: Option<Spanned<u32>>,
    pool: Option<Spanned<String>>,
    strategy_period_s: Option<Spanned<f64>>,
    parallelism: Option<Spanned<f64>>,
    max_idle_s: Option<Spanned<f64>>,
    min_block_lifetime_s: Option<Spanned<f64>>,
    cooldown_s: Option<Spanned<f64>>,
    block_connect_timeout_s: Option<Spanned<f64>>,
    walltime_margin_s: Option<Spanned<f64>>,
    replace_ahead_s: Option<Spanned<f64>>,
    command_timeout_s: Option<Spanned<f64>>,
    max_queued_blocks: Option<Spanned<u32>>,
    queue_job_limit: Option<Spanned<u32>>,
    submit_retry_max_s: Option<Spanned<f64>>,
    nodes_per_block: Option<Spanned<u32>>,
    walltime: Option<Spanned<String>>,
    partition: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
    account: Option<Spanned<String>>,
    qos: Option<Spanned<String>>,
    constraint: Option<Spanned<String>>,
    select_resources: Option<Spanned<String>>,
    place: Option<Spanned<String>>,
    exclusive: Option<Spanned<bool>>,
    gpus_per_node: Option<Spanned<u32>>,
    scheduler_options: Option<Spanned<String>>,
    run_dir: Option<Spanned<String>>,
    kubernetes: Option<RawKubernetes>,
}

impl RawProvider {
    /// The settings in force, or what is wrong with them. The checks of
    /// the kind's own ([`ProviderRules::check`]) run once every section is
    /// typed.
    pub(crate) fn check(self, site: &mut Site) -> Result<ProviderConfig, ConfigError> {
        let d = ProviderConfig::default();
        let mut s = site.section("provider");
        let kind = s.or("kind", self.kind, d.kind);
        let settings = ProviderConfig {
            kind,
            init_blocks: s.count(
                "init_blocks",
                self.init_blocks,
                d.init_blocks,
                0,
                MAX_BLOCKS,
            )?,
            min_blocks: s.count("min_blocks", self.min_blocks, d.min_blocks, 0, MAX_BLOCKS)?,
            max_blocks: s.count("max_blocks", self.max_blocks, d.max_blocks, 0, MAX_BLOCKS)?,
            poll_interval_s: s.seconds(
                "poll_interval_s",
                self.poll_interval_s,
                d.poll_interval_s,
                Seconds::Positive,
            )?,
            max_block_failures: s.at_least_one(
                "max_block_failures",
                self.max_block_failures,
                d.max_block_failures,
                MAX_BLOCK_FAILURES,
            )?,
            pool: s.or("pool", self.pool, d.pool),
            strategy_period_s: s.seconds(
                "strategy_period_s",
                self.strategy_period_s,
                d.strategy_period_s,
                Seconds::Positive,
            )?,
            parallelism: s.or("parallelism", self.parallelism, d.parallelism),
            max_idle_s: s.seconds(
                "max_idle_s",
                self.max_idle_s,
                d.max_idle_s,
                Seconds::NonNegative,
            )?,
            min_block_lifetime_s: s.seconds(
                "min_block_lifetime_s",
                self.min_block_lifetime_s,
                d.min_block_lifetime_s,
                Seconds::NonNegative,
            )?,
            cooldown_s: s.seconds(
                "cooldown_s",
                self.cooldown_s,
                d.cooldown_s,
                Seconds::NonNegative,
            )?,
            block_connect_timeout_s: s.seconds(
                "block_connect_timeout_s",
                self.block_connect_timeout_s,
                d.block_connect_timeout_s,
                Seconds::Positive,
            )?,
            walltime_margin_s: s.seconds(
                "walltime_margin_s",
                self.walltime_margin_s,
                d.walltime_margin_s,
                Seconds::NonNegative,
            )?,
            replace_ahead_s: s.seconds(
                "replace_ahead_s",
                self.replace_ahead_s,
                d.replace_ahead_s,
                Seconds::NonNegative,
            )?,
            command_timeout_s: s.seconds(
                "command_timeout_s",
                self.command_timeout_s,
                d.command_timeout_s,
                Seconds::Positive,
            )?,
            max_queued_blocks: optional_count(&mut s, "max_queued_blocks", self.max_queued_blocks)?,
            queue_job_limit: optional_count(&mut s, "queue_job_limit", self.queue_job_limit)?,
            submit_retry_max_s: s.seconds(
                "submit_retry_max_s",
                self.submit_retry_max_s,
                d.submit_retry_max_s,
                Seconds::Positive,
            )?,
            nodes_per_block: s.at_least_one(
                "nodes_per_block",
                self.nodes_per_block,
                d.nodes_per_block,
                MAX_NODES_PER_BLOCK,
            )?,
            walltime: s.opt("walltime", self.walltime),
            partition: s.opt("partition", self.partition),
            queue: s.opt("queue", self.queue),
            account: s.opt("account", self.account),
            qos: s.opt("qos", self.qos),
            constraint: s.opt("constraint", self.constraint),
            select_resources: s.opt("select_resources", self.select_resources),
            place: s.opt("place", self.place),
            exclusive: s.or("exclusive", self.exclusive, d.exclusive),
            gpus_per_node: s.count(
                "gpus_per_node",
                self.gpus_per_node,
                d.gpus_per_node,
                0,
                MAX_GPUS_PER_NODE,
            )?,
            scheduler_options: s.or(
                "scheduler_options",
                self.scheduler_options,
                d.scheduler_options,
            ),
            run_dir: s.opt("run_dir", self.run_dir),
            kubernetes: self
                .kubernetes
                .unwrap_or_default()
                .check(&mut s.table("kubernetes"))?,
        };
        settings.check_scaling(&s)?;
        settings.check_walltime(&s)?;
        settings.check_scheduler_keys(&s)?;
        settings.check_scheduler_values(&s)?;
        Ok(settings)
    }
}

/// A block count that is unset (no limit) or at least one.
fn optional_count(
    s: &mut Section<'_, '_>,
    name: &str,
    raw: Option<Spanned<u32>>,
) -> Result<Option<u32>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(raw) => s.at_least_one(name, Some(raw), 1, MAX_BLOCKS).map(Some),
    }
}

impl ProviderConfig {
    /// Block counts and the share of a slot asked per task.
    fn check_scaling(&self, s: &Section) -> Result<(), ConfigError> {
        if self.min_blocks > self.max_blocks {
            return Err(s.invalid(
                "min_blocks",
                format!(
                    "is {} but max_blocks is {}; min_blocks must not exceed max_blocks",
                    self.min_blocks, self.max_blocks
                ),
            ));
        }
        if self.init_blocks > self.max_blocks {
            return Err(s.invalid(
                "init_blocks",
                format!(
                    "is {} but max_blocks is {}; init_blocks must not exceed max_blocks",
                    self.init_blocks, self.max_blocks
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.parallelism) {
            return Err(s.invalid(
                "parallelism",
                format!(
                    "is {}; it is the share of a worker slot asked per outstanding task, between 0 and 1",
                    self.parallelism
                ),
            ));
        }
        if let Some(limit) = self.queue_job_limit
            && limit < self.min_blocks
        {
            return Err(s.invalid(
                "queue_job_limit",
                format!(
                    "is {limit} but min_blocks is {}; the queue could never hold min_blocks blocks",
                    self.min_blocks
                ),
            ));
        }
        if self.pool.trim().is_empty() {
            return Err(s.invalid("pool", "must name the pool"));
        }
        Ok(())
    }

    /// `walltime` is a wall time a block may ask for, and workers get more
    /// than half of it.
    fn check_walltime(&self, s: &Section) -> Result<(), ConfigError> {
        if let Some(w) = &self.walltime
            && let Err(e) = site_values::check_walltime(w)
        {
            return Err(s.invalid("walltime", e.reason));
        }
        if let Some(wall) = self.kind.rules().block_walltime_s(self.walltime.as_deref())
            && self.walltime_margin_s * 2.0 >= wall as f64
        {
            return Err(s.invalid(
                "walltime_margin_s",
                format!(
                    "is {} s but a block's wall time is {wall} s; workers would leave before doing half of it",
                    self.walltime_margin_s
                ),
            ));
        }
        Ok(())
    }

    /// Every value that reaches a job script or a scheduler command has
    /// the shape of its field (see [`flotilla_providers::site_values`]):
    /// directives cannot be quoted, so the shape is what keeps a value
    /// inside its line.
    fn check_scheduler_values(&self, s: &Section) -> Result<(), ConfigError> {
        let fields: [(&Option<String>, site_values::Check); 7] = [
            (&self.partition, site_values::check_partition),
            (&self.queue, site_values::check_queue),
            (&self.account, site_values::check_account),
            (&self.qos, site_values::check_qos),
            (&self.constraint, site_values::check_constraint),
            (&self.select_resources, site_values::check_select_resources),
            (&self.place, site_values::check_place),
        ];
        for (value, check) in fields {
            if let Some(Err(e)) = value.as_deref().map(check) {
                return Err(s.invalid(e.field, e.reason));
            }
        }
        let directive_lines = matches!(self.kind, ProviderKind::Slurm | ProviderKind::Pbspro);
        if directive_lines
            && let Err(e) = site_values::check_directive_lines(&self.scheduler_options)
        {
            return Err(s.invalid(e.field, e.reason));
        }
        if self.kind != ProviderKind::Local
            && let Some(dir) = &self.run_dir
            && let Err(e) = site_values::check_path("run_dir", dir)
        {
            return Err(s.invalid(e.field, e.reason));
        }
        Ok(())
    }

    /// No scheduler key is set that this kind does not read.
    fn check_scheduler_keys(&self, s: &Section) -> Result<(), ConfigError> {
        let rules = self.kind.rules();
        for key in SchedulerKey::ALL {
            if key.is_set(self) && !rules.reads(key) {
                let hint = rules
                    .hint(key)
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default();
                return Err(s.invalid(
                    key.name(),
                    format!("does not apply to kind = \"{}\"{hint}", rules.name()),
                ));
            }
        }
        Ok(())
    }
}
