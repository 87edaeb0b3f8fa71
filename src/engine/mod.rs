//! Image engines: build a `BuildSpec` and push it. `build.engine` picks one: the podman CLI, or
//! a Docker Engine API daemon through bollard.

mod base_images;
mod base_prefetch;
mod base_triggers;
mod build_net;
mod cache_mounts;
mod cgroup;
mod disk_watch;
mod docker;
mod labels;
mod nixpacks;
mod podman;
mod podman_failure;
mod podman_fit;
mod registries_conf;
mod registries_host;
mod sandbox;
mod store_lock;

use std::path::{Path, PathBuf};

pub use build_net::fence_missing as build_network_fence_missing;
pub use cgroup::remove_stale as remove_stale_cgroups;
pub use docker::DockerEngine;
pub use podman::Podman;

use crate::confined::{Refused, Tree};
use crate::dockerfile::MAX_DOCKERFILE_BYTES;
use crate::error::{BuildError, EngineError, ProcessError};
use crate::ports::{BuildCtx, BuildSpec, ImageEngine, Recipe};

/// The one reading of a failed program an engine ran, after the caller has taken what is its
/// own to judge (a step's failure, the build's time limit): a cancel is the build's, running out
/// of time is ours to retry, anything else is the engine failing while `doing`.
fn program_failed(e: ProcessError, doing: impl Into<String>, log_tail: &[String]) -> BuildError {
    match e {
        ProcessError::Cancelled { .. } => BuildError::Cancelled,
        ProcessError::TimedOut { after, .. } => BuildError::TimedOut(after),
        source => {
            let said = match &source {
                ProcessError::Failed {
                    last_stderr: Some(last),
                    ..
                } if !last.trim().is_empty() => last.trim().to_owned(),
                _ => log_tail
                    .last()
                    .cloned()
                    .unwrap_or_else(|| "no output".into()),
            };
            BuildError::Engine(EngineError::Program {
                doing: doing.into(),
                said,
                source,
            })
        }
    }
}

/// An engine failure while pushing is a failed push.
fn push_failed(e: BuildError) -> BuildError {
    match e {
        BuildError::Engine(e) => BuildError::PushFailed(e),
        other => other,
    }
}

/// What an engine builds from: the request's Dockerfile and context, or what nixpacks generated.
struct Input {
    dockerfile: PathBuf,
    context: PathBuf,
    /// The Dockerfile's text, read beneath the checkout (or nixpacks' output), never through a
    /// symlink that leads out of it.
    text: String,
}

impl Input {
    async fn new(
        spec: &BuildSpec,
        nixpacks_program: &str,
        ctx: &BuildCtx,
    ) -> Result<Self, BuildError> {
        let (dockerfile, context, root) = match &spec.recipe {
            Recipe::Dockerfile(path) => (
                path.clone(),
                spec.context_dir.clone(),
                spec.checkout_dir.clone(),
            ),
            Recipe::Nixpacks => {
                let (dockerfile, out) =
                    nixpacks::generate(nixpacks_program, &spec.context_dir, ctx).await?;
                (dockerfile, out.clone(), out)
            }
        };
        let text = read_dockerfile(&root, &dockerfile)?;
        Ok(Self {
            dockerfile,
            context,
            text,
        })
    }
}

/// The text of `dockerfile`, read beneath `root`.
fn read_dockerfile(root: &Path, dockerfile: &Path) -> Result<String, BuildError> {
    let rel = dockerfile.strip_prefix(root).map_err(|_| {
        BuildError::Internal(anyhow::anyhow!(
            "the Dockerfile {} is not inside {}",
            dockerfile.display(),
            root.display()
        ))
    })?;
    let tree = Tree::open(root).map_err(|e| {
        BuildError::Internal(anyhow::anyhow!("failed to open {}: {e}", root.display()))
    })?;
    tree.read_to_string(rel, MAX_DOCKERFILE_BYTES)
        .map_err(|why| match why {
            Refused::Io { .. } => why.into(),
            other => BuildError::NoRecipe(format!("failed to read the Dockerfile: {other}")),
        })
}

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
