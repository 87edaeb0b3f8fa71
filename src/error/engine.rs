//! What goes wrong in an image engine: podman and nixpacks as programs, dockerd through its API,
//! and the build's sandbox. Every kind is ours (a service fault): the repository's own failures
//! (a failing step, a missing base image, a passed limit) are other `BuildError`s.

use super::ProcessError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A program the engine runs failed while `doing`; `said` is its own last word on why.
    #[error("{doing}: {said}")]
    Program {
        doing: String,
        said: String,
        #[source]
        source: ProcessError,
    },
    /// The Docker Engine API failed or could not be reached.
    #[error("{doing}")]
    Docker {
        doing: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The build's sandbox (its cgroup, its network namespace) could not be set up.
    #[error("failed to set up the build's {what}")]
    Sandbox {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A failure the engine reported in words only (a daemon's error message), or an answer
    /// lacking what the engine promises (no digest written, no size printed).
    #[error("{0}")]
    Said(String),
}
