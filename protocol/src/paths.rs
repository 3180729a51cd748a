//! Where a daemon's state directory and shared directory are, and what
//! their files are called.
//!
//! The state directory holds what must be node-local and fast (the store,
//! the API socket, the lock, the secret, the contact file); the shared
//! directory holds what compute nodes read or write (the object store,
//! local blocks' run directories, a copy of the contact file). By default
//! they are one directory.
//!
//! Shared by the daemon, the CLI and the worker so that all three find the
//! same socket and object store from the same environment. Reading
//! environment variables and the contact file is all that is done here;
//! nothing is created.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the default state directory.
pub const HOME_ENV: &str = "FLOTILLA_HOME";

/// Environment variable that overrides the default shared directory (the
/// state directory).
pub const SHARED_ENV: &str = "FLOTILLA_SHARED";

/// The default state directory: `$FLOTILLA_HOME`, else `$HOME/.flotilla`.
pub fn default_state_dir() -> Option<PathBuf> {
    match std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".flotilla")),
    }
}

/// The shared directory set by [`SHARED_ENV`], if it is set and not empty.
pub fn shared_dir_from_env() -> Option<PathBuf> {
    std::env::var_os(SHARED_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The client API socket of the daemon owning `state_dir`.
pub fn api_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("api.sock")
}

/// The client API as an nng URL.
pub fn api_url(state_dir: &Path) -> String {
    format!("ipc://{}", api_socket(state_dir).display())
}

/// The contact file ([`crate::launch::CONTACT_FILE`]) of the daemon owning
/// `state_dir`.
pub fn info_file(state_dir: &Path) -> PathBuf {
    state_dir.join(crate::launch::CONTACT_FILE)
}

/// The secret file of the daemon owning `state_dir`.
pub fn secret_file(state_dir: &Path) -> PathBuf {
    state_dir.join("secret")
}

/// The API tokens' records (verifiers, never tokens) of the daemon owning
/// `state_dir`.
pub fn tokens_file(state_dir: &Path) -> PathBuf {
    state_dir.join("tokens.toml")
}

/// Where a client off the daemon's host keeps its token, in the state
/// directory it uses (`$FLOTILLA_HOME`, else `~/.flotilla`); the
/// environment's [`crate::token::TOKEN_ENV`] comes first.
pub fn token_file(state_dir: &Path) -> PathBuf {
    state_dir.join("token")
}

/// The object store (published servables' files, named by blake3 hash) in
/// a daemon's shared directory `shared_dir`.
pub fn objects_dir(shared_dir: &Path) -> PathBuf {
    shared_dir.join("objects")
}

/// Where local blocks' run directories go by default, in a daemon's shared
/// directory `shared_dir`.
pub fn blocks_dir(shared_dir: &Path) -> PathBuf {
    shared_dir.join("blocks")
}

/// The shared directory of the daemon owning `state_dir`, as its contact
/// file names it; `state_dir` itself when the file names none (a daemon
/// from before the split) or cannot be read (no daemon has run there).
pub fn daemon_shared_dir(state_dir: &Path) -> PathBuf {
    std::fs::read_to_string(info_file(state_dir))
        .ok()
        .and_then(|text| crate::launch::DaemonInfo::from_toml(&text).ok())
        .and_then(|info| info.shared_dir)
        .unwrap_or_else(|| state_dir.to_path_buf())
}

/// The object store of the daemon owning `state_dir`: where `flotilla
/// servable publish` writes and where a worker attached through the state
/// directory reads.
pub fn daemon_objects_dir(state_dir: &Path) -> PathBuf {
    objects_dir(&daemon_shared_dir(state_dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::DaemonInfo;

    fn info(shared_dir: Option<PathBuf>) -> DaemonInfo {
        DaemonInfo {
            pid: 1,
            api: "ipc:///s/api.sock".into(),
            interchange_address: "127.0.0.1".into(),
            interchange_port: 1,
            max_frame_bytes: None,
            shared_dir,
            client_address: None,
            client_port: None,
        }
    }

    #[test]
    fn the_object_store_is_where_the_contact_file_says() {
        let state = tempfile::tempdir().unwrap();
        // No daemon has run here: the state directory's own.
        assert_eq!(
            daemon_objects_dir(state.path()),
            state.path().join("objects")
        );
        // A daemon from before the split names no shared directory.
        std::fs::write(info_file(state.path()), info(None).to_toml().unwrap()).unwrap();
        assert_eq!(
            daemon_objects_dir(state.path()),
            state.path().join("objects")
        );
        let shared = info(Some("/scratch/me/fl".into()));
        std::fs::write(info_file(state.path()), shared.to_toml().unwrap()).unwrap();
        assert_eq!(
            daemon_objects_dir(state.path()),
            Path::new("/scratch/me/fl/objects")
        );
        assert_eq!(
            blocks_dir(Path::new("/scratch/me/fl")),
            Path::new("/scratch/me/fl/blocks")
        );
    }
}
