//! The API's OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations as the
//! router registers them (`utoipa_axum`), so the document and the routes cannot drift apart; the
//! JSON at `/openapi.json` and a reference page rendered from it at `/docs/api` (no scripts, no
//! external assets).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::LazyLock;

use axum::Json;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "image-builder",
        description = "Builds container images from git repositories: submit, follow, cancel and \
                       rebuild builds, find images, receive forge webhooks. Every route under /v1 \
                       but the webhooks needs a bearer key (`image-builder api-key`), scoped to \
                       user ids: another tenant's builds answer exactly like unknown ones (404)."
    ),
    paths(super::catalog::versions, super::registry_browser::tags),
    components(schemas(ErrorBody, ErrorDetail, Accepted, Links, BuildRequestBody, RebuildBody)),
    modifiers(&BearerKey),
    tags(
        (name = "builds", description = "Submit, list, follow, cancel, rebuild and delete builds"),
        (name = "catalog", description = "What has been built: images, repositories, versions"),
        (name = "artifacts", description = "Files exported from built images, stored as OCI artifacts"),
        (name = "registry", description = "The registry's images and tags in the key's namespaces"),
        (name = "webhooks", description = "Forge push, tag and release events"),
        (name = "operations", description = "Probes, metrics and this document")
    )
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every error: what went wrong, and which field of the request when one is at fault.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// bad_request, unauthorized, forbidden, not_found, conflict, payload_too_large, unavailable...
    pub code: String,
    pub message: String,
    /// The request field (or query parameter) at fault.
    pub field: Option<String>,
}

/// A build taken: queued (202), or the identical request seen before (200).
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    pub id: String,
    /// queued, running, succeeded, failed, cancelled, rejected.
    pub state: String,
    /// The identical request was seen before: nothing new was queued.
    pub duplicate: Option<bool>,
    pub links: Links,
}

#[derive(Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub this: String,
    pub logs: String,
    pub cancel: String,
}

/// A build request, as on the queue (docs/DESIGN.md has every rule).
#[derive(Serialize, ToSchema)]
pub struct BuildRequestBody {
    /// Idempotency key; generated when absent. At most 128 of `[A-Za-z0-9._-]`.
    pub id: Option<String>,
    /// `owner/name` on the connector, or an https URL.
    pub repo: String,
    /// github (default), gitlab or git.
    pub connector: Option<String>,
    /// How `ref` is read: repo (default), tag or release.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Branch, tag or full commit; the default branch when absent.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Used to fetch; never logged, stored or shown.
    pub token: Option<String>,
    /// The owner of the build and the image's namespace (`userID` is accepted too).
    pub user_id: String,
    pub context: Option<String>,
    pub dockerfile: Option<String>,
    pub target: Option<String>,
    /// auto (default), dockerfile or nixpacks.
    pub builder: Option<String>,
    pub build_args: Option<BTreeMap<String, String>>,
    /// Mounted for `RUN --mount=type=secret,id=...`; never stored or shown.
    pub secrets: Option<BTreeMap<String, String>>,
    pub platforms: Option<Vec<String>>,
    pub image: Option<String>,
    pub tags: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub no_cache: Option<bool>,
}

/// What a rebuild needs that records never keep.
#[derive(Serialize, ToSchema)]
pub struct RebuildBody {
    pub token: Option<String>,
    pub build_args: Option<BTreeMap<String, String>>,
    pub secrets: Option<BTreeMap<String, String>>,
}

/// Built once, from the same route lists the router is built from.
static DOCUMENT: LazyLock<Document> = LazyLock::new(super::openapi_document);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI document")))]
pub async fn document() -> impl IntoResponse {
    Json(DOCUMENT.clone())
}

/// A readable reference of every route, rendered from the document.
#[utoipa::path(get, path = "/docs/api", tag = "operations",
    responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn reference() -> impl IntoResponse {
    static PAGE: LazyLock<String> = LazyLock::new(|| render(&DOCUMENT));
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE.as_str()))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One section per path and method: summary, description, parameters, body, answers. Read from
/// the document's JSON form, the shape every OpenAPI reader sees.
pub fn render(doc: &Document) -> String {
    let doc = serde_json::to_value(doc).unwrap_or_default();
    let text = |v: &Value| v.as_str().map(escape).unwrap_or_default();
    let mut out = String::from(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>image-builder API reference</title></head><body><main>\n",
    );
    let _ = writeln!(out, "<h1>{} API</h1>", text(&doc["info"]["title"]));
    let _ = writeln!(out, "<p>{}</p>", text(&doc["info"]["description"]));
    out.push_str(
        "<p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a>. \
         Back to the <a href=\"/\">console</a>.</p>\n",
    );
    let empty = serde_json::Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete"] {
            let op = &item[method];
            if op.is_null() {
                continue;
            }
            let _ = writeln!(
                out,
                "<section><h2><code>{} {}</code></h2>",
                method.to_uppercase(),
                escape(path)
            );
            let _ = writeln!(out, "<p><strong>{}</strong></p>", text(&op["summary"]));
            if op["description"].is_string() {
                let _ = writeln!(out, "<p>{}</p>", text(&op["description"]));
            }
            if let Some(params) = op["parameters"].as_array() {
                out.push_str("<h3>Parameters</h3><ul>\n");
                for p in params {
                    let required = if p["required"] == true {
                        ", required"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        out,
                        "<li><code>{}</code> ({}{required}) {}</li>",
                        text(&p["name"]),
                        text(&p["in"]),
                        text(&p["description"])
                    );
                }
                out.push_str("</ul>\n");
            }
            if let Some(content) = op["requestBody"]["content"].as_object() {
                for (kind, media) in content {
                    let schema = media["schema"]["$ref"]
                        .as_str()
                        .and_then(|r| r.rsplit('/').next())
                        .map(|name| format!(": schema <code>{}</code>", escape(name)))
                        .unwrap_or_default();
                    let _ = writeln!(out, "<h3>Body</h3><p>{}{schema}</p>", escape(kind));
                }
            }
            out.push_str("<h3>Answers</h3><ul>\n");
            if let Some(responses) = op["responses"].as_object() {
                for (status, response) in responses {
                    let _ = writeln!(
                        out,
                        "<li><code>{}</code> {}</li>",
                        escape(status),
                        text(&response["description"])
                    );
                }
            }
            out.push_str("</ul></section>\n");
        }
    }
    out.push_str("</main></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use crate::api::openapi::render;
    use crate::api::openapi_document;

    /// Routes registered with a bare axum `.route(...)` are not in the document; the one that
    /// must be (a wildcard path) is documented by hand. Anything else is a route the contract
    /// would not show.
    #[test]
    fn every_route_of_the_router_is_documented() {
        let router_source = include_str!("mod.rs");
        // The path of each `.route(` call, on its line or the next (rustfmt may break it).
        let lines: Vec<&str> = router_source.lines().collect();
        let bare: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with(".route("))
            .filter_map(|(i, l)| {
                let call = format!("{l}{}", lines.get(i + 1).copied().unwrap_or_default());
                call.split('"').nth(1).map(str::to_owned)
            })
            .collect();
        assert_eq!(
            bare,
            [
                "/v1/repos/{*name_and_versions}",
                "/v1/registry/repositories/{*name_and_tags}"
            ],
            "register routes with `.routes(routes!(handler))` so the document has them"
        );
        let doc = serde_json::to_value(openapi_document()).expect("JSON");
        assert!(doc["paths"]["/v1/repos/{name}/versions"]["get"].is_object());
        assert!(doc["paths"]["/v1/registry/repositories/{name}/tags"]["get"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn the_reference_page_escapes_what_it_shows() {
        let page = render(&openapi_document());
        assert!(page.contains("<code>POST /v1/builds</code>"));
        assert!(!page.contains("<script"), "a page without scripts");
        assert!(page.contains("&lt;") || !page.contains("<timestamp>"));
    }
}
