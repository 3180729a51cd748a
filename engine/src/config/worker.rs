//! `[worker]`: what each worker looks like.

use flotilla_protocol::placement::{
    self, AcceleratorKind, CpuAffinity, NodeResources, PlacementError,
};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ConfigError;
use super::site::{Seconds, Section, Site};

/// `[worker]`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Concurrent servable calls per worker; 0 = cores.
    pub slots: u32,
    /// A worker without its daemon for this long exits.
    pub lost_daemon_exit_s: f64,
    /// How long a starting worker tries the daemon's addresses before it
    /// gives up and reports why each failed.
    pub connect_timeout_s: f64,
    /// Worker executable; unset = next to `flotilla`, else PATH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Shell lines run before the workers start.
    pub init: String,
    /// The node's accelerators, by the names the vendor's variable takes
    /// (a count `N` in the file names them `0` to `N-1`); shared evenly
    /// among each worker's slots. Empty: none are handed out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accelerators: Vec<String>,
    /// Whose accelerators they are (set whenever there are any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator_kind: Option<AcceleratorKind>,
    /// How the node's cores are shared among each worker's slots.
    pub cpu_affinity: CpuAffinity,
    /// Where on each node workers keep servable files fetched from the
    /// daemon (an absolute path); unset: the worker's default, in the
    /// node's temporary directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<String>,
    /// The daemon's object store as the workers' nodes see it (an absolute
    /// path). Unset: the shared directory's `objects/` for blocks of the
    /// local channel; none over SSH or on Kubernetes, where the daemon's
    /// paths mean nothing, so workers fetch servables' files from the
    /// daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_dir: Option<String>,
    /// The Python each node makes servables' declared environments with
    /// (a command on the PATH `init` leaves, or an absolute path); unset:
    /// `python3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
    /// Resident memory, MiB, each worker's warm servable processes may
    /// hold: over it, idle processes of other servables are let go and
    /// warm-ups ahead of need are refused; unset: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm_memory_mb: Option<u64>,
    /// Intra-op threads of each ONNX Runtime session; unset: a slot's
    /// cores (or an even share of the worker's), or all the worker's for a
    /// session per worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnx_threads: Option<u32>,
    /// `"slot"` (the default) or `"worker"`: ONNX Runtime sessions per
    /// servable and slot, or one per servable and worker that its slots
    /// take turns on (one copy of the model in memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnx_session: Option<String>,
}

impl WorkerConfig {
    /// The node's accelerators and core rule, as workers are told.
    pub fn node_resources(&self) -> NodeResources {
        NodeResources {
            devices: self.accelerators.clone(),
            kind: self.accelerator_kind,
            affinity: self.cpu_affinity.clone(),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            slots: 0,
            lost_daemon_exit_s: 60.0,
            connect_timeout_s: 10.0,
            command: None,
            init: String::new(),
            accelerators: Vec::new(),
            accelerator_kind: None,
            cpu_affinity: CpuAffinity::None,
            cache_dir: None,
            objects_dir: None,
            python: None,
            warm_memory_mb: None,
            onnx_threads: None,
            onnx_session: None,
        }
    }
}

/// Most concurrent servable calls one worker may run.
const MAX_SLOTS: u32 = 4_096;

/// `[worker]` as written: any key may be missing.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default, expecting = "struct WorkerConfig")]
pub(crate) struct RawWorker {
    slots: Option<Spanned<u32>>,
    lost_daemon_exit_s: Option<Spanned<f64>>,
    connect_timeout_s: Option<Spanned<f64>>,
    command: Option<Spanned<String>>,
    init: Option<Spanned<String>>,
    accelerators: Option<Spanned<RawAccelerators>>,
    accelerator_kind: Option<Spanned<AcceleratorKind>>,
    cpu_affinity: Option<Spanned<RawAffinity>>,
    cache_dir: Option<Spanned<String>>,
    objects_dir: Option<Spanned<String>>,
    python: Option<Spanned<String>>,
    warm_memory_mb: Option<Spanned<u64>>,
    onnx_threads: Option<Spanned<u32>>,
    onnx_session: Option<Spanned<String>>,
}

/// Most accelerators a node may name.
const MAX_ACCELERATORS: usize = 1_024;

/// `accelerators` as written: a count or names.
#[derive(Deserialize, Debug)]
#[serde(
    untagged,
    expecting = "a number of accelerators or a list of their names"
)]
enum RawAccelerators {
    /// `accelerators = 4`: named `0` to `3`.
    Count(u32),
    /// `accelerators = ["0.0", "0.1"]`.
    Names(Vec<String>),
}

/// `cpu_affinity` as written: a rule, or one core list per group.
#[derive(Deserialize, Debug)]
#[serde(
    untagged,
    expecting = "\"none\", \"block\", \"alternating\", \"list:CORES\" or a list of core lists"
)]
enum RawAffinity {
    /// `cpu_affinity = "block"`, `"list:1-51,53-103"`.
    Rule(String),
    /// `cpu_affinity = ["1-51", "53-103"]`: one group per entry.
    Groups(Vec<String>),
}

impl RawWorker {
    /// The settings in force, or what is wrong with them.
    pub(crate) fn check(self, site: &mut Site) -> Result<WorkerConfig, ConfigError> {
        let d = WorkerConfig::default();
        let mut s = site.section("worker");
        Ok(WorkerConfig {
            slots: s.count("slots", self.slots, d.slots, 0, MAX_SLOTS)?,
            lost_daemon_exit_s: s.seconds(
                "lost_daemon_exit_s",
                self.lost_daemon_exit_s,
                d.lost_daemon_exit_s,
                Seconds::Positive,
            )?,
            connect_timeout_s: s.seconds(
                "connect_timeout_s",
                self.connect_timeout_s,
                d.connect_timeout_s,
                Seconds::Positive,
            )?,
            command: s.opt("command", self.command),
            init: s.or("init", self.init, d.init),
            accelerators: accelerators(&mut s, self.accelerators)?,
            accelerator_kind: s.opt("accelerator_kind", self.accelerator_kind),
            cpu_affinity: cpu_affinity(&mut s, self.cpu_affinity)?,
            cache_dir: absolute(&mut s, "cache_dir", self.cache_dir)?,
            objects_dir: absolute(&mut s, "objects_dir", self.objects_dir)?,
            python: python(&mut s, self.python)?,
            warm_memory_mb: warm_memory_mb(&mut s, self.warm_memory_mb)?,
            onnx_threads: onnx_threads(&mut s, self.onnx_threads)?,
            onnx_session: onnx_session(&mut s, self.onnx_session)?,
        })
        .and_then(|w| check_split(&s, w))
    }
}

/// `warm_memory_mb`: at least 1.
fn warm_memory_mb(s: &mut Section, raw: Option<Spanned<u64>>) -> Result<Option<u64>, ConfigError> {
    let mb = s.opt("warm_memory_mb", raw);
    if mb == Some(0) {
        return Err(s.invalid(
            "warm_memory_mb",
            "must be at least 1 (leave it out for no limit)",
        ));
    }
    Ok(mb)
}

/// `onnx_threads`: at least 1.
fn onnx_threads(s: &mut Section, raw: Option<Spanned<u32>>) -> Result<Option<u32>, ConfigError> {
    let threads = s.opt("onnx_threads", raw);
    if threads == Some(0) {
        return Err(s.invalid(
            "onnx_threads",
            "must be at least 1 (leave it out for the slots' cores)",
        ));
    }
    Ok(threads)
}

/// `onnx_session`: `"slot"` or `"worker"`.
fn onnx_session(
    s: &mut Section,
    raw: Option<Spanned<String>>,
) -> Result<Option<String>, ConfigError> {
    match s.opt("onnx_session", raw) {
        Some(v) if !flotilla_protocol::launch::ONNX_SESSIONS.contains(&v.as_str()) => Err(s.invalid(
            "onnx_session",
            format!("must be \"slot\" (a session per slot) or \"worker\" (one per worker, shared by its slots), got `{v}`"),
        )),
        other => Ok(other),
    }
}

/// A directory on the workers' nodes (the cache, the object store):
/// absolute, since each worker starts in its block's run directory.
fn absolute(
    s: &mut Section,
    key: &str,
    raw: Option<Spanned<String>>,
) -> Result<Option<String>, ConfigError> {
    match s.opt(key, raw) {
        Some(dir) if !dir.starts_with('/') => {
            Err(s.invalid(key, format!("must be an absolute path, got `{dir}`")))
        }
        other => Ok(other),
    }
}

/// The nodes' Python: one word, a command or a path.
fn python(s: &mut Section, raw: Option<Spanned<String>>) -> Result<Option<String>, ConfigError> {
    match s.opt("python", raw) {
        Some(p) if p.is_empty() || p.chars().any(char::is_whitespace) => Err(s.invalid(
            "python",
            format!("must be a command (like \"python3\") or an absolute path, got `{p}`"),
        )),
        other => Ok(other),
    }
}

/// The node's accelerators, named.
fn accelerators(
    s: &mut Section,
    raw: Option<Spanned<RawAccelerators>>,
) -> Result<Vec<String>, ConfigError> {
    let names = match s.opt("accelerators", raw) {
        None => return Ok(Vec::new()),
        Some(RawAccelerators::Count(n)) if n as usize > MAX_ACCELERATORS => {
            return Err(s.invalid(
                "accelerators",
                format!("must be at most {MAX_ACCELERATORS}, got {n}"),
            ));
        }
        Some(RawAccelerators::Count(n)) => placement::numbered_devices(n),
        Some(RawAccelerators::Names(names)) if names.len() > MAX_ACCELERATORS => {
            return Err(s.invalid(
                "accelerators",
                format!("names more than {MAX_ACCELERATORS} accelerators"),
            ));
        }
        Some(RawAccelerators::Names(names)) => names,
    };
    placement::check_devices(&names).map_err(|e| s.invalid("accelerators", e.to_string()))?;
    Ok(names)
}

/// The core rule.
fn cpu_affinity(
    s: &mut Section,
    raw: Option<Spanned<RawAffinity>>,
) -> Result<CpuAffinity, ConfigError> {
    let text = match s.opt("cpu_affinity", raw) {
        None => return Ok(CpuAffinity::None),
        Some(RawAffinity::Rule(rule)) => rule,
        Some(RawAffinity::Groups(groups)) => format!("list:{}", groups.join(":")),
    };
    CpuAffinity::parse(&text).map_err(|e| s.invalid("cpu_affinity", e.to_string()))
}

/// The accelerators and core groups share out among the slots; unset
/// slots with accelerators are one per accelerator (what the worker
/// does), otherwise as many as the node's cores, unknown here.
fn check_split(s: &Section, worker: WorkerConfig) -> Result<WorkerConfig, ConfigError> {
    let node = worker.node_resources();
    let slots = match (worker.slots, node.devices.len()) {
        (0, 0) => return Ok(worker),
        (0, devices) => devices as u32,
        (slots, _) => slots,
    };
    match placement::check_split(&node, slots) {
        Ok(()) => Ok(worker),
        Err(PlacementError::NoKind) => Err(s.invalid(
            "accelerators",
            format!(
                "names {} accelerators but not whose: set accelerator_kind to nvidia (CUDA_VISIBLE_DEVICES), amd (ROCR_VISIBLE_DEVICES) or intel (ZE_AFFINITY_MASK)",
                node.devices.len()
            ),
        )),
        Err(e @ PlacementError::Uneven { .. }) if worker.slots > 0 => {
            Err(s.invalid("slots", e.to_string()))
        }
        Err(e @ PlacementError::UnevenGroups { .. }) => Err(s.invalid("cpu_affinity", e.to_string())),
        Err(e) => Err(s.invalid("accelerators", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use flotilla_protocol::placement::{AcceleratorKind, CpuAffinity};

    fn worker(text: &str) -> Result<super::WorkerConfig, String> {
        Config::parse(&format!("[worker]\n{text}"), "s.toml")
            .map(|c| c.worker)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accelerators_are_a_count_or_names_with_their_kind() {
        let w = worker("slots = 4\naccelerators = 4\naccelerator_kind = \"nvidia\"\n").unwrap();
        assert_eq!(w.accelerators, ["0", "1", "2", "3"]);
        assert_eq!(w.accelerator_kind, Some(AcceleratorKind::Nvidia));
        let tiles = "accelerators = [\"0.0\", \"0.1\", \"1.0\", \"1.1\"]\naccelerator_kind = \"intel\"\ncpu_affinity = [\"1-51\", \"53-103\"]\n";
        let w = worker(tiles).unwrap();
        assert_eq!(w.accelerators, ["0.0", "0.1", "1.0", "1.1"]);
        assert_eq!(w.cpu_affinity.to_string(), "list:1-51:53-103");
        let w = worker("cpu_affinity = \"alternating\"\n").unwrap();
        assert_eq!(w.cpu_affinity, CpuAffinity::Alternating);
        assert_eq!(worker("").unwrap().cpu_affinity, CpuAffinity::None);
        let w = worker("python = \"/opt/py/bin/python3\"\n").unwrap();
        assert_eq!(w.python.as_deref(), Some("/opt/py/bin/python3"));
        let w = worker("cache_dir = \"/local/scratch/fl\"\n").unwrap();
        assert_eq!(w.cache_dir.as_deref(), Some("/local/scratch/fl"));
        let w = worker("warm_memory_mb = 4096\n").unwrap();
        assert_eq!(w.warm_memory_mb, Some(4096));
        assert!(worker("warm_memory_mb = 0\n").is_err());
        let w = worker("onnx_threads = 4\nonnx_session = \"worker\"\n").unwrap();
        assert_eq!(w.onnx_threads, Some(4));
        assert_eq!(w.onnx_session.as_deref(), Some("worker"));
        assert!(worker("onnx_threads = 0\n").is_err());
        let e = worker("onnx_session = \"node\"\n").unwrap_err().to_string();
        assert!(e.contains("onnx_session") && e.contains("node"), "{e}");
        let w = worker("objects_dir = \"/scratch/me/fl/objects\"\n").unwrap();
        assert_eq!(w.objects_dir.as_deref(), Some("/scratch/me/fl/objects"));
        assert_eq!(worker("").unwrap().objects_dir, None);
    }

    #[test]
    fn shares_that_cannot_work_are_refused_at_their_line() {
        let cases = [
            (
                "slots = 8\naccelerators = 4\naccelerator_kind = \"amd\"\n",
                "s.toml:2: `worker.slots`: 4 accelerators cannot be shared evenly among 8 slots",
            ),
            (
                "accelerators = 2\n",
                "s.toml:2: `worker.accelerators`: names 2 accelerators but not whose: set accelerator_kind",
            ),
            (
                "accelerators = [\"0\", \"0\"]\naccelerator_kind = \"nvidia\"\n",
                "s.toml:2: `worker.accelerators`: accelerator `0` is named twice",
            ),
            (
                "accelerators = 5000\naccelerator_kind = \"nvidia\"\n",
                "s.toml:2: `worker.accelerators`: must be at most 1024",
            ),
            (
                "cpu_affinity = \"list:3-1\"\n",
                "s.toml:2: `worker.cpu_affinity`: core list `3-1`: range 3-1 runs backwards",
            ),
            (
                "slots = 3\ncpu_affinity = \"list:1-51:53-103\"\n",
                "s.toml:3: `worker.cpu_affinity`: 2 core groups cannot take 3 slots evenly",
            ),
            ("accelerator_kind = \"tpu\"\n", "s.toml: "),
            (
                "cache_dir = \"cache\"\n",
                "s.toml:2: `worker.cache_dir`: must be an absolute path, got `cache`",
            ),
            (
                "objects_dir = \"~/objects\"\n",
                "s.toml:2: `worker.objects_dir`: must be an absolute path, got `~/objects`",
            ),
            (
                "python = \"python 3\"\n",
                "s.toml:2: `worker.python`: must be a command",
            ),
        ];
        for (text, expected) in cases {
            let err = worker(text).unwrap_err();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
    }
}
