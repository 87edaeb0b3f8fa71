//! What every stage of one build is handed: its log, its cancel signal, its deadline and a
//! private scratch directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::build_log::BuildLog;

/// Per-build context handed to every stage.
pub struct BuildCtx {
    pub log: BuildLog,
    pub cancel: CancellationToken,
    pub deadline: Instant,
    /// Private to this build and removed with it (auth file, digest file).
    pub scratch_dir: PathBuf,
}

impl BuildCtx {
    /// Time left before the build's timeout (never zero, so a command fails by timing out).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }
}
