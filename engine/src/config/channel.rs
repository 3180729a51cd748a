//! `[channel]`: where the provider's commands run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::{Seconds, Site};

/// Where scheduler commands run.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    /// This machine's shell.
    Local,
    /// An SSH session to a login node.
    Ssh,
}

/// `[channel]`: where the provider's commands run.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// `local` or `ssh`.
    pub kind: ChannelKind,
    /// SSH host.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// SSH user (default: `$USER`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Private key file (default: the SSH agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// known_hosts file (default: `~/.ssh/known_hosts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// Refuse hosts whose key is not in known_hosts.
    pub check_host_key: bool,
    /// Time allowed to connect and log in.
    pub connect_timeout_s: f64,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            kind: ChannelKind::Local,
            host: String::new(),
            port: 22,
            user: None,
            key_file: None,
            known_hosts: None,
            check_host_key: true,
            connect_timeout_s: 10.0,
        }
    }
}

/// `[channel]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct ChannelConfig")]
pub(crate) struct RawChannel {
    kind: Option<Spanned<ChannelKind>>,
    host: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    user: Option<Spanned<String>>,
    key_file: Option<Spanned<PathBuf>>,
    known_hosts: Option<Spanned<PathBuf>>,
    check_host_key: Option<Spanned<bool>>,
    connect_timeout_s: Option<Spanned<f64>>,
}

impl RawChannel {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<ChannelConfig, ConfigError> {
        let d = ChannelConfig::default();
        let mut s = site.section("channel");
        let kind = s.or("kind", self.kind, d.kind);
        let host = s.or("host", self.host, d.host);
        if kind == ChannelKind::Ssh && host.trim().is_empty() {
            return Err(s.invalid("host", "kind = \"ssh\" needs the login node to connect to"));
        }
        Ok(ChannelConfig {
            kind,
            host,
            port: s.count("port", self.port, d.port, 1, u16::MAX)?,
            user: s.opt("user", self.user),
            key_file: s.opt("key_file", self.key_file),
            known_hosts: s.opt("known_hosts", self.known_hosts),
            check_host_key: s.or("check_host_key", self.check_host_key, d.check_host_key),
            connect_timeout_s: s.seconds(
                "connect_timeout_s",
                self.connect_timeout_s,
                d.connect_timeout_s,
                Seconds::Positive,
            )?,
        })
    }
}
