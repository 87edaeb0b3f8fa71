//! What this service pushed, as its records say: the trust anchor for answers taken from the
//! registry. A tag alone proves nothing (anyone who can push into a namespace can move one), so
//! a cached answer or an incremental base is used only when its digest is a recorded success.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::events::{ArtifactRef, BaseImage};

/// Whether an image digest is one of this service's finished builds.
#[async_trait]
pub trait RecordedImages: Send + Sync {
    /// True when a succeeded build of `image` (registry/ns/name) recorded `digest`.
    async fn recorded(&self, image: &str, digest: &str) -> Result<bool, StoreError>;

    /// The artifacts succeeded builds stored for the image `image@digest`, one per name, path
    /// and platform: a cached answer reuses them instead of reading the layers again. None by
    /// default (everything is exported afresh).
    async fn recorded_artifacts(
        &self,
        _image: &str,
        _digest: &str,
    ) -> Result<Vec<ArtifactRef>, StoreError> {
        Ok(Vec::new())
    }

    /// The base images recorded for `image@digest`: a cached or incremental answer reuses
    /// that image's bases. None by default.
    async fn recorded_bases(
        &self,
        _image: &str,
        _digest: &str,
    ) -> Result<Vec<BaseImage>, StoreError> {
        Ok(Vec::new())
    }
}
