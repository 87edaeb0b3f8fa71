//! The registry port: manifests, blobs and tags of an OCI distribution registry, without pulling
//! or pushing whole images. This is what answers an identical request in milliseconds.

use async_trait::async_trait;

use crate::error::RegistryError;

/// The registry's name for `bytes`: `sha256:<hex>`.
pub fn content_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A blob's bytes as they arrive.
pub type BlobChunks = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, RegistryError>>;

/// A blob on its way from the registry, checked against its digest while it streams: the last
/// chunk is held back until everything hashed to the digest, and a mismatch ends the stream with
/// an error instead, so a reader never receives a whole blob that is not the one asked for.
pub struct BlobStream {
    /// The length the registry announced, if it did.
    pub len: Option<u64>,
    pub chunks: BlobChunks,
}

/// A manifest as the registry stores it: bytes are kept verbatim so the digest does not change.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

#[async_trait]
pub trait ImageRegistry: Send + Sync {
    /// The manifest of `repository:reference`, if the registry has it.
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError>;

    /// The digest `repository:reference` points at, if any: a HEAD, no body.
    async fn digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError>;

    /// A blob's bytes (an image config: small), if the registry has it.
    async fn blob(&self, repository: &str, digest: &str) -> Result<Option<Vec<u8>>, RegistryError>;

    /// A blob as a digest-checked stream (see `BlobStream`), for blobs too big to hold: layers,
    /// artifacts. Held in memory by adapters without a streaming read.
    async fn blob_stream(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<BlobStream>, RegistryError> {
        Ok(self
            .blob(repository, digest)
            .await?
            .map(|bytes| BlobStream {
                len: Some(bytes.len() as u64),
                chunks: Box::pin(futures_util::stream::once(async move {
                    Ok(bytes::Bytes::from(bytes))
                })),
            }))
    }

    /// Writes the blob `digest` to the file `path` (created or truncated), checked against the
    /// digest; its size, or None when the registry does not have it.
    async fn blob_to_file(
        &self,
        repository: &str,
        digest: &str,
        path: &std::path::Path,
    ) -> Result<Option<u64>, RegistryError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let Some(mut blob) = self.blob_stream(repository, digest).await? else {
            return Ok(None);
        };
        let disk = |e: std::io::Error| {
            RegistryError::Protocol(format!(
                "failed to write blob {digest} to {}: {e}",
                path.display()
            ))
        };
        let mut file = tokio::fs::File::create(path).await.map_err(disk)?;
        let mut size = 0u64;
        while let Some(chunk) = blob.chunks.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(disk)?;
        }
        file.flush().await.map_err(disk)?;
        Ok(Some(size))
    }

    /// Uploads `bytes` as the blob `digest` (`sha256:<hex>` of the bytes): for small blobs
    /// (configs) held in memory anyway.
    async fn upload_blob(
        &self,
        repository: &str,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<(), RegistryError>;

    /// Uploads the `len`-byte file at `path` as the blob `digest`, streamed from disk: for
    /// layers, which may be large.
    async fn upload_blob_file(
        &self,
        repository: &str,
        digest: &str,
        path: &std::path::Path,
        len: u64,
    ) -> Result<(), RegistryError>;

    /// Makes the blob `digest` of `from` (a repository of the same registry) part of
    /// `repository` without moving its bytes: a cross-repository mount. False when the registry
    /// did not mount it (it may not know the blob, or not allow mounts); the caller copies then.
    async fn mount_blob(
        &self,
        _repository: &str,
        _digest: &str,
        _from: &str,
    ) -> Result<bool, RegistryError> {
        Ok(false)
    }

    /// Starts `n` upload sessions in `repository` for uploads that follow soon, so that each
    /// of those is one round trip instead of two. Best effort: doing nothing is correct.
    async fn prepare_uploads(&self, _repository: &str, _n: usize) {}

    /// Points `repository:tag` at `manifest` (same digest; no layer moves).
    async fn tag(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<(), RegistryError>;

    /// Every repository name the registry lists (its catalog, all pages), in its order.
    async fn repositories(&self) -> Result<Vec<String>, RegistryError>;

    /// The tags of `repository`, or None when the registry does not know it.
    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>, RegistryError>;

    /// Points every tag at `manifest`, writing only those that point elsewhere: the common
    /// identical re-request writes nothing.
    async fn tag_all(
        &self,
        repository: &str,
        tags: &[&str],
        manifest: &Manifest,
    ) -> Result<(), RegistryError> {
        // Side by side, each tag once: concurrent writes of one tag race in some registries.
        let distinct: std::collections::BTreeSet<&str> = tags.iter().copied().collect();
        futures_util::future::try_join_all(distinct.into_iter().map(|tag| async move {
            let current = self.digest(repository, tag).await?;
            if current.as_deref() != Some(manifest.digest.as_str()) {
                self.tag(repository, tag, manifest).await?;
            }
            Ok::<_, RegistryError>(())
        }))
        .await?;
        Ok(())
    }
}

/// A registry client per host, for the registries base images come from (the watcher of
/// `api::base_updates` resolves their tags).
pub trait RegistryHosts: Send + Sync {
    fn for_host(&self, host: &str) -> std::sync::Arc<dyn ImageRegistry>;
}
