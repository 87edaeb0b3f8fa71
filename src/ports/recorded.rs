//! What this service pushed, as its records say: the trust anchor for answers taken from the
//! registry. A tag alone proves nothing (anyone who can push into a namespace can move one), so
//! a cached answer or an incremental base is used only when its digest is a recorded success.

use async_trait::async_trait;

use crate::error::StoreError;

/// Whether an image digest is one of this service's finished builds.
#[async_trait]
pub trait RecordedImages: Send + Sync {
    /// True when a succeeded build of `image` (registry/ns/name) recorded `digest`.
    async fn recorded(&self, image: &str, digest: &str) -> Result<bool, StoreError>;
}
