//! Why a site file cannot be used.

use std::path::PathBuf;

/// A site file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, a key is unknown or a value has the wrong type.
    /// `message` already carries the line, column and key from the parser.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's explanation, with line and key.
        message: String,
    },
    /// A value is well-formed but unusable.
    #[error("{file}{}: `{key}`{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default(), if line.is_none() { " (not set: its default)" } else { "" })]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the key, when it is in the file.
        line: Option<usize>,
        /// Dotted key (`provider.min_blocks`).
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}
