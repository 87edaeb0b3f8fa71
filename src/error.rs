//! The pipeline's error type and its single classification into faults. Boundaries with an
//! error type of their own (`GitError`, `RegistryError`, `StoreError`, `EngineError` over
//! `ProcessError`) keep it as the `#[source]` of a
//! `BuildError` variant, so the whole cause chain reaches the log and the event (`chain`).

mod engine;
mod git;
mod process;
mod registry;
mod store;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use engine::EngineError;
pub use git::GitError;
pub use process::ProcessError;
pub use registry::RegistryError;
pub use store::StoreError;

use crate::request::Rejection;

/// Who has to act on a failure, which decides retry or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// The request itself is invalid: never retried.
    Rejected,
    /// The repository, ref, credentials or build recipe is wrong: the user must change something.
    User,
    /// Our side or a dependency failed: worth retrying later.
    Service,
    /// Someone asked for the build to stop.
    Cancelled,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::User => "user",
            Self::Service => "service",
            Self::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    // Not `#[from]`, which would make the rejection a source and print it twice in `chain`.
    #[error("invalid request: {0}")]
    Rejected(Rejection),
    #[error("repository not found: {0}")]
    RepoNotFound(String),
    #[error("ref not found: {0}")]
    RefNotFound(String),
    #[error("git host refused the credentials: {0}")]
    AuthRefused(String),
    #[error("failed to reach the git host: {0}")]
    GitUnavailable(String),
    #[error("git failed")]
    Git(#[from] GitError),
    #[error("no way to build: {0}")]
    NoRecipe(String),
    #[error("build step failed: {0}")]
    StepFailed(String),
    /// The Dockerfile asks for what the engine cannot or will not build (a heredoc, a
    /// BuildKit-only flag, a cache mount that could leave its directory); the message
    /// names the line and what to write instead.
    #[error("the build engine cannot build this: {0}")]
    Unsupported(String),
    #[error("failed to push the image")]
    PushFailed(#[source] EngineError),
    #[error("registry request failed")]
    Registry(#[from] RegistryError),
    #[error("build store lookup failed")]
    Store(#[from] StoreError),
    #[error("build engine failed")]
    Engine(#[from] EngineError),
    /// A path the request asked to export is not in the built image.
    #[error("artifact path not found: {0}")]
    ArtifactMissing(String),
    /// A bound of `build.limits` was passed; the message names it.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("build timed out after {0:?}")]
    TimedOut(Duration),
    #[error("build cancelled")]
    Cancelled,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<Rejection> for BuildError {
    fn from(rejection: Rejection) -> Self {
        Self::Rejected(rejection)
    }
}

impl BuildError {
    /// The single place that decides whose fault an error is.
    pub fn classify(&self) -> Fault {
        match self {
            Self::Rejected(_) => Fault::Rejected,
            Self::RepoNotFound(_)
            | Self::RefNotFound(_)
            | Self::AuthRefused(_)
            | Self::NoRecipe(_)
            | Self::StepFailed(_)
            | Self::Unsupported(_)
            | Self::ArtifactMissing(_)
            | Self::LimitExceeded(_) => Fault::User,
            Self::GitUnavailable(_)
            | Self::Git(_)
            | Self::PushFailed(_)
            | Self::Registry(_)
            | Self::Store(_)
            | Self::Engine(_)
            | Self::TimedOut(_)
            | Self::Internal(_) => Fault::Service,
            Self::Cancelled => Fault::Cancelled,
        }
    }

    /// A short stable name for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Rejected(_) => "rejected",
            Self::RepoNotFound(_) => "repo_not_found",
            Self::RefNotFound(_) => "ref_not_found",
            Self::AuthRefused(_) => "auth_refused",
            Self::GitUnavailable(_) => "git_unavailable",
            Self::Git(_) => "git",
            Self::NoRecipe(_) => "no_recipe",
            Self::StepFailed(_) => "step_failed",
            Self::Unsupported(_) => "unsupported",
            Self::PushFailed(_) => "push_failed",
            Self::Registry(_) => "registry",
            Self::Store(_) => "store",
            Self::Engine(_) => "engine",
            Self::ArtifactMissing(_) => "artifact_missing",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::TimedOut(_) => "timed_out",
            Self::Cancelled => "cancelled",
            Self::Internal(_) => "internal",
        }
    }

    /// The whole cause chain on one line, for events and logs (callers redact it).
    pub fn chain(&self) -> String {
        match self {
            Self::Internal(e) => format!("{e:#}"),
            other => cause_chain(other),
        }
    }
}

/// An error and every `source()` under it, on one line: `outer: inner: root`.
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert_eq!(
            BuildError::Rejected(Rejection::new("ref", "bad")).classify(),
            Fault::Rejected
        );
        assert_eq!(BuildError::RefNotFound("x".into()).classify(), Fault::User);
        assert_eq!(BuildError::StepFailed("x".into()).classify(), Fault::User);
        let unsupported = BuildError::Unsupported("RUN (line 2) uses a heredoc".into());
        assert_eq!(unsupported.classify(), Fault::User);
        assert_eq!(unsupported.metric_label(), "unsupported");
        assert_eq!(
            unsupported.chain(),
            "the build engine cannot build this: RUN (line 2) uses a heredoc"
        );
        assert_eq!(
            BuildError::PushFailed(EngineError::Said("x".into())).classify(),
            Fault::Service
        );
        assert_eq!(
            BuildError::TimedOut(Duration::from_secs(1)).classify(),
            Fault::Service
        );
        assert_eq!(
            BuildError::Internal(anyhow::anyhow!("disk full")).classify(),
            Fault::Service
        );
        let lookup = BuildError::from(RegistryError::Status {
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            doing: "for u1/app:latest".into(),
        });
        assert_eq!(lookup.classify(), Fault::Service);
        assert_eq!(lookup.metric_label(), "registry");
        let git = BuildError::from(GitError::git("open the mirror")(git2::Error::from_str(
            "corrupt pack",
        )));
        assert_eq!(git.classify(), Fault::Service);
        assert_eq!(
            git.chain(),
            "git failed: failed to open the mirror: corrupt pack"
        );
    }

    #[test]
    fn the_chain_names_every_cause_once() {
        let io = std::io::Error::other("connection reset");
        let err = BuildError::Internal(anyhow::Error::new(io).context("failed to fetch"));
        assert_eq!(err.chain(), "failed to fetch: connection reset");
        let err = BuildError::from(RegistryError::Protocol("the registry gave no token".into()));
        assert_eq!(
            err.chain(),
            "registry request failed: the registry gave no token"
        );
        assert_eq!(
            BuildError::StepFailed("RUN false".into()).chain(),
            "build step failed: RUN false"
        );
        assert_eq!(
            BuildError::from(Rejection::new("ref", "must not start with '-'")).chain(),
            "invalid request: `ref` must not start with '-'"
        );
    }
}
