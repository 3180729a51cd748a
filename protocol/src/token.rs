//! API tokens: what a client off the daemon's host presents (by proof, never
//! by value) on the daemon's TCP client API, what the daemon stores of one,
//! and the pure checks of a call against a token's scope.
//!
//! A token is `flt_<id>_<secret>`: a public id of [`ID_BYTES`] random bytes
//! (how the daemon finds its record) and a secret of [`SECRET_BYTES`] random
//! bytes, both hex. The secret is the seed of an X25519 key pair; the daemon
//! stores only its public half, the *verifier* ([`Token::verifier`]). The
//! client proves it holds the secret in the handshake of
//! [`crate::client_auth`] by an X25519 agreement with the daemon's fresh
//! key, so neither the token nor anything that lets one pass for its holder
//! crosses the wire or sits in the daemon's token file.
//!
//! The checks ([`check_live`], [`check_call`]) take the record, the call
//! and the time, and say what is refused and why, in words for the caller.

use serde::{Deserialize, Serialize};

use crate::client::ClientCall;
use crate::handshake::PublicKey;
use crate::secret::{from_hex, to_hex};
use crate::secure::Ephemeral;

/// Bytes of a token's public id.
pub const ID_BYTES: usize = 8;

/// Bytes of a token's secret (256 bits, drawn from the operating system).
pub const SECRET_BYTES: usize = 32;

/// What every token starts with (so it is recognisable in a file, and a
/// leaked one is easy to search for).
pub const PREFIX: &str = "flt_";

/// Environment variable holding a token for clients off the daemon's host.
pub const TOKEN_ENV: &str = "FLOTILLA_TOKEN";

/// Context of the derivation of a token's static X25519 key (BLAKE3's
/// `derive_key`).
const STATIC_KEY_CONTEXT: &str = "flotilla 2026-12 api token static key v1";

/// A token, as its holder has it. Zeroed when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: [u8; SECRET_BYTES],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

/// Why text is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a Flotilla token (expected {PREFIX}<{id} hex digits>_<{secret} hex digits>, as `flotilla token create` prints it)",
    id = ID_BYTES * 2,
    secret = SECRET_BYTES * 2
)]
pub struct BadToken;

impl Token {
    /// The token made of `id` and `secret` (random bytes the caller drew).
    pub fn from_random(id: [u8; ID_BYTES], secret: [u8; SECRET_BYTES]) -> Token {
        Token {
            id: to_hex(&id),
            secret,
        }
    }

    /// Reads a token (surrounding space ignored).
    pub fn parse(text: &str) -> Result<Token, BadToken> {
        let rest = text.trim().strip_prefix(PREFIX).ok_or(BadToken)?;
        let (id, secret) = rest.split_once('_').ok_or(BadToken)?;
        let id_bytes = from_hex(id).ok_or(BadToken)?;
        let secret = from_hex(secret).ok_or(BadToken)?;
        if id_bytes.len() != ID_BYTES {
            return Err(BadToken);
        }
        let secret = <[u8; SECRET_BYTES]>::try_from(secret.as_slice()).map_err(|_| BadToken)?;
        Ok(Token {
            id: id.to_ascii_lowercase(),
            secret,
        })
    }

    /// The token as its holder writes it down: shown once, at creation.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, to_hex(&self.secret))
    }

    /// The public id (hex).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The token's static X25519 key: its secret half never leaves the
    /// holder.
    pub fn static_key(&self) -> Ephemeral {
        Ephemeral::from_random(blake3::derive_key(STATIC_KEY_CONTEXT, &self.secret))
    }

    /// What the daemon stores: the static key's public half. It does not
    /// give the token back, nor let anybody pass for its holder.
    pub fn verifier(&self) -> PublicKey {
        self.static_key().public()
    }
}

/// What the daemon keeps of a token (its token file holds a list of these).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// The public id (hex), as in the token.
    pub id: String,
    /// A name for people (`--name`; unique among the tokens).
    pub name: String,
    /// The verifier (hex): see [`Token::verifier`].
    pub verifier: String,
    /// When it was made (Unix seconds).
    pub created_unix_s: u64,
    /// When it stops working (Unix seconds), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_s: Option<u64>,
    /// When it was revoked (Unix seconds), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_unix_s: Option<u64>,
    /// The servables (names, no version) it may use; empty: every one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servables: Vec<String>,
    /// Only reads: no submit, run, publish, remove or cancel.
    #[serde(default)]
    pub read_only: bool,
    /// The user (uid) a call with this token is made as, for servable
    /// ownership and visibility: who created it, or whom `--owner` named.
    /// None in tokens made before visibility existed: the daemon's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_uid: Option<u32>,
}

impl TokenRecord {
    /// The verifier as a key, if the record's text is one.
    pub fn verifier_key(&self) -> Option<PublicKey> {
        from_hex(&self.verifier).and_then(|b| PublicKey::try_from(b.as_slice()).ok())
    }

    /// Whether the token may see servable `name` (`NAME` or
    /// `NAME@VERSION`).
    pub fn allows_servable(&self, name: &str) -> bool {
        let base = name.split_once('@').map_or(name, |(base, _)| base);
        self.servables.is_empty() || self.servables.iter().any(|s| s == base)
    }
}

/// Why a token's call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Past its expiry.
    #[error(
        "token `{name}` expired {ago_s} s ago; make a new one with `flotilla token create` on the daemon's host"
    )]
    Expired {
        /// The token's name.
        name: String,
        /// Seconds since it expired.
        ago_s: u64,
    },
    /// Revoked.
    #[error(
        "token `{name}` was revoked; make a new one with `flotilla token create` on the daemon's host"
    )]
    Revoked {
        /// The token's name.
        name: String,
    },
    /// A read-only token asked for a change.
    #[error("token `{name}` is read-only: {call} is refused")]
    ReadOnly {
        /// The token's name.
        name: String,
        /// What was asked.
        call: &'static str,
    },
    /// A servable outside the token's list.
    #[error("token `{name}` may not use servable `{servable}` (it may use: {allowed})")]
    OutsideScope {
        /// The token's name.
        name: String,
        /// The servable asked for.
        servable: String,
        /// The servables it may use, comma-separated.
        allowed: String,
    },
    /// A call only the daemon's own host may make.
    #[error(
        "{call} is only taken on the daemon's own host (its ipc socket), never over the network"
    )]
    LocalOnly {
        /// What was asked.
        call: &'static str,
    },
}

/// Whether the token works at all at `now_unix_s`: not revoked, not
/// expired.
pub fn check_live(record: &TokenRecord, now_unix_s: u64) -> Result<(), Denial> {
    if record.revoked_unix_s.is_some() {
        return Err(Denial::Revoked {
            name: record.name.clone(),
        });
    }
    match record.expires_unix_s {
        Some(at) if now_unix_s >= at => Err(Denial::Expired {
            name: record.name.clone(),
            ago_s: now_unix_s - at,
        }),
        _ => Ok(()),
    }
}

/// What a call does to the daemon, for the checks.
enum Effect<'a> {
    /// Reads only, naming no servable.
    Read,
    /// Reads one servable's records.
    ReadServable(&'a str),
    /// Changes something, naming these servables (none: tasks by id).
    Change(&'static str, Vec<&'a str>),
    /// Only from the daemon's host.
    Local(&'static str),
}

fn effect(call: &ClientCall) -> Effect<'_> {
    match call {
        ClientCall::Ping
        | ClientCall::Events { .. }
        | ClientCall::Results { .. }
        | ClientCall::DaemonStatus
        | ClientCall::TaskStatus { .. }
        | ClientCall::ListServables
        | ClientCall::SearchServables(_)
        | ClientCall::MemoStats
        | ClientCall::ListTasks(_)
        | ClientCall::Settled { .. }
        | ClientCall::TaskEvents { .. } => Effect::Read,
        ClientCall::ShowServable { name } | ClientCall::ServableVersions { name } => {
            Effect::ReadServable(name)
        }
        ClientCall::Submit { tasks, wait_ms } => Effect::Change(
            if wait_ms.is_some() { "run" } else { "submit" },
            tasks.iter().map(|t| t.servable.as_str()).collect(),
        ),
        ClientCall::Cancel { .. } => Effect::Change("cancel", Vec::new()),
        ClientCall::Publish { record } => {
            Effect::Change("publish", vec![record.spec.name.as_str()])
        }
        ClientCall::RemoveServable { id } => Effect::Change("remove", vec![id.as_str()]),
        ClientCall::WarmServable { servable, .. } => {
            Effect::Change("warm", vec![servable.as_str()])
        }
        ClientCall::SetServableAccess { name, .. } => {
            Effect::Change("servable access", vec![name.as_str()])
        }
        ClientCall::Stop => Effect::Local("stop"),
        ClientCall::ResumePool { .. } => Effect::Local("pool resume"),
        ClientCall::MemoClear { .. } => Effect::Local("memo clear"),
    }
}

/// Whether the token of `record` may make `call` at `now_unix_s`: live
/// ([`check_live`]), within its servables, and no change if it is
/// read-only. Admin calls (stop, pool resume, memo clear) are never taken
/// with a token.
pub fn check_call(record: &TokenRecord, call: &ClientCall, now_unix_s: u64) -> Result<(), Denial> {
    check_live(record, now_unix_s)?;
    let (change, servables) = match effect(call) {
        Effect::Read => return Ok(()),
        Effect::Local(call) => return Err(Denial::LocalOnly { call }),
        Effect::ReadServable(name) => (None, vec![name]),
        Effect::Change(what, names) => (Some(what), names),
    };
    if let Some(call) = change
        && record.read_only
    {
        return Err(Denial::ReadOnly {
            name: record.name.clone(),
            call,
        });
    }
    match servables.into_iter().find(|s| !record.allows_servable(s)) {
        Some(servable) => Err(Denial::OutsideScope {
            name: record.name.clone(),
            servable: servable.to_owned(),
            allowed: record.servables.join(", "),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Payload;
    use crate::client::TaskRequest;

    fn record() -> TokenRecord {
        TokenRecord {
            id: "0011223344556677".into(),
            name: "ci".into(),
            verifier: "00".repeat(32),
            created_unix_s: 100,
            expires_unix_s: None,
            revoked_unix_s: None,
            servables: vec![],
            read_only: false,
            owner_uid: None,
        }
    }

    fn submit(servable: &str, wait: bool) -> ClientCall {
        ClientCall::Submit {
            tasks: vec![TaskRequest {
                servable: servable.into(),
                input: Payload::new(),
                params: Payload::new(),
            }],
            wait_ms: wait.then_some(1000),
        }
    }

    #[test]
    fn a_token_reads_back_and_never_prints_its_secret() {
        let token = Token::from_random([0xab; ID_BYTES], [7; SECRET_BYTES]);
        let text = token.reveal();
        assert!(text.starts_with("flt_abababababababab_0707"));
        let back = Token::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(back, token);
        assert_eq!(back.verifier(), token.verifier());
        assert!(!format!("{token:?}").contains("0707"));
        for bad in [
            "",
            "flt_",
            "abc",
            &text[..text.len() - 2],
            &text.replace("flt_", "flx_"),
            "flt_abababababababab_zz",
            "flt_abab_0707070707070707070707070707070707070707070707070707070707070707",
        ] {
            assert_eq!(Token::parse(bad), Err(BadToken), "{bad:?}");
        }
        // The verifier is not the secret, and differs per secret.
        let other = Token::from_random([0xab; ID_BYTES], [8; SECRET_BYTES]);
        assert_ne!(token.verifier(), other.verifier());
        assert_ne!(token.verifier(), [7; 32]);
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused_whatever_the_call() {
        let mut r = record();
        assert_eq!(check_call(&r, &ClientCall::Ping, 1000), Ok(()));
        r.expires_unix_s = Some(500);
        assert_eq!(check_live(&r, 499), Ok(()));
        let e = check_call(&r, &ClientCall::Ping, 600).unwrap_err();
        assert_eq!(
            e,
            Denial::Expired {
                name: "ci".into(),
                ago_s: 100
            }
        );
        assert!(e.to_string().contains("expired 100 s ago"), "{e}");
        assert!(check_live(&r, 500).is_err(), "expiry is exclusive");
        r.expires_unix_s = None;
        r.revoked_unix_s = Some(200);
        let e = check_call(&r, &submit("echo", true), 300).unwrap_err();
        assert!(e.to_string().contains("token `ci` was revoked"), "{e}");
    }

    #[test]
    fn read_only_tokens_read_and_change_nothing() {
        let mut r = record();
        r.read_only = true;
        for call in [
            ClientCall::ListServables,
            ClientCall::DaemonStatus,
            ClientCall::Results {
                ids: vec![],
                wait_ms: None,
            },
            ClientCall::ShowServable {
                name: "echo".into(),
            },
        ] {
            assert_eq!(check_call(&r, &call, 0), Ok(()), "{call:?}");
        }
        for (call, what) in [
            (submit("echo", true), "run"),
            (submit("echo", false), "submit"),
            (ClientCall::Cancel { ids: vec![] }, "cancel"),
            (
                ClientCall::RemoveServable {
                    id: "echo@1".into(),
                },
                "remove",
            ),
        ] {
            let e = check_call(&r, &call, 0).unwrap_err();
            assert_eq!(
                e,
                Denial::ReadOnly {
                    name: "ci".into(),
                    call: what
                }
            );
            assert!(e.to_string().contains("read-only"), "{e}");
        }
    }

    #[test]
    fn a_token_limited_to_servables_uses_only_those() {
        let mut r = record();
        r.servables = vec!["echo".into(), "double".into()];
        assert_eq!(check_call(&r, &submit("echo", true), 0), Ok(()));
        assert_eq!(check_call(&r, &submit("echo@1.2.0", false), 0), Ok(()));
        let e = check_call(&r, &submit("secret-model", true), 0).unwrap_err();
        assert!(
            e.to_string()
                .contains("may not use servable `secret-model` (it may use: echo, double)"),
            "{e}"
        );
        // One task outside the list refuses the whole request.
        let mut both = submit("echo", false);
        if let ClientCall::Submit { tasks, .. } = &mut both {
            tasks.push(TaskRequest {
                servable: "other".into(),
                input: Payload::new(),
                params: Payload::new(),
            });
        }
        assert!(check_call(&r, &both, 0).is_err());
        assert!(
            check_call(
                &r,
                &ClientCall::ShowServable {
                    name: "other@1".into()
                },
                0
            )
            .is_err()
        );
        assert!(r.allows_servable("double@2"));
        assert!(!r.allows_servable("doubled"));
    }

    #[test]
    fn admin_calls_are_never_taken_with_a_token() {
        let r = record();
        for call in [
            ClientCall::Stop,
            ClientCall::ResumePool { name: "p".into() },
            ClientCall::MemoClear { servable: None },
        ] {
            let e = check_call(&r, &call, 0).unwrap_err();
            assert!(matches!(e, Denial::LocalOnly { .. }), "{call:?}");
            assert!(
                e.to_string()
                    .contains("only taken on the daemon's own host")
            );
        }
    }
}
