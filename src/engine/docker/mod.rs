//! Docker Engine API adapter (bollard), for hosts that run dockerd (or podman's
//! Docker-compatible service).

mod host;

pub use host::DockerHost;
