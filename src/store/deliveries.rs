//! Webhook deliveries seen within the replay window, shared by every replica through the store.

use std::time::Duration;

use super::BuildStore;
use super::record::now_millis;
use crate::error::StoreError;

impl BuildStore {
    /// Records `keys` (a delivery id, a body digest...) as seen now. False when any of them was
    /// already seen within `window`: the delivery is a replay. Older rows are pruned first.
    pub async fn first_delivery(
        &self,
        keys: &[String],
        window: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_millis();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        sqlx::query("DELETE FROM webhook_deliveries WHERE seen_at < $1")
            .bind(now.saturating_sub(window_ms))
            .execute(&self.writer)
            .await?;
        let mut first = true;
        for key in keys {
            // The primary key makes this atomic across replicas: one insert wins.
            let inserted = sqlx::query(
                "INSERT INTO webhook_deliveries (seen_key, seen_at) VALUES ($1, $2) \
                 ON CONFLICT (seen_key) DO NOTHING",
            )
            .bind(key)
            .bind(now)
            .execute(&self.writer)
            .await?
            .rows_affected();
            first &= inserted == 1;
        }
        Ok(first)
    }

    /// Forgets `keys`, so a delivery that could not be queued may be delivered again.
    pub async fn forget_delivery(&self, keys: &[String]) -> Result<(), StoreError> {
        for key in keys {
            sqlx::query("DELETE FROM webhook_deliveries WHERE seen_key = $1")
                .bind(key)
                .execute(&self.writer)
                .await?;
        }
        Ok(())
    }
}
