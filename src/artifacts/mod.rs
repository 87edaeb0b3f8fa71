//! Artifacts: paths of a pushed image exported from its layers in the registry, without running
//! a container, and stored in the same repository as OCI artifacts whose subject is the image.
//! `overlay` reads the layers as the runtime would see them; `oci` writes the documents.
//!
//! Read after every push and after a cached answer too: the build key names the image, not
//! its exports, so a request for other artifacts of an image already built gets them without a
//! build. A multi-platform image (an index) gets one artifact per platform and name.

mod oci;
mod overlay;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::build_log::BuildLog;
use crate::error::{BuildError, RegistryError};
use crate::events::ArtifactRef;
use crate::ports::{ImageRegistry, Manifest, content_digest};
use crate::request::ArtifactSpec;

pub use oci::{ARTIFACT_TYPE, referrers_tag};
pub use overlay::{ExportError, Exported, export};

/// One export of a pushed image.
pub struct Export<'a> {
    pub registry: &'a dyn ImageRegistry,
    /// The distribution API's repository path (`ns/name`).
    pub repository: &'a str,
    /// The image as pushed (a manifest, or an index of per-platform manifests).
    pub image: &'a Manifest,
    pub specs: &'a [ArtifactSpec],
    /// `artifacts.max_bytes`.
    pub max_bytes: u64,
    /// The build's scratch dir: layers and artifacts pass through it, removed with it.
    pub scratch_dir: &'a Path,
    pub log: &'a BuildLog,
    /// What earlier builds of this very image stored (`RecordedImages::recorded_artifacts`):
    /// reused when it covers every spec and is still in the registry.
    pub recorded: &'a [ArtifactRef],
}

/// Exports every spec from every platform of the image, stores each as an artifact and lists
/// them all under the image's referrers tag.
pub async fn export_all(e: &Export<'_>) -> Result<Vec<ArtifactRef>, BuildError> {
    if e.specs.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(reused) = reuse(e).await? {
        e.log.push(&format!(
            "artifacts of {} already stored: {}",
            e.image.digest,
            reused
                .iter()
                .map(|a| format!("{} ({}) {}", a.name, a.platform, a.digest))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(reused);
    }
    let subject = oci::Descriptor {
        media_type: media_type(e.image),
        digest: e.image.digest.clone(),
        size: e.image.bytes.len() as u64,
    };
    let dir = e.scratch_dir.join("artifacts");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|err| internal("create the artifacts dir", err))?;
    e.registry
        .upload_blob(
            e.repository,
            &content_digest(oci::EMPTY),
            oci::EMPTY.to_vec(),
        )
        .await?;
    let mut stored = Vec::new();
    for (platform, manifest) in platform_images(e).await? {
        let layers = fetch_layers(e, &manifest, &dir).await?;
        for (i, spec) in e.specs.iter().enumerate() {
            stored.push(store_one(e, &subject, &platform, &layers, &dir, i, spec).await?);
        }
    }
    list_referrers(e, &subject, &stored).await?;
    Ok(stored.into_iter().map(|s| s.artifact).collect())
}

/// The recorded artifacts of this image for every spec (same name and path), each still in the
/// registry; None when any is missing, and everything is exported again. Exports are
/// deterministic, so a reuse is exactly what a new export would store.
async fn reuse(e: &Export<'_>) -> Result<Option<Vec<ArtifactRef>>, BuildError> {
    let mut reused = Vec::new();
    for spec in e.specs {
        let matching: Vec<&ArtifactRef> = e
            .recorded
            .iter()
            .filter(|a| a.name == spec.name.as_str() && a.path == spec.path.as_str())
            .collect();
        if matching.is_empty() {
            return Ok(None);
        }
        for artifact in matching {
            let there = e.registry.digest(e.repository, &artifact.digest).await?;
            if there.as_deref() != Some(artifact.digest.as_str()) {
                return Ok(None);
            }
            reused.push(artifact.clone());
        }
    }
    Ok(Some(reused))
}

/// Adds the stored artifacts to the image's referrers fallback tag. Another export of the same
/// image (a cached answer beside this one) may write the tag at the same moment: the tag is read
/// back, and merged again while an artifact of ours is missing from it.
async fn list_referrers(
    e: &Export<'_>,
    subject: &oci::Descriptor,
    stored: &[Stored],
) -> Result<(), BuildError> {
    const TRIES: usize = 3;
    let tag = oci::referrers_tag(&e.image.digest);
    let artifacts: Vec<oci::Artifact<'_>> = stored
        .iter()
        .map(|s| oci::Artifact {
            name: &s.artifact.name,
            path: &s.artifact.path,
            platform: &s.artifact.platform,
            blob: &s.blob,
            subject,
        })
        .collect();
    let added: Vec<(oci::Descriptor, &oci::Artifact<'_>)> = stored
        .iter()
        .zip(&artifacts)
        .map(|(s, a)| (s.manifest.clone(), a))
        .collect();
    let index_of = |current: &Option<Manifest>| -> Option<Vec<u8>> {
        current
            .as_ref()
            .filter(|m| media_type(m) == oci::IMAGE_INDEX)
            .map(|m| m.bytes.clone())
    };
    let mut current = e.registry.manifest(e.repository, &tag).await?;
    for _ in 0..TRIES {
        let bytes = oci::referrers_index(index_of(&current).as_deref(), &added);
        let index = Manifest {
            media_type: oci::IMAGE_INDEX.to_owned(),
            digest: content_digest(&bytes),
            bytes,
        };
        if current.as_ref().map(|c| &c.digest) != Some(&index.digest) {
            e.registry.tag(e.repository, &tag, &index).await?;
        }
        current = e.registry.manifest(e.repository, &tag).await?;
        let listed = index_of(&current).unwrap_or_default();
        if oci::lists_all(&listed, &added) {
            return Ok(());
        }
    }
    Err(protocol(format!(
        "the referrers tag {tag} kept changing under {TRIES} writes; the artifacts are stored \
         but not all listed there"
    )))
}

/// One stored artifact and the descriptors the referrers index needs.
struct Stored {
    artifact: ArtifactRef,
    blob: oci::Descriptor,
    manifest: oci::Descriptor,
}

async fn store_one(
    e: &Export<'_>,
    subject: &oci::Descriptor,
    platform: &str,
    layers: &[PathBuf],
    dir: &Path,
    index: usize,
    spec: &ArtifactSpec,
) -> Result<Stored, BuildError> {
    let started = std::time::Instant::now();
    let out = dir.join(format!("{}-{index}.tar.gz", platform.replace('/', "-")));
    let (layers_owned, path, max) = (layers.to_vec(), spec.path.clone(), e.max_bytes);
    let out_file = out.clone();
    let exported = tokio::task::spawn_blocking(move || {
        overlay::export(&layers_owned, &path, max, &out_file)
    })
    .await
    .map_err(|err| BuildError::Internal(anyhow::anyhow!("the artifact export stopped: {err}")))?
    .map_err(|err| match err {
        ExportError::Missing(path) => BuildError::ArtifactMissing(format!(
            "{path} (artifacts[{index}].path, artifact {:?}) is not in the image for {platform} \
             (paths are read literally: a symlink on the way is not followed)",
            spec.name.as_str()
        )),
        too_large @ ExportError::TooLarge { .. } => {
            BuildError::LimitExceeded(format!("artifacts[{index}]: {too_large}"))
        }
        other => BuildError::Internal(anyhow::Error::new(other)),
    })?;
    e.registry
        .upload_blob_file(e.repository, &exported.digest, &out, exported.size)
        .await?;
    let blob = oci::Descriptor {
        media_type: oci::TAR_GZIP.to_owned(),
        digest: exported.digest.clone(),
        size: exported.size,
    };
    let bytes = oci::artifact_manifest(&oci::Artifact {
        name: spec.name.as_str(),
        path: spec.path.as_str(),
        platform,
        blob: &blob,
        subject,
    });
    let manifest = Manifest {
        media_type: oci::IMAGE_MANIFEST.to_owned(),
        digest: content_digest(&bytes),
        bytes,
    };
    e.registry
        .tag(e.repository, &manifest.digest, &manifest)
        .await?;
    // The file is uploaded; the scratch disk is not a second copy of every artifact.
    let _ = tokio::fs::remove_file(&out).await;
    e.log.push(&format!(
        "artifact {} ({} for {platform}): {}, {} bytes in {} entries, stored in {} ms",
        spec.name.as_str(),
        spec.path.as_str(),
        manifest.digest,
        exported.size,
        exported.entries,
        started.elapsed().as_millis()
    ));
    Ok(Stored {
        artifact: ArtifactRef {
            name: spec.name.as_str().to_owned(),
            path: spec.path.as_str().to_owned(),
            platform: platform.to_owned(),
            digest: manifest.digest.clone(),
            blob_digest: exported.digest,
            size: exported.size,
        },
        blob,
        manifest: oci::Descriptor {
            media_type: oci::IMAGE_MANIFEST.to_owned(),
            size: manifest.bytes.len() as u64,
            digest: manifest.digest,
        },
    })
}

/// The image's per-platform manifests with their `os/arch[/variant]`: the entries of an index
/// (attestations, `unknown/unknown`, skipped), or the image itself with its config's platform.
async fn platform_images(e: &Export<'_>) -> Result<Vec<(String, Manifest)>, BuildError> {
    let document = json_of(e.image)?;
    let kind = media_type(e.image);
    if kind != oci::IMAGE_INDEX && kind != oci::DOCKER_LIST {
        let platform = config_platform(e, &document).await?;
        return Ok(vec![(platform, e.image.clone())]);
    }
    let mut images = Vec::new();
    for entry in document
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(platform) = entry.get("platform").and_then(platform_of) else {
            continue;
        };
        let Some(digest) = entry.get("digest").and_then(Value::as_str) else {
            continue;
        };
        let manifest = e
            .registry
            .manifest(e.repository, digest)
            .await?
            .ok_or_else(|| protocol(format!("the index names {digest}, which is not there")))?;
        images.push((platform, manifest));
    }
    Ok(images)
}

/// `os/arch[/variant]` of a platform object; None for `unknown` (attestation manifests).
fn platform_of(platform: &Value) -> Option<String> {
    let os = platform.get("os").and_then(Value::as_str)?;
    let arch = platform.get("architecture").and_then(Value::as_str)?;
    if os == "unknown" || arch == "unknown" {
        return None;
    }
    Some(match platform.get("variant").and_then(Value::as_str) {
        Some(variant) if !variant.is_empty() => format!("{os}/{arch}/{variant}"),
        _ => format!("{os}/{arch}"),
    })
}

async fn config_platform(e: &Export<'_>, manifest: &Value) -> Result<String, BuildError> {
    let digest = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .ok_or_else(|| protocol("the image manifest has no config".into()))?;
    let config = e
        .registry
        .blob(e.repository, digest)
        .await?
        .ok_or_else(|| protocol(format!("the image config {digest} is not there")))?;
    let config: Value = serde_json::from_slice(&config)
        .map_err(|err| protocol(format!("the image config is not JSON: {err}")))?;
    platform_of(&config).ok_or_else(|| protocol("the image config names no platform".into()))
}

/// Downloads the manifest's layers (each once per build) into `dir`, bottom first.
async fn fetch_layers(
    e: &Export<'_>,
    manifest: &Manifest,
    dir: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    let document = json_of(manifest)?;
    let mut files = Vec::new();
    for layer in document
        .get("layers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let digest = layer
            .get("digest")
            .and_then(Value::as_str)
            .filter(|d| {
                d.split_once(':')
                    .is_some_and(|(_, hex)| hex.chars().all(|c| c.is_ascii_hexdigit()))
            })
            .ok_or_else(|| {
                protocol(format!(
                    "a layer of {} has no valid digest",
                    manifest.digest
                ))
            })?;
        let file = dir.join(format!("layer-{}", digest.replace(':', "-")));
        // A layer shared by platforms (or listed twice) is fetched once.
        if !file.exists() {
            e.registry
                .blob_to_file(e.repository, digest, &file)
                .await?
                .ok_or_else(|| protocol(format!("layer {digest} is not in the registry")))?;
        }
        files.push(file);
    }
    Ok(files)
}

/// The document's own `mediaType`, else the one the registry served it as.
fn media_type(manifest: &Manifest) -> String {
    serde_json::from_slice::<Value>(&manifest.bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| manifest.media_type.clone())
}

fn json_of(manifest: &Manifest) -> Result<Value, BuildError> {
    serde_json::from_slice(&manifest.bytes)
        .map_err(|err| protocol(format!("manifest {} is not JSON: {err}", manifest.digest)))
}

fn protocol(message: String) -> BuildError {
    BuildError::Registry(RegistryError::Protocol(message))
}

fn internal(doing: &str, err: std::io::Error) -> BuildError {
    BuildError::Internal(anyhow::anyhow!("failed to {doing}: {err}"))
}

#[cfg(test)]
mod tests;
