//! Where each block ran: a small index in the state directory, so that
//! `flotilla logs block N` finds a block's output without the user working
//! out run directories, channels and pools.
//!
//! The daemon appends one line per block it submits
//! (`BLOCK<TAB>POOL<TAB>PLACE<TAB>RUN_DIR`) to `STATE_DIR/block-runs`; the
//! last line for a block wins. PLACE says where RUN_DIR is: `local` (a
//! path on this machine or the shared file system it mounts), `ssh:HOST`
//! with `ssh_port` (on a login node reached over the SSH channel), or
//! `kubernetes` (the pod's own log). Site files cannot put tabs or line
//! breaks in a path, so the format needs no escaping.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The index's file name in the state directory.
pub const FILE: &str = "block-runs";

/// Where a block's run directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// On this machine (or a file system it shares with the compute nodes).
    Local,
    /// On the host the SSH channel reaches.
    Ssh {
        /// `[user@]host`.
        host: String,
        /// Its SSH port.
        port: u16,
    },
    /// In a Kubernetes pod: `kubectl logs` has its output.
    Kubernetes,
}

impl Place {
    /// Where the blocks of a pool with these settings run.
    pub fn of(config: &crate::config::Config) -> Place {
        use crate::config::{ChannelKind, ProviderKind};
        if config.provider.kind == ProviderKind::Kubernetes {
            return Place::Kubernetes;
        }
        match config.channel.kind {
            ChannelKind::Local => Place::Local,
            ChannelKind::Ssh => Place::Ssh {
                host: match &config.channel.user {
                    Some(user) => format!("{user}@{}", config.channel.host),
                    None => config.channel.host.clone(),
                },
                port: config.channel.port,
            },
        }
    }

    fn text(&self) -> String {
        match self {
            Place::Local => "local".into(),
            Place::Ssh { host, port } => format!("ssh:{host}:{port}"),
            Place::Kubernetes => "kubernetes".into(),
        }
    }

    fn parse(text: &str) -> Option<Place> {
        match text {
            "local" => Some(Place::Local),
            "kubernetes" => Some(Place::Kubernetes),
            _ => {
                let rest = text.strip_prefix("ssh:")?;
                let (host, port) = rest.rsplit_once(':')?;
                Some(Place::Ssh {
                    host: host.to_owned(),
                    port: port.parse().ok()?,
                })
            }
        }
    }
}

/// One block's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRun {
    /// The block's id.
    pub block: u32,
    /// Its pool.
    pub pool: String,
    /// Where `run_dir` is.
    pub place: Place,
    /// Its run directory: the job script, `stdout` and `stderr`.
    pub run_dir: String,
}

impl BlockRun {
    /// Its job's standard output file (`run_dir/stdout`).
    pub fn stdout(&self) -> PathBuf {
        Path::new(&self.run_dir).join("stdout")
    }

    /// Its job's standard error file (`run_dir/stderr`), where its
    /// workers log.
    pub fn stderr(&self) -> PathBuf {
        Path::new(&self.run_dir).join("stderr")
    }
}

/// Appends `run` to the index in `state_dir`.
pub fn record(state_dir: &Path, run: &BlockRun) -> std::io::Result<()> {
    let line = format!(
        "{}\t{}\t{}\t{}\n",
        run.block,
        run.pool,
        run.place.text(),
        run.run_dir
    );
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join(FILE))?
        .write_all(line.as_bytes())
}

/// The last entry for `block` in the index in `state_dir`, if any.
pub fn find(state_dir: &Path, block: u32) -> std::io::Result<Option<BlockRun>> {
    let text = match std::fs::read_to_string(state_dir.join(FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(text.lines().rev().find_map(|line| {
        let mut f = line.splitn(4, '\t');
        let id: u32 = f.next()?.parse().ok()?;
        if id != block {
            return None;
        }
        Some(BlockRun {
            block: id,
            pool: f.next()?.to_owned(),
            place: Place::parse(f.next()?)?,
            run_dir: f.next()?.to_owned(),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_entry_of_a_block_is_found() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path(), 1).unwrap(), None);
        let run = |block, place, dir: &str| BlockRun {
            block,
            pool: "default".into(),
            place,
            run_dir: dir.into(),
        };
        let ssh = Place::Ssh {
            host: "me@login1".into(),
            port: 2222,
        };
        record(dir.path(), &run(1, Place::Local, "/s/blocks/1")).unwrap();
        record(dir.path(), &run(2, ssh.clone(), ".flotilla/blocks/t/2")).unwrap();
        record(dir.path(), &run(1, Place::Local, "/s/blocks/1 again")).unwrap();
        assert_eq!(
            find(dir.path(), 1).unwrap(),
            Some(run(1, Place::Local, "/s/blocks/1 again"))
        );
        let two = find(dir.path(), 2).unwrap().unwrap();
        assert_eq!(two.place, ssh);
        assert_eq!(two.stderr(), Path::new(".flotilla/blocks/t/2/stderr"));
        assert_eq!(find(dir.path(), 3).unwrap(), None);
    }
}
