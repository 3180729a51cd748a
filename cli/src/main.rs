//! `flotilla`: run the daemon, invoke servables, inspect and cancel tasks.
//!
//! Exit status: 0 success; 1 a task failed (or another runtime error);
//! 2 usage or configuration error; 3 the daemon is unreachable; 4 a result
//! is not ready yet (still queued or running when the wait ended).

mod daemon_cmd;
mod demo;
mod input;
mod output;
mod servable_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use flotilla_client::{Client, ClientError};
use flotilla_protocol::TaskId;
use flotilla_protocol::client::{ApiErrorKind, TaskRequest};
use flotilla_protocol::task::{TaskState, TaskView};

/// Serve machine-learning models on clusters and supercomputers.
///
/// Client commands talk to the daemon of $FLOTILLA_HOME (default ~/.flotilla).
#[derive(Parser, Debug)]
#[command(name = "flotilla", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the daemon (foreground unless --detach).
    Daemon {
        /// Site file (TOML). Default: the embedded configs/local.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Start in the background, log to STATE_DIR/daemon.log, return once it answers.
        #[arg(long)]
        detach: bool,
    },
    /// Stop the daemon gracefully and wait until it has exited.
    Stop {
        /// Seconds to wait for the daemon to exit.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
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
        #[arg(long)]
        timeout: Option<f64>,
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
        /// JSON-lines file, one {"servable", "input", "params"} per line,
        /// submitted in one request.
        #[arg(long)]
        batch: Option<PathBuf>,
        /// Print the ids as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Fetch results of tasks.
    Result {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<TaskId>,
        /// Wait until every task is final.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait (default: no limit).
        #[arg(long, requires = "wait")]
        timeout: Option<f64>,
        /// Print tasks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon (blocks, workers, queues) or the given tasks.
    Status {
        /// Task ids; none for the daemon.
        ids: Vec<TaskId>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel tasks that have not finished.
    Cancel {
        /// Task ids.
        #[arg(required = true)]
        ids: Vec<TaskId>,
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
    /// Block and worker events (submitted, running, lost, left, …).
    Events {
        /// Keep printing new events as they happen.
        #[arg(long)]
        follow: bool,
        /// Print as JSON, one event per line.
        #[arg(long)]
        json: bool,
    },
    /// Worker pools.
    Pool {
        #[command(subcommand)]
        command: PoolCmd,
    },
    /// Check a site file and print the settings in force.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Start a throw-away daemon, run requests against it, show timings.
    Demo,
}

#[derive(Subcommand, Debug)]
enum ServableCmd {
    /// Publish the servable in DIR (its servable.toml and files) as an
    /// immutable version.
    Publish {
        /// Servable directory.
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
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
}

#[derive(Subcommand, Debug)]
enum PipelineCmd {
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
enum PoolCmd {
    /// Start blocks again in a pool paused after failed blocks.
    Resume {
        /// The pool (`[provider] pool`, "default" unless set).
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum MemoCmd {
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
enum ConfigCmd {
    /// Validate site files without starting anything (default: the embedded
    /// one); prints the settings in force of a single file.
    Check {
        /// The files.
        files: Vec<PathBuf>,
    },
}

/// A command that did not succeed, mapped to the documented exit status.
#[derive(Debug)]
pub enum Failure {
    /// A task failed (the message was printed already) or another error.
    Other(anyhow::Error),
    /// A task failed; nothing more to print.
    TaskFailed,
    /// Usage or configuration error.
    Usage(anyhow::Error),
    /// The daemon cannot be reached.
    Unreachable(anyhow::Error),
    /// A result is not ready.
    NotReady,
}

impl Failure {
    /// Classifies a client error.
    pub fn from_client(e: ClientError) -> Failure {
        match e {
            e if e.is_unreachable() => Failure::Unreachable(e.into()),
            // The request named something that does not exist or conflicts
            // with the catalog: the user's input, not a runtime failure.
            ClientError::Refused(ref api)
                if matches!(
                    api.kind,
                    ApiErrorKind::BadRequest | ApiErrorKind::NotFound | ApiErrorKind::Conflict
                ) =>
            {
                Failure::Usage(e.into())
            }
            e => Failure::Other(e.into()),
        }
    }
}

impl From<flotilla_client::ConvertError> for Failure {
    fn from(e: flotilla_client::ConvertError) -> Self {
        Failure::Other(e.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.command {
        Cmd::Daemon { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, message) = match failure {
                Failure::TaskFailed => (1, None),
                Failure::NotReady => (4, None),
                Failure::Other(e) => (1, Some(e)),
                Failure::Usage(e) => (2, Some(e)),
                Failure::Unreachable(e) => (3, Some(e)),
            };
            if let Some(e) = message {
                eprintln!("flotilla: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

fn seconds(s: Option<f64>) -> Result<Option<Duration>, Failure> {
    match s {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= 0.0 => Ok(Some(Duration::from_secs_f64(v))),
        Some(v) => Err(Failure::Usage(anyhow!(
            "--timeout must be a non-negative number of seconds, got {v}"
        ))),
    }
}

fn connect() -> Result<Client, Failure> {
    Client::connect(&daemon_cmd::client_state_dir()?).map_err(Failure::from_client)
}

fn execute(command: Cmd) -> Result<(), Failure> {
    match command {
        Cmd::Daemon { config, detach } => {
            let (cfg, name) = daemon_cmd::load_config(config.as_deref())?;
            if detach {
                let (dir, pid) = daemon_cmd::detached(config.as_deref(), &cfg)?;
                println!(
                    "daemon running (pid {pid}); state {}; log {}",
                    dir.root().display(),
                    dir.root().join("daemon.log").display()
                );
                Ok(())
            } else {
                daemon_cmd::foreground(cfg, &name)
            }
        }
        Cmd::Stop { timeout } => {
            let limit = seconds(Some(timeout))?.unwrap_or_default();
            daemon_cmd::stop(&daemon_cmd::client_state_dir()?, limit)?;
            println!("daemon stopped");
            Ok(())
        }
        Cmd::Run {
            servable,
            input,
            input_file,
            params,
            timeout,
            json,
        } => {
            let input = input::read_input(input.as_deref(), input_file.as_deref())
                .map_err(Failure::Usage)?;
            let params = input::read_params(params.as_deref()).map_err(Failure::Usage)?;
            let wait = seconds(timeout)?;
            let view = connect()?
                .run_with_params(&servable, input, params, wait)
                .map_err(Failure::from_client)?;
            report_results(&[view], json)
        }
        Cmd::Submit {
            servable,
            input,
            input_file,
            params,
            batch,
            json,
        } => {
            let tasks = match (batch, servable) {
                (Some(file), _) => input::read_batch(&file).map_err(Failure::Usage)?,
                (None, Some(servable)) => vec![TaskRequest {
                    servable,
                    input: input::read_input(input.as_deref(), input_file.as_deref())
                        .map_err(Failure::Usage)?,
                    params: input::read_params(params.as_deref()).map_err(Failure::Usage)?,
                }],
                (None, None) => {
                    return Err(Failure::Usage(anyhow!("give a servable or --batch FILE")));
                }
            };
            let ids = connect()?.submit(tasks).map_err(Failure::from_client)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!(ids.iter().map(|i| i.0).collect::<Vec<_>>())
                );
            } else {
                let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
                print!("{text}");
            }
            Ok(())
        }
        Cmd::Result {
            ids,
            wait,
            timeout,
            json,
        } => {
            let wait = if wait {
                Some(seconds(timeout)?.unwrap_or(Duration::from_secs(365 * 86_400)))
            } else {
                None
            };
            let views = connect()?
                .results(&ids, wait)
                .map_err(Failure::from_client)?;
            report_results(&views, json)
        }
        Cmd::Status { ids, json } => {
            let client = connect()?;
            if ids.is_empty() {
                let status = client.status().map_err(Failure::from_client)?;
                if json {
                    println!("{}", output::daemon_json(&status));
                } else {
                    print!("{}", output::daemon_text(&status));
                }
            } else {
                let views = client.task_status(&ids).map_err(Failure::from_client)?;
                if json {
                    println!(
                        "{}",
                        serde_json::Value::Array(views.iter().map(output::task_json).collect())
                    );
                } else {
                    for v in &views {
                        print!("{}", output::task_text(v));
                    }
                }
            }
            Ok(())
        }
        Cmd::Cancel { ids, json } => {
            let states = connect()?.cancel(&ids).map_err(Failure::from_client)?;
            if json {
                let rows: Vec<_> = states
                    .iter()
                    .map(|(id, s)| serde_json::json!({"id": id.0, "state": s.as_str()}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for (id, state) in &states {
                    match state {
                        TaskState::Cancelled => println!("{id} cancelled"),
                        TaskState::Unknown => println!("{id} unknown"),
                        other => println!("{id} already {other}"),
                    }
                }
            }
            Ok(())
        }
        Cmd::Servable { command } => servable(command),
        Cmd::Pipeline {
            command:
                PipelineCmd::Create {
                    name,
                    steps,
                    version,
                    title,
                    memoize,
                },
        } => {
            let (id, created) = servable_cmd::create_pipeline(
                &connect()?,
                &name,
                &steps,
                &version,
                title,
                memoize,
            )?;
            if created {
                println!("created pipeline {id}");
            } else {
                println!("{id} already exists with the same steps");
            }
            Ok(())
        }
        Cmd::Memo {
            command: MemoCmd::Stats { json },
        } => {
            let stats = connect()?.memo_stats().map_err(Failure::from_client)?;
            if json {
                println!("{}", output::memo_json(&stats));
            } else {
                print!("{}", output::memo_text(&stats));
            }
            Ok(())
        }
        Cmd::Memo {
            command: MemoCmd::Clear { servable },
        } => {
            let removed = connect()?
                .memo_clear(servable.as_deref())
                .map_err(Failure::from_client)?;
            println!("removed {removed} memo entries");
            Ok(())
        }
        Cmd::Events { follow, json } => {
            let client = connect()?;
            let mut after = 0;
            loop {
                let wait = follow.then_some(Duration::from_secs(30));
                let events = client.events(after, wait).map_err(Failure::from_client)?;
                let mut text = String::new();
                for e in &events {
                    after = after.max(e.seq);
                    text.push_str(&if json {
                        format!("{}\n", output::event_json(e))
                    } else {
                        output::event_text(e)
                    });
                }
                print!("{text}");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                if !follow {
                    return Ok(());
                }
            }
        }
        Cmd::Pool {
            command: PoolCmd::Resume { name },
        } => {
            connect()?
                .resume_pool(&name)
                .map_err(Failure::from_client)?;
            println!("pool {name} resumed");
            Ok(())
        }
        Cmd::Config {
            command: ConfigCmd::Check { files },
        } => {
            if files.len() <= 1 {
                let (cfg, name) = daemon_cmd::load_config(files.first().map(PathBuf::as_path))?;
                println!("# {name}: ok; the settings in force:");
                print!("{}", cfg.to_toml());
                return Ok(());
            }
            let mut bad = 0;
            for file in &files {
                match daemon_cmd::load_config(Some(file)) {
                    Ok((_, name)) => println!("{name}: ok"),
                    Err(Failure::Usage(e)) => {
                        bad += 1;
                        eprintln!("{e:#}");
                    }
                    Err(other) => return Err(other),
                }
            }
            if bad > 0 {
                return Err(Failure::Usage(anyhow!(
                    "{bad} of {} site files have errors",
                    files.len()
                )));
            }
            Ok(())
        }
        Cmd::Demo => demo::run(),
    }
}

fn servable(command: ServableCmd) -> Result<(), Failure> {
    let client = connect()?;
    match command {
        ServableCmd::Publish { dir, json } => {
            let dir = servable_cmd::servable_dir(dir)?;
            let (id, created, bytes) = servable_cmd::publish(&client, &dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": id, "created": created, "bytes": bytes})
                );
            } else if created {
                println!("published {id} ({bytes} bytes of files)");
            } else {
                println!("{id} is already published with the same content");
            }
        }
        ServableCmd::List { json } => {
            let list = client.list_servables().map_err(Failure::from_client)?;
            if json {
                println!("{}", servable_cmd::summaries_json(&list));
            } else {
                print!("{}", servable_cmd::summaries_text(&list, false));
            }
        }
        ServableCmd::Show { name, json } => {
            let record = client.show_servable(&name).map_err(Failure::from_client)?;
            if json {
                println!("{}", servable_cmd::record_json(&record)?);
            } else {
                print!("{}", servable_cmd::record_text(&record));
            }
        }
        ServableCmd::Versions { name, json } => {
            let versions = client
                .servable_versions(&name)
                .map_err(Failure::from_client)?;
            if json {
                println!("{}", serde_json::json!(versions));
            } else {
                for v in versions {
                    println!("{name}@{v}");
                }
            }
        }
        ServableCmd::Search {
            query,
            domain,
            model_type,
            author,
            json,
        } => {
            let q = servable_cmd::query(query, domain, model_type, author);
            let hits = client.search_servables(q).map_err(Failure::from_client)?;
            if json {
                println!("{}", servable_cmd::summaries_json(&hits));
            } else {
                print!("{}", servable_cmd::summaries_text(&hits, true));
            }
        }
        ServableCmd::Remove { id } => {
            servable_cmd::exact_version(&id)?;
            let id = client.remove_servable(&id).map_err(Failure::from_client)?;
            println!("removed {id}");
        }
    }
    Ok(())
}

/// Prints results: outputs on stdout, errors on stderr; the exit status says
/// whether every task completed.
fn report_results(views: &[TaskView], json: bool) -> Result<(), Failure> {
    if json {
        let rows: Vec<_> = views.iter().map(output::task_json).collect();
        if rows.len() == 1 {
            println!("{}", rows[0]);
        } else {
            println!("{}", serde_json::Value::Array(rows));
        }
    }
    let mut failed = false;
    let mut pending = false;
    for v in views {
        let prefix = if views.len() > 1 {
            format!("{}\t", v.id)
        } else {
            String::new()
        };
        match v.state {
            TaskState::Completed => {
                if !json {
                    println!("{prefix}{}", output::output_text(v).unwrap_or_default());
                }
            }
            TaskState::Failed | TaskState::Cancelled => {
                failed = true;
                let why = match &v.outcome {
                    Some(flotilla_protocol::task::Outcome::Error(e)) => e.clone(),
                    _ => String::new(),
                };
                eprintln!("task {} {}: {why}", v.id, v.state);
            }
            TaskState::Queued | TaskState::Running => {
                pending = true;
                eprintln!(
                    "task {} is {}; fetch it later with `flotilla result {} --wait`",
                    v.id, v.state, v.id
                );
            }
            TaskState::Unknown => {
                failed = true;
                eprintln!(
                    "task {} is unknown (never submitted, or its result was fetched and has expired)",
                    v.id
                );
            }
        }
    }
    if failed {
        Err(Failure::TaskFailed)
    } else if pending {
        Err(Failure::NotReady)
    } else {
        Ok(())
    }
}
