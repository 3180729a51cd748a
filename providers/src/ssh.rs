//! The SSH channel: scheduler commands on a login node reached over SSH.
//!
//! One SSH session is opened on first use and reused for every command and
//! file (an SSH connection costs 0.3–0.6 s, a command on an open session a
//! few milliseconds); if it fails, it is dropped and the next call opens a
//! new one. Authentication is by key file or by the SSH agent. The server's
//! host key is checked against `known_hosts` unless that is explicitly
//! turned off: a daemon that submits jobs with your identity should not
//! talk to a host it cannot recognise.
//!
//! Files go over SFTP. Relative paths are relative to the remote home
//! directory.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ssh2::{CheckResult, KnownHostFileKind, Session};

use crate::channel::{Channel, ChannelError, CommandOutput};

/// How to reach and log in to the remote side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User to log in as.
    pub user: String,
    /// Private key file; `None` uses the SSH agent.
    pub key_file: Option<PathBuf>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    pub known_hosts: Option<PathBuf>,
    /// Refuse hosts whose key is not in known_hosts (default true).
    pub check_host_key: bool,
    /// Time allowed to connect and log in.
    pub connect_timeout: Duration,
}

/// A channel over one reused SSH session.
pub struct SshChannel {
    config: SshConfig,
    session: Option<Session>,
}

impl std::fmt::Debug for SshChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshChannel")
            .field("to", &self.name())
            .field("connected", &self.session.is_some())
            .finish()
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

impl SshChannel {
    /// A channel that connects on first use.
    pub fn new(config: SshConfig) -> Self {
        SshChannel {
            config,
            session: None,
        }
    }

    fn connection_error(&self, reason: impl Into<String>) -> ChannelError {
        ChannelError::Connection {
            channel: self.name(),
            reason: reason.into(),
        }
    }

    fn unreachable(&self, reason: impl Into<String>) -> ChannelError {
        ChannelError::Unreachable {
            channel: self.name(),
            reason: reason.into(),
        }
    }

    fn connect(&self) -> Result<Session, ChannelError> {
        let c = &self.config;
        let address = (c.host.as_str(), c.port)
            .to_socket_addrs()
            .map_err(|e| self.unreachable(format!("cannot resolve {}: {e}", c.host)))?
            .next()
            .ok_or_else(|| self.unreachable(format!("{} has no address", c.host)))?;
        let tcp = TcpStream::connect_timeout(&address, c.connect_timeout)
            .map_err(|e| self.unreachable(format!("cannot connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let mut session = Session::new().map_err(|e| self.connection_error(e.to_string()))?;
        session.set_timeout(millis(c.connect_timeout));
        session.set_tcp_stream(tcp);
        session
            .handshake()
            .map_err(|e| self.unreachable(format!("SSH handshake failed: {e}")))?;
        if c.check_host_key {
            self.check_host_key(&session)?;
        }
        match &c.key_file {
            Some(key) => session
                .userauth_pubkey_file(&c.user, None, key, None)
                .map_err(|e| {
                    self.connection_error(format!(
                        "key {} not accepted for {}: {e}",
                        key.display(),
                        c.user
                    ))
                })?,
            None => session.userauth_agent(&c.user).map_err(|e| {
                self.connection_error(format!(
                    "the SSH agent has no key accepted for {}: {e}",
                    c.user
                ))
            })?,
        }
        if !session.authenticated() {
            return Err(self.connection_error(format!("login as {} refused", c.user)));
        }
        tracing::info!(channel = %self.name(), "ssh session open");
        Ok(session)
    }

    fn check_host_key(&self, session: &Session) -> Result<(), ChannelError> {
        let c = &self.config;
        let file = c.known_hosts.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".ssh/known_hosts")
        });
        let (key, _) = session
            .host_key()
            .ok_or_else(|| self.connection_error("the server sent no host key"))?;
        let mut known = session
            .known_hosts()
            .map_err(|e| self.connection_error(e.to_string()))?;
        known
            .read_file(&file, KnownHostFileKind::OpenSSH)
            .map_err(|e| self.connection_error(format!("cannot read {}: {e}", file.display())))?;
        match known.check_port(&c.host, c.port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::NotFound => Err(self.connection_error(format!(
                "the host key of {}:{} is not in {}; check it and add it (ssh-keyscan -p {} {} >> {}), or set check_host_key = false",
                c.host,
                c.port,
                file.display(),
                c.port,
                c.host,
                file.display()
            ))),
            CheckResult::Mismatch => Err(self.connection_error(format!(
                "the host key of {}:{} does NOT match the one in {}: refusing to connect",
                c.host,
                c.port,
                file.display()
            ))),
            CheckResult::Failure => Err(self.connection_error("cannot check the host key")),
        }
    }

    /// The open session, connecting if there is none.
    fn session(&mut self) -> Result<&Session, ChannelError> {
        if self.session.is_none() {
            self.session = Some(self.connect()?);
        }
        self.session
            .as_ref()
            .ok_or_else(|| self.connection_error("no session"))
    }

    fn exec(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput, String> {
        let session = self.session().map_err(|e| e.to_string())?;
        session.set_timeout(millis(timeout));
        let mut channel = session.channel_session().map_err(|e| e.to_string())?;
        channel.exec(command).map_err(|e| e.to_string())?;
        // Scheduler commands print little; reading stdout then stderr stays
        // within the SSH window.
        let mut stdout = String::new();
        channel
            .read_to_string(&mut stdout)
            .map_err(|e| e.to_string())?;
        let mut stderr = String::new();
        channel
            .stderr()
            .read_to_string(&mut stderr)
            .map_err(|e| e.to_string())?;
        channel.wait_close().map_err(|e| e.to_string())?;
        let status = channel.exit_status().map_err(|e| e.to_string())?;
        Ok(CommandOutput {
            status,
            stdout,
            stderr,
        })
    }
}

impl Channel for SshChannel {
    fn name(&self) -> String {
        format!(
            "ssh {}@{}:{}",
            self.config.user, self.config.host, self.config.port
        )
    }

    fn run(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput, ChannelError> {
        // A failed connection keeps its own error: unreachable (it may come
        // back) or refused (a host key, a login), which only a person fixes.
        self.session()?;
        match self.exec(command, timeout) {
            Ok(out) => Ok(out),
            Err(reason) => {
                // The session may be broken: start afresh next time.
                self.session = None;
                if reason.contains("Timed out") || reason.contains("timed out") {
                    Err(ChannelError::Timeout {
                        channel: self.name(),
                        command: command.to_owned(),
                        after: timeout,
                    })
                } else {
                    Err(ChannelError::Start {
                        channel: self.name(),
                        command: command.to_owned(),
                        reason,
                    })
                }
            }
        }
    }

    fn write_file(&mut self, path: &str, contents: &[u8], mode: u32) -> Result<(), ChannelError> {
        if let Some((dir, _)) = path.rsplit_once('/')
            && !dir.is_empty()
        {
            let mkdir = format!("mkdir -p {}", flotilla_launchers::shell::quote(dir));
            let out = self.run(&mkdir, Duration::from_secs(30))?;
            if !out.success() {
                return Err(ChannelError::File {
                    channel: self.name(),
                    path: path.to_owned(),
                    reason: format!("cannot create {dir}: {}", out.complaint()),
                });
            }
        }
        let result = (|| -> Result<(), String> {
            let session = self.session().map_err(|e| e.to_string())?;
            session.set_timeout(millis(Duration::from_secs(60)));
            let sftp = session.sftp().map_err(|e| e.to_string())?;
            let mut file = sftp
                .open_mode(
                    std::path::Path::new(path),
                    ssh2::OpenFlags::WRITE | ssh2::OpenFlags::CREATE | ssh2::OpenFlags::TRUNCATE,
                    mode as i32,
                    ssh2::OpenType::File,
                )
                .map_err(|e| e.to_string())?;
            file.write_all(contents).map_err(|e| e.to_string())?;
            let stat = ssh2::FileStat {
                size: None,
                uid: None,
                gid: None,
                perm: Some(mode),
                atime: None,
                mtime: None,
            };
            file.setstat(stat).map_err(|e| e.to_string())
        })();
        result.map_err(|reason| {
            self.session = None;
            ChannelError::File {
                channel: self.name(),
                path: path.to_owned(),
                reason,
            }
        })
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ChannelError> {
        let result = (|| -> Result<Vec<u8>, String> {
            let session = self.session().map_err(|e| e.to_string())?;
            session.set_timeout(millis(Duration::from_secs(60)));
            let sftp = session.sftp().map_err(|e| e.to_string())?;
            let mut file = sftp
                .open(std::path::Path::new(path))
                .map_err(|e| e.to_string())?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            Ok(bytes)
        })();
        result.map_err(|reason| ChannelError::File {
            channel: self.name(),
            path: path.to_owned(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_node_nobody_answers_on_is_unreachable_not_refused() {
        // A port just freed on loopback: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut channel = SshChannel::new(SshConfig {
            host: "127.0.0.1".into(),
            port,
            user: "nobody".into(),
            key_file: None,
            known_hosts: None,
            check_host_key: true,
            connect_timeout: Duration::from_secs(5),
        });
        let e = channel
            .run("sbatch block.sh", Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(e, ChannelError::Unreachable { .. }) && e.is_transient(),
            "{e:?}"
        );
        let e = channel
            .write_file("/tmp/x/block.sh", b"", 0o700)
            .unwrap_err();
        assert!(e.is_transient(), "{e:?}");
    }
}
