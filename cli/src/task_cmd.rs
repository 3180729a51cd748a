//! `flotilla run`, `submit`, `result`, `status` and `cancel`: tasks and the
//! daemon's state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use flotilla_protocol::TaskId;
use flotilla_protocol::client::TaskRequest;
use flotilla_protocol::task::{TaskState, TaskView};

use crate::{Failure, connect, input, output};

/// What `flotilla run` and `submit` send: a servable and its input and
/// parameters, each from the command line, a file or stdin.
pub struct Request<'a> {
    /// NAME or NAME@VERSION.
    pub servable: String,
    /// Input JSON from the command line.
    pub input: Option<&'a str>,
    /// File holding the input JSON.
    pub input_file: Option<&'a Path>,
    /// Parameters JSON.
    pub params: Option<&'a str>,
}

impl Request<'_> {
    /// The task request, with input and parameters read and parsed.
    fn task(self) -> Result<TaskRequest, Failure> {
        Ok(TaskRequest {
            servable: self.servable,
            input: input::read_input(self.input, self.input_file).map_err(Failure::Usage)?,
            params: input::read_params(self.params).map_err(Failure::Usage)?,
        })
    }
}

/// `flotilla run`: one task, waited for.
pub fn run(request: Request, wait: Option<Duration>, json: bool) -> Result<(), Failure> {
    let task = request.task()?;
    let view = connect()?
        .run_with_params(&task.servable, task.input, task.params, wait)
        .map_err(Failure::from_client)?;
    report_results(&[view], json)
}

/// `flotilla submit`: one task, or a JSON-lines batch, not waited for.
pub fn submit(request: Option<Request>, batch: Option<PathBuf>, json: bool) -> Result<(), Failure> {
    let bar = BatchBar::on_terminal();
    let tasks = match (batch, request) {
        (Some(file), _) => input::read_batch(&file, &mut |done, total| bar.read(done, total))
            .map_err(Failure::Usage)?,
        (None, Some(request)) => vec![request.task()?],
        (None, None) => return Err(Failure::Usage(anyhow!("give a servable or --batch FILE"))),
    };
    bar.sending(tasks.len());
    let submitted = connect().and_then(|c| c.submit(tasks).map_err(Failure::from_client));
    bar.finish();
    let ids = submitted?;
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

/// The bar of `submit --batch` on a terminal: bytes of the file read and
/// checked, then a spinner while the daemon takes the tasks. Shown only
/// for files large enough to take a noticeable time; nothing when stderr is
/// not a terminal.
struct BatchBar {
    bar: Option<indicatif::ProgressBar>,
}

impl BatchBar {
    /// Files smaller than this get no bar.
    const LARGE_BYTES: u64 = 4 << 20;

    fn on_terminal() -> BatchBar {
        use std::io::IsTerminal as _;
        BatchBar {
            bar: std::io::stderr().is_terminal().then(|| {
                let bar = indicatif::ProgressBar::hidden();
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "reading {bar:30} {bytes}/{total_bytes} {msg}",
                ) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar
            }),
        }
    }

    fn read(&self, done: u64, total: u64) {
        let Some(bar) = &self.bar else { return };
        if total < Self::LARGE_BYTES {
            return;
        }
        if bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total);
        }
        bar.set_position(done);
    }

    fn sending(&self, tasks: usize) {
        let Some(bar) = &self.bar else { return };
        if bar.is_hidden() {
            return;
        }
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(format!("submitting {tasks} tasks"));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `flotilla result` without `--wait`: results of tasks as they stand
/// (`--wait` is `flotilla wait`, in `watch_cmd.rs`).
pub fn result(ids: &[TaskId], json: bool) -> Result<(), Failure> {
    let views = connect()?
        .results(ids, None)
        .map_err(Failure::from_client)?;
    report_results(&views, json)
}

/// `flotilla status`: the daemon, or the given tasks.
pub fn status(ids: &[TaskId], json: bool) -> Result<(), Failure> {
    let client = connect()?;
    if ids.is_empty() {
        let status = client.status().map_err(Failure::from_client)?;
        if json {
            println!("{}", output::daemon_json(&status));
        } else {
            print!("{}", output::daemon_text(&status));
        }
        return Ok(());
    }
    let views = client.task_status(ids).map_err(Failure::from_client)?;
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
    Ok(())
}

/// `flotilla cancel`: cancels tasks that have not finished.
pub fn cancel(ids: &[TaskId], json: bool) -> Result<(), Failure> {
    let states = connect()?.cancel(ids).map_err(Failure::from_client)?;
    if json {
        let rows: Vec<_> = states
            .iter()
            .map(|(id, s)| serde_json::json!({"id": id.0, "state": s.as_str()}))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for (id, state) in &states {
        match state {
            TaskState::Cancelled => println!("{id} cancelled"),
            TaskState::Unknown => println!("{id} unknown"),
            other => println!("{id} already {other}"),
        }
    }
    Ok(())
}

/// Prints results: outputs on stdout, errors on stderr; the exit status says
/// whether every task completed.
pub(crate) fn report_results(views: &[TaskView], json: bool) -> Result<(), Failure> {
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
                    "task {} is unknown (never submitted, another user's, or its result was fetched and has expired)",
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
