//! The build store: every build's record, state history and log. One implementation over sqlx's
//! `Any` driver with portable SQL, so SQLite (the default, a file in the data dir) and PostgreSQL
//! (shared by replicas) run the same queries and the same migrations.

mod artifacts;
mod deliveries;
mod lease;
mod log_writer;
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
pub use lease::{CancelRequest, Lease, Renewal};
pub use log_writer::LogWriter;
pub use ownership::Claim;
pub use queries::{BuildFilter, Page, RepoSummary};
pub use record::{BuildRecord, BuildState, NewBuild, StateChange};
pub use writes::Start;

use crate::config::Settings;
use crate::error::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct BuildStore {
    /// Reads.
    pool: AnyPool,
    /// Writes: one connection for SQLite (see `connect`), the same pool for PostgreSQL.
    writer: AnyPool,
    /// SQLite serves one replica (see `lease::void_own_leases`).
    sqlite: bool,
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
        Self::connect(&url).await
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
        MIGRATOR.run(&writer).await.map_err(StoreError::Migrate)?;
        Ok(Self {
            pool,
            writer,
            sqlite,
        })
    }

    /// For /readyz.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
