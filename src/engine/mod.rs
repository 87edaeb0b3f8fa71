//! Image engines: build a `BuildSpec` and push it. podman is the one adapter today.

mod labels;
mod podman;

use async_trait::async_trait;

pub use podman::Podman;

use crate::error::BuildError;
use crate::pipeline::BuildCtx;
use crate::plan::BuildSpec;

#[async_trait]
pub trait ImageEngine: Send + Sync {
    /// Builds the image locally, tagged with every tag of `spec`.
    async fn build(&self, spec: &BuildSpec, ctx: &BuildCtx) -> Result<(), BuildError>;

    /// Pushes every tag; returns the manifest digest the registry stores (`sha256:...`).
    async fn push(&self, spec: &BuildSpec, ctx: &BuildCtx) -> Result<String, BuildError>;
}
