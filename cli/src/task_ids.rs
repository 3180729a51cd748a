//! Task ids as the command line takes them: single ids, inclusive ranges
//! (`5-10`) and comma-separated lists of both (`5-10,12`), and `-` for
//! ids read from stdin (whitespace, commas or newlines between them), so
//! a hundred thousand ids need not fit in the shell's argument list.

use std::collections::HashSet;
use std::io::Read;

use flotilla_protocol::TaskId;

/// The most ids one command expands ranges to: a typo such as `1-1000000000`
/// is refused instead of filling memory.
pub(crate) const MAX_IDS: u64 = 10_000_000;

/// Why a task id argument could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BadIds {
    /// Not a number, range or list of them.
    #[error(
        "`{0}` is not a task id or range (write ids as 12, ranges as 5-10, lists as 5-10,12, or - to read them from stdin)"
    )]
    NotAnId(String),
    /// A range that runs backwards.
    #[error("`{0}`: a range's first id must not be above its last (write it as {2}-{1})")]
    Backwards(String, u64, u64),
    /// More ids than [`MAX_IDS`].
    #[error("`{0}` names more than {MAX_IDS} task ids; list them in parts")]
    TooMany(String),
    /// `-` given twice.
    #[error("`-` (ids from stdin) may be given only once")]
    StdinTwice,
    /// stdin could not be read.
    #[error("cannot read task ids from stdin: {0}")]
    Stdin(String),
    /// No ids at all.
    #[error("no task ids given")]
    Empty,
}

/// The ids of the command-line arguments `args`, reading stdin for `-`,
/// in order with repeats dropped.
pub(crate) fn from_args(args: &[String]) -> Result<Vec<TaskId>, BadIds> {
    from_args_with(args, || {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| BadIds::Stdin(e.to_string()))?;
        Ok(text)
    })
}

/// [`from_args`] with stdin read by `stdin`.
fn from_args_with(
    args: &[String],
    mut stdin: impl FnMut() -> Result<String, BadIds>,
) -> Result<Vec<TaskId>, BadIds> {
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    let mut stdin_used = false;
    for arg in args {
        if arg.trim() == "-" {
            if stdin_used {
                return Err(BadIds::StdinTwice);
            }
            stdin_used = true;
            let text = stdin()?;
            for word in text.split(|c: char| c.is_whitespace() || c == ',') {
                if !word.is_empty() {
                    push_item(word, &mut ids, &mut seen)?;
                }
            }
        } else {
            for item in arg.split(',') {
                push_item(item, &mut ids, &mut seen)?;
            }
        }
    }
    if ids.is_empty() {
        return Err(BadIds::Empty);
    }
    Ok(ids)
}

fn push_item(item: &str, ids: &mut Vec<TaskId>, seen: &mut HashSet<TaskId>) -> Result<(), BadIds> {
    let (first, last) = range(item)?;
    let room = MAX_IDS.saturating_sub(ids.len() as u64);
    if last - first >= room {
        return Err(BadIds::TooMany(item.trim().to_owned()));
    }
    for n in first..=last {
        if seen.insert(TaskId(n)) {
            ids.push(TaskId(n));
        }
    }
    Ok(())
}

/// One item: `N` or `A-B`, inclusive.
pub(crate) fn range(item: &str) -> Result<(u64, u64), BadIds> {
    let item = item.trim();
    let bad = || BadIds::NotAnId(item.to_owned());
    let number = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u64>().map_err(|_| bad())
    };
    match item.split_once('-') {
        None => {
            let n = number(item)?;
            Ok((n, n))
        }
        Some((a, b)) => {
            let (first, last) = (number(a)?, number(b)?);
            if first > last {
                return Err(BadIds::Backwards(item.to_owned(), first, last));
            }
            Ok((first, last))
        }
    }
}

/// Inclusive ranges for a filter: each argument item as `(first, last)`.
pub(crate) fn ranges(args: &[String]) -> Result<Vec<(u64, u64)>, BadIds> {
    args.iter().flat_map(|a| a.split(',')).map(range).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Vec<u64>, BadIds> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        from_args_with(&args, || Ok("7\n8-9, 3\n\n".into()))
            .map(|ids| ids.into_iter().map(|t| t.0).collect())
    }

    #[test]
    fn ids_ranges_and_lists_expand_in_order_without_repeats() {
        assert_eq!(parse(&["5-7,12", "3"]).unwrap(), [5, 6, 7, 12, 3]);
        assert_eq!(parse(&["4", "4-5"]).unwrap(), [4, 5]);
        assert_eq!(parse(&[" 9 - 10 "]).unwrap(), [9, 10]);
        assert_eq!(parse(&["1", "-"]).unwrap(), [1, 7, 8, 9, 3]);
    }

    #[test]
    fn bad_ranges_are_named_with_what_is_wrong() {
        let e = parse(&["10-5"]).unwrap_err();
        assert_eq!(e, BadIds::Backwards("10-5".into(), 10, 5));
        assert!(e.to_string().contains("write it as 5-10"), "{e}");
        for bad in ["5-", "-5", "a-b", "1-2-3", "x", "", "1,,2", "-1"] {
            let e = parse(&[bad]).unwrap_err();
            assert!(matches!(e, BadIds::NotAnId(_)), "{bad}: {e:?}");
        }
        let e = parse(&["1-100000000000"]).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let e = parse(&["-", "-"]).unwrap_err();
        assert_eq!(e, BadIds::StdinTwice, "second read is refused");
        assert_eq!(
            from_args_with(&["-".to_string()], || Ok(" \n".into())).unwrap_err(),
            BadIds::Empty
        );
    }
}
