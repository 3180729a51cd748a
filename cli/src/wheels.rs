//! Capturing a servable's Python environment at publication: the declared
//! packages pinned to the versions installed in the publisher's `python3`,
//! and the wheels that satisfy them (with every dependency, and `msgpack`
//! for the servable shim) downloaded by pip and stored in the object store
//! by hash, so a compute node without internet access installs exactly
//! what the servable was published with.
//!
//! pip is configured the way pip always is (`pip.conf`, `PIP_INDEX_URL`,
//! `PIP_FIND_LINKS`, `PIP_NO_INDEX`, …); nothing here adds options of its
//! own for where packages come from.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow};
use flotilla_protocol::environment::{Environment, EnvironmentLock, Requirement, pip_missing};
use flotilla_protocol::servable::FileEntry;

use crate::Failure;

/// The package the servable shim (`flotilla_servable`) imports.
const SHIM_NEEDS: &str = "msgpack";

/// Prints, as JSON, the installed version (or null) of each distribution
/// named on the command line.
const INSTALLED_VERSIONS: &str = r#"
import json, sys
from importlib import metadata
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"#;

/// What was captured.
#[derive(Debug)]
pub struct Captured {
    /// For the record.
    pub lock: EnvironmentLock,
    /// Bytes of wheels stored.
    pub bytes: u64,
}

/// Captures `env` (None when it needs no Python environment: an image):
/// pins its packages to the versions `python3` has, and unless `wheels` is
/// false downloads the wheels and stores each with `store` (which returns
/// its blake3 and size).
pub fn capture(
    env: &Environment,
    wheels: bool,
    store: impl Fn(&Path, &str) -> anyhow::Result<(String, u64)>,
) -> Result<Option<Captured>, Failure> {
    if !env.wants_venv() {
        return Ok(None);
    }
    let mut declared = env
        .packages
        .iter()
        .map(|p| Requirement::parse(p).map_err(|e| missing(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if !declared.iter().any(|r| r.normal_name() == SHIM_NEEDS) {
        declared.push(Requirement {
            name: SHIM_NEEDS.to_owned(),
            extras: String::new(),
            specifier: String::new(),
        });
    }
    let installed = installed_versions(&declared).map_err(other)?;
    let requirements: Vec<String> = declared
        .iter()
        .map(|r| match installed.get(&r.name).and_then(|v| v.as_str()) {
            Some(version) => r.pinned(version),
            None => r.to_string(),
        })
        .collect();
    for (r, pinned) in declared.iter().zip(&requirements) {
        if *pinned == r.to_string() {
            eprintln!(
                "environment: `{}` is not installed for python3 here; the node gets what its index has",
                r.name
            );
        }
    }
    let mut lock = EnvironmentLock {
        requirements,
        wheels: Vec::new(),
    };
    if !wheels {
        eprintln!(
            "environment: {} (no wheels captured: nodes install from their package index)",
            lock.requirements.join(" ")
        );
        return Ok(Some(Captured { lock, bytes: 0 }));
    }
    let dest = tempfile::Builder::new()
        .prefix("flotilla-wheels-")
        .tempdir()
        .context("cannot make a directory for the wheels")
        .map_err(other)?;
    download(&lock.requirements, dest.path())?;
    let mut names: Vec<String> = std::fs::read_dir(dest.path())
        .and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .with_context(|| format!("cannot list {}", dest.path().display()))
        .map_err(other)?;
    names.retain(|n| n.ends_with(".whl"));
    names.sort();
    let mut bytes = 0;
    for name in names {
        let (blake3, size) = store(dest.path(), &name).map_err(other)?;
        bytes += size;
        lock.wheels.push(FileEntry {
            path: name,
            blake3,
            size,
        });
    }
    eprintln!(
        "environment: {} ({} wheels, {bytes} bytes, captured)",
        lock.requirements.join(" "),
        lock.wheels.len()
    );
    Ok(Some(Captured { lock, bytes }))
}

/// The version `python3` has of each requirement's distribution (JSON
/// null when it has none).
fn installed_versions(
    declared: &[Requirement],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(INSTALLED_VERSIONS)
        .args(declared.iter().map(|r| &r.name))
        .stdin(Stdio::null())
        .output()
        .context("publishing an [environment] needs python3 on PATH (its packages' versions are pinned to the ones installed there)")?;
    if !out.status.success() {
        return Err(anyhow!(
            "python3 cannot list its installed packages: {}",
            last_lines(&String::from_utf8_lossy(&out.stderr), 3)
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .context("python3 listed its installed packages in a form not understood")?;
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(anyhow!(
            "python3 listed its installed packages in a form not understood"
        )),
    }
}

/// `pip download`s binary wheels of `requirements` and their dependencies
/// into `dest`.
fn download(requirements: &[String], dest: &Path) -> Result<(), Failure> {
    eprintln!("environment: downloading wheels with pip");
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--only-binary=:all:", "--dest"])
        .arg(dest)
        .args(["--progress-bar", "off", "--disable-pip-version-check"])
        .args(requirements)
        .stdin(Stdio::null())
        .output()
        .context("cannot run python3 -m pip")
        .map_err(other)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    match pip_missing(&stderr) {
        Some(what) => Err(missing(format!(
            "{what} (only binary wheels are captured; pip reads its index from pip.conf and PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX; `--no-wheels` publishes the requirements alone)"
        ))),
        None => Err(other(anyhow!(
            "pip download failed ({}): {}",
            out.status,
            last_lines(&stderr, 5)
        ))),
    }
}

/// A package or version that cannot be had: the servable's spec (or the
/// publisher's package index) must change.
fn missing(what: String) -> Failure {
    Failure::Usage(anyhow!("cannot capture the servable's environment: {what}"))
}

/// Anything else (no python3, pip failed otherwise, the store).
fn other(e: anyhow::Error) -> Failure {
    Failure::Other(e.context("cannot capture the servable's environment"))
}

/// The last `n` non-empty lines of `text`, joined.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}
