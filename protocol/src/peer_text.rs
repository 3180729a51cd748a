//! Text that came from a peer, made safe for a log (the daemon's, or a
//! worker's); and the checks a worker's identifying fields must pass.
//!
//! Anything a peer sends (a worker id, a host name, a leave reason, a
//! failure message) may hold newlines that forge log lines, terminal escape
//! sequences, or megabytes. [`shown`] bounds such a string to
//! [`MAX_SHOWN_CHARS`] characters (saying how long the original was) and
//! shows control and invisible formatting characters escaped (`\n`,
//! `\u{1b}`), so one log line stays one line and means what it says.
//! [`check_field`] refuses such characters outright where a value becomes an
//! identity. [`RateLimit`] keeps a flood of refusals from flooding the log.

use std::fmt;

/// Most characters of a peer's string that a log line shows.
pub const MAX_SHOWN_CHARS: usize = 200;

/// A peer's string as a log line shows it: see [`shown`].
#[derive(Clone, Copy)]
pub struct Shown<'a>(&'a str);

/// `text` bounded and escaped for a log line (use with `%`).
pub fn shown(text: &str) -> Shown<'_> {
    Shown(text)
}

/// True for characters a log line never shows as themselves: control
/// characters (newline, escape, ...) and invisible formatting characters
/// that can reorder or hide text (bidirectional overrides, zero-width
/// characters).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}')
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown_so_far, c) in self.0.chars().enumerate() {
            if shown_so_far == MAX_SHOWN_CHARS {
                return write!(f, "… ({} bytes in all)", self.0.len());
            }
            if c == '\\' || is_unsafe_char(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Checks one identifying field of a peer's message: at most `max_len`
/// bytes, no control or formatting characters. The error names the field
/// and says what is wrong, for the refusal sent back.
pub fn check_field(name: &str, value: &str, max_len: usize) -> Result<(), String> {
    if value.len() > max_len {
        return Err(format!(
            "{name} is {} bytes long; at most {max_len} are allowed",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|&c| is_unsafe_char(c)) {
        return Err(format!(
            "{name} holds the control or formatting character {}",
            c.escape_unicode()
        ));
    }
    Ok(())
}

/// Admits at most `per_second` log lines of one kind per second of the
/// caller's clock, and counts those it holds back.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: u32,
    window_start_us: u64,
    in_window: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A limit of `per_second` lines per second.
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            window_start_us: 0,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now_us`: `Some(n)` if so, `n` being
    /// how many were held back since the last one admitted (to log with
    /// it); `None` if this one is held back.
    pub fn admit(&mut self, now_us: u64) -> Option<u64> {
        if now_us.saturating_sub(self.window_start_us) >= 1_000_000 || now_us < self.window_start_us
        {
            self.window_start_us = now_us;
            self.in_window = 0;
        }
        if self.in_window >= self.per_second {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_escapes_are_shown_escaped() {
        let forged = "w1\n2026-01-01T00:00:00Z INFO worker registered\x1b[2J\\n\u{202e}";
        let line = shown(forged).to_string();
        assert!(!line.contains('\n') && !line.contains('\x1b') && !line.contains('\u{202e}'));
        assert_eq!(
            line,
            "w1\\n2026-01-01T00:00:00Z INFO worker registered\\u{1b}[2J\\\\n\\u{202e}"
        );
        assert_eq!(shown("node-7.cluster").to_string(), "node-7.cluster");
        assert_eq!(format!("{:?}", shown("a\tb")), "\"a\\tb\"");
    }

    #[test]
    fn long_strings_are_cut_with_their_length() {
        let long = "é".repeat(5_000_000);
        let line = shown(&long).to_string();
        assert_eq!(
            line,
            format!("{}… (10000000 bytes in all)", "é".repeat(MAX_SHOWN_CHARS))
        );
        let exact = "x".repeat(MAX_SHOWN_CHARS);
        assert_eq!(shown(&exact).to_string(), exact);
    }

    #[test]
    fn fields_with_control_characters_or_too_long_are_refused() {
        assert_eq!(check_field("host", "node7", 10), Ok(()));
        assert_eq!(
            check_field("worker id", "a\nb", 10).unwrap_err(),
            "worker id holds the control or formatting character \\u{a}"
        );
        assert_eq!(
            check_field("host", &"h".repeat(11), 10).unwrap_err(),
            "host is 11 bytes long; at most 10 are allowed"
        );
    }

    #[test]
    fn the_rate_limit_counts_what_it_holds_back() {
        let mut limit = RateLimit::new(2);
        assert_eq!(limit.admit(0), Some(0));
        assert_eq!(limit.admit(10), Some(0));
        assert_eq!(limit.admit(20), None);
        assert_eq!(limit.admit(999_999), None);
        // A new second: the next line says how many were held back.
        assert_eq!(limit.admit(1_000_000), Some(2));
        assert_eq!(limit.admit(1_000_001), Some(0));
        assert_eq!(limit.admit(1_000_002), None);
        // A clock that steps back starts a new window too.
        assert_eq!(limit.admit(5), Some(1));
    }
}
