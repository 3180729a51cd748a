//! The command line: every command, subcommand and flag of `flotilla`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_protocol::TaskId;
use flotilla_protocol::client::MAX_WAIT_MS;
use flotilla_protocol::task::TaskState;

/// A number of seconds from the command line: finite, not negative, at
/// most the longest wait the daemon takes; refused by clap, naming the
/// option, before anything runs.
pub(crate) fn seconds(text: &str) -> Result<Duration, String> {
    let max_s = MAX_WAIT_MS / 1000;
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!(
            "must be a non-negative number of seconds, got {text}"
        ));
    }
    if value > max_s as f64 {
        return Err(format!(
            "must be at most {max_s} seconds (ten years), got {text}"
        ));
    }
    Duration::try_from_secs_f64(value).map_err(|e| format!("{text}: {e}"))
}

/// Serve machine-learning models on clusters and supercomputers.
///
/// Client commands talk to the daemon of $FLOTILLA_HOME (default ~/.flotilla).
#[derive(Parser, Debug)]
#[command(name = "flotilla", version, after_help = crate::failure::exit_status_help())]
pub(crate) struct Cli {
    /// The state directory of the daemon to run or talk to, for this
    /// command only (sets FLOTILLA_HOME).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Run the daemon (foreground unless --detach).
    Daemon {
        /// Site file (TOML). Default: the embedded configs/local.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start in the background, log to STATE_DIR/daemon.log, return once it answers.
        #[arg(long)]
        detach: bool,
        /// Log lines as text or as JSON objects, one a line (default: the
        /// site file's `[daemon] log_format`).
        #[arg(long, value_enum)]
        log_format: Option<crate::logging::LogFormat>,
        /// Write the log to this file, rotated by size (`--detach` passes
        /// STATE_DIR/daemon.log).
        #[arg(long, hide = true)]
        log_file: Option<PathBuf>,
    },
    /// Stop the daemon gracefully and wait until it has exited.
    Stop {
        /// Seconds to wait for the daemon to exit.
        #[arg(long, default_value = "120", value_parser = seconds)]
        timeout: Duration,
    },
    /// Invoke a servable and wait for its result.
    Run {
        /// NAME or NAME@VERSION.
        servable: String,
        /// Input as JSON (else --input-file, else stdin, else null).
        input: Option<String>,
        /// Read the input JSON from this file.
        #[arg(long)]
        input_file: Option<PathBuf>,
        /// Parameters as a JSON object.
        #[arg(long)]
        params: Option<String>,
        /// Seconds to wait for the result (default: no limit).
        #[arg(long, value_parser = seconds)]
        timeout: Option<Duration>,
        /// Print the whole task as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Submit tasks without waiting; prints one task id per line.
    Submit {
        /// NAME or NAME@VERSION (not with --batch).
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        servable: Option<String>,
        /// Input as JSON (else --input-file, else stdin, else null).
        #[arg(conflicts_with = "batch")]
        input: Option<String>,
        /// Read the input JSON from this file.
        #[arg(long, conflicts_with = "batch")]
        input_file: Option<PathBuf>,
        /// Parameters as a JSON object.
        #[arg(long, conflicts_with = "batch")]
        params: Option<String>,
        /// JSON-lines file (`-`: stdin), one {"servable", "input", "params"}
        /// per line, submitted in one request (a bar on a terminal for large
        /// files).
        #[arg(long)]
        batch: Option<PathBuf>,
        /// Print the ids as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Fetch results of tasks.
    Result {
        /// Task ids, ranges (5-10) and lists (5-10,12); `-` reads them from stdin.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every task of yours that is queued or running now (with --wait).
        #[arg(long, requires = "wait", conflicts_with = "ids")]
        all: bool,
        /// Wait until every task is final (a progress bar on a terminal).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait (default: no limit).
        #[arg(long, requires = "wait", value_parser = seconds)]
        timeout: Option<Duration>,
        /// With --wait: print each task as a JSON line the moment it ends.
        #[arg(long, requires = "wait")]
        stream: bool,
        /// Print tasks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon (blocks, workers, queues) or the given tasks.
    Status {
        /// Task ids, ranges and lists (`-`: stdin); none for the daemon.
        ids: Vec<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel tasks that have not finished.
    Cancel {
        /// Task ids, ranges (5-10) and lists (5-10,12); `-` reads them from stdin.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait for tasks to end, with a progress bar on a terminal.
    ///
    /// The bar (on stderr, only on a terminal) shows tasks done, failed,
    /// running and queued, the rate and the time left; then the results
    /// are printed as `result` prints them, or with --stream each as a JSON
    /// line the moment it ends.
    Wait {
        /// Task ids, ranges (5-10) and lists (5-10,12); `-` reads them from stdin.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every task of yours that is queued or running now.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Seconds to wait (default: no limit).
        #[arg(long, value_parser = seconds)]
        timeout: Option<Duration>,
        /// Print each task as a JSON line the moment it ends (completion order).
        #[arg(long)]
        stream: bool,
        /// Print tasks as JSON.
        #[arg(long, conflicts_with = "stream")]
        json: bool,
    },
    /// List your tasks (all tasks for the daemon's user), newest first.
    Tasks {
        /// Only these states: queued, running, completed (or done), failed,
        /// cancelled; comma-separated or repeated.
        #[arg(long, value_delimiter = ',', value_parser = crate::watch_cmd::state)]
        state: Vec<TaskState>,
        /// Only tasks of this servable: NAME (every version) or NAME@VERSION.
        #[arg(long)]
        servable: Option<String>,
        /// Only tasks submitted within this long: seconds, or with a unit (90m, 12h, 30d).
        #[arg(long, value_parser = crate::token_cmd::duration)]
        since: Option<Duration>,
        /// At most this many tasks.
        #[arg(long, default_value = "100")]
        limit: u32,
        /// Only tasks with an id below this one (the next page).
        #[arg(long)]
        before: Option<TaskId>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish, find and inspect servables.
    Servable {
        #[command(subcommand)]
        command: ServableCmd,
    },
    /// Chain published servables into a pipeline servable.
    Pipeline {
        #[command(subcommand)]
        command: PipelineCmd,
    },
    /// The memo store: results of servables with `memoize = true`.
    Memo {
        #[command(subcommand)]
        command: MemoCmd,
    },
    /// Block and worker events, or with --tasks those of your tasks.
    ///
    /// Block and worker events: submitted, running, lost, left, … Task
    /// events: accepted, dispatched, retried, finished, failed, cancelled.
    Events {
        /// Task events instead of block and worker events.
        #[arg(long)]
        tasks: bool,
        /// With --tasks: only tasks of this servable (NAME or NAME@VERSION).
        #[arg(long, requires = "tasks")]
        servable: Option<String>,
        /// With --tasks: only these task ids, ranges and lists (5-10,12).
        #[arg(long = "task", requires = "tasks")]
        task_ids: Vec<String>,
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Print as JSON, one event per line.
        #[arg(long)]
        json: bool,
    },
    /// Pools: the blocks one scaling strategy keeps (`[provider] pool`).
    Pool {
        #[command(subcommand)]
        command: PoolCmd,
    },
    /// Check a site file and print the settings in force.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// API tokens for clients on other hosts (the TCP client API).
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
    /// Start a throw-away daemon, run requests against it, show timings.
    Demo,
    /// Print a block's job output or a worker's log.
    Logs {
        #[command(subcommand)]
        command: LogsCmd,
    },
    /// Print a shell completion script (e.g. `source <(flotilla completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page, or write one page per command into a directory.
    Man {
        /// Write flotilla.1 and flotilla-COMMAND.1 pages here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum LogsCmd {
    /// A block's job output (its stdout and stderr files).
    Block {
        /// The block's id (`flotilla status` lists them).
        id: u32,
        /// Only this stream.
        #[arg(long, value_enum)]
        stream: Option<crate::logs_cmd::Stream>,
        /// Only the last N lines of each stream.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// A worker's log: its block's stderr, where every worker of the
    /// block writes.
    Worker {
        /// The worker's id (`flotilla status` lists them).
        id: String,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCmd {
    /// Make a token; it is printed once, only its verifier is kept.
    Create {
        /// A name for it (default: token-ID).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime: seconds, or with a unit (90m, 12h, 30d). Default: none.
        #[arg(long, value_parser = crate::token_cmd::duration)]
        expires: Option<Duration>,
        /// The only servables it may use, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        servables: Vec<String>,
        /// Reads only: no run, submit, publish, remove or cancel.
        #[arg(long)]
        read_only: bool,
        /// The user (name or uid) its calls are made as, for servable
        /// ownership and visibility (default: you). A team daemon's account
        /// issues each member a token of their own this way.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Every token: name, id, state and scope (never the token).
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name or id; the daemon refuses it from its next call.
    Revoke {
        /// The token's name or id.
        which: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ServableCmd {
    /// Publish the servable in DIR (its servable.toml and files) as an
    /// immutable version.
    Publish {
        /// Servable directory.
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Record the `[environment]` packages (pinned) without capturing
        /// their wheels: nodes install them from their package index.
        #[arg(long)]
        no_wheels: bool,
        /// Who may see and use it (and every version of it), over the
        /// file's `[access]` table.
        #[command(flatten)]
        access: AccessArgs,
    },
    /// Change who may see and use a servable (every version); only its
    /// owner may.
    Access {
        /// Servable name.
        name: String,
        /// Who may see and use it.
        #[command(flatten)]
        access: AccessArgs,
    },
    /// The latest version of every servable.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One servable: NAME (latest version) or NAME@VERSION.
    Show {
        /// NAME or NAME@VERSION.
        name: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every version of a servable.
    Versions {
        /// Servable name.
        name: String,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search titles, descriptions, creators and domains, best match first.
    Search {
        /// Words to look for.
        query: Vec<String>,
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only this model type (sklearn, torch, pipeline, …).
        #[arg(long)]
        model_type: Option<String>,
        /// Only servables with a creator whose name contains this.
        #[arg(long)]
        author: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove NAME@VERSION (refused while tasks for it are unfinished).
    Remove {
        /// NAME@VERSION.
        id: String,
    },
    /// Warm a servable ahead of a known burst: start and initialise its
    /// process in N slots (held for its warm_idle_s, or ten minutes).
    Warm {
        /// NAME (latest) or NAME@VERSION.
        name: String,
        /// Slots to hold warm, over all workers that may run it.
        #[arg(long, default_value_t = 1)]
        slots: u32,
    },
}

/// Who may see and invoke a servable.
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct AccessArgs {
    /// `owner` (you, and the users and groups listed) or `public`
    /// (everybody who can call the daemon). A new servable is `owner`.
    #[arg(long)]
    pub visibility: Option<flotilla_protocol::access::Visibility>,
    /// Users (names or uids) who may also see and use it, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub users: Vec<String>,
    /// Unix groups (names or gids) whose members may also, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    /// `true`: everybody who may invoke it shares its memo entries (an
    /// identical request is answered from another caller's result).
    /// `false`, the default: each caller's only from its own, so nobody
    /// learns what somebody else sent.
    #[arg(long, value_name = "true|false")]
    pub shared_memo: Option<bool>,
}

impl AccessArgs {
    /// True when nothing was said.
    pub fn is_empty(&self) -> bool {
        self.visibility.is_none()
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.shared_memo.is_none()
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum PipelineCmd {
    /// Publish a pipeline: step i's output is step i+1's input, chained
    /// inside the daemon.
    Create {
        /// Pipeline name.
        name: String,
        /// Steps in order, comma-separated (NAME or NAME@VERSION; versions
        /// are pinned now).
        #[arg(long, value_delimiter = ',', required = true)]
        steps: Vec<String>,
        /// Version of the pipeline.
        #[arg(long, default_value = "1.0.0")]
        version: String,
        /// Title (default: the steps).
        #[arg(long)]
        title: Option<String>,
        /// Answer repeated identical requests from the memo store.
        #[arg(long)]
        memoize: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum PoolCmd {
    /// Start blocks again in a pool paused after failed blocks.
    Resume {
        /// The pool (a `[[pool]]`'s name; in a file of one pool, `[provider]
        /// pool`, "default" unless set).
        name: String,
    },
    /// Print the submit command and the job script a block of the site
    /// would get, without submitting anything (the secret is redacted).
    Preview {
        /// Site file (TOML). Default: the embedded configs/local.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The block's number.
        #[arg(long, default_value = "0")]
        block: u32,
        /// The pool whose block to show (a `[[pool]]`'s name); default:
        /// every pool's.
        #[arg(long)]
        pool: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum MemoCmd {
    /// Entries, bytes, bounds, hits and misses.
    Stats {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop every entry, or those of one servable (all its versions).
    Clear {
        /// Servable name.
        servable: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCmd {
    /// Validate site files without starting anything (default: the embedded
    /// one); prints the settings in force of a single file.
    Check {
        /// The files.
        files: Vec<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_refused_out_of_range_naming_the_option() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        for bad in ["1e300", "inf", "NaN", "-1", "soon", "315360001"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
        for args in [
            ["flotilla", "run", "echo", "1", "--timeout", "1e300"].as_slice(),
            ["flotilla", "result", "1", "--wait", "--timeout", "inf"].as_slice(),
            ["flotilla", "stop", "--timeout=-3"].as_slice(),
        ] {
            let e = Cli::try_parse_from(args).unwrap_err().to_string();
            assert!(e.contains("--timeout"), "{args:?}: {e}");
        }
        let cli = Cli::try_parse_from(["flotilla", "stop"]).unwrap();
        assert!(
            matches!(cli.command, Cmd::Stop { timeout } if timeout == Duration::from_secs(120))
        );
    }
}
