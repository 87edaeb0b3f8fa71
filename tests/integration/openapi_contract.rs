//! The OpenAPI document is the server's: every operation it lists is answered by a real route of
//! the running binary (never the router's "route not found" or 405), the document is served
//! without a key, and the reference page renders every operation.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{Api, GitServer, Stack};

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_operation_is_a_route_the_server_has() {
    let git = GitServer::start().await;
    let stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[]).await;
    let response = api
        .client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK, "served without a key");
    let doc: Value = response.json().await.expect("JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut checked = Vec::new();
    for (path, item) in paths {
        // A repository's name holds a slash; any other name is one segment.
        let name = if path.starts_with("/v1/repos/") {
            "acme/no-such-repo"
        } else {
            "no-such-name"
        };
        let concrete = path
            .replace("{id}", "no-such-build")
            .replace("{name}", name);
        for method in ["get", "post", "put", "patch", "delete"] {
            if item[method].is_null() {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let answer = api
                .request(method.clone(), &concrete)
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .expect("answer");
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: documented, but the route has no such method"
            );
            assert!(
                !body.contains("route not found"),
                "{method} {path}: documented, but the server has no such route: {body}"
            );
            checked.push(format!("{method} {path}"));
        }
    }
    for wanted in [
        "POST /v1/builds",
        "GET /v1/builds/{id}/logs",
        "GET /v1/repos/{name}/versions",
        "POST /v1/webhooks/gitlab",
        "GET /openapi.json",
    ] {
        assert!(
            checked.iter().any(|c| c == wanted),
            "{wanted} is not documented: {checked:?}"
        );
    }
    let page = api.text("/docs/api").await;
    for operation in &checked {
        let (method, path) = operation.split_once(' ').expect("method and path");
        let shown = format!("<code>{method} {}</code>", path.replace('&', "&amp;"));
        assert!(
            page.contains(&shown),
            "the reference page lacks {operation}"
        );
    }
    api.worker.shutdown().await;
    stack.cleanup().await;
}
