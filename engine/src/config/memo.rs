//! `[memo]`: the memo store's bounds.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::Site;

/// `[memo]`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct MemoConfig {
    /// Most entries kept.
    pub max_entries: u64,
    /// Most bytes kept (outputs plus per-entry overhead).
    pub max_bytes: u64,
}

impl Default for MemoConfig {
    fn default() -> Self {
        MemoConfig {
            max_entries: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

/// `[memo]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct MemoConfig")]
pub(crate) struct RawMemo {
    max_entries: Option<Spanned<u64>>,
    max_bytes: Option<Spanned<u64>>,
}

/// The smallest memo store worth having.
const MIN_BYTES: u64 = 1024;

/// Most entries the memo store may be asked to hold.
const MAX_ENTRIES: u64 = 1_000_000_000;

/// Most bytes the memo store may be asked to hold (1 TiB).
const MAX_BYTES: u64 = 1 << 40;

impl RawMemo {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<MemoConfig, ConfigError> {
        let d = MemoConfig::default();
        let mut s = site.section("memo");
        let max_entries = s.count(
            "max_entries",
            self.max_entries,
            d.max_entries,
            0,
            MAX_ENTRIES,
        )?;
        let max_bytes = s.count("max_bytes", self.max_bytes, d.max_bytes, 0, MAX_BYTES)?;
        if max_entries == 0 || max_bytes < MIN_BYTES {
            let key = if max_entries == 0 {
                "max_entries"
            } else {
                "max_bytes"
            };
            return Err(s.invalid(
                key,
                format!("the memo store needs room for at least one entry and {MIN_BYTES} bytes; to turn memoization off, leave `memoize` off"),
            ));
        }
        Ok(MemoConfig {
            max_entries,
            max_bytes,
        })
    }
}
