//! How a worker is started, defined once for both ends: its command-line
//! options, the environment variables it reads, and the daemon's contact
//! file.
//!
//! The daemon renders a [`WorkerArgs`] into the command and environment of
//! each block's job ([`WorkerArgs::to_argv`], [`WorkerArgs::to_env`]); the
//! worker parses its own command line and environment back into one
//! ([`WorkerArgs::parse`]). Options that may come from either place
//! (`--address` or [`DAEMON_ADDRESS_ENV`], ...) take the command line
//! first. What travels in the environment does so because it is secret
//! ([`SECRET_ENV`]: the command line is visible to every user) or because a
//! launcher or the job script sets it per worker ([`RANK_ENV`],
//! [`JOB_END_ENV`], ...).
//!
//! A worker attached by hand finds the daemon through the contact file
//! ([`CONTACT_FILE`], a [`DaemonInfo`] in TOML) in its state directory.
//!
//! Nothing here touches the process's own arguments or environment: both
//! are passed in.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::paths::HOME_ENV;
pub use crate::secret::SECRET_ENV;

/// The daemon's advertised addresses, comma-separated (`--address`).
pub const DAEMON_ADDRESS_ENV: &str = "FLOTILLA_DAEMON_ADDRESS";
/// The daemon's interchange port (`--port`).
pub const DAEMON_PORT_ENV: &str = "FLOTILLA_DAEMON_PORT";
/// The daemon's object store, where published servables' files are.
pub const OBJECTS_ENV: &str = "FLOTILLA_OBJECTS";
/// Where the worker keeps servable files it fetched from the daemon, one
/// copy per node (`--cache-dir`).
pub const CACHE_DIR_ENV: &str = "FLOTILLA_CACHE_DIR";
/// The Python a worker makes servables' environments with (`--python`).
pub const PYTHON_ENV: &str = "FLOTILLA_PYTHON";
/// Resident memory, in MiB, a worker's warm servable processes may hold
/// before warm-ups are refused (`--warm-memory-mb`).
pub const WARM_MEMORY_MB_ENV: &str = "FLOTILLA_WARM_MEMORY_MB";
/// Intra-op threads of each ONNX Runtime session (`--onnx-threads`).
pub const ONNX_THREADS_ENV: &str = "FLOTILLA_ONNX_THREADS";
/// ONNX Runtime sessions per slot or per worker (`--onnx-session`).
pub const ONNX_SESSION_ENV: &str = "FLOTILLA_ONNX_SESSION";
/// The values `--onnx-session` takes: a session per slot, or one per
/// worker shared by its slots.
pub const ONNX_SESSIONS: &[&str] = &["slot", "worker"];
/// When the worker's job ends, in Unix seconds (the block script sets it).
pub const JOB_END_ENV: &str = "FLOTILLA_JOB_END";
/// A process id the worker exits with (a local daemon's own).
pub const EXIT_WITH_PID_ENV: &str = "FLOTILLA_EXIT_WITH_PID";
/// The worker's rank within its block, 0-based (the launcher sets it).
pub const RANK_ENV: &str = "FLOTILLA_WORKER_RANK";
/// The node the worker runs on, as the scheduler names it (the launcher
/// sets it).
pub const NODE_ENV: &str = "FLOTILLA_NODE_NAME";
/// The block the worker belongs to (the launcher sets it).
pub const BLOCK_ENV: &str = "FLOTILLA_BLOCK_ID";
/// The worker's log filter (`tracing` syntax, e.g. `debug`).
pub const LOG_ENV: &str = "FLOTILLA_LOG";
/// The largest frame the worker accepts from the daemon
/// (`--max-frame-bytes`).
pub const MAX_FRAME_BYTES_ENV: &str = "FLOTILLA_MAX_FRAME_BYTES";

/// The variables a block's job sets for its workers, in the order a
/// container wrapper passes them through.
pub const BLOCK_ENV_VARS: [&str; 7] = [
    SECRET_ENV,
    OBJECTS_ENV,
    RANK_ENV,
    NODE_ENV,
    BLOCK_ENV,
    JOB_END_ENV,
    LOG_ENV,
];

/// The variables of [`BLOCK_ENV_VARS`] that carry a credential: a worker
/// takes them out of its own environment once read, and no process it
/// starts (a servable's above all) inherits them.
pub const CREDENTIAL_ENV_VARS: [&str; 1] = [SECRET_ENV];

/// The name of the contact file in a daemon's state directory (and of its
/// copy in the shared directory).
pub const CONTACT_FILE: &str = "daemon.toml";

/// Seconds without the daemon after which a worker exits, by default.
pub const DEFAULT_LOST_DAEMON_EXIT_S: f64 = 60.0;
/// Seconds a worker tries to reach the daemon, by default.
pub const DEFAULT_CONNECT_TIMEOUT_S: f64 = 10.0;
/// Seconds before its job's end a worker leaves, by default.
pub const DEFAULT_WALLTIME_MARGIN_S: f64 = 60.0;

/// The worker's command-line options, as written.
pub mod flag {
    /// Daemon addresses to try, comma-separated (`HOST` or `HOST:PORT`).
    pub const ADDRESS: &str = "--address";
    /// Daemon interchange port.
    pub const PORT: &str = "--port";
    /// The daemon's state directory (address, port, secret, objects).
    pub const STATE_DIR: &str = "--state-dir";
    /// File holding the daemon's 32-byte secret.
    pub const SECRET_FILE: &str = "--secret-file";
    /// The daemon's object store.
    pub const OBJECTS_DIR: &str = "--objects-dir";
    /// The node's cache of servable files fetched from the daemon.
    pub const CACHE_DIR: &str = "--cache-dir";
    /// The Python servables' environments are made with.
    pub const PYTHON: &str = "--python";
    /// Memory budget of the warm servable processes, MiB.
    pub const WARM_MEMORY_MB: &str = "--warm-memory-mb";
    /// Intra-op threads of each ONNX Runtime session.
    pub const ONNX_THREADS: &str = "--onnx-threads";
    /// ONNX Runtime sessions per slot or per worker.
    pub const ONNX_SESSION: &str = "--onnx-session";
    /// Block the worker belongs to.
    pub const BLOCK_ID: &str = "--block-id";
    /// Batches run at once.
    pub const SLOTS: &str = "--slots";
    /// Worker id.
    pub const WORKER_ID: &str = "--worker-id";
    /// Exit after this many seconds without the daemon.
    pub const LOST_DAEMON_EXIT_S: &str = "--lost-daemon-exit-s";
    /// Give up reaching the daemon after this many seconds.
    pub const CONNECT_TIMEOUT_S: &str = "--connect-timeout-s";
    /// When the job ends, in Unix seconds.
    pub const JOB_END: &str = "--job-end";
    /// Leave this many seconds before the job ends.
    pub const WALLTIME_MARGIN_S: &str = "--walltime-margin-s";
    /// Container runtime for servables that name an image.
    pub const CONTAINER_RUNTIME: &str = "--container-runtime";
    /// The container runtime's executable.
    pub const CONTAINER_COMMAND: &str = "--container-command";
    /// Extra bind for servable containers (repeatable).
    pub const CONTAINER_BIND: &str = "--container-bind";
    /// Extra runtime option for servable containers (repeatable).
    pub const CONTAINER_OPTION: &str = "--container-option";
    /// Command template of the `custom` container runtime.
    pub const CONTAINER_TEMPLATE: &str = "--container-template";
    /// GPUs to make visible in servable containers.
    pub const GPUS: &str = "--gpus";
    /// The node's accelerators, comma-separated, shared among the slots.
    pub const ACCELERATORS: &str = "--accelerators";
    /// Whose accelerators they are: nvidia, amd or intel.
    pub const ACCELERATOR_KIND: &str = "--accelerator-kind";
    /// How the node's cores are shared among the slots.
    pub const CPU_AFFINITY: &str = "--cpu-affinity";
    /// Largest frame the worker accepts from the daemon.
    pub const MAX_FRAME_BYTES: &str = "--max-frame-bytes";
    /// Print the usage and exit.
    pub const HELP: &str = "--help";
    /// Print the version and exit.
    pub const VERSION: &str = "--version";
}

/// One of the worker's options, for `--help` and for the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionUsage {
    /// The option, as written (one of [`flag`]).
    pub flag: &'static str,
    /// What its value is, in a word.
    pub value: &'static str,
    /// The variable it falls back to, if any.
    pub env: Option<&'static str>,
    /// What it does.
    pub help: &'static str,
}

/// Every option of the worker, for `--help`.
pub const USAGE: &[OptionUsage] = &[
    OptionUsage {
        flag: flag::ADDRESS,
        value: "LIST",
        env: Some(DAEMON_ADDRESS_ENV),
        help: "daemon addresses to try, comma-separated (HOST or HOST:PORT)",
    },
    OptionUsage {
        flag: flag::PORT,
        value: "PORT",
        env: Some(DAEMON_PORT_ENV),
        help: "daemon interchange port",
    },
    OptionUsage {
        flag: flag::STATE_DIR,
        value: "DIR",
        env: Some(HOME_ENV),
        help: "read address, port and secret from this daemon state directory (default when no address is given: the default state directory, ~/.flotilla)",
    },
    OptionUsage {
        flag: flag::SECRET_FILE,
        value: "FILE",
        env: None,
        help: "file holding the daemon's 32-byte secret (else the hex secret in the environment)",
    },
    OptionUsage {
        flag: flag::OBJECTS_DIR,
        value: "DIR",
        env: Some(OBJECTS_ENV),
        help: "the daemon's object store, where published servables' files are (default: STATE_DIR/objects); a file not readable there is fetched from the daemon",
    },
    OptionUsage {
        flag: flag::CACHE_DIR,
        value: "DIR",
        env: Some(CACHE_DIR_ENV),
        help: "where servable files fetched from the daemon are kept, by hash, shared by the node's workers and reused by later blocks (default: ${TMPDIR:-/tmp}/flotilla-cache-$USER)",
    },
    OptionUsage {
        flag: flag::PYTHON,
        value: "PYTHON",
        env: Some(PYTHON_ENV),
        help: "the Python that servables' declared environments are made with, once per node under the cache directory (default: python3 on PATH)",
    },
    OptionUsage {
        flag: flag::WARM_MEMORY_MB,
        value: "MIB",
        env: Some(WARM_MEMORY_MB_ENV),
        help: "resident memory the worker's warm servable processes may hold: over it, idle processes of other servables are let go and warm-ups ahead of need are refused (default: no limit)",
    },
    OptionUsage {
        flag: flag::ONNX_THREADS,
        value: "N",
        env: Some(ONNX_THREADS_ENV),
        help: "intra-op threads of each ONNX Runtime session (default: a slot's cores, or an even share of the worker's; a shared session, all the worker's)",
    },
    OptionUsage {
        flag: flag::ONNX_SESSION,
        value: "slot|worker",
        env: Some(ONNX_SESSION_ENV),
        help: "one ONNX Runtime session per servable and slot (slot, the default: slots run at once) or per servable and worker (worker: one copy of the model, slots take turns)",
    },
    OptionUsage {
        flag: flag::BLOCK_ID,
        value: "N",
        env: None,
        help: "block this worker belongs to (set by the provider)",
    },
    OptionUsage {
        flag: flag::SLOTS,
        value: "N",
        env: None,
        help: "batches run at once (default: one per accelerator with --accelerators, else the number of cores)",
    },
    OptionUsage {
        flag: flag::WORKER_ID,
        value: "ID",
        env: None,
        help: "worker id (default: HOST-PID-RANDOM)",
    },
    OptionUsage {
        flag: flag::LOST_DAEMON_EXIT_S,
        value: "S",
        env: None,
        help: "exit after this many seconds without the daemon (default: 60)",
    },
    OptionUsage {
        flag: flag::CONNECT_TIMEOUT_S,
        value: "S",
        env: None,
        help: "give up reaching the daemon after this many seconds (default: 10)",
    },
    OptionUsage {
        flag: flag::JOB_END,
        value: "UNIX_S",
        env: Some(JOB_END_ENV),
        help: "when this worker's job ends, in Unix seconds (the block script sets it from the wall time, or Slurm's SLURM_JOB_END_TIME)",
    },
    OptionUsage {
        flag: flag::WALLTIME_MARGIN_S,
        value: "S",
        env: None,
        help: "take no task and leave this many seconds before the job ends (default: 60)",
    },
    OptionUsage {
        flag: flag::CONTAINER_RUNTIME,
        value: "NAME",
        env: None,
        help: "run servables that name a container image in it with this runtime (apptainer, singularity, shifter, podman, docker, charliecloud, custom)",
    },
    OptionUsage {
        flag: flag::CONTAINER_COMMAND,
        value: "PATH",
        env: None,
        help: "the runtime's executable, when not the usual one",
    },
    OptionUsage {
        flag: flag::CONTAINER_BIND,
        value: "HOST[:CONTAINER[:ro]]",
        env: None,
        help: "extra bind for servable containers (repeatable)",
    },
    OptionUsage {
        flag: flag::CONTAINER_OPTION,
        value: "OPTION",
        env: None,
        help: "extra runtime option for servable containers (repeatable)",
    },
    OptionUsage {
        flag: flag::CONTAINER_TEMPLATE,
        value: "TEMPLATE",
        env: None,
        help: "--container-runtime custom: the command template",
    },
    OptionUsage {
        flag: flag::GPUS,
        value: "KIND",
        env: None,
        help: "GPUs to make visible in servable containers: nvidia or amd",
    },
    OptionUsage {
        flag: flag::ACCELERATORS,
        value: "LIST",
        env: None,
        help: "the node's accelerators, comma-separated (0,1,2,3 or Intel tiles 0.0,0.1,...): each slot's servable processes see only an even share of them",
    },
    OptionUsage {
        flag: flag::ACCELERATOR_KIND,
        value: "KIND",
        env: None,
        help: "whose accelerators: nvidia (CUDA_VISIBLE_DEVICES), amd (ROCR_VISIBLE_DEVICES) or intel (ZE_AFFINITY_MASK)",
    },
    OptionUsage {
        flag: flag::CPU_AFFINITY,
        value: "RULE",
        env: None,
        help: "cores of each slot's servable processes: none, block, alternating or list:CORES[:CORES...] (e.g. list:1-51:53-103) (default: none)",
    },
    OptionUsage {
        flag: flag::MAX_FRAME_BYTES,
        value: "BYTES",
        env: Some(MAX_FRAME_BYTES_ENV),
        help: "largest frame accepted from the daemon, announced to it so that it sends nothing larger (default: the daemon's contact file, else 64 MiB)",
    },
];

/// The variables the worker reads that no option stands for, for `--help`.
pub const ENV_USAGE: &[(&str, &str)] = &[
    (
        SECRET_ENV,
        "the daemon's secret, hex (unless --secret-file)",
    ),
    (RANK_ENV, "rank within the block (set by the launcher)"),
    (NODE_ENV, "node name (set by the launcher)"),
    (EXIT_WITH_PID_ENV, "exit when this process is gone"),
    (LOG_ENV, "log filter (default: info)"),
];

/// How a worker is started: everything its command line and environment
/// may say. `None` (or empty) means "not given": the worker's defaults
/// apply.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerArgs {
    /// Daemon addresses, comma-separated (argv, or [`DAEMON_ADDRESS_ENV`]).
    pub address: Option<String>,
    /// Interchange port (argv, or [`DAEMON_PORT_ENV`]).
    pub port: Option<u16>,
    /// The daemon's state directory (argv, or [`HOME_ENV`]).
    pub state_dir: Option<PathBuf>,
    /// File holding the secret (argv).
    pub secret_file: Option<PathBuf>,
    /// The daemon's object store ([`OBJECTS_ENV`], or argv).
    pub objects_dir: Option<PathBuf>,
    /// The node's cache of fetched servable files (argv, or
    /// [`CACHE_DIR_ENV`]).
    pub cache_dir: Option<PathBuf>,
    /// The Python servables' environments are made with (argv, or
    /// [`PYTHON_ENV`]).
    pub python: Option<String>,
    /// Memory budget of the warm servable processes, MiB (argv, or
    /// [`WARM_MEMORY_MB_ENV`]).
    pub warm_memory_mb: Option<u64>,
    /// Intra-op threads of each ONNX Runtime session (argv, or
    /// [`ONNX_THREADS_ENV`]).
    pub onnx_threads: Option<u32>,
    /// `slot` or `worker`, one of [`ONNX_SESSIONS`] (argv, or
    /// [`ONNX_SESSION_ENV`]).
    pub onnx_session: Option<String>,
    /// Block the worker belongs to (argv).
    pub block_id: Option<u32>,
    /// Batches run at once (argv).
    pub slots: Option<u32>,
    /// Worker id (argv).
    pub worker_id: Option<String>,
    /// Seconds without the daemon before exiting (argv).
    pub lost_daemon_exit_s: Option<f64>,
    /// Seconds to try reaching the daemon (argv).
    pub connect_timeout_s: Option<f64>,
    /// When the job ends, Unix seconds ([`JOB_END_ENV`], or argv).
    pub job_end: Option<u64>,
    /// Seconds before the job's end to leave (argv).
    pub walltime_margin_s: Option<f64>,
    /// Container runtime for servables that name an image (argv).
    pub container_runtime: Option<String>,
    /// The runtime's executable (argv).
    pub container_command: Option<String>,
    /// Extra binds for servable containers (argv, repeated).
    pub container_binds: Vec<String>,
    /// Extra runtime options for servable containers (argv, repeated).
    pub container_options: Vec<String>,
    /// The `custom` runtime's command template (argv).
    pub container_template: Option<String>,
    /// GPUs for servable containers (argv).
    pub gpus: Option<String>,
    /// The node's accelerators, shared among the slots (argv,
    /// comma-separated).
    pub accelerators: Vec<String>,
    /// Their vendor (argv).
    pub accelerator_kind: Option<String>,
    /// How the node's cores are shared among the slots (argv).
    pub cpu_affinity: Option<String>,
    /// Largest frame accepted from the daemon (argv, or
    /// [`MAX_FRAME_BYTES_ENV`]).
    pub max_frame_bytes: Option<usize>,
    /// The daemon's secret, hex ([`SECRET_ENV`]; never on the command
    /// line, which other users can read).
    pub secret_hex: Option<String>,
    /// Exit with this process ([`EXIT_WITH_PID_ENV`]).
    pub exit_with_pid: Option<i32>,
    /// Rank within the block ([`RANK_ENV`]).
    pub rank: Option<u32>,
    /// Node name ([`NODE_ENV`]).
    pub node: Option<String>,
}

/// A command line or environment the worker cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    /// Not one of the worker's options.
    #[error("unknown argument `{0}` (see --help)")]
    Unknown(String),
    /// An option without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// An option given more than once that takes one value.
    #[error("{0} is given more than once")]
    Repeated(&'static str),
    /// A value of the wrong kind.
    #[error("{name} `{value}` is not {expected}")]
    BadValue {
        /// The option or variable.
        name: &'static str,
        /// The value as given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// `--help` was asked for (not a failure: print [`USAGE`]).
    #[error("help requested")]
    HelpRequested,
    /// `--version` was asked for (not a failure: print the version).
    #[error("version requested")]
    VersionRequested,
}

/// `value` parsed as `T`, or why not.
fn typed<T: std::str::FromStr>(
    name: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, ArgsError> {
    value.trim().parse().map_err(|_| ArgsError::BadValue {
        name,
        value: value.to_owned(),
        expected,
    })
}

/// Stores `value` in a single-valued option.
fn once<T>(field: &mut Option<T>, name: &'static str, value: T) -> Result<(), ArgsError> {
    if field.is_some() {
        return Err(ArgsError::Repeated(name));
    }
    *field = Some(value);
    Ok(())
}

impl WorkerArgs {
    /// The command-line words (without the program) for these options.
    pub fn to_argv(&self) -> Vec<String> {
        fn put(words: &mut Vec<String>, name: &str, value: Option<String>) {
            if let Some(value) = value {
                words.extend([name.to_owned(), value]);
            }
        }
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let seconds = |s: Option<f64>| s.map(|s| s.to_string());
        let w = &mut Vec::new();
        put(w, flag::ADDRESS, self.address.clone());
        put(w, flag::PORT, self.port.map(|p| p.to_string()));
        put(w, flag::STATE_DIR, path(&self.state_dir));
        put(w, flag::SECRET_FILE, path(&self.secret_file));
        put(w, flag::CACHE_DIR, path(&self.cache_dir));
        put(w, flag::PYTHON, self.python.clone());
        put(
            w,
            flag::WARM_MEMORY_MB,
            self.warm_memory_mb.map(|m| m.to_string()),
        );
        put(
            w,
            flag::ONNX_THREADS,
            self.onnx_threads.map(|t| t.to_string()),
        );
        put(w, flag::ONNX_SESSION, self.onnx_session.clone());
        put(w, flag::BLOCK_ID, self.block_id.map(|b| b.to_string()));
        put(w, flag::WORKER_ID, self.worker_id.clone());
        put(
            w,
            flag::LOST_DAEMON_EXIT_S,
            seconds(self.lost_daemon_exit_s),
        );
        put(w, flag::CONNECT_TIMEOUT_S, seconds(self.connect_timeout_s));
        put(w, flag::SLOTS, self.slots.map(|s| s.to_string()));
        put(w, flag::WALLTIME_MARGIN_S, seconds(self.walltime_margin_s));
        put(w, flag::CONTAINER_RUNTIME, self.container_runtime.clone());
        put(w, flag::CONTAINER_COMMAND, self.container_command.clone());
        for bind in &self.container_binds {
            put(w, flag::CONTAINER_BIND, Some(bind.clone()));
        }
        // One word, so an option that starts with `-` is not read as one
        // of the worker's.
        for option in &self.container_options {
            w.push(format!("{}={option}", flag::CONTAINER_OPTION));
        }
        put(w, flag::CONTAINER_TEMPLATE, self.container_template.clone());
        put(w, flag::GPUS, self.gpus.clone());
        put(
            w,
            flag::ACCELERATORS,
            (!self.accelerators.is_empty()).then(|| self.accelerators.join(",")),
        );
        put(w, flag::ACCELERATOR_KIND, self.accelerator_kind.clone());
        put(w, flag::CPU_AFFINITY, self.cpu_affinity.clone());
        put(
            w,
            flag::MAX_FRAME_BYTES,
            self.max_frame_bytes.map(|b| b.to_string()),
        );
        std::mem::take(w)
    }

    /// The environment variables for these options (those that travel in
    /// the environment: the secret, the object store, the job's end, the
    /// process to exit with, rank and node).
    pub fn to_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut put = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                env.insert(name.to_owned(), value);
            }
        };
        put(SECRET_ENV, self.secret_hex.clone());
        put(
            OBJECTS_ENV,
            self.objects_dir.as_ref().map(|p| p.display().to_string()),
        );
        put(JOB_END_ENV, self.job_end.map(|e| e.to_string()));
        put(EXIT_WITH_PID_ENV, self.exit_with_pid.map(|p| p.to_string()));
        put(RANK_ENV, self.rank.map(|r| r.to_string()));
        put(NODE_ENV, self.node.clone());
        env
    }

    /// Parses a command line (without the program) and an environment
    /// (`env` looks a variable up; empty values count as unset).
    pub fn parse<I, S>(argv: I, env: impl Fn(&str) -> Option<String>) -> Result<Self, ArgsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut args = WorkerArgs::default();
        let mut words = argv
            .into_iter()
            .map(|w| w.into().to_string_lossy().into_owned());
        while let Some(word) = words.next() {
            let (name, inline) = match word.split_once('=') {
                Some((name, value)) if name.starts_with("--") => {
                    (name.to_owned(), Some(value.to_owned()))
                }
                _ => (word.clone(), None),
            };
            match name.as_str() {
                flag::HELP | "-h" => return Err(ArgsError::HelpRequested),
                flag::VERSION | "-V" => return Err(ArgsError::VersionRequested),
                _ => {}
            }
            let Some(known) = flag_named(&name) else {
                return Err(ArgsError::Unknown(word));
            };
            let value = match inline {
                Some(value) => value,
                None => words.next().ok_or(ArgsError::MissingValue(known))?,
            };
            args.set(known, value)?;
        }
        args.fill_from_env(&env)?;
        Ok(args)
    }

    /// Sets the option `name` (one of [`flag`]) from its value.
    fn set(&mut self, name: &'static str, value: String) -> Result<(), ArgsError> {
        match name {
            flag::ADDRESS => once(&mut self.address, name, value),
            flag::PORT => once(&mut self.port, name, typed(name, &value, "a port")?),
            flag::STATE_DIR => once(&mut self.state_dir, name, value.into()),
            flag::SECRET_FILE => once(&mut self.secret_file, name, value.into()),
            flag::OBJECTS_DIR => once(&mut self.objects_dir, name, value.into()),
            flag::CACHE_DIR => once(&mut self.cache_dir, name, value.into()),
            flag::PYTHON => once(&mut self.python, name, value),
            flag::WARM_MEMORY_MB => once(
                &mut self.warm_memory_mb,
                name,
                typed(name, &value, "a number of MiB")?,
            ),
            flag::ONNX_THREADS => once(&mut self.onnx_threads, name, threads(name, &value)?),
            flag::ONNX_SESSION => once(&mut self.onnx_session, name, session(name, value)?),
            flag::BLOCK_ID => once(&mut self.block_id, name, typed(name, &value, "a block id")?),
            flag::SLOTS => once(&mut self.slots, name, typed(name, &value, "a number")?),
            flag::WORKER_ID => once(&mut self.worker_id, name, value),
            flag::LOST_DAEMON_EXIT_S => {
                let s = typed(name, &value, "a number of seconds")?;
                once(&mut self.lost_daemon_exit_s, name, s)
            }
            flag::CONNECT_TIMEOUT_S => {
                let s = typed(name, &value, "a number of seconds")?;
                once(&mut self.connect_timeout_s, name, s)
            }
            flag::JOB_END => once(&mut self.job_end, name, typed(name, &value, "a Unix time")?),
            flag::WALLTIME_MARGIN_S => {
                let s = typed(name, &value, "a number of seconds")?;
                once(&mut self.walltime_margin_s, name, s)
            }
            flag::CONTAINER_RUNTIME => once(&mut self.container_runtime, name, value),
            flag::CONTAINER_COMMAND => once(&mut self.container_command, name, value),
            flag::CONTAINER_BIND => {
                self.container_binds.push(value);
                Ok(())
            }
            flag::CONTAINER_OPTION => {
                self.container_options.push(value);
                Ok(())
            }
            flag::CONTAINER_TEMPLATE => once(&mut self.container_template, name, value),
            flag::GPUS => once(&mut self.gpus, name, value),
            flag::ACCELERATORS => {
                if !self.accelerators.is_empty() {
                    return Err(ArgsError::Repeated(name));
                }
                self.accelerators = value.split(',').map(|d| d.trim().to_owned()).collect();
                Ok(())
            }
            flag::ACCELERATOR_KIND => once(&mut self.accelerator_kind, name, value),
            flag::CPU_AFFINITY => once(&mut self.cpu_affinity, name, value),
            flag::MAX_FRAME_BYTES => {
                let bytes = typed(name, &value, "a number of bytes")?;
                once(&mut self.max_frame_bytes, name, bytes)
            }
            other => Err(ArgsError::Unknown(other.to_owned())),
        }
    }

    /// Takes what the command line did not give from the environment.
    fn fill_from_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ArgsError> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if self.address.is_none() {
            self.address = var(DAEMON_ADDRESS_ENV);
        }
        if self.port.is_none()
            && let Some(port) = var(DAEMON_PORT_ENV)
        {
            self.port = Some(typed(DAEMON_PORT_ENV, &port, "a port")?);
        }
        if self.state_dir.is_none() {
            self.state_dir = var(HOME_ENV).map(PathBuf::from);
        }
        if self.objects_dir.is_none() {
            self.objects_dir = var(OBJECTS_ENV).map(PathBuf::from);
        }
        if self.cache_dir.is_none() {
            self.cache_dir = var(CACHE_DIR_ENV).map(PathBuf::from);
        }
        if self.python.is_none() {
            self.python = var(PYTHON_ENV);
        }
        if self.warm_memory_mb.is_none()
            && let Some(mb) = var(WARM_MEMORY_MB_ENV)
        {
            self.warm_memory_mb = Some(typed(WARM_MEMORY_MB_ENV, &mb, "a number of MiB")?);
        }
        if self.onnx_threads.is_none()
            && let Some(n) = var(ONNX_THREADS_ENV)
        {
            self.onnx_threads = Some(threads(ONNX_THREADS_ENV, &n)?);
        }
        if self.onnx_session.is_none()
            && let Some(layout) = var(ONNX_SESSION_ENV)
        {
            self.onnx_session = Some(session(ONNX_SESSION_ENV, layout)?);
        }
        if self.job_end.is_none()
            && let Some(end) = var(JOB_END_ENV)
        {
            self.job_end = Some(typed(JOB_END_ENV, &end, "a Unix time")?);
        }
        if self.max_frame_bytes.is_none()
            && let Some(bytes) = var(MAX_FRAME_BYTES_ENV)
        {
            let bytes = typed(MAX_FRAME_BYTES_ENV, &bytes, "a number of bytes")?;
            self.max_frame_bytes = Some(bytes);
        }
        self.secret_hex = var(SECRET_ENV);
        // Only local blocks set it; anything else is not a process to
        // follow.
        self.exit_with_pid = var(EXIT_WITH_PID_ENV).and_then(|p| p.trim().parse().ok());
        if let Some(rank) = var(RANK_ENV) {
            self.rank = Some(typed(RANK_ENV, &rank, "a rank")?);
        }
        self.node = var(NODE_ENV);
        Ok(())
    }
}

/// The option constant for `name`, if it is one of the worker's.
/// A number of threads: at least 1.
fn threads(name: &'static str, value: &str) -> Result<u32, ArgsError> {
    const EXPECTED: &str = "a number of threads (at least 1)";
    match typed(name, value, EXPECTED)? {
        0 => Err(ArgsError::BadValue {
            name,
            value: value.to_owned(),
            expected: EXPECTED,
        }),
        n => Ok(n),
    }
}

/// A session layout: one of [`ONNX_SESSIONS`].
fn session(name: &'static str, value: String) -> Result<String, ArgsError> {
    if ONNX_SESSIONS.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(ArgsError::BadValue {
            name,
            value,
            expected: "slot or worker",
        })
    }
}

fn flag_named(name: &str) -> Option<&'static str> {
    USAGE.iter().map(|o| o.flag).find(|f| *f == name)
}

/// How to reach a running daemon: the contact file ([`CONTACT_FILE`]) it
/// writes to its state directory once it listens (and copies to its shared
/// directory, for jobs on other nodes), and that CLIs and workers attached
/// by hand read. It never holds the secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DaemonInfo {
    /// Daemon pid.
    pub pid: u32,
    /// Client API URL (`ipc://…/api.sock`).
    pub api: String,
    /// Addresses workers dial, comma-separated.
    pub interchange_address: String,
    /// Port workers dial.
    pub interchange_port: u16,
    /// The daemon's frame limit (`[daemon] max_frame_bytes`): clients send
    /// no larger request, workers attached by hand accept frames this
    /// large. Absent in files of older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<u64>,
    /// The daemon's shared directory (`[daemon] shared_dir`): where its
    /// object store and local blocks' directories are. Absent in files of
    /// older daemons, whose shared directory is the state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_dir: Option<PathBuf>,
    /// Addresses (comma-separated) of the TCP client API (`[daemon]
    /// client_listen`), for clients on other hosts that hold a token;
    /// absent when the daemon does not listen for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// Port of the TCP client API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_port: Option<u16>,
}

/// A contact file that cannot be written or read: why, in the TOML
/// library's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ContactError(pub String);

impl DaemonInfo {
    /// The contact file's text.
    pub fn to_toml(&self) -> Result<String, ContactError> {
        toml::to_string(self).map_err(|e| ContactError(e.to_string()))
    }

    /// Reads a contact file's text.
    pub fn from_toml(text: &str) -> Result<DaemonInfo, ContactError> {
        toml::from_str(text).map_err(|e| ContactError(e.to_string()))
    }
}

#[cfg(test)]
mod tests;
