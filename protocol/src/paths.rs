//! Where a daemon's state directory is and what its files are called.
//!
//! Shared by the daemon, the CLI and the worker so that all three find the
//! same socket from the same environment. Reading environment variables is
//! the only thing done here; nothing is created.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the default state directory.
pub const HOME_ENV: &str = "FLOTILLA_HOME";

/// The default state directory: `$FLOTILLA_HOME`, else `$HOME/.flotilla`.
pub fn default_state_dir() -> Option<PathBuf> {
    match std::env::var_os(HOME_ENV).filter(|v| !v.is_empty()) {
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|h| PathBuf::from(h).join(".flotilla")),
    }
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

/// The object store (published servables' files, named by blake3 hash) of
/// the daemon owning `state_dir`.
pub fn objects_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("objects")
}
