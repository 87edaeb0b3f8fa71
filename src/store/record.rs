//! What the store keeps about a build, as the API shows it.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl BuildState {
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// No more work will happen on a build in this state.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A build as first recorded: by the API on submit (queued) or by a worker on first sight.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub id: String,
    pub request_id: String,
    pub user_id: Option<String>,
    pub repo: Option<String>,
    pub git_ref: Option<String>,
    /// The request without its secrets (see `BuildRequest::public_view`).
    pub request: serde_json::Value,
    pub rebuild_of: Option<String>,
    /// `BuildRequest::fingerprint`; None for a rejected request (it never parsed).
    pub fingerprint: Option<String>,
}

impl NewBuild {
    /// The record of a parsed request, built under `build_id`.
    pub fn of_request(
        build_id: &str,
        request: &crate::request::BuildRequest,
        rebuild_of: Option<String>,
    ) -> Self {
        Self {
            id: build_id.to_owned(),
            request_id: request.id.as_str().to_owned(),
            user_id: Some(request.user_id.as_str().to_owned()),
            repo: Some(request.repo.display()),
            git_ref: request.git_ref.as_ref().map(|r| r.as_str().to_owned()),
            request: request.public_view(),
            rebuild_of,
            fingerprint: Some(request.fingerprint()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildRecord {
    pub id: String,
    pub request_id: String,
    pub state: BuildState,
    pub user_id: Option<String>,
    pub repo: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub request: serde_json::Value,
    pub attempts: i64,
    pub host: Option<String>,
    pub commit: Option<String>,
    pub image: Option<String>,
    pub digest: Option<String>,
    pub tags: Vec<String>,
    pub platforms: Vec<String>,
    pub cached: bool,
    /// How a succeeded build's image was made: cached, incremental or full.
    pub how: Option<String>,
    /// Why it was made that way.
    pub why: Option<String>,
    pub fault: Option<String>,
    pub error: Option<String>,
    pub rebuild_of: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// One entry of a build's history.
#[derive(Debug, Clone, Serialize)]
pub struct StateChange {
    pub state: BuildState,
    pub attempt: i64,
    pub host: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

pub(super) const BUILD_COLUMNS: &str = "id, request_id, state, user_id, repo, git_ref, request, \
    attempts, host, commit_sha, image, digest, tags, platforms, cached, how, why, fault, error, \
    rebuild_of, created_at, started_at, finished_at, updated_at";

impl BuildRecord {
    pub(super) fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        let state: String = row.try_get("state")?;
        let json = |col: &str| -> sqlx::Result<serde_json::Value> {
            let raw: String = row.try_get(col)?;
            Ok(serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null))
        };
        let list = |col: &str| -> sqlx::Result<Vec<String>> {
            let raw: String = row.try_get(col)?;
            Ok(serde_json::from_str(&raw).unwrap_or_default())
        };
        let at = |col: &str| -> sqlx::Result<Option<OffsetDateTime>> {
            let ms: Option<i64> = row.try_get(col)?;
            Ok(ms.map(from_millis))
        };
        Ok(Self {
            id: row.try_get("id")?,
            request_id: row.try_get("request_id")?,
            state: BuildState::parse(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown build state {state:?}").into())
            })?,
            user_id: row.try_get("user_id")?,
            repo: row.try_get("repo")?,
            git_ref: row.try_get("git_ref")?,
            request: json("request")?,
            attempts: row.try_get("attempts")?,
            host: row.try_get("host")?,
            commit: row.try_get("commit_sha")?,
            image: row.try_get("image")?,
            digest: row.try_get("digest")?,
            tags: list("tags")?,
            platforms: list("platforms")?,
            cached: row.try_get::<i64, _>("cached")? != 0,
            how: row.try_get("how")?,
            why: row.try_get("why")?,
            fault: row.try_get("fault")?,
            error: row.try_get("error")?,
            rebuild_of: row.try_get("rebuild_of")?,
            created_at: at("created_at")?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
            started_at: at("started_at")?,
            finished_at: at("finished_at")?,
            updated_at: at("updated_at")?.unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }
}

impl StateChange {
    pub(super) fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        let state: String = row.try_get("state")?;
        Ok(Self {
            state: BuildState::parse(&state).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown build state {state:?}").into())
            })?,
            attempt: row.try_get("attempt")?,
            host: row.try_get("host")?,
            at: from_millis(row.try_get("at")?),
        })
    }
}

pub fn now_millis() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
