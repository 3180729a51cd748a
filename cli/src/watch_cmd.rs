//! `flotilla wait` (and `result --wait`), `tasks` and `events --tasks`:
//! watching bulk work.
//!
//! A wait asks the daemon which of its pending tasks have settled, holding
//! each call until at least one has; settled tasks are printed at once
//! with `--stream` (one JSON line each, in completion order) or kept for
//! the final report, and the progress bar (on a terminal only) is moved on.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use flotilla_client::Client;
use flotilla_protocol::TaskId;
use flotilla_protocol::task::{TaskState, TaskView};
use flotilla_protocol::watch::{TaskEventFilter, TaskEventView, TaskQuery};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::follow::Follower;
use crate::{Failure, connect, output, task_cmd, task_ids};

/// How long `wait` waits when no `--timeout` is given: in effect, until
/// the tasks are final.
const WAIT_FOREVER: Duration = Duration::from_secs(365 * 86_400);

/// Longest one call holds while nothing settles, so the bar's queued and
/// running counts stay fresh.
const ROUND: Duration = Duration::from_secs(2);

/// The most pending ids sent in one call (the bar's queued and running
/// counts are those of this many when more are pending).
const CHUNK: usize = 100_000;

/// An empty answer sooner than this was not held: the next call waits
/// this long.
const QUICK_EMPTY: Duration = Duration::from_millis(200);

/// How long `events --tasks --follow` holds each call.
const FOLLOW_POLL: Duration = Duration::from_secs(30);

/// A task state from the command line.
pub(crate) fn state(text: &str) -> Result<TaskState, String> {
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "queued" => TaskState::Queued,
        "running" => TaskState::Running,
        "completed" | "done" => TaskState::Completed,
        "failed" => TaskState::Failed,
        "cancelled" | "canceled" => TaskState::Cancelled,
        _ => {
            return Err(format!(
                "`{text}` is not a task state (queued, running, completed or done, failed, cancelled)"
            ));
        }
    })
}

/// The tasks a command is about: ids from the command line (or stdin), or
/// every unfinished task of the caller.
pub(crate) enum Wanted {
    /// These ids.
    Ids(Vec<TaskId>),
    /// Every task of the caller queued or running now.
    AllUnfinished,
}

impl Wanted {
    /// From the `ids` arguments, or `--all`.
    pub(crate) fn new(args: &[String], all: bool) -> Result<Wanted, Failure> {
        if all {
            return Ok(Wanted::AllUnfinished);
        }
        let ids = task_ids::from_args(args).map_err(|e| Failure::Usage(e.into()))?;
        Ok(Wanted::Ids(ids))
    }

    /// The ids, asking the daemon for `--all`.
    pub(crate) fn ids(self) -> Result<Vec<TaskId>, Failure> {
        match self {
            Wanted::Ids(ids) => Ok(ids),
            Wanted::AllUnfinished => unfinished(&connect()?),
        }
    }
}

/// Ids for `status`: none means the daemon's own status.
pub(crate) fn ids_or_none(args: &[String]) -> Result<Vec<TaskId>, Failure> {
    if args.is_empty() {
        return Ok(Vec::new());
    }
    task_ids::from_args(args).map_err(|e| Failure::Usage(e.into()))
}

/// Every task of the caller queued or running now, oldest first.
fn unfinished(client: &Client) -> Result<Vec<TaskId>, Failure> {
    let mut ids = Vec::new();
    let mut before = None;
    loop {
        let page = client
            .list_tasks(TaskQuery {
                states: vec![TaskState::Queued, TaskState::Running],
                before,
                limit: flotilla_protocol::watch::MAX_LIST,
                ..TaskQuery::default()
            })
            .map_err(Failure::from_client)?;
        ids.extend(page.tasks.iter().map(|t| t.id));
        before = page.tasks.last().map(|t| t.id);
        if !page.more || before.is_none() {
            break;
        }
    }
    ids.reverse();
    Ok(ids)
}

/// The bar on stderr, drawn only on a terminal.
struct Progress {
    bar: ProgressBar,
    failed: u64,
}

impl Progress {
    fn new(total: usize) -> Progress {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total as u64), target);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} done {msg} {per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        if !bar.is_hidden() {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Progress { bar, failed: 0 }
    }

    fn settled(&mut self, views: &[TaskView], queued: u64, running: u64) {
        self.failed += views
            .iter()
            .filter(|v| v.state != TaskState::Completed)
            .count() as u64;
        self.bar.inc(views.len() as u64);
        self.bar.set_message(format!(
            "({} failed) {running} running {queued} queued",
            self.failed
        ));
    }
}

/// `flotilla wait` and `result --wait`: waits for the tasks with a bar on
/// a terminal; prints each as it ends with `stream`, else all at the end
/// as `result` does.
pub(crate) fn wait(
    wanted: Wanted,
    timeout: Option<Duration>,
    stream: bool,
    json: bool,
) -> Result<(), Failure> {
    let client = connect()?;
    let ids = match wanted {
        Wanted::Ids(ids) => ids,
        Wanted::AllUnfinished => unfinished(&client)?,
    };
    let deadline = Instant::now() + timeout.unwrap_or(WAIT_FOREVER);
    let mut progress = Progress::new(ids.len());
    let mut pending = ids.clone();
    let mut kept: Vec<TaskView> = Vec::new();
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let chunk = &pending[..pending.len().min(CHUNK)];
        let asked = Instant::now();
        let mut settled = client
            .settled(chunk, Some(left.min(ROUND)))
            .map_err(Failure::from_client)?;
        if settled.done.is_empty() && asked.elapsed() < QUICK_EMPTY {
            // Answered at once with nothing (a daemon shutting down holds
            // no waits): do not ask again in a tight loop.
            std::thread::sleep(QUICK_EMPTY);
        }
        // Completion order (the reply lists them in the order asked).
        settled.done.sort_by_key(|v| (v.timings.finished_us, v.id));
        progress.settled(&settled.done, settled.queued, settled.running);
        if settled.done.is_empty() {
            continue;
        }
        let done: HashSet<TaskId> = settled.done.iter().map(|v| v.id).collect();
        pending.retain(|id| !done.contains(id));
        if stream {
            let mut text = String::new();
            for view in &settled.done {
                failed |= view.state != TaskState::Completed;
                text.push_str(&output::task_json(view).to_string());
                text.push('\n');
            }
            // A closed stdout ends the wait: nobody reads on.
            if stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                progress.bar.abandon();
                return Err(Failure::Other(anyhow!("stdout closed")));
            }
        } else {
            kept.extend(settled.done);
        }
    }
    drop(stdout);
    if stream {
        progress.bar.finish();
        if !pending.is_empty() {
            eprintln!(
                "{} task(s) still queued or running when the wait ended",
                pending.len()
            );
            return Err(Failure::NotReady);
        }
        return if failed {
            Err(Failure::TaskFailed)
        } else {
            Ok(())
        };
    }
    if !pending.is_empty() {
        kept.extend(client.task_status(&pending).map_err(Failure::from_client)?);
    }
    progress.bar.finish();
    // Report in the order asked.
    let mut by_id: std::collections::HashMap<TaskId, TaskView> =
        kept.into_iter().map(|v| (v.id, v)).collect();
    let views: Vec<TaskView> = ids.iter().filter_map(|id| by_id.remove(id)).collect();
    task_cmd::report_results(&views, json)
}

/// `flotilla tasks`: the caller's tasks, newest first.
pub(crate) fn tasks(
    states: Vec<TaskState>,
    servable: Option<String>,
    since: Option<Duration>,
    limit: u32,
    before: Option<TaskId>,
    json: bool,
) -> Result<(), Failure> {
    let list = connect()?
        .list_tasks(TaskQuery {
            states,
            servable,
            max_age_ms: since.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
            before,
            limit,
        })
        .map_err(Failure::from_client)?;
    if json {
        let rows: Vec<_> = list.tasks.iter().map(output::task_json).collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        print!("{}", task_table(&list.tasks));
    }
    if list.more
        && let Some(last) = list.tasks.last()
    {
        eprintln!(
            "more tasks match: raise --limit, or list on with --before {}",
            last.id
        );
    }
    Ok(())
}

/// `flotilla events --tasks`: events of the caller's tasks.
pub(crate) fn task_events(
    servable: Option<String>,
    ids: &[String],
    follow: bool,
    json: bool,
) -> Result<(), Failure> {
    let filter = TaskEventFilter {
        servable,
        ids: task_ids::ranges(ids).map_err(|e| Failure::Usage(e.into()))?,
    };
    let mut daemon = Follower::connect(follow)?;
    let mut after = 0;
    loop {
        let wait = follow.then_some(FOLLOW_POLL);
        let (events, last) = daemon.call(|client| client.task_events(after, wait, &filter))?;
        after = last;
        let text: String = events
            .iter()
            .map(|e| {
                if json {
                    format!("{}\n", task_event_json(e))
                } else {
                    task_event_text(e)
                }
            })
            .collect();
        print!("{text}");
        // A closed stdout ends the command at the next print; nothing to do.
        let _ = std::io::stdout().flush();
        if !follow && events.is_empty() {
            return Ok(());
        }
    }
}

/// Tasks as a table for people: one line each, a failure's reason cut to
/// its first line.
fn task_table(tasks: &[TaskView]) -> String {
    let mut text = format!(
        "{:>10}  {:<9}  {:<24}  {:>8}  {:<12}  {}\n",
        "ID", "STATE", "SERVABLE", "ATTEMPTS", "SUBMITTED", "WORKER / ERROR"
    );
    for t in tasks {
        let note = match &t.outcome {
            Some(flotilla_protocol::task::Outcome::Error(e)) => e
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect(),
            _ => t.worker.clone().unwrap_or_default(),
        };
        text.push_str(&format!(
            "{:>10}  {:<9}  {:<24}  {:>8}  {:<12}  {}\n",
            t.id,
            t.state.as_str(),
            t.servable,
            t.attempts,
            output::chrono_like(t.timings.submitted_us),
            note
        ));
    }
    text
}

fn task_event_json(e: &TaskEventView) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "at_us": e.at_us,
        "task": e.task.0,
        "servable": e.servable,
        "kind": e.kind,
        "worker": e.worker,
        "attempt": e.attempt,
        "message": e.message,
    })
}

fn task_event_text(e: &TaskEventView) -> String {
    let mut line = format!(
        "{:>8} {} task {} {} {}",
        e.seq,
        output::chrono_like(e.at_us),
        e.task,
        e.kind,
        e.servable
    );
    if let Some(w) = &e.worker {
        line.push_str(&format!(" on {w}"));
    }
    if e.attempt > 0 {
        line.push_str(&format!(" (attempt {})", e.attempt));
    }
    if !e.message.is_empty() {
        line.push_str(&format!(": {}", e.message));
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_with_aliases_and_a_bad_one_is_named() {
        assert_eq!(state("done"), Ok(TaskState::Completed));
        assert_eq!(state(" Failed "), Ok(TaskState::Failed));
        let e = state("finished").unwrap_err();
        assert!(e.contains("`finished` is not a task state"), "{e}");
    }

    #[test]
    fn a_task_event_reads_as_one_line() {
        let e = TaskEventView {
            seq: 3,
            at_us: 0,
            task: TaskId(12),
            servable: "echo@1".into(),
            kind: "retried".into(),
            worker: Some("w1".into()),
            attempt: 1,
            message: "worker lost".into(),
        };
        let line = task_event_text(&e);
        assert!(line.contains("task 12 retried echo@1 on w1 (attempt 1): worker lost"));
        assert_eq!(task_event_json(&e)["task"], 12);
    }
}
