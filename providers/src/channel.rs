//! Channels: where a provider's scheduler commands run.
//!
//! A provider talks to its scheduler through the scheduler's command-line
//! tools (`sbatch`, `qsub`, `kubectl`), run on a [`Channel`]: the local shell
//! when the daemon sits on the login node, or an SSH session to a login node
//! when it does not ([`crate::ssh::SshChannel`]). Besides running commands a
//! channel writes and reads files, because job scripts and job output live
//! on the scheduler's side.
//!
//! Every command has a timeout: a hung `squeue` fails that one call (the
//! next poll tries again), never the daemon.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a command printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CommandOutput {
    /// True for exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// stderr, else stdout, trimmed: the text to show when a command failed.
    pub fn complaint(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        text.trim().to_owned()
    }
}

/// A channel operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The command did not finish in time (it was killed).
    #[error("`{command}` on {channel} did not finish within {after:?}")]
    Timeout {
        /// The channel.
        channel: String,
        /// The command.
        command: String,
        /// The limit.
        after: Duration,
    },
    /// The command could not be started.
    #[error("cannot run `{command}` on {channel}: {reason}")]
    Start {
        /// The channel.
        channel: String,
        /// The command.
        command: String,
        /// Why.
        reason: String,
    },
    /// The remote side could not be reached: its name does not resolve,
    /// nothing answers, or the SSH handshake did not finish. It may come
    /// back by itself.
    #[error("{channel}: {reason}")]
    Unreachable {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
    /// Authenticating or talking to the remote side failed.
    #[error("{channel}: {reason}")]
    Connection {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
    /// A file could not be written or read.
    #[error("{channel}: {path}: {reason}")]
    File {
        /// The channel.
        channel: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl ChannelError {
    /// Whether a later try may succeed without anyone's help: the other
    /// side could not be reached, or a command did not finish in time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChannelError::Unreachable { .. } | ChannelError::Timeout { .. }
        )
    }
}

/// Somewhere to run scheduler commands and keep job files.
pub trait Channel: Send {
    /// How to name it in messages (`local shell`, `ssh alice@login1:22`).
    fn name(&self) -> String;

    /// Runs `command` with `sh -c`, killing it after `timeout`.
    fn run(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput, ChannelError>;

    /// Writes `contents` to `path` with permissions `mode`, creating parent
    /// directories.
    fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> Result<(), ChannelError>;

    /// Reads the file at `path`.
    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ChannelError>;
}

/// The local shell.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalChannel;

impl Channel for LocalChannel {
    fn name(&self) -> String {
        "local shell".into()
    }

    fn run(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput, ChannelError> {
        let start_error = |reason: String| ChannelError::Start {
            channel: self.name(),
            command: command.to_owned(),
            reason,
        };
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| start_error(e.to_string()))?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            return Err(start_error("no pipes".into()));
        };
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    // Kill the whole group: the command and anything it started.
                    let group = nix::unistd::Pid::from_raw(child.id() as i32);
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    let _ = child.wait();
                    return Err(ChannelError::Timeout {
                        channel: self.name(),
                        command: command.to_owned(),
                        after: timeout,
                    });
                }
                Err(e) => return Err(start_error(e.to_string())),
            }
        };
        Ok(CommandOutput {
            status: status.code().unwrap_or(-1),
            stdout: out_reader.join().unwrap_or_default(),
            stderr: err_reader.join().unwrap_or_default(),
        })
    }

    /// Writes the file under a fresh name created with `mode` from the
    /// start (never readable by others, even for a moment: job scripts
    /// hold the secret), then renames it over `path`, which replaces a
    /// link there rather than writing through it.
    fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> Result<(), ChannelError> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let file_error = |reason: String| ChannelError::File {
            channel: "local shell".into(),
            path: path.to_owned(),
            reason,
        };
        let p = std::path::Path::new(path);
        let parent = match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => std::path::Path::new("."),
        };
        std::fs::create_dir_all(parent).map_err(|e| file_error(e.to_string()))?;
        let mut file = tempfile::Builder::new()
            .prefix(".flotilla-")
            .suffix(".tmp")
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(parent)
            .map_err(|e| file_error(e.to_string()))?;
        // The umask may have taken bits `mode` asks for; it cannot have
        // added any.
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| file_error(e.to_string()))?;
        file.write_all(contents)
            .map_err(|e| file_error(e.to_string()))?;
        file.persist(p)
            .map_err(|e| file_error(e.error.to_string()))?;
        Ok(())
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ChannelError> {
        std::fs::read(path).map_err(|e| ChannelError::File {
            channel: self.name(),
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }
}

/// The last `max_lines` non-empty lines of a file on `channel` (at most its
/// last 8 KiB), or `None` if it cannot be read or is empty.
pub fn tail(channel: &mut dyn Channel, path: &str, max_lines: usize) -> Option<String> {
    let bytes = channel.read_file(path).ok()?;
    crate::tail::last_lines(&bytes, max_lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script is never readable by others, not even between its
    /// creation and a chmod: the file is created private. A thread looks
    /// at every file in the directory while scripts are written.
    #[test]
    fn a_script_is_created_private_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let done = AtomicBool::new(false);
        let seen_open = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    for entry in std::fs::read_dir(dir.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                    {
                        if let Ok(meta) = entry.metadata()
                            && meta.permissions().mode() & 0o077 != 0
                        {
                            seen_open.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
            let path = dir.path().join("block.sh");
            // Large enough that writing takes a while after the create.
            let contents = vec![b'x'; 4 << 20];
            for _ in 0..20 {
                let _ = std::fs::remove_file(&path);
                LocalChannel
                    .write_file(path.to_str().unwrap(), &contents, 0o700)
                    .unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        assert!(
            !seen_open.load(Ordering::Relaxed),
            "a script was readable by others"
        );
    }

    #[test]
    fn runs_commands_and_keeps_both_streams() {
        let out = LocalChannel
            .run("echo out; echo err >&2; exit 3", Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            (out.status, out.stdout.as_str(), out.stderr.as_str()),
            (3, "out\n", "err\n")
        );
        assert_eq!(out.complaint(), "err");
    }

    #[test]
    fn a_hung_command_times_out_and_is_killed_with_its_children() {
        let started = Instant::now();
        let err = LocalChannel
            .run("sleep 30 & sleep 30", Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(err, ChannelError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn files_are_written_with_their_mode_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/script.sh");
        let p = path.to_str().unwrap();
        LocalChannel.write_file(p, b"#!/bin/sh\n", 0o700).unwrap();
        assert_eq!(LocalChannel.read_file(p).unwrap(), b"#!/bin/sh\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Written again over a link, the link is replaced, not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "untouched").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        LocalChannel.write_file(p, b"secret", 0o700).unwrap();
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        std::fs::write(dir.path().join("err"), "a\n\nb\nc\n").unwrap();
        assert_eq!(
            tail(
                &mut LocalChannel,
                dir.path().join("err").to_str().unwrap(),
                2
            )
            .as_deref(),
            Some("b\nc")
        );
    }
}
