//! The delivery handler in process: fakes for the source, engine and registry, a recording
//! outbox and acker in place of RabbitMQ, and the SQLite store in a temp dir.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::handler::{Incoming, Shared, handle_caught};
use super::outbox::{DeliveryAcker, Outbox};
use crate::amqp::MessageMeta;
use crate::config::Settings;
use crate::error::{BuildError, Fault, RegistryError};
use crate::events::Event;
use crate::metrics::Metrics;
use crate::store::{BuildState, BuildStore};
use crate::testing::{self, FakeEngine, FakeRegistry, FakeSource};

/// What left the handler, in order.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a test recording: its size does not matter
enum Sent {
    Event(Event),
    Queue {
        queue: String,
        body: Vec<u8>,
        meta: MessageMeta,
    },
    Ack,
    Requeue,
}

#[derive(Default)]
struct Journal {
    sent: Mutex<Vec<Sent>>,
    /// Routing keys whose publish fails.
    refused: Mutex<HashSet<&'static str>>,
    /// Routing keys whose publish panics (a bug outside the build).
    panicking: Mutex<HashSet<&'static str>>,
}

impl Journal {
    fn push(&self, sent: Sent) {
        self.sent.lock().expect("journal").push(sent);
    }

    fn take(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.sent.lock().expect("journal"))
    }
}

struct RecordingOutbox(Arc<Journal>);

#[async_trait]
impl Outbox for RecordingOutbox {
    async fn event(&self, event: &Event) -> anyhow::Result<()> {
        if self
            .0
            .panicking
            .lock()
            .expect("panicking")
            .contains(event.routing_key())
        {
            panic!("the outbox was told to panic on {}", event.routing_key());
        }
        if self
            .0
            .refused
            .lock()
            .expect("refused")
            .contains(event.routing_key())
        {
            anyhow::bail!(
                "stopped before the broker confirmed {}",
                event.routing_key()
            );
        }
        self.0.push(Sent::Event(event.clone()));
        Ok(())
    }

    async fn to_queue(&self, queue: &str, body: &[u8], meta: &MessageMeta) -> anyhow::Result<()> {
        self.0.push(Sent::Queue {
            queue: queue.to_owned(),
            body: body.to_vec(),
            meta: meta.clone(),
        });
        Ok(())
    }
}

struct RecordingAcker(Arc<Journal>);

#[async_trait]
impl DeliveryAcker for RecordingAcker {
    async fn ack(&self) -> anyhow::Result<()> {
        self.0.push(Sent::Ack);
        Ok(())
    }

    async fn requeue(&self) -> anyhow::Result<()> {
        self.0.push(Sent::Requeue);
        Ok(())
    }
}

struct Harness {
    shared: Arc<Shared>,
    journal: Arc<Journal>,
    engine: Arc<FakeEngine>,
    registry: Arc<FakeRegistry>,
    store: BuildStore,
    prefix: String,
    _dir: tempfile::TempDir,
}

/// Three attempts, retry tiers of 300 and 600 ms.
fn settings() -> Settings {
    let mut settings = Settings::for_env("local").expect("built-in local config loads");
    settings.amqp.prefix = "ibt".into();
    settings.retry.max_attempts = 3;
    settings.retry.delays_ms = vec![300, 600];
    settings.retry.retry_user_faults = false;
    settings.store.lease_secs = 1;
    settings.store.poll_ms = 50;
    settings
}

impl Harness {
    async fn new() -> Self {
        Self::notifying(&[]).await
    }

    /// With a store that writes notifications for `webhooks`.
    async fn notifying(webhooks: &[crate::config::Webhook]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = BuildStore::connect(&format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("builds.db").display()
        ))
        .await
        .expect("store")
        .with_webhooks(webhooks);
        let work = dir.path().join("work");
        let registry = Arc::new(FakeRegistry::default());
        let engine = Arc::new(FakeEngine::new(registry.clone()));
        let env = testing::environment(
            &work,
            Arc::new(FakeSource::new("0123456789abcdef0123456789abcdef01234567")),
            engine.clone(),
            registry.clone(),
            Arc::new(store.clone()),
            2,
        );
        let journal = Arc::new(Journal::default());
        let settings = settings();
        let shared = Arc::new(Shared::new(
            &settings,
            Arc::new(env),
            store.clone(),
            Metrics::new(),
            Arc::new(RecordingOutbox(journal.clone())),
            CancellationToken::new(),
        ));
        Self {
            shared,
            journal,
            engine,
            registry,
            store,
            prefix: settings.amqp.prefix,
            _dir: dir,
        }
    }

    /// Handles one delivery to the end and returns what it sent.
    async fn deliver(&self, body: &[u8], meta: MessageMeta, redelivered: bool) -> Vec<Sent> {
        let incoming = Incoming {
            body: body.to_vec(),
            meta,
            redelivered,
        };
        let acker = RecordingAcker(self.journal.clone());
        tokio::time::timeout(
            Duration::from_secs(10),
            handle_caught(&self.shared, incoming, &acker),
        )
        .await
        .expect("the delivery is settled");
        self.journal.take()
    }

    async fn first(&self, body: &Value) -> Vec<Sent> {
        self.deliver(&body.to_string().into_bytes(), attempt(1), false)
            .await
    }

    /// Another replica on the same store, engine and registry, with its own journal.
    fn replica(&self) -> (Arc<Shared>, Arc<Journal>) {
        let journal = Arc::new(Journal::default());
        let shared = Arc::new(Shared::new(
            &settings(),
            self.shared.env.clone(),
            self.store.clone(),
            Metrics::new(),
            Arc::new(RecordingOutbox(journal.clone())),
            CancellationToken::new(),
        ));
        (shared, journal)
    }

    async fn state(&self, id: &str) -> Option<BuildState> {
        self.store.state(id).await.expect("store read")
    }
}

fn attempt(n: u32) -> MessageMeta {
    MessageMeta {
        attempt: n,
        ..MessageMeta::default()
    }
}

fn request(id: &str) -> Value {
    json!({"id": id, "repo": "acme/app", "user_id": "u1", "token": "gho_s3cret"})
}

/// Routing keys and queue names, in order, with `ack`/`requeue` for the settlement.
fn shape(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .map(|s| match s {
            Sent::Event(e) => e.routing_key().to_owned(),
            Sent::Queue { queue, .. } => format!("queue {queue}"),
            Sent::Ack => "ack".into(),
            Sent::Requeue => "requeue".into(),
        })
        .collect()
}

fn event<'a>(sent: &'a [Sent], key: &str) -> &'a Event {
    sent.iter()
        .find_map(|s| match s {
            Sent::Event(e) if e.routing_key() == key => Some(e),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {key} in {:?}", shape(sent)))
}

#[tokio::test]
async fn a_pushed_build_publishes_started_and_updated_before_the_ack() {
    let h = Harness::new().await;
    let sent = h.first(&request("r1")).await;
    assert_eq!(shape(&sent), ["build.started", "image.updated", "ack"]);
    let Event::ImageUpdated(updated) = event(&sent, "image.updated") else {
        unreachable!()
    };
    assert!(!updated.cached);
    assert_eq!(updated.build.build_id, "r1");
    assert_eq!(h.state("r1").await, Some(BuildState::Succeeded));
}

#[tokio::test]
async fn an_identical_request_is_a_cache_hit_trusted_through_the_store() {
    let h = Harness::new().await;
    h.first(&request("r1")).await;
    let sent = h.first(&request("r2")).await;
    assert_eq!(shape(&sent), ["build.started", "image.updated", "ack"]);
    let Event::ImageUpdated(updated) = event(&sent, "image.updated") else {
        unreachable!()
    };
    assert!(updated.cached, "{updated:?}");
    assert_eq!(h.engine.build_count(), 1, "built once");
}

#[tokio::test]
async fn service_faults_climb_the_retry_tiers_then_go_to_the_dead_queue() {
    let h = Harness::new().await;
    let body = request("r1").to_string().into_bytes();
    let mut meta = attempt(1);
    for (n, tier, delay_ms) in [(1, 1, 300), (2, 2, 600)] {
        h.engine
            .fail_next_build(BuildError::Engine(crate::error::EngineError::Said(
                "podman crashed".into(),
            )));
        let sent = h.deliver(&body, meta.clone(), false).await;
        let retry_queue = format!("queue {}.retry.{tier}", h.prefix);
        assert_eq!(
            shape(&sent),
            [
                "build.started",
                retry_queue.as_str(),
                "build.retrying",
                "ack"
            ],
            "attempt {n}"
        );
        let Some(Sent::Queue {
            body: parked,
            meta: next,
            ..
        }) = sent.get(1)
        else {
            unreachable!()
        };
        assert_eq!(parked, &body, "a retry carries the request as sent");
        assert_eq!(next.attempt, n + 1);
        assert_eq!(next.build_id.as_deref(), Some("r1"));
        assert!(
            next.last_error
                .as_deref()
                .is_some_and(|e| e.contains("podman crashed"))
        );
        let Event::Retrying(retrying) = event(&sent, "build.retrying") else {
            unreachable!()
        };
        assert_eq!(
            retrying.delay_ms, delay_ms,
            "the policy's delay for tier {tier}"
        );
        assert_eq!(retrying.next_attempt, n + 1);
        assert_eq!(h.state("r1").await, Some(BuildState::Queued));
        meta = next.clone();
    }

    h.engine
        .fail_next_build(BuildError::Engine(crate::error::EngineError::Said(
            "podman crashed".into(),
        )));
    let sent = h.deliver(&body, meta, false).await;
    let dead_queue = format!("queue {}.dead", h.prefix);
    assert_eq!(
        shape(&sent),
        ["build.started", dead_queue.as_str(), "build.failed", "ack"]
    );
    let Some(Sent::Queue { body: dead, .. }) = sent.get(1) else {
        unreachable!()
    };
    assert!(
        !String::from_utf8_lossy(dead).contains("gho_s3cret"),
        "the dead queue keeps no token"
    );
    let Event::Failed(failed) = event(&sent, "build.failed") else {
        unreachable!()
    };
    assert_eq!((failed.fault, failed.attempts), (Fault::Service, 3));
    assert_eq!(h.state("r1").await, Some(BuildState::Failed));
}

#[tokio::test]
async fn a_user_fault_fails_at_once() {
    let h = Harness::new().await;
    h.engine
        .fail_next_build(BuildError::StepFailed("RUN false exited 1".into()));
    let sent = h.first(&request("r1")).await;
    assert_eq!(shape(&sent), ["build.started", "build.failed", "ack"]);
    let Event::Failed(failed) = event(&sent, "build.failed") else {
        unreachable!()
    };
    assert_eq!((failed.fault, failed.attempts), (Fault::User, 1));
    assert!(failed.reason.contains("RUN false"), "{}", failed.reason);
}

#[tokio::test]
async fn a_registry_lookup_failure_is_a_service_fault() {
    let h = Harness::new().await;
    h.registry.fail_next_lookup(RegistryError::Status {
        status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
        doing: "for u1/app:latest".into(),
    });
    let sent = h.first(&request("r1")).await;
    let retry_queue = format!("queue {}.retry.1", h.prefix);
    assert_eq!(
        shape(&sent),
        [
            "build.started",
            retry_queue.as_str(),
            "build.retrying",
            "ack"
        ]
    );
    let Event::Retrying(retrying) = event(&sent, "build.retrying") else {
        unreachable!()
    };
    assert_eq!(
        retrying.reason,
        "registry request failed: registry answered 503 Service Unavailable for u1/app:latest",
        "the whole cause chain, not a push failure"
    );
}

#[tokio::test]
async fn an_invalid_request_is_rejected_naming_the_field_without_a_build() {
    let h = Harness::new().await;
    let sent = h
        .first(&json!({"id": "r1", "repo": "acme/app", "user_id": "u1", "ref": "-oops"}))
        .await;
    assert_eq!(shape(&sent), ["build.rejected", "ack"]);
    let Event::Rejected(rejected) = event(&sent, "build.rejected") else {
        unreachable!()
    };
    assert_eq!(rejected.field.as_deref(), Some("ref"));
    assert_eq!(rejected.fault, Fault::Rejected);
    assert_eq!(h.engine.build_count(), 0);
    assert_eq!(h.state("r1").await, Some(BuildState::Failed));
}

#[tokio::test]
async fn a_cancel_command_stops_the_build_with_build_cancelled() {
    let h = Harness::new().await;
    h.engine.hold_builds_until_cancelled();
    let shared = h.shared.clone();
    let canceller = async {
        h.engine.started.notified().await;
        assert!(shared.running.cancel("r1"), "the build is running here");
    };
    let body = request("r1");
    let (sent, ()) = tokio::join!(h.first(&body), canceller);
    assert_eq!(shape(&sent), ["build.started", "build.cancelled", "ack"]);
    assert_eq!(h.state("r1").await, Some(BuildState::Cancelled));
}

#[tokio::test]
async fn a_build_stopped_by_shutdown_is_requeued_without_an_outcome() {
    let h = Harness::new().await;
    h.engine.hold_builds_until_cancelled();
    let canceller = async {
        h.engine.started.notified().await;
        h.shared.hard_stop.cancel();
    };
    let body = request("r1");
    let (sent, ()) = tokio::join!(h.first(&body), canceller);
    assert_eq!(shape(&sent), ["build.started", "requeue"]);
}

#[tokio::test]
async fn an_outcome_the_broker_never_confirmed_is_requeued_not_acked() {
    let h = Harness::new().await;
    h.journal
        .refused
        .lock()
        .expect("refused")
        .insert("image.updated");
    let sent = h.first(&request("r1")).await;
    assert_eq!(shape(&sent), ["build.started", "requeue"]);
}

#[tokio::test]
async fn a_redelivery_of_a_settled_message_is_only_acked() {
    let h = Harness::new().await;
    let body = request("r1").to_string().into_bytes();
    h.deliver(&body, attempt(1), false).await;
    let again = h.deliver(&body, attempt(1), true).await;
    assert_eq!(shape(&again), ["ack"]);
    assert_eq!(h.engine.build_count(), 1);
}

#[tokio::test]
async fn a_panicking_build_is_retried_then_dead_and_the_replica_keeps_building() {
    let h = Harness::new().await;
    let body = request("poison").to_string().into_bytes();
    let mut meta = attempt(1);
    let mut last = Vec::new();
    // More panics than build slots (2): a slot kept by a panicked build would hang the rest.
    for n in 1..=3 {
        h.engine.panic_next_build();
        let sent = h.deliver(&body, meta.clone(), false).await;
        let settled = shape(&sent);
        assert_eq!(
            settled.last().map(String::as_str),
            Some("ack"),
            "{settled:?}"
        );
        match sent.get(1) {
            Some(Sent::Queue {
                queue, meta: next, ..
            }) if n < 3 => {
                assert!(queue.contains(".retry."), "attempt {n}: {settled:?}");
                assert!(
                    next.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("the build panicked")),
                    "{next:?}"
                );
                meta = next.clone();
            }
            Some(Sent::Queue { queue, .. }) => {
                assert_eq!(queue, &format!("{}.dead", h.prefix), "{settled:?}");
            }
            _ => panic!("attempt {n}: {settled:?}"),
        }
        last = sent;
    }
    let Event::Failed(failed) = event(&last, "build.failed") else {
        unreachable!()
    };
    assert_eq!((failed.fault, failed.attempts), (Fault::Service, 3));
    assert!(failed.reason.contains("the fake engine was told to panic"));
    assert_eq!(h.shared.metrics.panics.get(), 3);

    // The next request builds, and the running-build registry forgot the poisoned one.
    let sent = h.first(&request("next")).await;
    assert_eq!(shape(&sent), ["build.started", "image.updated", "ack"]);
    assert!(!h.shared.running.cancel("poison"));
}

#[tokio::test]
async fn a_panic_outside_the_build_requeues_the_delivery() {
    let h = Harness::new().await;
    h.journal
        .panicking
        .lock()
        .expect("panicking")
        .insert("image.updated");
    let sent = h.first(&request("r1")).await;
    assert_eq!(shape(&sent), ["build.started", "requeue"]);
    assert_eq!(h.shared.metrics.panics.get(), 1);

    h.journal.panicking.lock().expect("panicking").clear();
    let sent = h.first(&request("r2")).await;
    assert_eq!(
        shape(&sent).last().map(String::as_str),
        Some("ack"),
        "the replica carries on"
    );
}

#[tokio::test]
async fn a_stored_cancel_stops_the_running_build_without_the_broadcast() {
    let h = Harness::new().await;
    h.engine.hold_builds_until_cancelled();
    let canceller = async {
        h.engine.started.notified().await;
        assert_eq!(
            h.store.request_cancel("r1", None).await.expect("store"),
            crate::store::CancelRequest::Marked
        );
    };
    let body = request("r1");
    let (sent, ()) = tokio::join!(h.first(&body), canceller);
    assert_eq!(shape(&sent), ["build.started", "build.cancelled", "ack"]);
    assert_eq!(h.state("r1").await, Some(BuildState::Cancelled));
}

#[tokio::test]
async fn a_redelivery_to_another_replica_waits_for_the_running_build_and_only_acks() {
    let h = Harness::new().await;
    h.engine.hold_builds_until_cancelled();
    let (other, other_journal) = h.replica();
    let body = request("r1").to_string().into_bytes();
    let second = async {
        h.engine.started.notified().await;
        let acker = RecordingAcker(other_journal.clone());
        let incoming = Incoming {
            body: body.clone(),
            meta: attempt(1),
            redelivered: true,
        };
        let waiting = handle_caught(&other, incoming, &acker);
        tokio::pin!(waiting);
        // It waits on the lease, renewed well past its 1 s term, while the first one builds.
        tokio::select! {
            () = &mut waiting => panic!("the redelivery did not wait for the running build"),
            () = tokio::time::sleep(Duration::from_millis(1500)) => {}
        }
        assert!(
            h.shared.running.cancel("r1"),
            "still running on the first replica"
        );
        waiting.await;
        other_journal.take()
    };
    let (first, second) = tokio::join!(h.deliver(&body, attempt(1), false), second);
    assert_eq!(shape(&first), ["build.started", "build.cancelled", "ack"]);
    assert_eq!(shape(&second), ["ack"], "no second build, no second event");
    assert_eq!(h.engine.build_count(), 1);
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_by_the_redelivery() {
    let h = Harness::new().await;
    let (other, other_journal) = h.replica();
    let new = crate::store::NewBuild {
        id: "r1".into(),
        request_id: "r1".into(),
        user_id: Some("u1".into()),
        repo: Some("acme/app".into()),
        git_ref: None,
        request: Value::Null,
        rebuild_of: None,
        fingerprint: None,
    };
    // A replica that died mid-build: running, its lease lapsed (term 1 ms).
    let dead = crate::store::Lease::new("dead:1", Duration::from_millis(1));
    let body = request("r1").to_string().into_bytes();
    let parsed =
        crate::request::BuildRequest::parse(&body, &other.requests, None).expect("valid request");
    let new = crate::store::NewBuild {
        request: parsed.public_view(),
        fingerprint: Some(parsed.fingerprint()),
        ..new
    };
    assert_eq!(
        h.store
            .start(&new, 1, false, &dead, None)
            .await
            .expect("store"),
        crate::store::Start::Run
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let acker = RecordingAcker(other_journal.clone());
    let incoming = Incoming {
        body,
        meta: attempt(1),
        redelivered: true,
    };
    handle_caught(&other, incoming, &acker).await;
    assert_eq!(
        shape(&other_journal.take()),
        ["build.started", "image.updated", "ack"]
    );
    assert_eq!(h.state("r1").await, Some(BuildState::Succeeded));
}

#[tokio::test]
async fn a_request_the_broker_dead_lettered_ends_failed_with_an_event_and_no_secret() {
    let h = Harness::new().await;
    let body = request("r1").to_string().into_bytes();
    let acker = RecordingAcker(h.journal.clone());
    let incoming = Incoming {
        body: body.clone(),
        meta: attempt(1),
        redelivered: false,
    };
    super::dead_lettered::settle_dead_lettered(&h.shared, incoming, &acker).await;
    let sent = h.journal.take();
    let dead = format!("queue {}.dead", h.prefix);
    assert_eq!(shape(&sent), [dead.as_str(), "build.failed", "ack"]);
    let Event::Failed(failed) = event(&sent, "build.failed") else {
        panic!("not a failure")
    };
    assert_eq!(failed.fault, Fault::Service);
    assert!(
        failed.reason.contains("amqp.delivery_limit"),
        "{}",
        failed.reason
    );
    let parked = sent.iter().find_map(|s| match s {
        Sent::Queue { body, .. } => Some(String::from_utf8_lossy(body).into_owned()),
        _ => None,
    });
    assert!(!parked.unwrap_or_default().contains("gho_s3cret"));
    assert_eq!(h.state("r1").await, Some(BuildState::Failed));

    // A build that succeeded keeps its outcome.
    assert_eq!(
        shape(&h.first(&request("r2")).await),
        ["build.started", "image.updated", "ack"]
    );
    let incoming = Incoming {
        body: request("r2").to_string().into_bytes(),
        meta: attempt(1),
        redelivered: false,
    };
    super::dead_lettered::settle_dead_lettered(&h.shared, incoming, &acker).await;
    assert_eq!(shape(&h.journal.take()), ["ack"]);
    assert_eq!(h.state("r2").await, Some(BuildState::Succeeded));
}

#[tokio::test]
async fn a_restarted_sqlite_replica_voids_its_previous_process_leases() {
    let h = Harness::new().await;
    let body = request("r1").to_string().into_bytes();
    let parsed = crate::request::BuildRequest::parse(&body, &h.shared.requests, None)
        .expect("valid request");
    let new = crate::store::NewBuild {
        id: "r1".into(),
        request_id: "r1".into(),
        user_id: Some("u1".into()),
        repo: Some("acme/app".into()),
        git_ref: None,
        request: parsed.public_view(),
        rebuild_of: None,
        fingerprint: Some(parsed.fingerprint()),
    };
    // The previous process was killed holding a long lease.
    let killed = crate::store::Lease::new("me:1", Duration::from_secs(3600));
    assert_eq!(
        h.store
            .start(&new, 1, false, &killed, None)
            .await
            .expect("store"),
        crate::store::Start::Run
    );
    assert_eq!(h.store.void_own_leases().await.expect("store"), 1);
    let sent = h.deliver(&body, attempt(1), true).await;
    assert_eq!(shape(&sent), ["build.started", "image.updated", "ack"]);
}

/// Every event the worker publishes has its notification row, with the very body published:
/// started, retrying, failed, rejected, cancelled and updated alike (one webhook wanting all,
/// one wanting only image.updated).
#[tokio::test]
async fn every_published_event_is_written_to_the_notification_outbox() {
    let hooks = crate::config::Webhooks::try_from(json!([
        {"url": "http://127.0.0.1:9/all", "secret": "s"},
        {"url": "http://127.0.0.1:9/updates", "secret": "s", "events": ["image.updated"]},
    ]))
    .expect("webhooks");
    let h = Harness::notifying(&hooks.0).await;
    let mut published = Vec::new();
    let mut keep = |sent: Vec<Sent>| {
        published.extend(sent.into_iter().filter_map(|s| match s {
            Sent::Event(e) => Some(e),
            _ => None,
        }))
    };
    // A cancel on a harness of its own: its engine holds every build.
    let hc = Harness::notifying(&hooks.0).await;
    hc.engine.hold_builds_until_cancelled();
    let shared = hc.shared.clone();
    let canceller = async {
        hc.engine.started.notified().await;
        assert!(shared.running.cancel("r5"));
    };
    let body = request("r5");
    let (sent, ()) = tokio::join!(hc.first(&body), canceller);
    keep(sent);
    h.engine
        .fail_next_build(BuildError::Engine(crate::error::EngineError::Said(
            "podman crashed".into(),
        )));
    keep(h.first(&request("r1")).await);
    h.engine
        .fail_next_build(BuildError::StepFailed("RUN false exited 1".into()));
    keep(h.first(&request("r2")).await);
    keep(
        h.first(&json!({"id": "r3", "repo": "acme/app", "user_id": "u1", "ref": "-oops"}))
            .await,
    );
    keep(h.first(&request("r4")).await);

    let mut names: Vec<&str> = published.iter().map(Event::routing_key).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 6, "every kind of event: {names:?}");
    let mut rows = Vec::new();
    for store in [&h.store, &hc.store] {
        rows.extend(
            store
                .claim_notifications("t", Duration::from_secs(30), 1000)
                .await
                .expect("claim"),
        );
    }
    let bodies = |hook: &crate::config::Webhook| {
        let mut bodies: Vec<String> = rows
            .iter()
            .filter(|n| n.target == hook.id())
            .map(|n| n.body.clone())
            .collect();
        bodies.sort();
        bodies
    };
    let expected = |filter: &dyn Fn(&Event) -> bool| {
        let mut bodies: Vec<String> = published
            .iter()
            .filter(|e| filter(e))
            .map(|e| String::from_utf8(e.to_json()).expect("utf-8"))
            .collect();
        bodies.sort();
        bodies
    };
    assert_eq!(bodies(&hooks.0[0]), expected(&|_| true));
    assert_eq!(
        bodies(&hooks.0[1]),
        expected(&|e| e.routing_key() == "image.updated")
    );
}
