//! Reading the end of a job's output, for error messages.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of the end of a job's output is read for its last lines.
pub(crate) const WINDOW: usize = 8 * 1024;

/// The last `max_lines` lines of the file at `path` (reading at most its last
/// 8 KiB), or `None` if it is missing or empty.
pub fn tail_lines(path: &Path, max_lines: usize) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(WINDOW as u64)))
        .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    last_lines(&bytes, max_lines)
}

/// The last `max_lines` non-empty lines of the last [`WINDOW`] bytes of
/// `bytes`, or `None` when there are none.
pub(crate) fn last_lines(bytes: &[u8], max_lines: usize) -> Option<String> {
    let start = bytes.len().saturating_sub(WINDOW);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    Some(lines[lines.len().saturating_sub(max_lines)..].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("err");
        std::fs::write(&path, "a\nb\n\nc\nd\n").unwrap();
        assert_eq!(tail_lines(&path, 2).as_deref(), Some("c\nd"));
        assert_eq!(tail_lines(&dir.path().join("none"), 2), None);
    }

    #[test]
    fn reads_only_the_end_of_a_long_output() {
        let mut bytes = b"first\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', WINDOW));
        bytes.extend(b"\nlast\n");
        let tail = last_lines(&bytes, 5).unwrap();
        assert!(tail.ends_with("last"));
        assert!(!tail.contains("first"));
        assert_eq!(last_lines(b"\n \n", 5), None);
    }
}
