//! Reading and checking `servable.toml`.
//!
//! The same checks run in `flotilla servable publish` (against the file, so
//! errors name its line and key) and in the daemon (against the record it is
//! sent, so a record from any client is held to the same rules).

use std::collections::HashSet;

use flotilla_protocol::builtin;
use flotilla_protocol::environment::{PythonRequirement, Requirement, normalize};
use flotilla_protocol::servable::{
    BatchDelay, DTYPES, MODEL_TYPES, Runtime, ServableRecord, ServableRef, ServableSpec, TypeSpec,
};

/// The file name a servable directory must contain.
pub const SPEC_FILE: &str = "servable.toml";

/// A spec that cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {}{message}", line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
pub struct SpecError {
    /// The file (or the record's id when there is no file).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, when the problem is one key.
    pub key: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Parses and checks the text of a `servable.toml`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<ServableSpec, SpecError> {
    let spec: ServableSpec = toml::from_str(text).map_err(|e| SpecError {
        file: file.to_owned(),
        line: None,
        key: None,
        message: crate::toml_locate::parse_error(text, &e),
    })?;
    check(&spec).map_err(|(key, message)| SpecError {
        file: file.to_owned(),
        line: crate::toml_locate::locate(text, &key),
        key: Some(key),
        message,
    })?;
    Ok(spec)
}

/// The `[access]` table of a `servable.toml`: who besides its owner may
/// see and invoke the servable. Users and groups are names or numeric ids,
/// resolved by the publishing client on the daemon's host.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSpec {
    /// `owner` (the default) or `public`.
    #[serde(default)]
    pub visibility: Option<flotilla_protocol::access::Visibility>,
    /// Further users.
    #[serde(default)]
    pub users: Vec<String>,
    /// Unix groups whose members may use it.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Share the memo entries among everybody who may invoke it (off: each
    /// caller's identical requests are answered only from its own).
    #[serde(default)]
    pub shared_memo: Option<bool>,
}

/// [`parse`], also reading the file's `[access]` table if it has one (it
/// is no part of the spec: the owner may change it without a new version).
pub fn parse_with_access(
    text: &str,
    file: &str,
) -> Result<(ServableSpec, Option<AccessSpec>), SpecError> {
    let whole = |message: String| SpecError {
        file: file.to_owned(),
        line: None,
        key: None,
        message,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| SpecError {
        file: file.to_owned(),
        line: None,
        key: None,
        message: crate::toml_locate::parse_error(text, &e),
    })?;
    let Some(access) = table.remove("access") else {
        return Ok((parse(text, file)?, None));
    };
    let access: AccessSpec = access.try_into().map_err(|e: toml::de::Error| SpecError {
        file: file.to_owned(),
        line: crate::toml_locate::locate(text, "access"),
        key: Some("access".into()),
        message: e.message().to_owned(),
    })?;
    let spec: ServableSpec = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| whole(e.message().to_owned()))?;
    check(&spec).map_err(|(key, message)| SpecError {
        file: file.to_owned(),
        line: crate::toml_locate::locate(text, &key),
        key: Some(key),
        message,
    })?;
    Ok((spec, Some(access)))
}

/// Checks a record received for publication.
pub fn check_record(record: &ServableRecord) -> Result<(), SpecError> {
    let err = |key: Option<String>, message: String| SpecError {
        file: record.id(),
        line: None,
        key,
        message,
    };
    check(&record.spec).map_err(|(k, m)| err(Some(k), m))?;
    if record.files.len() != record.spec.files.len()
        || record
            .files
            .iter()
            .zip(&record.spec.files)
            .any(|(f, p)| f.path != *p)
    {
        return Err(err(
            Some("files".into()),
            "the hashed files do not match the files the spec lists".into(),
        ));
    }
    for f in &record.files {
        if f.blake3.len() != 64 || !f.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                Some("files".into()),
                format!("`{}` has no valid blake3 hash", f.path),
            ));
        }
    }
    check_lock(record).map_err(|(k, m)| err(Some(k), m))
}

/// What publishing captured agrees with the declared environment: only a
/// Python environment has a lock, its requirements are requirements, its
/// wheels are wheel files with hashes.
fn check_lock(record: &ServableRecord) -> Result<(), Problem> {
    let Some(lock) = &record.lock else {
        return Ok(());
    };
    if !record
        .spec
        .environment
        .as_ref()
        .is_some_and(|e| e.wants_venv())
    {
        return problem(
            "environment",
            "the record captures packages but the spec declares no Python environment".into(),
        );
    }
    for r in &lock.requirements {
        Requirement::parse(r).map_err(|e| ("environment.packages".to_owned(), e.to_string()))?;
    }
    for w in &lock.wheels {
        let name_ok = w.path.ends_with(".whl")
            && !w.path.starts_with('.')
            && w.path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '!'));
        if !name_ok {
            return problem(
                "environment",
                format!("`{}` is not a wheel file name", w.path),
            );
        }
        if !flotilla_protocol::objects::is_object_name(&w.blake3) {
            return problem(
                "environment",
                format!("wheel `{}` has no valid blake3 hash", w.path),
            );
        }
    }
    Ok(())
}

/// The part of a `NAME` that is allowed.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

type Problem = (String, String);

/// The first problem with `spec`, if any, by key.
fn check(spec: &ServableSpec) -> Result<(), Problem> {
    check_identity(spec)?;
    check_creators(spec)?;
    check_type(&spec.input, "input")?;
    check_type(&spec.output, "output")?;
    check_runtime(spec)?;
    check_files(&spec.files)?;
    check_resources(spec)?;
    check_environment(spec)?;
    check_options(spec)
}

/// `[environment]`: a Python requirement that parses, packages that are
/// pip requirements (each named once), or an image; never packages and
/// an image together.
fn check_environment(spec: &ServableSpec) -> Result<(), Problem> {
    let Some(env) = &spec.environment else {
        return Ok(());
    };
    if matches!(spec.runtime, Runtime::Pipeline { .. }) {
        return problem(
            "environment",
            "a pipeline runs no process of its own; declare the environment of its steps".into(),
        );
    }
    if let Some(image) = &env.image {
        if image.trim().is_empty() {
            return problem(
                "environment.image",
                "must name an image (like \"docker://python:3.12\")".into(),
            );
        }
        if !env.packages.is_empty() {
            return problem(
                "environment.packages",
                "give either packages (installed into a virtual environment on each node) or an image, not both: the image brings its own packages".into(),
            );
        }
        if env.python.is_some() {
            return problem(
                "environment.python",
                "a Python requirement is checked against the node's Python, which an image does not use; give either python (and packages) or an image".into(),
            );
        }
        if spec.container.is_some() {
            return problem(
                "environment.image",
                "the image is also given in [container]; give it once, in [environment]".into(),
            );
        }
    }
    if env.image.is_none() && spec.container.is_some() {
        return problem(
            "environment",
            "a Python environment is made on the node, which a [container] image does not see; give the image as [environment] image instead, or drop [container]".into(),
        );
    }
    if let Some(python) = &env.python {
        PythonRequirement::parse(python)
            .map_err(|e| ("environment.python".to_owned(), e.to_string()))?;
    }
    let mut seen = HashSet::new();
    for p in &env.packages {
        let r = Requirement::parse(p)
            .map_err(|e| ("environment.packages".to_owned(), e.to_string()))?;
        if !seen.insert(normalize(&r.name)) {
            return problem(
                "environment.packages",
                format!("`{}` is listed twice", r.name),
            );
        }
    }
    Ok(())
}

/// Most accelerators one call may ask for: more than any node has.
const MAX_GPUS: u32 = 1_024;

/// What a call needs of its slot is something a slot can hold.
fn check_resources(spec: &ServableSpec) -> Result<(), Problem> {
    let gpus = spec.resources.gpus;
    if gpus > MAX_GPUS {
        return problem(
            "resources.gpus",
            format!(
                "must be at most {MAX_GPUS} (accelerators one call needs of its slot), got {gpus}"
            ),
        );
    }
    if gpus > 0 && matches!(spec.runtime, Runtime::Pipeline { .. }) {
        return problem(
            "resources.gpus",
            "a pipeline runs no process of its own; give its steps the accelerators they need"
                .into(),
        );
    }
    check_placement(spec)
}

/// Most pools or labels a servable may name.
const MAX_PLACEMENT: usize = 32;

/// The pools and labels a servable names are names a site file could give
/// (`crate::config`'s rule), and a pipeline, which runs nowhere itself,
/// names none: its steps say where they run.
fn check_placement(spec: &ServableSpec) -> Result<(), Problem> {
    let r = &spec.resources;
    for (key, count) in [
        ("resources.pools", r.pools.len()),
        ("resources.labels", r.labels.len()),
    ] {
        if count > MAX_PLACEMENT {
            return problem(key, format!("names {count}; at most {MAX_PLACEMENT}"));
        }
    }
    if let Some(bad) = r.pools.iter().find(|p| !crate::config::is_pool_name(p)) {
        return problem(
            "resources.pools",
            format!("`{bad}` is not a pool name (letters, digits, `-`, `_` or `.`, at most 64)"),
        );
    }
    if let Some((k, v)) = r
        .labels
        .iter()
        .find(|(k, v)| !crate::config::is_pool_name(k) || !crate::config::is_pool_name(v))
    {
        return problem(
            "resources.labels",
            format!(
                "`{k} = \"{v}\"`: label names and values are letters, digits, `-`, `_` or `.`, at most 64"
            ),
        );
    }
    if r.places() && matches!(spec.runtime, Runtime::Pipeline { .. }) {
        return problem(
            "resources.pools",
            "a pipeline runs no process of its own; give its steps the pools or labels they need"
                .into(),
        );
    }
    Ok(())
}

/// A problem at `key`.
fn problem(key: &str, message: String) -> Result<(), Problem> {
    Err((key.to_owned(), message))
}

/// Name, version, title, license and model type.
fn check_identity(spec: &ServableSpec) -> Result<(), Problem> {
    if !valid_name(&spec.name) {
        return problem(
            "name",
            format!(
                "`{}` is not a servable name: use lower-case letters, digits, '.', '_' and '-', starting with a letter or digit",
                spec.name
            ),
        );
    }
    if builtin::find(&spec.name).is_some() {
        return problem(
            "name",
            format!("`{}` is a builtin servable; choose another name", spec.name),
        );
    }
    if let Err(e) = semver::Version::parse(&spec.version) {
        return problem(
            "version",
            format!(
                "`{}` is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.0.0): {e}",
                spec.version
            ),
        );
    }
    if spec.title.trim().is_empty() {
        return problem("title", "must not be empty".into());
    }
    if spec.license.trim().is_empty() {
        return problem(
            "license",
            "must name a license (an SPDX identifier such as \"MIT\" or \"CC-BY-4.0\")".into(),
        );
    }
    if !MODEL_TYPES.contains(&spec.model_type.as_str()) {
        return problem(
            "model_type",
            format!(
                "`{}` is not a known model type (known: {})",
                spec.model_type,
                MODEL_TYPES.join(", ")
            ),
        );
    }
    Ok(())
}

/// Every creator has a name, and an ORCID iD if one is given.
fn check_creators(spec: &ServableSpec) -> Result<(), Problem> {
    for (i, c) in spec.creators.iter().enumerate() {
        if c.name.trim().is_empty() {
            return problem(&format!("creators[{i}].name"), "must not be empty".into());
        }
        if let Some(orcid) = &c.orcid
            && !valid_orcid(orcid)
        {
            return problem(
                &format!("creators[{i}].orcid"),
                format!("`{orcid}` is not an ORCID iD (like 0000-0002-1825-0097)"),
            );
        }
    }
    Ok(())
}

/// Only exec commands and pipelines of exact servable versions publish.
fn check_runtime(spec: &ServableSpec) -> Result<(), Problem> {
    match &spec.runtime {
        Runtime::Builtin => {
            return problem(
                "runtime.kind",
                "builtin servables come with the worker and cannot be published; use \"exec\""
                    .into(),
            );
        }
        Runtime::Exec { command, .. } if command.trim().is_empty() => {
            return problem("runtime.command", "must name the executable to run".into());
        }
        Runtime::Exec { .. } if spec.model_type == "pipeline" => {
            return problem(
                "model_type",
                "\"pipeline\" servables are made with `flotilla pipeline create`".into(),
            );
        }
        Runtime::Exec {
            working_dir: Some(dir),
            ..
        } => check_working_dir(dir, &spec.files)?,
        Runtime::Exec { .. } => {}
        Runtime::Onnx { model, .. } => check_onnx(spec, model)?,
        Runtime::Pipeline { steps } => {
            if spec.model_type != "pipeline" {
                return problem(
                    "model_type",
                    "a pipeline's model_type must be \"pipeline\"".into(),
                );
            }
            if steps.is_empty() {
                return problem("runtime.steps", "a pipeline needs at least one step".into());
            }
            for step in steps {
                match ServableRef::parse(step) {
                    Ok(ServableRef::Exact { name, version })
                        if valid_name(&name) && semver::Version::parse(&version).is_ok() => {}
                    _ => {
                        return problem(
                            "runtime.steps",
                            format!("step `{step}` is not NAME@VERSION"),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Element types the worker's ONNX runtime feeds and returns.
pub const ONNX_DTYPES: &[&str] = &[
    "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
];

/// An ONNX servable: its model is one of its files, it runs in the worker
/// (no environment, no image), its input is an ndarray of fixed shape (a
/// request is one item of the model's batch) and its output an ndarray of
/// fixed shape or a single number.
fn check_onnx(spec: &ServableSpec, model: &str) -> Result<(), Problem> {
    if !spec.files.iter().any(|f| f == model) {
        return problem(
            "runtime.model",
            format!("`{model}` must be one of the servable's files (add it to `files`)"),
        );
    }
    if spec.model_type == "pipeline" {
        return problem(
            "model_type",
            "\"pipeline\" servables are made with `flotilla pipeline create`".into(),
        );
    }
    if spec.environment.is_some() || spec.container.is_some() {
        return problem(
            "runtime.kind",
            "an onnx servable runs inside the worker: it takes no [environment] or [container]"
                .into(),
        );
    }
    if spec.resources.gpus > 0 {
        return problem(
            "resources.gpus",
            "an onnx servable runs on ONNX Runtime's CPU execution provider in this version; it cannot use accelerators yet".into(),
        );
    }
    let fixed = |key: &str, dtype: &str, shape: &[i64]| -> Result<(), Problem> {
        if !ONNX_DTYPES.contains(&dtype) {
            return problem(
                &format!("{key}.dtype"),
                format!(
                    "`{dtype}` is not an element type the onnx runtime takes (known: {})",
                    ONNX_DTYPES.join(", ")
                ),
            );
        }
        if shape.iter().any(|&d| d < 0) {
            return problem(
                &format!("{key}.shape"),
                format!(
                    "an onnx servable's {key} needs a fixed shape (one request's, without the batch axis), got {shape:?}"
                ),
            );
        }
        Ok(())
    };
    match &spec.input {
        TypeSpec::Ndarray { dtype, shape, .. } => fixed("input", dtype, shape)?,
        other => {
            return problem(
                "input.kind",
                format!(
                    "an onnx servable's input is an ndarray (one item of the model's batch), not {}",
                    other.kind()
                ),
            );
        }
    }
    match &spec.output {
        TypeSpec::Ndarray { dtype, shape, .. } => fixed("output", dtype, shape),
        TypeSpec::Number { .. } | TypeSpec::Integer { .. } => Ok(()),
        other => problem(
            "output.kind",
            format!(
                "an onnx servable's output is an ndarray, a number or an integer, not {}",
                other.kind()
            ),
        ),
    }
}

/// A working directory is one of the servable's own: `.`, or a directory
/// that holds at least one of its listed files (so it exists once the
/// files are in place), never a path outside them.
fn check_working_dir(dir: &str, files: &[String]) -> Result<(), Problem> {
    let path = std::path::Path::new(dir);
    let inside = !dir.is_empty()
        && path.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if !inside {
        return problem(
            "runtime.working_dir",
            format!("`{dir}` must be a directory inside the servable's files (relative, no '..')"),
        );
    }
    let normal: std::path::PathBuf = path
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .collect();
    let holds_a_file = normal.as_os_str().is_empty()
        || files
            .iter()
            .any(|f| std::path::Path::new(f).starts_with(&normal) && *f != normal);
    if !holds_a_file {
        return problem(
            "runtime.working_dir",
            format!("`{dir}` holds none of the files the spec lists, so it would not exist"),
        );
    }
    Ok(())
}

/// Listed files are distinct relative paths that stay in the directory.
fn check_files(files: &[String]) -> Result<(), Problem> {
    let mut seen = HashSet::new();
    for f in files {
        let path = std::path::Path::new(f);
        let escapes = path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if f.is_empty() || escapes {
            return problem(
                "files",
                format!(
                    "`{f}` must be a path inside the servable's directory (no '..', not absolute)"
                ),
            );
        }
        if !seen.insert(f) {
            return problem("files", format!("`{f}` is listed twice"));
        }
    }
    Ok(())
}

/// Batching and latency options within their bounds.
fn check_options(spec: &ServableSpec) -> Result<(), Problem> {
    let o = &spec.options;
    if o.max_batch_size == 0 || o.max_batch_size > 1_000_000 {
        return problem(
            "options.max_batch_size",
            format!("must be between 1 and 1000000, got {}", o.max_batch_size),
        );
    }
    if let BatchDelay::Fixed(ms) = o.max_batch_delay_ms
        && ms > 600_000
    {
        return problem(
            "options.max_batch_delay_ms",
            format!("at most 600000 ms (10 minutes), got {ms}"),
        );
    }
    if o.latency_target_ms == 0 {
        return problem("options.latency_target_ms", "must be at least 1".into());
    }
    Ok(())
}

fn check_type(t: &TypeSpec, key: &str) -> Result<(), Problem> {
    match t {
        TypeSpec::List { item, .. } => check_type(item, &format!("{key}.item")),
        TypeSpec::Dict { properties, .. } => {
            for (name, prop) in properties {
                check_type(prop, &format!("{key}.properties.{name}"))?;
            }
            Ok(())
        }
        TypeSpec::Ndarray { dtype, shape, .. } => {
            if !DTYPES.contains(&dtype.as_str()) {
                return Err((
                    format!("{key}.dtype"),
                    format!("`{dtype}` is not a dtype (known: {})", DTYPES.join(", ")),
                ));
            }
            if let Some(bad) = shape.iter().find(|&&d| d < -1 || d == 0) {
                return Err((
                    format!("{key}.shape"),
                    format!("dimension {bad} is not a length (use -1 for any length)"),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn valid_orcid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 4
        && parts.iter().enumerate().all(|(i, p)| {
            p.len() == 4
                && p.chars()
                    .enumerate()
                    .all(|(j, c)| c.is_ascii_digit() || (i == 3 && j == 3 && c == 'X'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "digits"
version = "1.0.0"
title = "Handwritten digits"
license = "BSD-3-Clause"
model_type = "sklearn"
files = ["model.py", "model.pkl"]

[[creators]]
name = "Ada Lovelace"
orcid = "0000-0002-1825-0097"

[input]
kind = "ndarray"
dtype = "float64"
shape = [8, 8]

[output]
kind = "integer"

[runtime]
kind = "exec"
command = "python3"
args = ["model.py"]

[options]
max_batch_size = 64
max_batch_delay_ms = "auto"
"#;

    #[test]
    fn the_access_table_is_read_beside_the_spec_and_checked() {
        let (spec, access) = parse_with_access(GOOD, "servable.toml").unwrap();
        assert_eq!(spec, parse(GOOD, "servable.toml").unwrap());
        assert_eq!(access, None);
        let text = format!(
            "{GOOD}\n[access]\nvisibility = \"public\"\nusers = [\"ada\"]\ngroups = [\"chem\"]\nshared_memo = true\n"
        );
        let (with, access) = parse_with_access(&text, "servable.toml").unwrap();
        assert_eq!(with, spec);
        let access = access.unwrap();
        assert_eq!(
            access.visibility,
            Some(flotilla_protocol::access::Visibility::Public)
        );
        assert_eq!(access.users, ["ada"]);
        assert_eq!(access.groups, ["chem"]);
        assert_eq!(access.shared_memo, Some(true));
        let bad = format!("{GOOD}\n[access]\nvisibility = \"world\"\n");
        let e = parse_with_access(&bad, "servable.toml").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("access"));
        assert!(e.to_string().contains("world"), "{e}");
        // Without [access], a wrong key is still refused with its line.
        let e = parse_with_access(&format!("{GOOD}\nwhat = 1\n"), "s.toml").unwrap_err();
        assert!(e.to_string().contains("what"), "{e}");
    }

    #[test]
    fn a_good_spec_parses() {
        let spec = parse(GOOD, "servable.toml").unwrap();
        assert_eq!(spec.options.max_batch_size, 64);
        assert_eq!(spec.options.max_batch_delay_ms, BatchDelay::Auto);
        assert!(matches!(spec.input, TypeSpec::Ndarray { .. }));
        assert_eq!(spec.resources.gpus, 0);
        let gpu = parse(&format!("{GOOD}\n[resources]\ngpus = 2\n"), "s.toml").unwrap();
        assert_eq!(gpu.resources.gpus, 2);
        let e = parse(&format!("{GOOD}\n[resources]\ngpus = 5000\n"), "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.toml:31: `resources.gpus`: must be at most 1024"),
            "{e}"
        );
        let placed = parse(
            &format!("{GOOD}\n[resources]\npools = [\"gpu\"]\nlabels = {{ site = \"polaris\" }}\n"),
            "s.toml",
        )
        .unwrap();
        assert_eq!(placed.resources.pools, ["gpu"]);
        assert_eq!(placed.resources.labels["site"], "polaris");
        let e = parse(
            &format!("{GOOD}\n[resources]\npools = [\"a b\"]\n"),
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("s.toml:31: `resources.pools`: `a b` is not a pool name"),
            "{e}"
        );
    }

    #[test]
    fn an_onnx_servable_names_one_of_its_files_and_fixed_tensors() {
        let onnx = GOOD
            .replace("model_type = \"sklearn\"", "model_type = \"onnx\"")
            .replace(
                "kind = \"exec\"\ncommand = \"python3\"\nargs = [\"model.py\"]",
                "kind = \"onnx\"\nmodel = \"model.pkl\"",
            )
            .replace("dtype = \"float64\"", "dtype = \"float32\"");
        let spec = parse(&onnx, "s.toml").unwrap();
        assert!(matches!(spec.runtime, Runtime::Onnx { ref model, .. } if model == "model.pkl"));
        let e = parse(
            &onnx.replace("model = \"model.pkl\"", "model = \"m.onnx\""),
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`runtime.model`: `m.onnx` must be one of the servable's files"),
            "{e}"
        );
        let e = parse(&onnx.replace("shape = [8, 8]", "shape = [-1, 8]"), "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`input.shape`: an onnx servable's input needs a fixed shape"),
            "{e}"
        );
        let e = parse(
            &onnx.replace("dtype = \"float32\"", "dtype = \"bool\""),
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`input.dtype`: `bool` is not an element type"),
            "{e}"
        );
        let e = parse(
            &onnx.replace(
                "[output]\nkind = \"integer\"",
                "[output]\nkind = \"string\"",
            ),
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`output.kind`"), "{e}");
        let e = parse(
            &format!("{onnx}\n[environment]\npackages = [\"numpy\"]\n"),
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("runs inside the worker"), "{e}");
        let e = parse(&format!("{onnx}\n[resources]\ngpus = 1\n"), "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`resources.gpus`: an onnx servable runs on"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let bad = GOOD.replace("version = \"1.0.0\"", "version = \"1.0\"");
        let e = parse(&bad, "d/servable.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("d/servable.toml:3: `version`: `1.0` is not a semantic version"),
            "{e}"
        );

        let bad = GOOD.replace("0000-0002-1825-0097", "12345");
        let e = parse(&bad, "s.toml").unwrap_err().to_string();
        assert!(e.starts_with("s.toml:11: `creators[0].orcid`"), "{e}");

        let bad = GOOD.replace("dtype = \"float64\"", "dtype = \"double\"");
        let e = parse(&bad, "s.toml").unwrap_err().to_string();
        assert!(e.starts_with("s.toml:15: `input.dtype`"), "{e}");

        let bad = GOOD.replace("command = \"python3\"", "command = \"\"");
        let e = parse(&bad, "s.toml").unwrap_err().to_string();
        assert!(e.starts_with("s.toml:23: `runtime.command`"), "{e}");

        let bad = GOOD.replace("max_batch_size = 64", "max_batch_size = 0");
        let e = parse(&bad, "s.toml").unwrap_err().to_string();
        assert!(e.contains("`options.max_batch_size`"), "{e}");
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused_with_their_line() {
        let bad = GOOD.replace(
            "[output]\nkind = \"integer\"",
            "[output]\nkind = \"integer\"\nunits = \"none\"",
        );
        let e = parse(&bad, "s.toml").unwrap_err().to_string();
        assert!(e.contains("units"), "{e}");
        let bad = GOOD.replace("model_type = \"sklearn\"", "model_type = \"magic\"");
        let e = parse(&bad, "s.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("s.toml:6: `model_type`") && e.contains("sklearn"),
            "{e}"
        );
        let bad = GOOD.replace(
            "files = [\"model.py\", \"model.pkl\"]",
            "files = [\"../secret\"]",
        );
        assert!(
            parse(&bad, "s.toml")
                .unwrap_err()
                .to_string()
                .contains("inside the servable")
        );
    }

    #[test]
    fn working_dirs_stay_among_the_servables_files() {
        let with = |dir: &str| {
            GOOD.replace(
                "args = [\"model.py\"]",
                &format!("args = [\"model.py\"]\nworking_dir = \"{dir}\""),
            )
        };
        for bad in ["/", "/tmp", "..", "a/../..", "data", ""] {
            let e = parse(&with(bad), "s.toml").unwrap_err().to_string();
            assert!(
                e.starts_with("s.toml:25: `runtime.working_dir`"),
                "{bad}: {e}"
            );
        }
        for good in [".", "./"] {
            parse(&with(good), "s.toml").unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let nested = with("model").replace(
            "files = [\"model.py\", \"model.pkl\"]",
            "files = [\"model/model.py\", \"model.pkl\"]",
        );
        parse(&nested, "s.toml").unwrap();
    }

    #[test]
    fn environments_are_checked_by_key() {
        let with = |table: &str| format!("{GOOD}\n[environment]\n{table}\n");
        let spec = parse(
            &with("python = \">=3.9\"\npackages = [\"numpy\", \"scikit-learn>=1.3\"]"),
            "s.toml",
        )
        .unwrap();
        let env = spec.environment.unwrap();
        assert_eq!(env.packages, ["numpy", "scikit-learn>=1.3"]);
        assert!(env.wants_venv());
        let image = parse(&with("image = \"docker://python:3.12\""), "s.toml").unwrap();
        assert!(!image.environment.unwrap().wants_venv());
        for (table, key, says) in [
            (
                "python = \"3.9\"",
                "environment.python",
                "does not start with a comparison",
            ),
            (
                "packages = [\"numpy 1.0\"]",
                "environment.packages",
                "not a version clause",
            ),
            (
                "packages = [\"numpy\", \"NumPy\"]",
                "environment.packages",
                "listed twice",
            ),
            (
                "packages = [\"numpy\"]\nimage = \"docker://python:3.12\"",
                "environment.packages",
                "not both",
            ),
            (
                "python = \">=3.9\"\nimage = \"docker://python:3.12\"",
                "environment.python",
                "an image does not use",
            ),
            ("image = \"\"", "environment.image", "must name an image"),
        ] {
            let e = parse(&with(table), "s.toml").unwrap_err().to_string();
            assert!(
                e.contains(&format!("`{key}`: ")) && e.contains(says),
                "{table}: {e}"
            );
        }
        let e = parse(&with("pip = [\"numpy\"]"), "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pip"), "{e}");
        let boxed = with("packages = [\"numpy\"]").replace(
            "[options]",
            "[container]\nimage = \"python:3.12\"\n\n[options]",
        );
        let e = parse(&boxed, "s.toml").unwrap_err().to_string();
        assert!(
            e.contains("`environment`: ") && e.contains("[container]"),
            "{e}"
        );
    }

    #[test]
    fn a_record_captures_packages_only_for_a_python_environment() {
        use flotilla_protocol::servable::{EnvironmentLock, FileEntry, ServableRecord};
        let spec = parse(
            &format!("{GOOD}\n[environment]\npackages = [\"numpy\"]\n"),
            "s.toml",
        )
        .unwrap();
        let files = spec
            .files
            .iter()
            .map(|p| FileEntry {
                path: p.clone(),
                blake3: "a".repeat(64),
                size: 1,
            })
            .collect();
        let wheel = |path: &str, blake3: &str| FileEntry {
            path: path.into(),
            blake3: blake3.into(),
            size: 1,
        };
        let mut record = ServableRecord {
            spec,
            files,
            published_us: 0,
            lock: Some(EnvironmentLock {
                requirements: vec!["numpy==2.1.0".into(), "msgpack".into()],
                wheels: vec![wheel(
                    "numpy-2.1.0-cp311-cp311-linux_x86_64.whl",
                    &"b".repeat(64),
                )],
            }),
            access: None,
        };
        check_record(&record).unwrap();
        for (bad, says) in [
            (
                wheel("../evil.whl", &"b".repeat(64)),
                "not a wheel file name",
            ),
            (
                wheel("numpy.tar.gz", &"b".repeat(64)),
                "not a wheel file name",
            ),
            (
                wheel("numpy-2.1.0-py3-none-any.whl", "xyz"),
                "no valid blake3",
            ),
        ] {
            let mut r = record.clone();
            if let Some(lock) = r.lock.as_mut() {
                lock.wheels = vec![bad];
            }
            let e = check_record(&r).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        record.spec.environment = None;
        let e = check_record(&record).unwrap_err().to_string();
        assert!(e.contains("declares no Python environment"), "{e}");
    }

    #[test]
    fn builtin_names_cannot_be_taken() {
        let bad = GOOD.replace("name = \"digits\"", "name = \"echo\"");
        assert!(
            parse(&bad, "s.toml")
                .unwrap_err()
                .to_string()
                .contains("builtin")
        );
    }
}
