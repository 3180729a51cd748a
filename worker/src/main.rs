//! `flotilla-worker`: a pool of slots that runs servables for one daemon.
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
//! reached it (with one line per address saying why).

mod builtin;
mod connect;
mod exec;
mod executor;
mod process;
mod session;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use flotilla_launchers::{Bind, Container, ContainerRuntime, Gpus, NODE_ENV, RANK_ENV};
use flotilla_protocol::address::Endpoint;
use flotilla_protocol::{paths, secret};
use serde::Deserialize;

use crate::session::{Ending, SessionConfig};

/// Builtin servables this worker runs; it also runs any published
/// servable whose record the daemon sends it.
pub const BUILTINS: &[&str] = &["noop", "echo", "sleep"];

/// Runs servables for a Flotilla daemon.
#[derive(Parser, Debug)]
#[command(name = "flotilla-worker", version)]
struct Args {
    /// Daemon addresses to try, comma-separated (`HOST` or `HOST:PORT`).
    #[arg(long, env = "FLOTILLA_DAEMON_ADDRESS")]
    address: Option<String>,
    /// Daemon interchange port.
    #[arg(long, env = "FLOTILLA_DAEMON_PORT")]
    port: Option<u16>,
    /// Read address, port and secret from this daemon state directory
    /// (default when no address is given: $FLOTILLA_HOME or ~/.flotilla).
    #[arg(long, env = "FLOTILLA_HOME")]
    state_dir: Option<PathBuf>,
    /// File holding the daemon's 32-byte secret (else FLOTILLA_SECRET, hex).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// The daemon's object store, where published servables' files are
    /// (default: STATE_DIR/objects).
    #[arg(long, env = "FLOTILLA_OBJECTS")]
    objects_dir: Option<PathBuf>,
    /// Block this worker belongs to (set by the provider).
    #[arg(long)]
    block_id: Option<u32>,
    /// Batches run at once (default: number of cores).
    #[arg(long)]
    slots: Option<u32>,
    /// Worker id (default: HOST-PID-RANDOM).
    #[arg(long)]
    worker_id: Option<String>,
    /// Exit after this many seconds without the daemon.
    #[arg(long, default_value_t = 60.0)]
    lost_daemon_exit_s: f64,
    /// Give up reaching the daemon after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout_s: f64,
    /// When this worker's job ends, in Unix seconds (the block script sets
    /// it from the wall time, or Slurm's SLURM_JOB_END_TIME).
    #[arg(long, env = "FLOTILLA_JOB_END")]
    job_end: Option<u64>,
    /// Take no task and leave this many seconds before the job ends.
    #[arg(long, default_value_t = 60.0)]
    walltime_margin_s: f64,
    /// Run servables that name a container image in it with this runtime
    /// (apptainer, singularity, shifter, podman, docker, charliecloud,
    /// custom).
    #[arg(long)]
    container_runtime: Option<String>,
    /// The runtime's executable, when not the usual one.
    #[arg(long)]
    container_command: Option<String>,
    /// Extra bind for servable containers, `HOST[:CONTAINER[:ro]]`.
    #[arg(long)]
    container_bind: Vec<String>,
    /// Extra runtime option for servable containers.
    #[arg(long, allow_hyphen_values = true)]
    container_option: Vec<String>,
    /// `--container-runtime custom`: the command template.
    #[arg(long)]
    container_template: Option<String>,
    /// GPUs to make visible in servable containers: nvidia or amd.
    #[arg(long)]
    gpus: Option<String>,
}

#[derive(Deserialize)]
struct DaemonInfo {
    interchange_address: String,
    interchange_port: u16,
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    let filter = std::env::var("FLOTILLA_LOG")
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
    let args = Args::parse();
    let (cfg, endpoints, port, timeout) = match session_config(&args) {
        Ok(parts) => parts,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start worker");
            return ExitCode::from(2);
        }
    };
    let connected = match connect::connect(
        &endpoints,
        port,
        &cfg.secret,
        timeout,
        connect::worker_socket,
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
    let cfg = SessionConfig {
        url: connected.url.clone(),
        ..cfg
    };
    match session::run(&cfg, connected.socket) {
        Ok(Ending::Shutdown) => {
            tracing::info!("the daemon is shutting down; exiting");
            ExitCode::SUCCESS
        }
        Ok(Ending::DaemonExited) => {
            tracing::info!("the daemon process has exited; exiting");
            ExitCode::SUCCESS
        }
        Ok(Ending::Lost(after)) => {
            tracing::error!(silent_s = after.as_secs(), url = %cfg.url, "lost the daemon; exiting");
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

/// The session's settings, the addresses to try, the default port and the
/// connect timeout.
type Settings = (SessionConfig, Vec<Endpoint>, u16, Duration);

fn session_config(args: &Args) -> anyhow::Result<Settings> {
    let state_dir = args.state_dir.clone().or_else(paths::default_state_dir);
    let (address, port) = match (&args.address, args.port) {
        (Some(a), Some(p)) => (a.clone(), p),
        (None, None) => {
            let dir = state_dir
                .as_deref()
                .context("give --address and --port, or --state-dir of a running daemon")?;
            let info = read_info(dir)?;
            (info.interchange_address, info.interchange_port)
        }
        _ => bail!("give both --address and --port, or neither"),
    };
    let endpoints = Endpoint::parse_list(&address).context("--address")?;
    if endpoints.is_empty() {
        bail!("--address names no address");
    }
    if !(args.connect_timeout_s.is_finite() && args.connect_timeout_s > 0.0) {
        bail!("--connect-timeout-s must be a positive number of seconds");
    }
    let secret = match (&args.secret_file, std::env::var(secret::SECRET_ENV)) {
        (Some(file), _) => read_secret(file)?,
        (None, Ok(hex)) => secret::from_hex(&hex).context("FLOTILLA_SECRET is not a hex string")?,
        (None, Err(_)) => {
            let dir = state_dir
                .as_deref()
                .context("no secret: set FLOTILLA_SECRET, --secret-file or --state-dir")?;
            read_secret(&paths::secret_file(dir))?
        }
    };
    let slots = match args.slots {
        Some(0) => bail!("--slots must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    if !(args.lost_daemon_exit_s.is_finite() && args.lost_daemon_exit_s > 0.0) {
        bail!("--lost-daemon-exit-s must be a positive number of seconds");
    }
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
    let exit_with_pid = std::env::var("FLOTILLA_EXIT_WITH_PID")
        .ok()
        .and_then(|p| p.parse().ok());
    let objects = args
        .objects_dir
        .clone()
        .or_else(|| state_dir.as_deref().map(paths::objects_dir));
    let rank = match std::env::var(RANK_ENV) {
        Ok(r) if !r.trim().is_empty() => Some(
            r.trim()
                .parse()
                .with_context(|| format!("{RANK_ENV}=`{r}` is not a rank"))?,
        ),
        _ => None,
    };
    let node = std::env::var(NODE_ENV)
        .ok()
        .filter(|n| !n.trim().is_empty());
    if !(args.walltime_margin_s.is_finite() && args.walltime_margin_s >= 0.0) {
        bail!("--walltime-margin-s must be a number of seconds, 0 or more");
    }
    let session = SessionConfig {
        job_end_unix_s: args.job_end,
        walltime_margin: Duration::from_secs_f64(args.walltime_margin_s),
        objects,
        containers: servable_containers(args)?,
        url: String::new(),
        node,
        rank,
        secret,
        worker_id,
        block_id: args.block_id,
        slots,
        lost_daemon_exit: Duration::from_secs_f64(args.lost_daemon_exit_s),
        exit_with_pid,
        host,
    };
    Ok((
        session,
        endpoints,
        port,
        Duration::from_secs_f64(args.connect_timeout_s),
    ))
}

/// How servables that name an image are run, from the `--container-*`
/// options.
fn servable_containers(args: &Args) -> anyhow::Result<Option<Container>> {
    let Some(name) = &args.container_runtime else {
        return Ok(None);
    };
    let runtime = ContainerRuntime::from_name(name).with_context(|| {
        let known: Vec<&str> = ContainerRuntime::ALL.iter().map(|r| r.name()).collect();
        format!(
            "--container-runtime `{name}`: use one of {}",
            known.join(", ")
        )
    })?;
    let binds = args
        .container_bind
        .iter()
        .map(|b| Bind::parse(b))
        .collect::<Result<_, _>>()
        .context("--container-bind")?;
    Ok(Some(Container {
        runtime,
        image: String::new(),
        command: args.container_command.clone(),
        binds,
        options: args.container_option.clone(),
        gpus: match &args.gpus {
            None => Gpus::None,
            Some(name) => Gpus::from_name(name)
                .with_context(|| format!("--gpus `{name}`: use nvidia, amd or none"))?,
        },
        template: args.container_template.clone().unwrap_or_default(),
    }))
}

fn read_info(dir: &Path) -> anyhow::Result<DaemonInfo> {
    let path = paths::info_file(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: cannot read (is a daemon running there?)",
            path.display()
        )
    })?;
    toml::from_str(&text).with_context(|| format!("{}: not a daemon contact file", path.display()))
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
