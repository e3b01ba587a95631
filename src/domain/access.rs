//! Who may do what: the policies of the route table, users and their roles. No I/O;
//! `config` builds an [`Access`] from config.toml, `auth` finds its users.

use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;

pub trait Policy: 'static {
    const NAME: &'static str;
}

macro_rules! policies {
    ($($(#[$doc:meta])* $ty:ident = $name:literal;)*) => {
        $( $(#[$doc])* pub struct $ty; impl Policy for $ty { const NAME: &'static str = $name; } )*
        /// Every policy name; config may only name these.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

policies! {
    /// List and show images.
    ReadImages = "read_images";
    /// Create and update images.
    CreateImage = "create_image";
    /// Delete images.
    DeleteImage = "delete_image";
    /// Read the audit trail.
    ReadAudit = "read_audit";
}

/// Who may do what: the part of config that SIGHUP swaps.
#[derive(Debug, Clone, Default)]
pub struct Access {
    users: Vec<Arc<User>>,
    by_name: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    /// A PHC string already checked to be argon2id.
    pub password_hash: Option<String>,
    pub token_sha256: Option<[u8; 32]>,
    pub roles: Vec<String>,
    pub policies: BTreeSet<&'static str>,
}

impl User {
    pub fn holds(&self, policy: &str) -> bool {
        self.policies.contains(policy)
    }
}

impl Access {
    /// The table of `users`, whose names are unique (config checks it).
    pub fn new(users: Vec<Arc<User>>) -> Access {
        let by_name = users
            .iter()
            .enumerate()
            .map(|(i, user)| (user.name.clone(), i))
            .collect();
        Access { users, by_name }
    }

    pub fn user(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name).map(|&i| &self.users[i])
    }

    pub fn users(&self) -> &[Arc<User>] {
        &self.users
    }
}

/// Proof that a user holds policy `P`. [`Granted::check`] is the only way to make one,
/// and it refuses a user who does not hold `P`: what needs the proof (the store, for
/// a handler) cannot be reached by a route that forgot its check.
#[derive(Debug)]
pub struct Granted<P: Policy> {
    user: Arc<User>,
    _policy: PhantomData<P>,
}

impl<P: Policy> Granted<P> {
    /// The proof, or the user back when they do not hold `P`.
    pub fn check(user: Arc<User>) -> Result<Granted<P>, Arc<User>> {
        if user.holds(P::NAME) {
            Ok(Granted {
                user,
                _policy: PhantomData,
            })
        } else {
            Err(user)
        }
    }

    pub fn user(&self) -> &Arc<User> {
        &self.user
    }
}

/// Whether the author of a change still holds the policy it was let in with.
pub trait Permit: Send + Sync {
    /// `Err` with the policy's name once it is no longer held.
    fn still_held(&self) -> Result<(), &'static str>;
}

/// A change refused where it was applied: its author lost the policy meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user '{user}' no longer holds policy '{policy}'")]
pub struct Revoked {
    pub user: String,
    pub policy: &'static str,
}

/// Who makes a change, with the check that they still may, which the store makes
/// where the change is applied: a config reload may take the policy away while the
/// change waits for the writer, and a reload applies to every write answered after it.
#[derive(Clone)]
pub struct Author {
    name: String,
    permit: Option<Arc<dyn Permit>>,
}

impl Author {
    pub fn new(name: impl Into<String>, permit: Arc<dyn Permit>) -> Author {
        Author {
            name: name.into(),
            permit: Some(permit),
        }
    }

    /// A change made by a tool (an import from the command line): nothing can take its
    /// right away.
    pub fn tool(name: impl Into<String>) -> Author {
        Author {
            name: name.into(),
            permit: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `Err` once the author lost the policy.
    pub fn still_allowed(&self) -> Result<(), Revoked> {
        match &self.permit {
            Some(permit) => permit.still_held().map_err(|policy| Revoked {
                user: self.name.clone(),
                policy,
            }),
            None => Ok(()),
        }
    }
}

impl From<&str> for Author {
    fn from(name: &str) -> Author {
        Author::tool(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(policies: &[&'static str]) -> Arc<User> {
        Arc::new(User {
            name: "u".into(),
            password_hash: None,
            token_sha256: None,
            roles: vec![],
            policies: policies.iter().copied().collect(),
        })
    }

    #[test]
    fn a_grant_needs_the_policy() {
        assert!(Granted::<ReadImages>::check(user(&["read_images"])).is_ok());
        assert!(Granted::<DeleteImage>::check(user(&["read_images"])).is_err());
        let access = Access::new(vec![user(&[])]);
        assert!(access.user("u").is_some() && access.user("v").is_none());
    }
}
