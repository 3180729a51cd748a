//! Node templates: one process per servable (and environment) on a node
//! that has run its script up to `serve()` — imports done, model loaded —
//! and forks slot processes from there, so a slot that starts the servable
//! again on that node skips the imports.
//!
//! Only servables that opt in (`[options] fork = true`) use one: a fork
//! copies the process as it is, which is wrong for a model that holds a
//! GPU context, threads or open connections made before `serve()`.
//!
//! The template listens on a Unix socket in the node's private cache
//! directory (mode 0700, the socket 0600), named by a hash of the
//! servable's id, files and command, so it serves every later worker of
//! that user on the node until it has been idle for [`IDLE_S`]. A worker
//! that finds none starts one and forks from it once it listens (starting
//! both at once would have them compete for the node's cores); if the
//! template ends or takes too long, the slot's process starts the usual
//! way. A fork request is the child's
//! environment, working directory and cores (msgpack) with its three
//! standard streams attached (`SCM_RIGHTS`); the answer is the child's pid.
//! The shim's side is in `clients/python/flotilla_servable`.

use std::fs::File;
use std::io::{IoSlice, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_protocol::servable::ServableRecord;
use nix::fcntl::OFlag;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use crate::process::Launch;

/// How long a template waits for a fork request before it exits, seconds,
/// unless the worker's environment says otherwise in [`IDLE_ENV`].
pub const IDLE_S: u64 = 600;

/// The variable naming the socket a template listens on.
const SOCKET_ENV: &str = "FLOTILLA_TEMPLATE_SOCKET";

/// The variable giving a template's idle time, in seconds: set for the
/// worker, it is passed on (tests keep their templates short-lived).
pub const IDLE_ENV: &str = "FLOTILLA_TEMPLATE_IDLE_S";

/// How long a fork request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A forked child: its pid, and its stdin, stdout and stderr.
pub(crate) type Forked = (u32, File, File, File);

/// The socket of `record`'s template for `launch` under `dir`.
pub(crate) fn socket_path(dir: &Path, record: &ServableRecord, launch: &Launch) -> PathBuf {
    let mut h = blake3::Hasher::new();
    h.update(record.id().as_bytes());
    for f in &record.files {
        h.update(b"\0");
        h.update(f.blake3.as_bytes());
    }
    for arg in &launch.argv {
        h.update(b"\0");
        h.update(arg.as_bytes());
    }
    let hex = h.finalize().to_hex();
    dir.join(format!("{}.sock", &hex[..16]))
}

/// Asks the template on `socket` to fork a process for `launch`.
pub(crate) fn fork(socket: &Path, launch: &Launch) -> Result<Forked, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let (child_in, stdin) = pipe()?;
    let (stdout, child_out) = pipe()?;
    let (stderr, child_err) = pipe()?;
    let env: Vec<(String, String)> = launch
        .env
        .iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let cwd = launch.cwd.display().to_string();
    let cpus = launch.cpus.clone().unwrap_or_default();
    let request = rmp_serde::to_vec(&(env, cwd, cpus)).map_err(|e| e.to_string())?;
    let fds = [
        child_in.as_raw_fd(),
        child_out.as_raw_fd(),
        child_err.as_raw_fd(),
    ];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&request)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("cannot send the request: {e}"))?;
    // The child holds its ends now.
    drop((child_in, child_out, child_err));
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("no answer: {e}"))?;
    let pid: u32 = rmp_serde::from_slice(&answer)
        .map_err(|_| "the template refused the request (see its log)".to_owned())?;
    Ok((
        pid,
        File::from(stdin),
        File::from(stdout),
        File::from(stderr),
    ))
}

/// Starts a template for `launch` on `socket`: it outlives this worker (a
/// process group of its own) until idle for [`IDLE_S`] (or [`IDLE_ENV`]);
/// its output goes to a log beside the socket. Returns its pid.
pub(crate) fn start(socket: &Path, launch: &Launch) -> Result<u32, String> {
    let log = File::create(socket.with_extension("log")).map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = launch.command();
    command
        .env(SOCKET_ENV, socket)
        .env(IDLE_ENV, idle_s().to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", launch.argv[0]))?;
    let pid = child.id();
    tracing::info!(servable = %launch.id, pid, socket = %socket.display(), "starting the node's template of a servable");
    // Reaped when it ends, while this worker lives.
    let _ = std::thread::Builder::new()
        .name("template-reaper".into())
        .spawn(move || {
            let _ = child.wait();
        });
    Ok(pid)
}

/// Waits until the template `pid` listens on `socket` (true), or has
/// ended or taken longer than `limit` (false).
pub(crate) fn wait_ready(socket: &Path, pid: u32, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    while std::time::Instant::now() < deadline {
        if socket.exists() {
            return true;
        }
        if nix::sys::signal::kill(pid, None).is_err() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// A template's idle time: the worker's [`IDLE_ENV`] if it is a number,
/// else [`IDLE_S`].
fn idle_s() -> u64 {
    std::env::var(IDLE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(IDLE_S)
}

/// The node's directory of template sockets under `cache_dir`, private.
pub(crate) fn directory(cache_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = cache_dir.join("templates");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}
