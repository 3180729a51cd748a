//! `flotilla-worker`: runs servables for one daemon, a fixed number of calls (slots) at a time.
//!
//! A provider starts workers inside blocks with the daemon's address, port
//! and block id on the command line and the secret in `FLOTILLA_SECRET`.
//! To attach a worker by hand to a daemon on the same machine, give
//! `--state-dir` (or nothing, for the default state directory): the address,
//! port and secret are then read from the daemon's files.
//!
//! The daemon may advertise several addresses (`--address a,b,c`); they are
//! all tried at once and the first that answers wins (see [`connect`]).
//!
//! Exit status: 0 when the daemon let the worker go, 2 when it refused it or
//! the arguments are wrong, 3 when the daemon was lost, 4 when no address
//! reached it (with one line per address saying why), 128 + the signal's
//! number when SIGTERM, SIGINT or SIGHUP stopped it (it first tells the
//! daemon it leaves, so the tasks it was running are requeued uncharged).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_launchers::{Bind, Container, ContainerRuntime, Gpus};
use flotilla_protocol::address::Endpoint;
use flotilla_protocol::handshake::NonceSource;
use flotilla_protocol::interchange::SlotResources;
use flotilla_protocol::launch::{
    ArgsError, CREDENTIAL_ENV_VARS, DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_LOST_DAEMON_EXIT_S,
    DEFAULT_WALLTIME_MARGIN_S, DaemonInfo, ENV_USAGE, LOG_ENV, SECRET_ENV, USAGE, WorkerArgs, flag,
};
use flotilla_protocol::placement::{
    self, AcceleratorKind, CpuAffinity, NodeResources, SlotPlacement, format_cpu_list,
};
use flotilla_protocol::secure::Cipher;
use flotilla_protocol::{DEFAULT_MAX_FRAME_BYTES, MIN_FRAME_BYTES, paths, secret};
use flotilla_worker::session::{Ending, SessionConfig};
use flotilla_worker::shell::WorkerConfig;
use flotilla_worker::{BUILTINS, connect, shell};

fn main() -> ExitCode {
    init_logging();
    let args = match WorkerArgs::parse(std::env::args_os().skip(1), |name| std::env::var(name).ok())
    {
        Ok(args) => args,
        Err(ArgsError::HelpRequested) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(ArgsError::VersionRequested) => {
            println!("flotilla-worker {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start worker");
            return ExitCode::from(2);
        }
    };
    forget_credentials();
    if let Err(e) = flotilla_worker::stop_signal::install() {
        tracing::warn!(error = %e, "cannot handle termination signals; a cancelled worker leaves its files behind");
    }
    let (cfg, endpoints, port, timeout) = match worker_config(&args) {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start worker");
            return ExitCode::from(2);
        }
    };
    let mut nonces = NonceSource::new(&cfg.session.nonce_seed, "worker connect");
    let cap = cfg.session.max_frame_bytes;
    let connected = match connect::connect(
        &endpoints,
        port,
        (&cfg.session.secret, &cfg.session.ciphers),
        &mut nonces,
        timeout,
        || connect::worker_socket_with_cap(cap),
    ) {
        Ok(c) => c,
        Err(unreachable) => {
            // The report is the worker's last words: the block's stderr
            // tail, which the daemon shows as the block's failure reason.
            tracing::error!(
                addresses = unreachable.tried.len(),
                "cannot reach the daemon"
            );
            eprint!("{unreachable}");
            return ExitCode::from(4);
        }
    };
    let cfg = WorkerConfig {
        url: connected.url.clone(),
        ..cfg
    };
    exit_status(
        shell::run(&cfg, connected.socket, connected.proven),
        &cfg.url,
    )
}

/// Takes every credential out of this process's environment once the
/// arguments have read them, so nothing the worker starts inherits them.
fn forget_credentials() {
    for name in CREDENTIAL_ENV_VARS {
        // SAFETY: called from `main` before the worker starts any thread
        // (logging writes from the calling thread), so nothing reads or
        // writes the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
}

/// Logs to stderr with the filter of [`LOG_ENV`] (default `info`).
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = std::env::var(LOG_ENV)
        .ok()
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Block output goes to files that end up in error messages.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `--help`: every option of the launch contract.
fn usage() -> String {
    let mut text = String::from(
        "Runs servables for a Flotilla daemon.\n\nUsage: flotilla-worker [OPTIONS]\n\nOptions:\n",
    );
    for option in USAGE {
        text.push_str(&format!(
            "  {} <{}>\n          {}",
            option.flag, option.value, option.help
        ));
        if let Some(var) = option.env {
            text.push_str(&format!(" [env: {var}]"));
        }
        text.push('\n');
    }
    text.push_str(&format!(
        "  {}\n          print help\n  {}\n          print version\n\nEnvironment:\n",
        flag::HELP,
        flag::VERSION
    ));
    for (var, help) in ENV_USAGE {
        text.push_str(&format!("  {var}\n          {help}\n"));
    }
    text
}

/// The exit status for how the session ended (see the crate docs).
fn exit_status(ended: anyhow::Result<Ending>, url: &str) -> ExitCode {
    match ended {
        Ok(Ending::Shutdown) => {
            tracing::info!("the daemon is shutting down; exiting");
            ExitCode::SUCCESS
        }
        Ok(Ending::DaemonExited) => {
            tracing::info!("the daemon process has exited; exiting");
            ExitCode::SUCCESS
        }
        Ok(Ending::Lost(after)) => {
            tracing::error!(silent_s = after.as_secs(), url = %url, "lost the daemon; exiting");
            ExitCode::from(3)
        }
        Ok(Ending::WalltimeOver) => {
            tracing::info!("the job's wall time is over; left the daemon");
            ExitCode::SUCCESS
        }
        Ok(Ending::Refused(reason)) => {
            tracing::error!(reason = %reason, "the daemon refused this worker");
            ExitCode::from(2)
        }
        Ok(Ending::Untrusted(reason)) => {
            tracing::error!(url = %url, reason = %reason, "not the daemon this worker belongs to; exiting");
            ExitCode::from(2)
        }
        Ok(Ending::Signalled(signal)) => {
            tracing::info!(signal, "stopped by a signal; exiting");
            ExitCode::from(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)))
        }
        Ok(Ending::Failed(reason)) => {
            tracing::error!(reason = %reason, "worker failed");
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            ExitCode::from(1)
        }
    }
}

/// The worker's settings, the addresses to try, the default port and the
/// connect timeout.
type Settings = (WorkerConfig, Vec<Endpoint>, u16, Duration);

/// The most slots a worker may run.
const MAX_SLOTS: u32 = 4_096;

/// The most seconds any option takes (about 31 years).
const MAX_SECONDS: f64 = 1.0e9;

/// A positive (or, with `zero_ok`, non-negative), finite number of seconds
/// up to [`MAX_SECONDS`] given as `name`.
fn seconds(value: f64, name: &str, zero_ok: bool) -> anyhow::Result<Duration> {
    if !(value.is_finite() && (value > 0.0 || (zero_ok && value == 0.0))) {
        if zero_ok {
            bail!("{name} must be a number of seconds, 0 or more, got {value}");
        }
        bail!("{name} must be a positive number of seconds, got {value}");
    }
    if value > MAX_SECONDS {
        bail!("{name} must be at most {MAX_SECONDS:e} seconds, got {value:e}");
    }
    Duration::try_from_secs_f64(value).with_context(|| format!("{name}: {value} seconds"))
}

fn worker_config(args: &WorkerArgs) -> anyhow::Result<Settings> {
    let state_dir = args.state_dir.clone().or_else(paths::default_state_dir);
    // The state directory the daemon was found through, when it was: its
    // contact file names the object store. A worker told the daemon's
    // address (a block's) has no object store unless it is told one.
    let mut attached_through = args.state_dir.clone();
    let mut daemon_frame_limit = None;
    let (address, port) = match (&args.address, args.port) {
        (Some(a), Some(p)) => (a.clone(), p),
        (None, None) => {
            let dir = state_dir.as_deref().with_context(|| {
                format!(
                    "give {} and {}, or {} of a running daemon",
                    flag::ADDRESS,
                    flag::PORT,
                    flag::STATE_DIR
                )
            })?;
            let info = read_info(dir)?;
            attached_through = Some(dir.to_path_buf());
            daemon_frame_limit = info.max_frame_bytes;
            (info.interchange_address, info.interchange_port)
        }
        _ => bail!("give both {} and {}, or neither", flag::ADDRESS, flag::PORT),
    };
    let endpoints = Endpoint::parse_list(&address).context(flag::ADDRESS)?;
    if endpoints.is_empty() {
        bail!("{} names no address", flag::ADDRESS);
    }
    let connect_timeout = seconds(
        args.connect_timeout_s.unwrap_or(DEFAULT_CONNECT_TIMEOUT_S),
        flag::CONNECT_TIMEOUT_S,
        false,
    )?;
    let secret = match (&args.secret_file, &args.secret_hex) {
        (Some(file), _) => read_secret(file)?,
        (None, Some(hex)) => {
            secret::from_hex(hex).with_context(|| format!("{SECRET_ENV} is not a hex string"))?
        }
        (None, None) => {
            let dir = state_dir.as_deref().with_context(|| {
                format!(
                    "no secret: set {SECRET_ENV}, {} or {}",
                    flag::SECRET_FILE,
                    flag::STATE_DIR
                )
            })?;
            read_secret(&paths::secret_file(dir))?
        }
    };
    let slots = match args.slots {
        Some(0) => bail!("{} must be at least 1", flag::SLOTS),
        Some(n) if n > MAX_SLOTS => bail!("{} must be at most {MAX_SLOTS}, got {n}", flag::SLOTS),
        Some(n) => n,
        // One slot per accelerator, when the node names them.
        None if !args.accelerators.is_empty() => {
            args.accelerators.len().min(MAX_SLOTS as usize) as u32
        }
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let placements = slot_placements(args, slots)?;
    let lost_daemon_exit = seconds(
        args.lost_daemon_exit_s
            .unwrap_or(DEFAULT_LOST_DAEMON_EXIT_S),
        flag::LOST_DAEMON_EXIT_S,
        false,
    )?;
    let walltime_margin = seconds(
        args.walltime_margin_s.unwrap_or(DEFAULT_WALLTIME_MARGIN_S),
        flag::WALLTIME_MARGIN_S,
        true,
    )?;
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let worker_id = args.worker_id.clone().unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{host}-{}-{:04x}", std::process::id(), nanos & 0xffff)
    });
    // Given, else the daemon's own limit (attached through its state
    // directory), else the default.
    let max_frame_bytes = args
        .max_frame_bytes
        .or_else(|| daemon_frame_limit.and_then(|b| usize::try_from(b).ok()))
        .unwrap_or(DEFAULT_MAX_FRAME_BYTES);
    if max_frame_bytes < MIN_FRAME_BYTES {
        bail!(
            "{} must be at least {MIN_FRAME_BYTES} bytes",
            flag::MAX_FRAME_BYTES
        );
    }
    let session = SessionConfig {
        nonce_seed: random_seed()?,
        max_frame_bytes,
        ciphers: Cipher::fast_here(),
        job_end_unix_s: args.job_end,
        walltime_margin,
        node: args.node.clone(),
        rank: args.rank,
        secret,
        worker_id,
        block_id: args.block_id,
        pid: std::process::id(),
        slots,
        slot_resources: placements
            .iter()
            .map(|p| SlotResources {
                devices: p.devices.clone(),
                cpus: p.cpus.as_deref().map(format_cpu_list).unwrap_or_default(),
            })
            .collect(),
        servables: BUILTINS
            .iter()
            .map(|s| (*s).to_owned())
            .chain(std::iter::once("*".to_owned()))
            .collect(),
        lost_daemon_exit,
        host,
    };
    let worker = WorkerConfig {
        session,
        url: String::new(),
        exit_with_pid: args.exit_with_pid,
        objects: args
            .objects_dir
            .clone()
            .or_else(|| attached_through.as_deref().map(paths::daemon_objects_dir)),
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(flotilla_worker::cache::default_dir),
        python: args.python.clone().unwrap_or_else(|| "python3".to_owned()),
        containers: servable_containers(args)?,
        placements,
        warm_memory_mb: args.warm_memory_mb,
        onnx: flotilla_worker::onnx::Settings {
            // Checked when the arguments were read.
            layout: args
                .onnx_session
                .as_deref()
                .and_then(flotilla_worker::onnx::Layout::parse)
                .unwrap_or_default(),
            threads: args.onnx_threads.map(|t| t as usize),
        },
    };
    Ok((worker, endpoints, port, connect_timeout))
}

/// What each slot holds: the node's accelerators (`--accelerators`,
/// `--accelerator-kind`) shared evenly, and its cores by `--cpu-affinity`,
/// taken from those this worker may use. Nothing when neither is given.
fn slot_placements(args: &WorkerArgs, slots: u32) -> anyhow::Result<Vec<SlotPlacement>> {
    let kind = match &args.accelerator_kind {
        None => None,
        Some(name) => Some(AcceleratorKind::from_name(name).with_context(|| {
            format!(
                "{} `{name}`: use nvidia, amd or intel",
                flag::ACCELERATOR_KIND
            )
        })?),
    };
    let affinity = match &args.cpu_affinity {
        None => CpuAffinity::None,
        Some(rule) => CpuAffinity::parse(rule).context(flag::CPU_AFFINITY)?,
    };
    let node = NodeResources {
        devices: args.accelerators.clone(),
        kind,
        affinity,
    };
    if node == NodeResources::default() {
        return Ok(Vec::new());
    }
    let available = match node.affinity {
        CpuAffinity::None => Vec::new(),
        _ => flotilla_worker::affinity::available_cpus().map_err(anyhow::Error::msg)?,
    };
    let placements = placement::place(&node, slots, &available)
        .with_context(|| format!("cannot share this node among {slots} slots"))?;
    for (slot, p) in placements.iter().enumerate() {
        tracing::info!(
            slot,
            devices = %p.devices.join(","),
            cpus = %p.cpus.as_deref().map(format_cpu_list).unwrap_or_else(|| "any".into()),
            "slot resources"
        );
    }
    Ok(placements)
}

/// How servables that name an image are run, from the `--container-*`
/// options.
fn servable_containers(args: &WorkerArgs) -> anyhow::Result<Option<Container>> {
    let Some(name) = &args.container_runtime else {
        return Ok(None);
    };
    let runtime = ContainerRuntime::from_name(name).with_context(|| {
        let known: Vec<&str> = ContainerRuntime::ALL.iter().map(|r| r.name()).collect();
        format!(
            "{} `{name}`: use one of {}",
            flag::CONTAINER_RUNTIME,
            known.join(", ")
        )
    })?;
    let binds = args
        .container_binds
        .iter()
        .map(|b| Bind::parse(b))
        .collect::<Result<_, _>>()
        .context(flag::CONTAINER_BIND)?;
    Ok(Some(Container {
        runtime,
        image: String::new(),
        command: args.container_command.clone(),
        binds,
        options: args.container_options.clone(),
        gpus: match &args.gpus {
            None => Gpus::None,
            Some(name) => Gpus::from_name(name)
                .with_context(|| format!("{} `{name}`: use nvidia, amd or none", flag::GPUS))?,
        },
        template: args.container_template.clone().unwrap_or_default(),
    }))
}

/// 32 random bytes from the operating system, for the handshake nonces.
fn random_seed() -> anyhow::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("cannot read /dev/urandom for the handshake nonces")?;
    Ok(seed)
}

fn read_info(dir: &Path) -> anyhow::Result<DaemonInfo> {
    let path = paths::info_file(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read (is a daemon running there?)",
            path.display()
        )
    })?;
    DaemonInfo::from_toml(&text)
        .with_context(|| format!("{}: not a daemon contact file", path.display()))
}

fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the secret", path.display()))?;
    if bytes.len() != secret::SECRET_LEN {
        bail!(
            "{}: a secret is 32 bytes, this file has {}",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes)
}
