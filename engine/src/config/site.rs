//! The file being checked: where each key it sets is, and errors that point
//! there.
//!
//! The raw sections keep every value together with its place in the text
//! ([`Spanned`]). Taking a value out of its raw section records the line it
//! is on under its dotted key, so a check made later, even one across
//! sections, names the line by the key alone; a key the file does not set
//! has no line, and its error says the default is in force.

use std::collections::HashMap;

use toml::Spanned;

use super::ConfigError;

/// Seconds longer than this (about 31 years) are refused as a typo, long
/// before they could overflow the durations they become.
const MAX_SECONDS: f64 = 1.0e9;

/// The site file under check.
#[derive(Debug)]
pub(crate) struct Site<'a> {
    /// The file's name, as errors show it.
    file: &'a str,
    /// The file's text.
    text: &'a str,
    /// Line of every key taken so far that the file sets, by dotted key.
    lines: HashMap<String, usize>,
    /// While a `[[pool]]` table is checked, its name as keys show it
    /// (`pool[gpu]`): every key taken or named gets it in front, so the
    /// sections' own checks name the pool's keys unchanged.
    scope: Option<String>,
}

/// Which durations a `_s` key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seconds {
    /// More than zero.
    Positive,
    /// Zero or more.
    NonNegative,
}

impl<'a> Site<'a> {
    /// A file named `file` (in errors) whose text is `text`.
    pub(crate) fn new(file: &'a str, text: &'a str) -> Self {
        Site {
            file,
            text,
            lines: HashMap::new(),
            scope: None,
        }
    }

    /// Names every key after this under `scope` (a `[[pool]]` table), or
    /// at the top level again with `None`.
    pub(crate) fn set_scope(&mut self, scope: Option<String>) {
        self.scope = scope;
    }

    /// `key` as errors and the line table know it: under the scope, if any.
    fn scoped(&self, key: &str) -> String {
        match &self.scope {
            Some(scope) => format!("{scope}.{key}"),
            None => key.to_owned(),
        }
    }

    /// The section `[prefix]` of this file.
    pub(crate) fn section<'s>(&'s mut self, prefix: &str) -> Section<'s, 'a> {
        Section {
            site: self,
            prefix: prefix.to_owned(),
        }
    }

    /// A value of `key` as the file sets it (recording its line), or `None`.
    pub(crate) fn take<T>(&mut self, key: &str, raw: Option<Spanned<T>>) -> Option<T> {
        let raw = raw?;
        let line = self.line_of(raw.span().start);
        self.lines.insert(self.scoped(key), line);
        Some(raw.into_inner())
    }

    /// 1-based line of a byte offset in the text.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Where the file sets `key`, if it does (and the key was taken).
    pub(crate) fn line(&self, key: &str) -> Option<usize> {
        self.lines.get(&self.scoped(key)).copied()
    }

    /// Where the file sets the top-level `key` (a section), found in the
    /// text.
    pub(crate) fn locate(&self, key: &str) -> Option<usize> {
        crate::toml_locate::locate(self.text, key)
    }

    /// Every key taken so far that the file sets, with its line.
    #[cfg(test)]
    pub(crate) fn located(&self) -> impl Iterator<Item = (&str, usize)> {
        self.lines.iter().map(|(k, l)| (k.as_str(), *l))
    }

    /// `key`'s value is unusable: `message` says why and how to fix it.
    pub(crate) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.invalid_at(key, self.line(key), message)
    }

    /// Like [`Site::invalid`], for a key (an entry of a list) whose line is
    /// that of another key.
    pub(crate) fn invalid_at(
        &self,
        key: &str,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line,
            key: self.scoped(key),
            message: message.into(),
        }
    }
}

/// One `[section]` of the file under check: keys named relative to it.
#[derive(Debug)]
pub(crate) struct Section<'s, 'a> {
    site: &'s mut Site<'a>,
    prefix: String,
}

impl<'a> Section<'_, 'a> {
    /// The dotted key of `name` in this section.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// `name`'s value as the file sets it, or `None`.
    pub(crate) fn opt<T>(&mut self, name: &str, raw: Option<Spanned<T>>) -> Option<T> {
        let key = self.key(name);
        self.site.take(&key, raw)
    }

    /// `name`'s value, or `default` when the file does not set it.
    pub(crate) fn or<T>(&mut self, name: &str, raw: Option<Spanned<T>>, default: T) -> T {
        self.opt(name, raw).unwrap_or(default)
    }

    /// A duration in seconds, or `default`, refused unless finite and in
    /// the range `accepts` allows.
    pub(crate) fn seconds(
        &mut self,
        name: &str,
        raw: Option<Spanned<f64>>,
        default: f64,
        accepts: Seconds,
    ) -> Result<f64, ConfigError> {
        let value = self.or(name, raw, default);
        let zero_ok = accepts == Seconds::NonNegative;
        let in_range = value > 0.0 || (zero_ok && value == 0.0);
        if value.is_finite() && in_range && value <= MAX_SECONDS {
            return Ok(value);
        }
        if value.is_finite() && value > MAX_SECONDS {
            return Err(self.invalid(
                name,
                format!("must be at most {MAX_SECONDS:e} seconds (about 31 years), got {value:e}"),
            ));
        }
        let which = if zero_ok { "non-negative" } else { "positive" };
        Err(self.invalid(
            name,
            format!("must be a {which} number of seconds, got {value}"),
        ))
    }

    /// A count from 1 to `max`.
    pub(crate) fn at_least_one(
        &mut self,
        name: &str,
        raw: Option<Spanned<u32>>,
        default: u32,
        max: u32,
    ) -> Result<u32, ConfigError> {
        self.count(name, raw, default, 1, max)
    }

    /// A number from `min` to `max`, or `default`: every number a site
    /// file gives has a range, so a typo of a few digits too many is
    /// refused here instead of exhausting something later.
    pub(crate) fn count<T>(
        &mut self,
        name: &str,
        raw: Option<Spanned<T>>,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: Copy + PartialOrd + std::fmt::Display,
    {
        let value = self.or(name, raw, default);
        if value < min {
            return Err(self.invalid(name, format!("must be at least {min}, got {value}")));
        }
        if value > max {
            return Err(self.invalid(name, format!("must be at most {max}, got {value}")));
        }
        Ok(value)
    }

    /// Where the file sets `name` of this section, if it does.
    pub(crate) fn line(&self, name: &str) -> Option<usize> {
        self.site.line(&self.key(name))
    }

    /// `name`'s value is unusable.
    pub(crate) fn invalid(&self, name: &str, message: impl Into<String>) -> ConfigError {
        self.site.invalid(&self.key(name), message)
    }

    /// `entry` (such as `binds[2]`) is unusable; it is on the line of the
    /// list `name`.
    pub(crate) fn invalid_entry(
        &self,
        name: &str,
        entry: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.site
            .invalid_at(&self.key(entry), self.line(name), message)
    }

    /// A nested table of this section (`[provider.kubernetes]`).
    pub(crate) fn table<'t>(&'t mut self, name: &str) -> Section<'t, 'a> {
        let prefix = self.key(name);
        // Reborrow the site for the nested section's lifetime.
        Section {
            site: &mut *self.site,
            prefix,
        }
    }
}
