//! `kind = "pbspro"`: blocks are PBS Pro or OpenPBS jobs.

use super::QueueScheduler;

/// PBS's rules: a scheduler with queues.
pub(super) const PBSPRO: QueueScheduler = QueueScheduler {
    name: "pbspro",
    pbs: true,
};

#[cfg(test)]
mod tests {
    use crate::config::{Config, ProviderKind};

    #[test]
    fn pbspro_reads_queue_and_account() {
        let c = Config::parse(
            "[provider]\nkind = \"pbspro\"\nqueue = \"debug\"\naccount = \"proj\"\nwalltime = \"00:30:00\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(c.provider.kind, ProviderKind::Pbspro);
        assert_eq!(c.provider.queue.as_deref(), Some("debug"));
        assert_eq!(c.block_walltime_s(), Some(1800));
        let err = Config::parse("[provider]\nkind = \"pbspro\"\nqos = \"high\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "p.toml:3: `provider.qos`: does not apply to kind = \"pbspro\""
        );
    }
}
