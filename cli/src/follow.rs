//! `--follow` through a daemon restart. The daemon's queue outlives a
//! restart, so a user watching bulk work expects the watch to as well: a
//! call that fails because the daemon went away is made again, on a new
//! connection, until the daemon answers, with one note on stderr when it
//! goes and one when it is back. Without `--follow` a lost daemon ends the
//! command as any failed call does.

use std::time::Duration;

use flotilla_client::{Client, ClientError};

use crate::{Failure, connect};

/// How often a lost daemon is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// A connection to the daemon for a command that may follow.
pub(crate) struct Follower {
    client: Client,
    follow: bool,
}

impl Follower {
    /// Connects; `follow` says whether a lost daemon is waited for.
    pub(crate) fn connect(follow: bool) -> Result<Follower, Failure> {
        Ok(Follower {
            client: connect()?,
            follow,
        })
    }

    /// Makes `call` on the daemon; while following, a daemon that went
    /// away is waited for instead of ending the command.
    pub(crate) fn call<T>(
        &mut self,
        call: impl Fn(&Client) -> Result<T, ClientError>,
    ) -> Result<T, Failure> {
        let mut away = false;
        loop {
            match call(&self.client) {
                Ok(answer) => {
                    if away {
                        eprintln!("flotilla: the daemon is back; following on");
                    }
                    return Ok(answer);
                }
                Err(e) if self.follow && e.is_unreachable() => {
                    if !away {
                        eprintln!(
                            "flotilla: lost the daemon ({e}); waiting for it to come back (Ctrl-C to stop)"
                        );
                        away = true;
                    }
                    std::thread::sleep(RETRY);
                    // A restarted daemon is a new peer: a sealed TCP link
                    // needs a new handshake, so connect afresh.
                    if let Ok(client) = connect() {
                        self.client = client;
                    }
                }
                Err(e) => return Err(Failure::from_client(e)),
            }
        }
    }
}
