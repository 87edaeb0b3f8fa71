//! An in-memory registry: manifests by tag and by digest, blobs, and the order tags were
//! written in.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::RegistryError;
use crate::ports::{ImageRegistry, Manifest};

#[derive(Default)]
pub struct FakeRegistry {
    /// (repository, tag or digest) -> manifest.
    manifests: Mutex<HashMap<(String, String), Manifest>>,
    blobs: Mutex<HashMap<(String, String), Vec<u8>>>,
    /// (repository, tag) in the order `tag` wrote them.
    pub tag_writes: Mutex<Vec<(String, String)>>,
    /// Returned by the next manifest lookups, first in first out.
    failures: Mutex<VecDeque<RegistryError>>,
    /// The references manifests were looked up by, in order.
    pub lookups: Mutex<Vec<String>>,
}

impl FakeRegistry {
    /// Stores `manifest` under its digest, as a push does before any tag.
    pub fn put(&self, repository: &str, manifest: &Manifest) {
        if let Ok(mut manifests) = self.manifests.lock() {
            manifests.insert(
                (repository.to_owned(), manifest.digest.clone()),
                manifest.clone(),
            );
        }
    }

    pub fn fail_next_lookup(&self, error: RegistryError) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.push_back(error);
        }
    }

    /// How many times a manifest was looked up by `reference`.
    pub fn lookups_of(&self, reference: &str) -> usize {
        self.lookups
            .lock()
            .map(|l| l.iter().filter(|r| *r == reference).count())
            .unwrap_or(0)
    }

    pub fn tags_written(&self) -> Vec<(String, String)> {
        self.tag_writes
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }
}

#[async_trait]
impl ImageRegistry for FakeRegistry {
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        if let Ok(mut lookups) = self.lookups.lock() {
            lookups.push(reference.to_owned());
        }
        if let Some(error) = self.failures.lock().ok().and_then(|mut f| f.pop_front()) {
            return Err(error);
        }
        let manifests = self
            .manifests
            .lock()
            .map_err(|_| RegistryError::Protocol("poisoned lock".into()))?;
        Ok(manifests
            .get(&(repository.to_owned(), reference.to_owned()))
            .cloned())
    }

    async fn digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        Ok(self
            .manifest(repository, reference)
            .await?
            .map(|m| m.digest))
    }

    async fn blob(&self, repository: &str, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let blobs = self
            .blobs
            .lock()
            .map_err(|_| RegistryError::Protocol("poisoned lock".into()))?;
        Ok(blobs
            .get(&(repository.to_owned(), digest.to_owned()))
            .cloned())
    }

    async fn upload_blob(
        &self,
        repository: &str,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<(), RegistryError> {
        if let Ok(mut blobs) = self.blobs.lock() {
            blobs.insert((repository.to_owned(), digest.to_owned()), bytes);
        }
        Ok(())
    }

    async fn upload_blob_file(
        &self,
        repository: &str,
        digest: &str,
        path: &Path,
        _len: u64,
    ) -> Result<(), RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| {
            RegistryError::Protocol(format!("failed to read {}: {e}", path.display()))
        })?;
        self.upload_blob(repository, digest, bytes).await
    }

    async fn tag(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<(), RegistryError> {
        self.put(repository, manifest);
        if let Ok(mut manifests) = self.manifests.lock() {
            manifests.insert((repository.to_owned(), tag.to_owned()), manifest.clone());
        }
        if let Ok(mut writes) = self.tag_writes.lock() {
            writes.push((repository.to_owned(), tag.to_owned()));
        }
        Ok(())
    }

    async fn repositories(&self) -> Result<Vec<String>, RegistryError> {
        let manifests = self
            .manifests
            .lock()
            .map_err(|_| RegistryError::Protocol("poisoned lock".into()))?;
        let names: std::collections::BTreeSet<String> =
            manifests.keys().map(|(repo, _)| repo.clone()).collect();
        Ok(names.into_iter().collect())
    }

    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>, RegistryError> {
        let manifests = self
            .manifests
            .lock()
            .map_err(|_| RegistryError::Protocol("poisoned lock".into()))?;
        let mut tags: Vec<String> = manifests
            .keys()
            .filter(|(repo, reference)| repo == repository && !reference.starts_with("sha256:"))
            .map(|(_, tag)| tag.clone())
            .collect();
        if tags.is_empty() && !manifests.keys().any(|(repo, _)| repo == repository) {
            return Ok(None);
        }
        tags.sort();
        Ok(Some(tags))
    }
}
