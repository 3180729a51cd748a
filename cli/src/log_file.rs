//! `daemon.log` rotated by size: the detached daemon's log writer.
//!
//! `tracing-appender` rotates by time only, so this is a small writer of
//! our own. It appends to `daemon.log`; a write that would take the file
//! past its limit first renames `daemon.log.(k-1)` to `daemon.log.k` (the
//! oldest beyond `keep` is removed) and `daemon.log` to `daemon.log.1`, then
//! starts a new `daemon.log`. The process's stdout and stderr are pointed at
//! the current file too, so a panic or a child's output lands in the same
//! log, not in a renamed one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// A log file that rotates itself by size.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    keep: u32,
    redirect_stdio: bool,
}

impl RotatingFile {
    /// Appends to `path`; rotates before it would pass `max_bytes` (0:
    /// never), keeping `keep` old files. With `redirect_stdio`, stdout and
    /// stderr follow the current file.
    pub fn open(path: &Path, max_bytes: u64, keep: u32, redirect_stdio: bool) -> io::Result<Self> {
        let file = append(path)?;
        let written = file.metadata()?.len();
        let log = RotatingFile {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes,
            keep,
            redirect_stdio,
        };
        log.point_stdio()?;
        Ok(log)
    }

    /// The `n`th old log (`daemon.log.N`; 0 is the current one).
    pub fn numbered(path: &Path, n: u32) -> PathBuf {
        if n == 0 {
            return path.to_path_buf();
        }
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn point_stdio(&self) -> io::Result<()> {
        if !self.redirect_stdio {
            return Ok(());
        }
        let fd = self.file.as_fd();
        nix::unistd::dup2_stdout(fd)?;
        nix::unistd::dup2_stderr(fd)?;
        Ok(())
    }

    /// Shifts the old logs up by one and starts a new current one.
    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            std::fs::remove_file(&self.path).or_else(missing_is_fine)?;
        } else {
            let oldest = Self::numbered(&self.path, self.keep);
            std::fs::remove_file(&oldest).or_else(missing_is_fine)?;
            for n in (0..self.keep).rev() {
                let from = Self::numbered(&self.path, n);
                std::fs::rename(&from, Self::numbered(&self.path, n + 1))
                    .or_else(missing_is_fine)?;
            }
        }
        self.file = append(&self.path)?;
        self.written = 0;
        self.point_stdio()
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn missing_is_fine(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let over = self.written.saturating_add(buf.len() as u64) > self.max_bytes;
        // A line larger than the limit still goes in, alone.
        if self.max_bytes > 0 && over && self.written > 0 {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.written = self.written.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.log");
        let mut log = RotatingFile::open(&path, 100, 2, false).unwrap();
        for i in 0..50 {
            writeln!(log, "line {i:03} of the log, some words").unwrap();
        }
        assert_eq!(
            files(dir.path()),
            ["daemon.log", "daemon.log.1", "daemon.log.2"]
        );
        for name in files(dir.path()) {
            let len = std::fs::metadata(dir.path().join(&name)).unwrap().len();
            assert!(len <= 100, "{name} has {len} bytes");
        }
        // Newest last: the current file ends with the last line, .1 holds
        // the lines just before it.
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(
            current.ends_with("line 049 of the log, some words\n"),
            "{current}"
        );
        let previous = std::fs::read_to_string(dir.path().join("daemon.log.1")).unwrap();
        let last_previous: u32 = previous.lines().last().unwrap()[5..8].parse().unwrap();
        let first_current: u32 = current.lines().next().unwrap()[5..8].parse().unwrap();
        assert_eq!(last_previous + 1, first_current);
    }

    #[test]
    fn no_rotation_without_a_limit_and_none_kept_with_keep_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.log");
        let mut log = RotatingFile::open(&path, 0, 3, false).unwrap();
        for _ in 0..100 {
            writeln!(log, "a line that is long enough").unwrap();
        }
        assert_eq!(files(dir.path()), ["daemon.log"]);
        let mut log = RotatingFile::open(&path, 50, 0, false).unwrap();
        writeln!(log, "after").unwrap();
        assert_eq!(files(dir.path()), ["daemon.log"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn an_existing_log_counts_towards_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.log");
        std::fs::write(&path, "x".repeat(90)).unwrap();
        let mut log = RotatingFile::open(&path, 100, 1, false).unwrap();
        writeln!(log, "twenty bytes of text").unwrap();
        assert_eq!(files(dir.path()), ["daemon.log", "daemon.log.1"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "twenty bytes of text\n"
        );
    }
}
