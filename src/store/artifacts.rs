//! A build's artifacts (`build_artifacts`): written with its success, read by the API.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;

use super::BuildStore;
use super::queries::scoped;
use super::record::{BUILD_COLUMNS, BuildRecord, from_millis};
use crate::error::StoreError;
use crate::events::ArtifactRef;

/// One stored artifact of a build.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactRecord {
    pub build_id: String,
    pub name: String,
    pub path: String,
    pub platform: String,
    /// The artifact manifest's digest.
    pub digest: String,
    /// The `tar.gz` blob's digest and size.
    pub blob_digest: String,
    pub size: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

const COLUMNS: &str = "a.build_id, a.name, a.path, a.platform, a.digest, a.blob_digest, a.size, \
    a.created_at";

impl ArtifactRecord {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            build_id: row.try_get("build_id")?,
            name: row.try_get("name")?,
            path: row.try_get("path")?,
            platform: row.try_get("platform")?,
            digest: row.try_get("digest")?,
            blob_digest: row.try_get("blob_digest")?,
            size: row.try_get("size")?,
            created_at: from_millis(row.try_get("created_at")?),
        })
    }
}

/// Replaces the build's artifacts with `artifacts` (a later attempt's list is the one that
/// stands), inside the transaction that records its success.
pub(super) async fn replace(
    tx: &mut sqlx::AnyConnection,
    build_id: &str,
    artifacts: &[ArtifactRef],
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM build_artifacts WHERE build_id = $1")
        .bind(build_id)
        .execute(&mut *tx)
        .await?;
    for a in artifacts {
        sqlx::query(
            "INSERT INTO build_artifacts (build_id, name, platform, path, digest, blob_digest, \
             size, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(build_id)
        .bind(&a.name)
        .bind(&a.platform)
        .bind(&a.path)
        .bind(&a.digest)
        .bind(&a.blob_digest)
        .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

impl BuildStore {
    /// The artifacts of one build, by name and platform.
    pub async fn artifacts(&self, build_id: &str) -> Result<Vec<ArtifactRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM build_artifacts a WHERE a.build_id = $1 \
             ORDER BY a.name, a.platform"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(build_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(ArtifactRecord::from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// The newest artifact `name` of a succeeded build of `repo` (at `git_ref`, for `platform`,
    /// when given) among the builds of `users` (`None`: everyone's), with its build.
    pub async fn latest_artifact(
        &self,
        repo: &str,
        git_ref: Option<&str>,
        name: &str,
        platform: Option<&str>,
        users: Option<&[String]>,
    ) -> Result<Option<(BuildRecord, ArtifactRecord)>, StoreError> {
        let (scope, scope_users) = scoped(users, 5);
        let sql = format!(
            "SELECT {COLUMNS} FROM build_artifacts a JOIN builds b ON b.id = a.build_id \
             WHERE b.state = 'succeeded' AND b.repo = $1 AND ($2 IS NULL OR b.git_ref = $2) \
             AND a.name = $3 AND ($4 IS NULL OR a.platform = $4){} \
             ORDER BY b.finished_at DESC, a.created_at DESC, b.id DESC LIMIT 1",
            scope.replace("user_id", "b.user_id")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(repo)
            .bind(git_ref)
            .bind(name)
            .bind(platform);
        for user in scope_users {
            query = query.bind(user);
        }
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let artifact = ArtifactRecord::from_row(&row)?;
        Ok(self
            .get(&artifact.build_id)
            .await?
            .map(|build| (build, artifact)))
    }

    /// A queued or running build of `repo` (at `git_ref`) among `users`' builds whose request
    /// names the artifact `name`: what a get-or-build waits for instead of queueing another.
    pub async fn pending_artifact_build(
        &self,
        repo: &str,
        git_ref: Option<&str>,
        name: &str,
        users: Option<&[String]>,
    ) -> Result<Option<BuildRecord>, StoreError> {
        let (scope, scope_users) = scoped(users, 3);
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds WHERE state IN ('queued', 'running') \
             AND repo = $1 AND ($2 IS NULL OR git_ref = $2){scope} \
             ORDER BY created_at DESC, id DESC LIMIT 50"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(repo)
            .bind(git_ref);
        for user in scope_users {
            query = query.bind(user);
        }
        let rows = query.fetch_all(&self.pool).await?;
        for row in &rows {
            let build = BuildRecord::from_row(row)?;
            let names_it = build.request["artifacts"]
                .as_array()
                .is_some_and(|list| list.iter().any(|a| a["name"] == name));
            if names_it {
                return Ok(Some(build));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{BuildRef, ImageUpdated};
    use crate::store::{BuildState, NewBuild};

    fn new_build(id: &str, user: &str, artifacts: serde_json::Value) -> NewBuild {
        NewBuild {
            id: id.into(),
            request_id: id.into(),
            user_id: Some(user.into()),
            repo: Some("acme/app".into()),
            git_ref: Some("main".into()),
            request: serde_json::json!({ "artifacts": artifacts }),
            rebuild_of: None,
            fingerprint: Some(format!("fp-{id}")),
        }
    }

    fn artifact(name: &str, digest: &str) -> ArtifactRef {
        ArtifactRef {
            name: name.into(),
            path: format!("/app/{name}"),
            platform: "linux/amd64".into(),
            digest: digest.into(),
            blob_digest: format!("{digest}-blob"),
            size: 42,
        }
    }

    fn pushed(id: &str, user: &str, artifacts: Vec<ArtifactRef>) -> ImageUpdated {
        ImageUpdated {
            build: BuildRef {
                build_id: id.into(),
                request_id: id.into(),
                user_id: Some(user.into()),
                repo: Some("acme/app".into()),
                git_ref: Some("main".into()),
            },
            commit: "c".repeat(40),
            image: "reg/acme/app".into(),
            tags: vec![],
            digest: format!("sha256:{id}"),
            platforms: vec![],
            cached: false,
            duration_ms: 1,
            finished_at: OffsetDateTime::now_utc(),
            how: Default::default(),
            why: String::new(),
            bases: Vec::new(),
            artifacts,
        }
    }

    #[tokio::test]
    async fn artifacts_are_recorded_with_the_success_and_found_within_the_scope() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let store = BuildStore::connect(&url).await.expect("store");
        let names = serde_json::json!([{"name": "dist", "path": "/app/dist"}]);
        for (id, user) in [("b1", "alice"), ("b2", "bob")] {
            store
                .create(&new_build(id, user, names.clone()), BuildState::Queued)
                .await
                .expect("create");
        }
        let pending = store
            .pending_artifact_build("acme/app", Some("main"), "dist", Some(&["alice".into()]))
            .await
            .expect("pending");
        assert_eq!(pending.map(|b| b.id), Some("b1".into()));
        let none = store
            .pending_artifact_build("acme/app", Some("main"), "docs", None)
            .await
            .expect("pending");
        assert!(none.is_none());

        let first = pushed("b1", "alice", vec![artifact("dist", "sha256:d1")]);
        store
            .succeeded("b1", 1, &first, None)
            .await
            .expect("succeeded");
        // A later attempt's list replaces the earlier one.
        let again = pushed(
            "b1",
            "alice",
            vec![artifact("dist", "sha256:d2"), artifact("docs", "sha256:d3")],
        );
        store
            .succeeded("b1", 2, &again, None)
            .await
            .expect("succeeded");
        let listed = store.artifacts("b1").await.expect("list");
        let digests: Vec<&str> = listed.iter().map(|a| a.digest.as_str()).collect();
        assert_eq!(digests, vec!["sha256:d2", "sha256:d3"]);
        assert_eq!(listed[0].size, 42);

        let alice = Some(["alice".to_owned()]);
        let found = store
            .latest_artifact(
                "acme/app",
                Some("main"),
                "dist",
                Some("linux/amd64"),
                alice.as_ref().map(|a| &a[..]),
            )
            .await
            .expect("latest");
        let (build, art) = found.expect("found");
        assert_eq!(
            (build.id.as_str(), art.digest.as_str()),
            ("b1", "sha256:d2")
        );
        let bob = Some(["bob".to_owned()]);
        let hidden = store
            .latest_artifact("acme/app", None, "dist", None, bob.as_ref().map(|a| &a[..]))
            .await
            .expect("latest");
        assert!(hidden.is_none(), "bob's key must not see alice's artifact");
        let other_platform = store
            .latest_artifact("acme/app", None, "dist", Some("linux/arm64"), None)
            .await
            .expect("latest");
        assert!(other_platform.is_none());

        assert!(store.delete("b1").await.expect("delete"));
        assert!(store.artifacts("b1").await.expect("list").is_empty());
    }
}
