//! /v1/builds: submit, list, details, logs, cancel, rebuild, delete.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::scope::Scope;
use crate::amqp::Control;
use crate::config::Role;
use crate::events::{BuildCancelled, BuildRef, Event};
use crate::request::BuildRequest;
use crate::store::{BuildFilter, BuildRecord, BuildState, CancelRequest, Claim, NewBuild};

const DEFAULT_PAGE: u32 = 50;
const LOG_PAGE: u32 = 1000;
const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub(super) fn links(id: &str) -> Value {
    json!({
        "self": format!("/v1/builds/{id}"),
        "logs": format!("/v1/builds/{id}/logs"),
        "cancel": format!("/v1/builds/{id}/cancel"),
        "rebuild": format!("/v1/builds/{id}/rebuild"),
        "artifacts": format!("/v1/builds/{id}/artifacts"),
    })
}

/// POST /v1/builds. Idempotent on the request id: the identical request again answers 200 with
/// the recorded build; a different request under a taken id is 409 (the id is not its own).
#[utoipa::path(post, path = "/v1/builds", tag = "builds", security(("bearer" = [])),
    request_body = crate::api::openapi::BuildRequestBody,
    responses(
        (status = 202, description = "Queued", body = crate::api::openapi::Accepted),
        (status = 200, description = "The identical request seen before: its record", body = crate::api::openapi::Accepted),
        (status = 400, description = "A field is wrong (named in `field`)", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "No key, or not a key this API knows", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "The key may not act for this user id", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The id belongs to a different request", body = crate::api::openapi::ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    body: Bytes,
) -> Result<Response, ApiError> {
    scope.require(Role::Submit)?;
    let request = BuildRequest::parse(&body, &state.policy, None)?;
    scope.may_submit_for(request.user_id.as_str())?;
    enqueue(&state, &request, &body, None).await
}

/// Records a build as queued, then publishes it; a failed publish removes the record again.
pub(super) async fn enqueue(
    state: &AppState,
    request: &BuildRequest,
    body: &[u8],
    rebuild_of: Option<String>,
) -> Result<Response, ApiError> {
    let id = request.id.as_str();
    let new = NewBuild::of_request(id, request, rebuild_of.clone());
    match state.store.create(&new, BuildState::Queued).await? {
        Claim::New => {}
        Claim::Same(_) => return recorded_outcome(state, id).await,
        Claim::Foreign => {
            return Err(ApiError::conflict_on(
                "id",
                format!(
                    "build id {id:?} belongs to a different request (another repository, ref, \
                     user or configuration); send a new id"
                ),
            ));
        }
    }
    if let Err(e) = state.broker.submit(body, id, id).await {
        tracing::warn!(build_id = id, "failed to publish a submitted build: {e:#}");
        state.store.delete(id).await?;
        return Err(ApiError::unavailable(
            "the build queue is not reachable; nothing was queued, try again",
        ));
    }
    let mut answer = json!({"id": id, "state": "queued", "links": links(id)});
    if let Some(original) = rebuild_of {
        answer["rebuild_of"] = json!(original);
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// The identical request again: 200 with what is recorded for it (state, and the image once
/// built), nothing queued.
async fn recorded_outcome(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let existing = state.store.get(id).await?;
    let mut answer = json!({
        "id": id,
        "state": existing.as_ref().map_or("unknown", |b| b.state.as_str()),
        "duplicate": true,
        "links": links(id),
    });
    if let Some(build) = existing.filter(|b| b.state == BuildState::Succeeded) {
        answer["image"] = json!(build.image);
        answer["digest"] = json!(build.digest);
        answer["commit"] = json!(build.commit);
        answer["tags"] = json!(build.tags);
    }
    Ok((StatusCode::OK, Json(answer)).into_response())
}

/// GET /v1/builds?repo&ref&state&user_id&limit&cursor, newest first.
#[utoipa::path(get, path = "/v1/builds", tag = "builds", security(("bearer" = [])),
    params(
        ("repo" = Option<String>, Query, description = "Only this repository, as requested"),
        ("ref" = Option<String>, Query, description = "Only this ref, as requested"),
        ("state" = Option<String>, Query, description = "queued, running, succeeded, failed, cancelled or rejected"),
        ("user_id" = Option<String>, Query, description = "Only this user's builds (within the key's users)"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to api.max_page"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses(
        (status = 200, description = "`{builds: [record...], next_cursor}`, newest first"),
        (status = 400, description = "A parameter is wrong", body = crate::api::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    super::params::only_known(
        &params,
        &["repo", "ref", "state", "user_id", "limit", "cursor"],
    )?;
    let limit = super::params::limit(&params, DEFAULT_PAGE, state.settings.api.max_page)?;
    let state_filter = match params.get("state") {
        None => None,
        Some(raw) => Some(BuildState::parse(raw).ok_or_else(|| {
            ApiError::bad_request(
                "state",
                "must be queued, running, succeeded, failed or cancelled",
            )
        })?),
    };
    let filter = BuildFilter {
        repo: params.get("repo").cloned(),
        git_ref: params.get("ref").cloned(),
        state: state_filter,
        user_id: params.get("user_id").cloned(),
        users: scope.users().map(<[String]>::to_vec),
    };
    let page = state
        .store
        .list(&filter, limit, params.get("cursor").map(String::as_str))
        .await?
        .map_err(|e| ApiError::bad_request("cursor", e.to_string()))?;
    Ok(Json(json!(page)))
}

/// The build if it is this key's to see; another tenant's answers exactly like an unknown id.
pub(super) async fn find(
    state: &AppState,
    scope: &Scope,
    id: &str,
) -> Result<BuildRecord, ApiError> {
    state
        .store
        .get(id)
        .await?
        .filter(|build| scope.may_see(build.user_id.as_deref()))
        .ok_or_else(|| ApiError::not_found(&format!("build {id:?}")))
}

/// GET /v1/builds/{id}: the record, its state history and links.
#[utoipa::path(get, path = "/v1/builds/{id}", tag = "builds", security(("bearer" = [])),
    params(("id" = String, Path, description = "The build id")),
    responses(
        (status = 200, description = "The record with `states` (its history) and `links`"),
        (status = 404, description = "No such build for this key", body = crate::api::openapi::ErrorBody)))]
pub async fn details(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let build = find(&state, &scope, &id).await?;
    let history = state.store.history_of(&id).await?;
    let mut answer = json!(build);
    answer["states"] = json!(history);
    answer["links"] = links(&id);
    Ok(Json(answer))
}

/// GET /v1/builds/{id}/logs[?follow=true]: plain text; following streams until the build ends.
#[utoipa::path(get, path = "/v1/builds/{id}/logs", tag = "builds", security(("bearer" = [])),
    params(("id" = String, Path, description = "The build id"),
        ("follow" = Option<bool>, Query, description = "Stream lines as they come until the build ends")),
    responses(
        (status = 200, description = "The log, plain text", content_type = "text/plain"),
        (status = 404, description = "No such build for this key", body = crate::api::openapi::ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    find(&state, &scope, &id).await?;
    let follow = match params.get("follow").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(_) => return Err(ApiError::bad_request("follow", "must be true or false")),
    };
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !follow {
        let mut out = String::new();
        let mut after = 0;
        loop {
            let lines = state.store.log_lines(&id, after, LOG_PAGE).await?;
            let Some((last, _)) = lines.last() else { break };
            after = *last;
            for (_, line) in &lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        return Ok((text, out).into_response());
    }
    let stream = futures_util::stream::unfold(
        Follow {
            state,
            id,
            after: 0,
            done: false,
        },
        Follow::next_chunk,
    );
    Ok((text, Body::from_stream(stream)).into_response())
}

/// A log follower's position.
struct Follow {
    state: AppState,
    id: String,
    after: i64,
    done: bool,
}

impl Follow {
    /// The next lines; waits while the build runs and there are none; ends after the final state.
    async fn next_chunk(mut self) -> Option<(Result<String, std::io::Error>, Self)> {
        loop {
            if self.done || self.state.shutdown.is_cancelled() {
                return None;
            }
            // Read the state first: lines stored before a final state are then all seen below.
            let finished = match self.state.store.state(&self.id).await {
                Ok(Some(s)) => s.is_final(),
                Ok(None) => true,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), self)),
            };
            let lines = match self
                .state
                .store
                .log_lines(&self.id, self.after, LOG_PAGE)
                .await
            {
                Ok(lines) => lines,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), self)),
            };
            if let Some((last, _)) = lines.last() {
                self.after = *last;
                let chunk: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
                return Some((Ok(chunk), self));
            }
            if finished {
                self.done = true;
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = self.state.shutdown.cancelled() => return None,
            }
        }
    }
}

/// POST /v1/builds/{id}/cancel. Queued: never built. Running: the replica running it kills the
/// build's process tree and reports `build.cancelled`.
#[utoipa::path(post, path = "/v1/builds/{id}/cancel", tag = "builds", security(("bearer" = [])),
    params(("id" = String, Path, description = "The build id")),
    responses(
        (status = 200, description = "Queued: cancelled, never built"),
        (status = 202, description = "Running: the cancel is stored and broadcast"),
        (status = 404, description = "No such build for this key", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The build has already ended", body = crate::api::openapi::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    scope.require(Role::Submit)?;
    let build = find(&state, &scope, &id).await?;
    if build.state.is_final() {
        return Err(ApiError::conflict(format!(
            "build {id} already {}",
            build.state.as_str()
        )));
    }
    // Stored first: the replica running it finds the cancel when it next renews its lease, even
    // if the broadcast below never reaches it (it was reconnecting, or the broker is away).
    // The event a queued build's cancel announces, written to the notification outbox with it.
    let event = Event::Cancelled(BuildCancelled {
        build: BuildRef {
            build_id: build.id.clone(),
            request_id: build.request_id.clone(),
            user_id: build.user_id.clone(),
            repo: build.repo.clone(),
            git_ref: build.git_ref.clone(),
        },
        attempts: u32::try_from(build.attempts).unwrap_or(0),
        was_running: false,
        log_tail: Vec::new(),
    });
    match state.store.request_cancel(&id, Some(&event)).await? {
        CancelRequest::Cancelled => {
            if let Err(e) = state.broker.event(&event).await {
                tracing::warn!(build_id = %id, "failed to publish build.cancelled: {e:#}");
            }
            state.metrics.finished("cancelled", "", false, None);
            return Ok((
                StatusCode::OK,
                Json(json!({"id": id, "state": "cancelled", "links": links(&id)})),
            )
                .into_response());
        }
        CancelRequest::Marked => {}
        CancelRequest::Now(now) => {
            let now = now.ok_or_else(|| ApiError::not_found(&format!("build {id:?}")))?;
            return Err(ApiError::conflict(format!(
                "build {id} already {}",
                now.as_str()
            )));
        }
    }
    // Running: every replica hears this and the one running it stops now; without it the stored
    // cancel stops the build within `store.poll_ms`.
    if let Err(e) = state
        .broker
        .control(&Control::Cancel {
            build_id: id.clone(),
        })
        .await
    {
        tracing::warn!(build_id = %id, "cancel broadcast failed, the stored cancel stands: {e:#}");
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": "running", "cancelling": true, "links": links(&id)})),
    )
        .into_response())
}

/// POST /v1/builds/{id}/rebuild: the same request under a new id, built even if an image exists.
/// Secrets are not stored, so a private repository's token, any build arg values and build
/// secrets come in the body: `{"token": "...", "build_args": {...}, "secrets": {...}}`.
#[utoipa::path(post, path = "/v1/builds/{id}/rebuild", tag = "builds", security(("bearer" = [])),
    params(("id" = String, Path, description = "The build to do again")),
    request_body = crate::api::openapi::RebuildBody,
    responses(
        (status = 202, description = "The new build, queued", body = crate::api::openapi::Accepted),
        (status = 400, description = "A body field is wrong", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such build for this key", body = crate::api::openapi::ErrorBody)))]
pub async fn rebuild(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    scope.require(Role::Submit)?;
    let build = find(&state, &scope, &id).await?;
    let supplied: serde_json::Map<String, Value> = if body.is_empty() {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice(&body) {
            Ok(Value::Object(map)) => map,
            _ => return Err(ApiError::bad_request("body", "must be a JSON object")),
        }
    };
    if let Some(unknown) = supplied
        .keys()
        .find(|k| !["token", "build_args", "secrets"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(
            unknown,
            "a rebuild takes only `token`, `build_args` and `secrets`",
        ));
    }
    let Value::Object(mut request) = build.request.clone() else {
        return Err(ApiError::conflict(format!(
            "build {id} has no stored request to rebuild (it was rejected)"
        )));
    };
    if request.get("repo").is_none_or(Value::is_null) {
        return Err(ApiError::conflict(format!(
            "build {id} has no stored request to rebuild (it was rejected)"
        )));
    }
    for (field, what) in [("build_args", "build arg"), ("secrets", "secret")] {
        let stored: Vec<String> = request
            .get(field)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let given = supplied.get(field).and_then(Value::as_object);
        if let Some(missing) = stored
            .iter()
            .find(|k| given.is_none_or(|g| !g.contains_key(*k)))
        {
            return Err(ApiError::bad_request(
                field,
                format!("{what} values are not stored; supply {missing:?} (and the others) again"),
            ));
        }
    }
    request.remove("has_token");
    let new_id = format!(
        "{}-rb-{}",
        truncate_id(&id),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    request.insert("id".into(), json!(new_id));
    request.insert("no_cache".into(), json!(true));
    for (key, value) in supplied {
        request.insert(key, value);
    }
    let body = serde_json::to_vec(&Value::Object(request)).map_err(anyhow::Error::from)?;
    let parsed = BuildRequest::parse(&body, &state.policy, None)?;
    enqueue(&state, &parsed, &body, Some(id)).await
}

/// Room for the rebuild suffix within the 128 characters of an id.
pub(super) fn truncate_id(id: &str) -> &str {
    let mut end = id.len().min(100);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// DELETE /v1/builds/{id}: the record, history and log. A build still queued or running must be
/// cancelled first. The image stays in the registry.
#[utoipa::path(delete, path = "/v1/builds/{id}", tag = "builds", security(("bearer" = [])),
    params(("id" = String, Path, description = "The build id")),
    responses(
        (status = 200, description = "Deleted: record, history and log (the image stays)"),
        (status = 404, description = "No such build for this key", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "Still queued or running: cancel it first", body = crate::api::openapi::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    scope.require(Role::Admin)?;
    let build = find(&state, &scope, &id).await?;
    if !build.state.is_final() {
        return Err(ApiError::conflict(format!(
            "build {id} is {}; cancel it first",
            build.state.as_str()
        )));
    }
    state.store.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
