//! Who a caller is: a uid (the kernel's word on the ipc socket, the token's
//! owner on TCP) turned into a [`Caller`] with every group the user
//! database puts that user in, for the visibility rules of
//! [`crate::core::access`].
//!
//! Looking groups up may ask a directory service (LDAP, SSSD), so answers
//! are kept for a minute per uid; the daemon's own user needs no groups
//! (it sees everything) and is answered without a lookup, which keeps the
//! owner's calls as fast as before.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User, getgrouplist};

use crate::core::Caller;

/// How long a user's groups are taken as known.
const TTL: Duration = Duration::from_secs(60);

/// Most users whose groups are kept; beyond it the cache starts afresh.
const MAX_CACHED: usize = 4096;

/// The uid standing for a caller whose identity could not be read: it
/// owns nothing and is in no group, so it sees only public servables.
pub const NOBODY: u32 = u32::MAX - 1;

/// A user's groups, and when they were looked up.
type Looked = (Instant, Arc<[u32]>);

/// Turns uids into callers, caching their groups.
#[derive(Debug)]
pub struct Identities {
    daemon_uid: u32,
    cache: Mutex<HashMap<u32, Looked>>,
}

impl Identities {
    /// For a daemon running as `daemon_uid`.
    pub fn new(daemon_uid: u32) -> Identities {
        Identities {
            daemon_uid,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The daemon's user.
    pub fn daemon_uid(&self) -> u32 {
        self.daemon_uid
    }

    /// The caller `uid`, whose primary group (as the kernel says, when
    /// known) is `gid`.
    pub fn caller(&self, uid: u32, gid: Option<u32>) -> Caller {
        if uid == self.daemon_uid {
            return Caller::daemon_user(uid);
        }
        let now = Instant::now();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&uid)
                .filter(|(at, _)| now.saturating_duration_since(*at) < TTL)
                .map(|(_, groups)| groups.clone())
        };
        let groups = match cached {
            Some(groups) => groups,
            None => {
                let groups: Arc<[u32]> = Arc::from(groups_of(uid));
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(uid, (now, groups.clone()));
                groups
            }
        };
        let mut all = groups.to_vec();
        if let Some(gid) = gid
            && !all.contains(&gid)
        {
            all.push(gid);
        }
        Caller { uid, groups: all }
    }
}

/// Every group of `uid` in the user database (none for an unknown uid).
fn groups_of(uid: u32) -> Vec<u32> {
    let user = match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user,
        Ok(None) => {
            tracing::debug!(uid, "caller's uid is not in the user database: no groups");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!(uid, error = %e, "cannot look the caller up: no groups");
            return Vec::new();
        }
    };
    let Ok(name) = CString::new(user.name.as_bytes()) else {
        return vec![user.gid.as_raw()];
    };
    match getgrouplist(&name, user.gid) {
        Ok(groups) => groups.into_iter().map(Gid::as_raw).collect(),
        Err(e) => {
            tracing::warn!(uid, error = %e, "cannot list the caller's groups: primary group only");
            vec![user.gid.as_raw()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_user_needs_no_lookup_and_others_get_their_groups() {
        let ids = Identities::new(4_000_000);
        assert_eq!(
            ids.caller(4_000_000, Some(5)),
            Caller::daemon_user(4_000_000)
        );
        // root is in group 0 on every system.
        let root = ids.caller(0, None);
        assert!(root.groups.contains(&0), "{root:?}");
        // An unknown uid has only the group the kernel named.
        let stranger = ids.caller(3_999_999, Some(77));
        assert_eq!(stranger.groups, vec![77]);
        // Cached: the same answer again.
        assert_eq!(ids.caller(0, None), root);
    }
}
