//! The daemon's state directory, its shared directory, and the small files
//! in them.
//!
//! The state directory holds what must be node-local and fast; the shared
//! directory what compute nodes must reach. A laptop needs one directory,
//! and that is the default (the shared directory is the state directory);
//! a cluster puts the state directory on a disk of the daemon's node and
//! the shared directory on the file system every compute node mounts.
//!
//! ```text
//! STATE  ([daemon] state_dir, else $FLOTILLA_HOME, else ~/.flotilla)
//!                            mode 0700 when the daemon creates it (an existing
//!                            directory keeps the mode its owner gave it)
//!   daemon.lock              held (flock) by the running daemon, mode 0600
//!   daemon.pid               pid of the running daemon
//!   daemon.toml              how to reach it: API socket, interchange address,
//!                            shared directory (the contact file)
//!   api.sock                 client API, nng ipc, mode 0600
//!   secret                   32 random bytes workers must present, mode 0600
//!                            (refused if group or others may read it)
//!   interchange.port         the last run's port, offered again after a restart
//!   store/                   sled database: tasks, results, metadata, blocks
//!
//! SHARED ([daemon] shared_dir, else $FLOTILLA_SHARED, else STATE)
//!                            mode 0700 when the daemon creates it
//!   daemon.toml              a copy of the contact file for jobs on other
//!                            nodes (never the secret); removed on a clean stop
//!   objects/                 published servables' files, named by blake3 hash
//!   blocks/N/                each local-channel block's script, stdout and
//!                            stderr (unless [provider] run_dir says otherwise)
//! ```

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use flotilla_protocol::paths;

pub use flotilla_protocol::paths::{HOME_ENV, SHARED_ENV};

pub use flotilla_protocol::secret::SECRET_LEN;

/// A problem with the state directory or one of its files.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Neither a configured directory, `$FLOTILLA_HOME` nor `$HOME` exists.
    #[error("no state directory: set [daemon] state_dir, {home} or HOME", home = HOME_ENV)]
    NoHome,
    /// Another daemon owns this state directory (holds its lock).
    #[error(
        "a daemon is already running with state directory {dir} ({holder}); stop it with `flotilla stop` or use another {home}",
        dir = .dir.display(),
        holder = .pid.map_or_else(|| "pid not yet recorded".to_owned(), |p| format!("pid {p}")),
        home = HOME_ENV
    )]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
        /// The running daemon's pid, if it has recorded it yet.
        pid: Option<i32>,
    },
    /// A file holding a credential may be read by other users.
    #[error(
        "{path}: group or others may access it (mode {mode:04o}); run `chmod 600 {path}` (and consider making a new secret)",
        path = .path.display()
    )]
    InsecureMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file has unexpected content.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateDirError + '_ {
    move |source| StateDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Paths inside one state directory and its shared directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
    shared: PathBuf,
}

impl StateDir {
    /// The directories to use: the state directory `configured`, else
    /// `$FLOTILLA_HOME`, else `~/.flotilla`; the shared directory `shared`,
    /// else `$FLOTILLA_SHARED`, else the state directory. Both are made
    /// absolute (against the current directory), so that block scripts and
    /// workers started elsewhere find the same files.
    pub fn resolve(
        configured: Option<&Path>,
        shared: Option<&Path>,
    ) -> Result<StateDir, StateDirError> {
        Self::resolve_with(
            configured,
            shared,
            paths::default_state_dir,
            paths::shared_dir_from_env(),
        )
    }

    /// [`StateDir::resolve`] with the environment's defaults given.
    fn resolve_with(
        configured: Option<&Path>,
        shared: Option<&Path>,
        default_state: impl FnOnce() -> Option<PathBuf>,
        shared_from_env: Option<PathBuf>,
    ) -> Result<StateDir, StateDirError> {
        let root = match configured {
            Some(p) => p.to_path_buf(),
            None => default_state().ok_or(StateDirError::NoHome)?,
        };
        let root = std::path::absolute(&root).map_err(io_err(&root))?;
        let shared = match shared.map(Path::to_path_buf).or(shared_from_env) {
            Some(p) => std::path::absolute(&p).map_err(io_err(&p))?,
            None => root.clone(),
        };
        Ok(StateDir { root, shared })
    }

    /// A state directory at exactly `root`, which is also its shared
    /// directory.
    pub fn at(root: impl Into<PathBuf>) -> StateDir {
        let root = root.into();
        StateDir {
            shared: root.clone(),
            root,
        }
    }

    /// This state directory with its shared directory at exactly `shared`.
    pub fn with_shared(self, shared: impl Into<PathBuf>) -> StateDir {
        StateDir {
            shared: shared.into(),
            ..self
        }
    }

    /// Creates the state directory and the shared directory, mode 0700, if
    /// they are missing (their parents with the default mode). An existing
    /// directory is left as it is: it may be a home directory whose mode is
    /// its owner's choice.
    pub fn create(&self) -> Result<(), StateDirError> {
        create_private(&self.root, "state")?;
        if self.is_split() {
            create_private(&self.shared, "shared")?;
        }
        Ok(())
    }

    /// Creates the object store if it is missing. Workers (and the
    /// containers they run in) bind or read it before anything is published.
    pub fn create_objects(&self) -> Result<(), StateDirError> {
        let objects = self.objects();
        fs::create_dir_all(&objects).map_err(io_err(&objects))
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shared directory (the state directory unless one is set).
    pub fn shared_root(&self) -> &Path {
        &self.shared
    }

    /// Whether the shared directory is another directory than the state
    /// directory.
    pub fn is_split(&self) -> bool {
        self.shared != self.root
    }

    /// The object store, in the shared directory.
    pub fn objects(&self) -> PathBuf {
        paths::objects_dir(&self.shared)
    }

    /// Where local blocks' run directories go by default, in the shared
    /// directory.
    pub fn blocks(&self) -> PathBuf {
        paths::blocks_dir(&self.shared)
    }

    /// The copy of the contact file in the shared directory (the contact
    /// file itself when the directories are one).
    pub fn shared_info_file(&self) -> PathBuf {
        paths::info_file(&self.shared)
    }

    /// The file where the daemon remembers its interchange port.
    pub fn port_file(&self) -> PathBuf {
        self.root.join("interchange.port")
    }

    /// The client API socket file.
    pub fn api_socket(&self) -> PathBuf {
        paths::api_socket(&self.root)
    }

    /// The client API as an nng URL.
    pub fn api_url(&self) -> String {
        paths::api_url(&self.root)
    }

    /// The sled database directory.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// The pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("daemon.pid")
    }

    /// The lock file whose exclusive lock makes a daemon the directory's
    /// owner.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }

    /// The file describing how to reach the running daemon.
    pub fn info_file(&self) -> PathBuf {
        paths::info_file(&self.root)
    }

    /// The secret file.
    pub fn secret_file(&self) -> PathBuf {
        paths::secret_file(&self.root)
    }

    /// Reads the secret, creating it (32 random bytes, mode 0600) on first
    /// use. An existing secret that is not a regular file of this user's,
    /// or that group or others may access, is refused.
    pub fn load_or_create_secret(&self) -> Result<Vec<u8>, StateDirError> {
        let path = self.secret_file();
        match read_private(&path) {
            Ok(bytes) if bytes.len() == SECRET_LEN => return Ok(bytes),
            Ok(bytes) => {
                return Err(StateDirError::Corrupt {
                    path,
                    message: format!(
                        "holds {} bytes, expected {SECRET_LEN}; delete it to make a new secret (running workers must then be restarted)",
                        bytes.len()
                    ),
                });
            }
            Err(StateDirError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut secret = vec![0u8; SECRET_LEN];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(io_err(Path::new("/dev/urandom")))?;
        // O_EXCL: never through a link someone left in its place.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(&secret)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&path))?;
        Ok(secret)
    }

    /// Reads the running daemon's contact file.
    pub fn read_info(&self) -> Result<DaemonInfo, StateDirError> {
        let path = self.info_file();
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        DaemonInfo::from_toml(&text).map_err(|e| StateDirError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// Writes the contact file atomically (write to a temporary, rename),
    /// and its copy in the shared directory when that is another directory.
    /// The file names the shared directory, so that clients and workers
    /// attached through the state directory find the object store.
    pub fn write_info(&self, info: &DaemonInfo) -> Result<(), StateDirError> {
        let info = DaemonInfo {
            shared_dir: Some(self.shared.clone()),
            ..info.clone()
        };
        let path = self.info_file();
        let text = info.to_toml().map_err(|e| StateDirError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_atomically(&path, &text)?;
        if self.is_split() {
            write_atomically(&self.shared_info_file(), &text)?;
        }
        Ok(())
    }

    /// Says (once, at start) if the shared directory's contact file is
    /// another daemon's: two daemons sharing one shared directory write
    /// their blocks' files over each other's.
    pub fn check_shared_owner(&self) {
        if !self.is_split() {
            return;
        }
        let path = self.shared_info_file();
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        match DaemonInfo::from_toml(&text) {
            Ok(other) if other.api != self.api_url() => tracing::warn!(
                path = %path.display(),
                other_api = %other.api,
                other_pid = other.pid,
                "the shared directory holds another daemon's contact file; if that daemon still runs, its blocks' files and ours collide: give each daemon its own shared_dir"
            ),
            _ => {}
        }
    }

    /// Removes the contact file, and its copy in the shared directory if
    /// that copy is still this daemon's (`pid`, this state directory's API).
    pub fn remove_info(&self, pid: u32) {
        let _ = fs::remove_file(self.info_file());
        if !self.is_split() {
            return;
        }
        let path = self.shared_info_file();
        let ours = fs::read_to_string(&path)
            .ok()
            .and_then(|text| DaemonInfo::from_toml(&text).ok())
            .is_some_and(|info| info.pid == pid && info.api == self.api_url());
        if ours && let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the shared copy of the contact file");
        }
    }
}

/// Creates `dir` mode 0700 if it is missing (its parents with the default
/// mode); warns if an existing one is writable by group or others.
fn create_private(dir: &Path, which: &'static str) -> Result<(), StateDirError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {
            let mode = fs::metadata(dir).map_err(io_err(dir))?.permissions().mode();
            if mode & 0o022 != 0 {
                tracing::warn!(
                    directory = which,
                    path = %dir.display(),
                    mode = format!("{:04o}", mode & 0o7777),
                    "the directory is writable by group or others"
                );
            }
            Ok(())
        }
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// Writes `text` to `path` through a temporary beside it and a rename, so
/// a reader on any node sees the old file or the new one, never a part.
fn write_atomically(path: &Path, text: &str) -> Result<(), StateDirError> {
    let tmp = path.with_extension("toml.tmp");
    fs::write(&tmp, text).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// How to reach a running daemon; written to the contact file once it
/// listens (its format is the launch contract's).
pub use flotilla_protocol::launch::DaemonInfo;

/// Reads a file that must be private to this user: a regular file (not
/// followed through a link), owned by this user, with no access for group
/// or others.
fn read_private(path: &Path) -> Result<Vec<u8>, StateDirError> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(StateDirError::Corrupt {
            path: path.to_path_buf(),
            message: "is not a regular file".into(),
        });
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(StateDirError::Corrupt {
            path: path.to_path_buf(),
            message: format!("belongs to uid {}, not to this user", meta.uid()),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateDirError::InsecureMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    Ok(bytes)
}

/// How long a second daemon waits for the first to record its pid in the
/// lock file (it does so right after taking the lock).
const HOLDER_PID_PATIENCE: Duration = Duration::from_secs(1);

/// Ownership of a state directory by one daemon process: an exclusive
/// `flock` on `daemon.lock`, and the pid file.
///
/// The lock is taken before anything in the directory is judged or
/// touched, so a second daemon fails without disturbing the first. The
/// kernel drops the lock when the process ends however it ends (SIGKILL
/// included), so there is never a stale owner to detect; the lock file's
/// descriptor is close-on-exec, so blocks the daemon starts do not inherit
/// it. The pid file is informational and removed on drop.
#[derive(Debug)]
pub struct StateLock {
    pid_file: PathBuf,
    _lock: Flock<File>,
}

impl StateLock {
    /// Claims `dir` for this process, or says which daemon owns it.
    pub fn acquire(dir: &StateDir) -> Result<StateLock, StateDirError> {
        let path = dir.lock_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&path)
            .map_err(io_err(&path))?;
        if !file.metadata().map_err(io_err(&path))?.is_file() {
            return Err(StateDirError::Corrupt {
                path,
                message: "is not a regular file".into(),
            });
        }
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, Errno::EWOULDBLOCK)) => {
                return Err(StateDirError::AlreadyRunning {
                    dir: dir.root().to_path_buf(),
                    pid: holder_pid(&file, HOLDER_PID_PATIENCE),
                });
            }
            Err((_, errno)) => return Err(io_err(&path)(errno.into())),
        };
        let pid = std::process::id();
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{pid}"))
            .map_err(io_err(&path))?;
        let pid_file = write_pid_file(dir, pid)?;
        Ok(StateLock {
            pid_file,
            _lock: lock,
        })
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        // Before the lock goes (field drop order): the next owner writes its
        // own.
        let _ = fs::remove_file(&self.pid_file);
    }
}

/// The pid the lock's holder wrote into the lock file, waiting up to
/// `patience` for a holder that has only just taken it.
fn holder_pid(file: &File, patience: Duration) -> Option<i32> {
    use std::os::unix::fs::FileExt;
    let deadline = Instant::now() + patience;
    loop {
        let mut buf = [0u8; 32];
        let pid = file
            .read_at(&mut buf, 0)
            .ok()
            .and_then(|n| std::str::from_utf8(&buf[..n]).ok())
            .and_then(|text| text.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0);
        if pid.is_some() || Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes `pid` to the pid file, replacing one an earlier daemon left (the
/// caller holds the lock, so any existing one is stale); never through a
/// link.
fn write_pid_file(dir: &StateDir, pid: u32) -> Result<PathBuf, StateDirError> {
    let path = dir.pid_file();
    match fs::read_to_string(&path) {
        Ok(old) => {
            tracing::info!(path = %path.display(), content = old.trim(), "replacing the pid file of an earlier daemon");
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "replacing an unreadable pid file")
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
        .map_err(io_err(&path))?;
    writeln!(file, "{pid}").map_err(io_err(&path))?;
    Ok(path)
}

/// True if `pid` is alive and looks like a Flotilla daemon (its command line
/// mentions "flotilla"), so a recycled pid is not mistaken for ours.
pub fn is_live_daemon(pid: i32) -> bool {
    if pid as u32 == std::process::id() {
        return false;
    }
    let alive = match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    if !alive {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            !zombie && String::from_utf8_lossy(&cmdline).contains("flotilla")
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_state_directory_variable() {
        assert_eq!(
            StateDirError::NoHome.to_string(),
            "no state directory: set [daemon] state_dir, FLOTILLA_HOME or HOME"
        );
        let running = StateDirError::AlreadyRunning {
            dir: "/srv/fl".into(),
            pid: Some(7),
        };
        assert!(running.to_string().contains("/srv/fl (pid 7)"), "{running}");
        assert!(
            running
                .to_string()
                .ends_with("or use another FLOTILLA_HOME"),
            "{running}"
        );
    }

    #[test]
    fn secret_is_created_once_with_mode_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("state"));
        dir.create().unwrap();
        let a = dir.load_or_create_secret().unwrap();
        let b = dir.load_or_create_secret().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), SECRET_LEN);
        let mode = fs::metadata(dir.secret_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = fs::metadata(dir.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_pid_file_left_by_a_crash_is_replaced_and_removed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        fs::write(dir.pid_file(), "not a pid").unwrap();
        let lock = StateLock::acquire(&dir).unwrap();
        let text = fs::read_to_string(dir.pid_file()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(lock);
        assert!(!dir.pid_file().exists());
        // The lock went with it: the directory can be claimed again.
        drop(StateLock::acquire(&dir).unwrap());
    }

    #[test]
    fn a_second_claim_fails_naming_the_owner_and_touches_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let _owner = StateLock::acquire(&dir).unwrap();
        // What the owner made: a second claim must leave all of it alone,
        // even a pid file that does not name a live daemon.
        fs::write(dir.pid_file(), "2147483646\n").unwrap();
        fs::write(dir.api_socket(), "").unwrap();
        fs::write(dir.info_file(), "").unwrap();
        let err = StateLock::acquire(&dir).unwrap_err();
        let own_pid = std::process::id() as i32;
        match &err {
            StateDirError::AlreadyRunning { dir: d, pid } => {
                assert_eq!(d, tmp.path());
                assert_eq!(*pid, Some(own_pid));
            }
            other => panic!("{other}"),
        }
        let message = err.to_string();
        assert!(message.contains(&format!("pid {own_pid}")), "{message}");
        assert!(
            message.contains(&tmp.path().display().to_string()),
            "{message}"
        );
        assert_eq!(fs::read_to_string(dir.pid_file()).unwrap(), "2147483646\n");
        assert!(dir.api_socket().exists() && dir.info_file().exists());
    }

    #[test]
    fn the_lock_file_is_private_and_never_followed_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("state"));
        dir.create().unwrap();
        drop(StateLock::acquire(&dir).unwrap());
        let mode = fs::metadata(dir.lock_file()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        fs::remove_file(dir.lock_file()).unwrap();
        let target = tmp.path().join("elsewhere");
        fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.lock_file()).unwrap();
        assert!(StateLock::acquire(&dir).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
    }

    #[test]
    fn only_a_directory_it_creates_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let existing = tmp.path().join("home");
        fs::create_dir(&existing).unwrap();
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::at(&existing).create().unwrap();
        let mode = fs::metadata(&existing).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "an existing directory keeps its mode");

        let fresh = tmp.path().join("a/b/state");
        StateDir::at(&fresh).create().unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_secret_others_may_read_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let secret = dir.load_or_create_secret().unwrap();
        fs::set_permissions(dir.secret_file(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = dir.load_or_create_secret().unwrap_err();
        assert!(
            matches!(err, StateDirError::InsecureMode { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        fs::set_permissions(dir.secret_file(), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(dir.load_or_create_secret().unwrap(), secret);
    }

    #[test]
    fn a_secret_behind_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("state"));
        dir.create().unwrap();
        let target = tmp.path().join("elsewhere");
        fs::write(&target, [7u8; SECRET_LEN]).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&target, dir.secret_file()).unwrap();
        assert!(dir.load_or_create_secret().is_err());
    }

    #[test]
    fn a_relative_state_directory_is_made_absolute() {
        let dir = StateDir::resolve_with(Some(Path::new("relhome")), None, || None, None).unwrap();
        assert!(dir.root().is_absolute(), "{}", dir.root().display());
        assert_eq!(dir.root(), std::env::current_dir().unwrap().join("relhome"));
        assert!(dir.api_url().starts_with("ipc:///"));
    }

    fn info(dir: &StateDir, pid: u32) -> DaemonInfo {
        DaemonInfo {
            pid,
            api: dir.api_url(),
            interchange_address: "127.0.0.1".into(),
            interchange_port: 5555,
            max_frame_bytes: None,
            shared_dir: None,
            client_address: None,
            client_port: None,
        }
    }

    #[test]
    fn info_round_trips_naming_the_shared_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let info = info(&dir, 42);
        dir.write_info(&info).unwrap();
        let read = dir.read_info().unwrap();
        assert_eq!(read.shared_dir.as_deref(), Some(tmp.path()));
        assert_eq!(
            read,
            DaemonInfo {
                shared_dir: Some(tmp.path().to_path_buf()),
                ..info
            }
        );
        // One directory: the copy is the file itself, removed on stop.
        assert!(!dir.is_split());
        assert_eq!(dir.shared_info_file(), dir.info_file());
        dir.remove_info(42);
        assert!(!dir.info_file().exists());
    }

    #[test]
    fn by_default_the_shared_directory_is_the_state_directory() {
        let none = || None;
        let dir = StateDir::resolve_with(Some(Path::new("rel")), None, none, None).unwrap();
        assert_eq!(dir.shared_root(), dir.root());
        assert_eq!(dir.objects(), dir.root().join("objects"));
        assert_eq!(dir.blocks(), dir.root().join("blocks"));
        assert_eq!(dir, StateDir::at(dir.root()));
        // The state directory comes from the environment when not set.
        let home = || Some(PathBuf::from("/home/alice/.flotilla"));
        let dir = StateDir::resolve_with(None, None, home, None).unwrap();
        assert_eq!(dir.shared_root(), Path::new("/home/alice/.flotilla"));
        let err = StateDir::resolve_with(None, None, none, None).unwrap_err();
        assert!(matches!(err, StateDirError::NoHome), "{err}");
    }

    #[test]
    fn the_shared_directory_is_the_setting_else_the_environment() {
        let none = || None;
        let env = Some(PathBuf::from("/pscratch/sd/a/alice/fl"));
        let state = Some(Path::new("/local/fl"));
        let dir = StateDir::resolve_with(state, None, none, env.clone()).unwrap();
        assert_eq!(dir.root(), Path::new("/local/fl"));
        assert_eq!(dir.shared_root(), Path::new("/pscratch/sd/a/alice/fl"));
        assert!(dir.is_split());
        let set = Some(Path::new("/global/cfs/cdirs/m0000/fl"));
        let dir = StateDir::resolve_with(state, set, none, env).unwrap();
        assert_eq!(dir.shared_root(), Path::new("/global/cfs/cdirs/m0000/fl"));
        assert_eq!(
            dir.objects(),
            Path::new("/global/cfs/cdirs/m0000/fl/objects")
        );
        assert_eq!(dir.blocks(), Path::new("/global/cfs/cdirs/m0000/fl/blocks"));
        // What stays node-local stays in the state directory.
        for path in [
            dir.store(),
            dir.api_socket(),
            dir.secret_file(),
            dir.lock_file(),
        ] {
            assert!(path.starts_with("/local/fl"), "{}", path.display());
        }
        // A relative shared directory is made absolute too.
        let dir = StateDir::resolve_with(state, Some(Path::new("sh")), none, None).unwrap();
        assert_eq!(
            dir.shared_root(),
            std::env::current_dir().unwrap().join("sh")
        );
    }

    #[test]
    fn a_split_layout_copies_the_contact_file_and_removes_only_its_own_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path().join("state")).with_shared(tmp.path().join("shared"));
        dir.create().unwrap();
        for d in [dir.root(), dir.shared_root()] {
            let mode = fs::metadata(d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        dir.load_or_create_secret().unwrap();
        dir.write_info(&info(&dir, 42)).unwrap();
        let copy = fs::read_to_string(dir.shared_info_file()).unwrap();
        assert_eq!(copy, fs::read_to_string(dir.info_file()).unwrap());
        let read = DaemonInfo::from_toml(&copy).unwrap();
        assert_eq!(read.shared_dir.as_deref(), Some(dir.shared_root()));
        // Nothing secret, and no temporaries, in the shared directory.
        let names: Vec<_> = fs::read_dir(dir.shared_root())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["daemon.toml"]);
        let secret_hex = flotilla_protocol::secret::to_hex(&dir.load_or_create_secret().unwrap());
        assert!(!copy.contains(&secret_hex));

        // Another daemon's copy (it took the shared directory over) stays.
        dir.write_info(&info(&dir, 7)).unwrap();
        dir.remove_info(42);
        assert!(!dir.info_file().exists());
        assert!(dir.shared_info_file().exists());
        // Our own goes.
        dir.write_info(&info(&dir, 42)).unwrap();
        dir.remove_info(42);
        assert!(!dir.shared_info_file().exists());
    }
}
