//! Exactly one build per request across replicas. The replica that starts a build holds a lease
//! on its id in the shared store (`builds.lease_owner`, `lease_until`), renews it while it builds
//! and clears it with the outcome; a replica given the same build meanwhile waits. A lease with
//! an expiry, not a PostgreSQL session lock: it works the same on SQLite, survives a store
//! connection being recycled, and a replica that can no longer renew knows it and stops. The
//! price: after a crash the build is taken over once the lease lapses (`store.lease_secs`).
//!
//! A cancel is a stored fact here too (`cancel_requested_at`): the renewal reads it, so a build
//! stops even when the broadcast on the control exchange never reached its replica.

use std::time::Duration;

use sqlx::Row;

use super::BuildStore;
use super::record::{BuildState, now_millis};
use super::writes::{Start, history};
use crate::error::StoreError;
use crate::events::Event;

/// One replica's hold on one build (one attempt): a token nobody else has.
#[derive(Debug, Clone)]
pub struct Lease {
    /// This replica's name (the record's `host`).
    pub host: String,
    /// `<host>/<uuid>`: two deliveries on one replica are two owners.
    pub owner: String,
    pub ttl: Duration,
}

impl Lease {
    pub fn new(host: &str, ttl: Duration) -> Self {
        Self {
            host: host.to_owned(),
            owner: format!("{host}/{}", uuid::Uuid::new_v4()),
            ttl,
        }
    }

    /// When a lease taken or renewed at `now` (Unix ms) lapses.
    pub fn until(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX))
    }
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours; whether a cancel was asked for.
    Held { cancel_requested: bool },
    /// Gone: the build ended, or the lease lapsed and another replica took it.
    Lost,
}

/// What storing a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRequest {
    /// It was queued: cancelled now, it will never be built.
    Cancelled,
    /// It is running: its replica stops it when it next renews its lease (or at once, when the
    /// broadcast reaches it).
    Marked,
    /// Neither queued nor running any more: the state it is in (None: no such build).
    Now(Option<BuildState>),
}

/// A build's record as far as starting it is concerned.
pub(super) struct Standing {
    state: BuildState,
    lease_until: Option<i64>,
    cancel_requested: bool,
}

impl Standing {
    /// Why `start` did not move the build to running (the conditional update did not match).
    pub(super) fn start(&self, now: i64) -> Start {
        let leased = self.lease_until.is_some_and(|until| until >= now);
        match self.state {
            state if state.is_final() => Start::Skip(state),
            BuildState::Running if leased => Start::Held,
            _ if self.cancel_requested => Start::CancelRequested,
            // Queued for this attempt's outcome (a retry parked), or running with no live
            // holder and no reason to take it over (not redelivered: the broker redelivers the
            // original): that delivery's outcome is out or on its way.
            state => Start::Skip(state),
        }
    }
}

impl BuildStore {
    pub(super) async fn standing(&self, id: &str) -> Result<Option<Standing>, StoreError> {
        let row =
            sqlx::query("SELECT state, lease_until, cancel_requested_at FROM builds WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.writer)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state")?;
        let cancel: Option<i64> = row.try_get("cancel_requested_at")?;
        Ok(Some(Standing {
            state: BuildState::parse(&state).ok_or(StoreError::UnknownState(state))?,
            lease_until: row.try_get("lease_until")?,
            cancel_requested: cancel.is_some(),
        }))
    }

    /// Whether the build is final, or running under a live lease: either way its outcome is
    /// (or will be) published by whoever has it.
    pub async fn settled_or_held(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.standing(id).await?.is_some_and(|standing| {
            standing.state.is_final()
                || (standing.state == BuildState::Running
                    && standing
                        .lease_until
                        .is_some_and(|until| until >= now_millis()))
        }))
    }

    /// At a worker's start. A SQLite store serves exactly one replica, so a lease in it was left
    /// by this replica's previous process (killed mid-build): void, so the redelivery of that
    /// build starts at once instead of after `store.lease_secs`. On a shared store a lease may be
    /// another replica's: those lapse on their own.
    pub async fn void_own_leases(&self) -> Result<u64, StoreError> {
        if !self.sqlite {
            return Ok(0);
        }
        Ok(sqlx::query(
            "UPDATE builds SET lease_owner = NULL, lease_until = NULL \
             WHERE lease_owner IS NOT NULL",
        )
        .execute(&self.writer)
        .await?
        .rows_affected())
    }

    /// Extends the lease while the build runs, and reads whether it was cancelled.
    pub async fn renew(&self, id: &str, lease: &Lease) -> Result<Renewal, StoreError> {
        let now = now_millis();
        let row = sqlx::query(
            "UPDATE builds SET lease_until = $3 \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running' \
             RETURNING cancel_requested_at",
        )
        .bind(id)
        .bind(&lease.owner)
        .bind(lease.until(now))
        .fetch_optional(&self.writer)
        .await?;
        Ok(match row {
            Some(row) => Renewal::Held {
                cancel_requested: row
                    .try_get::<Option<i64>, _>("cancel_requested_at")?
                    .is_some(),
            },
            None => Renewal::Lost,
        })
    }

    /// Gives the lease up without an outcome (the delivery goes back to the queue), so its
    /// redelivery does not wait for the lease to lapse.
    pub async fn release(&self, id: &str, lease: &Lease) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE builds SET lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(&lease.owner)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Stores a cancel: a queued build is cancelled at once, a running one is marked for its
    /// replica to find. `cancelled` (its `build.cancelled`) is written to the notification
    /// outbox when a queued build is cancelled here.
    pub async fn request_cancel(
        &self,
        id: &str,
        cancelled: Option<&Event>,
    ) -> Result<CancelRequest, StoreError> {
        let now = now_millis();
        let mut tx = self.writer.begin().await?;
        let moved = sqlx::query(
            "UPDATE builds SET state = 'cancelled', error = 'cancelled', finished_at = $2, \
             updated_at = $2, cancel_requested_at = $2 WHERE id = $1 AND state = 'queued'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let mut wrote = false;
        let marked = if moved == 1 {
            history(&mut tx, id, BuildState::Cancelled, 0, None).await?;
            wrote = self.notify.enqueue(&mut tx, cancelled).await?;
            0
        } else {
            sqlx::query(
                "UPDATE builds SET cancel_requested_at = COALESCE(cancel_requested_at, $2) \
                 WHERE id = $1 AND state = 'running'",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        tx.commit().await?;
        self.notify.committed(wrote);
        Ok(match (moved, marked) {
            (1, _) => CancelRequest::Cancelled,
            (_, 1) => CancelRequest::Marked,
            _ => CancelRequest::Now(self.state(id).await?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(state: BuildState, lease_until: Option<i64>, cancel: bool) -> Standing {
        Standing {
            state,
            lease_until,
            cancel_requested: cancel,
        }
    }

    #[test]
    fn a_live_lease_is_waited_for_and_a_lapsed_one_is_not() {
        assert_eq!(
            standing(BuildState::Running, Some(100), false).start(50),
            Start::Held
        );
        assert_eq!(
            standing(BuildState::Running, Some(100), false).start(150),
            Start::Skip(BuildState::Running)
        );
        assert_eq!(
            standing(BuildState::Succeeded, Some(100), false).start(50),
            Start::Skip(BuildState::Succeeded)
        );
    }

    #[test]
    fn a_stored_cancel_ends_a_build_nobody_runs() {
        assert_eq!(
            standing(BuildState::Running, None, true).start(50),
            Start::CancelRequested
        );
        assert_eq!(
            standing(BuildState::Running, Some(100), true).start(50),
            Start::Held,
            "its holder finds the cancel itself"
        );
    }
}
