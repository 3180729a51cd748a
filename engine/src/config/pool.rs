//! `[[pool]]`: several pools in one daemon, each with its own provider,
//! channel, launcher, container and workers.
//!
//! A pool is the set of blocks one scaling strategy keeps on one provider.
//! A file without `[[pool]]` tables has exactly one, named by
//! `[provider] pool` (`default`), made of its top-level `[provider]`,
//! `[channel]`, `[launcher]`, `[container]` and `[worker]`. A file with
//! them describes each pool in its own table:
//!
//! ```toml
//! [[pool]]
//! name = "gpu"
//! labels = { site = "polaris", partition = "gpu" }
//! cost = 4.0
//! [pool.provider]
//! kind = "pbspro"
//! [pool.worker]
//! accelerators = ["0", "1", "2", "3"]
//! ```
//!
//! Each pool's sections are checked by the same code as the top-level
//! ones, their keys named under the pool (`pool[gpu].provider.max_blocks`),
//! and the top-level pool sections are refused beside `[[pool]]` tables so
//! that no setting is silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::site::Site;
use super::{
    ChannelConfig, Config, ConfigError, ContainerConfig, LauncherConfig, ProviderConfig,
    WorkerConfig, channel, container, launcher, provider, worker,
};

/// Longest pool name, label name or label value, in bytes.
const MAX_NAME: usize = 64;

/// Most labels one pool may carry.
const MAX_LABELS: usize = 32;

/// Largest `cost` a pool may give.
const MAX_COST: f64 = 1.0e9;

/// One pool: its name, what placement matches it by, and its sections.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The pool's name (`flotilla pool resume NAME`, servables' `pools`).
    pub name: String,
    /// What servables' `[resources] labels` are matched against
    /// (`{ site = "polaris", partition = "gpu" }`).
    pub labels: BTreeMap<String, String>,
    /// Preference among pools that could serve the same queue: the lower
    /// the cost, the more preferred (after warm workers and capacity).
    pub cost: f64,
    /// Where its blocks come from and how many.
    pub provider: ProviderConfig,
    /// Where its provider's commands run.
    pub channel: ChannelConfig,
    /// How its blocks start their workers.
    pub launcher: LauncherConfig,
    /// The image its workers (or servables) run in.
    pub container: ContainerConfig,
    /// What each of its workers looks like.
    pub worker: WorkerConfig,
}

/// One `[[pool]]` table as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct PoolConfig")]
pub(crate) struct RawPool {
    name: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    cost: Option<Spanned<f64>>,
    provider: Option<provider::RawProvider>,
    channel: Option<channel::RawChannel>,
    launcher: Option<launcher::RawLauncher>,
    container: Option<container::RawContainer>,
    worker: Option<worker::RawWorker>,
}

/// Whether `name` may name a pool, a label or a label's value: letters, digits, `-`, `_`
/// and `.`, as it appears in commands, keys and status tables.
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl RawPool {
    /// The pool in force, checked against the pools before it; `index`
    /// names it while its name is not known. `top` holds the file's
    /// sections outside the pools (daemon, interchange, ...) for the
    /// checks across sections.
    pub(crate) fn check(
        mut self,
        index: usize,
        earlier: &[PoolConfig],
        top: &Config,
        site: &mut Site,
    ) -> Result<PoolConfig, ConfigError> {
        let name_key = format!("pool[{index}].name");
        let Some(name) = site.take(&name_key, self.name.take()) else {
            return Err(site.invalid(&name_key, "every [[pool]] needs a name"));
        };
        if !is_name(&name) {
            return Err(site.invalid(
                &name_key,
                format!(
                    "`{name}` is not a pool name: use 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`"
                ),
            ));
        }
        if earlier.iter().any(|p| p.name == name) {
            return Err(site.invalid(
                &name_key,
                format!("a pool named `{name}` is already described above; pool names must differ"),
            ));
        }
        site.set_scope(Some(format!("pool[{name}]")));
        let checked = self.check_named(name, top, site);
        site.set_scope(None);
        checked
    }

    fn check_named(
        self,
        name: String,
        top: &Config,
        site: &mut Site,
    ) -> Result<PoolConfig, ConfigError> {
        let labels = site.take("labels", self.labels).unwrap_or_default();
        check_labels(&labels, site)?;
        let cost = site.take("cost", self.cost).unwrap_or(0.0);
        if !(cost.is_finite() && (0.0..=MAX_COST).contains(&cost)) {
            return Err(site.invalid(
                "cost",
                format!("must be a number from 0 to {MAX_COST:e}, got {cost}"),
            ));
        }
        let raw_provider = self.provider.unwrap_or_default();
        let mut pool = PoolConfig {
            provider: raw_provider.check(site)?,
            channel: self.channel.unwrap_or_default().check(site)?,
            launcher: self.launcher.unwrap_or_default().check(site)?,
            container: self.container.unwrap_or_default().check(site)?,
            worker: self.worker.unwrap_or_default().check(site)?,
            name,
            labels,
            cost,
        };
        if site.line("provider.pool").is_some() && pool.provider.pool != pool.name {
            return Err(site.invalid(
                "provider.pool",
                format!(
                    "is `{}` inside the pool named `{}`; leave it out: a [[pool]]'s `name` names it",
                    pool.provider.pool, pool.name
                ),
            ));
        }
        pool.provider.pool = pool.name.clone();
        let view = top.with_pool(&pool);
        view.provider.kind.rules().check(&view, site)?;
        view.launcher.check_fits(&view.provider, site)?;
        Ok(pool)
    }
}

/// Label names and values are names (they are matched exactly and shown in
/// status), and there are not too many.
fn check_labels(labels: &BTreeMap<String, String>, site: &Site) -> Result<(), ConfigError> {
    if labels.len() > MAX_LABELS {
        return Err(site.invalid(
            "labels",
            format!("holds {} labels; at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        if !is_name(k) || !is_name(v) {
            return Err(site.invalid(
                "labels",
                format!(
                    "`{k} = \"{v}\"`: label names and values are 1 to {MAX_NAME} letters, digits, `-`, `_` or `.`"
                ),
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Every pool of this daemon: the `[[pool]]` tables, or the one pool
    /// the top-level sections describe.
    pub fn pool_configs(&self) -> Vec<PoolConfig> {
        if !self.pools.is_empty() {
            return self.pools.clone();
        }
        vec![PoolConfig {
            name: self.provider.pool.clone(),
            labels: BTreeMap::new(),
            cost: 0.0,
            provider: self.provider.clone(),
            channel: self.channel.clone(),
            launcher: self.launcher.clone(),
            container: self.container.clone(),
            worker: self.worker.clone(),
        }]
    }

    /// This file's settings as a single-pool file of `pool` would have
    /// them: what builds one pool's provider, block jobs and previews.
    pub fn with_pool(&self, pool: &PoolConfig) -> Config {
        Config {
            daemon: self.daemon.clone(),
            interchange: self.interchange.clone(),
            memo: self.memo.clone(),
            metrics: self.metrics.clone(),
            servables: self.servables.clone(),
            provider: pool.provider.clone(),
            channel: pool.channel.clone(),
            launcher: pool.launcher.clone(),
            container: pool.container.clone(),
            worker: pool.worker.clone(),
            pools: Vec::new(),
        }
    }

    /// The settings of the pool named `name`, as a single-pool file; the
    /// names there are, when there is none of that name.
    pub fn for_pool(&self, name: &str) -> Result<Config, Vec<String>> {
        let pools = self.pool_configs();
        match pools.iter().find(|p| p.name == name) {
            Some(p) => Ok(self.with_pool(p)),
            None => Err(pools.into_iter().map(|p| p.name).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ProviderKind};

    const TWO: &str = r#"
[daemon]
shutdown_grace_s = 3

[[pool]]
name = "cpu"
labels = { site = "polaris", partition = "cpu" }
cost = 1
[pool.provider]
kind = "local"
max_blocks = 2

[[pool]]
name = "gpu"
labels = { site = "polaris", partition = "gpu" }
cost = 4.5
[pool.provider]
kind = "slurm"
partition = "gpu"
min_blocks = 0
init_blocks = 0
[pool.worker]
accelerators = ["0", "1"]
accelerator_kind = "nvidia"
init = """
module load cuda
"""
"#;

    #[test]
    fn pools_are_read_each_with_its_own_sections() {
        let c = Config::parse(TWO, "s.toml").unwrap();
        let pools = c.pool_configs();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].name, "cpu");
        assert_eq!(pools[0].provider.kind, ProviderKind::Local);
        assert_eq!(pools[0].provider.max_blocks, 2);
        assert_eq!(pools[0].provider.pool, "cpu");
        assert_eq!(pools[1].provider.kind, ProviderKind::Slurm);
        assert_eq!(pools[1].labels["partition"], "gpu");
        assert_eq!(pools[1].cost, 4.5);
        assert_eq!(pools[1].worker.accelerators, ["0", "1"]);
        assert_eq!(c.daemon.shutdown_grace_s, 3.0);
        let gpu = c.for_pool("gpu").unwrap();
        assert_eq!(gpu.provider.partition.as_deref(), Some("gpu"));
        assert_eq!(c.for_pool("tpu").unwrap_err(), ["cpu", "gpu"]);
        // Rendered back, the same settings.
        assert_eq!(Config::parse(&c.to_toml(), "x").unwrap(), c);
    }

    #[test]
    fn a_file_without_pools_is_one_pool_named_by_its_provider() {
        let c = Config::parse("[provider]\npool = \"mine\"\nmax_blocks = 3\n", "s.toml").unwrap();
        let pools = c.pool_configs();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].name, "mine");
        assert_eq!(pools[0].provider.max_blocks, 3);
        assert!(pools[0].labels.is_empty());
        assert_eq!(c.for_pool("mine").unwrap(), c);
    }

    #[test]
    fn pool_errors_name_file_line_and_the_pool_key() {
        let cases = [
            (
                "[[pool]]\nname = \"a\"\n[[pool]]\nname = \"a\"\n",
                "s.toml:4: `pool[1].name`: a pool named `a` is already described above",
            ),
            (
                "[[pool]]\nlabels = { a = \"b\" }\n",
                "s.toml: `pool[0].name` (not set: its default): every [[pool]] needs a name",
            ),
            (
                "[[pool]]\nname = \"a b\"\n",
                "s.toml:2: `pool[0].name`: `a b` is not a pool name",
            ),
            (
                "[[pool]]\nname = \"gpu\"\n[pool.provider]\nmin_blocks = 3\nmax_blocks = 2\n",
                "s.toml:4: `pool[gpu].provider.min_blocks`",
            ),
            (
                "[[pool]]\nname = \"gpu\"\ncost = -1\n",
                "s.toml:3: `pool[gpu].cost`: must be a number from 0",
            ),
            (
                "[[pool]]\nname = \"gpu\"\nlabels = { site = \"a b\" }\n",
                "s.toml:3: `pool[gpu].labels`",
            ),
            (
                "[[pool]]\nname = \"gpu\"\n[pool.provider]\npool = \"other\"\n",
                "s.toml:4: `pool[gpu].provider.pool`: is `other` inside the pool named `gpu`",
            ),
            (
                "[[pool]]\nname = \"gpu\"\n[pool.provider]\nkind = \"slurm\"\n[pool.channel]\nkind = \"ssh\"\n",
                "s.toml: `pool[gpu].channel.host` (not set: its default)",
            ),
            (
                "[[pool]]\nname = \"gpu\"\n[pool.provider]\nkind = \"slurm\"\n[pool.launcher]\nkind = \"aprun\"\n",
                "s.toml:6: `pool[gpu].launcher.kind`: kind = \"aprun\" starts workers inside an ALPS",
            ),
            (
                "[provider]\nmax_blocks = 2\n[[pool]]\nname = \"gpu\"\n",
                "s.toml:1: `provider`: a file with [[pool]] tables describes each pool's provider in its own [pool.provider]",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
        let err = Config::parse("[[pool]]\nname = \"a\"\nsize = 3\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("size"), "{err}");
        let err = Config::parse(
            "[[pool]]\nname = \"a\"\n[pool.provider]\nmax_blokcs = 3\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 4") && err.contains("max_blokcs"),
            "{err}"
        );
    }

    #[test]
    fn multi_line_keys_keep_their_newlines_inside_a_pool() {
        let c = Config::parse(TWO, "s.toml").unwrap();
        assert!(c.pools[1].worker.init.contains("module load cuda\n"));
        let err = Config::parse(
            "[[pool]]\nname = \"a\"\n[pool.provider]\nkind = \"slurm\"\npartition = \"x\\ny\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("s.toml:5: `pool[0].provider.partition`"),
            "{err}"
        );
    }
}
