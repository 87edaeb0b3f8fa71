//! Edits of an image already in the registry: a new config blob and manifest, no layer moved
//! unless the caller brings new ones. Relabelling (every single-platform podman build: podman
//! spends a commit on a LABEL step, the registry takes a new config in milliseconds) and the
//! incremental rebuild's layer swap are both such edits.

mod image;
mod rebase;

pub(crate) use image::{Appended, NewLayer, Previous};
use rebase::{Parsed, Swap};

use crate::error::{BuildError, RegistryError};
use crate::ports::{ImageRegistry, Manifest, content_digest};

/// Labels for an image pushed without them.
pub struct Relabel<'a> {
    pub registry: &'a dyn ImageRegistry,
    pub repository: &'a str,
    /// The pushed, unlabelled image.
    pub digest: &'a str,
    pub labels: &'a [(String, String)],
    /// Where the labelled image goes (all at once).
    pub tags: &'a [&'a str],
    pub created: time::OffsetDateTime,
}

/// Writes `labels` into the config of `digest` and pushes the result under `tags`: a new config
/// blob and manifest, no layer moves. Returns the labelled image.
pub async fn relabel(r: &Relabel<'_>) -> Result<Manifest, BuildError> {
    // What the registry just took must read back whole: anything less is the registry's failure.
    let failed = |why: String| {
        BuildError::Registry(RegistryError::Protocol(format!(
            "failed to label {}: {why}",
            r.digest
        )))
    };
    let pushed = r
        .registry
        .manifest(r.repository, r.digest)
        .await?
        .ok_or_else(|| failed("the registry does not know it".into()))?;
    let config_digest =
        config_digest(&pushed).ok_or_else(|| failed("its manifest names no config".into()))?;
    let config = r
        .registry
        .blob(r.repository, &config_digest)
        .await?
        .ok_or_else(|| failed("its config is missing".into()))?;
    let image = Previous::parse(&pushed.media_type, &pushed.bytes, &config, 0).map_err(failed)?;
    let media_type = image.media_type(&pushed.media_type);
    let (config, manifest) = image
        .relayer(&[], r.labels, &rfc3339(r.created), "")
        .map_err(failed)?;
    publish(
        r.registry,
        r.repository,
        r.tags,
        media_type,
        config,
        manifest,
    )
    .await
}

/// A base image in the registry images are pushed to, by repository and manifest digest (an
/// index digest is fine: the image's platform is picked from it).
#[derive(Debug, Clone, Copy)]
pub struct BaseImage<'a> {
    pub repository: &'a str,
    pub digest: &'a str,
}

/// An image to move from its old base to a new one (see `rebase`).
pub struct Rebase<'a> {
    pub registry: &'a dyn ImageRegistry,
    pub repository: &'a str,
    pub image: &'a Manifest,
    pub old_base: BaseImage<'a>,
    pub new_base: BaseImage<'a>,
    pub labels: &'a [(String, String)],
    /// Where the rebased image goes (all at once).
    pub tags: &'a [&'a str],
    pub created: time::OffsetDateTime,
    /// Base layers the registry will not mount are copied through here.
    pub scratch_dir: &'a std::path::Path,
}

/// `r.image` with its old base's layers replaced by the new base's, pushed under `r.tags`: the
/// new base's layers are mounted into the image's repository (copied when the registry will
/// not), a new config and manifest written; no layer of the image's own moves. `Ok(Err(why))`
/// when the images show it cannot be done (not built on that base, the new base's settings
/// differ, a shape this edit does not know): the caller builds instead.
pub async fn rebase(r: &Rebase<'_>) -> Result<Result<Manifest, String>, BuildError> {
    let image = match read_image(r.registry, r.repository, r.image.clone(), None).await? {
        Ok(image) => image,
        Err(why) => return Ok(Err(why)),
    };
    let platform = image.platform();
    let mut bases = Vec::with_capacity(2);
    for base in [r.old_base, r.new_base] {
        let Some(manifest) = r.registry.manifest(base.repository, base.digest).await? else {
            return Ok(Err(format!(
                "the registry no longer has {}@{}",
                base.repository, base.digest
            )));
        };
        match read_image(r.registry, base.repository, manifest, Some(&platform)).await? {
            Ok(parsed) => bases.push(parsed),
            Err(why) => return Ok(Err(why)),
        }
    }
    let [old_base, new_base] = <[Parsed; 2]>::try_from(bases)
        .map_err(|_| BuildError::Internal(anyhow::anyhow!("two bases were read")))?;
    let swapped = rebase::swap(&Swap {
        image: &image,
        old_base: &old_base,
        new_base: &new_base,
        new_base_digest: r.new_base.digest,
        labels: r.labels,
        created: &rfc3339(r.created),
    });
    let (config, manifest) = match swapped {
        Ok(edited) => edited,
        Err(why) => return Ok(Err(why)),
    };
    // Each once: a base may list one (empty) layer twice, and a copy goes through one file.
    let layers: std::collections::BTreeSet<&str> = new_base.manifest["layers"]
        .as_array()
        .map(|layers| layers.iter().filter_map(|l| l["digest"].as_str()).collect())
        .unwrap_or_default();
    futures_util::future::try_join_all(
        layers
            .into_iter()
            .map(|digest| bring_layer(r, r.new_base.repository, digest)),
    )
    .await?;
    let media_type = image.manifest["mediaType"]
        .as_str()
        .unwrap_or(&r.image.media_type)
        .to_owned();
    publish(
        r.registry,
        r.repository,
        r.tags,
        media_type,
        config,
        manifest,
    )
    .await
    .map(Ok)
}

/// A manifest and its config, read as one platform's image: from an index, the entry of
/// `platform` (the image's own platform, when reading its bases).
async fn read_image(
    registry: &dyn ImageRegistry,
    repository: &str,
    manifest: Manifest,
    platform: Option<&(String, String, Option<String>)>,
) -> Result<Result<Parsed, String>, BuildError> {
    let what = format!("{repository}@{}", manifest.digest);
    let manifest = if INDEX_TYPES.contains(&manifest.media_type.as_str()) {
        let Some(entry) = platform.and_then(|p| platform_entry(&manifest.bytes, p)) else {
            return Ok(Err(format!("{what} has no entry for the image's platform")));
        };
        match registry.manifest(repository, &entry).await? {
            Some(manifest) => manifest,
            None => {
                return Ok(Err(format!(
                    "the registry no longer has {repository}@{entry}"
                )));
            }
        }
    } else {
        manifest
    };
    let Some(config_digest) = config_digest(&manifest) else {
        return Ok(Err(format!("{what} names no config")));
    };
    let Some(config) = registry.blob(repository, &config_digest).await? else {
        return Ok(Err(format!("the config of {what} is missing")));
    };
    Ok(Parsed::parse(
        &what,
        &manifest.media_type,
        &manifest.bytes,
        &config,
    ))
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The digest of the index entry for `(os, architecture, variant)`.
fn platform_entry(index: &[u8], platform: &(String, String, Option<String>)) -> Option<String> {
    let index: serde_json::Value = serde_json::from_slice(index).ok()?;
    let (os, architecture, variant) = platform;
    index["manifests"].as_array()?.iter().find_map(|entry| {
        let p = &entry["platform"];
        let matches = p["os"].as_str() == Some(os.as_str())
            && p["architecture"].as_str() == Some(architecture.as_str())
            && (variant.is_none() || p["variant"].as_str() == variant.as_deref());
        matches
            .then(|| entry["digest"].as_str().map(str::to_owned))
            .flatten()
    })
}

/// Makes the blob `digest` of `from` part of `r.repository`: mounted, or else copied through
/// the scratch dir.
async fn bring_layer(r: &Rebase<'_>, from: &str, digest: &str) -> Result<(), BuildError> {
    if r.registry.mount_blob(r.repository, digest, from).await? {
        return Ok(());
    }
    let file = r.scratch_dir.join(digest.replace(':', "-"));
    let Some(len) = r.registry.blob_to_file(from, digest, &file).await? else {
        return Err(BuildError::Registry(RegistryError::Protocol(format!(
            "the registry lists {digest} in {from} but does not have it"
        ))));
    };
    let uploaded = r
        .registry
        .upload_blob_file(r.repository, digest, &file, len)
        .await;
    let _ = std::fs::remove_file(&file);
    uploaded.map_err(BuildError::from)
}

/// Uploads an edited image's config, puts its manifest under `tags`; returns the manifest.
pub(crate) async fn publish(
    store: &dyn ImageRegistry,
    repository: &str,
    tags: &[&str],
    media_type: String,
    config: Vec<u8>,
    manifest: Vec<u8>,
) -> Result<Manifest, BuildError> {
    let image = (media_type, config, manifest);
    publish_beside(store, repository, tags, image, async { Ok(()) }).await
}

/// As `publish`, the config uploaded while `blobs` (the uploads of the image's new layers)
/// run; the manifest goes when both are done, under every tag at once (by its digest when
/// there is none).
pub(crate) async fn publish_beside(
    store: &dyn ImageRegistry,
    repository: &str,
    tags: &[&str],
    (media_type, config, manifest): (String, Vec<u8>, Vec<u8>),
    blobs: impl Future<Output = Result<(), BuildError>>,
) -> Result<Manifest, BuildError> {
    let config_digest = content_digest(&config);
    let config = async {
        store
            .upload_blob(repository, &config_digest, config)
            .await
            .map_err(BuildError::from)
    };
    tokio::try_join!(config, blobs)?;
    let manifest = Manifest {
        media_type,
        digest: content_digest(&manifest),
        bytes: manifest,
    };
    let by_digest = [manifest.digest.as_str()];
    let tags = if tags.is_empty() {
        &by_digest[..]
    } else {
        tags
    };
    put_under(store, repository, tags, &manifest).await?;
    Ok(manifest)
}

/// Puts `manifest` under each of `tags` at once, each tag once (concurrent writes of one tag
/// race in some registries).
pub(crate) async fn put_under(
    store: &dyn ImageRegistry,
    repository: &str,
    tags: &[&str],
    manifest: &Manifest,
) -> Result<(), RegistryError> {
    let distinct: std::collections::BTreeSet<&str> = tags.iter().copied().collect();
    futures_util::future::try_join_all(
        distinct
            .into_iter()
            .map(|tag| store.tag(repository, tag, manifest)),
    )
    .await?;
    Ok(())
}

pub(crate) fn config_digest(manifest: &Manifest) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(&manifest.bytes)
        .ok()
        .and_then(|m| m["config"]["digest"].as_str().map(str::to_owned))
}

pub(crate) fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
