//! image-builder: a queue-driven worker that turns git repositories into container images.
//!
//! A build request arrives on RabbitMQ (`amqp`), is parsed once at the edge (`request`), runs
//! through the pipeline (`pipeline`: `source` -> `plan` -> `engine`), and its outcome is published
//! as an event (`events`) before the delivery is acked (`worker`). Failures are classified in one
//! place (`error`) and the retry policy is its own function (`worker::decide`).

pub mod amqp;
pub mod api;
pub mod build_log;
pub mod config;
pub mod confined;
pub mod dockerfile;
pub mod engine;
pub mod error;
pub mod events;
pub(crate) mod fresh;
pub mod incremental;
pub mod init;
pub mod metrics;
pub(crate) mod now_and_then;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod redact;
pub mod registry;
pub mod request;
pub mod source;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod worker;
