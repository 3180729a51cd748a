//! What a servable needs of a node's software, and what publishing
//! captured of it.
//!
//! A `servable.toml` may declare an `[environment]`: a version requirement
//! on the node's Python and the packages the servable imports, or a
//! container image to run it in ([`Environment`]). Publishing captures the
//! packages as wheels in the object store and records them in the
//! servable's record ([`EnvironmentLock`]), so a compute node without
//! internet access can install exactly what the publisher had. The parsers
//! here (Python version requirements, pip requirement strings, pip's "no
//! such package" message) are shared by the CLI that publishes, the daemon
//! that checks the record, and the worker that prepares the environment.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::servable::FileEntry;

/// The `[environment]` table of a `servable.toml`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Environment {
    /// A requirement on the node's Python (`">=3.9"`, `">=3.9,<3.13"`),
    /// checked before anything is installed.
    pub python: Option<String>,
    /// pip requirement strings (`"numpy"`, `"scikit-learn>=1.3"`),
    /// installed into a virtual environment on each node.
    pub packages: Vec<String>,
    /// A container image (`"docker://python:3.12"`) to run the servable
    /// in with the site's container runtime; exclusive with `packages`.
    pub image: Option<String>,
}

impl Environment {
    /// Whether the node prepares a Python virtual environment for it (an
    /// image brings its own software).
    pub fn wants_venv(&self) -> bool {
        self.image.is_none()
    }
}

/// What publishing captured of an environment: the requirements as the
/// node must install them and the wheels that satisfy them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct EnvironmentLock {
    /// The declared packages, each pinned to the version installed where
    /// it was published (when it was installed there), and `msgpack` for
    /// the servable shim.
    pub requirements: Vec<String>,
    /// Wheels that satisfy `requirements` with all their dependencies,
    /// stored in the object store by blake3 (`path` is the wheel's file
    /// name); empty when published with `--no-wheels` (nodes install from
    /// their package index).
    pub wheels: Vec<FileEntry>,
}

/// A requirement that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}`: {reason}")]
pub struct RequirementError {
    /// The requirement as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

fn bad(text: &str, reason: impl Into<String>) -> RequirementError {
    RequirementError {
        text: text.to_owned(),
        reason: reason.into(),
    }
}

/// Comparison operators of a version requirement, longest first so that
/// `>=` is not read as `>`.
const OPERATORS: &[(&str, Op)] = &[
    ("===", Op::Arbitrary),
    ("~=", Op::Compatible),
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("<", Op::Lt),
    (">", Op::Gt),
];

/// A comparison operator of a version requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==` (with `.*`: the same prefix).
    Eq,
    /// `!=` (with `.*`: another prefix).
    Ne,
    /// `<=`.
    Le,
    /// `>=`.
    Ge,
    /// `<`.
    Lt,
    /// `>`.
    Gt,
    /// `~=`: at least this version, within its last-but-one component.
    Compatible,
    /// `===`: the same text (pip's arbitrary equality; not for Python).
    Arbitrary,
}

/// One clause of a version requirement (`>=3.9`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// The comparison.
    pub op: Op,
    /// The release numbers compared against (`3.9` is `[3, 9]`).
    pub release: Vec<u64>,
    /// Whether it ends in `.*` (only with `==` and `!=`).
    pub wildcard: bool,
}

/// A requirement on the node's Python version: clauses that must all hold,
/// written comma-joined (`">=3.9,<3.13"`, `"==3.11.*"`, `"~=3.10"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PythonRequirement {
    clauses: Vec<Clause>,
    text: String,
}

impl fmt::Display for PythonRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Release numbers of a version (`3.11.7`); `None` if it is not one.
pub fn parse_release(text: &str) -> Option<Vec<u64>> {
    let parts: Option<Vec<u64>> = text
        .split('.')
        .map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9 {
                None
            } else {
                p.parse().ok()
            }
        })
        .collect();
    parts.filter(|p| !p.is_empty())
}

/// Compares release numbers, the shorter padded with zeros (`3.9` equals
/// `3.9.0`).
fn compare(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            a.get(i)
                .copied()
                .unwrap_or(0)
                .cmp(&b.get(i).copied().unwrap_or(0))
        })
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

impl Clause {
    fn parse(whole: &str, text: &str) -> Result<Clause, RequirementError> {
        let text = text.trim();
        let Some((sym, op)) = OPERATORS.iter().find(|(sym, _)| text.starts_with(sym)) else {
            return Err(bad(
                whole,
                format!(
                    "`{text}` does not start with a comparison (one of >=, <=, ==, !=, <, >, ~=)"
                ),
            ));
        };
        if *op == Op::Arbitrary {
            return Err(bad(whole, "`===` compares text; use `==` for a version"));
        }
        let version = text[sym.len()..].trim();
        let (version, wildcard) = match version.strip_suffix(".*") {
            Some(v) => (v, true),
            None => (version, false),
        };
        if wildcard && !matches!(op, Op::Eq | Op::Ne) {
            return Err(bad(
                whole,
                format!("`{text}`: a `.*` prefix works only with `==` and `!=`"),
            ));
        }
        let Some(release) = parse_release(version) else {
            return Err(bad(
                whole,
                format!("`{version}` is not a version (numbers joined by dots, like 3.9)"),
            ));
        };
        if *op == Op::Compatible && release.len() < 2 {
            return Err(bad(
                whole,
                format!("`{text}`: `~=` needs at least two numbers (like ~=3.9)"),
            ));
        }
        Ok(Clause {
            op: *op,
            release,
            wildcard,
        })
    }

    /// Whether `version` satisfies the clause.
    pub fn matches(&self, version: &[u64]) -> bool {
        use std::cmp::Ordering::*;
        let prefix = || {
            self.release
                .iter()
                .enumerate()
                .all(|(i, r)| version.get(i).copied().unwrap_or(0) == *r)
        };
        match self.op {
            Op::Eq if self.wildcard => prefix(),
            Op::Ne if self.wildcard => !prefix(),
            Op::Eq | Op::Arbitrary => compare(version, &self.release) == Equal,
            Op::Ne => compare(version, &self.release) != Equal,
            Op::Le => compare(version, &self.release) != Greater,
            Op::Ge => compare(version, &self.release) != Less,
            Op::Lt => compare(version, &self.release) == Less,
            Op::Gt => compare(version, &self.release) == Greater,
            Op::Compatible => {
                let head = &self.release[..self.release.len() - 1];
                compare(version, &self.release) != Less
                    && head
                        .iter()
                        .enumerate()
                        .all(|(i, r)| version.get(i).copied().unwrap_or(0) == *r)
            }
        }
    }
}

impl PythonRequirement {
    /// Parses `">=3.9"` or comma-joined clauses.
    pub fn parse(text: &str) -> Result<PythonRequirement, RequirementError> {
        if text.trim().is_empty() {
            return Err(bad(text, "empty: write a requirement such as \">=3.9\""));
        }
        let clauses = text
            .split(',')
            .map(|c| Clause::parse(text, c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PythonRequirement {
            clauses,
            text: text.trim().to_owned(),
        })
    }

    /// Whether Python `version` (`3.11.7`) satisfies every clause.
    pub fn matches(&self, version: &[u64]) -> bool {
        self.clauses.iter().all(|c| c.matches(version))
    }
}

/// A pip requirement string, checked for shape: a distribution name,
/// optional extras, optional version clauses. URLs, paths and environment
/// markers are refused: a node installs from the wheels captured at
/// publication (or an index), so only names and versions make sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The distribution name as written (`scikit-learn`).
    pub name: String,
    /// Extras, with their brackets (`[distributed]`), or empty.
    pub extras: String,
    /// The version clauses as written (`>=1.3`), or empty.
    pub specifier: String,
}

impl Requirement {
    /// Parses `text`, naming what is wrong.
    pub fn parse(text: &str) -> Result<Requirement, RequirementError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(bad(text, "empty: write a package name such as \"numpy\""));
        }
        if t.contains(';') {
            return Err(bad(
                text,
                "environment markers (`; …`) are not supported: list the packages this servable needs",
            ));
        }
        if t.contains('@') || t.contains("://") || t.starts_with('.') || t.starts_with('/') {
            return Err(bad(
                text,
                "URLs and paths are not supported: give a package name and version clauses (wheels are captured at publication)",
            ));
        }
        let end = t
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .unwrap_or(t.len());
        let name = &t[..end];
        let first_last_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if name.is_empty() || !first_last_ok {
            return Err(bad(
                text,
                "does not start with a package name (letters, digits, '.', '_', '-', beginning and ending with a letter or digit)",
            ));
        }
        let mut rest = t[end..].trim_start();
        let mut extras = String::new();
        if let Some(after) = rest.strip_prefix('[') {
            let Some(close) = after.find(']') else {
                return Err(bad(text, "extras are not closed with `]`"));
            };
            let list = &after[..close];
            let names_ok = list.split(',').all(|e| {
                let e = e.trim();
                !e.is_empty()
                    && e.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            });
            if !names_ok {
                return Err(bad(text, format!("`[{list}]` is not a list of extras")));
            }
            extras = format!("[{}]", list.replace(' ', ""));
            rest = after[close + 1..].trim_start();
        }
        let specifier = rest.trim().to_owned();
        if !specifier.is_empty() {
            for clause in specifier.split(',') {
                let clause = clause.trim();
                let Some((sym, _)) = OPERATORS.iter().find(|(sym, _)| clause.starts_with(sym))
                else {
                    return Err(bad(
                        text,
                        format!(
                            "`{clause}` is not a version clause (one of ==, !=, <=, >=, <, >, ~= and a version)"
                        ),
                    ));
                };
                let version = clause[sym.len()..].trim();
                let version_ok = !version.is_empty()
                    && version.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '*' | '+' | '!' | '-' | '_')
                    });
                if !version_ok {
                    return Err(bad(
                        text,
                        format!("`{clause}`: `{version}` is not a version"),
                    ));
                }
            }
        }
        Ok(Requirement {
            name: name.to_owned(),
            extras,
            specifier,
        })
    }

    /// The requirement pinned to `version` as well (`scikit-learn>=1.3,==1.5.2`):
    /// the declared clauses still hold, so a publisher whose copy does not
    /// satisfy them is told by pip.
    pub fn pinned(&self, version: &str) -> String {
        let sep = if self.specifier.is_empty() { "" } else { "," };
        format!(
            "{}{}{}{sep}=={version}",
            self.name, self.extras, self.specifier
        )
    }

    /// The name in pip's normal form (lower case, runs of `-_.` as `-`),
    /// for comparing names.
    pub fn normal_name(&self) -> String {
        normalize(&self.name)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.extras, self.specifier)
    }
}

/// A distribution name in pip's normal form (PEP 503: lower case, runs of
/// `-`, `_` and `.` as one `-`).
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// What pip's error output says it could not find, in words for a person
/// (`pip found no package named `foo``), or `None` when the output holds
/// no such complaint (the failure is something else).
pub fn pip_missing(stderr: &str) -> Option<String> {
    const NOT_FOUND: &str = "No matching distribution found for ";
    const VERSIONS: &str = "Could not find a version that satisfies the requirement ";
    let missing = stderr.lines().find_map(|l| {
        l.find(NOT_FOUND)
            .map(|i| l[i + NOT_FOUND.len()..].trim().to_owned())
    })?;
    let versions = stderr.lines().find(|l| l.contains(VERSIONS)).and_then(|l| {
        let start = l.find("(from versions:")? + "(from versions:".len();
        let end = l[start..].find(')')? + start;
        Some(l[start..end].trim().to_owned())
    });
    let name = Requirement::parse(&missing).map(|r| r.name).ok();
    Some(match (versions.as_deref(), name) {
        (Some("none") | None, Some(name)) if name == missing => {
            format!("pip found no package named `{name}`")
        }
        (Some("none"), Some(name)) => {
            format!("pip found no package named `{name}` (asked for `{missing}`)")
        }
        (Some(v), _) => {
            format!("pip found no version of `{missing}` (versions it found: {v})")
        }
        (None, _) => format!("pip found no distribution of `{missing}`"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<u64> {
        parse_release(s).unwrap()
    }

    #[test]
    fn python_requirements_compare_release_numbers() {
        let r = PythonRequirement::parse(">=3.9").unwrap();
        assert!(r.matches(&v("3.9")) && r.matches(&v("3.11.7")) && r.matches(&v("4.0")));
        assert!(!r.matches(&v("3.8.18")));
        let r = PythonRequirement::parse(" >=3.9 , <3.13 ").unwrap();
        assert!(r.matches(&v("3.12.1")) && !r.matches(&v("3.13.0")));
        let r = PythonRequirement::parse("==3.11.*").unwrap();
        assert!(r.matches(&v("3.11.7")) && !r.matches(&v("3.1.1")) && !r.matches(&v("3.12")));
        let r = PythonRequirement::parse("==3.11").unwrap();
        assert!(r.matches(&v("3.11.0")) && !r.matches(&v("3.11.7")));
        let r = PythonRequirement::parse("!=3.10.*").unwrap();
        assert!(r.matches(&v("3.11.7")) && !r.matches(&v("3.10.2")));
        let r = PythonRequirement::parse("~=3.10").unwrap();
        assert!(r.matches(&v("3.10.0")) && r.matches(&v("3.12")) && !r.matches(&v("4.0")));
        assert!(!r.matches(&v("3.9.9")));
        let r = PythonRequirement::parse("~=3.10.2").unwrap();
        assert!(r.matches(&v("3.10.9")) && !r.matches(&v("3.11.0")));
        let r = PythonRequirement::parse("<=3.10,>3.8").unwrap();
        assert!(r.matches(&v("3.10")) && r.matches(&v("3.9")) && !r.matches(&v("3.8")));
        assert_eq!(r.to_string(), "<=3.10,>3.8");
    }

    #[test]
    fn bad_python_requirements_say_what_is_wrong() {
        for (text, says) in [
            ("", "empty"),
            ("3.9", "does not start with a comparison"),
            (">=3.x", "`3.x` is not a version"),
            (">=", "`` is not a version"),
            (">=3.9,", "does not start with a comparison"),
            ("~=3", "at least two numbers"),
            (">=3.*", "only with `==` and `!=`"),
            ("===3.9", "compares text"),
            ("=>3.9", "does not start with a comparison"),
        ] {
            let e = PythonRequirement::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.starts_with(&format!("`{text}`")), "{e}");
        }
    }

    #[test]
    fn pip_requirements_are_checked_for_shape() {
        let r = Requirement::parse("scikit-learn>=1.3").unwrap();
        assert_eq!(
            (r.name.as_str(), r.specifier.as_str()),
            ("scikit-learn", ">=1.3")
        );
        assert_eq!(r.pinned("1.5.2"), "scikit-learn>=1.3,==1.5.2");
        let r = Requirement::parse("numpy").unwrap();
        assert_eq!(r.pinned("2.1.0"), "numpy==2.1.0");
        let r = Requirement::parse("dask[distributed, dataframe] >= 2024.1, <2025").unwrap();
        assert_eq!(r.extras, "[distributed,dataframe]");
        assert_eq!(r.to_string(), "dask[distributed,dataframe]>= 2024.1, <2025");
        assert_eq!(r.normal_name(), "dask");
        assert_eq!(normalize("Scikit_Learn..x"), "scikit-learn-x");
        Requirement::parse("torch==2.3.0+cpu").unwrap();
        for (text, says) in [
            ("", "empty"),
            ("-numpy", "does not start with a package name"),
            ("numpy; python_version<'3.9'", "markers"),
            ("pkg @ https://example.org/p.whl", "URLs and paths"),
            ("./wheels/p.whl", "URLs and paths"),
            ("numpy 1.0", "`1.0` is not a version clause"),
            ("numpy>=", "is not a version"),
            ("dask[distributed", "not closed"),
            ("dask[a b]", "not a list of extras"),
        ] {
            let e = Requirement::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn pips_complaints_name_the_package() {
        let none = "ERROR: Could not find a version that satisfies the requirement no-such-pkg-flotilla (from versions: none)\nERROR: No matching distribution found for no-such-pkg-flotilla\n";
        assert_eq!(
            pip_missing(none).unwrap(),
            "pip found no package named `no-such-pkg-flotilla`"
        );
        let pinned = "ERROR: Could not find a version that satisfies the requirement scikit-learn==9.9 (from versions: 1.4.2, 1.5.2)\nERROR: No matching distribution found for scikit-learn==9.9\n";
        assert_eq!(
            pip_missing(pinned).unwrap(),
            "pip found no version of `scikit-learn==9.9` (versions it found: 1.4.2, 1.5.2)"
        );
        let none_pinned = "ERROR: Could not find a version that satisfies the requirement nope==1.0 (from versions: none)\nERROR: No matching distribution found for nope==1.0";
        assert_eq!(
            pip_missing(none_pinned).unwrap(),
            "pip found no package named `nope` (asked for `nope==1.0`)"
        );
        assert_eq!(
            pip_missing("ERROR: Could not install packages due to an OSError"),
            None
        );
    }
}
