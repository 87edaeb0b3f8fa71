//! A base update of an image whose Dockerfile never reads its base (`Dockerfile::base_use`):
//! the configuration's previous image, built from the same commit, is moved onto the new base
//! in the registry (`image_edit::rebase`) instead of built again. Only for a base in the
//! product's own registry (the swap mounts its layers across repositories) and one platform.

use super::{Attempt, Edited, relative};
use crate::confined::Tree;
use crate::dockerfile::Dockerfile;
use crate::error::BuildError;
use crate::events::BaseImage;
use crate::image_edit::{self, Rebase};
use crate::ports::Recipe;
use crate::request::BaseUpdate;

/// The label every build writes with its commit.
const REVISION: &str = "org.opencontainers.image.revision";

/// The swapped image with the bases it now stands on; or why this update needs a build.
pub async fn swap_base(
    a: &Attempt<'_>,
    moved: &BaseUpdate,
) -> Result<Result<(Edited, Vec<BaseImage>), String>, BuildError> {
    let spec = a.spec;
    if spec.platforms.len() > 1 {
        return Ok(Err("several platforms".into()));
    }
    if let Some(target) = &spec.target {
        return Ok(Err(format!("the target stage '{target}' is built")));
    }
    let Recipe::Dockerfile(dockerfile) = &spec.recipe else {
        return Ok(Err("nixpacks generates the Dockerfile".into()));
    };
    let Some(base_repository) = moved
        .reference
        .strip_prefix(&format!("{}/", a.env.settings.registry_host))
        .and_then(|rest| rest.rsplit_once(':').map(|(name, _)| name))
    else {
        return Ok(Err("the base is in another registry".into()));
    };
    let tree = match Tree::open(&spec.checkout_dir) {
        Ok(tree) => tree,
        Err(e) => return Ok(Err(format!("the checkout cannot be opened: {e}"))),
    };
    let text = match tree.read_to_string(
        &relative(&spec.checkout_dir, dockerfile)?,
        crate::dockerfile::MAX_DOCKERFILE_BYTES,
    ) {
        Ok(text) => text,
        Err(why) => return Ok(Err(format!("the Dockerfile cannot be read: {why}"))),
    };
    match Dockerfile::parse(&text) {
        Ok(parsed) => {
            if let Some(why) = parsed.base_use() {
                return Ok(Err(why));
            }
        }
        Err(why) => return Ok(Err(format!("the Dockerfile cannot be read: {why}"))),
    }

    let registry = a.env.registry.as_ref();
    let Some(previous) = registry.manifest(a.repository, &spec.lineage_tag).await? else {
        return Ok(Err("the configuration has no previous image".into()));
    };
    if !crate::ports::recorded(a.env, &spec.image, &previous.digest).await? {
        return Ok(Err(format!(
            "the lineage tag points at {}, which this service did not record building",
            previous.digest
        )));
    }
    if revision(a, &previous).await?.as_deref() != Some(a.checkout.commit.as_str()) {
        return Ok(Err(format!(
            "the previous image was not built from commit {}",
            a.checkout.commit
        )));
    }
    let bases = a
        .env
        .recorded_images
        .recorded_bases(&spec.image, &previous.digest)
        .await?;
    let Some(old) = bases
        .iter()
        .find(|b| b.is_final && b.reference == moved.reference)
    else {
        return Ok(Err(format!(
            "the previous image's final stage is not recorded on {}",
            moved.reference
        )));
    };
    // The digest the registry serves is one of those the engine knew the image by.
    let candidates = std::iter::once(&old.digest).chain(old.also.iter());
    let mut why = String::from("the old base is no longer in the registry");
    for old_digest in candidates {
        let rebase = Rebase {
            registry,
            repository: a.repository,
            image: &previous,
            old_base: image_edit::BaseImage {
                repository: base_repository,
                digest: old_digest,
            },
            new_base: image_edit::BaseImage {
                repository: base_repository,
                digest: &moved.digest,
            },
            labels: &spec.labels,
            tags: a.tags,
            created: a.created,
            scratch_dir: a.scratch_dir,
        };
        match image_edit::rebase(&rebase).await? {
            Ok(manifest) => {
                a.log.push(&format!(
                    "moved {}@{} onto {}@{} in the registry: {}",
                    spec.image, previous.digest, moved.reference, moved.digest, manifest.digest
                ));
                let now_on = bases
                    .iter()
                    .map(|b| match b.reference == moved.reference {
                        true => BaseImage {
                            digest: moved.digest.clone(),
                            also: Vec::new(),
                            ..b.clone()
                        },
                        false => b.clone(),
                    })
                    .collect();
                let edited = Edited {
                    manifest,
                    why: moved.why(),
                    from: previous.digest.clone(),
                };
                return Ok(Ok((edited, now_on)));
            }
            Err(reason) if reason.contains("no longer has") => why = reason,
            Err(reason) => return Ok(Err(reason)),
        }
    }
    Ok(Err(why))
}

/// The commit the image was built from, as its revision label says.
async fn revision(
    a: &Attempt<'_>,
    image: &crate::ports::Manifest,
) -> Result<Option<String>, BuildError> {
    let Some(config) = image_edit::config_digest(image) else {
        return Ok(None);
    };
    let Some(bytes) = a.env.registry.blob(a.repository, &config).await? else {
        return Ok(None);
    };
    let config: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok(config["config"]["Labels"][REVISION]
        .as_str()
        .map(str::to_owned))
}
