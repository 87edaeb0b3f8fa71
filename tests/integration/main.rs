//! Integration tests against the real RabbitMQ, registry, podman and a local git server.
//! Start the services first: `scripts/services.sh up` (`make test` does it).

mod rebase;
mod records_api;
mod registry_client;
mod request_ids;
mod reserved_tags;
mod sandbox;
mod secret_hygiene;
mod secure_defaults;
mod source_resolve;
mod support;
mod tenancy_api;
mod triggers;
mod worker_probes;

mod artifacts;
mod base_images;
mod base_prefetch;
mod base_updates;
mod build_secrets;
mod cache_mounts;
mod cli;
mod cluster;
mod console;
mod core_worker;
mod deploy_manifests;
mod dev_workflow;
mod docker_engine;
mod dockerfile_compat;
mod egress;
mod egress_https;
mod fast_builds;
mod fault_stages;
mod faults;
mod fleet;
mod git_limits;
mod hostile_checkout;
mod incremental_diff;
mod notify_webhooks;
mod openapi_contract;
mod process_lifetime;
