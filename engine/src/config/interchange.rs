//! `[interchange]`: where workers dial, and how often both sides speak.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::{Seconds, Site};
use crate::advertise::AddressSetting;

/// `[interchange]`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct InterchangeConfig {
    /// Addresses workers dial: `"auto"`, an interface name, an address or
    /// host name (optionally with a forwarded port), or a list of them.
    pub address: AddressSetting,
    /// Local addresses to listen on; empty: the advertised ones.
    pub bind: Vec<String>,
    /// TCP port; 0 picks a free one.
    pub port: u16,
    /// Longest the daemon holds a worker's poll.
    pub heartbeat_period_s: f64,
    /// Silence after which a peer is lost.
    pub heartbeat_threshold_s: f64,
}

impl Default for InterchangeConfig {
    fn default() -> Self {
        InterchangeConfig {
            address: AddressSetting::One("127.0.0.1".into()),
            bind: Vec::new(),
            port: 0,
            heartbeat_period_s: 5.0,
            heartbeat_threshold_s: 20.0,
        }
    }
}

/// `[interchange]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct InterchangeConfig")]
pub(crate) struct RawInterchange {
    address: Option<Spanned<AddressSetting>>,
    bind: Option<Spanned<Vec<String>>>,
    port: Option<Spanned<u16>>,
    heartbeat_period_s: Option<Spanned<f64>>,
    heartbeat_threshold_s: Option<Spanned<f64>>,
}

impl RawInterchange {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<InterchangeConfig, ConfigError> {
        let d = InterchangeConfig::default();
        let mut s = site.section("interchange");
        let heartbeat_period_s = s.seconds(
            "heartbeat_period_s",
            self.heartbeat_period_s,
            d.heartbeat_period_s,
            Seconds::Positive,
        )?;
        let heartbeat_threshold_s = s.seconds(
            "heartbeat_threshold_s",
            self.heartbeat_threshold_s,
            d.heartbeat_threshold_s,
            Seconds::Positive,
        )?;
        if heartbeat_threshold_s <= heartbeat_period_s {
            return Err(s.invalid(
                "heartbeat_threshold_s",
                format!(
                    "must be greater than heartbeat_period_s ({heartbeat_period_s}), or every idle worker is declared lost; got {heartbeat_threshold_s}"
                ),
            ));
        }
        let address = s.or("address", self.address, d.address);
        let entries = address.entries();
        if entries.is_empty() {
            return Err(s.invalid(
                "address",
                "must name at least one address workers can reach, e.g. \"127.0.0.1\", \"auto\" or the login node's high-speed interface (\"hsn0\")",
            ));
        }
        for entry in entries {
            if entry.trim() != "auto"
                && let Err(e) = flotilla_protocol::address::Endpoint::parse(entry)
            {
                return Err(s.invalid("address", e.to_string()));
            }
        }
        let bind = s.or("bind", self.bind, d.bind);
        if let Some(b) = bind
            .iter()
            .find(|b| b.trim().parse::<std::net::IpAddr>().is_err())
        {
            return Err(s.invalid(
                "bind",
                format!("`{b}` is not an IP address (\"0.0.0.0\" listens on every interface)"),
            ));
        }
        Ok(InterchangeConfig {
            address,
            bind,
            port: s.or("port", self.port, d.port),
            heartbeat_period_s,
            heartbeat_threshold_s,
        })
    }
}
