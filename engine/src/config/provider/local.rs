//! `kind = "local"`: blocks are process groups on this machine.

use super::ProviderRules;
use crate::config::{ChannelKind, Config, ConfigError, site::Site};

/// The local provider's rules.
pub(super) struct Local;

impl ProviderRules for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    /// Nothing ends a local block unless `walltime` is set; then the
    /// provider ends it, as a scheduler would.
    fn block_walltime_s(&self, walltime: Option<&str>) -> Option<u64> {
        walltime.and_then(flotilla_providers::walltime_seconds)
    }

    /// Blocks start on this machine, so the channel is this machine's
    /// shell.
    fn check(&self, config: &Config, site: &Site) -> Result<(), ConfigError> {
        if config.channel.kind == ChannelKind::Ssh {
            return Err(site.invalid(
                "channel.kind",
                "the local provider starts blocks on this machine; use a scheduler provider with an SSH channel",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ProviderKind};

    #[test]
    fn local_blocks_take_an_optional_walltime_and_no_ssh() {
        let c = Config::parse(
            "[provider]\nkind = \"local\"\nwalltime = \"00:10:00\"\nmax_blocks = 2\n",
            "l.toml",
        )
        .unwrap();
        assert_eq!(c.provider.kind, ProviderKind::Local);
        assert_eq!(c.block_walltime_s(), Some(600));
        assert_eq!(Config::default().block_walltime_s(), None);
        let err = Config::parse(
            "[provider]\nkind = \"local\"\n\n[channel]\nkind = \"ssh\"\nhost = \"login\"\n",
            "l.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "l.toml:5: `channel.kind`: the local provider starts blocks on this machine"
            ),
            "{err}"
        );
        let err = Config::parse("[provider]\naccount = \"proj\"\n", "l.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "l.toml:2: `provider.account`: does not apply to kind = \"local\""
        );
    }
}
