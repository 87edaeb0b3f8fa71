//! The HTTP API as the command line uses it (`list`, `status`, `logs`, `cancel`, `rebuild`,
//! `submit --wait`): requests with the bearer key, the API's JSON errors turned into messages
//! that name the field, and a followed log as a stream of lines.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

pub struct ApiClient {
    base: Url,
    key: Option<SecretString>,
    http: reqwest::Client,
}

/// The API's answer to a request it refused, as a person reads it.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiRefusal {
    pub status: StatusCode,
    pub message: String,
}

impl ApiClient {
    /// `base` is the API's address (`http://127.0.0.1:8080`); `key` its bearer key.
    pub fn new(base: &str, key: Option<SecretString>) -> anyhow::Result<Self> {
        let mut base = Url::parse(base).with_context(|| format!("--api {base:?} is not a URL"))?;
        // An API behind a path prefix keeps it: routes are joined below it.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        anyhow::ensure!(
            matches!(base.scheme(), "http" | "https"),
            "--api must be an http or https URL, not {}",
            base.scheme()
        );
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { base, key, http })
    }

    fn request(&self, method: Method, path: &str) -> anyhow::Result<RequestBuilder> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .with_context(|| format!("cannot address {path} on the API"))?;
        let request = self.http.request(method, url);
        Ok(match &self.key {
            Some(key) => request.bearer_auth(key.expose_secret()),
            None => request,
        })
    }

    /// `path` with its query (values percent-encoded by the caller or `query`).
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let request = self.request(Method::GET, path)?.query(query);
        json_of(request.send().await.context("the API did not answer")?).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let request = self.request(Method::POST, path)?.json(body);
        json_of(request.send().await.context("the API did not answer")?).await
    }

    /// The build's record, or None while the API has none (a request still in the queue).
    pub async fn build(&self, id: &str) -> anyhow::Result<Option<Value>> {
        match self.get(&build_path(id, ""), &[]).await {
            Ok(record) => Ok(Some(record)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The build's log; with `follow`, line by line until the build ends.
    pub async fn logs(
        &self,
        id: &str,
        follow: bool,
        mut on_line: impl FnMut(&str),
    ) -> anyhow::Result<()> {
        let query: &[(&str, &str)] = if follow { &[("follow", "true")] } else { &[] };
        let response = self
            .request(Method::GET, &build_path(id, "/logs"))?
            .query(query)
            .send()
            .await
            .context("the API did not answer")?;
        let response = refused(response).await?;
        let mut body = response.bytes_stream();
        let mut pending = Vec::new();
        while let Some(chunk) = body.next().await {
            pending.extend_from_slice(&chunk.context("the log stream broke off")?);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                on_line(String::from_utf8_lossy(&line[..end]).as_ref());
            }
        }
        if !pending.is_empty() {
            on_line(String::from_utf8_lossy(&pending).as_ref());
        }
        Ok(())
    }
}

/// `/v1/builds/<id><rest>`, the id percent-encoded (ids are the caller's text).
pub fn build_path(id: &str, rest: &str) -> String {
    format!("/v1/builds/{}{rest}", crate::percent::encode_component(id))
}

pub fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<ApiRefusal>()
        .is_some_and(|r| r.status == StatusCode::NOT_FOUND)
}

async fn json_of(response: reqwest::Response) -> anyhow::Result<Value> {
    let response = refused(response).await?;
    response
        .json()
        .await
        .context("the API answered something that is not JSON")
}

/// A success as it is; anything else as an `ApiRefusal` carrying the API's own message and field.
async fn refused(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let error = &body["error"];
    let mut message = error["message"]
        .as_str()
        .unwrap_or("no explanation given")
        .to_owned();
    if let Some(field) = error["field"].as_str() {
        message = format!("{field}: {message}");
    }
    if status == StatusCode::UNAUTHORIZED {
        message.push_str(" (set IMAGE_BUILDER_API_KEY to a key the API knows)");
    }
    Err(ApiRefusal { status, message }.into())
}
