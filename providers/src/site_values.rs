//! The shapes of site values that reach a job script or a scheduler
//! command, and of the job ids schedulers print.
//!
//! Scheduler directives (`#SBATCH --partition=…`, `#PBS -q …`) cannot be
//! quoted: a value holding a newline ends its directive and starts a line of
//! shell in the job script. So each value is held to the shape of its field
//! (a conservative set of characters) in `config check`, and again when a
//! block is submitted. Job ids read from a scheduler's output go into the
//! next `squeue`/`qstat`/`qdel` command, so they are checked when read.

use crate::{JobId, SchedulerOptions, walltime_seconds};

/// The longest wall time a block may ask for: a year.
pub const MAX_WALLTIME_S: u64 = 366 * 86_400;

/// The longest scheduler name (partition, queue, account, …) accepted.
const MAX_NAME_LEN: usize = 256;

/// A check of one field's shape.
pub type Check = fn(&str) -> Result<(), BadValue>;

/// A site value that does not have the shape of its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {reason}")]
pub struct BadValue {
    /// The field (`partition`, `walltime`, …), as the site file names it.
    pub field: &'static str,
    /// What is wrong with it, quoting it escaped and shortened.
    pub reason: String,
}

/// `value` for messages: escaped (control characters shown as escapes)
/// and at most 80 characters of it.
pub fn shown(value: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = value
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    let more = value.chars().count().saturating_sub(MAX);
    if more > 0 {
        out.push_str(&format!("… ({more} more characters)"));
    }
    out
}

/// The first control character in `value` (a newline, a tab, an escape,
/// NUL, DEL, …), if any.
pub fn control_character(value: &str) -> Option<char> {
    value.chars().find(|c| c.is_control())
}

/// Checks that `value` is made of ASCII letters, digits and `extra`, is not
/// empty and is not overlong.
fn name_like(field: &'static str, value: &str, extra: &str, what: &str) -> Result<(), BadValue> {
    let bad = |reason: String| BadValue { field, reason };
    if value.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "is {} bytes long; at most {MAX_NAME_LEN}",
            value.len()
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !extra.contains(*c))
    {
        return Err(bad(format!(
            "`{}` holds {:?}, which a {what} does not; use letters, digits and `{extra}`",
            shown(value),
            c
        )));
    }
    Ok(())
}

/// Checks a Slurm partition (or a comma-separated list of them).
pub fn check_partition(value: &str) -> Result<(), BadValue> {
    name_like("partition", value, "._-,", "partition name")
}

/// Checks a PBS or Cobalt queue (`debug`, `workq@server`).
pub fn check_queue(value: &str) -> Result<(), BadValue> {
    name_like("queue", value, "._-@", "queue name")
}

/// Checks an account or project name.
pub fn check_account(value: &str) -> Result<(), BadValue> {
    name_like("account", value, "._-", "account name")
}

/// Checks a Slurm quality of service.
pub fn check_qos(value: &str) -> Result<(), BadValue> {
    name_like("qos", value, "._-", "QOS name")
}

/// Checks a Slurm constraint: node features joined by Slurm's operators
/// (`gpu&hbm80g`, `[rack1|rack2]`, `knl*2`).
pub fn check_constraint(value: &str) -> Result<(), BadValue> {
    name_like("constraint", value, "._-&|[]*:,()!", "constraint")
}

/// Checks PBS resources for each select chunk: `name=value` pairs joined
/// by `:` (`system=polaris`, `mem=64gb:host=x1`).
pub fn check_select_resources(value: &str) -> Result<(), BadValue> {
    name_like("select_resources", value, "._-=:", "PBS resource list")
}

/// Checks a PBS placement (`scatter`, `pack:excl`, `vscatter:shared`).
pub fn check_place(value: &str) -> Result<(), BadValue> {
    name_like("place", value, ":", "PBS placement")
}

/// Checks a wall time: `HH:MM:SS`, `MM:SS` or `D-HH:MM:SS`, more than zero
/// and at most [`MAX_WALLTIME_S`].
pub fn check_walltime(value: &str) -> Result<(), BadValue> {
    let bad = |reason: String| BadValue {
        field: "walltime",
        reason,
    };
    match walltime_seconds(value) {
        None | Some(0) => Err(bad(format!(
            "`{}` is not a wall time; write HH:MM:SS (or D-HH:MM:SS)",
            shown(value)
        ))),
        Some(s) if s > MAX_WALLTIME_S => Err(bad(format!(
            "`{}` is {s} s; a block may ask for at most {MAX_WALLTIME_S} s ({} days)",
            shown(value),
            MAX_WALLTIME_S / 86_400
        ))),
        Some(_) => Ok(()),
    }
}

/// Checks raw directive lines added to a job script: every non-empty line
/// must be a directive or comment (start with `#`), since anything else is
/// a line of shell that also ends the scheduler's reading of directives.
pub fn check_directive_lines(value: &str) -> Result<(), BadValue> {
    let bad = |reason: String| BadValue {
        field: "scheduler_options",
        reason,
    };
    for (n, line) in value.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = control_character(line) {
            return Err(bad(format!(
                "line {} holds the control character {c:?}",
                n + 1
            )));
        }
        if !line.starts_with('#') {
            return Err(bad(format!(
                "line {} `{}` is not a directive: every line must start with `#` (e.g. `#SBATCH --mail-type=NONE`); commands to run belong in `worker.init`",
                n + 1,
                shown(line)
            )));
        }
    }
    Ok(())
}

/// Checks a path written into a job script's directives or a command
/// (the block's run directory): no control characters, no white space.
pub fn check_path(field: &'static str, value: &str) -> Result<(), BadValue> {
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(BadValue {
            field,
            reason: format!(
                "`{}` holds {c:?}; job script directives cannot carry it",
                shown(value)
            ),
        });
    }
    Ok(())
}

impl SchedulerOptions {
    /// Checks every value these options write into a job script or a
    /// scheduler command; `directive_lines` says whether
    /// `scheduler_options` holds directive lines (Slurm, PBS) rather than
    /// command-line options (Cobalt).
    pub fn check(&self, directive_lines: bool) -> Result<(), BadValue> {
        check_walltime(&self.walltime)?;
        let checks: [(&Option<String>, Check); 7] = [
            (&self.partition, check_partition),
            (&self.queue, check_queue),
            (&self.account, check_account),
            (&self.qos, check_qos),
            (&self.constraint, check_constraint),
            (&self.select_resources, check_select_resources),
            (&self.place, check_place),
        ];
        for (value, check) in checks {
            if let Some(v) = value {
                check(v)?;
            }
        }
        if directive_lines {
            check_directive_lines(&self.scheduler_options)?;
        } else if let Some(c) = self
            .scheduler_options
            .chars()
            .find(|c| c.is_control() && *c != '\n')
        {
            return Err(BadValue {
                field: "scheduler_options",
                reason: format!("holds the control character {c:?}"),
            });
        }
        Ok(())
    }
}

/// Whether `id` has the shape of a PBS job id: digits, an optional array
/// index (`[]`, `[3]`), an optional `.server` (`1234.pbs01.example.org`).
pub fn valid_pbs_id(id: &str) -> bool {
    let digits = id.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || id.len() > MAX_NAME_LEN {
        return false;
    }
    let mut rest = &id[digits..];
    if let Some(after) = rest.strip_prefix('[') {
        let Some((index, tail)) = after.split_once(']') else {
            return false;
        };
        if !index.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        rest = tail;
    }
    match rest.strip_prefix('.') {
        None => rest.is_empty(),
        Some(server) => {
            !server.is_empty()
                && server
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        }
    }
}

/// Whether `id` has the shape of a Slurm job id (`123`, `123_4` for an
/// array task).
pub fn valid_slurm_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id.starts_with(|c: char| c.is_ascii_digit())
        && id.chars().all(|c| c.is_ascii_digit() || c == '_')
}

/// Whether `id` has the shape of a Cobalt job id (a number).
pub fn valid_cobalt_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// `id` if it has the shape `valid` accepts, or why not (named after the
/// `tool` that printed it).
pub fn job_id(tool: &str, id: &str, valid: fn(&str) -> bool) -> Result<JobId, String> {
    if valid(id) {
        Ok(JobId(id.to_owned()))
    } else {
        Err(format!(
            "{tool} printed `{}` where a job id was expected; it is not one",
            shown(id)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_would_break_out_of_a_directive_are_refused() {
        let e = check_partition("debug\ntouch X").unwrap_err();
        assert_eq!(e.field, "partition");
        assert!(e.reason.contains("debug\\ntouch X"), "{e}");
        for bad in ["a b", "a;b", "$(x)", "a'b", "", "a\rb"] {
            assert!(check_partition(bad).is_err(), "{bad:?}");
            assert!(check_queue(bad).is_err(), "{bad:?}");
            assert!(check_account(bad).is_err(), "{bad:?}");
            assert!(check_qos(bad).is_err(), "{bad:?}");
            assert!(check_constraint(bad).is_err(), "{bad:?}");
        }
        check_partition("debug,regular").unwrap();
        check_queue("workq@pbs01.example.org").unwrap();
        check_account("m1234_g").unwrap();
        check_qos("high-prio.1").unwrap();
        check_constraint("[rack1|rack2]&gpu*2").unwrap();
        assert!(check_partition(&"p".repeat(300)).is_err());
    }

    #[test]
    fn walltimes_are_bounded() {
        check_walltime("00:30:00").unwrap();
        check_walltime("7-00:00:00").unwrap();
        for bad in [
            "99999999999999999:00:00",
            "9999:00:00",
            "00:00:00",
            "1:00:00\ntouch X",
        ] {
            let e = check_walltime(bad).unwrap_err().to_string();
            assert!(e.starts_with("`walltime`"), "{bad}: {e}");
        }
    }

    #[test]
    fn raw_directive_lines_must_be_directives() {
        check_directive_lines("#SBATCH --mail-type=NONE\n\n  #PBS -l x=y\n").unwrap();
        let e = check_directive_lines("#SBATCH -x\ntouch X\n").unwrap_err();
        assert!(e.reason.starts_with("line 2 `touch X`"), "{e}");
        assert!(check_directive_lines("#SBATCH \u{1b}[2J").is_err());
    }

    #[test]
    fn options_are_checked_field_by_field() {
        let ok = SchedulerOptions {
            walltime: "01:00:00".into(),
            partition: Some("debug".into()),
            scheduler_options: "--attrs a=b\n--foo".into(),
            ..SchedulerOptions::default()
        };
        ok.check(false).unwrap();
        assert_eq!(ok.check(true).unwrap_err().field, "scheduler_options");
        let bad = SchedulerOptions {
            account: Some("m1\n#SBATCH --x".into()),
            ..ok.clone()
        };
        assert_eq!(bad.check(false).unwrap_err().field, "account");
    }

    #[test]
    fn job_ids_are_checked_when_read() {
        for good in ["1234", "1234.pbs01", "12[].srv-1.example.org", "7[3]"] {
            assert!(valid_pbs_id(good), "{good}");
        }
        for bad in [
            "",
            "x",
            "12;rm -rf ~",
            "12.srv $(x)",
            "12[a]",
            "12.",
            "12 13",
        ] {
            assert!(!valid_pbs_id(bad), "{bad}");
        }
        assert!(valid_slurm_id("42_7") && !valid_slurm_id("_1") && !valid_slurm_id("4;x"));
        assert!(valid_cobalt_id("368154") && !valid_cobalt_id("36a"));
        let e = job_id("qsub", "a;b\n", valid_pbs_id).unwrap_err();
        assert!(e.contains("a;b\\n") && e.starts_with("qsub printed"), "{e}");
    }
}
