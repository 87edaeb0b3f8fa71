//! image-builder: a queue-driven worker that turns git repositories into container images.
//!
//! A build request arrives on RabbitMQ (`amqp`), is parsed once at the edge (`request`), runs
//! through the pipeline (`pipeline`: `plan` and `incremental` over the `ports`), and its outcome
//! is published as an event (`events`) before the delivery is acked (`worker`). Adapters
//! (`source`, `engine`, `registry`, `store`) implement the ports; `startup` picks them. Failures
//! are classified in one place (`error`). docs/architecture.md has the layers; `layering`
//! checks them.

pub mod amqp;
pub mod api;
pub mod artifacts;
pub mod build_log;
pub mod client;
pub mod config;
pub mod confined;
pub mod digest_writer;
pub mod dockerfile;
pub mod dockerignore;
pub mod engine;
pub mod error;
pub mod events;
pub(crate) mod fresh;
pub mod image_edit;
pub mod incremental;
pub mod init;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod notify;
pub(crate) mod now_and_then;
pub mod percent;
pub mod pipeline;
pub mod plan;
pub mod ports;
pub mod process;
pub mod redact;
pub mod registry;
pub mod request;
pub mod source;
pub mod startup;
pub mod store;
pub mod submit;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod worker;
