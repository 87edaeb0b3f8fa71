//! Manifest reads (GET, HEAD) and writes (PUT under a tag), each checked against its digest.

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::{RegistryClient, digest};
use crate::error::RegistryError;
use crate::ports::{Manifest, content_digest};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

const CONTENT_DIGEST: &str = "docker-content-digest";

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl RegistryClient {
    /// The manifest's exact bytes, which must hash to the digest asked for (a reference by
    /// digest) or else to the one the registry announces (by tag).
    pub(super) async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let url = self.url(&format!("{repository}/manifests/{reference}"));
        let scope = format!("repository:{repository}:pull");
        let response = self
            .send(&scope, || {
                self.http.get(&url).header(ACCEPT, MANIFEST_TYPES)
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if !status.is_success() => {
                return Err(RegistryError::Status {
                    status,
                    doing: format!("for {repository}:{reference}"),
                });
            }
            _ => {}
        }
        let media_type = header(&response, CONTENT_TYPE.as_str()).unwrap_or_default();
        let announced = header(&response, CONTENT_DIGEST);
        let bytes = response
            .bytes()
            .await
            .map_err(|source| RegistryError::Unreadable {
                what: "a manifest",
                source,
            })?
            .to_vec();
        let what = format!("the manifest of {repository}@{reference}");
        let expected = if digest::is_digest(reference) {
            Some(reference.to_owned())
        } else {
            announced
        };
        let digest = match expected {
            Some(expected) => {
                digest::verify(&what, &expected, &bytes)?;
                expected
            }
            None => content_digest(&bytes),
        };
        Ok(Some(Manifest {
            media_type,
            bytes,
            digest,
        }))
    }

    pub(super) async fn head_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let url = self.url(&format!("{repository}/manifests/{reference}"));
        let scope = format!("repository:{repository}:pull");
        let response = self
            .send(&scope, || {
                self.http.head(&url).header(ACCEPT, MANIFEST_TYPES)
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if !status.is_success() => Err(RegistryError::Status {
                status,
                doing: format!("for {repository}:{reference}"),
            }),
            _ => match header(&response, CONTENT_DIGEST) {
                Some(announced) => {
                    if digest::is_digest(reference) {
                        let what = format!("the manifest of {repository}@{reference}");
                        digest::check_announced(&what, reference, Some(&announced))?;
                    }
                    Ok(Some(announced))
                }
                // Not every registry sends the header on HEAD: read (and hash) the manifest.
                None => Ok(self
                    .get_manifest(repository, reference)
                    .await?
                    .map(|m| m.digest)),
            },
        }
    }

    /// PUTs the manifest's bytes under `tag`; a digest the registry announces for them must be
    /// theirs.
    pub(super) async fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<(), RegistryError> {
        let url = self.url(&format!("{repository}/manifests/{tag}"));
        let scope = format!("repository:{repository}:pull,push");
        // One copy for all tries: each takes a cheap clone.
        let body = Bytes::from(manifest.bytes.clone());
        let response = self
            .send(&scope, || {
                self.http
                    .put(&url)
                    .header(CONTENT_TYPE, &manifest.media_type)
                    .body(body.clone())
            })
            .await?;
        if !response.status().is_success() {
            return Err(RegistryError::Status {
                status: response.status(),
                doing: format!("when tagging {repository}:{tag}"),
            });
        }
        match header(&response, CONTENT_DIGEST) {
            Some(announced) => digest::check_announced(
                &format!("the manifest written to {repository}:{tag}"),
                &digest::of(&announced, &body)?,
                Some(&announced),
            ),
            None => Ok(()),
        }
    }
}
