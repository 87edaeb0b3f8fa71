//! A build id belongs to the request that first used it. Every later write under the id (a
//! worker starting it, an API submit) first checks that it comes from the same request, so a
//! different request cannot run under the id or overwrite its record.

use sqlx::{AnyConnection, Row};

use super::record::{BuildState, NewBuild};
use crate::error::StoreError;

/// What recording a build found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No build had this id: it is recorded now.
    New,
    /// The id is taken by this same request.
    Same(BuildState),
    /// The id is taken by a different request; nothing was written.
    Foreign,
}

/// Who holds an id, as read inside the writer's transaction.
pub(super) struct Holder {
    pub state: BuildState,
    fingerprint: Option<String>,
    user_id: Option<String>,
    repo: Option<String>,
    git_ref: Option<String>,
}

impl Holder {
    pub(super) async fn read(
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<Option<Self>, StoreError> {
        let row = sqlx::query(
            "SELECT state, fingerprint, user_id, repo, git_ref FROM builds WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state")?;
        Ok(Some(Self {
            state: BuildState::parse(&state)
                .ok_or_else(|| StoreError::UnknownState(state.clone()))?,
            fingerprint: row.try_get("fingerprint")?,
            user_id: row.try_get("user_id")?,
            repo: row.try_get("repo")?,
            git_ref: row.try_get("git_ref")?,
        }))
    }

    /// Whether `new` is the request that holds the id. A record without a fingerprint (written
    /// before fingerprints, or a rejected request) is matched on owner, repository and ref: it
    /// never matches a request of another user or repository.
    pub(super) fn is(&self, new: &NewBuild) -> bool {
        let Some(fingerprint) = &new.fingerprint else {
            return false;
        };
        match &self.fingerprint {
            Some(held) => held == fingerprint,
            None => {
                self.user_id.is_some()
                    && self.user_id == new.user_id
                    && self.repo == new.repo
                    && self.git_ref == new.git_ref
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(fingerprint: Option<&str>, user: &str) -> NewBuild {
        NewBuild {
            id: "b".into(),
            request_id: "b".into(),
            user_id: Some(user.into()),
            repo: Some("acme/app".into()),
            git_ref: None,
            request: serde_json::Value::Null,
            rebuild_of: None,
            fingerprint: fingerprint.map(str::to_owned),
        }
    }

    fn holder(fingerprint: Option<&str>, user: &str) -> Holder {
        Holder {
            state: BuildState::Failed,
            fingerprint: fingerprint.map(str::to_owned),
            user_id: Some(user.into()),
            repo: Some("acme/app".into()),
            git_ref: None,
        }
    }

    #[test]
    fn only_the_same_fingerprint_holds_the_id() {
        assert!(holder(Some("v1:a"), "alice").is(&new(Some("v1:a"), "alice")));
        assert!(!holder(Some("v1:a"), "alice").is(&new(Some("v1:b"), "alice")));
        assert!(!holder(Some("v1:a"), "alice").is(&new(None, "alice")));
    }

    #[test]
    fn records_without_one_match_on_owner_and_repo() {
        assert!(holder(None, "alice").is(&new(Some("v1:a"), "alice")));
        assert!(!holder(None, "alice").is(&new(Some("v1:a"), "mallory")));
    }
}
