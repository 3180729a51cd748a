//! Who may see, invoke and change a servable: pure decisions over the
//! caller's identity and the servable's [`Access`].
//!
//! The rules (see `docs/security.md`, "Identity and visibility"):
//!
//! - The daemon's user (the uid it runs as) administers its daemon: it sees
//!   and may change every servable. It can read the store anyway, so hiding
//!   anything from it would protect nothing, and on a team daemon it is the
//!   account that runs the service.
//! - A servable's owner (who first published its name) sees it and alone
//!   (with the daemon's user) may publish new versions, change its access
//!   or remove it.
//! - Anybody else sees it only when it is public, lists their uid, or lists
//!   one of their groups. What a caller may not see does not exist for
//!   them: lists and searches leave it out, and naming it gets the same
//!   "unknown servable" answer as a name nobody published.
//! - Records published before visibility belong to the daemon's user and
//!   are visible to nobody else, as the single-user daemon always behaved.
//! - Builtins are everybody's.
//! - Stopping the daemon, resuming a pool and clearing memo entries are the
//!   daemon user's alone.
//! - A task belongs to the caller who submitted it: only they (and the
//!   daemon's user) read its status and result, wait on it or cancel it.
//!   Anybody else naming its id gets the answer for an id never handed
//!   out. Tasks stored before tasks had owners are the daemon user's.
//! - The fleet (pools, blocks, workers, their events, the interchange
//!   address) is shown to the daemon's user alone; others see the queues
//!   and warm processes of the servables they may see.

use flotilla_protocol::access::{Access, Visibility};
use flotilla_protocol::servable::ServableRecord;

/// Who makes a call: on the ipc socket the peer's uid (the kernel says,
/// `SO_PEERCRED`) with its groups from the user database; on TCP the
/// token's owner with theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The user.
    pub uid: u32,
    /// Every group the user is in (primary and supplementary).
    pub groups: Vec<u32>,
}

impl Caller {
    /// The daemon's own user (tests, benchmarks, and calls the daemon makes
    /// for itself).
    pub fn daemon_user(uid: u32) -> Caller {
        Caller {
            uid,
            groups: Vec::new(),
        }
    }
}

/// True if `caller` is the daemon's user `daemon_owner`.
pub fn is_admin(caller: &Caller, daemon_owner: u32) -> bool {
    caller.uid == daemon_owner
}

/// The owner `access` names, or the daemon's user for none.
fn owner(access: &Access, daemon_owner: u32) -> u32 {
    access.owner.unwrap_or(daemon_owner)
}

/// True if `caller` may see (find, show, invoke) a servable with `access`.
pub fn may_see(caller: &Caller, access: &Access, daemon_owner: u32) -> bool {
    is_admin(caller, daemon_owner)
        || owner(access, daemon_owner) == caller.uid
        || access.visibility == Visibility::Public
        || access.users.contains(&caller.uid)
        || access.groups.iter().any(|g| caller.groups.contains(g))
}

/// True if `caller` may see `record` (see [`may_see`]).
pub fn may_see_record(caller: &Caller, record: &ServableRecord, daemon_owner: u32) -> bool {
    match &record.access {
        Some(access) => may_see(caller, access, daemon_owner),
        // Before visibility: the daemon's user's, seen by nobody else.
        None => is_admin(caller, daemon_owner),
    }
}

/// True if `caller` may change a servable with `access`: publish a version,
/// change its access, remove one.
pub fn may_manage(caller: &Caller, access: &Access, daemon_owner: u32) -> bool {
    is_admin(caller, daemon_owner) || owner(access, daemon_owner) == caller.uid
}

/// Whose tasks a caller may see and manage: every task (the daemon's
/// user) or those one uid submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskScope {
    /// Every task: the daemon's user.
    All,
    /// The tasks this uid submitted.
    Of(u32),
}

impl TaskScope {
    /// The scope of `caller` on a daemon run by `daemon_owner`.
    pub fn of(caller: &Caller, daemon_owner: u32) -> TaskScope {
        if is_admin(caller, daemon_owner) {
            TaskScope::All
        } else {
            TaskScope::Of(caller.uid)
        }
    }

    /// True if a task submitted by `submitter` is in scope.
    pub fn covers(self, submitter: u32) -> bool {
        match self {
            TaskScope::All => true,
            TaskScope::Of(uid) => uid == submitter,
        }
    }
}

/// Why a publication is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishDenial {
    /// The name belongs to somebody else.
    #[error("the servable name `{name}` is taken by another user; publish under another name")]
    NameTaken {
        /// The name.
        name: String,
    },
}

/// The access a version of `name` gets when `caller` publishes it with
/// `requested` (none: not said), given the servable's `existing` access
/// (none: a new name). A new name belongs to its publisher; a new version
/// of a known one keeps its owner, and takes the requested visibility (for
/// every version) or keeps the one it had.
pub fn on_publish(
    caller: &Caller,
    name: &str,
    existing: Option<&Access>,
    requested: Option<&Access>,
    daemon_owner: u32,
) -> Result<Access, PublishDenial> {
    match existing {
        None => {
            let mut access = requested.cloned().unwrap_or_default();
            access.owner = Some(caller.uid);
            Ok(access)
        }
        Some(existing) if may_manage(caller, existing, daemon_owner) => {
            let mut access = requested.unwrap_or(existing).clone();
            access.owner = Some(owner(existing, daemon_owner));
            Ok(access)
        }
        Some(_) => Err(PublishDenial::NameTaken {
            name: name.to_owned(),
        }),
    }
}

/// `requested` with the owner of `existing` (a change of access never
/// changes the owner).
pub fn changed(existing: &Access, requested: &Access, daemon_owner: u32) -> Access {
    Access {
        owner: Some(owner(existing, daemon_owner)),
        ..requested.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAEMON: u32 = 1000;

    fn user(uid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            groups: groups.to_vec(),
        }
    }

    fn owned_by(owner: u32) -> Access {
        Access {
            owner: Some(owner),
            ..Access::default()
        }
    }

    #[test]
    fn an_owner_only_servable_is_seen_by_its_owner_and_the_daemon_user_alone() {
        let a = owned_by(2001);
        assert!(may_see(&user(2001, &[]), &a, DAEMON));
        assert!(may_see(&user(DAEMON, &[]), &a, DAEMON));
        assert!(!may_see(&user(2002, &[2001]), &a, DAEMON));
        assert!(may_manage(&user(2001, &[]), &a, DAEMON));
        assert!(may_manage(&user(DAEMON, &[]), &a, DAEMON));
        assert!(!may_manage(&user(2002, &[]), &a, DAEMON));
    }

    #[test]
    fn listed_users_groups_and_public_see_but_do_not_manage() {
        let listed = Access {
            users: vec![2002],
            groups: vec![300],
            ..owned_by(2001)
        };
        assert!(may_see(&user(2002, &[]), &listed, DAEMON));
        assert!(may_see(&user(2003, &[5, 300]), &listed, DAEMON));
        assert!(!may_see(&user(2004, &[5]), &listed, DAEMON));
        assert!(!may_manage(&user(2002, &[300]), &listed, DAEMON));
        let public = Access {
            visibility: Visibility::Public,
            ..owned_by(2001)
        };
        assert!(may_see(&user(4242, &[]), &public, DAEMON));
        assert!(!may_manage(&user(4242, &[]), &public, DAEMON));
    }

    #[test]
    fn records_before_visibility_are_the_daemon_users_alone() {
        let old = Access::default();
        assert!(may_see(&user(DAEMON, &[]), &old, DAEMON));
        assert!(!may_see(&user(2001, &[]), &old, DAEMON));
        assert!(!may_manage(&user(2001, &[]), &old, DAEMON));
    }

    #[test]
    fn a_new_name_belongs_to_its_publisher_whatever_the_client_claims() {
        let claimed = Access {
            visibility: Visibility::Public,
            ..owned_by(1)
        };
        let got = on_publish(&user(2001, &[]), "m", None, Some(&claimed), DAEMON).unwrap();
        assert_eq!(got.owner, Some(2001));
        assert_eq!(got.visibility, Visibility::Public);
        let default = on_publish(&user(2001, &[]), "m", None, None, DAEMON).unwrap();
        assert_eq!(default, owned_by(2001));
    }

    #[test]
    fn a_new_version_keeps_the_owner_and_only_the_owner_may_publish_it() {
        let existing = Access {
            users: vec![7],
            ..owned_by(2001)
        };
        let kept = on_publish(&user(2001, &[]), "m", Some(&existing), None, DAEMON).unwrap();
        assert_eq!(kept, existing);
        let public = Access {
            visibility: Visibility::Public,
            ..Access::default()
        };
        let by_admin = on_publish(
            &user(DAEMON, &[]),
            "m",
            Some(&existing),
            Some(&public),
            DAEMON,
        )
        .unwrap();
        assert_eq!(by_admin.owner, Some(2001));
        assert_eq!(by_admin.visibility, Visibility::Public);
        let e = on_publish(&user(7, &[]), "m", Some(&existing), None, DAEMON).unwrap_err();
        assert!(
            e.to_string().contains("`m` is taken by another user"),
            "{e}"
        );
        // An old record's name is the daemon user's.
        assert!(on_publish(&user(7, &[]), "m", Some(&Access::default()), None, DAEMON).is_err());
    }

    #[test]
    fn a_task_is_its_submitters_and_the_daemon_users() {
        let alice = user(2001, &[300]);
        let scope = TaskScope::of(&alice, DAEMON);
        assert_eq!(scope, TaskScope::Of(2001));
        assert!(scope.covers(2001));
        assert!(!scope.covers(2002), "another user's task");
        assert!(!scope.covers(DAEMON), "the daemon user's task");
        let admin = TaskScope::of(&user(DAEMON, &[]), DAEMON);
        assert_eq!(admin, TaskScope::All);
        assert!(admin.covers(2001) && admin.covers(DAEMON));
    }

    #[test]
    fn a_change_of_access_keeps_the_owner() {
        let existing = owned_by(2001);
        let requested = Access {
            visibility: Visibility::Public,
            ..owned_by(99)
        };
        let got = changed(&existing, &requested, DAEMON);
        assert_eq!(got.owner, Some(2001));
        assert_eq!(got.visibility, Visibility::Public);
        assert_eq!(
            changed(&Access::default(), &requested, DAEMON).owner,
            Some(DAEMON)
        );
    }
}
