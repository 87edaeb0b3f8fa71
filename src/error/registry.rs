//! What goes wrong talking to the OCI registry (the registry port and its HTTP adapter). Every
//! kind is a service fault: the request was fine, the registry was not.

use reqwest::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No answer: refused connection, DNS, TLS, timeout.
    #[error("failed to reach the registry")]
    Unreachable(#[source] reqwest::Error),
    /// An answer the distribution API does not allow for this request.
    #[error("registry answered {status} {doing}")]
    Status { status: StatusCode, doing: String },
    /// An answer whose body could not be read.
    #[error("failed to read {what} from the registry")]
    Unreadable {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// An answer missing what the protocol promises (a realm, a token, an upload location).
    #[error("{0}")]
    Protocol(String),
    /// Content whose sha256 is not the digest it was asked for or announced with: a corrupt or
    /// tampered answer, never used.
    #[error("{what} has digest {got}, expected {expected}")]
    DigestMismatch {
        what: String,
        expected: String,
        got: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BuildError, Fault};

    #[test]
    fn a_digest_mismatch_is_the_registrys_fault() {
        let err = BuildError::from(RegistryError::DigestMismatch {
            what: "manifest of u1/app:latest".into(),
            expected: "sha256:aa".into(),
            got: "sha256:bb".into(),
        });
        assert_eq!(err.classify(), Fault::Service);
        assert_eq!(
            err.chain(),
            "registry request failed: manifest of u1/app:latest has digest sha256:bb, expected sha256:aa"
        );
    }
}
