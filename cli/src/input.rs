//! Reading servable inputs people type: a JSON argument, a file, stdin, or a
//! JSON-lines batch file.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use flotilla_client::json_to_payload;
use flotilla_protocol::Payload;
use flotilla_protocol::client::TaskRequest;
use serde::Deserialize;
use serde_json::Value;

/// The input of one invocation: `arg` if given, else the file, else stdin
/// (when it is not a terminal), else `null`.
pub fn read_input(arg: Option<&str>, file: Option<&Path>) -> anyhow::Result<Payload> {
    let (text, origin) = match (arg, file) {
        (Some(_), Some(_)) => {
            bail!("give the input either as an argument or with --input-file, not both")
        }
        (Some(a), None) => (a.to_owned(), "the input argument".to_owned()),
        (None, Some(f)) => (
            std::fs::read_to_string(f).with_context(|| format!("{}: cannot read", f.display()))?,
            f.display().to_string(),
        ),
        (None, None) => {
            if nix::unistd::isatty(std::io::stdin()).unwrap_or(true) {
                ("null".to_owned(), String::new())
            } else {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .context("cannot read the input from stdin")?;
                if s.trim().is_empty() {
                    s = "null".into();
                }
                (s, "stdin".to_owned())
            }
        }
    };
    parse_json(&text, &origin)
}

/// Parses a JSON value typed by a person; errors name where it came from.
pub fn parse_json(text: &str, origin: &str) -> anyhow::Result<Payload> {
    let value: Value = serde_json::from_str(text)
        .with_context(|| format!("{origin} is not valid JSON (strings need quotes: '\"text\"')"))?;
    Ok(json_to_payload(&value)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    servable: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    params: Option<serde_json::Map<String, Value>>,
}

/// Reads a JSON-lines batch file: one `{"servable": NAME, "input": VALUE,
/// "params": {...}}` per line; blank lines are skipped. Every line is checked
/// before anything is submitted, and the first bad one is named.
/// It calls `progress(bytes read, bytes in all)` every [`PROGRESS_LINES`]
/// lines and at the end, for a bar over a large file.
pub fn read_batch(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Vec<TaskRequest>> {
    let (text, name) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("stdin: cannot read")?;
        (text, "stdin".to_owned())
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        (text, path.display().to_string())
    };
    let mut tasks = Vec::new();
    let total = text.len() as u64;
    let mut done = 0u64;
    for (index, line) in text.lines().enumerate() {
        done += line.len() as u64 + 1;
        if index % PROGRESS_LINES == PROGRESS_LINES - 1 {
            progress(done.min(total), total);
        }
        if line.trim().is_empty() {
            continue;
        }
        let where_ = format!("{name}:{}", index + 1);
        let parsed: BatchLine = serde_json::from_str(line).with_context(|| {
            format!(
                "{where_}: expected {{\"servable\": NAME, \"input\": VALUE, \"params\": {{...}}}}"
            )
        })?;
        if parsed.servable.trim().is_empty() {
            bail!("{where_}: `servable` is empty");
        }
        tasks.push(TaskRequest {
            servable: parsed.servable,
            input: json_to_payload(&parsed.input).with_context(|| where_.clone())?,
            params: match parsed.params {
                Some(p) if !p.is_empty() => {
                    json_to_payload(&Value::Object(p)).with_context(|| where_.clone())?
                }
                _ => Payload::new(),
            },
        });
    }
    progress(total, total);
    if tasks.is_empty() {
        bail!("{name}: no tasks in the file");
    }
    Ok(tasks)
}

/// How many lines of a batch file are read between progress reports.
pub const PROGRESS_LINES: usize = 4096;

/// Parameters given as a JSON object on the command line.
pub fn read_params(arg: Option<&str>) -> anyhow::Result<Payload> {
    match arg {
        None => Ok(Payload::new()),
        Some(text) => {
            let value: Value = serde_json::from_str(text).context("--params is not valid JSON")?;
            match value {
                Value::Object(m) if m.is_empty() => Ok(Payload::new()),
                Value::Object(_) => Ok(json_to_payload(&value)?),
                _ => bail!("--params must be a JSON object, e.g. '{{\"top_k\": 3}}'"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn batch_files_are_checked_line_by_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{{\"servable\": \"noop\"}}").unwrap();
        writeln!(f).unwrap();
        writeln!(
            f,
            "{{\"servable\": \"echo\", \"input\": [1, 2], \"params\": {{\"k\": 1}}}}"
        )
        .unwrap();
        let tasks = read_batch(f.path(), &mut |_, _| {}).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[1].servable, "echo");
        assert!(!tasks[1].params.is_empty());

        writeln!(f, "{{\"servable\": \"echo\", \"inptu\": 1}}").unwrap();
        let err = format!("{:#}", read_batch(f.path(), &mut |_, _| {}).unwrap_err());
        assert!(err.contains(":4:") && err.contains("inptu"), "{err}");
    }

    #[test]
    fn a_batch_reports_its_progress_through_the_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let lines = PROGRESS_LINES * 2 + 10;
        for _ in 0..lines {
            writeln!(f, "{{\"servable\": \"noop\"}}").unwrap();
        }
        let size = f.as_file().metadata().unwrap().len();
        let mut seen = Vec::new();
        let tasks = read_batch(f.path(), &mut |done, total| seen.push((done, total))).unwrap();
        assert_eq!(tasks.len(), lines);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.iter().all(|&(_, total)| total == size));
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
        assert_eq!(seen.last(), Some(&(size, size)));
    }

    #[test]
    fn bad_json_names_its_origin() {
        let err = format!(
            "{:#}",
            parse_json("hello", "the input argument").unwrap_err()
        );
        assert!(
            err.contains("the input argument is not valid JSON"),
            "{err}"
        );
        assert!(read_params(Some("[1]")).is_err());
        assert!(read_params(Some("{}")).unwrap().is_empty());
    }
}
