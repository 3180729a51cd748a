//! The servable catalog: builtins plus every published version.
//!
//! Requests name a servable as `NAME` (its latest version, by semantic-
//! version order) or `NAME@VERSION`; the catalog resolves that once, at
//! submission, to a canonical `NAME@VERSION` (just `NAME` for builtins) so
//! queues, batches, memo keys and workers all agree on what a task runs.
//! Published versions are immutable: publishing the same version again is
//! accepted only with identical content.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_protocol::builtin::BUILTINS;
use flotilla_protocol::client::ApiErrorKind;
use flotilla_protocol::servable::{
    BatchDelay, Runtime, ServableRecord, ServableRef, ServableRefError, TypeSpec,
};

use super::queues::{BatchRule, Delay};
use crate::config::ServableOverride;

/// A refusal: what kind, and the message for the client.
pub type Refusal = (ApiErrorKind, String);

/// Whether the caller may see a published record (see
/// [`super::access`]); what it may not see, the catalog answers for as if
/// it did not exist.
pub type Sees<'a> = &'a dyn Fn(&ServableRecord) -> bool;

/// Sees everything: the daemon's own lookups.
fn everything(_: &ServableRecord) -> bool {
    true
}

/// A resolved servable.
#[derive(Clone, Debug)]
pub struct ServableInfo {
    /// Canonical name workers are asked to run.
    pub name: Arc<str>,
    /// How its requests are batched.
    pub batch: BatchRule,
    /// The latency bound of adaptive batching, µs.
    pub latency_target_us: u64,
    /// Repeated identical requests are answered from the memo store.
    pub memoize: bool,
    /// Declared input type, when inputs are checked at submission.
    pub input_check: Option<Arc<TypeSpec>>,
    /// The published record (none for builtins).
    pub record: Option<Arc<ServableRecord>>,
    /// Slots kept warm for it ahead of need (`min_warm_slots`).
    pub min_warm_slots: u32,
    /// An idle warm process of it is let go after this long, µs
    /// (`warm_idle_s`); none: kept.
    pub warm_idle_us: Option<u64>,
    /// For pipelines: the steps, in order.
    pub steps: Option<Arc<[ServableInfo]>>,
}

impl ServableInfo {
    /// A servable with no published record (a builtin, or one a restart
    /// can no longer resolve): batched by `batch`, the default latency
    /// target, no memo and no input check.
    pub fn plain(name: Arc<str>, batch: BatchRule) -> ServableInfo {
        ServableInfo {
            name,
            batch,
            latency_target_us: DEFAULT_LATENCY_TARGET_US,
            memoize: false,
            input_check: None,
            record: None,
            steps: None,
            min_warm_slots: 0,
            warm_idle_us: None,
        }
    }
}

/// The latency bound of adaptive batching for servables that set none, µs.
const DEFAULT_LATENCY_TARGET_US: u64 = 100_000;

/// Builtins and published versions.
#[derive(Clone, Debug)]
pub struct Catalog {
    builtins: HashMap<String, ServableInfo>,
    published: BTreeMap<String, BTreeMap<semver::Version, Arc<ServableRecord>>>,
    overrides: BTreeMap<String, ServableOverride>,
}

fn rule(max_batch: u32, delay: BatchDelay) -> BatchRule {
    BatchRule {
        max_batch,
        delay: match delay {
            BatchDelay::Fixed(ms) => Delay::Fixed(ms * 1000),
            BatchDelay::Auto => Delay::Auto,
        },
    }
}

/// Applies the site's overrides for `name` (a servable name, no version).
fn apply(info: &mut ServableInfo, o: Option<&ServableOverride>) {
    let Some(o) = o else { return };
    if let Some(m) = o.memoize {
        info.memoize = m;
    }
    if let Some(n) = o.max_batch_size {
        info.batch.max_batch = n;
    }
    if let Some(d) = o.max_batch_delay_ms {
        info.batch.delay = rule(info.batch.max_batch, d).delay;
    }
    if let Some(ms) = o.latency_target_ms {
        info.latency_target_us = ms * 1000;
    }
    if let Some(n) = o.min_warm_slots {
        info.min_warm_slots = n;
    }
    if let Some(s) = o.warm_idle_s {
        info.warm_idle_us = Some(s.saturating_mul(1_000_000));
    }
}

fn not_found(message: String) -> Refusal {
    (ApiErrorKind::NotFound, message)
}

impl Catalog {
    /// The builtins plus `records` (as recovered from the store), with the
    /// site's serving-option `overrides` by servable name.
    pub fn new(
        records: Vec<ServableRecord>,
        overrides: BTreeMap<String, ServableOverride>,
    ) -> Self {
        let builtins = BUILTINS
            .iter()
            .map(|b| {
                let mut info = ServableInfo::plain(
                    Arc::from(b.name),
                    BatchRule {
                        max_batch: b.max_batch_size,
                        delay: Delay::Fixed(0),
                    },
                );
                apply(&mut info, overrides.get(b.name));
                (b.name.to_owned(), info)
            })
            .collect();
        let mut catalog = Catalog {
            builtins,
            published: BTreeMap::new(),
            overrides,
        };
        for record in records {
            if let Ok(version) = semver::Version::parse(&record.spec.version) {
                catalog
                    .published
                    .entry(record.spec.name.clone())
                    .or_default()
                    .insert(version, Arc::new(record));
            }
        }
        catalog
    }

    /// The versions of `name` if the caller sees it (visibility is the
    /// servable's, the same in every version: its latest says).
    fn visible(
        &self,
        name: &str,
        sees: Sees<'_>,
    ) -> Option<&BTreeMap<semver::Version, Arc<ServableRecord>>> {
        self.published
            .get(name)
            .filter(|v| v.values().next_back().is_some_and(|r| sees(r)))
    }

    /// The refusal for a name nobody known to the caller has.
    fn unknown(&self, name: &str, sees: Sees<'_>) -> Refusal {
        let mut known: Vec<&str> = self
            .builtins
            .keys()
            .map(String::as_str)
            .chain(
                self.published
                    .iter()
                    .filter(|(_, v)| v.values().next_back().is_some_and(|r| sees(r)))
                    .map(|(k, _)| k.as_str()),
            )
            .collect();
        known.sort_unstable();
        not_found(format!(
            "unknown servable `{name}` (known: {}); publish it with `flotilla servable publish DIR`",
            known.join(", ")
        ))
    }

    /// Reads a requested reference: a name, and a version when one is
    /// written. The wildcard names nothing the catalog knows; a missing name
    /// is an unknown (empty) one, and a missing version one that is not a
    /// semantic version, as `find` says.
    fn named(&self, requested: &str, sees: Sees<'_>) -> Result<(String, Option<String>), Refusal> {
        match ServableRef::parse(requested) {
            Ok(ServableRef::Latest(name)) => Ok((name, None)),
            Ok(ServableRef::Exact { name, version }) => Ok((name, Some(version))),
            Ok(ServableRef::Any) => Err(self.unknown(requested, sees)),
            Err(ServableRefError::Empty | ServableRefError::NoName(_)) => {
                Err(self.unknown("", sees))
            }
            Err(ServableRefError::NoVersion { name }) => Ok((name, Some(String::new()))),
        }
    }

    fn find(
        &self,
        name: &str,
        version: Option<&str>,
        sees: Sees<'_>,
    ) -> Result<&Arc<ServableRecord>, Refusal> {
        let versions = self
            .visible(name, sees)
            .ok_or_else(|| self.unknown(name, sees))?;
        match version {
            None => versions
                .values()
                .next_back()
                .ok_or_else(|| not_found(format!("servable `{name}` has no versions"))),
            Some(v) => {
                let parsed = semver::Version::parse(v).map_err(|e| {
                    (
                        ApiErrorKind::BadRequest,
                        format!("`{name}@{v}`: `{v}` is not a semantic version: {e}"),
                    )
                })?;
                versions.get(&parsed).ok_or_else(|| {
                    let known: Vec<String> = versions.keys().map(ToString::to_string).collect();
                    not_found(format!(
                        "servable `{name}` has no version {v} (published: {})",
                        known.join(", ")
                    ))
                })
            }
        }
    }

    /// The published record of `NAME` (latest) or `NAME@VERSION`.
    pub fn record(&self, requested: &str) -> Result<Arc<ServableRecord>, Refusal> {
        self.record_for(requested, &everything)
    }

    /// [`Catalog::record`] for a caller who sees what `sees` lets through.
    pub fn record_for(
        &self,
        requested: &str,
        sees: Sees<'_>,
    ) -> Result<Arc<ServableRecord>, Refusal> {
        let (name, version) = self.named(requested, sees)?;
        self.find(&name, version.as_deref(), sees).cloned()
    }

    /// The latest record of the published servable `name` (no version),
    /// whoever may see it.
    pub fn latest_of(&self, name: &str) -> Option<&Arc<ServableRecord>> {
        self.published
            .get(name)
            .and_then(|v| v.values().next_back())
    }

    /// Every version of the published servable `name`, oldest first.
    pub fn versions_of(&self, name: &str) -> Vec<Arc<ServableRecord>> {
        self.published
            .get(name)
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaces a published version's record (same id) with `record`, as a
    /// change of its access does; false when there is no such version.
    pub fn replace(&mut self, record: ServableRecord) -> bool {
        let Ok(version) = semver::Version::parse(&record.spec.version) else {
            return false;
        };
        match self
            .published
            .get_mut(&record.spec.name)
            .and_then(|v| v.get_mut(&version))
        {
            Some(slot) => {
                *slot = Arc::new(record);
                true
            }
            None => false,
        }
    }

    /// True if the servable `id` (a builtin's name, `NAME@VERSION`, or a
    /// name) exists for a caller who sees what `sees` lets through.
    pub fn sees_id(&self, id: &str, sees: Sees<'_>) -> bool {
        self.is_builtin(id) || self.record_for(id, sees).is_ok()
    }

    /// True if `name` is a builtin (builtins have no published record).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtins.contains_key(name)
    }

    /// Resolves a requested name, or says why it cannot be served.
    pub fn resolve(&self, requested: &str) -> Result<ServableInfo, Refusal> {
        self.resolve_for(requested, &everything)
    }

    /// [`Catalog::resolve`] for a caller who sees what `sees` lets through
    /// (a pipeline's steps are its owner's choice, and resolve whoever
    /// calls it).
    pub fn resolve_for(&self, requested: &str, sees: Sees<'_>) -> Result<ServableInfo, Refusal> {
        let (name, version) = self.named(requested, sees)?;
        let (name, version) = (name.as_str(), version.as_deref());
        if let Some(info) = self.builtins.get(name) {
            return match version {
                None => Ok(info.clone()),
                Some(v) => Err((
                    ApiErrorKind::BadRequest,
                    format!(
                        "servable `{name}` is builtin and has no versions; ask for `{name}`, not `{name}@{v}`"
                    ),
                )),
            };
        }
        let record = self.find(name, version, sees)?;
        let steps = match &record.spec.runtime {
            Runtime::Pipeline { steps } => {
                let resolved = steps
                    .iter()
                    .map(|step| {
                        self.resolve(step).map_err(|(_, why)| {
                            (
                                ApiErrorKind::NotFound,
                                format!(
                                    "pipeline `{}` uses `{step}`, which cannot be run: {why}",
                                    record.id()
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some(Arc::from(resolved))
            }
            _ => None,
        };
        let options = &record.spec.options;
        let mut info = ServableInfo {
            name: Arc::from(record.id()),
            batch: rule(options.max_batch_size, options.max_batch_delay_ms),
            latency_target_us: options.latency_target_ms * 1000,
            memoize: options.memoize,
            input_check: options
                .validate_input
                .then(|| Arc::new(record.spec.input.clone())),
            record: Some(record.clone()),
            steps,
            min_warm_slots: 0,
            warm_idle_us: None,
        };
        apply(&mut info, self.overrides.get(name));
        Ok(info)
    }

    /// Adds a version; `Ok(false)` when the same content is already there.
    /// A pipeline's steps must be servables its publisher sees (`sees`).
    pub fn publish(&mut self, record: ServableRecord, sees: Sees<'_>) -> Result<bool, Refusal> {
        let version = semver::Version::parse(&record.spec.version)
            .map_err(|e| (ApiErrorKind::BadRequest, format!("{}: {e}", record.id())))?;
        if let Runtime::Pipeline { steps } = &record.spec.runtime {
            for step in steps {
                self.resolve_for(step, sees)
                    .map_err(|(kind, why)| (kind, format!("pipeline step `{step}`: {why}")))?;
            }
        }
        let versions = self.published.entry(record.spec.name.clone()).or_default();
        if let Some(existing) = versions.get(&version) {
            return if existing.same_content(&record) {
                Ok(false)
            } else {
                Err((
                    ApiErrorKind::Conflict,
                    format!(
                        "{} is already published with different content; published versions never change, so publish it as a new version",
                        record.id()
                    ),
                ))
            };
        }
        versions.insert(version, Arc::new(record));
        Ok(true)
    }

    /// Removes `NAME@VERSION`.
    pub fn remove(&mut self, id: &str) -> Result<Arc<ServableRecord>, Refusal> {
        let (name, version) = self.named(id, &everything)?;
        let (name, version) = (name.as_str(), version.as_deref());
        let Some(version) = version else {
            return Err((
                ApiErrorKind::BadRequest,
                format!("say which version to remove: `{name}@VERSION`"),
            ));
        };
        let record = self.find(name, Some(version), &everything)?.clone();
        if let Some(versions) = self.published.get_mut(name) {
            if let Ok(v) = semver::Version::parse(version) {
                versions.remove(&v);
            }
            if versions.is_empty() {
                self.published.remove(name);
            }
        }
        Ok(record)
    }

    /// Published pipelines that have `id` as a step.
    pub fn pipelines_using(&self, id: &str) -> Vec<String> {
        self.all()
            .filter(|r| matches!(&r.spec.runtime, Runtime::Pipeline { steps } if steps.iter().any(|s| s == id)))
            .map(|r| r.id())
            .collect()
    }

    /// Every published version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ServableRecord>> {
        self.published.values().flat_map(|v| v.values())
    }

    /// The latest version of every published servable.
    pub fn latest(&self) -> impl Iterator<Item = &Arc<ServableRecord>> {
        self.published
            .values()
            .filter_map(|v| v.values().next_back())
    }

    /// Versions of `name`, oldest first.
    pub fn versions(&self, name: &str, sees: Sees<'_>) -> Result<Vec<String>, Refusal> {
        self.find(name, None, sees)?;
        Ok(self
            .published
            .get(name)
            .map(|v| v.keys().map(ToString::to_string).collect())
            .unwrap_or_default())
    }
}

/// Accelerators one call of canonical servable `name` needs of the slot
/// that runs it (`[resources] gpus`; builtins need none).
pub fn accelerators_needed(catalog: &Catalog, name: &str) -> u32 {
    if catalog.is_builtin(name) {
        return 0;
    }
    catalog.record(name).map_or(0, |r| r.spec.resources.gpus)
}

/// True if a worker offering `offered` can run canonical servable `name`
/// (the wildcard stands for every published servable, that is, every one
/// that is not a builtin).
pub fn worker_can_run(catalog: &Catalog, offered: &[ServableRef], name: &str) -> bool {
    offered.iter().any(|s| match s {
        ServableRef::Any => !catalog.is_builtin(name),
        named => named.spells(name),
    })
}
