//! Ranked free-text search over the catalog.
//!
//! Every query word is looked for (case-insensitively, as a prefix of a word)
//! in each servable's fields, which weigh differently: name and title most,
//! then domains and creators, then the description. A servable's score is the
//! sum over query words; servables matching no word are left out. Filters
//! (domain, model type, author) must all hold. Ties go to the name's order.

use flotilla_protocol::client::{SearchQuery, ServableSummary};
use flotilla_protocol::servable::ServableRecord;

const WEIGHT_NAME: f64 = 4.0;
const WEIGHT_TITLE: f64 = 3.0;
const WEIGHT_DOMAIN: f64 = 2.0;
const WEIGHT_CREATOR: f64 = 2.0;
const WEIGHT_DESCRIPTION: f64 = 1.0;

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn hits(field: &str, word: &str) -> bool {
    words(field).iter().any(|w| w.starts_with(word))
}

/// A summary of `r` with `score`.
pub fn summary(r: &ServableRecord, score: f64) -> ServableSummary {
    ServableSummary {
        name: r.spec.name.clone(),
        version: r.spec.version.clone(),
        title: r.spec.title.clone(),
        model_type: r.spec.model_type.clone(),
        domains: r.spec.domains.clone(),
        creators: r.spec.creators.iter().map(|c| c.name.clone()).collect(),
        score,
    }
}

/// Searches `records`, best first.
pub fn search<'a>(
    records: impl Iterator<Item = &'a ServableRecord>,
    query: &SearchQuery,
) -> Vec<ServableSummary> {
    let wanted = words(&query.text);
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b.trim());
    let mut found: Vec<ServableSummary> = records
        .filter(|r| {
            query
                .domain
                .as_deref()
                .is_none_or(|d| r.spec.domains.iter().any(|x| eq(x, d)))
                && query
                    .model_type
                    .as_deref()
                    .is_none_or(|t| eq(&r.spec.model_type, t))
                && query.author.as_deref().is_none_or(|a| {
                    let a = a.to_lowercase();
                    r.spec
                        .creators
                        .iter()
                        .any(|c| c.name.to_lowercase().contains(&a))
                })
        })
        .filter_map(|r| {
            let s = &r.spec;
            let mut score = 0.0;
            for w in &wanted {
                let mut best: f64 = 0.0;
                if hits(&s.name, w) {
                    best = best.max(WEIGHT_NAME);
                }
                if hits(&s.title, w) {
                    best = best.max(WEIGHT_TITLE);
                }
                if s.domains.iter().any(|d| hits(d, w)) {
                    best = best.max(WEIGHT_DOMAIN);
                }
                if s.creators.iter().any(|c| {
                    hits(&c.name, w) || c.affiliation.as_deref().is_some_and(|a| hits(a, w))
                }) {
                    best = best.max(WEIGHT_CREATOR);
                }
                if hits(&s.description, w) {
                    best = best.max(WEIGHT_DESCRIPTION);
                }
                score += best;
            }
            (wanted.is_empty() || score > 0.0).then(|| summary(r, score))
        })
        .collect();
    found.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.version.cmp(&b.version))
    });
    found
}
