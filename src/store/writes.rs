//! State changes. Each conditional UPDATE is the arbiter between racing writers (an API cancel and
//! a worker starting the same build), so no read-then-write window decides a state.

use sqlx::AnyConnection;

use super::BuildStore;
use super::lease::Lease;
use super::ownership::{Claim, Holder};
use super::record::{BuildState, NewBuild, now_millis};
use crate::error::StoreError;
use crate::events::{Event, ImageUpdated};

/// Whether a worker should build a delivery it just received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Build it: the lease is taken.
    Run,
    /// The same request is done (succeeded, failed, cancelled), or this attempt already ran to
    /// an outcome: nothing to do, its recorded outcome stands.
    Skip(BuildState),
    /// Another replica's live lease holds the build: wait for its outcome, never build it too.
    Held,
    /// Cancelled through the API while no replica ran it: end it cancelled without building.
    CancelRequested,
    /// The id belongs to a different request: never built, the record untouched.
    Foreign,
}

impl BuildStore {
    /// Records a new build, unless its id is taken: then says whether by this same request.
    pub async fn create(&self, new: &NewBuild, state: BuildState) -> Result<Claim, StoreError> {
        let mut tx = self.writer.begin().await?;
        let claim = if insert(&mut tx, new, state).await? {
            Claim::New
        } else {
            match Holder::read(&mut tx, &new.id).await? {
                Some(holder) if holder.is(new) => Claim::Same(holder.state),
                _ => Claim::Foreign,
            }
        };
        tx.commit().await?;
        Ok(claim)
    }

    /// A worker took a delivery: record it (first sight of a queue-submitted build), move it to
    /// running and take the lease on it. Only the request that first used the id runs under it,
    /// and only from `queued` for a later attempt than the last one that ran, or from `running`
    /// when no live lease holds it and the broker redelivered it (the worker that had it is gone)
    /// or it is a later attempt. A live lease held elsewhere is `Held`: the caller waits for that
    /// build's outcome instead of running it twice. A stored cancel is `CancelRequested`. A failed
    /// build runs again only through the retry tiers (which set it back to queued) or the rebuild
    /// route (a new id), never because a message was re-published. One transaction: this is on
    /// the path of every cached answer. `started` (its `build.started`) is written to the
    /// notification outbox when the build moves to running.
    pub async fn start(
        &self,
        new: &NewBuild,
        attempt: u32,
        redelivered: bool,
        lease: &Lease,
        started: Option<&Event>,
    ) -> Result<Start, StoreError> {
        let mut tx = self.writer.begin().await?;
        if !insert(&mut tx, new, BuildState::Queued).await? {
            match Holder::read(&mut tx, &new.id).await? {
                Some(holder) if !holder.is(new) => {
                    tx.commit().await?;
                    return Ok(Start::Foreign);
                }
                None => {
                    // Deleted between the insert and the read: treat it as cancelled.
                    tx.commit().await?;
                    return Ok(Start::Skip(BuildState::Cancelled));
                }
                Some(_) => {}
            }
        }
        let now = now_millis();
        let moved = sqlx::query(
            "UPDATE builds SET state = 'running', attempts = $2, host = $3, \
             started_at = COALESCE(started_at, $4), updated_at = $4, fault = NULL, \
             lease_owner = $6, lease_until = $7 \
             WHERE id = $1 AND cancel_requested_at IS NULL AND (\
             (state = 'queued' AND attempts < $2) \
             OR (state = 'running' AND (lease_until IS NULL OR lease_until < $4) \
             AND ($5 = 1 OR attempts < $2)))",
        )
        .bind(&new.id)
        .bind(i64::from(attempt))
        .bind(&lease.host)
        .bind(now)
        .bind(i64::from(redelivered))
        .bind(&lease.owner)
        .bind(lease.until(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 1 {
            history(
                &mut tx,
                &new.id,
                BuildState::Running,
                attempt,
                Some(&lease.host),
            )
            .await?;
            let wrote = self.notify.enqueue(&mut tx, started).await?;
            tx.commit().await?;
            self.notify.committed(wrote);
            return Ok(Start::Run);
        }
        tx.commit().await?;
        Ok(match self.standing(&new.id).await? {
            None => Start::Skip(BuildState::Cancelled),
            Some(standing) => standing.start(now),
        })
    }

    // Each outcome takes the event that announces it (if any): its notifications are written in
    // the transaction of the state change (`notifications`).

    /// A service fault sent the build to a retry tier: queued again, for the next attempt.
    pub async fn retrying(
        &self,
        id: &str,
        attempt: u32,
        error: &str,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        self.update_state(id, BuildState::Queued, attempt, None, Some(error), event)
            .await
    }

    pub async fn succeeded(
        &self,
        id: &str,
        attempt: u32,
        out: &ImageUpdated,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE builds SET state = 'succeeded', commit_sha = $2, image = $3, digest = $4, \
             tags = $5, platforms = $6, cached = $7, git_ref = COALESCE($8, git_ref), \
             error = NULL, fault = NULL, finished_at = $9, updated_at = $9, \
             lease_owner = NULL, lease_until = NULL, how = $10, why = $11 WHERE id = $1",
        )
        .bind(id)
        .bind(&out.commit)
        .bind(&out.image)
        .bind(&out.digest)
        .bind(serde_json::to_string(&out.tags)?)
        .bind(serde_json::to_string(&out.platforms)?)
        .bind(i64::from(out.cached))
        .bind(&out.build.git_ref)
        .bind(now)
        .bind(out.how.as_str())
        .bind(&out.why)
        .execute(&mut *tx)
        .await?;
        super::artifacts::replace(&mut tx, id, &out.artifacts, now).await?;
        super::bases::replace(&mut tx, id, &out.bases).await?;
        history(&mut tx, id, BuildState::Succeeded, attempt, None).await?;
        let wrote = self.notify.enqueue(&mut tx, event).await?;
        tx.commit().await?;
        self.notify.committed(wrote);
        Ok(())
    }

    pub async fn failed(
        &self,
        id: &str,
        attempt: u32,
        fault: &str,
        error: &str,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        self.update_state(
            id,
            BuildState::Failed,
            attempt,
            Some(fault),
            Some(error),
            event,
        )
        .await
    }

    pub async fn cancelled(
        &self,
        id: &str,
        attempt: u32,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        self.update_state(
            id,
            BuildState::Cancelled,
            attempt,
            None,
            Some("cancelled"),
            event,
        )
        .await
    }

    /// Removes a build with its history and log.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM build_logs WHERE build_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM build_states WHERE build_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // The records only: the artifacts stay in the registry next to the image, like it.
        sqlx::query("DELETE FROM build_artifacts WHERE build_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM build_bases WHERE build_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM builds WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted == 1)
    }

    async fn update_state(
        &self,
        id: &str,
        state: BuildState,
        attempt: u32,
        fault: Option<&str>,
        error: Option<&str>,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let finished = state.is_final().then_some(now);
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE builds SET state = $2, attempts = $3, fault = $4, error = $5, \
             finished_at = COALESCE($6, finished_at), updated_at = $7, \
             lease_owner = NULL, lease_until = NULL WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(i64::from(attempt))
        .bind(fault)
        .bind(error)
        .bind(finished)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        history(&mut tx, id, state, attempt, None).await?;
        let wrote = self.notify.enqueue(&mut tx, event).await?;
        tx.commit().await?;
        self.notify.committed(wrote);
        Ok(())
    }
}

/// Inserts a build record in `state` unless one with its id exists; returns whether it did.
async fn insert(
    conn: &mut AnyConnection,
    new: &NewBuild,
    state: BuildState,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO builds (id, request_id, state, user_id, repo, git_ref, request, rebuild_of, \
         fingerprint, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&new.id)
    .bind(&new.request_id)
    .bind(state.as_str())
    .bind(&new.user_id)
    .bind(&new.repo)
    .bind(&new.git_ref)
    .bind(new.request.to_string())
    .bind(&new.rebuild_of)
    .bind(&new.fingerprint)
    .bind(now_millis())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        history(conn, &new.id, state, 0, None).await?;
    }
    Ok(inserted)
}

/// Appends to the build's state history (numbered, so the order survives equal timestamps). Runs
/// in the transaction of the state change, so readers never see one without the other.
pub(super) async fn history(
    conn: &mut AnyConnection,
    id: &str,
    state: BuildState,
    attempt: u32,
    host: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
            "INSERT INTO build_states (build_id, n, state, attempt, host, at) \
             SELECT $1, COALESCE(MAX(n), 0) + 1, $2, $3, $4, $5 FROM build_states WHERE build_id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(i64::from(attempt))
        .bind(host)
        .bind(now_millis())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
