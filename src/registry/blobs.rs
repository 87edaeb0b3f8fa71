//! Blob reads and uploads (distribution API: POST an upload, PUT its bytes with the digest).
//! Used by incremental rebuilds, which write new layers and a new config next to existing ones.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};

use super::{RegistryClient, unreachable_registry};
use crate::error::BuildError;

impl RegistryClient {
    pub(super) async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, BuildError> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let scope = format!("repository:{repository}:pull");
        let response = self.send(&scope, || self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if !status.is_success() => Err(BuildError::PushFailed(format!(
                "registry answered {status} for blob {digest} of {repository}"
            ))),
            _ => Ok(Some(
                response
                    .bytes()
                    .await
                    .map_err(unreachable_registry)?
                    .to_vec(),
            )),
        }
    }

    pub(super) async fn put_blob(
        &self,
        repository: &str,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<(), BuildError> {
        let scope = format!("repository:{repository}:pull,push");
        let start = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let started = self.send(&scope, || self.http.post(&start)).await?;
        if started.status() != StatusCode::ACCEPTED {
            return Err(BuildError::PushFailed(format!(
                "registry answered {} when starting an upload to {repository}",
                started.status()
            )));
        }
        let location = started
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                BuildError::PushFailed(format!("registry gave no upload location for {repository}"))
            })?;
        // The location may be relative and may carry its own query (upload state).
        let mut url = url::Url::parse(&self.base)
            .and_then(|base| base.join(location))
            .map_err(|e| {
                BuildError::PushFailed(format!("registry gave a bad upload location: {e}"))
            })?;
        url.query_pairs_mut().append_pair("digest", digest);
        let response = self
            .send(&scope, || {
                self.http
                    .put(url.as_str())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .body(bytes.clone())
            })
            .await?;
        if response.status() == StatusCode::CREATED {
            Ok(())
        } else {
            Err(BuildError::PushFailed(format!(
                "registry answered {} when uploading {digest} to {repository}",
                response.status()
            )))
        }
    }
}
