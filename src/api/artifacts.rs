//! Artifacts over HTTP: a build's list, one artifact's bytes streamed from the registry, and
//! "get or build": the newest artifact of a repository, or a build queued to make it. Scoped
//! like builds: another tenant's artifact is answered as one that does not exist.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::builds::{enqueue, find, links};
use super::error::ApiError;
use super::scope::Scope;
use crate::config::Role;
use crate::request::{ArtifactName, BuildRequest, GitRef, ImagePath, Platform};
use crate::store::{ArtifactRecord, BuildRecord};

fn download_link(build_id: &str, name: &str, platform: &str) -> String {
    format!("/v1/builds/{build_id}/artifacts/{name}?platform={platform}")
}

/// An artifact as the API shows it: its record, where it is in the registry, how to fetch it.
fn shown(build: &BuildRecord, artifact: &ArtifactRecord) -> Value {
    let mut answer = json!(artifact);
    answer["media_type"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
    answer["artifact_type"] = json!(crate::artifacts::ARTIFACT_TYPE);
    if let Some(image) = &build.image {
        let reference = format!("{image}@{}", artifact.digest);
        answer["reference"] = json!(reference);
        answer["pull"] = json!(format!("oras pull {reference}"));
    }
    answer["links"] = json!({
        "download": download_link(&build.id, &artifact.name, &artifact.platform),
        "build": format!("/v1/builds/{}", build.id),
    });
    answer
}

/// GET /v1/builds/{id}/artifacts.
#[utoipa::path(get, path = "/v1/builds/{id}/artifacts", tag = "artifacts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The build id")),
    responses(
        (status = 200, description = "`{artifacts: [...]}`: digests, size, platform, `oras pull` reference, download link"),
        (status = 404, description = "No such build for this key", body = crate::api::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let build = find(&state, &scope, &id).await?;
    let artifacts = state.store.artifacts(&id).await?;
    let shown: Vec<Value> = artifacts.iter().map(|a| shown(&build, a)).collect();
    Ok(Json(json!({
        "build_id": id,
        "state": build.state,
        "image": build.image,
        "digest": build.digest,
        "artifacts": shown,
    })))
}

/// GET /v1/builds/{id}/artifacts/{name}[?platform=]: the `tar.gz`, streamed from the registry
/// and hashed on the way; a blob that is not its digest ends the response early, so a client
/// never receives a complete wrong file.
#[utoipa::path(get, path = "/v1/builds/{id}/artifacts/{name}", tag = "artifacts", security(("bearer" = [])),
    params(("id" = String, Path, description = "The build id"),
        ("name" = String, Path, description = "The artifact's name"),
        ("platform" = Option<String>, Query, description = "Which one, when the image has several platforms")),
    responses(
        (status = 200, description = "The tar.gz, streamed; cut off if the blob is not its digest", content_type = "application/gzip"),
        (status = 404, description = "No such build or artifact for this key", body = crate::api::openapi::ErrorBody)))]
pub async fn download(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path((id, name)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let build = find(&state, &scope, &id).await?;
    let name = ArtifactName::parse(&name).map_err(|r| ApiError::bad_request("name", r))?;
    let platform = platform_param(&params)?;
    let candidates: Vec<ArtifactRecord> = state
        .store
        .artifacts(&id)
        .await?
        .into_iter()
        .filter(|a| a.name == name.as_str())
        .filter(|a| platform.as_deref().is_none_or(|p| a.platform == p))
        .collect();
    let artifact = match candidates.as_slice() {
        [] => {
            return Err(ApiError::not_found(&format!(
                "artifact {:?} of build {id:?}",
                name.as_str()
            )));
        }
        [one] => one,
        many => {
            let platforms: Vec<&str> = many.iter().map(|a| a.platform.as_str()).collect();
            return Err(ApiError::bad_request(
                "platform",
                format!(
                    "is required: this artifact exists for {}",
                    platforms.join(", ")
                ),
            ));
        }
    };
    let image = build
        .image
        .as_deref()
        .ok_or_else(|| ApiError::not_found(&format!("the image of build {id:?}")))?;
    let repository = repository_path(image, &state.settings.registry.host);
    let blob = state
        .registry
        .blob_stream(repository, &artifact.blob_digest)
        .await
        .map_err(|e| anyhow::anyhow!("reading artifact {}: {e}", artifact.blob_digest))?
        .ok_or_else(|| {
            ApiError::not_found(&format!(
                "the blob of artifact {:?} in the registry (deleted there?)",
                name.as_str()
            ))
        })?;
    // An error ends the body where it is: the client sees a cut-off response, the log says why.
    let build_id = id.clone();
    let chunks = futures_util::TryStreamExt::inspect_err(blob.chunks, move |e| {
        tracing::warn!(
            build_id = %build_id,
            "artifact download cut off: {}",
            crate::error::cause_chain(e)
        );
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Some(len) = blob.len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    // The name is [a-z0-9._-]: safe in a quoted filename and a header value.
    let disposition = format!("attachment; filename=\"{}.tar.gz\"", name.as_str());
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&artifact.blob_digest) {
        headers.insert("x-content-digest", value);
    }
    Ok(response)
}

/// GET /v1/artifacts?repo&name[&ref][&platform][&build=true[&path][&user_id][&connector]]: the
/// newest artifact of that name from a succeeded build of the key's users. With `build=true`
/// and none there, a build that makes it is queued (or the one already queued is named): 202
/// with its links.
#[utoipa::path(get, path = "/v1/artifacts", tag = "artifacts", security(("bearer" = [])),
    params(("repo" = String, Query, description = "The repository, as requested"),
        ("name" = String, Query, description = "The artifact's name"),
        ("ref" = Option<String>, Query, description = "Only builds of this ref"),
        ("platform" = Option<String>, Query, description = "e.g. linux/amd64"),
        ("build" = Option<bool>, Query, description = "Queue a build that makes it when there is none"),
        ("path" = Option<String>, Query, description = "With build=true: the path to export"),
        ("user_id" = Option<String>, Query, description = "With build=true: whom to build for"),
        ("connector" = Option<String>, Query, description = "With build=true: the connector")),
    responses(
        (status = 200, description = "The newest artifact with its download link"),
        (status = 202, description = "A build that makes it was queued (or one already is): its links"),
        (status = 400, description = "A parameter is wrong", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "None, and build=true not asked", body = crate::api::openapi::ErrorBody)))]
pub async fn latest(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let known = [
        "repo",
        "ref",
        "name",
        "platform",
        "build",
        "path",
        "user_id",
        "connector",
    ];
    if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad_request(
            unknown,
            format!("unknown parameter; use one of {}", known.join(", ")),
        ));
    }
    let repo = params
        .get("repo")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("repo", "is required"))?;
    let name = params
        .get("name")
        .ok_or_else(|| ApiError::bad_request("name", "is required"))?;
    let name = ArtifactName::parse(name).map_err(|r| ApiError::bad_request("name", r))?;
    let git_ref = params
        .get("ref")
        .map(|r| GitRef::parse(r).map_err(|reason| ApiError::bad_request("ref", reason)))
        .transpose()?;
    let git_ref = git_ref.as_ref().map(GitRef::as_str);
    let platform = platform_param(&params)?;
    let build = match params.get("build").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(ApiError::bad_request("build", "must be true or false")),
    };
    let users = scope.users();
    let found = state
        .store
        .latest_artifact(repo, git_ref, name.as_str(), platform.as_deref(), users)
        .await?;
    if let Some((record, artifact)) = found {
        let mut answer = shown(&record, &artifact);
        answer["repo"] = json!(record.repo);
        answer["ref"] = json!(record.git_ref);
        answer["commit"] = json!(record.commit);
        answer["image"] = json!(record.image);
        answer["image_digest"] = json!(record.digest);
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }
    let missing = || {
        let mut what = format!("an artifact {:?} of {repo}", name.as_str());
        if let Some(r) = git_ref {
            what.push_str(&format!(" at {r}"));
        }
        if let Some(p) = &platform {
            what.push_str(&format!(" for {p}"));
        }
        ApiError::not_found(&what)
    };
    if !build {
        return Err(missing());
    }
    scope.require(Role::Submit)?;
    if let Some(pending) = state
        .store
        .pending_artifact_build(repo, git_ref, name.as_str(), users)
        .await?
    {
        return Ok(accepted(&pending.id, pending.state.as_str(), true));
    }
    let body = build_request(&state, &scope, &params, repo, git_ref, &name, platform).await?;
    let request = BuildRequest::parse(&body, &state.policy, None)?;
    scope.may_submit_for(request.user_id.as_str())?;
    let queued = enqueue(&state, &request, &body, None).await?;
    if queued.status() != StatusCode::ACCEPTED {
        return Ok(queued);
    }
    Ok(accepted(request.id.as_str(), "queued", false))
}

/// 202 naming the build that will make the artifact.
fn accepted(id: &str, state: &str, existing: bool) -> Response {
    let answer = json!({
        "id": id,
        "state": state,
        "existing": existing,
        "links": links(id),
    });
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

/// The body of a build that makes the artifact: the path from `path` or from the newest build
/// of this repository that exported one of that name; the user from `user_id` or the key's one
/// user; the connector from `connector` or that earlier build's request.
async fn build_request(
    state: &AppState,
    scope: &Scope,
    params: &HashMap<String, String>,
    repo: &str,
    git_ref: Option<&str>,
    name: &ArtifactName,
    platform: Option<String>,
) -> Result<Vec<u8>, ApiError> {
    let earlier = state
        .store
        .latest_artifact(repo, None, name.as_str(), None, scope.users())
        .await?;
    let path = match (params.get("path"), &earlier) {
        (Some(raw), _) => ImagePath::parse(raw)
            .map_err(|r| ApiError::bad_request("path", r))?
            .as_str()
            .to_owned(),
        (None, Some((_, artifact))) => artifact.path.clone(),
        (None, None) => {
            return Err(ApiError::bad_request(
                "path",
                "is required to build an artifact no earlier build of this repository exported",
            ));
        }
    };
    let user = match (params.get("user_id"), scope.users()) {
        (Some(user), _) => user.clone(),
        (None, Some([only])) => only.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "user_id",
                "is required: this API key may act for more than one user",
            ));
        }
    };
    let connector = params.get("connector").cloned().or_else(|| {
        earlier
            .as_ref()
            .and_then(|(build, _)| build.request["connector"].as_str().map(str::to_owned))
    });
    let mut body = json!({
        "repo": repo,
        "user_id": user,
        "artifacts": [{"name": name.as_str(), "path": path}],
    });
    if let Some(r) = git_ref {
        body["ref"] = json!(r);
    }
    if let Some(c) = connector {
        body["connector"] = json!(c);
    }
    if let Some(p) = platform {
        body["platforms"] = json!([p]);
    }
    Ok(body.to_string().into_bytes())
}

fn platform_param(params: &HashMap<String, String>) -> Result<Option<String>, ApiError> {
    params
        .get("platform")
        .map(|raw| {
            Platform::parse(raw)
                .map(|p| p.as_str().to_owned())
                .map_err(|reason| ApiError::bad_request("platform", reason))
        })
        .transpose()
}

/// `registry/ns/name` -> `ns/name`, the repository path of the distribution API.
fn repository_path<'a>(image: &'a str, registry: &str) -> &'a str {
    image
        .strip_prefix(registry)
        .and_then(|rest| rest.strip_prefix('/'))
        .unwrap_or(image)
}
