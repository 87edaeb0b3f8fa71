//! Inbound forge webhooks: each forge's module authenticates its deliveries and turns an event
//! into a build request (or says why it builds nothing); this module owns what they share: the
//! body limit's answer, the replay guard and the enqueue.
//!
//! - `POST /v1/webhooks/github`: X-Hub-Signature-256 (HMAC-SHA256 of the body).
//! - `POST /v1/webhooks/gitlab`: X-Gitlab-Token (the shared secret, compared in constant time).

pub mod github;
pub mod gitlab;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::request::BuildRequest;

/// What an authenticated delivery asks for.
pub enum Trigger {
    /// A build request without its id: the delivery names it.
    Build(Value),
    /// A liveness check from the forge.
    Pong,
    /// Nothing to build, and why (answered 202 so the forge does not retry).
    Ignored(String),
}

/// Whether `given` is the configured shared `secret`. Digests first: equal-length inputs, so
/// neither the secret's length nor its prefix leaks through the comparison's timing.
pub fn secret_matches(secret: &str, given: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (want, got) = (
        Sha256::digest(secret.as_bytes()),
        Sha256::digest(given.as_bytes()),
    );
    want.as_slice().ct_eq(got.as_slice()).into()
}

/// The body as read under the route's limit: an oversize body is refused before any
/// signature or token is looked at.
pub fn bounded_body(
    body: Result<Bytes, BytesRejection>,
    max_body_bytes: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(max_body_bytes)
        } else {
            ApiError::bad_request("body", rejection.body_text())
        }
    })
}

/// The first of `names` present, reduced to characters safe in a build id.
pub fn delivery_id(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(|d| -> String {
            d.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect()
        })
        .find(|d| !d.is_empty())
}

/// Builds what an authenticated delivery asks for, once: the delivery id names the build
/// (`<prefix>-<id>`, or the body's digest without one), and a delivery seen within the replay
/// window (by id, or the same body under a new id) builds nothing new.
pub async fn answer(
    state: &AppState,
    prefix: &str,
    trigger: Trigger,
    body: &[u8],
    delivery: Option<String>,
) -> Result<Response, ApiError> {
    let mut request = match trigger {
        Trigger::Build(request) => request,
        Trigger::Pong => return Ok((StatusCode::OK, Json(json!({"pong": true}))).into_response()),
        Trigger::Ignored(why) => {
            return Ok((StatusCode::ACCEPTED, Json(json!({"ignored": why}))).into_response());
        }
    };
    let body_digest = hex::encode(Sha256::digest(body));
    let build_name = delivery
        .clone()
        .unwrap_or_else(|| body_digest[..32].to_owned());
    request["id"] = json!(format!("{prefix}-{build_name}"));
    let raw = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    let parsed = BuildRequest::parse(&raw, &state.policy, None)?;
    let mut seen = vec![format!("body:{body_digest}")];
    if let Some(delivery) = &delivery {
        seen.push(format!("delivery:{prefix}:{delivery}"));
    }
    let window = Duration::from_secs(state.settings.webhooks.replay_window_secs);
    if !state.store.first_delivery(&seen, window).await? {
        return Ok((
            StatusCode::OK,
            Json(json!({"duplicate": true, "ignored": "this delivery was already received"})),
        )
            .into_response());
    }
    let answer = super::builds::enqueue(state, &parsed, &raw, None).await;
    if answer.is_err() {
        // Nothing was queued: the forge's redelivery must be able to build it.
        state.store.forget_delivery(&seen).await?;
    }
    answer
}

/// A required string field of a payload, named by its JSON path in the error.
pub fn field<'a>(payload: &'a Value, path: &str) -> Result<&'a str, ApiError> {
    payload
        .pointer(path)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request(&path[1..].replace('/', "."), "is required"))
}

/// What a push asks for: the tag it pushed (type "tag"), or for a branch the commit
/// `branch_commit` reads from the payload (type "repo").
pub fn pushed(
    full_ref: &str,
    branch_commit: impl FnOnce() -> Result<String, ApiError>,
) -> Result<(&'static str, String), ApiError> {
    if let Some(tag) = full_ref.strip_prefix("refs/tags/") {
        Ok(("tag", tag.to_owned()))
    } else if full_ref.starts_with("refs/heads/") {
        Ok(("repo", branch_commit()?))
    } else {
        Err(ApiError::bad_request(
            "ref",
            "is neither a branch nor a tag",
        ))
    }
}

/// A forge's repositories and the platform users they build for (never the forge's own user
/// names: they could name another tenant).
pub struct Mapping<'a> {
    pub connector: &'a str,
    /// Repository path (lowercase) -> user id.
    pub repos: &'a BTreeMap<String, String>,
    /// The setting that maps them, named when a repository is not in it.
    pub setting: &'static str,
    /// What the forge calls a repository.
    pub noun: &'static str,
}

impl Mapping<'_> {
    /// The build of `git_ref`, read as `kind`, of `repo` for the user it is mapped to; a
    /// repository nobody is mapped to builds nothing.
    pub fn build(&self, repo: &str, kind: &str, git_ref: String) -> Trigger {
        let Some(user) = self.repos.get(&repo.to_ascii_lowercase()) else {
            return Trigger::Ignored(format!(
                "{} {repo:?} is not configured ({})",
                self.noun, self.setting
            ));
        };
        Trigger::Build(json!({
            "connector": self.connector,
            "repo": repo,
            "type": kind,
            "ref": git_ref,
            "user_id": user,
        }))
    }
}
