//! `[servables.NAME]`: this site's overrides of servables' serving options.

use std::collections::BTreeMap;

use flotilla_protocol::servable::BatchDelay;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::Site;

/// `[servables.NAME]`: serving options that replace the spec's.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ServableOverride {
    /// Answer repeated identical requests from the memo store.
    pub memoize: Option<bool>,
    /// Most inputs in one call.
    pub max_batch_size: Option<u32>,
    /// Milliseconds a request may wait for its batch to fill, or "auto".
    pub max_batch_delay_ms: Option<BatchDelay>,
    /// The latency bound "auto" batching keeps within.
    pub latency_target_ms: Option<u64>,
    /// Dispatches before worker losses fail a task (default:
    /// `[daemon] max_attempts`).
    pub max_attempts: Option<u32>,
    /// Slots kept warm for it (its process started and initialised) ahead
    /// of need, over all workers that may run it.
    pub min_warm_slots: Option<u32>,
    /// Seconds after which an idle warm process of it is let go, to free
    /// its memory (never below `min_warm_slots`); unset: kept.
    pub warm_idle_s: Option<u64>,
}

/// `[servables.NAME]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, expecting = "struct ServableOverride")]
pub(crate) struct RawServableOverride {
    memoize: Option<Spanned<bool>>,
    max_batch_size: Option<Spanned<u32>>,
    max_batch_delay_ms: Option<Spanned<BatchDelay>>,
    latency_target_ms: Option<Spanned<u64>>,
    max_attempts: Option<Spanned<u32>>,
    min_warm_slots: Option<Spanned<u32>>,
    warm_idle_s: Option<Spanned<u64>>,
}

/// The largest batch a servable may be given.
const MAX_BATCH_SIZE: u32 = 1_000_000;

/// The longest latency target (an hour).
const MAX_LATENCY_TARGET_MS: u64 = 3_600_000;

/// The longest batch delay, as a servable's own spec allows (10 minutes).
const MAX_BATCH_DELAY_MS: u64 = 600_000;

/// Most dispatches of one task.
const MAX_ATTEMPTS: u32 = 100;

/// Most slots kept warm for one servable.
const MAX_WARM_SLOTS: u32 = 10_000;

impl RawServableOverride {
    /// The override of servable `name`, or what is wrong with it.
    fn check(self, name: &str, site: &mut Site) -> Result<ServableOverride, ConfigError> {
        let mut s = site.section(&format!("servables.{name}"));
        let max_batch_size = s.opt("max_batch_size", self.max_batch_size);
        if let Some(n) = max_batch_size
            && !(1..=MAX_BATCH_SIZE).contains(&n)
        {
            return Err(s.invalid(
                "max_batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}, got {n}"),
            ));
        }
        let latency_target_ms = s.opt("latency_target_ms", self.latency_target_ms);
        if let Some(ms) = latency_target_ms
            && !(1..=MAX_LATENCY_TARGET_MS).contains(&ms)
        {
            return Err(s.invalid(
                "latency_target_ms",
                format!("must be between 1 and {MAX_LATENCY_TARGET_MS}, got {ms}"),
            ));
        }
        let max_batch_delay_ms = s.opt("max_batch_delay_ms", self.max_batch_delay_ms);
        if let Some(BatchDelay::Fixed(ms)) = max_batch_delay_ms
            && ms > MAX_BATCH_DELAY_MS
        {
            return Err(s.invalid(
                "max_batch_delay_ms",
                format!("must be at most {MAX_BATCH_DELAY_MS} (10 minutes), got {ms}"),
            ));
        }
        let max_attempts = s.opt("max_attempts", self.max_attempts);
        if let Some(n) = max_attempts
            && !(1..=MAX_ATTEMPTS).contains(&n)
        {
            return Err(s.invalid(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS}, got {n}"),
            ));
        }
        let min_warm_slots = s.opt("min_warm_slots", self.min_warm_slots);
        if let Some(n) = min_warm_slots
            && n > MAX_WARM_SLOTS
        {
            return Err(s.invalid(
                "min_warm_slots",
                format!("must be at most {MAX_WARM_SLOTS}, got {n}"),
            ));
        }
        let warm_idle_s = s.opt("warm_idle_s", self.warm_idle_s);
        if warm_idle_s == Some(0) {
            return Err(s.invalid(
                "warm_idle_s",
                "must be at least 1 (leave it out to keep warm processes)",
            ));
        }
        Ok(ServableOverride {
            memoize: s.opt("memoize", self.memoize),
            max_batch_size,
            max_batch_delay_ms,
            latency_target_ms,
            max_attempts,
            min_warm_slots,
            warm_idle_s,
        })
    }
}

/// Checks every `[servables.NAME]` table, in name order.
pub(crate) fn check(
    raw: BTreeMap<String, RawServableOverride>,
    site: &mut Site,
) -> Result<BTreeMap<String, ServableOverride>, ConfigError> {
    raw.into_iter()
        .map(|(name, o)| Ok((name.clone(), o.check(&name, site)?)))
        .collect()
}
