//! Edits of an image already in the registry: a new config blob and manifest, no layer moved
//! unless the caller brings new ones. Relabelling (every single-platform podman build: podman
//! spends a commit on a LABEL step, the registry takes a new config in milliseconds) and the
//! incremental rebuild's layer swap are both such edits.

mod image;

pub(crate) use image::{NewLayer, Previous};

use crate::error::{BuildError, RegistryError};
use crate::ports::{ImageRegistry, Manifest, content_digest};

/// Labels for an image pushed without them.
pub struct Relabel<'a> {
    pub registry: &'a dyn ImageRegistry,
    pub repository: &'a str,
    /// The pushed, unlabelled image.
    pub digest: &'a str,
    pub labels: &'a [(String, String)],
    /// Where the labelled image goes.
    pub tag: &'a str,
    pub created: time::OffsetDateTime,
}

/// Writes `labels` into the config of `digest` and pushes the result under `tag`: a new config
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
        r.tag,
        media_type,
        config,
        manifest,
    )
    .await
}

/// Uploads an edited image's config, puts its manifest under `tag`; returns the manifest.
pub(crate) async fn publish(
    store: &dyn ImageRegistry,
    repository: &str,
    tag: &str,
    media_type: String,
    config: Vec<u8>,
    manifest: Vec<u8>,
) -> Result<Manifest, BuildError> {
    store
        .upload_blob(repository, &content_digest(&config), config)
        .await?;
    let manifest = Manifest {
        media_type,
        digest: content_digest(&manifest),
        bytes: manifest,
    };
    store.tag(repository, tag, &manifest).await?;
    Ok(manifest)
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
