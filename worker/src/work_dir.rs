//! The worker's private directory in the node's temporary directory, and
//! the removal of those that dead workers left behind.
//!
//! A worker links its servables' files (an ONNX model can be hundreds of
//! megabytes) and its scratch space into a directory of its own, removed
//! when it exits. A worker killed outright (the out-of-memory killer, a
//! scheduler's SIGKILL after its grace time, a node's watchdog) cannot
//! remove it, and on a login node or a node whose temporary directory is
//! not wiped between jobs those directories pile up. So each directory
//! holds an owner file, locked (`flock`) for as long as its worker lives
//! and naming the worker's host; a worker starting on the same host removes
//! every such directory of its user whose lock it can take, because the
//! kernel lets go of a lock only when its holder has gone.
//!
//! Only directories that are certainly abandoned go: those of another
//! host (a temporary directory shared between nodes, whose locks may be
//! node-local), another user, without an owner file (made by an older
//! worker, or being made right now) or on a file system without `flock`
//! are left alone.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use tempfile::TempDir;

/// Every worker's directory name starts with this.
const PREFIX: &str = "flotilla-worker-";
/// The owner file inside a directory: the host's name, locked while the
/// worker lives.
const OWNER: &str = ".owner";
/// The owner file while it is being written and locked, before it is
/// renamed to [`OWNER`]: a sweeping worker never sees it unlocked.
const OWNER_NEW: &str = ".owner-new";
/// The owner file's size is a host name's, never more.
const MAX_OWNER_BYTES: u64 = 4096;

/// A worker's private directory: removed (with everything in it) when
/// dropped, then its owner lock let go.
pub struct WorkDir {
    // Field order is drop order: the directory goes before the lock, so no
    // sweeping worker ever sees it unlocked.
    dir: TempDir,
    _owner: Option<Flock<File>>,
}

impl WorkDir {
    /// A new private directory for the worker `worker_id` on `host` under
    /// `parent` (the system's temporary directory): made with `mkdtemp`
    /// semantics, under a name no one can guess, mode 0700, so no other
    /// user can have made it first or look into it; a directory that
    /// exists is never used. Where the file system has no `flock`, the
    /// directory has no owner file and is never swept.
    pub fn create(parent: &Path, worker_id: &str, host: &str) -> io::Result<WorkDir> {
        let id: String = worker_id
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{id}-"))
            .rand_bytes(12)
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)?;
        // The umask can take bits away, never add any; make it exactly 0700.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))?;
        let owner = lock_owner_file(dir.path(), host)?;
        Ok(WorkDir { dir, _owner: owner })
    }

    /// Where the directory is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Writes and locks the owner file, then gives it its name; none where the
/// file system refuses `flock`.
fn lock_owner_file(dir: &Path, host: &str) -> io::Result<Option<Flock<File>>> {
    let new = dir.join(OWNER_NEW);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&new)?;
    file.write_all(host.as_bytes())?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => {
            fs::rename(&new, dir.join(OWNER))?;
            Ok(Some(locked))
        }
        Err((_, errno)) => {
            tracing::debug!(dir = %dir.display(), error = %errno, "no flock here; this directory will not be swept if its worker is killed");
            fs::remove_file(&new)?;
            Ok(None)
        }
    }
}

/// What a sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Directories of dead workers, removed.
    pub removed: Vec<PathBuf>,
    /// Directories of dead workers that could not be removed, and why.
    pub failed: Vec<(PathBuf, String)>,
}

/// Removes the directories under `parent` that workers of this user on
/// `host` left behind when they died (see the module's documentation).
/// An unreadable `parent` sweeps nothing.
pub fn sweep_abandoned(parent: &Path, host: &str) -> Swept {
    let mut swept = Swept::default();
    let Ok(entries) = fs::read_dir(parent) else {
        return swept;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        // Not followed: a link named like a worker's directory is no
        // worker's directory.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid {
            continue;
        }
        let Some(lock) = abandoned_lock(&path, host) else {
            continue;
        };
        // The lock is held while the directory goes, so a second worker
        // sweeping at once passes it by.
        match remove_owner_last(&path) {
            Ok(()) => swept.removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => swept.failed.push((path, e.to_string())),
        }
        drop(lock);
    }
    swept
}

/// Removes `dir` with its owner file last, so a sweep cut short (its
/// worker killed, a file it may not remove) leaves a directory the next
/// sweep still recognises.
fn remove_owner_last(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == OWNER {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    fs::remove_file(dir.join(OWNER))?;
    fs::remove_dir(dir)
}

/// The owner lock of the directory `dir`, taken, if the directory is this
/// host's and its worker has gone.
fn abandoned_lock(dir: &Path, host: &str) -> Option<Flock<File>> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dir.join(OWNER))
        .ok()?;
    let mut named = String::new();
    (&mut file)
        .take(MAX_OWNER_BYTES)
        .read_to_string(&mut named)
        .ok()?;
    if named != host {
        return None;
    }
    // Refused with EWOULDBLOCK: its worker lives; with anything else:
    // cannot tell. Either way it stays.
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker killed outright: its directory stays, its lock goes.
    fn killed(work: WorkDir) -> PathBuf {
        let WorkDir { dir, _owner } = work;
        let path = dir.keep();
        drop(_owner);
        path
    }

    /// Another user could pre-create the old, predictable name
    /// (`flotilla-worker-<pid>-<id>`) open to everyone; the directory is
    /// never that one, nor any that exists, and it is private.
    #[test]
    fn the_work_dir_is_private_and_never_one_that_existed() {
        let parent = tempfile::tempdir().unwrap();
        let planted = parent
            .path()
            .join(format!("flotilla-worker-{}-w", std::process::id()));
        fs::create_dir(&planted).unwrap();
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o777)).unwrap();
        // Kept alive together: each must be new while the others exist.
        let mut kept: Vec<WorkDir> = Vec::new();
        for _ in 0..20 {
            let dir = WorkDir::create(parent.path(), "w", "h").unwrap();
            assert_ne!(dir.path(), planted);
            assert!(
                kept.iter().all(|k| k.path() != dir.path()),
                "a directory was reused"
            );
            let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.path().display());
            kept.push(dir);
        }
        assert!(fs::read_dir(&planted).unwrap().next().is_none());
    }

    #[test]
    fn a_dead_worker_s_directory_is_swept_and_a_live_one_s_is_not() {
        let parent = tempfile::tempdir().unwrap();
        let live = WorkDir::create(parent.path(), "live", "node1").unwrap();
        let dead = killed(WorkDir::create(parent.path(), "dead", "node1").unwrap());
        fs::create_dir(dead.join("model@1")).unwrap();
        fs::write(dead.join("model@1").join("model.onnx"), b"weights").unwrap();

        let swept = sweep_abandoned(parent.path(), "node1");
        assert_eq!(swept.removed, vec![dead.clone()]);
        assert!(swept.failed.is_empty());
        assert!(!dead.exists());
        assert!(live.path().join(OWNER).exists());

        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists(), "a worker's own exit removes its directory");
        assert_eq!(sweep_abandoned(parent.path(), "node1"), Swept::default());
    }

    /// Everything that is not certainly a dead worker's directory of this
    /// host stays.
    #[test]
    fn only_this_host_s_locked_directories_are_ever_swept() {
        let parent = tempfile::tempdir().unwrap();
        let other_host = killed(WorkDir::create(parent.path(), "a", "node2").unwrap());
        let host_prefix = killed(WorkDir::create(parent.path(), "b", "node1x").unwrap());
        let unowned = parent.path().join("flotilla-worker-old-1-abc");
        fs::create_dir(&unowned).unwrap();
        let half_made = killed(WorkDir::create(parent.path(), "c", "node1").unwrap());
        fs::rename(half_made.join(OWNER), half_made.join(OWNER_NEW)).unwrap();
        let not_a_dir = parent.path().join("flotilla-worker-file");
        fs::write(&not_a_dir, b"node1").unwrap();
        let target = killed(WorkDir::create(parent.path(), "t", "node1").unwrap());
        let link = parent.path().join("flotilla-worker-link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let other_name = parent.path().join("not-flotilla");
        fs::create_dir(&other_name).unwrap();
        fs::write(other_name.join(OWNER), b"node1").unwrap();

        let swept = sweep_abandoned(parent.path(), "node1");
        assert_eq!(swept.removed, vec![target.clone()], "{swept:?}");
        for kept in [
            &other_host,
            &host_prefix,
            &unowned,
            &half_made,
            &not_a_dir,
            &other_name,
        ] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
        assert!(fs::symlink_metadata(&link).is_ok());
    }

    /// A sweep that cannot finish leaves the owner file for the next one,
    /// even where the file it cannot remove is listed after the owner file.
    #[test]
    fn a_directory_that_cannot_be_removed_keeps_its_owner_file() {
        let parent = tempfile::tempdir().unwrap();
        let dead = killed(WorkDir::create(parent.path(), "dead", "node1").unwrap());
        // Files the directory lists after its owner file, which a walk in
        // listing order would reach only after removing the owner file.
        let mut files: Vec<PathBuf> = Vec::new();
        for i in 0..200 {
            fs::write(dead.join(format!("part-{i}")), b"weights").unwrap();
            let listed: Vec<PathBuf> = fs::read_dir(&dead)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            let owner_at = listed.iter().position(|p| p.ends_with(OWNER)).unwrap();
            files = listed[owner_at + 1..].to_vec();
            if !files.is_empty() {
                break;
            }
        }
        assert!(!files.is_empty(), "no file listed after the owner file");
        // Root may remove files from a directory it may not write, but not
        // immutable ones.
        let root = nix::unistd::geteuid().is_root();
        let pin = |on: bool| {
            if root {
                let flag = if on { "+i" } else { "-i" };
                let status = std::process::Command::new("chattr")
                    .arg(flag)
                    .args(&files)
                    .status()
                    .unwrap();
                assert!(status.success(), "chattr {flag}");
            } else {
                let mode = if on { 0o500 } else { 0o700 };
                fs::set_permissions(&dead, fs::Permissions::from_mode(mode)).unwrap();
            }
        };
        pin(true);
        let swept = sweep_abandoned(parent.path(), "node1");
        pin(false);
        assert_eq!(swept.failed.len(), 1, "{swept:?}");
        assert!(dead.join(OWNER).exists());
        assert_eq!(sweep_abandoned(parent.path(), "node1").removed, vec![dead]);
    }

    #[test]
    fn a_missing_parent_sweeps_nothing() {
        let parent = tempfile::tempdir().unwrap();
        assert_eq!(
            sweep_abandoned(&parent.path().join("absent"), "node1"),
            Swept::default()
        );
    }
}
