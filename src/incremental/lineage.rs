//! The image an incremental rebuild edits, read while a new commit is fetched: the lineage tag
//! names the configuration without the commit, so it is known before the commit arrives, and
//! the three lookups it takes (manifest, record, config) leave the build's critical path.

use tokio_util::task::AbortOnDropHandle;

use crate::error::BuildError;
use crate::image_edit::config_digest;
use crate::ports::{Environment, Manifest};

/// What the lineage tag pointed at when it was read.
pub struct LineageImage {
    pub manifest: Manifest,
    /// Whether this service recorded building it: only such an image is edited.
    pub recorded: bool,
    /// Its config, read only for a recorded image. `None`: the manifest names none;
    /// `Some(None)`: the registry no longer has it.
    pub config: Option<Option<Vec<u8>>>,
}

/// The lookup, running; dropping it stops it (a cached answer never needs it).
pub type LookingUp = AbortOnDropHandle<Result<Option<LineageImage>, BuildError>>;

/// Starts reading `repository:lineage_tag` (of `image`); `None` when the registry has no such
/// tag, an error when it failed.
pub fn look_up(env: &Environment, image: &str, repository: &str, lineage_tag: &str) -> LookingUp {
    let (env, image) = (env.clone(), image.to_owned());
    let (repository, tag) = (repository.to_owned(), lineage_tag.to_owned());
    AbortOnDropHandle::new(tokio::spawn(async move {
        read(&env, &image, &repository, &tag).await
    }))
}

/// What the lookup found: `None` when the registry has no such tag.
pub async fn found(looking_up: LookingUp) -> Result<Option<LineageImage>, BuildError> {
    looking_up
        .await
        .map_err(|e| BuildError::Internal(anyhow::anyhow!("the lineage lookup failed: {e}")))?
}

async fn read(
    env: &Environment,
    image: &str,
    repository: &str,
    tag: &str,
) -> Result<Option<LineageImage>, BuildError> {
    let Some(manifest) = env.registry.manifest(repository, tag).await? else {
        return Ok(None);
    };
    let recorded = crate::ports::recorded(env, image, &manifest.digest).await?;
    let config = match config_digest(&manifest) {
        Some(digest) if recorded => Some(env.registry.blob(repository, &digest).await?),
        _ => None,
    };
    Ok(Some(LineageImage {
        manifest,
        recorded,
        config,
    }))
}
