//! Outbound policy (`request.allowed_networks`): repository URLs that lead to loopback are
//! refused before any connection when loopback is not allowed, and a fetch's connections are
//! cut at its build's deadline even while libgit2 waits in a read no callback interrupts.
//! Only 127.0.0.0/8 is ever connected to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image_builder::build_log::BuildLog;
use image_builder::error::{BuildError, Fault};
use image_builder::events::Event;
use image_builder::ports::BuildCtx;
use image_builder::ports::{SourceFetcher, SourceSpec};
use image_builder::redact::Redactor;
use image_builder::source::{GitLimits, GitMirrors};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::git_limits::loopback;
use crate::support::{GitServer, RepoFixture, Stack, Worker, unique};

const OUTER: Duration = Duration::from_secs(240);

/// Allows only TEST-NET-1 (never connected to): loopback is refused.
const NO_LOOPBACK: (&str, &str) = ("IMAGE_BUILDER__REQUEST__ALLOWED_NETWORKS", "192.0.2.0/24");

/// Whether anything but the marker connection reached `listener`: connections queue in order,
/// so one made before the marker is accepted first.
async fn reached_before(listener: &TcpListener) -> bool {
    let addr = listener.local_addr().expect("addr");
    let mut marker = TcpStream::connect(addr).await.expect("marker");
    marker.write_all(b"mine").await.expect("marker write");
    let (mut first, _) = listener.accept().await.expect("accept");
    let mut got = [0; 4];
    let read = first.read_exact(&mut got).await;
    read.is_err() || &got != b"mine"
}

fn assert_refused_repo(event: &Event, host: &str, worker: &Worker) {
    let (Event::Rejected(failed) | Event::Failed(failed)) = event else {
        panic!("expected a refusal, got {event:?}\n{}", worker.log());
    };
    assert_eq!(failed.fault, Fault::Rejected, "{failed:?}");
    assert_eq!(failed.field.as_deref(), Some("repo"), "{failed:?}");
    assert!(failed.reason.contains(host), "{failed:?}");
    assert!(failed.reason.contains("a loopback address"), "{failed:?}");
    assert!(
        failed.reason.contains("request.allowed_networks"),
        "{failed:?}"
    );
}

/// A mirror cache in `dir` with small limits and loopback allowed, and the spec of `url`.
fn mirror_of(dir: &std::path::Path, url: &str) -> (GitMirrors, SourceSpec) {
    let limits = GitLimits {
        checkout_mb: 64,
        fetch_mb: 64,
        stall_secs: 3,
    };
    let mirrors = GitMirrors::new(dir.join("cache"), u64::MAX, limits, loopback());
    let spec = SourceSpec {
        remote: url::Url::parse(url).expect("url"),
        username: "test".into(),
        token: None,
        git_ref: None,
        ref_kind: Default::default(),
    };
    (mirrors, spec)
}

/// A build context whose deadline is `time` from now.
pub(crate) fn ctx_for(dir: &std::path::Path, time: Duration) -> BuildCtx {
    BuildCtx {
        log: BuildLog::new(Redactor::default()),
        cancel: CancellationToken::new(),
        deadline: Instant::now() + time,
        scratch_dir: dir.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_repo_urls_are_refused_before_any_connection() {
    let git = GitServer::start().await;
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[NO_LOOPBACK]).await;
    let target = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let port = target.local_addr().expect("addr").port();

    let by_ip = unique("egress-ip-");
    stack
        .publish_json(&json!({
            "id": by_ip,
            "repo": format!("http://127.0.0.2:{port}/acme/x.git"),
            "user_id": unique("u"),
        }))
        .await;
    assert_refused_repo(&stack.outcome(&by_ip, OUTER).await, "127.0.0.2", &worker);

    // A name is judged by what it resolves to.
    let by_name = unique("egress-name-");
    stack
        .publish_json(&json!({
            "id": by_name,
            "repo": format!("http://localhost:{port}/acme/x.git"),
            "user_id": unique("u"),
        }))
        .await;
    assert_refused_repo(&stack.outcome(&by_name, OUTER).await, "localhost", &worker);

    // https too (its own transport), before any connection.
    let https = unique("egress-https-");
    stack
        .publish_json(&json!({
            "id": https,
            "repo": format!("https://localhost:{port}/acme/x.git"),
            "user_id": unique("u"),
        }))
        .await;
    assert_refused_repo(&stack.outcome(&https, OUTER).await, "localhost", &worker);

    assert!(!reached_before(&target).await, "the worker connected");
    worker.stop().await;
    stack.cleanup().await;
}

/// Answers every connection with an http response head that never ends: one header byte a
/// second, faster than the stall bound, forever. Or relays to the git server.
struct Trickle {
    base_url: String,
    trickle: Arc<Mutex<bool>>,
}

impl Trickle {
    async fn start(git_addr: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let trickle = Arc::new(Mutex::new(true));
        let mode = trickle.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let trickling = *mode.lock().expect("mode");
                let git_addr = git_addr.clone();
                tokio::spawn(async move {
                    if !trickling {
                        if let Ok(mut server) = TcpStream::connect(&git_addr).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                        return;
                    }
                    let _ = client.write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ").await;
                    while client.write_all(b"a").await.is_ok() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        });
        Self { base_url, trickle }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_git_host_is_cut_at_the_deadline_and_lets_go_of_the_mirror() {
    // Process-wide and first call wins: the same bound as git_limits (3 s > 1 byte a second).
    image_builder::source::configure_git_timeouts(Duration::from_secs(3));
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/trickle");
    fixture.commit(&[("README", "hi\n")], "first");
    fixture.push();
    let trickle = Trickle::start(git.base_url.trim_start_matches("http://").to_owned()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mirrors, spec) = mirror_of(
        dir.path(),
        &format!("{}/acme/trickle.git", trickle.base_url),
    );
    let ctx = |time: Duration| ctx_for(dir.path(), time);

    let cut = tokio::time::timeout(OUTER, mirrors.resolve(&spec, &ctx(Duration::from_secs(4))))
        .await
        .expect("the fetch returned: the trickle was cut");
    assert!(matches!(cut, Err(BuildError::TimedOut(_))), "{cut:?}");

    // The fetch's thread let go of the mirror's lock: the same mirror fetches.
    *trickle.trickle.lock().expect("mode") = false;
    let resolved = tokio::time::timeout(OUTER, mirrors.resolve(&spec, &ctx(OUTER)))
        .await
        .expect("returned")
        .expect("fetch");
    assert_eq!(resolved.commit, fixture.head());
}

/// https remotes: the fetch speaks TLS to the git host (the pinned transport), straight to the
/// checked address. A listener on 127.0.0.1 reads what arrives: a TLS ClientHello (record
/// type 0x16, version 3.x). See egress_https for the rest of https.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_remote_gets_a_tls_client_hello_at_the_checked_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hello = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("a connection");
        let mut head = [0u8; 3];
        conn.read_exact(&mut head).await.expect("first bytes");
        head
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mirrors, spec) = mirror_of(
        dir.path(),
        &format!("https://127.0.0.1:{port}/acme/tls.git"),
    );
    let ctx = ctx_for(dir.path(), Duration::from_secs(20));
    // The listener never answers the handshake: the fetch fails, after the hello was sent.
    let fetched = tokio::time::timeout(OUTER, mirrors.resolve(&spec, &ctx)).await;
    let head = tokio::time::timeout(OUTER, hello)
        .await
        .expect("a connection arrived")
        .expect("listener task");
    assert_eq!(
        head[0], 0x16,
        "a TLS handshake record: {head:?} ({fetched:?})"
    );
    assert_eq!(head[1], 0x03, "TLS version 3.x: {head:?}");
}

/// An http git host that redirects: libgit2 would follow a redirect to another port of its own
/// host (for http that is the relay, on loopback) even with redirects off, past the relay and
/// the policy. The relay answers the redirect itself: the fetch is refused naming the redirect,
/// and the port it pointed at is never connected to.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirecting_http_host_is_refused_and_its_target_never_reached() {
    let aside = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let aside_port = aside.local_addr().expect("addr").port();
    let hostile = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hostile_url = format!("http://{}", hostile.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut client, _)) = hostile.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = client.read(&mut head).await;
                let moved = format!(
                    "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{aside_port}/acme/x.git/info/refs?service=git-upload-pack\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = client.write_all(moved.as_bytes()).await;
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mirrors, spec) = mirror_of(dir.path(), &format!("{hostile_url}/acme/x.git"));
    let refused = tokio::time::timeout(OUTER, mirrors.resolve(&spec, &ctx_for(dir.path(), OUTER)))
        .await
        .expect("returned");
    let err = match refused {
        Err(err) => err,
        Ok(resolved) => panic!("a redirect resolved to {}", resolved.commit),
    };
    assert_eq!(err.classify(), Fault::Rejected, "{err}");
    assert!(err.to_string().contains("redirect (HTTP 302)"), "{err}");
    assert!(
        !reached_before(&aside).await,
        "the redirect's target was connected to"
    );
}
