//! POST /v1/webhooks/github: push, tag and release events of a configured repository start a
//! build for the platform user the repository is mapped to. Authenticated only by
//! X-Hub-Signature-256 (HMAC-SHA256 with the configured secret), checked in constant time before
//! anything in the body is read.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::Sha256;

use super::{Mapping, Trigger, answer, bounded_body, delivery_id, field, pushed};
use crate::api::AppState;
use crate::api::error::ApiError;

#[utoipa::path(post, path = "/v1/webhooks/github", tag = "webhooks",
    params(("X-Hub-Signature-256" = String, Header, description = "sha256=HMAC of the body with webhooks.github_secret"),
        ("X-GitHub-Event" = String, Header, description = "push, release or ping"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "Names the build; a repeat builds nothing")),
    request_body(content = String, description = "GitHub's event payload", content_type = "application/json"),
    responses(
        (status = 202, description = "Queued, or ignored with the reason"),
        (status = 200, description = "A ping, or a delivery seen before"),
        (status = 401, description = "Missing or wrong signature", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body over webhooks.max_body_bytes", body = crate::api::openapi::ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let settings = &state.settings.webhooks;
    let body = bounded_body(body, settings.max_body_bytes)?;
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
    let trigger = trigger(
        event,
        &payload,
        &settings.github_connector,
        &state.github_repos,
    )?;
    let delivery = delivery_id(&headers, &["x-github-delivery"]);
    answer(&state, "gh", trigger, &body, delivery).await
}

/// The build an event asks for: the pushed commit of a branch, the pushed tag, or the tag of a
/// published release, for the user the repository is mapped to. The GitHub login is never a
/// user id: it could name another tenant.
fn trigger(
    event: &str,
    payload: &Value,
    connector: &str,
    repos: &BTreeMap<String, String>,
) -> Result<Trigger, ApiError> {
    let (kind, git_ref) = match event {
        "ping" => return Ok(Trigger::Pong),
        "push" => {
            if payload.get("deleted").and_then(Value::as_bool) == Some(true) {
                return Ok(Trigger::Ignored(
                    "a deleted ref has nothing to build".into(),
                ));
            }
            pushed(field(payload, "/ref")?, || {
                Ok(field(payload, "/after")?.to_owned())
            })?
        }
        // `published` covers releases and pre-releases once; `released` would repeat it.
        "release" => match field(payload, "/action")? {
            "published" => ("release", field(payload, "/release/tag_name")?.to_owned()),
            other => {
                return Ok(Trigger::Ignored(format!(
                    "release action {other:?} does not start builds (only \"published\")"
                )));
            }
        },
        other => {
            return Ok(Trigger::Ignored(format!(
                "event {other:?} does not start builds"
            )));
        }
    };
    let mapping = Mapping {
        connector,
        repos,
        setting: "webhooks.github_repos",
        noun: "repository",
    };
    Ok(mapping.build(field(payload, "/repository/full_name")?, kind, git_ref))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

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

    fn build(event: &str, payload: &Value, repos: &BTreeMap<String, String>) -> Value {
        match trigger(event, payload, "github", repos).expect("valid") {
            Trigger::Build(request) => request,
            _ => panic!("expected a build of {payload}"),
        }
    }

    fn ignored(event: &str, payload: &Value, repos: &BTreeMap<String, String>) -> String {
        match trigger(event, payload, "github", repos).expect("valid") {
            Trigger::Ignored(why) => why,
            _ => panic!("expected {payload} to be ignored"),
        }
    }

    #[test]
    fn pushes_build_the_pushed_commit_and_tags_the_tag_for_the_mapped_user() {
        let repos = BTreeMap::from([("acme/app".to_owned(), "42".to_owned())]);
        let push = json!({"ref": "refs/heads/main", "after": "a".repeat(40),
            "repository": {"full_name": "Acme/App", "owner": {"login": "Acme"}}});
        let req = build("push", &push, &repos);
        assert_eq!(req["ref"], json!("a".repeat(40)));
        assert_eq!(req["type"], json!("repo"));
        assert_eq!(
            req["user_id"],
            json!("42"),
            "the mapped user, not the login"
        );
        let tag = json!({"ref": "refs/tags/v1.2", "after": "b".repeat(40),
            "repository": {"full_name": "acme/app", "owner": {"name": "acme"}}});
        let req = build("push", &tag, &repos);
        assert_eq!(req["ref"], json!("v1.2"));
        assert_eq!(
            req["type"],
            json!("tag"),
            "a branch named v1.2 must not stand in"
        );
        let deleted = json!({"ref": "refs/heads/x", "deleted": true});
        assert!(ignored("push", &deleted, &repos).contains("deleted"));
        let other = json!({"ref": "refs/heads/main", "after": "c".repeat(40),
            "repository": {"full_name": "acme/other", "owner": {"login": "42"}}});
        assert!(ignored("push", &other, &repos).contains("\"acme/other\""));
        assert!(matches!(
            trigger("ping", &json!({}), "github", &repos),
            Ok(Trigger::Pong)
        ));
        assert!(ignored("issues", &json!({}), &repos).contains("\"issues\""));
    }

    #[test]
    fn a_published_release_builds_its_tag_and_other_actions_build_nothing() {
        let repos = BTreeMap::from([("acme/app".to_owned(), "42".to_owned())]);
        let release = |action: &str| {
            json!({"action": action, "release": {"tag_name": "v2.0.0"},
                "repository": {"full_name": "acme/app"}})
        };
        let req = build("release", &release("published"), &repos);
        assert_eq!(
            (&req["type"], &req["ref"]),
            (&json!("release"), &json!("v2.0.0"))
        );
        for action in ["created", "released", "edited", "deleted"] {
            assert!(ignored("release", &release(action), &repos).contains(action));
        }
        let Err(missing) = trigger(
            "release",
            &json!({"action": "published", "repository": {"full_name": "acme/app"}}),
            "github",
            &repos,
        ) else {
            panic!("a release without its tag is refused");
        };
        assert!(format!("{missing:?}").contains("release.tag_name"));
    }
}
