//! Hashes this node has already checked, so an unchanged file is not read
//! again by every new worker.
//!
//! Checking a servable file against its published blake3 reads all of it
//! (tens of MB for a model), and every worker that starts on a node checks
//! every file it runs. The node remembers what it found, per file path, in
//! its private cache directory (`verified/`): the hash and the file's
//! identity when it was hashed (device, inode, size, modification time in
//! nanoseconds). A later check of a file with the same identity takes the
//! hash as known. Writing to a file changes its modification time,
//! replacing it changes its inode, truncating it changes its size: any of
//! these and the file is hashed again.
//!
//! A file modified within the last [`SETTLED`] is hashed but not
//! remembered: a write landing in the same clock tick as the hash would
//! leave the modification time unchanged (the "racily clean" case).
//! Records are written to a temporary file and renamed into place, so a
//! reader sees a whole record or none, and a record that cannot be read or
//! parsed counts as none.

use std::fs::{self, DirBuilder, Metadata};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cache::{NodeCache, hash_file};

/// How old a file's modification time must be for its hash to be
/// remembered.
pub const SETTLED: Duration = Duration::from_secs(2);

/// The first line of a record, naming its format.
const FORMAT: &str = "flotilla-verified-1";

/// What identifies a file's content without reading it: any change to the
/// content changes one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The device it is on.
    pub dev: u64,
    /// Its inode.
    pub ino: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
}

impl Identity {
    /// The identity `meta` describes.
    pub fn of(meta: &Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// Whether it was last modified at least [`SETTLED`] before `now`.
    pub fn settled(&self, now: SystemTime) -> bool {
        let now_ns = match now.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(_) => return false,
        };
        now_ns - self.mtime_ns >= SETTLED.as_nanos() as i128
    }
}

/// A remembered hash: the file's identity and its blake3 then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The file when it was hashed.
    pub identity: Identity,
    /// Its blake3, lower-case hex.
    pub hash: String,
}

impl Record {
    /// The record as stored.
    pub fn to_text(&self) -> String {
        let i = &self.identity;
        format!(
            "{FORMAT}\n{} {} {} {}\n{}\n",
            i.dev, i.ino, i.size, i.mtime_ns, self.hash
        )
    }

    /// A stored record, if `text` is one.
    pub fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != FORMAT {
            return None;
        }
        let mut fields = lines.next()?.split(' ');
        let identity = Identity {
            dev: fields.next()?.parse().ok()?,
            ino: fields.next()?.parse().ok()?,
            size: fields.next()?.parse().ok()?,
            mtime_ns: fields.next()?.parse().ok()?,
        };
        if fields.next().is_some() {
            return None;
        }
        let hash = lines.next()?;
        let well_formed = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        (well_formed && lines.next().is_none()).then(|| Record {
            identity,
            hash: hash.to_owned(),
        })
    }
}

/// The hashes a node remembers; without a directory, every file is hashed.
#[derive(Clone, Debug, Default)]
pub struct Verified {
    /// `verified/` in the node's private cache directory.
    dir: Option<PathBuf>,
}

impl Verified {
    /// Remembers nothing: every check hashes the file.
    pub fn none() -> Self {
        Verified { dir: None }
    }

    /// Remembers hashes in `cache_dir/verified` (`cache_dir` is the node's
    /// cache, private to this user; see [`crate::cache::NodeCache`]).
    pub fn in_cache(cache_dir: &Path) -> Self {
        Verified {
            dir: Some(cache_dir.join("verified")),
        }
    }

    /// The record file for `path`.
    fn record_path(dir: &Path, path: &Path) -> PathBuf {
        let key = blake3::hash(path.as_os_str().as_encoded_bytes());
        dir.join(&key.to_hex()[..32])
    }

    /// blake3 of the file at `path`, lower-case hex: remembered when the
    /// file has not changed since this node hashed it, else read and
    /// hashed (and remembered, once it has settled). Links are followed,
    /// as opening the file does.
    pub fn hash(&self, path: &Path) -> std::io::Result<String> {
        let Some(dir) = &self.dir else {
            return hash_file(path);
        };
        // Records are believed only from a directory only this user can
        // write (made so if it does not exist).
        if dir.parent().is_none_or(|c| NodeCache::open(c).is_err()) {
            return hash_file(path);
        }
        let before = Identity::of(&fs::metadata(path)?);
        let record = Self::record_path(dir, path);
        if let Some(known) = fs::read_to_string(&record)
            .ok()
            .and_then(|t| Record::parse(&t))
            .filter(|r| r.identity == before)
        {
            return Ok(known.hash);
        }
        let hash = hash_file(path)?;
        // Changed while it was read: the hash may be of neither version.
        let after = Identity::of(&fs::metadata(path)?);
        if after == before && after.settled(SystemTime::now()) {
            let remembered = Record {
                identity: after,
                hash: hash.clone(),
            };
            if let Err(e) = Self::write(dir, &record, &remembered) {
                tracing::debug!(path = %path.display(), error = %e, "cannot remember a file's hash");
            }
        }
        Ok(hash)
    }

    /// Writes `record` to `target` whole (a temporary file renamed).
    fn write(dir: &Path, target: &Path, record: &Record) -> std::io::Result<()> {
        match DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        crate::node_python::write_whole(target, &record.to_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;

    /// Sets `path`'s modification time `ago` in the past.
    fn age(path: &Path, ago: Duration) {
        let file = fs::File::options().write(true).open(path).unwrap();
        file.set_times(FileTimes::new().set_modified(SystemTime::now() - ago))
            .unwrap();
    }

    fn setup() -> (tempfile::TempDir, PathBuf, Verified) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.bin");
        fs::write(&file, b"first content").unwrap();
        age(&file, Duration::from_secs(60));
        let verified = Verified::in_cache(&dir.path().join("cache"));
        (dir, file, verified)
    }

    fn records(dir: &Path) -> usize {
        fs::read_dir(dir.join("cache/verified"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    #[test]
    fn a_record_reads_back_and_garbage_is_no_record() {
        let r = Record {
            identity: Identity {
                dev: 2049,
                ino: 12,
                size: 63_000_000,
                mtime_ns: 1_700_000_000_123_456_789,
            },
            hash: "ab".repeat(32),
        };
        assert_eq!(Record::parse(&r.to_text()), Some(r.clone()));
        let text = r.to_text();
        assert_eq!(
            Record::parse(&text.replace(FORMAT, "flotilla-verified-0")),
            None
        );
        assert_eq!(Record::parse(&text[..text.len() - 10]), None);
        assert_eq!(Record::parse(&format!("{text}extra\n")), None);
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn an_unchanged_file_is_hashed_once() {
        let (dir, file, verified) = setup();
        let expected = blake3::hash(b"first content").to_hex().to_string();
        assert_eq!(verified.hash(&file).unwrap(), expected);
        assert_eq!(records(dir.path()), 1);
        // The record is what answers now: a forged one is believed, which
        // shows the file was not read again.
        let record = Verified::record_path(&dir.path().join("cache/verified"), &file);
        let text = fs::read_to_string(&record).unwrap();
        fs::write(&record, text.replace(&expected, &"cd".repeat(32))).unwrap();
        assert_eq!(verified.hash(&file).unwrap(), "cd".repeat(32));
    }

    #[test]
    fn a_changed_file_is_hashed_again() {
        let (_dir, file, verified) = setup();
        verified.hash(&file).unwrap();
        // Same size, content changed, modification time moved.
        fs::write(&file, b"other content").unwrap();
        age(&file, Duration::from_secs(30));
        assert_eq!(
            verified.hash(&file).unwrap(),
            blake3::hash(b"other content").to_hex().to_string()
        );
    }

    #[test]
    fn a_replaced_file_is_hashed_again_even_with_the_old_time() {
        let (dir, file, verified) = setup();
        verified.hash(&file).unwrap();
        let old = fs::metadata(&file).unwrap().modified().unwrap();
        let other = dir.path().join("other.bin");
        fs::write(&other, b"third content").unwrap();
        fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_times(FileTimes::new().set_modified(old))
            .unwrap();
        fs::rename(&other, &file).unwrap();
        assert_eq!(
            verified.hash(&file).unwrap(),
            blake3::hash(b"third content").to_hex().to_string()
        );
    }

    #[test]
    fn a_truncated_file_is_hashed_again() {
        let (_dir, file, verified) = setup();
        verified.hash(&file).unwrap();
        let old = fs::metadata(&file).unwrap().modified().unwrap();
        let f = fs::File::options().write(true).open(&file).unwrap();
        f.set_len(5).unwrap();
        f.set_times(FileTimes::new().set_modified(old)).unwrap();
        assert_eq!(
            verified.hash(&file).unwrap(),
            blake3::hash(b"first").to_hex().to_string()
        );
    }

    #[test]
    fn a_fresh_file_is_not_remembered() {
        let (dir, file, verified) = setup();
        fs::write(&file, b"just written").unwrap();
        assert_eq!(
            verified.hash(&file).unwrap(),
            blake3::hash(b"just written").to_hex().to_string()
        );
        assert_eq!(records(dir.path()), 0);
    }

    #[test]
    fn without_a_directory_nothing_is_remembered() {
        let (dir, file, _) = setup();
        let none = Verified::none();
        assert_eq!(
            none.hash(&file).unwrap(),
            blake3::hash(b"first content").to_hex().to_string()
        );
        assert_eq!(records(dir.path()), 0);
        assert!(none.hash(&dir.path().join("missing")).is_err());
    }
}
