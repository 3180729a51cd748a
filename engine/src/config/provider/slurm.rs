//! `kind = "slurm"`: blocks are Slurm jobs.

use super::{ProviderRules, SchedulerKey, scheduler_walltime_s};

/// Slurm's rules.
pub(super) struct Slurm;

impl ProviderRules for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn reads(&self, key: SchedulerKey) -> bool {
        matches!(
            key,
            SchedulerKey::Partition
                | SchedulerKey::Qos
                | SchedulerKey::Constraint
                | SchedulerKey::Account
        )
    }

    fn hint(&self, key: SchedulerKey) -> Option<&'static str> {
        (key == SchedulerKey::Queue).then_some("Slurm calls it `partition`")
    }

    fn block_walltime_s(&self, walltime: Option<&str>) -> Option<u64> {
        scheduler_walltime_s(walltime)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ProviderKind};

    #[test]
    fn slurm_reads_partition_qos_constraint_and_account() {
        let c = Config::parse(
            "[provider]\nkind = \"slurm\"\npartition = \"debug\"\nqos = \"regular\"\nconstraint = \"gpu\"\naccount = \"m1\"\n",
            "s.toml",
        )
        .unwrap();
        assert_eq!(c.provider.kind, ProviderKind::Slurm);
        assert_eq!(c.provider.partition.as_deref(), Some("debug"));
        assert_eq!(c.block_walltime_s(), Some(3600));
        let err = Config::parse(
            "[provider]\nkind = \"slurm\"\nqueue = \"debug\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "s.toml:3: `provider.queue`: does not apply to kind = \"slurm\"; Slurm calls it `partition`"
        );
    }
}
