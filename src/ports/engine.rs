//! The engine port: exactly what to build (`BuildSpec`, made by `plan`) and the trait that
//! builds and pushes it.

use std::path::PathBuf;

use async_trait::async_trait;

use super::BuildCtx;
use crate::error::BuildError;
use crate::events::BaseImage;
use crate::request::{BuildArgs, BuildSecrets, Platform};

/// Everything an engine needs for one build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The checkout, canonical. Whatever the worker reads from it goes through
    /// `confined::Tree`, beneath this directory.
    pub checkout_dir: PathBuf,
    /// Inside `checkout_dir`, canonical.
    pub context_dir: PathBuf,
    pub recipe: Recipe,
    /// registry/namespace/name, without a tag.
    pub image: String,
    pub tags: Vec<String>,
    /// Names this exact build configuration (see `plan::build_key`); pushed after every other
    /// tag, so its presence in the registry means the whole build was pushed.
    pub key_tag: String,
    /// See `plan::Naming::lineage_tag`.
    pub lineage_tag: String,
    /// The image's local name while it is built and pushed, unique to this run of the build.
    pub local_ref: String,
    /// Applied in order; the builder's own labels come last so a request cannot forge them.
    pub labels: Vec<(String, String)>,
    pub build_args: BuildArgs,
    /// Mounted for `RUN --mount=type=secret` steps, never written into the image.
    pub secrets: BuildSecrets,
    pub platforms: Vec<Platform>,
    /// The Dockerfile stage to build, spelled as in the Dockerfile; the last stage when None.
    pub target: Option<String>,
    /// Whose `RUN --mount=type=cache` directories the build uses: one set per user and
    /// repository, so builds of one repository reuse them and no other tenant ever sees them.
    pub cache_scope: String,
    /// Base images (resolved references) to pull again before building even when the local
    /// store has them: a base update moved their tag.
    pub refresh_bases: Vec<String>,
    /// Lines of the final stage's trailing plain COPY steps the engine leaves out: the
    /// pipeline makes their layers from the checkout and appends them in the registry. Empty
    /// unless `ImageEngine::omits_steps`.
    pub omitted_steps: Vec<usize>,
}

/// How the image is described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// A Dockerfile/Containerfile inside the checkout (canonical; usually in the context).
    Dockerfile(PathBuf),
    /// No Dockerfile: nixpacks generates one from the context.
    Nixpacks,
}

/// What an engine built and pushed.
#[derive(Debug, Clone)]
pub struct Built {
    /// The base images it was built on, with the digests it used (empty when the engine
    /// cannot tell).
    pub bases: Vec<BaseImage>,
    /// The digest the registry stores.
    pub digest: String,
}

#[async_trait]
pub trait ImageEngine: Send + Sync {
    /// Builds the image and pushes it as `spec.image:tag`. One call, so the engine can keep
    /// what it built from its own cache's pruning until the push is done. Further tags are set
    /// through the registry API (`ImageRegistry::tag`), which moves no layer.
    async fn build_and_push(
        &self,
        spec: &BuildSpec,
        tag: &str,
        ctx: &BuildCtx,
    ) -> Result<Built, BuildError>;

    /// Whether the built image carries `spec.labels`. When it does not, the pipeline writes them
    /// into the pushed image's config through the registry (a few small requests, where a
    /// podman LABEL step costs a whole commit).
    fn labels_at_build(&self, _spec: &BuildSpec) -> bool {
        true
    }

    /// Whether the engine builds without `BuildSpec::omitted_steps` when asked to.
    fn omits_steps(&self) -> bool {
        false
    }

    /// Starts pulling, in the background, the base images the last build of `scope`
    /// (`BuildSpec::cache_scope`) used and the engine lacks, so the pull overlaps the source
    /// fetch; the build waits for a pull of its base in flight. Returns at once.
    fn prefetch_bases(&self, _scope: &str, _ctx: &BuildCtx) {}
}
