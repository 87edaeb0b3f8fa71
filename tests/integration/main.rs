//! Integration tests against the real RabbitMQ, registry, podman and a local git server.
//! Start the services first: `scripts/services.sh up` (`make test` does it).

mod records_api;
mod sandbox;
mod support;

mod core_worker;
mod docker_engine;
mod egress;
mod fast_builds;
mod faults;
mod git_limits;
mod hostile_checkout;
mod process_lifetime;
