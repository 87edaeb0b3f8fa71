//! The web console at `/`: one HTML page, a vanilla JS module and a stylesheet, compiled into
//! the binary (no CDN, no build step). The assets carry no data and are served without a key;
//! everything shown comes from the `/v1` routes, which the page calls with the key the person
//! entered (kept in the tab's sessionStorage, sent as the bearer header), so the console shows
//! exactly what that key may see and a page without a key is only the login form.
//!
//! Why sessionStorage and a bearer header rather than a session cookie: the API stays stateless
//! (no server-side sessions to share between replicas), every request goes through the one
//! `auth::require_key`, and since the browser never attaches the key by itself, cancel and
//! rebuild cannot be triggered cross-site (no CSRF tokens needed). The key is gone when the
//! tab closes. A script injected into the page could read it; the strict CSP below (scripts
//! from this origin only, no inline code) and rendering data only as text guard against that.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");
const ICON_SVG: &str = include_str!("console/icon.svg");

/// Only this origin's files, no inline script or style, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// The console's page; open (the data behind it is not).
#[utoipa::path(get, path = "/", tag = "operations",
    responses((status = 200, description = "The web console: a login form until a key is entered, \
        then builds, repositories and registry images as that key may see them", content_type = "text/html")))]
pub async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// The page's script, stylesheet and icon under `/console/`: static files, not API operations,
/// so they are not in the OpenAPI document.
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/console/icon.svg",
            get(|| async { asset(ICON_SVG, "image/svg+xml") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 6] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        // A new binary's assets are picked up at once; they are small.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_inline_and_nothing_from_elsewhere() {
        assert!(INDEX_HTML.contains(r#"<script type="module" src="/console/app.js">"#));
        let without_module =
            INDEX_HTML.replace(r#"<script type="module" src="/console/app.js">"#, "");
        assert!(
            !without_module.contains("<script"),
            "inline scripts would be blocked by the CSP"
        );
        for asset in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
            assert!(!asset.contains(" style=\""), "inline styles are blocked");
            assert!(!asset.contains("onclick="), "inline handlers are blocked");
        }
        assert!(
            !APP_JS.contains("innerHTML"),
            "data is rendered as text only"
        );
    }
}
