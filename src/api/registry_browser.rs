//! /v1/registry: the images and tags of the configured registry (what the old registry browser
//! showed), read through the registry port with the configured credentials and cut to the
//! namespaces (user ids) the key may see. Image names are `user_id/name` (DESIGN.md), so the
//! first path segment is the tenant; a name without one is an admin's only, like a build
//! without a user. A repository outside the scope answers exactly like one that does not exist.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::params;
use super::scope::Scope;
use crate::error::RegistryError;

/// Tags image-builder writes for itself: build keys and lineage (`ib-…`, reserved, never a
/// user's), and the referrers fallback tag of an image with artifacts (`sha256-<64 hex>`).
fn is_internal(tag: &str) -> bool {
    tag.starts_with("ib-")
        || tag.strip_prefix("sha256-").is_some_and(|hex| {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// GET /v1/registry/repositories: the registry's repositories in the key's namespaces.
#[utoipa::path(get, path = "/v1/registry/repositories", tag = "registry", security(("bearer" = [])),
    responses(
        (status = 200, description = "`{registry, repositories: [{name, namespace, image, links}]}`: \
            the registry's catalog, only the key's namespaces (user ids; all for an admin key)"),
        (status = 503, description = "The registry did not answer", body = crate::api::openapi::ErrorBody)))]
pub async fn repositories(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    params::only_known(&query, &[])?;
    let host = &state.settings.registry.host;
    let mut names: Vec<String> = state
        .registry
        .repositories()
        .await
        .map_err(unreachable)?
        .into_iter()
        .filter(|name| scope.may_see(namespace(name)))
        .collect();
    names.sort();
    let repositories: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "namespace": namespace(name),
                "image": format!("{host}/{name}"),
                "links": {"tags": format!("/v1/registry/repositories/{name}/tags")},
            })
        })
        .collect();
    Ok(Json(
        json!({"registry": host, "repositories": repositories}),
    ))
}

/// GET /v1/registry/repositories/{name}/tags, the name with its slashes: the repository's tags,
/// sorted, then how many of image-builder's own tags (`is_internal`) it also carries.
#[utoipa::path(get, path = "/v1/registry/repositories/{name}/tags", tag = "registry", security(("bearer" = [])),
    params(("name" = String, Path, description = "user_id/name (slashes allowed)")),
    responses(
        (status = 200, description = "`{name, image, tags: [{tag, pull}], internal_tags}`: \
            internal_tags counts image-builder's own (`ib-…` build keys, `sha256-…` referrers)"),
        (status = 400, description = "Not a repository name", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such repository for this key", body = crate::api::openapi::ErrorBody),
        (status = 503, description = "The registry did not answer", body = crate::api::openapi::ErrorBody)))]
pub async fn tags(
    State(state): State<AppState>,
    Extension(scope): Extension<Scope>,
    Path(name_and_tags): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let name = name_and_tags
        .strip_suffix("/tags")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::not_found("route"))?;
    params::only_known(&query, &[])?;
    check_name(name)?;
    let hidden = || ApiError::not_found(&format!("repository {name:?}"));
    if !scope.may_see(namespace(name)) {
        return Err(hidden());
    }
    let all = state
        .registry
        .tags(name)
        .await
        .map_err(unreachable)?
        .ok_or_else(hidden)?;
    let (internal, mut user): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|t| is_internal(t));
    user.sort();
    let image = format!("{}/{name}", state.settings.registry.host);
    let tags: Vec<Value> = user
        .iter()
        .map(|tag| json!({"tag": tag, "pull": format!("podman pull {image}:{tag}")}))
        .collect();
    Ok(Json(json!({
        "name": name,
        "image": image,
        "tags": tags,
        "internal_tags": internal.len(),
    })))
}

/// The tenant of a repository name: its first path segment, if it has more than one.
fn namespace(name: &str) -> Option<&str> {
    name.split_once('/').map(|(first, _)| first)
}

/// A repository name as the distribution spec allows it: lowercase path components of
/// `[a-z0-9]` separated by `.`, `_`, `__` or `-`; nothing that could leave the path.
fn check_name(name: &str) -> Result<(), ApiError> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
            && c.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)
    };
    if name.len() <= 255 && name.split('/').all(component_ok) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "name",
        "must be a registry repository name: lowercase letters, digits and . _ - \
         between slashes",
    ))
}

/// The registry did not answer as it should: the detail goes to the log, the caller learns
/// only that it is unavailable.
fn unreachable(e: RegistryError) -> ApiError {
    tracing::warn!("registry listing failed: {e}");
    ApiError::unavailable("the registry did not answer; try again (details in the server log)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    #[test]
    fn the_first_segment_is_the_tenant() {
        assert_eq!(namespace("acme/app"), Some("acme"));
        assert_eq!(namespace("acme/team/app"), Some("acme"));
        assert_eq!(namespace("busybox"), None);
        let acme = Scope::new(Role::Read, Some(vec!["acme".into()]));
        assert!(acme.may_see(namespace("acme/app")));
        assert!(!acme.may_see(namespace("acme2/app")));
        assert!(
            !acme.may_see(namespace("busybox")),
            "no namespace: admins only"
        );
        assert!(Scope::new(Role::Admin, None).may_see(namespace("busybox")));
    }

    #[test]
    fn build_keys_and_referrer_tags_are_image_builders_own() {
        assert!(is_internal("ib-0123") && is_internal("ib-line-0123"));
        assert!(is_internal(&format!("sha256-{}", "ab".repeat(32))));
        for user in ["latest", "main", "0123456789ab", "sha256-short", "v1-ib-"] {
            assert!(!is_internal(user), "{user}");
        }
    }

    #[test]
    fn names_that_could_leave_the_path_are_refused() {
        assert!(check_name("acme/my-app").is_ok());
        assert!(check_name("acme/a.b_c/d").is_ok());
        for bad in [
            "acme/../x",
            "acme//x",
            "Acme/x",
            "acme/x?n=1",
            "acme/-x",
            "/x",
            "x/",
        ] {
            assert!(check_name(bad).is_err(), "accepted {bad:?}");
        }
    }
}
