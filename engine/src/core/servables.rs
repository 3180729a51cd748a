//! Which servables the daemon accepts requests for, and how to batch them.
//!
//! Requests name a servable as `NAME` or `NAME@VERSION`; the daemon resolves
//! that to a canonical name once, at submission, so queues, batches and
//! workers all agree on what a task runs.

use std::collections::HashMap;
use std::sync::Arc;

use flotilla_protocol::builtin::BUILTINS;

/// A resolved servable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServableInfo {
    /// Canonical name workers are asked to run.
    pub name: Arc<str>,
    /// Most inputs per model call.
    pub max_batch_size: u32,
}

/// The servables the daemon knows.
#[derive(Clone, Debug)]
pub struct Servables {
    known: HashMap<String, ServableInfo>,
}

impl Servables {
    /// The builtin servables (`noop`, `echo`, `sleep`).
    pub fn builtins() -> Self {
        let known = BUILTINS
            .iter()
            .map(|b| {
                (
                    b.name.to_owned(),
                    ServableInfo {
                        name: Arc::from(b.name),
                        max_batch_size: b.max_batch_size,
                    },
                )
            })
            .collect();
        Servables { known }
    }

    /// Resolves a requested name, or says why it cannot be served.
    pub fn resolve(&self, requested: &str) -> Result<ServableInfo, String> {
        let (name, version) = match requested.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (requested, None),
        };
        match (self.known.get(name), version) {
            (Some(info), None) => Ok(info.clone()),
            (Some(_), Some(v)) => Err(format!(
                "servable `{name}` is builtin and has no versions; ask for `{name}`, not `{name}@{v}`"
            )),
            (None, _) => {
                let mut names: Vec<&str> = self.known.keys().map(String::as_str).collect();
                names.sort_unstable();
                Err(format!(
                    "unknown servable `{requested}` (known: {})",
                    names.join(", ")
                ))
            }
        }
    }
}

/// True if a worker advertising `offered` can run canonical servable `name`.
pub fn worker_can_run(offered: &[String], name: &str) -> bool {
    offered.iter().any(|s| s == "*" || s == name)
}
