//! A tiny in-process registry that lies on purpose: content that does not hash to its digest,
//! wrong digests announced after writes, and a first upload attempt that fails with 500.
//!
//! Repositories: `tampered` (every answer wrong), `flaky` (uploads fail once, then honest).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use image_builder::ports::content_digest;

pub const MANIFEST: &[u8] = br#"{"schemaVersion":2,"note":"original"}"#;
pub const TAMPERED: &[u8] = br#"{"schemaVersion":2,"note":"tampered"}"#;

#[derive(Default)]
pub struct Seen {
    pub upload_attempts: AtomicUsize,
    /// Bodies of the upload PUTs, in order.
    pub upload_bodies: Mutex<Vec<Vec<u8>>>,
}

pub struct Fake {
    pub addr: String,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake port");
        let addr = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(seen.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, seen, task }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: StatusCode, headers: &[(&str, String)], body: Vec<u8>) -> Response {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, value);
    }
    response.body(Body::from(body)).expect("response")
}

async fn handle(State(seen): State<Arc<Seen>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .expect("body")
        .to_vec();
    let manifest_type = (
        "content-type",
        "application/vnd.oci.image.manifest.v1+json".to_owned(),
    );
    let wrong = content_digest(b"something else entirely");
    match (method, path.as_str()) {
        (Method::GET, "/v2/tampered/manifests/latest") => answer(
            StatusCode::OK,
            &[
                manifest_type,
                ("docker-content-digest", content_digest(MANIFEST)),
            ],
            TAMPERED.to_vec(),
        ),
        (Method::GET, "/v2/tampered/manifests/honest") => answer(
            StatusCode::OK,
            &[
                manifest_type,
                ("docker-content-digest", content_digest(MANIFEST)),
            ],
            MANIFEST.to_vec(),
        ),
        (Method::GET, p) if p.starts_with("/v2/tampered/manifests/sha256:") => {
            answer(StatusCode::OK, &[manifest_type], TAMPERED.to_vec())
        }
        (Method::GET, p) if p.starts_with("/v2/tampered/blobs/") => {
            answer(StatusCode::OK, &[], b"not the blob you asked for".to_vec())
        }
        (Method::PUT, p) if p.starts_with("/v2/tampered/manifests/") => answer(
            StatusCode::CREATED,
            &[("docker-content-digest", wrong)],
            Vec::new(),
        ),
        (Method::POST, p) if p.ends_with("/blobs/uploads/") => {
            let repository = p
                .trim_start_matches("/v2/")
                .trim_end_matches("/blobs/uploads/");
            answer(
                StatusCode::ACCEPTED,
                &[("location", format!("/upload/{repository}?state=abc"))],
                Vec::new(),
            )
        }
        (Method::PUT, "/upload/tampered") => answer(
            StatusCode::CREATED,
            &[("docker-content-digest", wrong)],
            Vec::new(),
        ),
        (Method::PUT, "/upload/flaky") => {
            let attempt = seen.upload_attempts.fetch_add(1, Ordering::SeqCst);
            seen.upload_bodies
                .lock()
                .expect("bodies")
                .push(body.clone());
            let asked = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("digest="))
                .map(|d| d.replace("%3A", ":"))
                .unwrap_or_default();
            if attempt == 0 {
                answer(StatusCode::INTERNAL_SERVER_ERROR, &[], Vec::new())
            } else if content_digest(&body) == asked && query.contains("state=abc") {
                answer(
                    StatusCode::CREATED,
                    &[("docker-content-digest", asked)],
                    Vec::new(),
                )
            } else {
                answer(StatusCode::BAD_REQUEST, &[], Vec::new())
            }
        }
        _ => answer(StatusCode::NOT_FOUND, &[], Vec::new()),
    }
}
