//! What the node's Python is and has, remembered between workers.
//!
//! Before it runs a Python servable, a worker asks the node's Python what
//! it is (its real path and version, [`crate::environment`]) and whether it
//! already has the servable's pinned packages. Each question is a
//! `python3` run (60–100 ms), and every new worker on the node asked both
//! again. The node now remembers the answers in its private cache
//! directory (`envs/`), and a worker takes them without running Python as
//! long as nothing they depend on has changed:
//!
//! - **The probe** (`python-FINGERPRINT.probe`) is named by the
//!   interpreter's fingerprint: the command as the PATH resolves it, the
//!   file it leads to and that file's device, inode, size and modification
//!   time, and the variables that move Python's search path (`PYTHONPATH`,
//!   `PYTHONHOME`, `PYTHONUSERBASE`, `PYTHONNOUSERSITE`). Another Python
//!   behind the same command, an upgrade in place or another search path
//!   is another fingerprint, so it is probed afresh. The probe also keeps
//!   the directories of Python's search path (and the user's site
//!   directory, present or not).
//! - **"The node's Python has these packages"** (`ENVKEY.node`, where the
//!   environment key hashes the interpreter and the locked requirements) is
//!   kept with the modification times of those directories when it was
//!   checked. Installing, upgrading or removing a package adds or removes
//!   entries (`NAME-VERSION.dist-info`, the package's directory, a `.pth`
//!   file) in one of them, which changes its modification time: the
//!   packages are checked again. Only a positive answer is kept; a node
//!   without the packages builds a venv, which is marked ready on its own.
//!
//! Records are written to a temporary file and renamed into place; one
//! that cannot be read or parsed counts as none.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::environment::Interpreter;

/// The first line of a probe record.
const PROBE_FORMAT: &str = "flotilla-python-probe-1";

/// The first line of a "has the packages" record.
const SATISFIED_FORMAT: &str = "flotilla-node-python-1";

/// The variables that change what a Python finds.
pub const PYTHON_VARIABLES: &[&str] = &[
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PYTHONNOUSERSITE",
];

/// The executable `command` runs: itself when it names a path, else the
/// first executable file of that name in `path_var` (as a shell finds it).
pub fn resolve(command: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if command.contains('/') {
        let p = PathBuf::from(command);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|dir| {
            // An empty entry is the current directory.
            if dir.as_os_str().is_empty() {
                PathBuf::from(".").join(command)
            } else {
                dir.join(command)
            }
        })
        .find(|p| executable(p))
}

/// The interpreter's fingerprint: what `command` resolves to (in
/// `path_var`), the file behind it and its identity, and the Python
/// variables (`variable` reads one). None when the command resolves to
/// nothing.
pub fn fingerprint(
    command: &str,
    path_var: Option<&std::ffi::OsStr>,
    variable: impl Fn(&str) -> Option<OsString>,
) -> Option<String> {
    let resolved = resolve(command, path_var)?;
    let real = fs::canonicalize(&resolved).ok()?;
    let meta = fs::metadata(&real).ok()?;
    let mut h = blake3::Hasher::new();
    h.update(PROBE_FORMAT.as_bytes());
    h.update(b"\0");
    for part in [resolved.as_os_str(), real.as_os_str()] {
        h.update(part.as_encoded_bytes());
        h.update(b"\0");
    }
    let identity = format!(
        "{} {} {} {}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    h.update(identity.as_bytes());
    h.update(b"\0");
    for name in PYTHON_VARIABLES {
        h.update(name.as_bytes());
        match variable(name) {
            Some(value) => {
                h.update(b"=");
                h.update(value.as_encoded_bytes());
            }
            None => {
                h.update(b" unset");
            }
        }
        h.update(b"\0");
    }
    Some(h.finalize().to_hex()[..32].to_owned())
}

/// What a probe of the node's Python found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The interpreter.
    pub interpreter: Interpreter,
    /// The directories its packages may come from: its search path's
    /// absolute entries, and the user's site directory.
    pub dirs: Vec<PathBuf>,
}

impl Probe {
    /// The probe from the probe script's output (real path, version, then
    /// one directory a line), if it is one.
    pub fn from_output(text: &str) -> Option<Probe> {
        let mut lines = text.lines();
        let path = lines.next()?.trim();
        let version = lines.next()?.trim();
        if path.is_empty() || version.is_empty() {
            return None;
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        for line in lines {
            let dir = PathBuf::from(line);
            if dir.is_absolute() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        Some(Probe {
            interpreter: Interpreter {
                path: path.to_owned(),
                version: version.to_owned(),
            },
            dirs,
        })
    }

    /// The record as stored.
    pub fn to_text(&self) -> Option<String> {
        let mut text = format!(
            "{PROBE_FORMAT}\n{}\n{}\n",
            self.interpreter.path, self.interpreter.version
        );
        for dir in &self.dirs {
            let dir = dir.to_str()?;
            if dir.contains('\n') {
                return None;
            }
            text.push_str(dir);
            text.push('\n');
        }
        if self.interpreter.path.contains('\n') {
            return None;
        }
        Some(text)
    }

    /// A stored record, if `text` is one.
    pub fn parse(text: &str) -> Option<Probe> {
        Probe::from_output(text.strip_prefix(PROBE_FORMAT)?.strip_prefix('\n')?)
    }

    /// The state of its directories now: each one's modification time, or
    /// its absence. Anything installed into or removed from one changes it.
    pub fn dirs_state(&self) -> String {
        let mut state = String::new();
        for dir in &self.dirs {
            match fs::metadata(dir) {
                Ok(m) => state.push_str(&format!("{}.{}", m.mtime(), m.mtime_nsec())),
                Err(_) => state.push('-'),
            }
            state.push(' ');
            state.push_str(&dir.to_string_lossy());
            state.push('\n');
        }
        state
    }
}

/// The node's remembered answers, in its environments directory.
#[derive(Clone, Debug)]
pub struct NodePython {
    /// `envs/` in the node's private cache directory.
    envs: PathBuf,
}

impl NodePython {
    /// Answers kept in `envs` (which must be private to this user).
    pub fn new(envs: PathBuf) -> Self {
        NodePython { envs }
    }

    fn probe_path(&self, fingerprint: &str) -> PathBuf {
        self.envs.join(format!("python-{fingerprint}.probe"))
    }

    fn satisfied_path(&self, key: &str) -> PathBuf {
        self.envs.join(format!("{key}.node"))
    }

    /// The probe kept for the interpreter of this fingerprint.
    pub fn probe(&self, fingerprint: &str) -> Option<Probe> {
        Probe::parse(&fs::read_to_string(self.probe_path(fingerprint)).ok()?)
    }

    /// Keeps `probe` for the interpreter of this fingerprint.
    pub fn keep_probe(&self, fingerprint: &str, probe: &Probe) -> std::io::Result<()> {
        let Some(text) = probe.to_text() else {
            return Ok(());
        };
        write_whole(&self.probe_path(fingerprint), &text)
    }

    /// Whether the node's Python was found to have environment `key`'s
    /// packages, and its package directories have not changed since.
    pub fn satisfied(&self, key: &str, probe: &Probe) -> bool {
        fs::read_to_string(self.satisfied_path(key)).is_ok_and(|text| {
            text.strip_prefix(SATISFIED_FORMAT)
                .and_then(|t| t.strip_prefix('\n'))
                .is_some_and(|state| state == probe.dirs_state())
        })
    }

    /// Keeps that the node's Python has environment `key`'s packages, with
    /// `state` (its package directories' [`Probe::dirs_state`] taken
    /// before the check).
    pub fn keep_satisfied(&self, key: &str, state: &str) -> std::io::Result<()> {
        write_whole(
            &self.satisfied_path(key),
            &format!("{SATISFIED_FORMAT}\n{state}"),
        )
    }
}

/// Writes `text` to `target` whole: a temporary file renamed into place,
/// so a reader on the node sees the old record or the new one, never part.
pub(crate) fn write_whole(target: &Path, text: &str) -> std::io::Result<()> {
    /// Names the temporary files of concurrent writers in one process apart.
    static FRESH: AtomicU64 = AtomicU64::new(0);
    let tmp = target.with_extension(format!(
        "{}.{}.tmp",
        std::process::id(),
        FRESH.fetch_add(1, Ordering::Relaxed)
    ));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&tmp, target));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn unset(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn the_command_resolves_through_the_path_like_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        // Not executable in a: b's is the one.
        fs::write(a.join("python3"), "").unwrap();
        let python = executable(&b, "python3");
        let path = std::env::join_paths([&a, &b]).unwrap();
        assert_eq!(resolve("python3", Some(&path)), Some(python.clone()));
        assert_eq!(resolve("python9", Some(&path)), None);
        assert_eq!(resolve(python.to_str().unwrap(), None), Some(python));
        assert_eq!(resolve("python3", None), None);
    }

    #[test]
    fn the_fingerprint_changes_with_the_interpreter_and_the_variables() {
        let dir = tempfile::tempdir().unwrap();
        let python = executable(dir.path(), "python3");
        let path = dir.path().as_os_str().to_owned();
        let first = fingerprint("python3", Some(&path), unset).unwrap();
        assert_eq!(fingerprint("python3", Some(&path), unset).unwrap(), first);
        // Another search path for the same interpreter.
        let with_path = |name: &str| (name == "PYTHONPATH").then(|| OsString::from("/opt/lib"));
        assert_ne!(
            fingerprint("python3", Some(&path), with_path).unwrap(),
            first
        );
        // The interpreter replaced (an upgrade in place): another inode.
        let new = dir.path().join("python3.new");
        fs::write(&new, "#!/bin/sh\n# another\n").unwrap();
        fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&new, &python).unwrap();
        assert_ne!(fingerprint("python3", Some(&path), unset).unwrap(), first);
        // The command leading elsewhere: a link to another file.
        let other = executable(dir.path(), "python3.12");
        fs::remove_file(&python).unwrap();
        std::os::unix::fs::symlink(&other, &python).unwrap();
        let linked = fingerprint("python3", Some(&path), unset).unwrap();
        assert_ne!(linked, first);
        assert_eq!(fingerprint("python9", Some(&path), unset), None);
    }

    #[test]
    fn a_probe_keeps_its_interpreter_and_directories() {
        let out = "/usr/bin/python3.11\n3.11.7\n/usr/lib/python311.zip\n/usr/lib/python3/dist-packages\n/usr/lib/python3/dist-packages\nrelative\n";
        let probe = Probe::from_output(out).unwrap();
        assert_eq!(probe.interpreter.version, "3.11.7");
        assert_eq!(
            probe.dirs,
            vec![
                PathBuf::from("/usr/lib/python311.zip"),
                PathBuf::from("/usr/lib/python3/dist-packages")
            ]
        );
        assert_eq!(Probe::parse(&probe.to_text().unwrap()), Some(probe));
        assert_eq!(Probe::parse(out), None);
        assert_eq!(Probe::from_output("/usr/bin/python3\n"), None);
    }

    #[test]
    fn packages_installed_or_removed_make_the_node_check_again() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site-packages");
        let user = dir.path().join("user-site");
        fs::create_dir_all(site.join("numpy-2.1.0.dist-info")).unwrap();
        let probe = Probe {
            interpreter: Interpreter {
                path: "/usr/bin/python3".into(),
                version: "3.12.1".into(),
            },
            dirs: vec![site.clone(), user.clone()],
        };
        let node = NodePython::new(dir.path().to_owned());
        assert!(!node.satisfied("key1", &probe));
        node.keep_satisfied("key1", &probe.dirs_state()).unwrap();
        assert!(node.satisfied("key1", &probe));
        assert!(!node.satisfied("key2", &probe));

        // An upgrade: one dist-info goes, another comes. Directory times
        // may not move within a clock tick, so the test moves them itself
        // where the filesystem did not.
        let before = probe.dirs_state();
        fs::remove_dir(site.join("numpy-2.1.0.dist-info")).unwrap();
        fs::create_dir(site.join("numpy-2.2.0.dist-info")).unwrap();
        bump(&site, &before, &probe);
        assert!(!node.satisfied("key1", &probe));

        // Checked again and kept; then a user site appears.
        node.keep_satisfied("key1", &probe.dirs_state()).unwrap();
        assert!(node.satisfied("key1", &probe));
        fs::create_dir_all(&user).unwrap();
        assert!(!node.satisfied("key1", &probe));
    }

    /// Moves `dir`'s modification time if the state did not change.
    fn bump(dir: &Path, before: &str, probe: &Probe) {
        if probe.dirs_state() == before {
            let later =
                fs::metadata(dir).unwrap().modified().unwrap() + std::time::Duration::from_secs(1);
            fs::File::open(dir)
                .unwrap()
                .set_times(fs::FileTimes::new().set_modified(later))
                .unwrap();
        }
    }

    #[test]
    fn records_are_kept_whole_and_garbage_counts_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodePython::new(dir.path().to_owned());
        let probe = Probe {
            interpreter: Interpreter {
                path: "/usr/bin/python3".into(),
                version: "3.12.1".into(),
            },
            dirs: vec![dir.path().to_owned()],
        };
        assert_eq!(node.probe("abc"), None);
        node.keep_probe("abc", &probe).unwrap();
        assert_eq!(node.probe("abc"), Some(probe.clone()));
        fs::write(node.probe_path("abc"), "garbage\n").unwrap();
        assert_eq!(node.probe("abc"), None);
        fs::write(node.satisfied_path("k"), probe.dirs_state()).unwrap();
        assert!(!node.satisfied("k", &probe));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}
