//! The build store: every build's record, state history and log. One implementation over sqlx's
//! `Any` driver with portable SQL, so SQLite (the default, a file in the data dir) and PostgreSQL
//! (shared by replicas) run the same queries and the same migrations.

mod artifacts;
mod bases;
mod deliveries;
mod lease;
mod log_writer;
mod notifications;
mod ownership;
mod queries;
mod record;
mod recorded_images;
mod writes;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

pub use artifacts::ArtifactRecord;
pub use bases::Dependent;
pub use lease::{CancelRequest, Lease, Renewal};
pub use log_writer::LogWriter;
pub use notifications::Notification;
pub use ownership::Claim;
pub use queries::{BuildFilter, Page, RepoSummary, VersionFilter};
pub use record::{BuildRecord, BuildState, NewBuild, StateChange};
pub use writes::Start;

use crate::config::{Settings, Webhook};
use crate::error::StoreError;

/// The migrations of this release. Migrations only add (tables, columns with defaults), so a
/// store migrated by a newer release still serves this one: the versions it does not know are
/// left alone instead of refusing to start, which lets a fleet roll forward (and an old replica
/// restart mid-rollout) without stopping.
fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
}

#[derive(Clone)]
pub struct BuildStore {
    /// Reads.
    pool: AnyPool,
    /// Writes: one connection for SQLite (see `connect`), the same pool for PostgreSQL.
    writer: AnyPool,
    /// SQLite serves one replica (see `lease::void_own_leases`).
    sqlite: bool,
    /// Which webhooks each recorded event is written to the outbox for.
    notify: notifications::Notifications,
}

fn pool_options(sqlite: bool, max_connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // WAL: readers never wait for the writer. NORMAL sync: still crash-safe, one
                    // fsync per checkpoint instead of per state change.
                    sqlx::Executor::execute(
                        conn,
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL",
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

impl BuildStore {
    /// Connects to `store.url` (SQLite file in the data dir when empty) and applies migrations.
    pub async fn open(settings: &Settings) -> Result<Self, StoreError> {
        let url = settings.store.url.expose_secret();
        let url = if url.is_empty() {
            std::fs::create_dir_all(&settings.data_dir).map_err(|source| StoreError::DataDir {
                path: settings.data_dir.clone(),
                source,
            })?;
            format!(
                "sqlite://{}?mode=rwc",
                settings.data_dir.join("builds.db").display()
            )
        } else {
            url.to_owned()
        };
        Ok(Self::connect(&url)
            .await?
            .with_webhooks(&settings.notify.webhooks.0))
    }

    /// From now on every state change that announces an event also writes its notifications
    /// for the `webhooks` that want it, in the same transaction.
    pub fn with_webhooks(mut self, webhooks: &[Webhook]) -> Self {
        self.notify = notifications::Notifications::new(webhooks);
        self
    }

    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let backend = if sqlite { "sqlite" } else { "postgres" };
        let pool = pool_options(sqlite, if sqlite { 4 } else { 8 })
            .connect(url)
            .await
            // The URL may carry a password: say which backend, never the URL.
            .map_err(|source| StoreError::Open { backend, source })?;
        // SQLite has one writer at a time. Writers queued on a one-connection pool wait their
        // turn in-process; on a shared pool they would meet SQLite's busy handler, which sleeps
        // (1, 2, 5, 10... ms) and retries -- the slowest part of a cached answer under load.
        let writer = if sqlite {
            pool_options(true, 1)
                .connect(url)
                .await
                .map_err(|source| StoreError::Open { backend, source })?
        } else {
            pool.clone()
        };
        migrator().run(&writer).await.map_err(StoreError::Migrate)?;
        Ok(Self {
            pool,
            writer,
            sqlite,
            notify: notifications::Notifications::default(),
        })
    }

    /// For /readyz.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::BuildStore;

    #[tokio::test]
    async fn a_store_migrated_by_a_newer_release_still_opens() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
        let store = BuildStore::connect(&url).await.expect("store");
        // What a later release's migration leaves behind: a version this binary does not have.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (99990101, 'from the future', TRUE, X'00', 1)",
        )
        .execute(&store.writer)
        .await
        .expect("a newer migration recorded");
        drop(store);
        let reopened = BuildStore::connect(&url).await;
        assert!(reopened.is_ok(), "{:?}", reopened.err());
    }
}
