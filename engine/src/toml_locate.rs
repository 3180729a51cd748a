//! Finding the line a TOML key is on, and parse errors, for messages.
//!
//! Parsers report type and syntax errors with positions, but checks made
//! after parsing ("not a semantic version") only know the key. The text is
//! parsed again into a tree that keeps every value's place ([`Node`]),
//! where the key is looked up, in a `[table]`, a dotted key or an inline
//! table alike. (Site files keep each value's place in their raw sections
//! as they are parsed, see [`crate::config`].)

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// A parsed TOML value, only as far as finding keys and strings needs:
/// every value keeps its place in the text.
pub(crate) enum Node {
    /// A string.
    Text(String),
    /// A table, its keys in order.
    Table(Vec<(String, Spanned<Node>)>),
    /// An array.
    List(Vec<Spanned<Node>>),
    /// Anything else (numbers, booleans, dates).
    Other,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Builds a [`Node`] from whatever the parser has.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Text(v))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Table(entries))
    }
}

/// The top-level keys of `text` with their values, or `None` when it does
/// not parse.
pub(crate) fn tree(text: &str) -> Option<Vec<(String, Spanned<Node>)>> {
    match toml::from_str::<Node>(text) {
        Ok(Node::Table(entries)) => Some(entries),
        _ => None,
    }
}

/// 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Characters of the offending line shown on either side of the error.
const EXCERPT_RADIUS: usize = 40;

/// Characters of the parser's own explanation kept per line (it may quote
/// a value, which may be megabytes long).
const MESSAGE_LINE_MAX: usize = 200;

/// Lines of the parser's explanation kept.
const MESSAGE_LINES_MAX: usize = 12;

/// A parse error of `text` for people: the line and column, a bounded
/// excerpt of the line with a caret under the place, and the parser's
/// explanation, each line of it shortened; however long the offending
/// line or value, the message stays a few hundred bytes.
pub fn parse_error(text: &str, error: &toml::de::Error) -> String {
    let mut out = String::new();
    if let Some(span) = error.span() {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_no = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count();
        let line = &text[line_start..line_end];
        let first = column.saturating_sub(EXCERPT_RADIUS);
        let mut excerpt: String = line
            .chars()
            .skip(first)
            .take(2 * EXCERPT_RADIUS)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let mut caret = column - first;
        if first > 0 {
            excerpt.insert(0, '…');
            caret += 1;
        }
        if line.chars().count() > first + 2 * EXCERPT_RADIUS {
            excerpt.push('…');
        }
        let gutter = " ".repeat(line_no.to_string().len());
        out.push_str(&format!(
            "TOML parse error at line {line_no}, column {}\n{gutter} |\n{line_no} | {excerpt}\n{gutter} | {}^\n",
            column + 1,
            " ".repeat(caret)
        ));
    }
    out.push_str(&bounded_message(error.message()));
    out
}

/// `message` with each line cut to [`MESSAGE_LINE_MAX`] characters and at
/// most [`MESSAGE_LINES_MAX`] lines.
pub fn bounded_message(message: &str) -> String {
    let mut lines: Vec<String> = message
        .trim_end()
        .lines()
        .take(MESSAGE_LINES_MAX)
        .map(|line| {
            let count = line.chars().count();
            if count <= MESSAGE_LINE_MAX {
                line.to_owned()
            } else {
                let kept: String = line.chars().take(MESSAGE_LINE_MAX).collect();
                format!("{kept}… ({} more characters)", count - MESSAGE_LINE_MAX)
            }
        })
        .collect();
    let more = message
        .trim_end()
        .lines()
        .count()
        .saturating_sub(MESSAGE_LINES_MAX);
    if more > 0 {
        lines.push(format!("… ({more} more lines)"));
    }
    lines.join("\n")
}

/// The largest char boundary of `text` at or before `at`.
fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// 1-based line where `path` is set. `path` is dotted (`provider.min_blocks`,
/// `runtime.command`) and may index arrays (`creators[1].orcid`; without an
/// index, the first); `None` when the key is not in the text (a default is
/// in force).
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let Some(entries) = tree(text) else {
        return scan(text, path);
    };
    let mut entries = &entries;
    let mut found: Option<&Spanned<Node>> = None;
    let segments: Vec<&str> = path.split('.').collect();
    for (n, segment) in segments.iter().enumerate() {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
            None => (*segment, None),
        };
        let mut value = &entries.iter().find(|(k, _)| k == name)?.1;
        let more = n + 1 < segments.len();
        if let Node::List(items) = value.get_ref()
            && (index.is_some() || more)
        {
            value = items.get(index.unwrap_or(0))?;
        }
        found = Some(value);
        entries = match value.get_ref() {
            Node::Table(inner) => inner,
            _ => entries,
        };
    }
    found.map(|v| line_of(text, v.span().start))
}

/// [`locate`] by scanning lines, for text that does not parse.
fn scan(text: &str, path: &str) -> Option<usize> {
    let (table, leaf) = match path.rsplit_once('.') {
        Some((t, l)) => (t.to_owned(), l),
        None => (String::new(), path),
    };
    // The table as the scanner names it: `creators[1]` for the second
    // `[[creators]]`, `input.properties.x` for `[input.properties.x]`.
    let mut current = String::new();
    let mut occurrences: std::collections::HashMap<String, usize> =
        std::collections::HashMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim().to_owned();
            let n = occurrences.entry(name.clone()).or_insert(0);
            current = format!("{name}[{n}]");
            *n += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            current = rest.split(']').next().unwrap_or("").trim().to_owned();
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        let full = if current.is_empty() {
            key.to_owned()
        } else {
            format!("{current}.{key}")
        };
        let wanted = if table.is_empty() {
            leaf.to_owned()
        } else {
            format!("{table}.{leaf}")
        };
        // `[[creators]]` without an index in the path means the first one.
        if full == wanted || full.replace("[0]", "") == wanted {
            return Some(index + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_on_a_huge_line_stays_small() {
        let text = format!("a = 1\nb = \"{}", "x".repeat(10 << 20));
        let e = toml::from_str::<toml::Table>(&text).unwrap_err();
        let message = parse_error(&text, &e);
        assert!(message.len() < 1000, "{} bytes", message.len());
        assert!(
            message.starts_with("TOML parse error at line 2, column"),
            "{message}"
        );
        let text = format!("port = \"{}\"\n", "9".repeat(10 << 20));
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Port {
            port: u16,
        }
        let e = toml::from_str::<Port>(&text).unwrap_err();
        let message = parse_error(&text, &e);
        assert!(message.len() < 1000, "{} bytes", message.len());
        assert!(
            message.contains("line 1") && message.contains("more characters"),
            "{message}"
        );
    }

    #[test]
    fn finds_keys_in_tables_and_arrays_of_tables() {
        let text = "name = \"x\"\n\n[runtime]\nkind = \"exec\"\ncommand = \"\"\n\n[[creators]]\nname = \"A\"\n\n[[creators]]\nname = \"B\"\norcid = \"bad\"\n[input.properties.size]\nkind = \"integer\"\n";
        assert_eq!(locate(text, "name"), Some(1));
        assert_eq!(locate(text, "runtime.command"), Some(5));
        assert_eq!(locate(text, "creators[1].orcid"), Some(12));
        assert_eq!(locate(text, "creators.name"), Some(8));
        assert_eq!(locate(text, "input.properties.size.kind"), Some(14));
        assert_eq!(locate(text, "runtime.args"), None);
    }

    #[test]
    fn finds_keys_set_in_inline_tables_and_dotted_keys() {
        let text = "name = \"x\"\nruntime = { kind = \"exec\",\n  command = \"\" }\ninput.kind = \"any\"\ncreators = [\n  { name = \"A\" },\n  { name = \"B\", orcid = \"bad\" },\n]\n";
        assert_eq!(locate(text, "runtime.command"), Some(3));
        assert_eq!(locate(text, "input.kind"), Some(4));
        assert_eq!(locate(text, "creators[1].orcid"), Some(7));
        assert_eq!(locate(text, "creators.name"), Some(6));
        assert_eq!(locate(text, "runtime.args"), None);
    }
}
