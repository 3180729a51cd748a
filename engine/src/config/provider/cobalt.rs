//! `kind = "cobalt"`: blocks are Cobalt jobs.

use super::QueueScheduler;

/// Cobalt's rules: a scheduler with queues.
pub(super) const COBALT: QueueScheduler = QueueScheduler {
    name: "cobalt",
    pbs: false,
};

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
