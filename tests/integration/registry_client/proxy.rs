//! A thin reverse proxy on 127.0.0.1 that counts what passes: every request and every 401, so a
//! test can prove there is no extra auth round trip.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;

#[derive(Default)]
pub struct Counts {
    pub requests: AtomicUsize,
    pub unauthorized: AtomicUsize,
    /// Requests that arrived carrying an Authorization header.
    pub with_credentials: AtomicUsize,
}

impl Counts {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn unauthorized(&self) -> usize {
        self.unauthorized.load(Ordering::SeqCst)
    }
    pub fn with_credentials(&self) -> usize {
        self.with_credentials.load(Ordering::SeqCst)
    }
}

pub struct Proxy {
    pub addr: String,
    pub counts: Arc<Counts>,
    upstream: Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Upstream {
    base: Arc<std::sync::Mutex<String>>,
    http: reqwest::Client,
    counts: Arc<Counts>,
}

impl Proxy {
    /// Listens now; forwards to `upstream` (set later with `point_at`, the registry's config
    /// needs the proxy's address first).
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy port");
        let addr = listener.local_addr().expect("addr").to_string();
        let counts = Arc::new(Counts::default());
        let state = Upstream {
            base: Arc::default(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            counts: counts.clone(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            counts,
            upstream: state.base,
            task,
        }
    }

    pub fn point_at(&self, upstream: &str) {
        *self.upstream.lock().expect("upstream") = upstream.to_owned();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(up): State<Upstream>, request: Request) -> Response {
    up.counts.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    if parts.headers.contains_key("authorization") {
        up.counts.with_credentials.fetch_add(1, Ordering::SeqCst);
    }
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("request body");
    let base = up.base.lock().expect("base").clone();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = up
        .http
        .request(parts.method.clone(), format!("http://{base}{path}"));
    for (name, value) in &parts.headers {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.body(body).send().await {
        Ok(answer) => answer,
        Err(_) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::empty())
                .expect("response");
        }
    };
    if answer.status() == StatusCode::UNAUTHORIZED {
        up.counts.unauthorized.fetch_add(1, Ordering::SeqCst);
    }
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "transfer-encoding" | "connection") {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.expect("upstream body");
    response.body(Body::from(bytes)).expect("response")
}
