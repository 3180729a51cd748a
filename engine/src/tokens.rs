//! The daemon's API tokens: `tokens.toml` in the state directory, mode 0600,
//! holding a [`TokenRecord`] per token (its verifier, never the token).
//!
//! `flotilla token create|list|revoke` edit the file directly (no daemon
//! needed), under an exclusive lock on `tokens.lock` and by writing a
//! temporary and renaming it, so readers see the old list or the new one.
//! The daemon reads it through a [`TokenCache`], which reloads it when the
//! file changed: a revocation counts from the next call.
//!
//! A token's secret is 256 random bits. Guessing one from its verifier is
//! as hard as guessing the bits, so the daemon stores the verifier as it is
//! and no slow password hash (a KDF such as Argon2) is needed: those make a
//! low-entropy password costly to guess, and there is nothing low-entropy
//! here to protect.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flotilla_protocol::paths;
use flotilla_protocol::secret::to_hex;
use flotilla_protocol::token::{ID_BYTES, SECRET_BYTES, Token, TokenRecord};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Longest token name.
pub const MAX_NAME: usize = 64;

/// A problem with the token file or a request to change it.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a token list, or is not private.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A name that is taken, empty or odd.
    #[error("token name `{name}`: {message}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// No token has that name or id.
    #[error("no token is named `{0}` or has that id; `flotilla token list` shows them")]
    NotFound(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file's layout.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default, rename = "token")]
    tokens: Vec<TokenRecord>,
}

/// What a new token may do.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Its name; none: `token-<id>`.
    pub name: Option<String>,
    /// When it expires (Unix seconds), if ever.
    pub expires_unix_s: Option<u64>,
    /// The servables it may use; empty: every one.
    pub servables: Vec<String>,
    /// Reads only.
    pub read_only: bool,
    /// The user its calls are made as (see [`TokenRecord::owner_uid`]).
    pub owner_uid: Option<u32>,
}

/// The token file of one state directory.
#[derive(Debug, Clone)]
pub struct TokenFile {
    path: PathBuf,
    lock: PathBuf,
}

impl TokenFile {
    /// The token file of the daemon owning `state_dir`.
    pub fn new(state_dir: &Path) -> TokenFile {
        TokenFile {
            path: paths::tokens_file(state_dir),
            lock: state_dir.join("tokens.lock"),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token's record (none when the file does not exist). A file
    /// group or others may read, or another user's, is refused.
    pub fn load(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let meta = file.metadata().map_err(io_err(&self.path))?;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(self.corrupt(format!("belongs to uid {}, not to this user", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(self.corrupt(format!(
                "mode {:04o} lets group or others read it; run `chmod 600` on it",
                meta.mode() & 0o7777
            )));
        }
        let text = std::io::read_to_string(file).map_err(io_err(&self.path))?;
        let body: Body = toml::from_str(&text).map_err(|e| self.corrupt(e.to_string()))?;
        Ok(body.tokens)
    }

    fn corrupt(&self, message: String) -> TokenError {
        TokenError::Corrupt {
            path: self.path.clone(),
            message,
        }
    }

    /// Runs `change` on the list under the file's lock and writes the
    /// result back.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let lock_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock)
            .map_err(io_err(&self.lock))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err(&self.lock)(std::io::Error::from(e)))?;
        let mut tokens = self.load()?;
        let out = change(&mut tokens)?;
        let text = toml::to_string(&Body { tokens }).map_err(|e| self.corrupt(e.to_string()))?;
        let tmp = self.path.with_extension("toml.tmp");
        let _ = fs::remove_file(&tmp);
        let mut file: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        Ok(out)
    }

    /// Makes a token from `random` (its id and secret, drawn by the
    /// caller) at `now_unix_s`; the token, to show once, and its record.
    pub fn create(
        &self,
        spec: NewToken,
        now_unix_s: u64,
        random: ([u8; ID_BYTES], [u8; SECRET_BYTES]),
    ) -> Result<(Token, TokenRecord), TokenError> {
        let token = Token::from_random(random.0, random.1);
        let name = spec.name.unwrap_or_else(|| format!("token-{}", token.id()));
        check_name(&name)?;
        let record = TokenRecord {
            id: token.id().to_owned(),
            name,
            verifier: to_hex(&token.verifier()),
            created_unix_s: now_unix_s,
            expires_unix_s: spec.expires_unix_s,
            revoked_unix_s: None,
            servables: spec.servables,
            read_only: spec.read_only,
            owner_uid: spec.owner_uid,
        };
        let stored = record.clone();
        self.update(move |tokens| {
            if tokens.iter().any(|t| t.name == stored.name) {
                return Err(TokenError::BadName {
                    name: stored.name.clone(),
                    message: "another token has this name".into(),
                });
            }
            tokens.push(stored);
            Ok(())
        })?;
        Ok((token, record))
    }

    /// Revokes the token named `which` (or with that id) at `now_unix_s`;
    /// its record. A revoked token stays listed, marked.
    pub fn revoke(&self, which: &str, now_unix_s: u64) -> Result<TokenRecord, TokenError> {
        self.update(|tokens| {
            let found = tokens
                .iter_mut()
                .find(|t| t.name == which || t.id == which)
                .ok_or_else(|| TokenError::NotFound(which.to_owned()))?;
            found.revoked_unix_s.get_or_insert(now_unix_s);
            Ok(found.clone())
        })
    }
}

/// A name is 1 to [`MAX_NAME`] letters, digits, `-`, `_` or `.`.
fn check_name(name: &str) -> Result<(), TokenError> {
    let bad = |message: &str| {
        Err(TokenError::BadName {
            name: name.to_owned(),
            message: message.to_owned(),
        })
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return bad("may hold only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// What identifies one version of the file: a rename makes a new inode.
type Version = (u64, i64, i64, u64);

/// The records by id, as of one version of the file.
type Loaded = (Option<Version>, Arc<HashMap<String, TokenRecord>>);

/// The daemon's view of the token file, reloaded when the file changes.
#[derive(Debug)]
pub struct TokenCache {
    file: TokenFile,
    state: Mutex<Loaded>,
}

impl TokenCache {
    /// A cache of `file` (read at the first lookup).
    pub fn new(file: TokenFile) -> TokenCache {
        TokenCache {
            file,
            state: Mutex::new((None, Arc::new(HashMap::new()))),
        }
    }

    /// The record of token `id`, as the file says now. A file that cannot
    /// be read is an error (and no token passes), never a stale answer.
    pub fn lookup(&self, id: &str) -> Result<Option<TokenRecord>, TokenError> {
        let version = match fs::symlink_metadata(self.file.path()) {
            Ok(m) => Some((m.ino(), m.mtime(), m.mtime_nsec(), m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(self.file.path())(e)),
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 != version || version.is_none() {
            let tokens = self.file.load()?;
            *state = (
                version,
                Arc::new(tokens.into_iter().map(|t| (t.id.clone(), t)).collect()),
            );
        }
        Ok(state.1.get(id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn spec(name: &str) -> NewToken {
        NewToken {
            name: Some(name.into()),
            ..NewToken::default()
        }
    }

    #[test]
    fn tokens_are_created_listed_and_revoked_and_only_verifiers_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path());
        assert!(file.load().unwrap().is_empty());
        let (token, record) = file.create(spec("ci"), 100, ([1; 8], [2; 32])).unwrap();
        let (_, other) = file
            .create(NewToken::default(), 100, ([3; 8], [4; 32]))
            .unwrap();
        assert_eq!(other.name, "token-0303030303030303");
        let text = fs::read_to_string(file.path()).unwrap();
        assert!(
            !text.contains(&token.reveal()[20..]),
            "no token in the file"
        );
        assert!(text.contains(&record.verifier));
        let mode = fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(file.load().unwrap(), vec![record.clone(), other.clone()]);

        let e = file.create(spec("ci"), 1, ([5; 8], [6; 32])).unwrap_err();
        assert!(e.to_string().contains("another token has this name"), "{e}");
        let e = file.create(spec("a b"), 1, ([5; 8], [6; 32])).unwrap_err();
        assert!(e.to_string().contains("token name `a b`"), "{e}");

        let revoked = file.revoke("ci", 200).unwrap();
        assert_eq!(revoked.revoked_unix_s, Some(200));
        // By id too; revoking again keeps the first time.
        assert_eq!(
            file.revoke(&other.id, 300).unwrap().revoked_unix_s,
            Some(300)
        );
        assert_eq!(file.revoke("ci", 400).unwrap().revoked_unix_s, Some(200));
        assert!(matches!(
            file.revoke("nope", 1),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn a_readable_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path());
        file.create(spec("ci"), 1, ([1; 8], [2; 32])).unwrap();
        fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let e = file.load().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let cache = TokenCache::new(file.clone());
        assert!(cache.lookup("0101010101010101").is_err());
    }

    #[test]
    fn the_cache_sees_a_revocation_at_the_next_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let file = TokenFile::new(dir.path());
        let cache = TokenCache::new(file.clone());
        assert_eq!(cache.lookup("0101010101010101").unwrap(), None);
        let (token, _) = file.create(spec("ci"), 1, ([1; 8], [2; 32])).unwrap();
        let found = cache.lookup(token.id()).unwrap().unwrap();
        assert_eq!(found.revoked_unix_s, None);
        file.revoke("ci", 5).unwrap();
        let found = cache.lookup(token.id()).unwrap().unwrap();
        assert_eq!(found.revoked_unix_s, Some(5));
    }
}
