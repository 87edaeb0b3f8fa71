//! What has been built: the image for a repo/ref/platform with its pull command, repository names,
//! and a repository's built versions.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::params;
use super::scope::Scope;
use crate::request::Platform;
use crate::store::{BuildRecord, VersionFilter};

const MAX_VERSIONS: u32 = 100;

/// GET /v1/images?repo&ref&platform: the newest good image of the key's users and how to pull it.
#[utoipa::path(get, path = "/v1/images", tag = "catalog", security(("bearer" = [])),
    params(("repo" = String, Query, description = "The repository, as requested"),
        ("ref" = Option<String>, Query, description = "Only builds of this ref"),
        ("platform" = Option<String>, Query, description = "e.g. linux/amd64")),
    responses(
        (status = 200, description = "The newest good image: reference, digest, tags, `pull` command"),
        (status = 400, description = "A parameter is wrong", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such image for this key", body = crate::api::openapi::ErrorBody)))]
pub async fn image(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let repo = params
        .get("repo")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| ApiError::bad_request("repo", "is required"))?;
    let git_ref = params.get("ref").map(String::as_str);
    let platform = match params.get("platform") {
        None => None,
        Some(raw) => {
            Some(Platform::parse(raw).map_err(|reason| ApiError::bad_request("platform", reason))?)
        }
    };
    let platform = platform.as_ref().map(Platform::as_str);
    let build = state
        .store
        .latest_image(repo, git_ref, platform, scope.users())
        .await?
        .ok_or_else(|| {
            let mut what = format!("an image of {repo}");
            if let Some(r) = git_ref {
                what.push_str(&format!(" at {r}"));
            }
            if let Some(p) = platform {
                what.push_str(&format!(" for {p}"));
            }
            ApiError::not_found(&what)
        })?;
    let (Some(image), Some(digest)) = (&build.image, &build.digest) else {
        return Err(ApiError::not_found(&format!("an image of {repo}")));
    };
    let platform_flag = platform
        .map(|p| format!("--platform {p} "))
        .unwrap_or_default();
    Ok(Json(json!({
        "repo": repo,
        "ref": build.git_ref,
        "commit": build.commit,
        "image": image,
        "digest": digest,
        "reference": format!("{image}@{digest}"),
        "tags": build.tags,
        "platforms": build.platforms,
        "build_id": build.id,
        "finished_at": json!(build).get("finished_at").cloned(),
        "pull": format!("podman pull {platform_flag}{image}@{digest}"),
    })))
}

/// GET /v1/repos: every repository with builds of the key's users.
#[utoipa::path(get, path = "/v1/repos", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, description = "`{repos: [{name, builds, last_build_at}]}`")))]
pub async fn repos(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "repos": state.store.repos(scope.users()).await? }),
    ))
}

/// GET /v1/repos/{name}/versions?ref&limit&newest_per_ref, where the name may contain slashes
/// (`owner/name`, or a URL percent-encoded): the repository's good builds, newest first.
#[utoipa::path(get, path = "/v1/repos/{name}/versions", tag = "catalog", security(("bearer" = [])),
    params(("name" = String, Path, description = "owner/name (slashes allowed), or a percent-encoded URL"),
        ("ref" = Option<String>, Query, description = "Only builds of this ref"),
        ("limit" = Option<u32>, Query, description = "The last N, 1 to 100"),
        ("newest_per_ref" = Option<bool>, Query, description = "One line per ref: its newest good build")),
    responses(
        (status = 200, description = "`{repo, versions: [...]}`, newest first"),
        (status = 400, description = "A parameter is wrong", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such repository for this key", body = crate::api::openapi::ErrorBody)))]
pub async fn versions(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(name_and_versions): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let name = name_and_versions
        .strip_suffix("/versions")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::not_found("route"))?;
    params::only_known(&params, &["ref", "limit", "newest_per_ref"])?;
    let filter = VersionFilter {
        git_ref: params.get("ref").map(String::as_str),
        newest_per_ref: params::switch(&params, "newest_per_ref")?,
        limit: params::limit(&params, MAX_VERSIONS, MAX_VERSIONS)?,
    };
    let users = scope.users();
    let builds = state.store.versions(name, &filter, users).await?;
    if builds.is_empty()
        && !state
            .store
            .repos(users)
            .await?
            .iter()
            .any(|r| r.name == name)
    {
        return Err(ApiError::not_found(&format!("repository {name:?}")));
    }
    let versions: Vec<Value> = builds.iter().map(version).collect();
    Ok(Json(json!({"repo": name, "versions": versions})))
}

fn version(build: &BuildRecord) -> Value {
    let record = json!(build);
    json!({
        "build_id": build.id,
        "ref": build.git_ref,
        "commit": build.commit,
        "image": build.image,
        "digest": build.digest,
        "tags": build.tags,
        "platforms": build.platforms,
        "cached": build.cached,
        "finished_at": record.get("finished_at"),
    })
}
