//! The store's side of `ports::RecordedImages`: a digest is trusted when a succeeded build
//! recorded it.

use async_trait::async_trait;

use super::BuildStore;
use crate::error::StoreError;
use crate::events::{ArtifactRef, BaseImage};
use crate::ports::RecordedImages;

#[async_trait]
impl RecordedImages for BuildStore {
    async fn recorded(&self, image: &str, digest: &str) -> Result<bool, StoreError> {
        let found = sqlx::query(
            "SELECT 1 AS one FROM builds WHERE digest = $1 AND image = $2 AND state = 'succeeded' \
             LIMIT 1",
        )
        .bind(digest)
        .bind(image)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn recorded_artifacts(
        &self,
        image: &str,
        digest: &str,
    ) -> Result<Vec<ArtifactRef>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT DISTINCT a.name, a.path, a.platform, a.digest, a.blob_digest, a.size \
             FROM build_artifacts a JOIN builds b ON b.id = a.build_id \
             WHERE b.digest = $1 AND b.image = $2 AND b.state = 'succeeded' \
             ORDER BY a.name, a.platform, a.digest",
        )
        .bind(digest)
        .bind(image)
        .fetch_all(&self.pool)
        .await?;
        let artifact = |row: &sqlx::any::AnyRow| -> sqlx::Result<ArtifactRef> {
            Ok(ArtifactRef {
                name: row.try_get("name")?,
                path: row.try_get("path")?,
                platform: row.try_get("platform")?,
                digest: row.try_get("digest")?,
                blob_digest: row.try_get("blob_digest")?,
                size: u64::try_from(row.try_get::<i64, _>("size")?).unwrap_or(0),
            })
        };
        Ok(rows.iter().map(artifact).collect::<sqlx::Result<_>>()?)
    }

    async fn recorded_bases(
        &self,
        image: &str,
        digest: &str,
    ) -> Result<Vec<BaseImage>, StoreError> {
        self.bases_of(image, digest).await
    }
}
