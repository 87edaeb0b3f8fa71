//! A bollard client for the daemon `build.docker_host` names (parsed by `config`).

use bollard::{API_DEFAULT_VERSION, Docker};

use crate::config::{DockerAddress, DockerHost};

/// A client for this daemon. Nothing is sent yet; a unix socket that does not exist is already
/// an error here. `timeout_secs` bounds each request up to its response headers (for a build
/// that includes uploading the context).
pub(super) fn client(
    host: &DockerHost,
    timeout_secs: u64,
) -> Result<Docker, bollard::errors::Error> {
    match host.address() {
        DockerAddress::Unix(path) => {
            Docker::connect_with_unix(path, timeout_secs, API_DEFAULT_VERSION)
        }
        DockerAddress::Http(addr) => {
            Docker::connect_with_http(addr, timeout_secs, API_DEFAULT_VERSION)
        }
    }
}
