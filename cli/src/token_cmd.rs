//! `flotilla token create|list|revoke`: the API tokens of the daemon of this
//! state directory, for clients on other hosts (see `docs/security.md`).
//! They edit the daemon's token file directly, so they work with the daemon
//! running or not; a running daemon sees a change at its next call.

use std::io::Read as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use flotilla_engine::tokens::{NewToken, TokenFile};
use flotilla_protocol::token::TokenRecord;

use crate::Failure;
use crate::args::TokenCmd;

/// A duration from the command line: a number with an optional unit, `s`
/// (default), `m`, `h` or `d`.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 3600, 90m, 12h, 30d)"))?;
    match value.checked_mul(scale) {
        Some(s) if s > 0 && s <= 100 * 365 * 86_400 => Ok(Duration::from_secs(s)),
        _ => Err(format!(
            "`{text}`: must be more than 0 and at most 100 years"
        )),
    }
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("/dev/urandom")?;
    Ok(bytes)
}

/// Runs a `token` subcommand.
pub(crate) fn token(command: TokenCmd) -> Result<(), Failure> {
    let dir = crate::daemon_cmd::client_state_dir()?;
    let file = TokenFile::new(&dir);
    match command {
        TokenCmd::Create {
            name,
            expires,
            servables,
            read_only,
            owner,
        } => {
            let now = now_unix_s();
            let owner_uid = match owner {
                Some(text) => {
                    crate::ids::user_id(&text).map_err(|e| Failure::Usage(e.context("--owner")))?
                }
                None => nix::unistd::geteuid().as_raw(),
            };
            let spec = NewToken {
                name,
                expires_unix_s: expires.map(|d| now.saturating_add(d.as_secs())),
                servables,
                read_only,
                owner_uid: Some(owner_uid),
            };
            if !dir.is_dir() {
                return Err(Failure::Usage(anyhow!(
                    "{} is not a directory: run the daemon once, or set FLOTILLA_HOME to its state directory",
                    dir.display()
                )));
            }
            let (token, record) = file
                .create(spec, now, (random()?, random()?))
                .map_err(|e| Failure::Usage(e.into()))?;
            eprintln!(
                "token `{}` created ({}); it is shown only now. On the client, put it in FLOTILLA_TOKEN or in $FLOTILLA_HOME/token (chmod 600).",
                record.name,
                describe(&record, now)
            );
            println!("{}", token.reveal());
            Ok(())
        }
        TokenCmd::List { json } => {
            let tokens = file.load().map_err(|e| Failure::Other(e.into()))?;
            if json {
                let text =
                    serde_json::to_string_pretty(&tokens).map_err(|e| Failure::Other(e.into()))?;
                println!("{text}");
                return Ok(());
            }
            let now = now_unix_s();
            for t in &tokens {
                println!("{}\t{}\t{}", t.name, t.id, describe(t, now));
            }
            Ok(())
        }
        TokenCmd::Revoke { which } => {
            let record = file
                .revoke(&which, now_unix_s())
                .map_err(|e| Failure::Usage(e.into()))?;
            eprintln!(
                "token `{}` ({}) is revoked; the daemon refuses it from its next call",
                record.name, record.id
            );
            Ok(())
        }
    }
}

/// A token's state and scope, in words.
fn describe(t: &TokenRecord, now: u64) -> String {
    let state = match (t.revoked_unix_s, t.expires_unix_s) {
        (Some(_), _) => "revoked".to_owned(),
        (None, Some(at)) if at <= now => "expired".to_owned(),
        (None, Some(at)) => format!("expires in {} s", at - now),
        (None, None) => "never expires".to_owned(),
    };
    let scope = if t.servables.is_empty() {
        "every servable".to_owned()
    } else {
        format!("servables {}", t.servables.join(","))
    };
    let access = if t.read_only {
        "read-only"
    } else {
        "read-write"
    };
    let owner = t
        .owner_uid
        .map_or_else(|| "the daemon's user".to_owned(), crate::ids::user_name);
    format!("{state}, {access}, {scope}, calls as {owner}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_and_refuse_nonsense() {
        assert_eq!(duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(duration("30d"), Ok(Duration::from_secs(2_592_000)));
        for bad in ["", "0", "-1h", "3w", "h", "1e9d", "soon"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
