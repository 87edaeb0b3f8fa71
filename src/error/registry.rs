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
}
