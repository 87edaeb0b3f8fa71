//! Secret hygiene: a token in a repo URL, in the dead queue, offered to a redirected host, or
//! printed encoded by a build step never comes out of the service.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use image_builder::error::Fault;
use image_builder::events::Event;
use serde_json::json;

use crate::support::{
    Api, DOCKERFILE_WITH_RUN, GitServer, RepoFixture, Stack, TestRegistry, Worker,
    assert_secret_absent, expect_failed, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_the_repo_url_is_refused_and_never_repeated() {
    let git = GitServer::start().await;
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[]).await;
    let token = unique("gho_url");
    let id = unique("url-");
    let repo = format!("https://x-access-token:{token}@github.com/acme/app");
    stack
        .publish_json(&json!({"id": id, "repo": repo, "user_id": "u1"}))
        .await;

    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    let Event::Rejected(rejected) = &event else {
        panic!("expected build.rejected, got {event:?}");
    };
    assert_eq!(rejected.field.as_deref(), Some("repo"));
    assert!(
        rejected.reason.contains("token field"),
        "{}",
        rejected.reason
    );
    assert_eq!(
        rejected.build.repo.as_deref(),
        Some("https://github.com/acme/app"),
        "the event names the repository without its user-info"
    );

    let record = api.wait_state(&id, "failed", BUILD_TIMEOUT).await;
    assert_eq!(record["repo"], json!("https://github.com/acme/app"));
    let record_text = record.to_string();
    assert!(!record_text.contains(&token), "the record: {record_text}");

    // The API refuses it the same way, without quoting it.
    let (status, answer) = api
        .post_json("/v1/builds", &json!({"repo": repo, "user_id": "u1"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(!answer.to_string().contains(&token), "{answer}");

    assert_secret_absent(&token, &api.worker, &stack);
    api.worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dead_queue_parks_a_request_without_its_secrets() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/private");
    fixture.commit(&[("Dockerfile", DOCKERFILE_WITH_RUN)], "one");
    fixture.push();
    let token = unique("gho_dead");
    git.make_private("acme/private", &token);
    let registry = TestRegistry::new(); // never started: the push is a service fault
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__REGISTRY__HOST", &registry.addr),
            ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let id = unique("dead-");
    let arg_value = unique("arg-s3cret-");
    stack
        .publish_json(&json!({
            "id": id, "repo": "acme/private", "ref": "main", "user_id": "u7",
            "token": token, "build_args": {"N": arg_value},
        }))
        .await;

    let failed = expect_failed(stack.outcome(&id, BUILD_TIMEOUT).await);
    assert_eq!(failed.fault, Fault::Service, "{}", worker.log());
    let dead = stack.drain_dead().await;
    assert_eq!(dead.len(), 1, "one parked message");
    let (body, meta) = &dead[0];
    let text = String::from_utf8_lossy(body);
    assert!(
        !text.contains(&token),
        "the dead message keeps the token: {text}"
    );
    assert!(
        !text.contains(&arg_value),
        "the dead message keeps a build arg: {text}"
    );
    let parked: serde_json::Value = serde_json::from_slice(body).expect("dead body JSON");
    assert_eq!(parked["id"], json!(id));
    assert_eq!(parked["user_id"], json!("u7"));
    assert_eq!(parked["repo"], json!("acme/private"));
    assert_eq!(parked["ref"], json!("main"));
    assert_eq!(parked["has_token"], json!(true));
    assert_eq!(parked["attempts"], json!(1));
    assert!(parked["build_args"]["N"].is_null(), "{parked}");
    assert!(
        parked["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("registry")),
        "{parked}"
    );
    assert_eq!(meta.attempt, 1);

    assert_secret_absent(&token, &worker, &stack);
    assert_secret_absent(&arg_value, &worker, &stack);
    worker.stop().await;
    stack.cleanup().await;
}

/// A host that answers every request with 401 and keeps every Authorization header it is sent.
async fn recording_host() -> (String, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let record = record.clone();
        async move {
            if let Some(auth) = headers.get("authorization") {
                let value = String::from_utf8_lossy(auth.as_bytes()).into_owned();
                record.lock().expect("lock").push(value);
            }
            (
                StatusCode::UNAUTHORIZED,
                [("WWW-Authenticate", "Basic realm=\"git\"")],
                "authentication required",
            )
                .into_response()
        }
    });
    let (base, task) = serve(app).await;
    (base, seen, task)
}

/// A host that redirects every request to the same path and query on `target`.
async fn redirecting_host(target: String) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let target = target.clone();
        async move {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            Response::builder()
                .status(StatusCode::FOUND)
                .header("Location", format!("{target}{path}"))
                .body(axum::body::Body::empty())
                .expect("redirect response")
        }
    });
    serve(app).await
}

async fn serve(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test host");
    let addr = listener.local_addr().expect("test host address");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_not_offered_to_a_host_a_redirect_points_at() {
    let git = GitServer::start().await;
    let (other_host, offered, other_task) = recording_host().await;
    let (redirector, redirect_task) = redirecting_host(other_host.clone()).await;
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let token = unique("gho_redir");
    let id = unique("redir-");
    stack
        .publish_json(&json!({
            "id": id, "repo": format!("{redirector}/acme/app.git"), "user_id": "u1",
            "token": token,
        }))
        .await;

    let failed = expect_failed(stack.outcome(&id, BUILD_TIMEOUT).await);
    // An http remote's redirect is answered by the egress relay: refused on `repo` before
    // libgit2 could follow it anywhere (https remotes: the credential callback's own check).
    assert_eq!(failed.fault, Fault::Rejected, "{failed:?}");
    assert_eq!(failed.field.as_deref(), Some("repo"), "{failed:?}");
    let offered = offered.lock().expect("lock").clone();
    assert!(
        offered.is_empty(),
        "credentials went to the redirect's host: {offered:?}"
    );
    assert!(
        failed
            .reason
            .contains("answered with a redirect (HTTP 302)"),
        "the failure says why: {}\n{}",
        failed.reason,
        worker.log()
    );

    assert_secret_absent(&token, &worker, &stack);
    worker.stop().await;
    other_task.abort();
    redirect_task.abort();
    stack.cleanup().await;
}

/// Prints the build args percent-encoded (every byte, as a shell loop would, and as a URL
/// library would), base64-encoded (bare and as basic auth) and, for the key, line by line.
const PRINTS_ENCODED_SECRETS: &str = r#"FROM localhost/busybox:latest
ARG SECRET
ARG KEY
RUN printf '%s' "$SECRET" | busybox od -An -tx1 -v | busybox tr -d ' \n' | busybox sed 's/../%&/g'; echo; \
    printf '%s' "$SECRET" | busybox sed -e 's/%/%25/g' -e 's|/|%2F|g' -e 's/@/%40/g' -e 's/+/%2B/g' -e 's/:/%3A/g'; echo; \
    printf '%s' "$SECRET" | busybox base64; \
    printf 'x-access-token:%s' "$SECRET" | busybox base64; \
    printf 'git:%s\n' "$SECRET" | busybox base64; \
    printf '%s\n' "$KEY"; \
    echo done printing
"#;

#[tokio::test(flavor = "multi_thread")]
async fn encoded_and_multi_line_secrets_printed_by_a_step_are_redacted() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/printer");
    fixture.commit(&[("Dockerfile", PRINTS_ENCODED_SECRETS)], "one");
    fixture.push();
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[]).await;
    let secret = format!("Zq9/{}+x@y:z", unique(""));
    let key = format!(
        "-----BEGIN TEST PRIVATE KEY-----\nMIIE{}vQIBADANBgkqhkiG9w0B\nAQEF{}AASCBKcwggSjAgEAAoIB\n-----END TEST PRIVATE KEY-----",
        unique(""),
        unique("")
    );
    let id = unique("enc-");
    stack
        .publish_json(&json!({
            "id": id, "repo": "acme/printer", "user_id": unique("u"),
            "build_args": {"SECRET": secret, "KEY": key},
        }))
        .await;
    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    assert!(
        matches!(event, Event::ImageUpdated(_)),
        "expected image.updated, got {event:?}\n{}",
        api.worker.log()
    );

    // The step ran and printed: the stored log has its last line and the masks.
    let log = api.text(&format!("/v1/builds/{id}/logs")).await;
    assert!(log.contains("done printing"), "{log}");
    assert!(log.matches("[REDACTED]").count() >= 7, "{log}");
    for form in crate::support::encoded_forms(&secret)
        .into_iter()
        .chain(crate::support::encoded_forms(&key))
    {
        assert!(
            !log.contains(&form),
            "the stored log shows {form:?}:\n{log}"
        );
    }
    assert_secret_absent(&secret, &api.worker, &stack);
    assert_secret_absent(&key, &api.worker, &stack);
    api.worker.stop().await;
    stack.cleanup().await;
}
