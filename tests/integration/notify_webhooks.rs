//! Notifications over HTTP (`notify.webhooks`) against a real receiver on 127.0.0.1 that checks
//! every signature: events recorded while it fails or is gone wait in the build store's outbox,
//! survive a SIGKILL of the worker, and arrive once it is back (at least once, one key per event);
//! a notification nobody accepts is given up after `notify.give_up_after_secs`, with its metric.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use image_builder::store::BuildStore;
use nix::sys::signal::Signal;
use serde_json::json;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::support::api::postgres_database;
use crate::support::{GitServer, RepoFixture, Stack, Worker, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the tests wait for the outbox to drain once the receiver accepts.
const ARRIVAL: Duration = Duration::from_secs(60);

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    key: String,
    event: String,
    retries: u64,
    body: String,
    signature_ok: bool,
    answered: u16,
}

#[derive(Default)]
struct Book {
    /// Answer 2xx (else 500).
    accepting: bool,
    seen: Vec<Received>,
}

/// A webhook receiver that verifies `X-Image-Builder-Signature` with the secret of the path it
/// was posted to, records every request, and can fail, go away and come back on its port.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    secrets: Arc<HashMap<String, String>>,
    book: Arc<Mutex<Book>>,
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    fn new(secrets: &[(&str, &str)]) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        Self {
            addr,
            secrets: Arc::new(
                secrets
                    .iter()
                    .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
                    .collect(),
            ),
            book: Arc::default(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn accept(&self, accepting: bool) {
        self.book.lock().expect("book").accepting = accepting;
    }

    fn seen(&self) -> Vec<Received> {
        self.book.lock().expect("book").seen.clone()
    }

    async fn start(&self) -> Running {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("the receiver's port is free again");
        let app = axum::Router::new()
            .route("/{path}", axum::routing::post(receive))
            .with_state(self.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
                .expect("receiver serves");
        });
        Running { stop, task }
    }
}

impl Running {
    /// Closes the port: the next POSTs find the connection refused.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("receiver stopped");
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let timestamp = header("x-image-builder-timestamp");
    let signature_ok = receiver.secrets.get(&path).is_some_and(|secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(&body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        expected == header("x-image-builder-signature")
    });
    let mut book = receiver.book.lock().expect("book");
    let answered = if book.accepting && signature_ok {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    book.seen.push(Received {
        path,
        key: header("idempotency-key"),
        event: header("x-image-builder-event"),
        retries: header("x-image-builder-retries")
            .parse()
            .unwrap_or(u64::MAX),
        body: String::from_utf8_lossy(&body).into_owned(),
        signature_ok,
        answered: answered.as_u16(),
    });
    answered
}

/// A config file with `hooks` ((url, secret, events) each) and quick retries.
fn notify_config(dir: &std::path::Path, hooks: &[(String, &str, &[&str])], give_up: u64) -> String {
    let mut text = format!(
        "[notify]\ngive_up_after_secs = {give_up}\ntimeout_secs = 2\npoll_ms = 200\n\
         backoff_min_ms = 200\nbackoff_max_secs = 1\n"
    );
    for (url, secret, events) in hooks {
        text.push_str(&format!(
            "\n[[notify.webhooks]]\nurl = {url:?}\nsecret = {secret:?}\nevents = {events:?}\n"
        ));
    }
    let path = dir.join("notify.toml");
    std::fs::write(&path, text).expect("config written");
    path.display().to_string()
}

/// Waits until `done` holds, or fails with `what` and the worker's log.
async fn until(what: &str, worker: &Worker, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + ARRIVAL;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what} within {ARRIVAL:?}; worker log:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (event name, build id) of an event body.
fn identity(body: &str) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(body).expect("a JSON event body");
    (
        value["event"].as_str().unwrap_or_default().to_owned(),
        value["build_id"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The requests to `path` that were answered 2xx, by idempotency key; every copy of a key
/// carries the same body.
fn delivered(seen: &[Received], path: &str) -> BTreeMap<String, (String, String)> {
    let mut by_key: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut bodies: HashMap<&str, &str> = HashMap::new();
    for r in seen.iter().filter(|r| r.path == path) {
        let first = bodies.entry(&r.key).or_insert(&r.body);
        assert_eq!(*first, r.body, "one key, one body: {}", r.key);
        if r.answered < 300 {
            by_key.insert(r.key.clone(), identity(&r.body));
        }
    }
    by_key
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// The issue's durability case: builds finish while the receiver fails and then is gone, the
/// worker is SIGKILLed, the receiver comes back, a new worker sends everything.
#[tokio::test(flavor = "multi_thread")]
async fn webhooks_get_every_event_signed_across_failures_an_outage_and_a_sigkill() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/hooked");
    repo.commit(
        &[("Dockerfile", "FROM localhost/busybox:latest\nCOPY . /app\n")],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let store_url = postgres_database().await;
    let receiver = Receiver::new(&[("all", "all-s3cret"), ("updates", "upd-s3cret")]);
    let dir = tempfile::tempdir().expect("config dir");
    let config = notify_config(
        dir.path(),
        &[
            (receiver.url("all"), "all-s3cret", &[]),
            (receiver.url("updates"), "upd-s3cret", &["image.updated"]),
        ],
        3600,
    );
    let env = [
        ("IMAGE_BUILDER_CONFIG", config.as_str()),
        ("IMAGE_BUILDER__STORE__URL", store_url.as_str()),
    ];
    // Failing first: every attempt answered 500.
    receiver.accept(false);
    let running = receiver.start().await;
    let first = Worker::spawn(&stack, &git, &env).await;

    let user = unique("u");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = unique("hook-");
        stack
            .publish_json(
                &json!({"id": id, "repo": "acme/hooked", "user_id": user, "image": unique("img")}),
            )
            .await;
        ids.push(id);
    }
    let rejected = unique("hook-bad-");
    stack
        .publish_json(&json!({"id": rejected, "repo": "acme/hooked", "user_id": user, "ref": "--upload-pack=x"}))
        .await;
    ids.push(rejected);
    for id in &ids {
        stack.outcome(id, BUILD_TIMEOUT).await;
    }
    until("the receiver saw a failed attempt", &first, async || {
        receiver.seen().iter().any(|r| r.answered == 500)
    })
    .await;

    // Gone: connections refused while another build finishes.
    running.stop().await;
    let late = unique("hook-late-");
    stack
        .publish_json(
            &json!({"id": late, "repo": "acme/hooked", "user_id": user, "image": unique("img")}),
        )
        .await;
    ids.push(late.clone());
    stack.outcome(&late, BUILD_TIMEOUT).await;
    // Finished = recorded: the event goes out on the broker just before its record (and with it
    // its notifications) is written; a kill in between rebuilds the redelivery instead.
    let store = BuildStore::connect(&store_url).await.expect("store");
    until("the last build was recorded", &first, async || {
        store
            .state(&late)
            .await
            .expect("store")
            .is_some_and(|state| state.is_final())
    })
    .await;

    let mut first = first;
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(30)).await;
    let pending = store.pending_notifications().await.expect("outbox");
    assert!(pending > 0, "undelivered notifications survive the kill");

    receiver.accept(true);
    let running = receiver.start().await;
    let second = Worker::spawn(&stack, &git, &env).await;
    until("the outbox drained", &second, async || {
        store.pending_notifications().await.expect("outbox") == 0
    })
    .await;

    let seen = receiver.seen();
    assert!(
        seen.iter().all(|r| r.signature_ok),
        "every request was signed with its webhook's secret: {:?}",
        seen.iter().filter(|r| !r.signature_ok).collect::<Vec<_>>()
    );
    assert!(
        seen.iter().all(|r| r.event == identity(&r.body).0),
        "X-Image-Builder-Event names the body's event"
    );
    let published: Vec<(String, String)> = stack
        .seen
        .iter()
        .filter(|e| ids.contains(&e.build().request_id))
        .map(|e| (e.routing_key().to_owned(), e.build().build_id.clone()))
        .collect();
    assert_eq!(
        published.len(),
        3 * 2 + 1,
        "started and updated per build, one rejection"
    );
    // Every event published on the broker arrived, each under one key of its own.
    let all = delivered(&seen, "all");
    assert_eq!(
        sorted(all.values().cloned().collect()),
        sorted(published.clone()),
        "{seen:#?}"
    );
    let updates = delivered(&seen, "updates");
    let wanted: Vec<(String, String)> = published
        .into_iter()
        .filter(|(name, _)| name == "image.updated")
        .collect();
    assert_eq!(sorted(updates.values().cloned().collect()), sorted(wanted));
    // Retries counted up under the same key.
    assert!(
        seen.iter()
            .any(|r| r.retries > 0 && all.contains_key(&r.key)),
        "some event was retried: {seen:#?}"
    );
    running.stop().await;
    second.shutdown().await;
    stack.cleanup().await;
}

/// A receiver that never accepts: after `notify.give_up_after_secs` the notification is dropped,
/// counted on the metrics endpoint and logged once, without its body or the secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_notification_nobody_accepts_is_given_up_with_a_metric() {
    let git = GitServer::start().await;
    let mut stack = Stack::new().await;
    let receiver = Receiver::new(&[("refuse", "refuse-s3cret")]);
    receiver.accept(false);
    let running = receiver.start().await;
    let dir = tempfile::tempdir().expect("config dir");
    let config = notify_config(
        dir.path(),
        &[(receiver.url("refuse"), "refuse-s3cret", &["build.rejected"])],
        2,
    );
    let probes = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER_CONFIG", config.as_str()),
            ("IMAGE_BUILDER__API__PROBES_LISTEN", probes.as_str()),
        ],
    )
    .await;
    let id = unique("hook-refused-");
    let marker = "--upload-pack=given-up-marker";
    stack
        .publish_json(&json!({"id": id, "repo": "acme/x", "user_id": "u1", "ref": marker}))
        .await;
    stack.outcome(&id, Duration::from_secs(30)).await;

    let client = reqwest::Client::new();
    let given_up = "image_builder_notifications_given_up_total{event=\"build.rejected\"} 1";
    let metrics = async || {
        client
            .get(format!("http://{probes}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    };
    // While the receiver refuses, the row waits in the outbox and the gauge says so.
    let mut saw_pending = false;
    until("the give-up was counted", &worker, async || {
        let text = metrics().await.unwrap_or_default();
        saw_pending |= text.contains("image_builder_notifications_pending 1");
        text.contains(given_up)
    })
    .await;
    assert!(saw_pending, "the pending notification was never reported");
    until("the outbox is empty again", &worker, async || {
        metrics()
            .await
            .is_some_and(|m| m.contains("image_builder_notifications_pending 0"))
    })
    .await;
    let text = metrics().await.expect("metrics");
    assert!(
        text.contains(
            "image_builder_notification_attempts_total{event=\"build.rejected\",result=\"failed\"}"
        ),
        "{text}"
    );

    let seen = receiver.seen();
    assert!(seen.len() >= 2, "retried before giving up: {seen:#?}");
    assert!(seen.iter().all(|r| r.signature_ok && r.key == seen[0].key));
    let retries: Vec<u64> = seen.iter().map(|r| r.retries).collect();
    assert_eq!(retries, (0..seen.len() as u64).collect::<Vec<_>>());
    assert!(seen.iter().all(|r| identity(&r.body).0 == "build.rejected"));
    let log = worker.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gave up on a notification"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("build.rejected"),
        "{log}"
    );
    assert!(!log.contains("refuse-s3cret"), "the secret is never logged");
    assert!(
        !log.lines()
            .any(|l| l.contains("notification") && l.contains("given-up-marker")),
        "no notification log line carries the body:\n{log}"
    );
    running.stop().await;
    worker.shutdown().await;
    stack.cleanup().await;
}

/// Replicas sharing a store: two deliverers claiming at once never hold the same row, on
/// PostgreSQL (SKIP LOCKED) and on SQLite alike, and a released claim is due again at once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_claims_never_share_a_row() {
    let sqlite_dir = tempfile::tempdir().expect("dir");
    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        sqlite_dir.path().join("builds.db").display()
    );
    for url in [postgres_database().await, sqlite] {
        let hooks = image_builder::config::Webhooks::try_from(json!([
            {"url": "http://127.0.0.1:9/a", "secret": "s"},
            {"url": "http://127.0.0.1:9/b", "secret": "s", "events": ["build.rejected"]},
        ]))
        .expect("webhooks");
        let store = BuildStore::connect(&url)
            .await
            .expect("store")
            .with_webhooks(&hooks.0);
        let mut expected = Vec::new();
        for i in 0..40 {
            let event: image_builder::events::Event = serde_json::from_value(json!({
                "event": if i % 2 == 0 { "build.rejected" } else { "build.cancelled" },
                "build_id": format!("b{i}"), "request_id": format!("b{i}"),
                "user_id": null, "repo": null, "ref": null, "attempts": 1,
                "fault": "rejected", "reason": "r", "log_tail": [], "was_running": false,
            }))
            .expect("event");
            store.announce(&event).await.expect("recorded");
            // Every event to webhook a, rejections to b as well.
            expected.push((event.routing_key(), format!("b{i}")));
            if i % 2 == 0 {
                expected.push((event.routing_key(), format!("b{i}")));
            }
        }
        assert_eq!(store.pending_notifications().await.expect("count"), 60);
        let ttl = Duration::from_secs(30);
        let claim = |token: &'static str| {
            let store = store.clone();
            async move {
                let mut mine = Vec::new();
                loop {
                    let rows = store
                        .claim_notifications(token, ttl, 7)
                        .await
                        .expect("claim");
                    if rows.is_empty() {
                        return mine;
                    }
                    mine.extend(rows);
                }
            }
        };
        let (a, b) = tokio::join!(claim("a"), claim("b"));
        let mut ids: Vec<&str> = a.iter().chain(&b).map(|n| n.id.as_str()).collect();
        ids.sort_unstable();
        let total = ids.len();
        ids.dedup();
        assert_eq!((total, ids.len()), (60, 60), "{url}: each row claimed once");
        let mut got: Vec<(&str, String)> = a
            .iter()
            .chain(&b)
            .map(|n| match n.event.as_str() {
                "build.rejected" => ("build.rejected", n.build_id.clone()),
                _ => ("build.cancelled", n.build_id.clone()),
            })
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{url}");
        // One event id per event, shared by its webhooks.
        let rejected_keys: std::collections::HashSet<&str> = a
            .iter()
            .chain(&b)
            .filter(|n| n.event == "build.rejected")
            .map(|n| n.event_id.as_str())
            .collect();
        assert_eq!(rejected_keys.len(), 20);

        assert!(
            store
                .claim_notifications("c", ttl, 100)
                .await
                .expect("claim")
                .is_empty()
        );
        store.release_notifications("a").await.expect("released");
        let again = store
            .claim_notifications("c", ttl, 100)
            .await
            .expect("claim");
        assert_eq!(
            again.len(),
            a.len(),
            "{url}: what a stopping deliverer held is due at once"
        );
    }
}

/// A graceful stop while the receiver is away leaves the notification in the outbox, unclaimed.
#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_keeps_undelivered_notifications() {
    let git = GitServer::start().await;
    let mut stack = Stack::new().await;
    // Nobody listens there: every attempt finds the connection refused.
    let receiver = Receiver::new(&[]);
    let dir = tempfile::tempdir().expect("config dir");
    let config = notify_config(
        dir.path(),
        &[(receiver.url("gone"), "gone-s3cret", &[])],
        3600,
    );
    let store_path = dir.path().join("builds.db");
    let store_url = format!("sqlite://{}?mode=rwc", store_path.display());
    let env = [
        ("IMAGE_BUILDER_CONFIG", config.as_str()),
        ("IMAGE_BUILDER__STORE__URL", store_url.as_str()),
    ];
    let worker = Worker::spawn(&stack, &git, &env).await;
    let id = unique("hook-kept-");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/x", "user_id": "u1", "ref": "--x"}))
        .await;
    stack.outcome(&id, Duration::from_secs(30)).await;
    until("a delivery was tried", &worker, async || {
        worker
            .log()
            .contains("notification not delivered, will retry")
    })
    .await;
    worker.shutdown().await;
    let store = BuildStore::connect(&store_url).await.expect("store");
    assert_eq!(store.pending_notifications().await.expect("count"), 1);
    stack.cleanup().await;
}

/// `run` (worker and API): a queued build cancelled through the API is announced by the API
/// process, a running one by the worker; both reach the webhook, signed.
#[tokio::test(flavor = "multi_thread")]
async fn cancels_through_the_api_are_notified() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/slowhook");
    repo.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nRUN echo started-sleeping && sleep 866\n",
        )],
        "slow",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let receiver = Receiver::new(&[("cancels", "cancel-s3cret")]);
    receiver.accept(true);
    let running = receiver.start().await;
    let dir = tempfile::tempdir().expect("config dir");
    let config = notify_config(
        dir.path(),
        &[(
            receiver.url("cancels"),
            "cancel-s3cret",
            &["build.cancelled"],
        )],
        3600,
    );
    let api = crate::support::Api::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER_CONFIG", config.as_str()),
            ("IMAGE_BUILDER__AMQP__PREFETCH", "1"),
        ],
    )
    .await;
    let user = unique("u");
    let submit = |id: &str| json!({"id": id, "repo": "acme/slowhook", "user_id": user, "image": unique("img")});
    let (running_id, waiting_id) = (unique("hook-run-"), unique("hook-wait-"));
    let (status, _) = api.post_json("/v1/builds", &submit(&running_id)).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    api.wait_state(&running_id, "running", BUILD_TIMEOUT).await;
    // One slot, taken: this one waits in the queue and is cancelled there by the API.
    let (status, _) = api.post_json("/v1/builds", &submit(&waiting_id)).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    let (status, body) = api
        .post_json(&format!("/v1/builds/{waiting_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let (status, body) = api
        .post_json(&format!("/v1/builds/{running_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    for id in [&waiting_id, &running_id] {
        stack.outcome(id, BUILD_TIMEOUT).await;
    }
    until("both cancels were delivered", &api.worker, async || {
        delivered(&receiver.seen(), "cancels").len() == 2
    })
    .await;
    let seen = receiver.seen();
    assert!(
        seen.iter()
            .all(|r| r.signature_ok && r.event == "build.cancelled")
    );
    let mut by_build: Vec<(String, bool)> = delivered(&seen, "cancels")
        .into_keys()
        .filter_map(|key| seen.iter().find(|r| r.key == key))
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(&r.body).expect("json");
            (
                body["build_id"].as_str().unwrap_or_default().to_owned(),
                body["was_running"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    by_build.sort();
    let mut expected = vec![(waiting_id.clone(), false), (running_id.clone(), true)];
    expected.sort();
    assert_eq!(by_build, expected);
    running.stop().await;
    api.worker.stop().await;
    stack.cleanup().await;
}
