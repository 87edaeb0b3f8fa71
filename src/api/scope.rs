//! What the presented API key may do: its role, and the user ids (tenants) whose builds it sees.
//! A build outside the scope is answered exactly like one that does not exist.

use std::sync::Arc;

use super::error::ApiError;
use crate::config::Role;

#[derive(Debug, Clone)]
pub struct Scope {
    role: Role,
    /// `None`: every user id (admin keys).
    users: Option<Arc<[String]>>,
}

impl Scope {
    pub fn new(role: Role, users: Option<Vec<String>>) -> Self {
        Self {
            role,
            users: users.map(Arc::from),
        }
    }

    /// 403 naming both roles when this key's role is below `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role >= needed {
            return Ok(());
        }
        Err(ApiError::forbidden(
            None,
            format!(
                "this API key has the role {:?}; this needs {:?}{}",
                self.role.as_str(),
                needed.as_str(),
                if needed == Role::Admin {
                    ""
                } else {
                    " or \"admin\""
                }
            ),
        ))
    }

    /// Whether a build of `user` is this key's to see. Builds without a user (rejected before
    /// one was known) are only an admin's.
    pub fn may_see(&self, user: Option<&str>) -> bool {
        match (&self.users, user) {
            (None, _) => true,
            (Some(users), Some(user)) => users.iter().any(|u| u == user),
            (Some(_), None) => false,
        }
    }

    /// A submit for a user id outside the scope: the key's own request, so 403 naming the field.
    pub fn may_submit_for(&self, user: &str) -> Result<(), ApiError> {
        self.require(Role::Submit)?;
        if self.may_see(Some(user)) {
            return Ok(());
        }
        Err(ApiError::forbidden(
            Some("user_id"),
            format!("this API key may not act for user {user:?}"),
        ))
    }

    /// The user ids to filter reads by; `None`: every one.
    pub fn users(&self) -> Option<&[String]> {
        self.users.as_deref()
    }
}
