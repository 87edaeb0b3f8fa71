//! A local git host for tests: `git http-backend` (smart HTTP) behind axum, with HTTP basic auth
//! on private repositories, so tokens travel exactly as they would to GitHub; it counts the
//! requests it serves. And `git daemon` over the same root.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use tokio::io::AsyncWriteExt;

#[derive(Clone)]
struct ServerState {
    root: PathBuf,
    /// repo path ("owner/name") -> token required as the basic-auth password.
    private: Arc<Mutex<HashMap<String, String>>>,
    served: Served,
}

/// Every request served, as "METHOD /path?query".
type Served = Arc<Mutex<Vec<String>>>;

pub struct GitServer {
    pub root: tempfile::TempDir,
    pub base_url: String,
    private: Arc<Mutex<HashMap<String, String>>>,
    served: Served,
    task: tokio::task::JoinHandle<()>,
}

impl GitServer {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().expect("git server root");
        let private = Arc::new(Mutex::new(HashMap::new()));
        let served = Served::default();
        let state = ServerState {
            root: root.path().to_owned(),
            private: private.clone(),
            served: served.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind git server");
        let addr = listener.local_addr().expect("git server address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            root,
            base_url: format!("http://{addr}"),
            private,
            served,
            task,
        }
    }

    /// Requires `token` (as the basic-auth password) for `owner/name`.
    pub fn make_private(&self, repo: &str, token: &str) {
        self.private
            .lock()
            .expect("lock")
            .insert(repo.to_owned(), token.to_owned());
    }
}

impl GitServer {
    /// The requests served for `owner/name` so far: the ref listings (`GET .../info/refs`) and
    /// the fetch negotiations (`POST .../git-upload-pack`).
    pub fn requests_for(&self, repo: &str) -> Requests {
        let prefix = format!("/{repo}.git/");
        let served = self.served.lock().expect("lock");
        let of_repo = || served.iter().filter(|line| line.contains(&prefix));
        Requests {
            listings: of_repo().filter(|l| l.starts_with("GET ")).count(),
            negotiations: of_repo().filter(|l| l.starts_with("POST ")).count(),
        }
    }
}

/// What a repository was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requests {
    pub listings: usize,
    pub negotiations: usize,
}

/// `git daemon` serving `root` on `ip:port` (all of it exported), killed when dropped; returns
/// once it accepts connections.
pub async fn git_daemon(root: &std::path::Path, ip: &str, port: u16) -> tokio::process::Child {
    let root = root.to_str().expect("utf8 root");
    // git-daemon itself: `git daemon` would run it as a child that outlives a kill.
    let exec_path = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    let exec_path = String::from_utf8_lossy(&exec_path.stdout).trim().to_owned();
    let daemon = tokio::process::Command::new(format!("{exec_path}/git-daemon"))
        .args(["--reuseaddr", "--export-all"])
        .arg(format!("--listen={ip}"))
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={root}"))
        .arg(root)
        .kill_on_drop(true)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git-daemon runs");
    let listening = std::time::Instant::now();
    while tokio::net::TcpStream::connect((ip, port)).await.is_err() {
        assert!(
            listening.elapsed() < std::time::Duration::from_secs(20),
            "git daemon did not listen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    daemon
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(state): State<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let line = match uri.query() {
        Some(query) => format!("{method} {path}?{query}"),
        None => format!("{method} {path}"),
    };
    state.served.lock().expect("lock").push(line);
    let repo: String = path
        .trim_start_matches('/')
        .splitn(3, '/')
        .take(2)
        .collect::<Vec<_>>()
        .join("/");
    let repo = repo.trim_end_matches(".git").to_owned();
    let required = state.private.lock().expect("lock").get(&repo).cloned();
    if let Some(token) = required
        && basic_password(&headers).as_deref() != Some(token.as_str())
    {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"git\"")
            .body(Body::from("authentication required"))
            .expect("response");
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &state.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await.expect("http-backend output");
    let _ = writer.await;
    cgi_response(&output.stdout)
}

fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// Turns CGI output (headers, blank line, body) into an HTTP response.
fn cgi_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::from("bad CGI output"))
            .expect("response");
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok());
            builder = builder.status(code.unwrap_or(500));
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    builder
        .body(Body::from(raw[end + sep..].to_vec()))
        .expect("response")
}
