//! Finding the line a TOML key is on, for error messages.
//!
//! Parsers report type and syntax errors with positions, but checks made
//! after parsing ("not a semantic version") only know the key. This light
//! scanner finds it again in the text. (Site files need no scanning: their
//! raw sections keep each value's place as they are parsed, see
//! [`crate::config`].)

/// 1-based line where `path` is set. `path` is dotted (`provider.min_blocks`,
/// `runtime.command`) and may index arrays of tables (`creators[1].orcid`);
/// `None` when the key is not in the text (a default is in force).
pub fn locate(text: &str, path: &str) -> Option<usize> {
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
    fn finds_keys_in_tables_and_arrays_of_tables() {
        let text = "name = \"x\"\n\n[runtime]\nkind = \"exec\"\ncommand = \"\"\n\n[[creators]]\nname = \"A\"\n\n[[creators]]\nname = \"B\"\norcid = \"bad\"\n[input.properties.size]\nkind = \"integer\"\n";
        assert_eq!(locate(text, "name"), Some(1));
        assert_eq!(locate(text, "runtime.command"), Some(5));
        assert_eq!(locate(text, "creators[1].orcid"), Some(12));
        assert_eq!(locate(text, "creators.name"), Some(8));
        assert_eq!(locate(text, "input.properties.size.kind"), Some(14));
        assert_eq!(locate(text, "runtime.args"), None);
    }
}
