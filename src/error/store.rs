//! What goes wrong with the build store (SQLite or PostgreSQL through sqlx). The worker logs a
//! failed write and builds on; a failed trust lookup (`ports::RecordedImages`) is a service
//! fault; the API answers 500.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Never the URL: it may carry a password.
    #[error("failed to open the build store ({backend})")]
    Open {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("failed to create {}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to migrate the build store")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("build store query failed")]
    Query(#[from] sqlx::Error),
    #[error("failed to encode a build record field")]
    Encode(#[from] serde_json::Error),
    #[error("the build store holds an unknown build state {0:?}")]
    UnknownState(String),
}
