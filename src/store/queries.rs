//! Reads for the API: one build, lists with cursor paging, images, repositories.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::BuildStore;
use super::record::{BUILD_COLUMNS, BuildRecord, BuildState, StateChange, from_millis};
use crate::error::StoreError;

/// Filters of `GET /v1/builds`; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub repo: Option<String>,
    pub git_ref: Option<String>,
    pub state: Option<BuildState>,
    pub user_id: Option<String>,
    /// The tenants whose builds may be listed (an API key's scope); `None`: every one.
    pub users: Option<Vec<String>>,
}

/// Which of a repository's good builds `GET /v1/repos/{name}/versions` lists, newest first.
#[derive(Debug, Clone, Copy)]
pub struct VersionFilter<'a> {
    /// Only builds of this ref.
    pub git_ref: Option<&'a str>,
    /// Only the newest build of each ref: the versions there are, as one line each.
    pub newest_per_ref: bool,
    pub limit: u32,
}

/// One page of a newest-first list and the cursor of the next one.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    pub builds: Vec<BuildRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RepoSummary {
    pub name: String,
    pub builds: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub last_build_at: time::OffsetDateTime,
}

/// Position after the last row of a page: (created_at, id), opaque to clients.
struct Cursor {
    created_at: i64,
    id: String,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.created_at, self.id))
    }

    fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (at, id) = text.split_once(':')?;
        Some(Self {
            created_at: at.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// A value bound to a dynamically assembled query.
enum Bound {
    Text(String),
    Int(i64),
}

/// `user_id IN ($first, ...)` for a tenant scope, with its values; `None` for no scope. An empty
/// scope matches nothing.
fn users_condition(users: Option<&[String]>, first: usize) -> Option<(String, Vec<String>)> {
    let users = users?;
    if users.is_empty() {
        return Some(("1 = 0".into(), Vec::new()));
    }
    let params: Vec<String> = (first..first + users.len())
        .map(|n| format!("${n}"))
        .collect();
    Some((
        format!("user_id IN ({})", params.join(", ")),
        users.to_vec(),
    ))
}

/// ` AND <scope condition>` to append to a WHERE clause, or nothing.
pub(super) fn scoped(users: Option<&[String]>, first: usize) -> (String, Vec<String>) {
    users_condition(users, first)
        .map(|(condition, values)| (format!(" AND {condition}"), values))
        .unwrap_or_default()
}

/// A cursor that does not decode: the API answers 400 naming `cursor`.
#[derive(Debug, thiserror::Error)]
#[error("is not a cursor returned by this API")]
pub struct BadCursor;

impl BuildStore {
    pub async fn get(&self, id: &str) -> Result<Option<BuildRecord>, StoreError> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(BuildRecord::from_row).transpose()?)
    }

    pub async fn state(&self, id: &str) -> Result<Option<BuildState>, StoreError> {
        let row = sqlx::query("SELECT state FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .map(|r| r.try_get::<String, _>("state"))
            .transpose()?
            .and_then(|s| BuildState::parse(&s)))
    }

    pub async fn history_of(&self, id: &str) -> Result<Vec<StateChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, attempt, host, at FROM build_states WHERE build_id = $1 ORDER BY n",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(StateChange::from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// Newest first. `cursor` comes from a previous page's `next_cursor`.
    pub async fn list(
        &self,
        filter: &BuildFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Result<Page, BadCursor>, StoreError> {
        let cursor = match cursor.map(Cursor::decode) {
            Some(None) => return Ok(Err(BadCursor)),
            Some(Some(c)) => Some(c),
            None => None,
        };
        // Only the filters in use go into the SQL, so the planner can walk an index in order.
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<Bound> = Vec::new();
        let mut bind = |column: &str, value: Option<Bound>| {
            if let Some(value) = value {
                values.push(value);
                conditions.push(format!("{column} = ${}", values.len()));
            }
        };
        bind("repo", filter.repo.clone().map(Bound::Text));
        bind("git_ref", filter.git_ref.clone().map(Bound::Text));
        bind(
            "state",
            filter.state.map(|s| Bound::Text(s.as_str().into())),
        );
        bind("user_id", filter.user_id.clone().map(Bound::Text));
        if let Some((condition, users)) = users_condition(filter.users.as_deref(), values.len() + 1)
        {
            conditions.push(condition);
            values.extend(users.into_iter().map(Bound::Text));
        }
        if let Some(c) = &cursor {
            values.push(Bound::Int(c.created_at));
            values.push(Bound::Text(c.id.clone()));
            let (at, id) = (values.len() - 1, values.len());
            conditions.push(format!(
                "(created_at < ${at} OR (created_at = ${at} AND id < ${id}))"
            ));
        }
        let mut sql = format!("SELECT {BUILD_COLUMNS} FROM builds");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        // One row more than asked tells whether there is a next page.
        sql.push_str(&format!(
            " ORDER BY created_at DESC, id DESC LIMIT {}",
            u64::from(limit) + 1
        ));
        // Safe: the SQL is made of fixed fragments; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in values {
            query = match value {
                Bound::Text(t) => query.bind(t),
                Bound::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut builds = rows
            .iter()
            .map(BuildRecord::from_row)
            .collect::<sqlx::Result<Vec<_>>>()?;
        let next_cursor = if builds.len() > limit as usize {
            builds.truncate(limit as usize);
            builds.last().map(|b| {
                Cursor {
                    created_at: (b.created_at.unix_timestamp_nanos() / 1_000_000) as i64,
                    id: b.id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok(Ok(Page {
            builds,
            next_cursor,
        }))
    }

    /// The newest succeeded build of `repo` (and `git_ref`, and `platform` when given) among the
    /// builds of `users` (`None`: everyone's).
    pub async fn latest_image(
        &self,
        repo: &str,
        git_ref: Option<&str>,
        platform: Option<&str>,
        users: Option<&[String]>,
    ) -> Result<Option<BuildRecord>, StoreError> {
        // A build without platforms is of the host's platform.
        let native = platform.is_some_and(|p| p == native_platform());
        let pattern = platform.map(|p| format!("%\"{p}\"%"));
        let (scope, scope_users) = scoped(users, 5);
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds WHERE state = 'succeeded' AND repo = $1 \
             AND ($2 IS NULL OR git_ref = $2) \
             AND ($3 IS NULL OR platforms LIKE $3 OR ($4 = 1 AND platforms = '[]')){scope} \
             ORDER BY finished_at DESC, id DESC LIMIT 1"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(repo)
            .bind(git_ref)
            .bind(pattern)
            .bind(i64::from(native));
        for user in scope_users {
            query = query.bind(user);
        }
        let row = query.fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(BuildRecord::from_row).transpose()?)
    }

    /// Repositories with builds of `users` (`None`: anyone's).
    pub async fn repos(&self, users: Option<&[String]>) -> Result<Vec<RepoSummary>, StoreError> {
        let (scope, scope_users) = scoped(users, 1);
        let sql = format!(
            "SELECT repo, COUNT(*) AS builds, MAX(created_at) AS last FROM builds \
             WHERE repo IS NOT NULL{scope} GROUP BY repo ORDER BY repo"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for user in scope_users {
            query = query.bind(user);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let summary = |row: &AnyRow| -> sqlx::Result<RepoSummary> {
            Ok(RepoSummary {
                name: row.try_get("repo")?,
                builds: row.try_get("builds")?,
                last_build_at: from_millis(row.try_get("last")?),
            })
        };
        Ok(rows.iter().map(summary).collect::<sqlx::Result<_>>()?)
    }

    /// Succeeded builds of `repo` by `users` (`None`: anyone), newest first: its built versions.
    pub async fn versions(
        &self,
        repo: &str,
        filter: &VersionFilter<'_>,
        users: Option<&[String]>,
    ) -> Result<Vec<BuildRecord>, StoreError> {
        let (scope, scope_users) = scoped(users, 4);
        let matching =
            format!("state = 'succeeded' AND repo = $1 AND ($3 IS NULL OR git_ref = $3){scope}");
        // Window functions exist in both stores (SQLite 3.25+, PostgreSQL).
        let sql = if filter.newest_per_ref {
            format!(
                "SELECT {BUILD_COLUMNS} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY git_ref \
                 ORDER BY finished_at DESC, id DESC) AS newest FROM builds WHERE {matching}) \
                 ranked WHERE newest = 1 ORDER BY finished_at DESC, id DESC LIMIT $2"
            )
        } else {
            format!(
                "SELECT {BUILD_COLUMNS} FROM builds WHERE {matching} \
                 ORDER BY finished_at DESC, id DESC LIMIT $2"
            )
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(repo)
            .bind(i64::from(filter.limit))
            .bind(filter.git_ref);
        for user in scope_users {
            query = query.bind(user);
        }
        let rows = query.fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(BuildRecord::from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// Log lines numbered above `after`, in order (at most `limit`).
    pub async fn log_lines(
        &self,
        id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT n, line FROM build_logs WHERE build_id = $1 AND n > $2 ORDER BY n LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get("n")?, r.try_get("line")?)))
            .collect::<sqlx::Result<_>>()?)
    }
}

/// The platform this host builds when a request names none.
pub fn native_platform() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "linux/arm64",
        _ => "linux/amd64",
    }
}
