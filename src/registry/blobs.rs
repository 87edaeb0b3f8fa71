//! Blob reads and uploads (distribution API: POST an upload, PUT its bytes with the digest).
//! Used by incremental rebuilds, which write new layers and a new config next to existing ones.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use tokio_util::io::ReaderStream;

use super::{RegistryClient, digest};
use crate::error::RegistryError;
use crate::ports::BlobStream;

/// Blobs up to this size are uploaded from memory.
const IN_MEMORY_UPLOAD: u64 = 16 * 1024 * 1024;
/// The read size of a larger blob's upload stream.
const STREAM_CHUNK: usize = 1024 * 1024;

/// The state of a digest-checked blob stream: the chunk held back and the running hash (taken
/// when the stream has ended).
struct Checked {
    chunks: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    hasher: Option<digest::Hasher>,
    held: Option<Bytes>,
    what: String,
    digest: String,
}

impl Checked {
    async fn next(mut self) -> Option<(Result<Bytes, RegistryError>, Self)> {
        use futures_util::StreamExt;
        let hasher = self.hasher.as_mut()?;
        loop {
            match self.chunks.next().await {
                Some(Ok(chunk)) if chunk.is_empty() => {}
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    if let Some(previous) = self.held.replace(chunk) {
                        return Some((Ok(previous), self));
                    }
                }
                Some(Err(source)) => {
                    self.hasher = None;
                    let error = RegistryError::Unreadable {
                        what: "a blob",
                        source,
                    };
                    return Some((Err(error), self));
                }
                None => {
                    let hasher = self.hasher.take()?;
                    return match hasher.verify(&self.what, &self.digest) {
                        Ok(()) => self.held.take().map(|last| (Ok(last), self)),
                        Err(mismatch) => Some((Err(mismatch), self)),
                    };
                }
            }
        }
    }
}

impl RegistryClient {
    /// The answer to a GET of the blob, its body unread; None when the registry has no such blob.
    async fn open_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<reqwest::Response>, RegistryError> {
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let scope = format!("repository:{repository}:pull");
        let response = self.send(&scope, || self.http.get(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if !status.is_success() => Err(RegistryError::Status {
                status,
                doing: format!("for blob {digest} of {repository}"),
            }),
            _ => Ok(Some(response)),
        }
    }

    /// The blob's bytes, hashed as they arrive: bytes that are not `digest` are an error.
    pub(super) async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        // Before any request: a digest we cannot check is not fetched.
        let mut hasher = digest::Hasher::for_digest(digest)?;
        let Some(mut response) = self.open_blob(repository, digest).await? else {
            return Ok(None);
        };
        let unreadable = |source| RegistryError::Unreadable {
            what: "a blob",
            source,
        };
        let mut bytes = Vec::with_capacity(
            usize::try_from(response.content_length().unwrap_or(0).min(1 << 20)).unwrap_or(0),
        );
        while let Some(chunk) = response.chunk().await.map_err(unreadable)? {
            hasher.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        hasher.verify(&format!("blob {digest} of {repository}"), digest)?;
        Ok(Some(bytes))
    }

    /// The blob as it arrives, hashed on the way; the last chunk waits for the digest check
    /// (`ports::BlobStream`).
    pub(super) async fn stream_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<BlobStream>, RegistryError> {
        let hasher = digest::Hasher::for_digest(digest)?;
        let Some(response) = self.open_blob(repository, digest).await? else {
            return Ok(None);
        };
        let len = response.content_length();
        let checked = Checked {
            chunks: Box::pin(response.bytes_stream()),
            hasher: Some(hasher),
            held: None,
            what: format!("blob {digest} of {repository}"),
            digest: digest.to_owned(),
        };
        let chunks = futures_util::stream::unfold(checked, Checked::next);
        Ok(Some(BlobStream {
            len,
            chunks: Box::pin(chunks),
        }))
    }

    /// Uploads `bytes` (small: a config) as the blob `digest`; each try sends the same buffer.
    pub(super) async fn put_blob(
        &self,
        repository: &str,
        digest: &str,
        bytes: Bytes,
    ) -> Result<(), RegistryError> {
        let len = bytes.len() as u64;
        self.upload(repository, digest, len, || {
            reqwest::Body::from(bytes.clone())
        })
        .await
    }

    /// Uploads the file at `path` (`len` bytes: a layer, maybe large) as the blob `digest`,
    /// streamed from disk. The file is opened again for each try.
    pub(super) async fn put_blob_file(
        &self,
        repository: &str,
        digest: &str,
        path: &Path,
        len: u64,
    ) -> Result<(), RegistryError> {
        // A small layer (a COPY made from the checkout) is read at once: streamed, tokio's
        // file reads hop through the blocking pool one small chunk at a time.
        if len <= IN_MEMORY_UPLOAD {
            let bytes = Bytes::from(tokio::fs::read(path).await.map_err(|e| {
                RegistryError::Protocol(format!("failed to read {}: {e}", path.display()))
            })?);
            return self
                .upload(repository, digest, len, || {
                    reqwest::Body::from(bytes.clone())
                })
                .await;
        }
        let body = || match std::fs::File::open(path) {
            Ok(file) => reqwest::Body::wrap_stream(ReaderStream::with_capacity(
                tokio::fs::File::from_std(file),
                STREAM_CHUNK,
            )),
            // Reported as the request's failure, by `send`, like any other.
            Err(e) => reqwest::Body::wrap_stream(futures_util::stream::once(async move {
                Err::<Vec<u8>, _>(e)
            })),
        };
        self.upload(repository, digest, len, body).await
    }

    /// POST an upload that names the blob in `from`: 201 is a mount. A registry that cannot
    /// mount it answers 202 with an ordinary upload session instead, which is abandoned here.
    pub(super) async fn mount(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<bool, RegistryError> {
        let scope = format!("repository:{repository}:pull,push");
        let start = self.url(&format!("{repository}/blobs/uploads/"));
        let answer = self
            .send(&scope, || {
                self.http
                    .post(&start)
                    .query(&[("mount", digest), ("from", from)])
                    .header(CONTENT_LENGTH, 0)
            })
            .await?;
        match answer.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                let session = answer
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|location| self.base.join(location).ok());
                if let Some(url) = session {
                    // Only tidiness: the registry expires abandoned uploads by itself.
                    let _ = self.send(&scope, || self.http.delete(url.as_str())).await;
                }
                Ok(false)
            }
            status => Err(RegistryError::Status {
                status,
                doing: format!("when mounting {digest} from {from} into {repository}"),
            }),
        }
    }

    /// Starts `n` upload sessions in `repository` for uploads to come (`upload_sessions`).
    /// Best effort: an upload without one starts its own.
    pub(super) async fn start_sessions(&self, repository: &str, n: usize) {
        let scope = format!("repository:{repository}:pull,push");
        let starts = (0..n).map(|_| self.start_upload(&scope, repository));
        for session in futures_util::future::join_all(starts)
            .await
            .into_iter()
            .flatten()
        {
            self.upload_sessions.keep(repository, session);
        }
    }

    /// PUTs the bytes with their digest into an upload session (a monolithic upload): one
    /// started ahead when there is one the registry still knows, else a new one. The registry's
    /// announced digest of what it stored must be `digest`.
    async fn upload(
        &self,
        repository: &str,
        digest: &str,
        len: u64,
        body: impl Fn() -> reqwest::Body,
    ) -> Result<(), RegistryError> {
        let scope = format!("repository:{repository}:pull,push");
        let response = match self.upload_sessions.take(repository) {
            Some(session) => {
                let response = self
                    .finish_upload(&scope, session, digest, len, &body)
                    .await?;
                // Expired or purged by the registry: a new session below.
                (response.status() != StatusCode::NOT_FOUND).then_some(response)
            }
            None => None,
        };
        let response = match response {
            Some(response) => response,
            None => {
                let session = self.start_upload(&scope, repository).await?;
                self.finish_upload(&scope, session, digest, len, &body)
                    .await?
            }
        };
        if response.status() != StatusCode::CREATED {
            return Err(RegistryError::Status {
                status: response.status(),
                doing: format!("when uploading {digest} to {repository}"),
            });
        }
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok());
        digest::check_announced(&format!("blob uploaded to {repository}"), digest, announced)
    }

    /// POSTs a new upload session: its URL.
    async fn start_upload(&self, scope: &str, repository: &str) -> Result<url::Url, RegistryError> {
        let start = self.url(&format!("{repository}/blobs/uploads/"));
        let started = self.send(scope, || self.http.post(&start)).await?;
        if started.status() != StatusCode::ACCEPTED {
            return Err(RegistryError::Status {
                status: started.status(),
                doing: format!("when starting an upload to {repository}"),
            });
        }
        let location = started
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::Protocol(format!(
                    "the registry gave no upload location for {repository}"
                ))
            })?;
        // The location may be relative and may carry its own query (upload state).
        self.base.join(location).map_err(|e| {
            RegistryError::Protocol(format!("the registry gave a bad upload location: {e}"))
        })
    }

    /// PUTs the blob's `len` bytes with `digest` to `session`; the registry's answer.
    async fn finish_upload(
        &self,
        scope: &str,
        mut session: url::Url,
        digest: &str,
        len: u64,
        body: &impl Fn() -> reqwest::Body,
    ) -> Result<reqwest::Response, RegistryError> {
        session.query_pairs_mut().append_pair("digest", digest);
        // The client's 30 s covers small requests; a layer gets a second per MiB on top.
        let timeout = Duration::from_secs(30 + (len >> 20));
        self.send(scope, || {
            self.http
                .put(session.as_str())
                .timeout(timeout)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len)
                .body(body())
        })
        .await
    }
}
