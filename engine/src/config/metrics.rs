//! `[metrics]`: the opt-in Prometheus endpoint.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::Site;

/// `[metrics]`.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` answers in Prometheus's text format
    /// (`HOST:PORT`); unset: no endpoint. The metrics name servables and
    /// pools, so keep it on loopback or a monitoring network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[metrics]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct MetricsConfig")]
pub(crate) struct RawMetrics {
    listen: Option<Spanned<String>>,
}

impl RawMetrics {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<MetricsConfig, ConfigError> {
        let mut s = site.section("metrics");
        let listen = match s.opt("listen", self.listen) {
            None => None,
            Some(text) => Some(text.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                s.invalid(
                    "listen",
                    format!(
                        "must be HOST:PORT with an IP address (e.g. \"127.0.0.1:9464\"), got {text:?}; leave it out for no metrics endpoint"
                    ),
                )
            })?),
        };
        Ok(MetricsConfig { listen })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_endpoint_is_off_unless_set_and_its_address_is_checked() {
        assert_eq!(Config::parse("", "m.toml").unwrap().metrics.listen, None);
        let c = Config::parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n", "m.toml").unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(
            c.to_toml()
                .contains("[metrics]\nlisten = \"127.0.0.1:9464\"")
        );
        let err = Config::parse("[metrics]\n\nlisten = \"localhost\"\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("m.toml:3: `metrics.listen`: must be HOST:PORT"),
            "{err}"
        );
    }
}
