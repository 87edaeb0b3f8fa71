//! The git adapter of the source port (`ports::SourceFetcher`): bare mirrors fetched
//! incrementally, and a checkout of exactly the requested commit.

mod checkout_size;
mod credentials;
mod early_claims;
mod egress;
mod eviction;
mod fetch;
mod git;
mod kept_trees;
mod refs;
mod seal;
mod snapshot;
mod stop;

use std::time::Duration;

pub use egress::{ExtraRoots, Lookup, NetworkPolicy};
pub use git::GitMirrors;
pub use kept_trees::KeptTrees;
pub use snapshot::{SNAPSHOT_BRANCH, Snapshot, snapshot_dir};

use crate::config::BuildLimits;

/// The bounds of `build.limits` that a fetch and a checkout obey (and name when passed).
#[derive(Debug, Clone, Copy)]
pub struct GitLimits {
    pub checkout_mb: u64,
    pub fetch_mb: u64,
    /// Bounds each read of an https or git:// fetch; for http, enforced process-wide by
    /// `configure_git_timeouts` (which must be given the same value).
    pub stall_secs: u64,
}

impl GitLimits {
    fn fetch_bytes(&self) -> u64 {
        self.fetch_mb.saturating_mul(1024 * 1024)
    }
}

impl From<&BuildLimits> for GitLimits {
    fn from(limits: &BuildLimits) -> Self {
        Self {
            checkout_mb: limits.checkout_mb,
            fetch_mb: limits.fetch_mb,
            stall_secs: limits.git_stall_secs,
        }
    }
}

/// Fails a read from an http git host that sends nothing for `stall` (libgit2's socket timeouts
/// are process-wide; https and git:// fetches bound their reads themselves). Called once at
/// start; later calls change nothing.
pub fn configure_git_timeouts(stall: Duration) {
    fetch::configure_timeouts(stall);
}
