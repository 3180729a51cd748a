//! `[worker]`: what each worker looks like.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::{Seconds, Site};

/// `[worker]`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Concurrent servable calls per worker; 0 = cores.
    pub slots: u32,
    /// A worker without its daemon for this long exits.
    pub lost_daemon_exit_s: f64,
    /// How long a starting worker tries the daemon's addresses before it
    /// gives up and reports why each failed.
    pub connect_timeout_s: f64,
    /// Worker executable; unset = next to `flotilla`, else PATH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Shell lines run before the workers start.
    pub init: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 0,
            lost_daemon_exit_s: 60.0,
            connect_timeout_s: 10.0,
            command: None,
            init: String::new(),
        }
    }
}

/// Most concurrent servable calls one worker may run.
const MAX_SLOTS: u32 = 4_096;

/// `[worker]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct WorkerConfig")]
pub(crate) struct RawWorker {
    slots: Option<Spanned<u32>>,
    lost_daemon_exit_s: Option<Spanned<f64>>,
    connect_timeout_s: Option<Spanned<f64>>,
    command: Option<Spanned<String>>,
    init: Option<Spanned<String>>,
}

impl RawWorker {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<WorkerConfig, ConfigError> {
        let d = WorkerConfig::default();
        let mut s = site.section("worker");
        Ok(WorkerConfig {
            slots: s.count("slots", self.slots, d.slots, 0, MAX_SLOTS)?,
            lost_daemon_exit_s: s.seconds(
                "lost_daemon_exit_s",
                self.lost_daemon_exit_s,
                d.lost_daemon_exit_s,
                Seconds::Positive,
            )?,
            connect_timeout_s: s.seconds(
                "connect_timeout_s",
                self.connect_timeout_s,
                d.connect_timeout_s,
                Seconds::Positive,
            )?,
            command: s.opt("command", self.command),
            init: s.or("init", self.init, d.init),
        })
    }
}
