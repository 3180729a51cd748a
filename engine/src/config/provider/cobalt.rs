//! `kind = "cobalt"`: blocks are Cobalt jobs.

use super::{ProviderRules, SchedulerKey, scheduler_walltime_s};

/// Cobalt's rules.
pub(super) struct Cobalt;

impl ProviderRules for Cobalt {
    fn name(&self) -> &'static str {
        "cobalt"
    }

    fn reads(&self, key: SchedulerKey) -> bool {
        matches!(key, SchedulerKey::Queue | SchedulerKey::Account)
    }

    fn hint(&self, key: SchedulerKey) -> Option<&'static str> {
        (key == SchedulerKey::Partition).then_some("PBS and Cobalt call it `queue`")
    }

    fn block_walltime_s(&self, walltime: Option<&str>) -> Option<u64> {
        scheduler_walltime_s(walltime)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ProviderKind};

    #[test]
    fn cobalt_reads_queue_and_account() {
        let c = Config::parse(
            "[provider]\nkind = \"cobalt\"\nqueue = \"debug-cache-quad\"\naccount = \"proj\"\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.provider.kind, ProviderKind::Cobalt);
        assert_eq!(c.provider.account.as_deref(), Some("proj"));
        let err = Config::parse(
            "[provider]\nkind = \"cobalt\"\n\npartition = \"debug\"\n",
            "c.toml",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "c.toml:4: `provider.partition`: does not apply to kind = \"cobalt\"; PBS and Cobalt call it `queue`"
        );
    }
}
