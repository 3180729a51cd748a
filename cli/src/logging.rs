//! Where `flotilla`'s log lines go and how they look.
//!
//! Client commands log warnings to stderr. The daemon logs at `info`, as
//! text or JSON (`[daemon] log_format`, `--log-format`); to stderr when it
//! runs in the foreground, and with `--detach` to `daemon.log`, rotated by
//! size (`[daemon] log_max_mb`, `log_keep`; see [`crate::log_file`]).
//! Colour codes are written only to a terminal, never into a file.
//! `FLOTILLA_LOG` (an env-filter directive) overrides the level.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use flotilla_engine::config::{Config, LogFormat as ConfigFormat};
use flotilla_protocol::launch::LOG_ENV;
use tracing_subscriber::EnvFilter;

use crate::log_file::RotatingFile;

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn filter(default_level: &str) -> EnvFilter {
    EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_level))
}

/// Client commands: warnings and errors on stderr.
pub(crate) fn init_client() {
    tracing_subscriber::fmt()
        .with_env_filter(filter("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The daemon: `info` as `config` (or `format`) says, on stderr or into
/// `log_file`.
pub(crate) fn init_daemon(
    config: &Config,
    format: Option<LogFormat>,
    log_file: Option<&Path>,
) -> anyhow::Result<()> {
    let json = match format {
        Some(f) => f == LogFormat::Json,
        None => config.daemon.log_format == ConfigFormat::Json,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter("info"));
    match log_file {
        Some(path) => {
            let max_bytes = config.daemon.log_max_mb.saturating_mul(1 << 20);
            let file = RotatingFile::open(path, max_bytes, config.daemon.log_keep, true)
                .with_context(|| format!("{}: cannot open the daemon log", path.display()))?;
            let writer = Mutex::new(file);
            // A file never gets colour codes.
            let builder = builder.with_writer(writer).with_ansi(false);
            if json {
                builder.json().init();
            } else {
                builder.init();
            }
        }
        None => {
            let builder = builder
                .with_writer(std::io::stderr)
                .with_ansi(!json && std::io::stderr().is_terminal());
            if json {
                builder.json().init();
            } else {
                builder.init();
            }
        }
    }
    Ok(())
}
