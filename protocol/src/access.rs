//! Who may see and use a servable: its owner and its visibility.
//!
//! A servable belongs to the user who first published its name (the
//! daemon records the caller's uid; a client cannot choose it). Its
//! [`Access`] says who else may find and invoke it: nobody
//! ([`Visibility::Owner`], the default), listed users and members of listed
//! Unix groups, or everybody who can reach the daemon
//! ([`Visibility::Public`]). Users and groups are numeric ids, resolved
//! from names by the client on the daemon's host, so renaming an account
//! changes nothing. The decisions themselves are in the engine's core.

use serde::{Deserialize, Serialize};

/// Who besides the owner (and the listed users and groups) may see a
/// servable.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Only the owner, and the listed users and groups.
    #[default]
    Owner,
    /// Everybody who can call the daemon.
    Public,
}

impl Visibility {
    /// The word used in `servable.toml` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Owner => "owner",
            Visibility::Public => "public",
        }
    }
}

impl std::str::FromStr for Visibility {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Visibility::Owner),
            "public" => Ok(Visibility::Public),
            other => Err(format!(
                "visibility `{other}` is neither `owner` nor `public`"
            )),
        }
    }
}

/// A servable's owner and who else may see and invoke it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Access {
    /// The owner's uid, set by the daemon at the first publication of the
    /// name (what a client sends here is ignored); none on records of
    /// releases before visibility, which belong to the daemon's user.
    pub owner: Option<u32>,
    /// Owner only, or public.
    pub visibility: Visibility,
    /// Further users (uids) who may see and invoke it.
    pub users: Vec<u32>,
    /// Unix groups (gids) whose members may see and invoke it.
    pub groups: Vec<u32>,
    /// Whether everybody who may invoke it shares its memo entries. Off
    /// (the default), each caller's requests are answered only from its
    /// own earlier results, so a fast answer tells nobody what another
    /// user sent; on, an identical request by anyone who may see it is
    /// answered from the store (the owner's choice, for servables whose
    /// inputs say nothing about who sent them). Last, and left out when
    /// off, so records from before it read as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_memo: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_memo_is_a_fifth_field_left_out_when_off() {
        let private = Access {
            owner: Some(1000),
            visibility: Visibility::Public,
            users: vec![1001],
            groups: vec![],
            shared_memo: false,
        };
        let bytes = rmp_serde::to_vec(&private).unwrap();
        // Encoded as before the field existed: four fields.
        let old: (Option<u32>, Visibility, Vec<u32>, Vec<u32>) =
            rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(old.0, Some(1000));
        let back: Access = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, private);
        let shared = Access {
            shared_memo: true,
            ..private
        };
        let back: Access = rmp_serde::from_slice(&rmp_serde::to_vec(&shared).unwrap()).unwrap();
        assert!(back.shared_memo);
    }
}
