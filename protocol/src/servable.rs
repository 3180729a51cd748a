//! Servables: what a published model is, and how its inputs are checked.
//!
//! A servable is described by a `servable.toml` in its directory (parsed and
//! checked by the engine's `servable_spec` module, which names file, line and
//! key in errors). The types here are what travels: the CLI sends a
//! [`ServableRecord`] to publish, the daemon keeps it in its catalog, and a
//! worker receives it with the first batch it runs for that servable.
//!
//! The metadata follows the DLHub model: DataCite-style description
//! (creators, title, description, DOI, related identifiers), discovery fields
//! (domains, model type), typed inputs and outputs, the runtime that executes
//! it, the files it needs with their blake3 hashes, and serving options.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod quick_check;

pub use crate::environment::{Environment, EnvironmentLock};

/// Model types the catalog knows. `pipeline` is made by `flotilla pipeline
/// create`; `builtin` marks the servables compiled into the worker.
pub const MODEL_TYPES: &[&str] = &[
    "sklearn",
    "torch",
    "tensorflow",
    "keras",
    "onnx",
    "xgboost",
    "python-function",
    "pipeline",
    "builtin",
    "other",
];

/// A servable's full description, as written in `servable.toml`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServableSpec {
    /// Short name used in requests (`[a-z0-9][a-z0-9._-]*`).
    pub name: String,
    /// Semantic version (`MAJOR.MINOR.PATCH`).
    pub version: String,
    /// One-line title.
    pub title: String,
    /// What it does, for people searching the catalog.
    #[serde(default)]
    pub description: String,
    /// Who made it.
    #[serde(default)]
    pub creators: Vec<Creator>,
    /// Science domains (`materials science`, `chemistry`, …).
    #[serde(default)]
    pub domains: Vec<String>,
    /// SPDX license identifier.
    pub license: String,
    /// DOI of the model or its paper.
    #[serde(default)]
    pub doi: Option<String>,
    /// Related works (papers, datasets).
    #[serde(default)]
    pub related_identifiers: Vec<RelatedIdentifier>,
    /// One of [`MODEL_TYPES`].
    pub model_type: String,
    /// What a request's input must look like.
    pub input: TypeSpec,
    /// What an output looks like.
    pub output: TypeSpec,
    /// How it runs.
    pub runtime: Runtime,
    /// Container image to run it in (used by container launchers).
    #[serde(default)]
    pub container: Option<Container>,
    /// Files it needs, relative to its directory; hashed at publish.
    #[serde(default)]
    pub files: Vec<String>,
    /// A command run in its directory before the files are hashed (e.g. to
    /// train the model).
    #[serde(default)]
    pub build: Option<Build>,
    /// Serving options.
    #[serde(default)]
    pub options: ServableOptions,
    /// What one call needs of the slot it runs on (`[resources]`). Records
    /// written before it existed (which end before it) read as needing
    /// nothing.
    #[serde(default)]
    pub resources: Resources,
    /// What it needs of the node's software (`[environment]`): a Python
    /// and packages, or an image. Last, and left out when not declared, so
    /// records written before it existed read as declaring none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
}

/// What a servable needs of the slot that runs it, and of the pool whose
/// workers may run it (placement).
#[derive(Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// Accelerators (GPUs, AMD GCDs, Intel tiles) each of its processes
    /// needs: it runs only on slots that hold at least this many.
    pub gpus: u32,
    /// The pools whose workers may run it, by name; empty: any pool.
    pub pools: Vec<String>,
    /// Labels a pool must carry, each with this value, for its workers to
    /// run it (`{ site = "polaris", partition = "gpu" }`); empty: none.
    pub labels: BTreeMap<String, String>,
}

impl Resources {
    /// True when it needs nothing of its slot or pool.
    pub fn is_nothing(&self) -> bool {
        *self == Resources::default()
    }

    /// True when it names pools or labels.
    pub fn places(&self) -> bool {
        !self.pools.is_empty() || !self.labels.is_empty()
    }
}

/// Written as `gpus` alone when it names no pool or label, so that a
/// record without placement reads as before (readers that know only
/// `gpus` take it), and with all three fields otherwise.
impl Serialize for Resources {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let places = self.places();
        let mut s = serializer.serialize_struct("Resources", if places { 3 } else { 1 })?;
        s.serialize_field("gpus", &self.gpus)?;
        if places {
            s.serialize_field("pools", &self.pools)?;
            s.serialize_field("labels", &self.labels)?;
        } else {
            s.skip_field("pools")?;
            s.skip_field("labels")?;
        }
        s.end()
    }
}

/// A creator (DataCite style).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Creator {
    /// Full name.
    pub name: String,
    /// Institution.
    #[serde(default)]
    pub affiliation: Option<String>,
    /// ORCID iD (`0000-0002-1825-0097`).
    #[serde(default)]
    pub orcid: Option<String>,
}

/// A related work.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RelatedIdentifier {
    /// DOI, URL, arXiv id, …
    pub identifier: String,
    /// DataCite relation (`IsDescribedBy`, `IsDerivedFrom`, …).
    pub relation: String,
}

/// A container image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// Image reference or path.
    pub image: String,
}

/// A build step run at publish time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Build {
    /// Executable.
    pub command: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
}

/// How a servable executes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Runtime {
    /// Compiled into the worker (`noop`, `echo`, `sleep`).
    Builtin,
    /// A warm subprocess speaking the stdio protocol (`docs/servable-protocol.md`).
    Exec {
        /// Executable (looked up on the worker's PATH if not a path).
        command: String,
        /// Arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Working directory, relative to the servable's files.
        #[serde(default)]
        working_dir: Option<String>,
        /// Extra environment.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// An ONNX model run inside the worker by its ONNX runtime, without a
    /// process: a batch of requests is one call of the model, the inputs
    /// stacked along a leading batch axis (`docs/onnx.md`).
    Onnx {
        /// The model file, one of the servable's `files`.
        model: String,
        /// The model input the requests feed; none: its only input.
        #[serde(default)]
        input: Option<String>,
        /// The model output returned; none: its first output.
        #[serde(default)]
        output: Option<String>,
    },
    /// Other servables chained inside the daemon: step i's output is step
    /// i+1's input.
    Pipeline {
        /// Steps as `NAME@VERSION`, resolved when the pipeline was created.
        steps: Vec<String>,
    },
}

/// How long the daemon may hold a request to fill a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchDelay {
    /// Up to this many milliseconds after the oldest request.
    Fixed(u64),
    /// Adapted to the servable's measured costs within its latency target.
    Auto,
}

impl Serialize for BatchDelay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchDelay::Fixed(ms) => s.serialize_u64(*ms),
            BatchDelay::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for BatchDelay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BatchDelay;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of milliseconds or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BatchDelay, E> {
                Ok(BatchDelay::Fixed(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BatchDelay, E> {
                u64::try_from(v)
                    .map(BatchDelay::Fixed)
                    .map_err(|_| E::custom("a batch delay cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BatchDelay, E> {
                if v == "auto" {
                    Ok(BatchDelay::Auto)
                } else {
                    Err(E::custom(format!(
                        "expected a number of milliseconds or \"auto\", got \"{v}\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Serving options.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServableOptions {
    /// Answer repeated identical requests from the memo store.
    pub memoize: bool,
    /// Most inputs in one call.
    pub max_batch_size: u32,
    /// How long a request may wait for its batch to fill.
    pub max_batch_delay_ms: BatchDelay,
    /// The bound a call must stay within in `auto` batching mode.
    pub latency_target_ms: u64,
    /// Check every input against `input` at submission.
    pub validate_input: bool,
    /// Longest one call may take, in seconds, if the author knows: a worker
    /// whose job ends sooner is not given it (otherwise the daemon learns
    /// the duration from history).
    pub max_duration_s: Option<u64>,
    /// Start slot processes by forking a per-node template that has run
    /// the script up to `serve()` (imports done, model loaded), instead of
    /// starting each afresh. Only for servables whose script holds no GPU
    /// context, threads or connections before `serve()`: a fork copies the
    /// process as it is. Last, and left out when false, so records from
    /// before it read as before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fork: bool,
}

impl Default for ServableOptions {
    fn default() -> Self {
        ServableOptions {
            memoize: false,
            max_batch_size: 1,
            max_batch_delay_ms: BatchDelay::Fixed(0),
            latency_target_ms: 100,
            validate_input: false,
            max_duration_s: None,
            fork: false,
        }
    }
}

/// A published file and its hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the servable's directory.
    pub path: String,
    /// blake3 of the content, lower-case hex; also its name in the object store.
    pub blake3: String,
    /// Size in bytes.
    pub size: u64,
}

/// A published, immutable servable version.
///
/// Encoded by hand ([`Serialize`] below) so that trailing fields that are
/// none are left out, as before they existed, while a later one present
/// keeps every earlier one in its place (msgpack structs are positional).
#[derive(Deserialize, Clone, Debug, PartialEq)]
pub struct ServableRecord {
    /// The description.
    pub spec: ServableSpec,
    /// Its files with hashes, in the order of `spec.files`.
    pub files: Vec<FileEntry>,
    /// Publication time, µs since the epoch (set by the daemon).
    pub published_us: u64,
    /// What publishing captured of `spec.environment` (pinned requirements
    /// and wheels). Records written before it existed lack it and read as
    /// capturing nothing; left out when none (and no access follows).
    #[serde(default)]
    pub lock: Option<EnvironmentLock>,
    /// Owner and visibility. Last, and left out when there is none: records
    /// written before visibility existed read as none, which means the
    /// daemon's user owns them and nobody else sees them. Not part of the
    /// content ([`ServableRecord::same_content`]): the owner may change it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<crate::access::Access>,
}

impl Serialize for ServableRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let with_access = self.access.is_some();
        let with_lock = with_access || self.lock.is_some();
        let len = 3 + usize::from(with_lock) + usize::from(with_access);
        let mut s = serializer.serialize_struct("ServableRecord", len)?;
        s.serialize_field("spec", &self.spec)?;
        s.serialize_field("files", &self.files)?;
        s.serialize_field("published_us", &self.published_us)?;
        if with_lock {
            s.serialize_field("lock", &self.lock)?;
        }
        if with_access {
            s.serialize_field("access", &self.access)?;
        }
        s.end()
    }
}

impl ServableRecord {
    /// The owner and visibility in force: as recorded, or for a record
    /// without them (published before visibility existed), the daemon's
    /// user `daemon_owner`, visible to nobody else.
    pub fn access_or_default(&self, daemon_owner: u32) -> crate::access::Access {
        let mut access = self.access.clone().unwrap_or_default();
        access.owner.get_or_insert(daemon_owner);
        access
    }

    /// `NAME@VERSION`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.spec.name, self.spec.version)
    }

    /// True when both describe the same content (publication time aside).
    pub fn same_content(&self, other: &ServableRecord) -> bool {
        self.spec == other.spec && self.files == other.files && self.lock == other.lock
    }
}

/// A type in a servable's signature (DLHub's kinds).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TypeSpec {
    /// Any number.
    Number {
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// A whole number.
    Integer {
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// Text.
    String {
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// True or false.
    Boolean {
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// A list whose items all have one type.
    List {
        /// Item type.
        item: Box<TypeSpec>,
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// A map with named properties.
    Dict {
        /// Property types; every listed property is required.
        #[serde(default)]
        properties: BTreeMap<String, TypeSpec>,
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// A (nested-list) array of numbers.
    Ndarray {
        /// `float16|32|64`, `int8|16|32|64`, `uint8|16|32|64` or `bool`.
        dtype: String,
        /// Length of each dimension; -1 for any length.
        #[serde(default)]
        shape: Vec<i64>,
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// A file's content as bytes.
    File {
        /// What it means.
        #[serde(default)]
        description: String,
    },
    /// Anything.
    Any {
        /// What it means.
        #[serde(default)]
        description: String,
    },
}

/// dtypes an `ndarray` may declare.
pub const DTYPES: &[&str] = &[
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
    "uint32", "uint64", "bool",
];

impl TypeSpec {
    /// Short name of the kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            TypeSpec::Number { .. } => "number",
            TypeSpec::Integer { .. } => "integer",
            TypeSpec::String { .. } => "string",
            TypeSpec::Boolean { .. } => "boolean",
            TypeSpec::List { .. } => "list",
            TypeSpec::Dict { .. } => "dict",
            TypeSpec::Ndarray { .. } => "ndarray",
            TypeSpec::File { .. } => "file",
            TypeSpec::Any { .. } => "any",
        }
    }
}

/// An input that does not match its declared type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TypeMismatch {
    /// Where, as `input`, `input.image[3][2]`, `input.composition`.
    pub path: String,
    /// Expected and found.
    pub message: String,
}

/// Checks a msgpack-encoded input against `spec`.
///
/// Well-typed inputs are accepted by a streaming pass that builds nothing
/// ([`quick_check::accepts`]); anything it does not accept goes through
/// [`check_input_by_value`], which says what is wrong and where.
pub fn check_input(spec: &TypeSpec, input: &[u8]) -> Result<(), TypeMismatch> {
    if quick_check::accepts(spec, input) {
        return Ok(());
    }
    check_input_by_value(spec, input)
}

/// Input bytes above which [`first_mismatch`] spreads its checks over
/// rayon's threads; below it, handing them out costs more than it saves
/// (`benchmarks/run typed-input`).
pub const PARALLEL_CHECK_BYTES: usize = 256 * 1024;

/// The first of `checks` (an index of the caller's, a declared type, an
/// input) whose input does not match, in their order: what a submission of
/// many tasks is refused for. Large submissions are checked in parallel,
/// so that a bulk submit of images as nested lists does not hold up the
/// daemon for the time one core needs to walk them.
pub fn first_mismatch(checks: &[(usize, &TypeSpec, &[u8])]) -> Option<(usize, TypeMismatch)> {
    use rayon::prelude::*;
    let check = |&(index, spec, input): &(usize, &TypeSpec, &[u8])| {
        check_input(spec, input).err().map(|e| (index, e))
    };
    let bytes: usize = checks.iter().map(|(_, _, input)| input.len()).sum();
    if bytes < PARALLEL_CHECK_BYTES {
        checks.iter().find_map(check)
    } else {
        checks.par_iter().find_map_first(check)
    }
}

/// Checks a msgpack-encoded input against `spec` by decoding it into a
/// value tree first: the reference [`check_input`] falls back on, and the
/// one whose messages users see.
pub fn check_input_by_value(spec: &TypeSpec, input: &[u8]) -> Result<(), TypeMismatch> {
    let mut reader = input;
    let value = rmpv::decode::read_value(&mut reader).map_err(|e| TypeMismatch {
        path: "input".into(),
        message: format!("not a msgpack value: {e}"),
    })?;
    check_value(spec, &value, &mut "input".to_owned())
}

fn describe(v: &rmpv::Value) -> String {
    use rmpv::Value as M;
    match v {
        M::Nil => "null".into(),
        M::Boolean(b) => format!("boolean {b}"),
        M::Integer(i) => format!("integer {i}"),
        M::F32(f) => format!("number {f}"),
        M::F64(f) => format!("number {f}"),
        M::String(s) => format!(
            "string \"{}\"",
            s.as_str()
                .unwrap_or("?")
                .chars()
                .take(40)
                .collect::<String>()
        ),
        M::Binary(b) => format!("{} bytes", b.len()),
        M::Array(a) => format!("a list of {}", a.len()),
        M::Map(m) => format!("a dict of {} keys", m.len()),
        M::Ext(..) => "an extension value".into(),
    }
}

fn mismatch(path: &str, expected: &str, found: &rmpv::Value) -> TypeMismatch {
    TypeMismatch {
        path: path.to_owned(),
        message: format!("expected {expected}, got {}", describe(found)),
    }
}

fn check_value(spec: &TypeSpec, v: &rmpv::Value, path: &mut String) -> Result<(), TypeMismatch> {
    use rmpv::Value as M;
    match spec {
        TypeSpec::Any { .. } => Ok(()),
        TypeSpec::Number { .. } => match v {
            M::Integer(_) | M::F32(_) | M::F64(_) => Ok(()),
            _ => Err(mismatch(path, "a number", v)),
        },
        TypeSpec::Integer { .. } => match v {
            M::Integer(_) => Ok(()),
            M::F64(f) if f.fract() == 0.0 && f.is_finite() => Ok(()),
            _ => Err(mismatch(path, "an integer", v)),
        },
        TypeSpec::String { .. } => match v {
            M::String(_) => Ok(()),
            _ => Err(mismatch(path, "a string", v)),
        },
        TypeSpec::Boolean { .. } => match v {
            M::Boolean(_) => Ok(()),
            _ => Err(mismatch(path, "a boolean", v)),
        },
        TypeSpec::File { .. } => match v {
            M::Binary(_) | M::String(_) => Ok(()),
            _ => Err(mismatch(path, "file content (bytes)", v)),
        },
        TypeSpec::List { item, .. } => match v {
            M::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    check_value(item, x, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Err(mismatch(path, "a list", v)),
        },
        TypeSpec::Dict { properties, .. } => match v {
            M::Map(entries) => {
                for (name, prop) in properties {
                    let found = entries
                        .iter()
                        .find(|(k, _)| k.as_str() == Some(name.as_str()));
                    let len = path.len();
                    path.push('.');
                    path.push_str(name);
                    match found {
                        Some((_, value)) => check_value(prop, value, path)?,
                        None => {
                            return Err(TypeMismatch {
                                path: path.clone(),
                                message: format!("missing (expected {})", prop.kind()),
                            });
                        }
                    }
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Err(mismatch(path, "a dict", v)),
        },
        TypeSpec::Ndarray { dtype, shape, .. } => match v {
            M::Binary(bytes) => check_packed(dtype, shape, bytes.len(), path),
            _ => check_array(dtype, shape, v, path),
        },
    }
}

/// Bytes one element of `dtype` takes packed (`bool` one byte); none for
/// a dtype that is not one of [`DTYPES`].
pub fn dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "bool" | "int8" | "uint8" => 1,
        "float16" | "int16" | "uint16" => 2,
        "float32" | "int32" | "uint32" => 4,
        "float64" | "int64" | "uint64" => 8,
        _ => return None,
    })
}

/// An ndarray may also be sent packed: its elements' little-endian bytes
/// in row-major order, as msgpack binary (`numpy`'s `tobytes()`), which is
/// only possible for a fixed shape.
fn check_packed(dtype: &str, shape: &[i64], len: usize, path: &str) -> Result<(), TypeMismatch> {
    let elements = shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .try_fold(1usize, |n, d| d.and_then(|d| n.checked_mul(d)));
    let expected = elements.and_then(|n| dtype_size(dtype).and_then(|s| n.checked_mul(s)));
    match expected {
        Some(bytes) if bytes == len => Ok(()),
        Some(bytes) => Err(TypeMismatch {
            path: path.to_owned(),
            message: format!(
                "expected {bytes} bytes ({dtype} {shape:?}, packed little-endian), got {len} bytes"
            ),
        }),
        None => Err(TypeMismatch {
            path: path.to_owned(),
            message: format!(
                "expected a nested list of {dtype}: packed bytes need a fixed shape, and {shape:?} is not"
            ),
        }),
    }
}

fn check_array(
    dtype: &str,
    shape: &[i64],
    v: &rmpv::Value,
    path: &mut String,
) -> Result<(), TypeMismatch> {
    use rmpv::Value as M;
    match shape.split_first() {
        None => {
            let ok = match dtype {
                "bool" => matches!(v, M::Boolean(_)),
                d if d.starts_with("float") => matches!(v, M::Integer(_) | M::F32(_) | M::F64(_)),
                d if d.starts_with("uint") => v.as_u64().is_some(),
                _ => matches!(v, M::Integer(_)),
            };
            if ok {
                Ok(())
            } else {
                Err(mismatch(path, &format!("a {dtype} element"), v))
            }
        }
        Some((&len, rest)) => {
            let M::Array(items) = v else {
                let dims = shape.len();
                return Err(mismatch(
                    path,
                    &format!("an array with {dims} more dimension(s)"),
                    v,
                ));
            };
            if len >= 0 && items.len() as i64 != len {
                return Err(TypeMismatch {
                    path: path.clone(),
                    message: format!("expected {len} elements, got {}", items.len()),
                });
            }
            // The index goes into the path only on the way out of an
            // error: formatting it for every element would cost more than
            // checking it.
            for (i, x) in items.iter().enumerate() {
                if let Err(mut e) = check_array(dtype, rest, x, path) {
                    e.path.insert_str(path.len(), &format!("[{i}]"));
                    return Err(e);
                }
            }
            Ok(())
        }
    }
}

/// How a worker's `Hello` spells "every published servable" in its list of
/// servables it can run (the wire format of that list stays plain strings).
pub const ANY_SERVABLE_WIRE: &str = "*";

/// A reference to a servable, as requests, pipeline steps and workers write
/// it: `NAME` (a builtin, or the latest published version), `NAME@VERSION`
/// (one published version), or [`ANY_SERVABLE_WIRE`] (every published
/// servable; only a worker says that). Parse it once with
/// [`ServableRef::parse`] instead of splitting strings; [`fmt::Display`]
/// writes it back in the same spelling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServableRef {
    /// `NAME`: a builtin, or the latest published version of `NAME`.
    Latest(String),
    /// `NAME@VERSION`: one published version.
    Exact {
        /// The servable's name.
        name: String,
        /// Its version, as written (checked as semver where it is looked up).
        version: String,
    },
    /// Every published servable (a worker's wildcard).
    Any,
}

/// Why a string is not a servable reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServableRefError {
    /// Nothing was written.
    #[error("no servable named")]
    Empty,
    /// `@VERSION` with nothing before it.
    #[error("`{0}` has no servable name before `@`")]
    NoName(String),
    /// `NAME@` with nothing after it.
    #[error("`{name}@` has no version after `@`")]
    NoVersion {
        /// The name written before `@`.
        name: String,
    },
}

impl ServableRef {
    /// Reads `NAME`, `NAME@VERSION` or `*`.
    pub fn parse(s: &str) -> Result<ServableRef, ServableRefError> {
        if s.is_empty() {
            return Err(ServableRefError::Empty);
        }
        if s == ANY_SERVABLE_WIRE {
            return Ok(ServableRef::Any);
        }
        match s.split_once('@') {
            None => Ok(ServableRef::Latest(s.to_owned())),
            Some(("", _)) => Err(ServableRefError::NoName(s.to_owned())),
            Some((name, "")) => Err(ServableRefError::NoVersion {
                name: name.to_owned(),
            }),
            Some((name, version)) => Ok(ServableRef::Exact {
                name: name.to_owned(),
                version: version.to_owned(),
            }),
        }
    }

    /// The servable's name (none for the wildcard).
    pub fn name(&self) -> Option<&str> {
        match self {
            ServableRef::Latest(name) | ServableRef::Exact { name, .. } => Some(name),
            ServableRef::Any => None,
        }
    }

    /// The version, when one is named.
    pub fn version(&self) -> Option<&str> {
        match self {
            ServableRef::Exact { version, .. } => Some(version),
            _ => None,
        }
    }

    /// True if this reference, written out, is exactly `id` (a canonical
    /// `NAME` or `NAME@VERSION`). The wildcard spells no one servable, so it
    /// is never true for it. Allocates nothing: dispatch asks it often.
    pub fn spells(&self, id: &str) -> bool {
        match self {
            ServableRef::Latest(name) => id == name,
            ServableRef::Exact { name, version } => id
                .strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix('@'))
                .is_some_and(|v| v == version),
            ServableRef::Any => false,
        }
    }
}

impl std::str::FromStr for ServableRef {
    type Err = ServableRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServableRef::parse(s)
    }
}

impl fmt::Display for ServableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServableRef::Latest(name) => f.write_str(name),
            ServableRef::Exact { name, version } => write!(f, "{name}@{version}"),
            ServableRef::Any => f.write_str(ANY_SERVABLE_WIRE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp(v: rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    fn arr(v: Vec<rmpv::Value>) -> rmpv::Value {
        rmpv::Value::Array(v)
    }

    #[test]
    fn ndarray_shape_and_dtype_errors_point_at_the_element() {
        let spec = TypeSpec::Ndarray {
            dtype: "float64".into(),
            shape: vec![2, -1],
            description: String::new(),
        };
        let good = arr(vec![arr(vec![1.into(), 2.5.into()]), arr(vec![3.into()])]);
        assert!(check_input(&spec, &mp(good)).is_ok());
        let bad = arr(vec![arr(vec![1.into()]), arr(vec![3.into(), "x".into()])]);
        let err = check_input(&spec, &mp(bad)).unwrap_err();
        assert_eq!(err.path, "input[1][1]");
        assert!(err.message.contains("float64"), "{err}");
        let short = arr(vec![arr(vec![1.into()])]);
        assert_eq!(
            check_input(&spec, &mp(short)).unwrap_err().to_string(),
            "input: expected 2 elements, got 1"
        );
    }

    #[test]
    fn ndarrays_may_come_packed_with_exactly_their_bytes() {
        let spec = TypeSpec::Ndarray {
            dtype: "float32".into(),
            shape: vec![2, 3],
            description: String::new(),
        };
        let packed = |n: usize| mp(rmpv::Value::Binary(vec![0; n]));
        assert!(check_input(&spec, &packed(24)).is_ok());
        assert_eq!(
            check_input(&spec, &packed(20)).unwrap_err().to_string(),
            "input: expected 24 bytes (float32 [2, 3], packed little-endian), got 20 bytes"
        );
        let open = TypeSpec::Ndarray {
            dtype: "float32".into(),
            shape: vec![-1, 3],
            description: String::new(),
        };
        assert!(check_input(&open, &packed(24)).is_err());
        assert_eq!(dtype_size("uint16"), Some(2));
        assert_eq!(dtype_size("complex"), None);
    }

    #[test]
    fn dict_properties_are_required_and_typed() {
        let spec = TypeSpec::Dict {
            properties: BTreeMap::from([
                (
                    "composition".into(),
                    TypeSpec::String {
                        description: String::new(),
                    },
                ),
                (
                    "counts".into(),
                    TypeSpec::List {
                        item: Box::new(TypeSpec::Integer {
                            description: String::new(),
                        }),
                        description: String::new(),
                    },
                ),
            ]),
            description: String::new(),
        };
        let ok = rmpv::Value::Map(vec![
            ("composition".into(), "SiO2".into()),
            ("counts".into(), arr(vec![1.into(), 2.into()])),
        ]);
        assert!(check_input(&spec, &mp(ok)).is_ok());
        let bad = rmpv::Value::Map(vec![
            ("composition".into(), "SiO2".into()),
            ("counts".into(), arr(vec![1.into(), true.into()])),
        ]);
        assert_eq!(
            check_input(&spec, &mp(bad)).unwrap_err().path,
            "input.counts[1]"
        );
        let missing = rmpv::Value::Map(vec![("counts".into(), arr(vec![]))]);
        let err = check_input(&spec, &mp(missing)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input.composition: missing (expected string)"
        );
    }

    #[test]
    fn batch_delay_reads_numbers_and_auto() {
        #[derive(Deserialize)]
        struct O {
            d: BatchDelay,
        }
        let o: O =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&serde_json_like(5)).unwrap()).unwrap();
        assert_eq!(o.d, BatchDelay::Fixed(5));
        let o: O =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&serde_json_like("auto")).unwrap())
                .unwrap();
        assert_eq!(o.d, BatchDelay::Auto);
    }

    fn serde_json_like<T: Serialize>(d: T) -> BTreeMap<&'static str, T> {
        BTreeMap::from([("d", d)])
    }

    #[test]
    fn servable_refs_parse_and_print_back() {
        for (text, parsed) in [
            ("noop", ServableRef::Latest("noop".into())),
            (
                "bandgap@1.2.0",
                ServableRef::Exact {
                    name: "bandgap".into(),
                    version: "1.2.0".into(),
                },
            ),
            ("*", ServableRef::Any),
        ] {
            assert_eq!(ServableRef::parse(text), Ok(parsed.clone()), "{text}");
            assert_eq!(text.parse::<ServableRef>(), Ok(parsed.clone()));
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(ServableRef::Any.to_string(), ANY_SERVABLE_WIRE);
        let exact = ServableRef::parse("m@1.0.0").unwrap();
        assert_eq!((exact.name(), exact.version()), (Some("m"), Some("1.0.0")));
        assert_eq!(ServableRef::Any.name(), None);
    }

    #[test]
    fn malformed_servable_refs_say_what_is_missing() {
        assert_eq!(ServableRef::parse(""), Err(ServableRefError::Empty));
        assert_eq!(
            ServableRef::parse("@1.0.0"),
            Err(ServableRefError::NoName("@1.0.0".into()))
        );
        let no_version = ServableRefError::NoVersion { name: "m".into() };
        assert_eq!(ServableRef::parse("m@"), Err(no_version.clone()));
        assert_eq!(no_version.to_string(), "`m@` has no version after `@`");
    }

    #[test]
    fn a_reference_spells_only_its_own_id() {
        let exact = ServableRef::parse("m@1.0.0").unwrap();
        assert!(exact.spells("m@1.0.0"));
        assert!(!exact.spells("m@1.0.01"));
        assert!(!exact.spells("m"));
        assert!(!exact.spells("mm@1.0.0"));
        let latest = ServableRef::parse("noop").unwrap();
        assert!(latest.spells("noop"));
        assert!(!latest.spells("noop@1.0.0"));
        assert!(!ServableRef::Any.spells("*"));
    }

    #[test]
    fn resources_and_environments_are_optional_and_old_records_read() {
        let text = r#"
name = "gpu"
version = "1.0.0"
title = "t"
license = "MIT"
model_type = "other"
input = { kind = "string" }
output = { kind = "string" }
runtime = { kind = "exec", command = "python3" }
"#;
        let plain: ServableSpec = toml::from_str(text).unwrap();
        assert_eq!(plain.resources, Resources::default());
        assert_eq!(plain.environment, None);
        // A spec without an environment is 18 fields; one written before
        // resources existed (17) reads as needing nothing.
        let bytes = rmp_serde::to_vec(&plain).unwrap();
        let fields = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let fields = fields.as_array().unwrap().clone();
        assert_eq!(fields.len(), 18);
        let mut old = Vec::new();
        rmpv::encode::write_value(&mut old, &rmpv::Value::Array(fields[..17].to_vec())).unwrap();
        let back: ServableSpec = rmp_serde::from_slice(&old).unwrap();
        assert_eq!(back, plain);
        let with_env: ServableSpec = toml::from_str(&format!(
            "{text}\n[environment]\npython = \">=3.9\"\npackages = [\"numpy\"]\n"
        ))
        .unwrap();
        let bytes = rmp_serde::to_vec(&with_env).unwrap();
        let fields = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(fields.as_array().map(Vec::len), Some(19));
        assert_eq!(
            rmp_serde::from_slice::<ServableSpec>(&bytes).unwrap(),
            with_env
        );
        // A record without a lock is its three fields, as before.
        let record = ServableRecord {
            spec: plain.clone(),
            files: vec![],
            published_us: 1,
            lock: None,
            access: None,
        };
        let bytes = rmp_serde::to_vec(&record).unwrap();
        let fields = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(fields.as_array().map(Vec::len), Some(3));
        let locked = ServableRecord {
            lock: Some(EnvironmentLock {
                requirements: vec!["numpy==2.1.0".into()],
                wheels: vec![],
            }),
            ..record
        };
        let back: ServableRecord =
            rmp_serde::from_slice(&rmp_serde::to_vec(&locked).unwrap()).unwrap();
        assert_eq!(back, locked);
        assert!(!back.same_content(&ServableRecord {
            lock: None,
            ..locked.clone()
        }));
        let gpu: ServableSpec =
            toml::from_str(&format!("{text}\n[resources]\ngpus = 1\n")).unwrap();
        assert_eq!(gpu.resources.gpus, 1);
        let back: ServableSpec = rmp_serde::from_slice(&rmp_serde::to_vec(&gpu).unwrap()).unwrap();
        assert_eq!(back, gpu);
        assert!(
            toml::from_str::<ServableSpec>(&format!("{text}\n[resources]\ncpus = 1\n")).is_err()
        );
    }

    #[test]
    fn placement_is_read_and_written_only_when_declared() {
        let plain = Resources {
            gpus: 2,
            ..Resources::default()
        };
        let bytes = rmp_serde::to_vec(&plain).unwrap();
        let fields = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(fields.as_array().map(Vec::len), Some(1), "as before pools");
        assert_eq!(rmp_serde::from_slice::<Resources>(&bytes).unwrap(), plain);
        let placed: Resources =
            toml::from_str("pools = [\"gpu\"]\nlabels = { site = \"polaris\" }\n").unwrap();
        assert!(placed.places() && placed.gpus == 0);
        let bytes = rmp_serde::to_vec(&placed).unwrap();
        let fields = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(fields.as_array().map(Vec::len), Some(3));
        assert_eq!(rmp_serde::from_slice::<Resources>(&bytes).unwrap(), placed);
        let named = rmp_serde::to_vec_named(&placed).unwrap();
        assert_eq!(rmp_serde::from_slice::<Resources>(&named).unwrap(), placed);
        assert!(toml::from_str::<Resources>("pool = [\"gpu\"]\n").is_err());
    }

    #[test]
    fn access_keeps_the_lock_in_its_place_and_old_records_belong_to_the_daemon_user() {
        use crate::access::{Access, Visibility};
        let spec: ServableSpec = toml::from_str(
            r#"
name = "a"
version = "1.0.0"
title = "t"
license = "MIT"
model_type = "other"
input = { kind = "string" }
output = { kind = "string" }
runtime = { kind = "exec", command = "python3" }
"#,
        )
        .unwrap();
        let record = ServableRecord {
            spec,
            files: vec![],
            published_us: 1,
            lock: None,
            access: Some(Access {
                owner: Some(1000),
                visibility: Visibility::Public,
                users: vec![1001],
                groups: vec![50],
                shared_memo: false,
            }),
        };
        let bytes = rmp_serde::to_vec(&record).unwrap();
        let fields = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        assert_eq!(fields.as_array().map(Vec::len), Some(5));
        let back: ServableRecord = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, record);
        assert_eq!(back.access_or_default(0).owner, Some(1000));
        let old = ServableRecord {
            access: None,
            ..record
        };
        let access = old.access_or_default(7);
        assert_eq!(access.owner, Some(7));
        assert_eq!(access.visibility, Visibility::Owner);
        assert_eq!("public".parse::<Visibility>(), Ok(Visibility::Public));
        assert!("everyone".parse::<Visibility>().is_err());
    }
}
