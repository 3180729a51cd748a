//! The daemon's state directory and the small files in it.
//!
//! ```text
//! $FLOTILLA_HOME/            mode 0700
//!   daemon.pid               pid of the running daemon (stale ones are detected)
//!   daemon.toml              how to reach it: API socket, interchange address
//!   api.sock                 client API, nng ipc, mode 0600
//!   secret                   32 random bytes workers must present, mode 0600
//!   store/                   sled database: tasks, results, metadata
//!   blocks/N/                each local block's script, stdout and stderr
//! ```

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flotilla_protocol::paths;

pub use flotilla_protocol::paths::HOME_ENV;

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
    /// Another daemon owns this state directory.
    #[error(
        "a daemon is already running with state directory {dir} (pid {pid}); stop it with `flotilla stop` or use another {home}",
        home = HOME_ENV
    )]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
        /// The running daemon's pid.
        pid: i32,
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

/// Paths inside one state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The directory to use: `configured`, else `$FLOTILLA_HOME`, else
    /// `~/.flotilla`.
    pub fn resolve(configured: Option<&Path>) -> Result<StateDir, StateDirError> {
        let root = match configured {
            Some(p) => p.to_path_buf(),
            None => paths::default_state_dir().ok_or(StateDirError::NoHome)?,
        };
        Ok(StateDir { root })
    }

    /// A state directory at exactly `root`.
    pub fn at(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    /// Creates the directory (mode 0700) and its object store if missing.
    pub fn create(&self) -> Result<(), StateDirError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.root))?;
        // Workers (and the containers they run in) bind or read it before
        // anything is published.
        let objects = paths::objects_dir(&self.root);
        fs::create_dir_all(&objects).map_err(io_err(&objects))
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
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

    /// The file describing how to reach the running daemon.
    pub fn info_file(&self) -> PathBuf {
        paths::info_file(&self.root)
    }

    /// The secret file.
    pub fn secret_file(&self) -> PathBuf {
        paths::secret_file(&self.root)
    }

    /// Reads the secret, creating it (32 random bytes, mode 0600) on first use.
    pub fn load_or_create_secret(&self) -> Result<Vec<u8>, StateDirError> {
        let path = self.secret_file();
        match fs::read(&path) {
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
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let mut secret = vec![0u8; SECRET_LEN];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .map_err(io_err(Path::new("/dev/urandom")))?;
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

    /// Writes the contact file atomically (write to a temporary, rename).
    pub fn write_info(&self, info: &DaemonInfo) -> Result<(), StateDirError> {
        let path = self.info_file();
        let text = info.to_toml().map_err(|e| StateDirError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let tmp = path.with_extension("toml.tmp");
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// How to reach a running daemon; written to the contact file once it
/// listens (its format is the launch contract's).
pub use flotilla_protocol::launch::DaemonInfo;

/// Ownership of a state directory by one daemon process.
///
/// Created with `O_EXCL`; a leftover file whose process is gone (or is no
/// longer a Flotilla daemon) is stale and replaced. Removed on drop.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Claims `dir` for this process.
    pub fn acquire(dir: &StateDir) -> Result<PidFile, StateDirError> {
        let path = dir.pid_file();
        for _ in 0..3 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(mut file) => {
                    writeln!(file, "{}", std::process::id()).map_err(io_err(&path))?;
                    return Ok(PidFile { path });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let text = fs::read_to_string(&path).unwrap_or_default();
                    match text.trim().parse::<i32>() {
                        Ok(pid) if pid > 0 && is_live_daemon(pid) => {
                            return Err(StateDirError::AlreadyRunning {
                                dir: dir.root().to_path_buf(),
                                pid,
                            });
                        }
                        _ => {
                            tracing::warn!(path = %path.display(), content = text.trim(), "removing stale pid file");
                            match fs::remove_file(&path) {
                                Ok(()) => {}
                                Err(e) if e.kind() == ErrorKind::NotFound => {}
                                Err(e) => return Err(io_err(&path)(e)),
                            }
                        }
                    }
                }
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Err(StateDirError::Corrupt {
            path,
            message: "another process keeps recreating the pid file".into(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
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
            pid: 7,
        };
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
    fn stale_pid_file_is_replaced_and_removed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        // A pid that cannot be a live process.
        fs::write(dir.pid_file(), "2147483646\n").unwrap();
        let pid = PidFile::acquire(&dir).unwrap();
        let text = fs::read_to_string(dir.pid_file()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(pid);
        assert!(!dir.pid_file().exists());
    }

    #[test]
    fn garbage_pid_file_is_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        fs::write(dir.pid_file(), "not a pid").unwrap();
        assert!(PidFile::acquire(&dir).is_ok());
    }

    #[test]
    fn info_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::at(tmp.path());
        let info = DaemonInfo {
            pid: 42,
            api: dir.api_url(),
            interchange_address: "127.0.0.1".into(),
            interchange_port: 5555,
            max_frame_bytes: None,
        };
        dir.write_info(&info).unwrap();
        assert_eq!(dir.read_info().unwrap(), info);
    }
}
