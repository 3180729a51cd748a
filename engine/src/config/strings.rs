//! Control characters in the site file's strings.
//!
//! Site values end up in job scripts, scheduler commands, logs and
//! terminals, where a newline or an escape sequence means something: a
//! partition of `"debug\ntouch X"` would become a line of shell in a Slurm
//! job script. So no string anywhere in the file may hold a control
//! character, except the few keys that are shell text or directive lines
//! by design, which may hold newlines and tabs. The file is walked as
//! parsed, every string with its place, so the error names the line and
//! key whether the key is set in a `[table]` or an inline table.

use toml::Spanned;

use super::ConfigError;
use super::site::Site;
use crate::toml_locate::{Node, tree};

/// Keys whose value is text of many lines by design.
const MULTI_LINE: [&str; 2] = ["worker.init", "provider.scheduler_options"];

/// A string holding a character it may not: where, and which.
struct Found {
    key: String,
    offset: usize,
    bad: char,
}

/// Refuses the first string in `text` (already known to parse) that holds
/// a control character its key does not allow.
pub(crate) fn check(text: &str, site: &Site) -> Result<(), ConfigError> {
    // The text parsed once already; should it not parse as a tree here,
    // the typed parse has said what is wrong with it.
    let Some(entries) = tree(text) else {
        return Ok(());
    };
    let mut found = None;
    for (key, value) in &entries {
        if found.is_none() {
            found = find(key.clone(), value);
        }
    }
    let Some(f) = found else {
        return Ok(());
    };
    let allowed = if multi_line(&f.key) {
        "; only newlines and tabs may be in it"
    } else {
        ""
    };
    Err(site.invalid_at(
        &f.key,
        Some(site.line_of(f.offset)),
        format!(
            "holds the control character {:?} (U+{:04X}){allowed}; site values may not, as they end up in job scripts, commands and logs",
            f.bad, f.bad as u32
        ),
    ))
}

/// Whether `key` is shell text or directive lines by design, at the top
/// level or in a `[[pool]]` table (`pool[1].worker.init`).
fn multi_line(key: &str) -> bool {
    let own = match key.strip_prefix("pool[") {
        Some(rest) => rest.split_once("].").map_or(key, |(_, own)| own),
        None => key,
    };
    MULTI_LINE.contains(&own)
}

/// The first string at or under `key` holding a character it may not.
fn find(key: String, node: &Spanned<Node>) -> Option<Found> {
    match node.get_ref() {
        Node::Text(s) => {
            let multi_line = multi_line(&key);
            let bad = s
                .chars()
                .find(|c| c.is_control() && !(multi_line && matches!(c, '\n' | '\t')))?;
            Some(Found {
                key,
                offset: node.span().start,
                bad,
            })
        }
        Node::Table(entries) => entries
            .iter()
            .find_map(|(k, v)| find(format!("{key}.{k}"), v)),
        Node::List(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find(format!("{key}[{i}]"), v)),
        Node::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_control_character_in_any_string_is_refused_with_file_line_and_key() {
        let cases = [
            (
                "[provider]\nkind = \"slurm\"\npartition = \"debug\\ntouch X\"\n",
                "s.toml:3: `provider.partition`: holds the control character '\\n'",
            ),
            (
                "[worker]\ncommand = \"fw\\u001b[2J\"\n",
                "s.toml:2: `worker.command`: holds the control character '\\u{1b}'",
            ),
            (
                "[interchange]\naddress = [\"127.0.0.1\", \"\\rhost\"]\n",
                "s.toml:2: `interchange.address[1]`",
            ),
            (
                "provider = { kind = \"slurm\", account = \"a\\u0000\" }\n",
                "s.toml:1: `provider.account`",
            ),
            (
                "[worker]\ninit = \"module load x\\n\\u0007\"\n",
                "s.toml:2: `worker.init`: holds the control character '\\u{7}' (U+0007); only newlines and tabs",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(expected), "{text}: {err}");
        }
        let c = Config::parse(
            "[worker]\ninit = \"\"\"\nmodule load a\n\texport B=1\n\"\"\"\n",
            "s.toml",
        )
        .unwrap();
        assert!(c.worker.init.contains("\texport B=1"));
    }
}
