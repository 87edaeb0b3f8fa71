//! POST /v1/webhooks/github: push and tag events of a configured repository start a build of the
//! pushed commit for the platform user the repository is mapped to. The body is size-bounded, then
//! authenticated only by X-Hub-Signature-256 (HMAC-SHA256 with the configured secret), checked in
//! constant time before anything in it is read. A replayed delivery builds nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::request::BuildRequest;

pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let settings = &state.settings.webhooks;
    // The route's body limit stopped reading at max_body_bytes: no HMAC over an oversize body.
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(settings.max_body_bytes)
        } else {
            ApiError::bad_request("body", rejection.body_text())
        }
    })?;
    let secret = settings.github_secret.expose_secret();
    if secret.is_empty() {
        return Err(ApiError::unauthorized("GitHub webhooks are not configured"));
    }
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("missing X-Hub-Signature-256"))?;
    if !signature_matches(secret.as_bytes(), &body, signature) {
        return Err(ApiError::unauthorized(
            "X-Hub-Signature-256 does not match the body",
        ));
    }
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("body", format!("is not valid JSON: {e}")))?;
    let request = match event {
        "ping" => return Ok((StatusCode::OK, Json(json!({"pong": true}))).into_response()),
        "push" => match push_request(&payload, &settings.github_connector, &state.github_repos)? {
            Push::Build(request) => request,
            Push::Deleted => return Ok(ignored("a deleted ref has nothing to build")),
            Push::Unmapped(repo) => {
                return Ok(ignored(&format!(
                    "repository {repo:?} is not configured (webhooks.github_repos)"
                )));
            }
        },
        other => return Ok(ignored(&format!("event {other:?} does not start builds"))),
    };
    let body_digest = hex::encode(Sha256::digest(&body));
    let delivery = headers
        .get("x-github-delivery")
        .and_then(|v| v.to_str().ok())
        .map(|d| {
            d.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect()
        })
        .filter(|d: &String| !d.is_empty());
    // The delivery id names the build; without one, the body does.
    let build_name = delivery
        .clone()
        .unwrap_or_else(|| body_digest[..32].to_owned());
    let mut request = request;
    request["id"] = json!(format!("gh-{build_name}"));
    let raw = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    let parsed = BuildRequest::parse(&raw, &state.policy, None)?;
    // A redelivered id, or the same signed body under a new id (a captured request replayed),
    // within the window: nothing new to build.
    let mut seen = vec![format!("body:{body_digest}")];
    if let Some(delivery) = &delivery {
        seen.push(format!("delivery:{delivery}"));
    }
    let window = Duration::from_secs(settings.replay_window_secs);
    if !state.store.first_delivery(&seen, window).await? {
        return Ok((
            StatusCode::OK,
            Json(json!({"duplicate": true, "ignored": "this delivery was already received"})),
        )
            .into_response());
    }
    let answer = super::builds::enqueue(&state, &parsed, &raw, None).await;
    if answer.is_err() {
        // Nothing was queued: GitHub's redelivery must be able to build it.
        state.store.forget_delivery(&seen).await?;
    }
    answer
}

fn ignored(why: &str) -> Response {
    (StatusCode::ACCEPTED, Json(json!({"ignored": why}))).into_response()
}

/// `sha256=<hex>` over the raw body.
fn signature_matches(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(expected) = header
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

enum Push {
    Build(Value),
    Deleted,
    /// A repository no platform user is configured for (its full name).
    Unmapped(String),
}

/// The build request of a push: the pushed commit of a branch, or the tag, for the user the
/// repository is mapped to. The GitHub login is never a user id: it could name another tenant.
fn push_request(
    payload: &Value,
    connector: &str,
    repos: &BTreeMap<String, String>,
) -> Result<Push, ApiError> {
    let field = |path: &str| -> Result<&str, ApiError> {
        payload
            .pointer(path)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request(&path[1..].replace('/', "."), "is required"))
    };
    if payload.get("deleted").and_then(Value::as_bool) == Some(true) {
        return Ok(Push::Deleted);
    }
    let full_ref = field("/ref")?;
    let repo = field("/repository/full_name")?;
    let Some(user) = repos.get(&repo.to_ascii_lowercase()) else {
        return Ok(Push::Unmapped(repo.to_owned()));
    };
    let git_ref = if let Some(tag) = full_ref.strip_prefix("refs/tags/") {
        tag.to_owned()
    } else if full_ref.starts_with("refs/heads/") {
        field("/after")?.to_owned()
    } else {
        return Err(ApiError::bad_request(
            "ref",
            "is neither a branch nor a tag",
        ));
    };
    Ok(Push::Build(json!({
        "connector": connector,
        "repo": repo,
        "ref": git_ref,
        "user_id": user,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn only_the_signature_of_this_body_with_this_secret_matches() {
        let sig = sign(b"s3cret", b"{\"a\":1}");
        assert!(signature_matches(b"s3cret", b"{\"a\":1}", &sig));
        assert!(
            !signature_matches(b"s3cret", b"{\"a\":2}", &sig),
            "replayed on another body"
        );
        assert!(!signature_matches(b"other", b"{\"a\":1}", &sig));
        assert!(!signature_matches(
            b"s3cret",
            b"{\"a\":1}",
            &sig.replace("sha256=", "sha1=")
        ));
        assert!(!signature_matches(b"s3cret", b"{\"a\":1}", "sha256=zz"));
    }

    fn build(push: &Value, repos: &BTreeMap<String, String>) -> Value {
        match push_request(push, "github", repos).expect("valid") {
            Push::Build(request) => request,
            _ => panic!("expected a build of {push}"),
        }
    }

    #[test]
    fn pushes_build_the_pushed_commit_and_tags_the_tag_for_the_mapped_user() {
        let repos = BTreeMap::from([("acme/app".to_owned(), "42".to_owned())]);
        let push = json!({"ref": "refs/heads/main", "after": "a".repeat(40),
            "repository": {"full_name": "Acme/App", "owner": {"login": "Acme"}}});
        let req = build(&push, &repos);
        assert_eq!(req["ref"], json!("a".repeat(40)));
        assert_eq!(
            req["user_id"],
            json!("42"),
            "the mapped user, not the login"
        );
        let tag = json!({"ref": "refs/tags/v1.2", "after": "b".repeat(40),
            "repository": {"full_name": "acme/app", "owner": {"name": "acme"}}});
        assert_eq!(build(&tag, &repos)["ref"], json!("v1.2"));
        let deleted = json!({"ref": "refs/heads/x", "deleted": true});
        assert!(matches!(
            push_request(&deleted, "github", &repos),
            Ok(Push::Deleted)
        ));
        let other = json!({"ref": "refs/heads/main", "after": "c".repeat(40),
            "repository": {"full_name": "acme/other", "owner": {"login": "42"}}});
        assert!(matches!(
            push_request(&other, "github", &repos),
            Ok(Push::Unmapped(r)) if r == "acme/other"
        ));
    }
}
