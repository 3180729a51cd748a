//! `[launcher]`: how a block starts its workers.

use flotilla_launchers::{Aprun, Launcher, MpiFlavor, Mpiexec, Simple, SingleNode, Srun, Wrapped};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::provider::{ProviderConfig, ProviderKind};
use super::site::{Section, Site};

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

    /// What this kind needs of the `[launcher]` keys only it reads.
    fn check(self, settings: &LauncherConfig, s: &Section) -> Result<(), ConfigError> {
        match self {
            LauncherKind::Wrapped if settings.prefix.trim().is_empty() => Err(s.invalid(
                "prefix",
                "kind = \"wrapped\" needs the prefix to put before each worker",
            )),
            LauncherKind::Mpiexec if settings.nodefile.trim().is_empty() => Err(s.invalid(
                "nodefile",
                "kind = \"mpiexec\" needs the node file (\"$PBS_NODEFILE\", \"$COBALT_NODEFILE\" or a path)",
            )),
            _ => Ok(()),
        }
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
#[derive(Serialize, Debug, Clone, PartialEq)]
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

    /// Whether this launcher can start the workers of one of `provider`'s
    /// blocks: a block of several nodes needs a launcher that spans them,
    /// unless each node runs its own launcher (Kubernetes pods); and a
    /// launcher tied to a scheduler (`srun` to Slurm, `aprun` to ALPS under
    /// PBS or Cobalt, a node file to the scheduler that writes it) only
    /// under that scheduler, or under the local provider (a daemon inside
    /// an allocation).
    pub(crate) fn check_fits(
        &self,
        provider: &ProviderConfig,
        site: &Site,
    ) -> Result<(), ConfigError> {
        self.check_scheduler(provider.kind, site)?;
        let nodes = provider.nodes_per_block;
        if nodes > 1 && !self.kind.spans_nodes() && !provider.kind.rules().launcher_per_node() {
            return Err(site.invalid(
                "provider.nodes_per_block",
                format!(
                    "is {nodes} but launcher.kind = \"{}\" starts workers on one node only",
                    self.kind.as_str()
                ),
            ));
        }
        Ok(())
    }
}

impl LauncherConfig {
    fn check_scheduler(&self, provider: ProviderKind, site: &Site) -> Result<(), ConfigError> {
        use ProviderKind::{Cobalt, Local, Pbspro, Slurm};
        let hint = match provider {
            Slurm => " (under Slurm, kind = \"srun\" starts workers on the job's nodes)",
            _ => "",
        };
        let refuse = |key: &str, why: String| {
            Err(site.invalid(
                key,
                format!("{why}, but provider.kind = \"{}\"{hint}", provider.as_str()),
            ))
        };
        match self.kind {
            LauncherKind::Srun if !matches!(provider, Slurm | Local) => refuse(
                "launcher.kind",
                "kind = \"srun\" starts workers inside a Slurm job".into(),
            ),
            LauncherKind::Aprun if !matches!(provider, Pbspro | Cobalt | Local) => refuse(
                "launcher.kind",
                "kind = \"aprun\" starts workers inside an ALPS (PBS or Cobalt) job".into(),
            ),
            LauncherKind::Mpiexec => {
                let written_by = [("PBS_NODEFILE", Pbspro), ("COBALT_NODEFILE", Cobalt)];
                for (variable, scheduler) in written_by {
                    if self.nodefile.contains(variable)
                        && provider != scheduler
                        && provider != Local
                    {
                        return refuse(
                            "launcher.nodefile",
                            format!(
                                "is \"{}\", which only {} jobs set",
                                self.nodefile,
                                scheduler.as_str()
                            ),
                        );
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Most workers one node may run.
const MAX_WORKERS_PER_NODE: u32 = 1_024;

/// `[launcher]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct LauncherConfig")]
pub(crate) struct RawLauncher {
    kind: Option<Spanned<LauncherKind>>,
    workers_per_node: Option<Spanned<u32>>,
    options: Option<Spanned<String>>,
    mpi_flavor: Option<Spanned<MpiFlavorConfig>>,
    nodefile: Option<Spanned<String>>,
    prefix: Option<Spanned<String>>,
    fail_on_any: Option<Spanned<bool>>,
}

impl RawLauncher {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<LauncherConfig, ConfigError> {
        let d = LauncherConfig::default();
        let mut s = site.section("launcher");
        let settings = LauncherConfig {
            kind: s.or("kind", self.kind, d.kind),
            workers_per_node: s.at_least_one(
                "workers_per_node",
                self.workers_per_node,
                d.workers_per_node,
                MAX_WORKERS_PER_NODE,
            )?,
            options: s.or("options", self.options, d.options),
            mpi_flavor: s.or("mpi_flavor", self.mpi_flavor, d.mpi_flavor),
            nodefile: s.or("nodefile", self.nodefile, d.nodefile),
            prefix: s.or("prefix", self.prefix, d.prefix),
            fail_on_any: s.or("fail_on_any", self.fail_on_any, d.fail_on_any),
        };
        settings.kind.check(&settings, &s)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::LauncherKind;
    use crate::config::Config;

    /// Per kind: a valid `[launcher]` (under a provider it suits) and one
    /// that is not, with the error's start.
    const CASES: [(LauncherKind, &str, &str, &str); 6] = [
        (
            LauncherKind::SingleNode,
            "[launcher]\nkind = \"single-node\"\nworkers_per_node = 4\nfail_on_any = true\n",
            "[provider]\nkind = \"pbspro\"\nnodes_per_block = 2\n[launcher]\nkind = \"single-node\"\n",
            "s.toml:3: `provider.nodes_per_block`: is 2 but launcher.kind = \"single-node\" starts workers on one node only",
        ),
        (
            LauncherKind::Srun,
            "[provider]\nkind = \"slurm\"\nnodes_per_block = 8\n[launcher]\nkind = \"srun\"\noptions = \"--cpu-bind=cores\"\n",
            "[launcher]\nkind = \"srun\"\nworkers_per_node = 0\n",
            "s.toml:3: `launcher.workers_per_node`: must be at least 1",
        ),
        (
            LauncherKind::Mpiexec,
            "[provider]\nkind = \"pbspro\"\nnodes_per_block = 2\n[launcher]\nkind = \"mpiexec\"\nmpi_flavor = \"pals\"\n",
            "[launcher]\nkind = \"mpiexec\"\nnodefile = \" \"\n",
            "s.toml:3: `launcher.nodefile`: kind = \"mpiexec\" needs the node file",
        ),
        (
            LauncherKind::Aprun,
            "[provider]\nkind = \"pbspro\"\nnodes_per_block = 2\n[launcher]\nkind = \"aprun\"\n",
            "[launcher]\nkind = \"aprun\"\n\nworkers_per_node = 0\n",
            "s.toml:4: `launcher.workers_per_node`: must be at least 1",
        ),
        (
            LauncherKind::Simple,
            "[launcher]\nkind = \"simple\"\n",
            "[launcher]\nkind = \"simple\"\nworkers_per_node = 0\n",
            "s.toml:3: `launcher.workers_per_node`: must be at least 1",
        ),
        (
            LauncherKind::Wrapped,
            "[launcher]\nkind = \"wrapped\"\nprefix = \"ibrun\"\n",
            "[launcher]\nkind = \"wrapped\"\nprefix = \"\"\n",
            "s.toml:3: `launcher.prefix`: kind = \"wrapped\" needs the prefix",
        ),
    ];

    #[test]
    fn each_launcher_kind_is_read_and_checked() {
        for (kind, valid, invalid, error) in CASES {
            let c = Config::parse(valid, "s.toml").unwrap_or_else(|e| panic!("{valid}: {e}"));
            assert_eq!(c.launcher.kind, kind);
            assert_eq!(c.launcher.launcher().name(), kind.as_str());
            let err = Config::parse(invalid, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(error), "{invalid}: {err}");
        }
    }

    #[test]
    fn launchers_tied_to_another_scheduler_are_refused() {
        let refused = [
            (
                "[provider]\nkind = \"pbspro\"\n[launcher]\nkind = \"srun\"\n",
                "s.toml:4: `launcher.kind`: kind = \"srun\" starts workers inside a Slurm job, but provider.kind = \"pbspro\"",
            ),
            (
                "[provider]\nkind = \"slurm\"\n[launcher]\nkind = \"aprun\"\n",
                "s.toml:4: `launcher.kind`: kind = \"aprun\" starts workers inside an ALPS",
            ),
            (
                "[provider]\nkind = \"slurm\"\n[launcher]\nkind = \"mpiexec\"\n",
                "s.toml: `launcher.nodefile` (not set: its default): is \"$PBS_NODEFILE\", which only pbspro jobs set, but provider.kind = \"slurm\" (under Slurm, kind = \"srun\"",
            ),
            (
                "[provider]\nkind = \"pbspro\"\n[launcher]\nkind = \"mpiexec\"\nnodefile = \"$COBALT_NODEFILE\"\n",
                "s.toml:5: `launcher.nodefile`: is \"$COBALT_NODEFILE\", which only cobalt jobs set",
            ),
        ];
        for (text, error) in refused {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(error), "{text}: {err}");
        }
        let fitting = [
            "[provider]\nkind = \"slurm\"\n[launcher]\nkind = \"srun\"\n",
            "[launcher]\nkind = \"srun\"\n",
            "[provider]\nkind = \"cobalt\"\n[launcher]\nkind = \"aprun\"\n",
            "[provider]\nkind = \"cobalt\"\n[launcher]\nkind = \"mpiexec\"\nnodefile = \"$COBALT_NODEFILE\"\n",
            "[provider]\nkind = \"slurm\"\n[launcher]\nkind = \"mpiexec\"\nnodefile = \"$HOME/hosts\"\n",
            "[launcher]\nkind = \"mpiexec\"\n",
        ];
        for text in fitting {
            if let Err(e) = Config::parse(text, "s.toml") {
                panic!("{text}: {e}");
            }
        }
    }

    #[test]
    fn kubernetes_pods_each_run_their_own_launcher() {
        let c = Config::parse(
            "[provider]\nkind = \"kubernetes\"\nnodes_per_block = 4\n[provider.kubernetes]\nimage = \"fl\"\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(c.launcher.kind, LauncherKind::SingleNode);
    }
}
