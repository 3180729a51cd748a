//! Users and groups named on the command line or in `servable.toml`, as
//! the numeric ids the daemon compares: a name is looked up in this host's
//! user database, a number is taken as it is.

use anyhow::{anyhow, bail};
use nix::unistd::{Gid, Group, Uid, User};

/// The uid of `text`: a user name, or a number.
pub(crate) fn user_id(text: &str) -> anyhow::Result<u32> {
    let text = text.trim();
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(uid);
    }
    match User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        Ok(None) => bail!("no user named `{text}` on this host"),
        Err(e) => Err(anyhow!("cannot look up user `{text}`: {e}")),
    }
}

/// The gid of `text`: a group name, or a number.
pub(crate) fn group_id(text: &str) -> anyhow::Result<u32> {
    let text = text.trim();
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => bail!("no group named `{text}` on this host"),
        Err(e) => Err(anyhow!("cannot look up group `{text}`: {e}")),
    }
}

/// `uid` as `name (uid)` when this host knows it, else the number.
pub(crate) fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} ({uid})", user.name),
        _ => uid.to_string(),
    }
}

/// `gid` as `name (gid)` when this host knows it, else the number.
pub(crate) fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(group)) => format!("{} ({gid})", group.name),
        _ => gid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve_and_unknown_names_are_named() {
        assert_eq!(user_id("root").unwrap(), 0);
        assert_eq!(user_id(" 4242 ").unwrap(), 4242);
        assert_eq!(group_id("0").unwrap(), 0);
        let e = user_id("no-such-user-flotilla").unwrap_err().to_string();
        assert!(e.contains("no user named `no-such-user-flotilla`"), "{e}");
        let e = group_id("no-such-group-flotilla").unwrap_err().to_string();
        assert!(e.contains("no group named"), "{e}");
        assert!(user_name(0).starts_with("root (0)"));
    }
}
