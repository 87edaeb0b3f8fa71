//! Image engines: build a `BuildSpec` and push it. `build.engine` picks one: the podman CLI, or
//! a Docker Engine API daemon through bollard.

mod cgroup;
mod disk_watch;
mod docker;
mod labels;
mod nixpacks;
mod podman;
mod sandbox;

use async_trait::async_trait;

pub use cgroup::remove_stale as remove_stale_cgroups;
pub use docker::{DockerEngine, DockerHost};
pub(crate) use labels::escape_char;
pub use podman::Podman;

use crate::error::BuildError;
use crate::pipeline::BuildCtx;
use crate::plan::BuildSpec;

/// How often an engine prunes its local layer cache (at most).
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The Dockerfile as the build log names it: relative to the context when inside it.
fn shown_dockerfile<'a>(
    dockerfile: &'a std::path::Path,
    context: &std::path::Path,
) -> std::path::Display<'a> {
    dockerfile
        .strip_prefix(context)
        .unwrap_or(dockerfile)
        .display()
}

#[async_trait]
pub trait ImageEngine: Send + Sync {
    /// Builds the image locally under `spec.local_ref`.
    async fn build(&self, spec: &BuildSpec, ctx: &BuildCtx) -> Result<(), BuildError>;

    /// Whether the built image carries `spec.labels`. When it does not, the pipeline writes them
    /// into the pushed image's config through the registry (a few small requests, where a
    /// podman LABEL step costs a whole commit).
    fn labels_at_build(&self, _spec: &BuildSpec) -> bool {
        true
    }

    /// Pushes the built image as `spec.image:tag`; returns the digest the registry stores.
    /// Further tags are set through the registry API (`ImageStore::tag`), which moves no layer.
    async fn push(&self, spec: &BuildSpec, tag: &str, ctx: &BuildCtx)
    -> Result<String, BuildError>;
}
