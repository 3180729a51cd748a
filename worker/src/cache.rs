//! The node's cache of servable files fetched from the daemon.
//!
//! Files are kept under their object name (blake3 of the content), so an
//! entry never goes stale and every block that runs on the node later
//! reuses it. The first worker on the node that needs a file fetches it,
//! once: fetchers of one file take an exclusive lock (`flock` on a lock
//! file beside it, released by the kernel if the fetcher dies), the bytes
//! go to a fresh temporary file (`O_EXCL`, never one that existed) and are
//! renamed into place only once their hash is right, so a reader sees the
//! whole file or none, and whoever waited for the lock finds it there. An
//! entry is checked against its name whenever it is used (hashed again
//! only if it changed since the node last hashed it, see
//! [`crate::verified`]); a damaged one is fetched again.
//!
//! The directory is private (mode 0700, owned by this user): in a shared
//! `/tmp`, a directory someone else made first is refused.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flotilla_protocol::objects::is_object_name;
use nix::fcntl::{Flock, FlockArg};

use crate::fetch::{FetchError, FetchStats};
use crate::verified::Verified;

/// Why the cache could not give a file.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache directory cannot be made or used.
    #[error("the node's cache {dir}: {reason}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of the cache could not be read, written or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not an object name: nothing is looked up.
    #[error("`{0}` is not an object name")]
    BadName(String),
    /// The fetch failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl CacheError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            CacheError::Fetch(e) => e.is_transient(),
            CacheError::Io { .. } => true,
            CacheError::Directory { .. } | CacheError::BadName(_) => false,
        }
    }
}

/// A file the cache gave.
#[derive(Debug)]
pub struct Cached {
    /// Where it is (checked against its name).
    pub path: PathBuf,
    /// How it was fetched, when this call fetched it; `None`: it was there.
    pub fetched: Option<FetchStats>,
}

/// The node's cache directory.
#[derive(Debug, Clone)]
pub struct NodeCache {
    dir: PathBuf,
}

/// The default cache directory: `flotilla-cache-USER` in the system's
/// temporary directory (`$TMPDIR`, else `/tmp`), on the node itself.
pub fn default_dir() -> PathBuf {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| {
            !u.is_empty()
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .unwrap_or_else(|| nix::unistd::geteuid().to_string());
    std::env::temp_dir().join(format!("flotilla-cache-{user}"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

impl NodeCache {
    /// The cache in `dir`, made (mode 0700) if it does not exist; refused
    /// if it is not a directory of this user's that only they can write.
    pub fn open(dir: &Path) -> Result<NodeCache, CacheError> {
        let refuse = |reason: String| CacheError::Directory {
            dir: dir.to_owned(),
            reason,
        };
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| refuse(e.to_string()))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(refuse(format!("cannot create it: {e}"))),
        }
        let meta = fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
        if !meta.is_dir() {
            return Err(refuse("not a directory (a link is not followed)".into()));
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(refuse(format!(
                "owned by user {}, not this one: choose another with --cache-dir",
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "others may write in it (mode {:o}): make it 0700",
                meta.permissions().mode() & 0o777
            )));
        }
        Ok(NodeCache {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file named `object`: from the cache if it is there and intact,
    /// else written by `fetch` (which must check the bytes against the
    /// name, as [`crate::fetch::fetch_into`] does) into a temporary file
    /// and renamed into place. Only one fetcher of a file on the node
    /// fetches; the others wait for it and take its copy.
    pub fn get(
        &self,
        object: &str,
        fetch: impl FnOnce(&mut File) -> Result<FetchStats, FetchError>,
    ) -> Result<Cached, CacheError> {
        if !is_object_name(object) {
            return Err(CacheError::BadName(object.chars().take(100).collect()));
        }
        let path = self.dir.join(object);
        let verified = Verified::in_cache(&self.dir);
        if intact(&verified, &path, object) {
            return Ok(Cached {
                path,
                fetched: None,
            });
        }
        let lock_path = self.dir.join(format!(".{object}.lock"));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let _held = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            CacheError::Io {
                path: lock_path.clone(),
                source: errno.into(),
            }
        })?;
        // Whoever held the lock before may have fetched it meanwhile.
        if intact(&verified, &path, object) {
            return Ok(Cached {
                path,
                fetched: None,
            });
        }
        if fs::symlink_metadata(&path).is_ok() {
            tracing::warn!(path = %path.display(), "a cached servable file no longer matches its hash; fetching it again");
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        let mut part = tempfile::Builder::new()
            .prefix(&format!(".{object}."))
            .suffix(".part")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        let stats = fetch(part.as_file_mut())?;
        part.as_file().sync_all().map_err(io_err(part.path()))?;
        let mode = if stats.executable { 0o555 } else { 0o444 };
        fs::set_permissions(part.path(), fs::Permissions::from_mode(mode))
            .map_err(io_err(part.path()))?;
        part.persist(&path).map_err(|e| CacheError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(Cached {
            path,
            fetched: Some(stats),
        })
    }
}

/// Whether `path` is a regular file (not a link) whose content has blake3
/// `object`.
fn intact(verified: &Verified, path: &Path, object: &str) -> bool {
    if !fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    verified.hash(path).is_ok_and(|h| h == object)
}

/// blake3 of a file's content, lower-case hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::fetch_into;
    use crate::fetch::tests::MemorySource;
    use std::sync::atomic::Ordering;

    fn content() -> (Vec<u8>, String) {
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let name = blake3::hash(&content).to_hex().to_string();
        (content, name)
    }

    #[test]
    fn concurrent_fetchers_on_a_node_fetch_one_copy() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let (content, name) = content();
        let source = MemorySource::new(vec![content.clone()]);
        let fetched = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    // Each opens the cache as a worker of its own would.
                    let cache = NodeCache::open(&dir).unwrap();
                    let got = cache
                        .get(&name, |out| {
                            fetch_into(&source, &name, content.len() as u64, 4096, out)
                        })
                        .unwrap();
                    if got.fetched.is_some() {
                        fetched.fetch_add(1, Ordering::SeqCst);
                    }
                    assert_eq!(fs::read(&got.path).unwrap(), content);
                });
            }
        });
        assert_eq!(fetched.load(Ordering::SeqCst), 1, "one fetcher fetched");
        let chunks = content.len().div_ceil(4096) as u32;
        assert_eq!(source.requests.load(Ordering::SeqCst), chunks);
        // Only the file and its lock remain: no partial files.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [format!(".{name}.lock"), name.clone()]);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_failed_fetch_leaves_nothing_and_a_damaged_entry_is_fetched_again() {
        let root = tempfile::tempdir().unwrap();
        let cache = NodeCache::open(&root.path().join("c")).unwrap();
        let (content, name) = content();
        let e = cache
            .get(&name, |out| {
                fetch_into(
                    &MemorySource::new(vec![b"other".to_vec()]),
                    &name,
                    5,
                    64,
                    out,
                )
            })
            .unwrap_err();
        assert!(e.to_string().contains("cannot send it"), "{e}");
        assert!(!cache.dir().join(&name).exists());
        let source = MemorySource::new(vec![content.clone()]);
        let fetch = |out: &mut File| fetch_into(&source, &name, content.len() as u64, 1 << 20, out);
        assert!(cache.get(&name, fetch).unwrap().fetched.is_some());
        assert!(cache.get(&name, fetch).unwrap().fetched.is_none(), "reused");
        let path = cache.dir().join(&name);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"damaged").unwrap();
        let again = cache.get(&name, fetch).unwrap();
        assert!(again.fetched.is_some());
        assert_eq!(fs::read(&again.path).unwrap(), content);
        assert!(matches!(
            cache.get("../x", fetch).unwrap_err(),
            CacheError::BadName(_)
        ));
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("open");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = NodeCache::open(&dir).unwrap_err();
        assert!(e.to_string().contains("others may write"), "{e}");
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = NodeCache::open(&link).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
