//! Ports: the contracts between the pipeline and the outside world, and the context types that
//! cross them. The pipeline (`pipeline`, `plan`, `incremental`) is written against these traits;
//! adapters (`source`, `engine`, `registry`, `store`) implement them; `startup` picks which.
//!
//! This module sits below every adapter and imports only lower modules (`config`, `error`,
//! `request`, `build_log`, `events`): see `layering` for the rule and its check.

mod context;
mod engine;
mod environment;
mod recorded;
mod registry;
mod source;

pub use context::BuildCtx;
pub use engine::{BuildSpec, Built, ImageEngine, Recipe};
pub use environment::{Environment, PipelineSettings, recorded};
pub use recorded::RecordedImages;
pub use registry::{
    BlobChunks, BlobStream, ImageRegistry, Manifest, RegistryHosts, content_digest,
};
pub use source::{Checkout, SourceFetcher, SourceHold, SourceSpec};
