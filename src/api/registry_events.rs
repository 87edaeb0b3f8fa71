//! POST /v1/registry-events: the push notifications of a CNCF distribution registry
//! (`notifications.endpoints` in its config, with the header `Authorization: Bearer <key>`),
//! keyed with `bases.notify_key` (compared in constant time). Each pushed tag is checked as a
//! base image (`base_updates::check`) after the answer: the registry waits for none of it.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header::AUTHORIZATION};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::AppState;
use super::base_updates::{self, Seen};
use super::error::ApiError;
use super::webhooks::{bounded_body, secret_matches};

#[utoipa::path(post, path = "/v1/registry-events", tag = "webhooks",
    params(("Authorization" = String, Header, description = "Bearer and bases.notify_key")),
    request_body(content = String, description = "The registry's notification envelope ({\"events\": [...]})", content_type = "application/json"),
    responses(
        (status = 202, description = "The pushed tags, being checked as base images"),
        (status = 400, description = "Not an envelope of events", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong key, or no key configured", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body over webhooks.max_body_bytes", body = crate::api::openapi::ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = bounded_body(body, state.settings.webhooks.max_body_bytes)?;
    let key = state.settings.bases.notify_key.expose_secret();
    if key.is_empty() {
        return Err(ApiError::unauthorized(
            "registry notifications are not configured (bases.notify_key)",
        ));
    }
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key>"))?;
    if !secret_matches(key, given) {
        return Err(ApiError::unauthorized(
            "the bearer key is not bases.notify_key",
        ));
    }
    let envelope: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("body", format!("is not valid JSON: {e}")))?;
    let events = envelope["events"]
        .as_array()
        .ok_or_else(|| ApiError::bad_request("events", "must be an array of events"))?;
    let pushed = pushed_tags(events);
    let checking: Vec<&str> = pushed.iter().map(|(r, _)| r.as_str()).collect();
    let answer = json!({ "checking": checking });
    for (reference, digest) in pushed {
        let state = state.clone();
        tokio::spawn(async move {
            let checked =
                base_updates::check(&state, &reference, Some(&digest), Seen::Notification).await;
            if let Err(e) = checked {
                tracing::warn!(base = %reference, "failed to check a pushed base image: {e:#}");
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `(host/repository:tag, digest)` of every manifest pushed under a tag, under each host the
/// registry was reached by (the pusher's `request.host` and the `target.url`'s); blobs and
/// pushes by digest name no tag and move nothing.
fn pushed_tags(events: &[Value]) -> BTreeSet<(String, String)> {
    let mut pushed = BTreeSet::new();
    for event in events {
        let target = &event["target"];
        let (Some("push"), Some(repository), Some(tag), Some(digest)) = (
            event["action"].as_str(),
            target["repository"].as_str(),
            target["tag"].as_str().filter(|t| !t.is_empty()),
            target["digest"].as_str(),
        ) else {
            continue;
        };
        let url_host = target["url"]
            .as_str()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host,
                })
            });
        let hosts = [
            event["request"]["host"].as_str().map(str::to_owned),
            url_host,
        ];
        for host in hosts.into_iter().flatten() {
            pushed.insert((format!("{host}/{repository}:{tag}"), digest.to_owned()));
        }
    }
    pushed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_manifests_pushed_under_a_tag_are_checked() {
        let events = json!([
            {"action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
              "repository": "ns/base", "tag": "v1", "digest": "sha256:m",
              "url": "http://127.0.0.1:5000/v2/ns/base/manifests/sha256:m"},
             "request": {"host": "registry.local:5000"}},
            {"action": "push", "target": {"mediaType": "application/octet-stream",
              "repository": "ns/base", "digest": "sha256:blob"}, "request": {"host": "r:1"}},
            {"action": "pull", "target": {"repository": "ns/base", "tag": "v1", "digest": "sha256:m"},
             "request": {"host": "r:1"}}
        ]);
        let pushed = pushed_tags(events.as_array().expect("array"));
        let expected: BTreeSet<(String, String)> = [
            (
                "127.0.0.1:5000/ns/base:v1".to_owned(),
                "sha256:m".to_owned(),
            ),
            (
                "registry.local:5000/ns/base:v1".to_owned(),
                "sha256:m".to_owned(),
            ),
        ]
        .into();
        assert_eq!(pushed, expected);
    }
}
