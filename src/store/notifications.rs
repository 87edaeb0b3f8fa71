//! The notification outbox (`notification_outbox`): one row per event and webhook that wants it,
//! inserted in the transaction of the state change the event announces, so a recorded outcome
//! always has its notifications and a crash loses none. `notify`'s deliverer claims due rows
//! (a token and an expiry, the same on SQLite and PostgreSQL), POSTs them and deletes them once
//! delivered or given up.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;

use super::BuildStore;
use super::record::now_millis;
use crate::config::Webhook;
use crate::error::StoreError;
use crate::events::Event;

/// Which webhooks want which events (from `notify.webhooks`), and the deliverer's wake-up.
#[derive(Clone, Default)]
pub(super) struct Notifications {
    /// (webhook id, its event filter); empty: nothing is ever written.
    targets: Arc<Vec<(String, Webhook)>>,
    /// Signalled after a transaction that wrote rows commits, so they go out at once.
    wake: Arc<Notify>,
}

impl Notifications {
    pub(super) fn new(webhooks: &[Webhook]) -> Self {
        Self {
            targets: Arc::new(webhooks.iter().map(|h| (h.id(), h.clone())).collect()),
            wake: Arc::default(),
        }
    }

    /// Inserts the event's rows in the caller's transaction; whether any was written (then call
    /// `committed` after the commit).
    pub(super) async fn enqueue(
        &self,
        conn: &mut AnyConnection,
        event: Option<&Event>,
    ) -> Result<bool, StoreError> {
        let Some(event) = event else {
            return Ok(false);
        };
        let name = event.routing_key();
        let wanting: Vec<&String> = self
            .targets
            .iter()
            .filter(|(_, hook)| hook.wants(name))
            .map(|(id, _)| id)
            .collect();
        if wanting.is_empty() {
            return Ok(false);
        }
        // One id per recorded event: the Idempotency-Key of every attempt to every webhook.
        let event_id = uuid::Uuid::new_v4().to_string();
        let body = String::from_utf8(event.to_json()).unwrap_or_default();
        let now = now_millis();
        for target in wanting {
            sqlx::query(
                "INSERT INTO notification_outbox (id, event_id, target, event, build_id, body, \
                 created_at, attempts, next_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $7)",
            )
            .bind(format!("{event_id}/{target}"))
            .bind(&event_id)
            .bind(target)
            .bind(name)
            .bind(&event.build().build_id)
            .bind(&body)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(true)
    }

    pub(super) fn committed(&self, wrote: bool) {
        if wrote {
            self.wake.notify_one();
        }
    }
}

/// A claimed row, as the deliverer needs it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: String,
    pub event_id: String,
    /// `Webhook::id` of its receiver.
    pub target: String,
    pub event: String,
    pub build_id: String,
    /// The exact bytes signed and sent.
    pub body: String,
    /// Unix ms the event was recorded at.
    pub created_at: i64,
    /// Failed attempts so far.
    pub attempts: i64,
}

impl Notification {
    fn from_row(row: &AnyRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            event_id: row.try_get("event_id")?,
            target: row.try_get("target")?,
            event: row.try_get("event")?,
            build_id: row.try_get("build_id")?,
            body: row.try_get("body")?,
            created_at: row.try_get("created_at")?,
            attempts: row.try_get("attempts")?,
        })
    }
}

impl BuildStore {
    /// Writes notifications (for `notify.webhooks`) of an event that comes with no state change
    /// of its own (a rejection under an id another request holds).
    pub async fn announce(&self, event: &Event) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let wrote = self.notify.enqueue(&mut tx, Some(event)).await?;
        tx.commit().await?;
        self.notify.committed(wrote);
        Ok(())
    }

    /// Wakes up when this process records notifications (other replicas' rows are found by
    /// polling).
    pub fn notifications_recorded(&self) -> Arc<Notify> {
        self.notify.wake.clone()
    }

    /// Takes up to `limit` due rows nobody holds (or whose holder's claim lapsed) under `token`
    /// for `ttl`. The conditional UPDATE is the arbiter between replicas: a row is claimed by one.
    pub async fn claim_notifications(
        &self,
        token: &str,
        ttl: Duration,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let now = now_millis();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        // PostgreSQL: skip rows another replica is claiming right now instead of waiting on them.
        let skip_locked = if self.sqlite {
            ""
        } else {
            " FOR UPDATE SKIP LOCKED"
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE notification_outbox SET claim_token = $1, claim_until = $2 \
             WHERE id IN (SELECT id FROM notification_outbox WHERE next_at <= $3 \
             AND (claim_until IS NULL OR claim_until < $3) ORDER BY next_at LIMIT $4{skip_locked}) \
             AND (claim_until IS NULL OR claim_until < $3) \
             RETURNING id, event_id, target, event, build_id, body, created_at, attempts"
        )))
        .bind(token)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        let mut claimed = rows
            .iter()
            .map(Notification::from_row)
            .collect::<sqlx::Result<Vec<_>>>()?;
        claimed.sort_by_key(|n| n.created_at);
        Ok(claimed)
    }

    /// Delivered (or given up): gone, if this claim still holds it.
    pub async fn notification_done(&self, id: &str, token: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM notification_outbox WHERE id = $1 AND claim_token = $2")
            .bind(id)
            .bind(token)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// A failed attempt: unclaimed, due again at `next_at` (Unix ms). `error` says what failed
    /// (a status or an error kind, never a URL or a body).
    pub async fn notification_failed(
        &self,
        id: &str,
        token: &str,
        next_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_outbox SET attempts = attempts + 1, next_at = $3, \
             claim_token = NULL, claim_until = NULL, last_error = $4 \
             WHERE id = $1 AND claim_token = $2",
        )
        .bind(id)
        .bind(token)
        .bind(next_at)
        .bind(error)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Gives back what a stopping deliverer held, due at once for whoever comes next.
    pub async fn release_notifications(&self, token: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE notification_outbox SET claim_token = NULL, claim_until = NULL \
             WHERE claim_token = $1",
        )
        .bind(token)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// At a deliverer's start on SQLite (one replica per store): claims left by this replica's
    /// previous process (killed mid-delivery) are void, so they go out now rather than when they
    /// lapse. On a shared store a claim may be another replica's: those lapse on their own.
    pub async fn void_own_notification_claims(&self) -> Result<u64, StoreError> {
        if !self.sqlite {
            return Ok(0);
        }
        Ok(sqlx::query(
            "UPDATE notification_outbox SET claim_token = NULL, claim_until = NULL \
             WHERE claim_token IS NOT NULL",
        )
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Rows not yet delivered nor given up.
    pub async fn pending_notifications(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM notification_outbox")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }
}
