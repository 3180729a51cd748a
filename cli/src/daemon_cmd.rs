//! `flotilla daemon` (foreground or detached) and `flotilla stop`.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use flotilla_client::Client;
use flotilla_engine::config::{Config, DEFAULT_CONFIG_NAME};
use flotilla_engine::state_dir::{StateDir, is_live_daemon};
use flotilla_protocol::launch::HOME_ENV;

use crate::Failure;
use crate::logging::LogFormat;

/// How the daemon logs: `--log-format`, and `--log-file` (which `--detach`
/// sets to STATE_DIR/daemon.log).
#[derive(Debug, Default, Clone)]
pub struct LogArgs {
    /// Text or JSON, over the site file's `[daemon] log_format`.
    pub format: Option<LogFormat>,
    /// The rotated log file, instead of stderr.
    pub file: Option<PathBuf>,
}

/// `flotilla daemon`: runs the daemon of `--config FILE` (or the embedded
/// default) here, or with `detach` in the background.
pub fn daemon(config_path: Option<&Path>, detach: bool, log: LogArgs) -> Result<(), Failure> {
    let (config, name) = load_config(config_path)?;
    if !detach {
        crate::logging::init_daemon(&config, log.format, log.file.as_deref())?;
        return foreground(config, &name);
    }
    crate::logging::init_client();
    let (dir, pid) = detached(config_path, &config, log.format)?;
    println!(
        "daemon running (pid {pid}); state {}; shared {}; log {}",
        dir.root().display(),
        dir.shared_root().display(),
        dir.root().join("daemon.log").display()
    );
    Ok(())
}

/// `flotilla stop`: stops the daemon, waiting up to `timeout` seconds.
pub fn stop_command(timeout: Duration) -> Result<(), Failure> {
    stop(&client_state_dir()?, timeout)?;
    println!("daemon stopped");
    Ok(())
}

/// Loads `--config FILE`, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<(Config, String), Failure> {
    match path {
        Some(p) => Config::load(p)
            .map(|c| (c, p.display().to_string()))
            .map_err(|e| Failure::Usage(e.into())),
        None => Config::embedded_default()
            .map(|c| (c, DEFAULT_CONFIG_NAME.to_owned()))
            .map_err(|e| Failure::Usage(e.into())),
    }
}

/// Runs the daemon in this process until it is stopped.
pub fn foreground(config: Config, config_name: &str) -> Result<(), Failure> {
    tracing::info!(config = config_name, "starting daemon");
    flotilla_engine::daemon::run(config).map_err(|e| match e {
        flotilla_engine::daemon::DaemonError::StateDir(
            e @ flotilla_engine::state_dir::StateDirError::AlreadyRunning { .. },
        ) => Failure::Usage(e.into()),
        other => Failure::Other(other.into()),
    })
}

/// Starts the daemon in the background (its own session, output in
/// `STATE_DIR/daemon.log`) and returns once it answers.
pub fn detached(
    config_path: Option<&Path>,
    config: &Config,
    log_format: Option<LogFormat>,
) -> Result<(StateDir, u32), Failure> {
    let dir = resolve_dirs(config)?;
    dir.create().map_err(|e| Failure::Other(e.into()))?;
    let log = dir.root().join("daemon.log");
    let spawn = Spawn {
        limit: Duration::from_secs(30),
        new_session: true,
        log_format,
    };
    let pid = spawn_daemon(config_path, &dir, &log, spawn)?;
    Ok((dir, pid))
}

/// The state and shared directories a daemon started with `config` here
/// would use.
pub fn resolve_dirs(config: &Config) -> Result<StateDir, Failure> {
    StateDir::resolve(
        config.daemon.state_dir.as_deref(),
        config.daemon.shared_dir.as_deref(),
    )
    .map_err(|e| Failure::Usage(e.into()))
}

/// How [`spawn_daemon`] starts the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Spawn {
    /// How long it may take to answer.
    pub limit: Duration,
    /// In a session of its own: it outlives the terminal; else it shares
    /// this process's session (and its Ctrl-C).
    pub new_session: bool,
    /// `--log-format`, passed on.
    pub log_format: Option<LogFormat>,
}

/// Spawns `flotilla daemon` for `dir`, logging into `log` (rotated by
/// size), and waits until it answers.
pub fn spawn_daemon(
    config_path: Option<&Path>,
    dir: &StateDir,
    log: &Path,
    spawn: Spawn,
) -> Result<u32, Failure> {
    let Spawn {
        limit,
        new_session,
        log_format,
    } = spawn;
    let exe = std::env::current_exe().context("cannot find the flotilla executable")?;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("{}: cannot open the daemon log", log.display()))?;
    let err = out
        .try_clone()
        .context("cannot duplicate the log file handle")?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon");
    if let Some(p) = config_path {
        cmd.arg("--config").arg(p);
    }
    cmd.arg("--log-file").arg(log);
    if let Some(format) = log_format {
        let name = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        cmd.arg("--log-format").arg(name);
    }
    cmd.env(flotilla_protocol::paths::HOME_ENV, dir.root())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if new_session {
        // SAFETY: setsid() is async-signal-safe and touches no memory of
        // ours; it detaches the daemon from the terminal's session so closing
        // the terminal does not send it SIGHUP.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd.spawn().context("cannot start the daemon")?;
    let pid = child.id();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(client) = Client::connect(dir.root())
            && client.ping().is_ok()
        {
            return Ok(pid);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(Failure::Other(anyhow!(
                "the daemon exited at start ({status}); {} ends with:\n{}",
                log.display(),
                tail.join("\n")
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(Failure::Other(anyhow!(
                "the daemon did not answer within {limit:?}; see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks the daemon to stop and waits until its process is gone.
pub fn stop(state_dir: &Path, limit: Duration) -> Result<(), Failure> {
    let client = Client::connect(state_dir).map_err(Failure::from_client)?;
    let pid = client.ping().map_err(Failure::from_client)?;
    client.stop().map_err(Failure::from_client)?;
    let deadline = Instant::now() + limit;
    while is_live_daemon(pid as i32) {
        if Instant::now() > deadline {
            return Err(Failure::Other(anyhow!(
                "the daemon (pid {pid}) is still shutting down after {limit:?}; it waits for running tasks up to [daemon] shutdown_grace_s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The state directory client commands talk to.
pub fn client_state_dir() -> Result<PathBuf, Failure> {
    flotilla_protocol::paths::default_state_dir()
        .ok_or_else(|| Failure::Usage(anyhow!("set {HOME_ENV} (or HOME) to find the daemon")))
}
