//! What goes wrong inside the git adapter that is nobody's request: libgit2 or the disk failing
//! on the mirror cache. Failures that are the user's (no such repository or ref, credentials
//! refused) or a host's (unreachable, stalled) keep their own `BuildError` variants.

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("failed to {what}")]
    Git {
        what: String,
        #[source]
        source: git2::Error,
    },
    #[error("failed to {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl GitError {
    /// For `map_err`: libgit2 failed to do `what` ("open the mirror").
    pub fn git(what: impl Into<String>) -> impl FnOnce(git2::Error) -> Self {
        let what = what.into();
        move |source| Self::Git { what, source }
    }

    /// For `map_err`: the file system failed to do `what` ("create the git cache dir").
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
