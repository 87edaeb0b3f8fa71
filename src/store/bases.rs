//! The base images builds were made on, and the one decision per moved base (`base_moves`).
//! A base update is matched by the base's full reference; a configuration is a request
//! fingerprint, its newest image the newest succeeded build with that fingerprint.

use sqlx::{AnyConnection, Row};

use super::BuildStore;
use super::record::now_millis;
use crate::error::StoreError;
use crate::events::BaseImage;

/// `b` is its configuration's newest succeeded build (a literal, so queries stay static).
macro_rules! newest {
    () => {
        "b.state = 'succeeded' AND b.fingerprint IS NOT NULL AND b.finished_at = \
         (SELECT MAX(n.finished_at) FROM builds n WHERE n.fingerprint = b.fingerprint \
          AND n.state = 'succeeded')"
    };
}

/// How long a replica's claim on a decision lasts before another may finish its work.
const CLAIM_MS: i64 = 120_000;

/// A configuration's newest image, built on a base that has since moved.
#[derive(Debug, Clone)]
pub struct Dependent {
    pub build_id: String,
    /// Its stored request (`BuildRequest::public_view`).
    pub request: serde_json::Value,
    pub commit: String,
    /// The base's digest it was built on.
    pub digest: String,
}

/// Writes a succeeded build's bases (in its state change's transaction).
pub(super) async fn replace(
    conn: &mut AnyConnection,
    build_id: &str,
    bases: &[BaseImage],
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM build_bases WHERE build_id = $1")
        .bind(build_id)
        .execute(&mut *conn)
        .await?;
    for base in bases {
        sqlx::query(
            "INSERT INTO build_bases (build_id, stage, is_final, written, reference, digest, \
             also) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (build_id, stage) DO NOTHING",
        )
        .bind(build_id)
        .bind(&base.stage)
        .bind(i64::from(base.is_final))
        .bind(&base.written)
        .bind(&base.reference)
        .bind(&base.digest)
        .bind(base.also.join(" "))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

impl BuildStore {
    /// The bases recorded for `image@digest` by its newest succeeded build.
    pub async fn bases_of(&self, image: &str, digest: &str) -> Result<Vec<BaseImage>, StoreError> {
        let rows = sqlx::query(
            "SELECT stage, is_final, written, reference, digest, also FROM build_bases \
             WHERE build_id = \
             (SELECT b.id FROM builds b WHERE b.image = $1 AND b.digest = $2 \
              AND b.state = 'succeeded' AND EXISTS \
              (SELECT 1 FROM build_bases x WHERE x.build_id = b.id) \
              ORDER BY b.finished_at DESC LIMIT 1) ORDER BY stage",
        )
        .bind(image)
        .bind(digest)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(BaseImage {
                    stage: row.try_get("stage")?,
                    is_final: row.try_get::<i64, _>("is_final")? != 0,
                    written: row.try_get("written")?,
                    reference: row.try_get("reference")?,
                    digest: row.try_get("digest")?,
                    also: words(&row.try_get::<String, _>("also")?),
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }

    /// Every base reference some configuration's newest image was built on, pinned ones
    /// (`name@sha256:...`) left out: they cannot move.
    pub async fn watched_bases(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT DISTINCT bb.reference FROM build_bases bb JOIN builds b ON b.id = bb.build_id \
             WHERE ",
            newest!(),
            " ORDER BY bb.reference"
        ))
        .fetch_all(&self.pool)
        .await?;
        let references: Vec<String> = rows
            .iter()
            .map(|row| row.try_get("reference"))
            .collect::<sqlx::Result<_>>()?;
        Ok(references
            .into_iter()
            .filter(|r| !r.contains('@'))
            .collect())
    }

    /// The newest images of configurations built on `reference` with none of their base's
    /// digests in `current` (the digests the reference names now: a manifest and, for an
    /// index, its images).
    pub async fn dependents(
        &self,
        reference: &str,
        current: &[String],
    ) -> Result<Vec<Dependent>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT DISTINCT b.id, b.request, b.commit_sha, b.finished_at, bb.digest, bb.also \
             FROM build_bases bb JOIN builds b ON b.id = bb.build_id \
             WHERE bb.reference = $1 AND ",
            newest!(),
            " ORDER BY b.finished_at, b.id"
        ))
        .bind(reference)
        .fetch_all(&self.pool)
        .await?;
        let mut dependents = Vec::new();
        for row in &rows {
            let digest: String = row.try_get("digest")?;
            let also = words(&row.try_get::<String, _>("also")?);
            if current.iter().any(|c| *c == digest || also.contains(c)) {
                continue;
            }
            let request: Option<String> = row.try_get("request")?;
            let commit: Option<String> = row.try_get("commit_sha")?;
            let (Some(request), Some(commit)) = (request, commit) else {
                continue;
            };
            dependents.push(Dependent {
                build_id: row.try_get("id")?,
                request: serde_json::from_str(&request)?,
                commit,
                digest,
            });
        }
        Ok(dependents)
    }

    /// Takes the decision on `reference` moving to `digest`: true for exactly one caller
    /// across replicas (or, once its claim lapsed unfinished, the next one).
    pub async fn decide_base_move(
        &self,
        reference: &str,
        digest: &str,
        seen_via: &str,
        host: &str,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO base_moves (reference, digest, seen_via, host, decided_at, claim_until) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (reference, digest) DO NOTHING",
        )
        .bind(reference)
        .bind(digest)
        .bind(seen_via)
        .bind(host)
        .bind(now)
        .bind(now + CLAIM_MS)
        .execute(&self.writer)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(true);
        }
        let taken = sqlx::query(
            "UPDATE base_moves SET host = $3, seen_via = $4, claim_until = $5 \
             WHERE reference = $1 AND digest = $2 AND done_at IS NULL AND claim_until < $6",
        )
        .bind(reference)
        .bind(digest)
        .bind(host)
        .bind(seen_via)
        .bind(now + CLAIM_MS)
        .bind(now)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(taken == 1)
    }

    /// The decision's rebuilds are published.
    pub async fn base_move_done(
        &self,
        reference: &str,
        digest: &str,
        rebuilds: usize,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE base_moves SET done_at = $3, rebuilds = $4 WHERE reference = $1 AND digest = $2",
        )
        .bind(reference)
        .bind(digest)
        .bind(now_millis())
        .bind(i64::try_from(rebuilds).unwrap_or(i64::MAX))
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests;
