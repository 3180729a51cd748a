//! `flotilla logs block N` and `flotilla logs worker ID`: a block's job
//! output and a worker's log, found for the user.
//!
//! The daemon notes each block's run directory as it submits it
//! (`flotilla_engine::block_runs`). A block whose directory is on this
//! machine, or on a file system it shares with the compute nodes, is read
//! here. A block that ran over the SSH channel or in Kubernetes has its
//! output elsewhere: the command says where and how to read it, since
//! fetching it would mean the CLI opening SSH sessions of its own.
//! Workers log to their block's stderr (each block's workers share it).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use flotilla_engine::block_runs::{self, BlockRun, Place};

use crate::Failure;
use crate::args::LogsCmd;

/// Which of a block's output files.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stream {
    /// The job's standard output.
    Stdout,
    /// The job's standard error (where workers log).
    Stderr,
}

/// Runs one `flotilla logs` subcommand.
pub fn logs(command: LogsCmd) -> Result<(), Failure> {
    let state_dir = crate::daemon_cmd::client_state_dir()?;
    match command {
        LogsCmd::Block { id, stream, tail } => {
            let run = find_block(&state_dir, id)?;
            let streams = match stream {
                Some(s) => vec![s],
                None => vec![Stream::Stdout, Stream::Stderr],
            };
            print_block(&run, &streams, tail)
        }
        LogsCmd::Worker { id, tail } => {
            let block = worker_block(&id)?;
            let run = find_block(&state_dir, block)?;
            print_block(&run, &[Stream::Stderr], tail)
        }
    }
}

/// Where block `id` ran: the daemon's note, else (a daemon that kept no
/// notes) the default run directory of local blocks.
fn find_block(state_dir: &Path, id: u32) -> Result<BlockRun, Failure> {
    let noted = block_runs::find(state_dir, id)
        .with_context(|| format!("cannot read {}", state_dir.join(block_runs::FILE).display()))?;
    if let Some(run) = noted {
        return Ok(run);
    }
    let shared = flotilla_engine::state_dir::StateDir::at(state_dir)
        .read_info()
        .ok()
        .and_then(|info| info.shared_dir)
        .unwrap_or_else(|| state_dir.to_path_buf());
    let dir = flotilla_protocol::paths::blocks_dir(&shared).join(id.to_string());
    if dir.is_dir() {
        return Ok(BlockRun {
            block: id,
            pool: String::new(),
            place: Place::Local,
            run_dir: dir.display().to_string(),
        });
    }
    Err(Failure::Usage(anyhow!(
        "no block {id} is known to the daemon of {} (`flotilla status` lists the blocks)",
        state_dir.display()
    )))
}

/// The block of worker `id`: from the daemon's status while it is
/// connected, else from its events.
fn worker_block(id: &str) -> Result<u32, Failure> {
    let client = crate::connect()?;
    let status = client.status().map_err(Failure::from_client)?;
    if let Some(w) = status.workers.iter().find(|w| w.id == id) {
        return w.block.ok_or_else(|| {
            Failure::Usage(anyhow!(
                "worker {id} was started by hand, not in a block: its log is wherever its standard error went"
            ))
        });
    }
    let events = client.events(0, None).map_err(Failure::from_client)?;
    events
        .iter()
        .rev()
        .find(|e| e.worker.as_deref() == Some(id))
        .and_then(|e| e.block)
        .ok_or_else(|| {
            Failure::Usage(anyhow!(
                "no worker {id} in the daemon's status or events (`flotilla status` lists the workers)"
            ))
        })
}

fn path_of(run: &BlockRun, stream: Stream) -> PathBuf {
    match stream {
        Stream::Stdout => run.stdout(),
        Stream::Stderr => run.stderr(),
    }
}

/// Prints `streams` of `run` (with a header each when there are several),
/// or says where they are when they are not on this machine.
fn print_block(run: &BlockRun, streams: &[Stream], tail: Option<usize>) -> Result<(), Failure> {
    match &run.place {
        Place::Local => {}
        Place::Ssh { host, port } => {
            let files: Vec<String> = streams
                .iter()
                .map(|s| path_of(run, *s).display().to_string())
                .collect();
            return Err(Failure::Other(anyhow!(
                "block {} ran over SSH on {host}; its output is there: ssh -p {port} {host} cat {}",
                run.block,
                files.join(" ")
            )));
        }
        Place::Kubernetes => {
            return Err(Failure::Other(anyhow!(
                "block {} ran in Kubernetes; its output is the pod's log: kubectl logs with the job id `flotilla status` shows",
                run.block
            )));
        }
    }
    let mut out = std::io::stdout().lock();
    for (i, stream) in streams.iter().enumerate() {
        let path = path_of(run, *stream);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure::Other(anyhow!(
                    "{}: no such file: block {} has not started yet, or its directory was removed",
                    path.display(),
                    run.block
                )));
            }
            Err(e) => return Err(Failure::Other(anyhow!("{}: {e}", path.display()))),
        };
        let text = match tail {
            Some(n) => last_lines(&text, n),
            None => &text[..],
        };
        let written = (|| {
            if streams.len() > 1 {
                if i > 0 {
                    writeln!(out)?;
                }
                writeln!(out, "==> {} <==", path.display())?;
            }
            out.write_all(text)
        })();
        match written {
            Ok(()) => {}
            // `flotilla logs … | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(Failure::Other(anyhow!("cannot write the log: {e}"))),
        }
    }
    Ok(())
}

/// The last `n` lines of `text`.
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i + 1);
    if n == 0 {
        &text[text.len()..]
    } else {
        &text[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_kept_whole() {
        assert_eq!(last_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(last_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(last_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(last_lines(b"a\nb\n", 0), b"");
    }
}
