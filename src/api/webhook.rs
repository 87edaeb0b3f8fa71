//! POST /v1/webhooks/github: push and tag events start a build of the pushed commit. The body is
//! authenticated only by X-Hub-Signature-256 (HMAC-SHA256 with the configured secret), checked in
//! constant time before anything in it is read.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
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
    body: Bytes,
) -> Result<Response, ApiError> {
    let secret = state.settings.webhooks.github_secret.expose_secret();
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
        "ping" => return Ok(Json(json!({"pong": true})).into_response()),
        "push" => match push_request(&payload, &state.settings.webhooks.github_connector)? {
            Some(request) => request,
            None => return Ok(ignored("a deleted ref has nothing to build")),
        },
        other => return Ok(ignored(&format!("event {other:?} does not start builds"))),
    };
    // The delivery id makes a redelivered webhook the same build (submit is idempotent on id).
    let delivery = headers
        .get("x-github-delivery")
        .and_then(|v| v.to_str().ok())
        .map(|d| {
            d.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(64)
                .collect()
        })
        .filter(|d: &String| !d.is_empty())
        .unwrap_or_else(|| hex::encode(&Sha256::digest(&body)[..16]));
    let mut request = request;
    request["id"] = json!(format!("gh-{delivery}"));
    let raw = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    let parsed = BuildRequest::parse(&raw, &state.policy, None)?;
    super::builds::enqueue(&state, &parsed, &raw, None).await
}

fn ignored(why: &str) -> Response {
    (
        axum::http::StatusCode::ACCEPTED,
        Json(json!({"ignored": why})),
    )
        .into_response()
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

/// The build request of a push: the pushed commit of a branch, or the tag. `None` for deletions.
fn push_request(payload: &Value, connector: &str) -> Result<Option<Value>, ApiError> {
    let field = |path: &str| -> Result<&str, ApiError> {
        payload
            .pointer(path)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request(&path[1..].replace('/', "."), "is required"))
    };
    if payload.get("deleted").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    let full_ref = field("/ref")?;
    let repo = field("/repository/full_name")?;
    let owner = payload
        .pointer("/repository/owner/login")
        .or_else(|| payload.pointer("/repository/owner/name"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("repository.owner.login", "is required"))?;
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
    Ok(Some(json!({
        "connector": connector,
        "repo": repo,
        "ref": git_ref,
        "user_id": owner.to_ascii_lowercase(),
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

    #[test]
    fn pushes_build_the_pushed_commit_and_tags_the_tag() {
        let push = json!({"ref": "refs/heads/main", "after": "a".repeat(40),
            "repository": {"full_name": "Acme/App", "owner": {"login": "Acme"}}});
        let req = push_request(&push, "github")
            .expect("valid")
            .expect("a build");
        assert_eq!(req["ref"], json!("a".repeat(40)));
        assert_eq!(req["user_id"], json!("acme"));
        let tag = json!({"ref": "refs/tags/v1.2", "after": "b".repeat(40),
            "repository": {"full_name": "acme/app", "owner": {"name": "acme"}}});
        assert_eq!(
            push_request(&tag, "github").expect("ok").expect("build")["ref"],
            json!("v1.2")
        );
        let deleted = json!({"ref": "refs/heads/x", "deleted": true});
        assert!(push_request(&deleted, "github").expect("ok").is_none());
    }
}
