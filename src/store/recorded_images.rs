//! The store's side of `ports::RecordedImages`: a digest is trusted when a succeeded build
//! recorded it.

use async_trait::async_trait;

use super::BuildStore;
use crate::error::StoreError;
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
}
