//! OCI distribution API adapter of the registry port (`ports::ImageRegistry`): look a manifest up
//! and tag it again, read and upload blobs, without pulling or pushing whole images.

mod blobs;

use std::collections::HashMap;
use std::sync::Mutex;

use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use secrecy::ExposeSecret;

use crate::config::{RegistryCredentials, RegistrySettings};
use crate::error::RegistryError;
use crate::fresh::FreshGates;
use crate::ports::{ImageRegistry, Manifest, content_digest};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Talks to one registry (`registry.host`), with its credentials when it asks for them.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    credentials: Option<RegistryCredentials>,
    /// Bearer tokens by scope, for registries that use the token flow.
    tokens: Mutex<HashMap<String, String>>,
    /// Identical lookups in flight at once share a round trip (bursts of cached answers).
    manifests: FreshGates<Option<Manifest>>,
    digests: FreshGates<Option<String>>,
}

impl RegistryClient {
    pub fn new(settings: &RegistrySettings) -> Self {
        let scheme = if settings.insecure { "http" } else { "https" };
        Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            base: format!("{scheme}://{}", settings.host),
            credentials: settings.credentials(),
            tokens: Mutex::new(HashMap::new()),
            manifests: FreshGates::default(),
            digests: FreshGates::default(),
        }
    }

    /// `send_once`, again after a short pause when the registry answers 5xx or cannot be reached:
    /// registries under concurrent writes answer 500 now and then.
    async fn send(
        &self,
        scope: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let attempt = || async {
            let response = self.send_once(scope, &build).await?;
            if response.status().is_server_error() {
                return Err(RegistryError::Status {
                    status: response.status(),
                    doing: format!("for {scope}"),
                });
            }
            Ok(response)
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(400))
            .with_max_times(3);
        attempt.retry(backoff).await
    }

    /// Sends a request, answering one auth challenge (basic or bearer token) if the registry asks.
    async fn send_once(
        &self,
        scope: &str,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let cached = self.tokens.lock().ok().and_then(|t| t.get(scope).cloned());
        let first = match &cached {
            Some(token) => build().bearer_auth(token),
            None => build(),
        };
        let response = first.send().await.map_err(RegistryError::Unreachable)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let retry = if challenge.to_ascii_lowercase().starts_with("bearer") {
            let token = self.fetch_token(&challenge, scope).await?;
            build().bearer_auth(token)
        } else if let Some(login) = &self.credentials {
            build().basic_auth(&login.username, Some(login.password.expose_secret()))
        } else {
            return Ok(response);
        };
        retry.send().await.map_err(RegistryError::Unreachable)
    }

    async fn fetch_token(&self, challenge: &str, scope: &str) -> Result<String, RegistryError> {
        let params = parse_challenge(challenge);
        let realm = params.get("realm").ok_or_else(|| {
            RegistryError::Protocol("the registry's auth challenge has no realm".into())
        })?;
        let mut request = self.http.get(realm).query(&[("scope", scope)]);
        if let Some(service) = params.get("service") {
            request = request.query(&[("service", service)]);
        }
        if let Some(login) = &self.credentials {
            request = request.basic_auth(&login.username, Some(login.password.expose_secret()));
        }
        let body: serde_json::Value = request
            .send()
            .await
            .map_err(RegistryError::Unreachable)?
            .json()
            .await
            .map_err(|source| RegistryError::Unreadable {
                what: "a token",
                source,
            })?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| RegistryError::Protocol("the registry gave no token".into()))?
            .to_owned();
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(scope.to_owned(), token.clone());
        }
        Ok(token)
    }
}

#[async_trait]
impl ImageRegistry for RegistryClient {
    async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let key = format!("{repository}:{reference}");
        self.manifests
            .fresh(&key, || self.get_manifest(repository, reference))
            .await
    }

    async fn digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let key = format!("{repository}:{reference}");
        self.digests
            .fresh(&key, || self.head_digest(repository, reference))
            .await
    }

    async fn tag(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<(), RegistryError> {
        self.put_manifest(repository, tag, manifest).await
    }

    async fn blob(&self, repository: &str, digest: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        self.get_blob(repository, digest).await
    }

    async fn upload_blob(
        &self,
        repository: &str,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<(), RegistryError> {
        self.put_blob(repository, digest, bytes).await
    }

    async fn upload_blob_file(
        &self,
        repository: &str,
        digest: &str,
        path: &std::path::Path,
        len: u64,
    ) -> Result<(), RegistryError> {
        self.put_blob_file(repository, digest, path, len).await
    }
}

impl RegistryClient {
    async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
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
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let media_type = header(CONTENT_TYPE.as_str()).unwrap_or_default();
        let digest = header("docker-content-digest");
        let bytes = response
            .bytes()
            .await
            .map_err(|source| RegistryError::Unreadable {
                what: "a manifest",
                source,
            })?
            .to_vec();
        let digest = digest.unwrap_or_else(|| content_digest(&bytes));
        Ok(Some(Manifest {
            media_type,
            bytes,
            digest,
        }))
    }

    async fn head_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let url = format!("{}/v2/{repository}/manifests/{reference}", self.base);
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
            _ => match response
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
            {
                Some(digest) => Ok(Some(digest.to_owned())),
                // Not every registry sends the header on HEAD: read the manifest itself.
                None => Ok(self
                    .get_manifest(repository, reference)
                    .await?
                    .map(|m| m.digest)),
            },
        }
    }

    async fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<(), RegistryError> {
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base);
        let scope = format!("repository:{repository}:pull,push");
        let response = self
            .send(&scope, || {
                self.http
                    .put(&url)
                    .header(CONTENT_TYPE, &manifest.media_type)
                    .body(manifest.bytes.clone())
            })
            .await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(RegistryError::Status {
                status: response.status(),
                doing: format!("when tagging {repository}:{tag}"),
            })
        }
    }
}

/// `Bearer realm="https://auth",service="registry",scope="..."` -> its key/value pairs.
fn parse_challenge(challenge: &str) -> HashMap<String, String> {
    let params = challenge.split_once(' ').map_or("", |(_, rest)| rest);
    let mut out = HashMap::new();
    let mut rest = params;
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((value, next)) => (value, next),
                None => (quoted, ""),
            },
            None => after.split_once(',').unwrap_or((after, "")),
        };
        out.insert(key, value.to_owned());
        rest = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example.com/token");
        assert_eq!(p["service"], "registry.example.com");
        assert_eq!(p["scope"], "repository:a/b:pull");
    }
}
