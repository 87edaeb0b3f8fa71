//! POST /v1/webhooks/gitlab: push, tag push and release events of a configured project start a
//! build for the platform user the project is mapped to. GitLab signs nothing: it sends the
//! shared secret in X-Gitlab-Token, compared in constant time before the body is parsed.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{Mapping, Trigger, answer, bounded_body, delivery_id, field, pushed, secret_matches};
use crate::api::AppState;
use crate::api::error::ApiError;

/// The `after` of a push that deleted its ref.
const NO_COMMIT: &str = "0000000000000000000000000000000000000000";

#[utoipa::path(post, path = "/v1/webhooks/gitlab", tag = "webhooks",
    params(("X-Gitlab-Token" = String, Header, description = "webhooks.gitlab_secret"),
        ("X-Gitlab-Event" = String, Header, description = "Push Hook, Tag Push Hook or Release Hook"),
        ("Idempotency-Key" = Option<String>, Header, description = "Names the build; a repeat builds nothing")),
    request_body(content = String, description = "GitLab's event payload", content_type = "application/json"),
    responses(
        (status = 202, description = "Queued, or ignored with the reason"),
        (status = 200, description = "A delivery seen before"),
        (status = 401, description = "Missing or wrong token", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "Body over webhooks.max_body_bytes", body = crate::api::openapi::ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let settings = &state.settings.webhooks;
    let body = bounded_body(body, settings.max_body_bytes)?;
    let secret = settings.gitlab_secret.expose_secret();
    if secret.is_empty() {
        return Err(ApiError::unauthorized("GitLab webhooks are not configured"));
    }
    let token = headers
        .get("x-gitlab-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("missing X-Gitlab-Token"))?;
    if !secret_matches(secret, token) {
        return Err(ApiError::unauthorized(
            "X-Gitlab-Token is not the configured secret",
        ));
    }
    let event = headers
        .get("x-gitlab-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("body", format!("is not valid JSON: {e}")))?;
    let trigger = trigger(
        event,
        &payload,
        &settings.gitlab_connector,
        &state.gitlab_repos,
    )?;
    // GitLab repeats Idempotency-Key (and the event UUID) on every retry of one delivery.
    let delivery = delivery_id(&headers, &["idempotency-key", "x-gitlab-event-uuid"]);
    answer(&state, "gl", trigger, &body, delivery).await
}

/// The build an event asks for: the pushed commit of a branch, the pushed tag, or the tag of a
/// created release, for the user the project is mapped to (never a GitLab user name).
fn trigger(
    event: &str,
    payload: &Value,
    connector: &str,
    repos: &BTreeMap<String, String>,
) -> Result<Trigger, ApiError> {
    let (kind, git_ref) = match event {
        "Push Hook" | "Tag Push Hook" => {
            let after = field(payload, "/after")?;
            if after == NO_COMMIT {
                return Ok(Trigger::Ignored(
                    "a deleted ref has nothing to build".into(),
                ));
            }
            // checkout_sha is the head after the push; `after` when GitLab leaves it out.
            pushed(field(payload, "/ref")?, || {
                Ok(payload
                    .get("checkout_sha")
                    .and_then(Value::as_str)
                    .unwrap_or(after)
                    .to_owned())
            })?
        }
        "Release Hook" => match field(payload, "/action")? {
            "create" => ("release", field(payload, "/tag")?.to_owned()),
            other => {
                return Ok(Trigger::Ignored(format!(
                    "release action {other:?} does not start builds (only \"create\")"
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
        setting: "webhooks.gitlab_repos",
        noun: "project",
    };
    Ok(mapping.build(
        field(payload, "/project/path_with_namespace")?,
        kind,
        git_ref,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn repos() -> BTreeMap<String, String> {
        BTreeMap::from([("acme/platform/app".to_owned(), "42".to_owned())])
    }

    fn outcome(event: &str, payload: &Value) -> Trigger {
        trigger(event, payload, "gitlab", &repos()).expect("valid")
    }

    fn push(full_ref: &str, after: &str, checkout: Option<&str>) -> Value {
        json!({"object_kind": "push", "ref": full_ref, "after": after, "checkout_sha": checkout,
            "user_username": "someone-else",
            "project": {"path_with_namespace": "Acme/Platform/App"}})
    }

    #[test]
    fn only_the_configured_token_matches() {
        assert!(super::secret_matches("s3cret", "s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3CRET", "s3cret\0"] {
            assert!(!super::secret_matches("s3cret", wrong), "{wrong:?}");
        }
    }

    #[test]
    fn pushes_build_the_head_and_tag_pushes_the_tag_for_the_mapped_user() {
        let Trigger::Build(req) = outcome(
            "Push Hook",
            &push("refs/heads/main", &"a".repeat(40), Some(&"b".repeat(40))),
        ) else {
            panic!("a branch push builds");
        };
        assert_eq!(req["ref"], json!("b".repeat(40)), "checkout_sha wins");
        assert_eq!(req["type"], json!("repo"));
        assert_eq!(
            req["user_id"],
            json!("42"),
            "the mapped user, not the pusher"
        );
        assert_eq!(req["repo"], json!("Acme/Platform/App"));
        let Trigger::Build(req) =
            outcome("Push Hook", &push("refs/heads/main", &"a".repeat(40), None))
        else {
            panic!("a branch push builds");
        };
        assert_eq!(req["ref"], json!("a".repeat(40)));
        let Trigger::Build(req) = outcome(
            "Tag Push Hook",
            &push("refs/tags/v1.0.0", &"c".repeat(40), Some(&"c".repeat(40))),
        ) else {
            panic!("a tag push builds");
        };
        assert_eq!(
            (&req["type"], &req["ref"]),
            (&json!("tag"), &json!("v1.0.0"))
        );
    }

    #[test]
    fn deletions_unmapped_projects_and_other_events_build_nothing() {
        let deleted = push("refs/tags/v1", NO_COMMIT, None);
        assert!(
            matches!(outcome("Tag Push Hook", &deleted), Trigger::Ignored(w) if w.contains("deleted"))
        );
        let mut other = push("refs/heads/main", &"a".repeat(40), None);
        other["project"]["path_with_namespace"] = json!("acme/other");
        assert!(
            matches!(outcome("Push Hook", &other), Trigger::Ignored(w) if w.contains("gitlab_repos"))
        );
        assert!(matches!(
            outcome("Merge Request Hook", &json!({})),
            Trigger::Ignored(_)
        ));
        let Err(missing) = trigger(
            "Push Hook",
            &json!({"ref": "refs/heads/main", "after": "a".repeat(40)}),
            "gitlab",
            &repos(),
        ) else {
            panic!("a push without its project is refused");
        };
        assert!(format!("{missing:?}").contains("project.path_with_namespace"));
    }

    #[test]
    fn a_created_release_builds_its_tag() {
        let release = |action: &str| {
            json!({"object_kind": "release", "action": action, "tag": "v2.1.0",
                "project": {"path_with_namespace": "acme/platform/app"}})
        };
        let Trigger::Build(req) = outcome("Release Hook", &release("create")) else {
            panic!("a created release builds");
        };
        assert_eq!(
            (&req["type"], &req["ref"]),
            (&json!("release"), &json!("v2.1.0"))
        );
        for action in ["update", "delete"] {
            assert!(matches!(
                outcome("Release Hook", &release(action)),
                Trigger::Ignored(_)
            ));
        }
    }
}
