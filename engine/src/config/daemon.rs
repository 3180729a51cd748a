//! `[daemon]`: state, limits, retention.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::{Seconds, Site};

/// `[daemon]`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// State directory, for what must be node-local and fast (the store,
    /// the API socket, the lock, the secret); unset means `$FLOTILLA_HOME`,
    /// else `~/.flotilla`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Shared directory, for what compute nodes must reach (the object
    /// store, local blocks' scripts and logs, a copy of the contact file);
    /// unset means `$FLOTILLA_SHARED`, else the state directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<PathBuf>,
    /// Largest frame accepted on any socket.
    pub max_frame_bytes: usize,
    /// Time running tasks get to finish on shutdown.
    pub shutdown_grace_s: f64,
    /// Retention of a result after its first fetch.
    pub result_retention_s: f64,
    /// Retention of a result nobody fetched.
    pub unfetched_result_retention_s: f64,
    /// Dispatches per task before worker losses fail it.
    pub max_attempts: u32,
    /// After a restart with blocks still running, tasks that were running
    /// wait this long for their workers to reconnect and claim them before
    /// they are queued again.
    pub recovery_grace_s: f64,
    /// Where the client API also listens on TCP (`HOST:PORT`), for clients
    /// on other hosts holding a token (`flotilla token create`); unset: the
    /// ipc socket only. With an unspecified host (`0.0.0.0`, `::`) clients
    /// are told the interchange's advertised addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_listen: Option<std::net::SocketAddr>,
    /// A Unix group (name or gid) whose members may call the daemon on its
    /// ipc socket (mode 0660, that group) as themselves, for a daemon run
    /// for a team; unset: the socket is mode 0600, its user's alone. What
    /// each caller sees follows the servables' visibility. The state
    /// directory must then be searchable by the group (`chmod 0710`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// How log lines are written: text, or one JSON object a line for log
    /// collectors.
    pub log_format: LogFormat,
    /// `daemon.log` (written with `flotilla daemon --detach`) is rotated
    /// when it would grow past this many MiB; 0: never.
    pub log_max_mb: u64,
    /// Rotated logs kept beside it (`daemon.log.1` newest).
    pub log_keep: u32,
}

/// `[daemon] log_format`.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: time, level, target, message, fields.
    Json,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: None,
            shared_dir: None,
            max_frame_bytes: flotilla_protocol::DEFAULT_MAX_FRAME_BYTES,
            shutdown_grace_s: 30.0,
            result_retention_s: 600.0,
            unfetched_result_retention_s: 7.0 * 24.0 * 3600.0,
            max_attempts: 3,
            recovery_grace_s: 10.0,
            client_listen: None,
            api_group: None,
            log_format: LogFormat::Text,
            log_max_mb: 64,
            log_keep: 5,
        }
    }
}

/// `[daemon]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct DaemonConfig")]
pub(crate) struct RawDaemon {
    state_dir: Option<Spanned<PathBuf>>,
    shared_dir: Option<Spanned<PathBuf>>,
    max_frame_bytes: Option<Spanned<usize>>,
    shutdown_grace_s: Option<Spanned<f64>>,
    result_retention_s: Option<Spanned<f64>>,
    unfetched_result_retention_s: Option<Spanned<f64>>,
    max_attempts: Option<Spanned<u32>>,
    recovery_grace_s: Option<Spanned<f64>>,
    client_listen: Option<Spanned<String>>,
    api_group: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    log_max_mb: Option<Spanned<u64>>,
    log_keep: Option<Spanned<u32>>,
}

/// Largest `log_max_mb`: 1 TiB.
const MAX_LOG_MB: u64 = 1 << 20;

/// Most rotated logs kept.
const MAX_LOG_KEEP: u32 = 1000;

/// The smallest frame limit that still carries a worker's registration.
const MIN_FRAME_BYTES: usize = 4096;

/// The largest frame limit: a frame is held in memory whole, on both sides.
const MAX_FRAME_BYTES: usize = 1 << 30;

/// Most dispatches of one task.
const MAX_ATTEMPTS: u32 = 100;

impl RawDaemon {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<DaemonConfig, ConfigError> {
        let d = DaemonConfig::default();
        let mut s = site.section("daemon");
        let state_dir = s.opt("state_dir", self.state_dir);
        let shared_dir = s.opt("shared_dir", self.shared_dir);
        if shared_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(s.invalid(
                "shared_dir",
                "must name a directory; leave it out to share the state directory",
            ));
        }
        let shutdown_grace_s = s.seconds(
            "shutdown_grace_s",
            self.shutdown_grace_s,
            d.shutdown_grace_s,
            Seconds::NonNegative,
        )?;
        let result_retention_s = s.seconds(
            "result_retention_s",
            self.result_retention_s,
            d.result_retention_s,
            Seconds::NonNegative,
        )?;
        let unfetched_result_retention_s = s.seconds(
            "unfetched_result_retention_s",
            self.unfetched_result_retention_s,
            d.unfetched_result_retention_s,
            Seconds::NonNegative,
        )?;
        let recovery_grace_s = s.seconds(
            "recovery_grace_s",
            self.recovery_grace_s,
            d.recovery_grace_s,
            Seconds::NonNegative,
        )?;
        let max_frame_bytes = s.or("max_frame_bytes", self.max_frame_bytes, d.max_frame_bytes);
        if max_frame_bytes < MIN_FRAME_BYTES {
            return Err(s.invalid(
                "max_frame_bytes",
                format!("must be at least {MIN_FRAME_BYTES} bytes, got {max_frame_bytes}"),
            ));
        }
        if max_frame_bytes > MAX_FRAME_BYTES {
            return Err(s.invalid(
                "max_frame_bytes",
                format!("must be at most {MAX_FRAME_BYTES} bytes, got {max_frame_bytes}"),
            ));
        }
        let max_attempts = s.at_least_one(
            "max_attempts",
            self.max_attempts,
            d.max_attempts,
            MAX_ATTEMPTS,
        )?;
        let client_listen = match s.opt("client_listen", self.client_listen) {
            None => None,
            Some(text) => Some(text.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                s.invalid(
                    "client_listen",
                    format!(
                        "must be HOST:PORT with an IP address (e.g. \"0.0.0.0:7421\"), got {text:?}"
                    ),
                )
            })?),
        };
        let api_group = s.opt("api_group", self.api_group);
        if api_group.as_deref().is_some_and(|g| g.trim().is_empty()) {
            return Err(s.invalid(
                "api_group",
                "must name a group; leave it out to keep the socket to the daemon's user",
            ));
        }
        let log_format = match s.opt("log_format", self.log_format).as_deref() {
            None => d.log_format,
            Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(s.invalid(
                    "log_format",
                    format!("must be \"text\" or \"json\", got {other:?}"),
                ));
            }
        };
        let log_max_mb = s.count("log_max_mb", self.log_max_mb, d.log_max_mb, 0, MAX_LOG_MB)?;
        let log_keep = s.count("log_keep", self.log_keep, d.log_keep, 0, MAX_LOG_KEEP)?;
        Ok(DaemonConfig {
            log_format,
            log_max_mb,
            log_keep,
            client_listen,
            api_group,
            state_dir,
            shared_dir,
            max_frame_bytes,
            shutdown_grace_s,
            result_retention_s,
            unfetched_result_retention_s,
            max_attempts,
            recovery_grace_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_shared_directory_is_read_and_may_be_left_out() {
        let c = Config::parse(
            "[daemon]\nstate_dir = \"/var/fl\"\nshared_dir = \"/scratch/me/fl\"\n",
            "d.toml",
        )
        .unwrap();
        assert_eq!(
            c.daemon.shared_dir.as_deref(),
            Some("/scratch/me/fl".as_ref())
        );
        assert!(c.to_toml().contains("shared_dir = \"/scratch/me/fl\""));
        assert_eq!(Config::parse("", "d.toml").unwrap().daemon.shared_dir, None);
        let err = Config::parse("[daemon]\nshared_dir = \"\"\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.toml:2: `daemon.shared_dir`: must name"),
            "{err}"
        );
    }

    #[test]
    fn the_api_group_is_read_and_may_not_be_empty() {
        let c = Config::parse("[daemon]\napi_group = \"chem\"\n", "d.toml").unwrap();
        assert_eq!(c.daemon.api_group.as_deref(), Some("chem"));
        assert_eq!(Config::parse("", "d.toml").unwrap().daemon.api_group, None);
        let err = Config::parse("[daemon]\napi_group = \" \"\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.toml:2: `daemon.api_group`: must name a group"),
            "{err}"
        );
    }

    #[test]
    fn log_settings_are_read_and_checked() {
        let c = Config::parse(
            "[daemon]\nlog_format = \"json\"\nlog_max_mb = 1\nlog_keep = 2\n",
            "d.toml",
        )
        .unwrap();
        assert_eq!(c.daemon.log_format, super::LogFormat::Json);
        assert_eq!((c.daemon.log_max_mb, c.daemon.log_keep), (1, 2));
        assert!(c.to_toml().contains("log_format = \"json\""));
        let err = Config::parse("[daemon]\nlog_format = \"xml\"\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d.toml:2: `daemon.log_format`: must be \"text\" or \"json\", got \"xml\""
        );
        let err = Config::parse("[daemon]\nlog_max_mb = 2000000\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("d.toml:2: `daemon.log_max_mb`"), "{err}");
    }

    #[test]
    fn limits_are_read_and_checked() {
        let c = Config::parse(
            "[daemon]\nmax_attempts = 5\nshutdown_grace_s = 0\n",
            "d.toml",
        )
        .unwrap();
        assert_eq!((c.daemon.max_attempts, c.daemon.shutdown_grace_s), (5, 0.0));
        let err = Config::parse("[daemon]\nmax_frame_bytes = 100\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.toml:2: `daemon.max_frame_bytes`: must be at least 4096"),
            "{err}"
        );
        let err = Config::parse("[daemon]\n\nresult_retention_s = -1\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "d.toml:3: `daemon.result_retention_s`: must be a non-negative number of seconds, got -1"
        );
    }
}
