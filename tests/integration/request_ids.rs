//! A request id belongs to its first request (issue 11, item 1), against the real binary in `run`
//! mode (worker + API), the broker, the registry, podman and the git server. Each worker takes one
//! delivery at a time (prefetch 1), so once a later message's outcome is out, every earlier
//! message has been handled: "nothing happened" is checked after a sentinel, not after a sleep.

use std::time::Duration;

use image_builder::amqp::{MessageMeta, Publisher};
use image_builder::events::Event;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Api, GitServer, REGISTRY, RepoFixture, Stack, expect_failed, expect_image, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const ONE_AT_A_TIME: [(&str, &str); 1] = [("IMAGE_BUILDER__AMQP__PREFETCH", "1")];

fn count(events: &[Event], name: &str) -> usize {
    events.iter().filter(|e| e.routing_key() == name).count()
}

/// A request rejected for being invalid: it ends quickly and marks a point in the queue.
async fn sentinel(stack: &mut Stack) {
    let id = unique("sentinel-");
    stack
        .publish_json(&json!({"id": id, "user_id": "nobody"}))
        .await;
    let rejected = stack.outcome(&id, BUILD_TIMEOUT).await;
    assert_eq!(rejected.routing_key(), "build.rejected", "{rejected:?}");
}

async fn record(api: &Api, id: &str) -> Value {
    let (status, build) = api.get_json(&format!("/v1/builds/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{build}");
    build
}

/// Whether the registry holds any tag of `name`.
async fn in_registry(name: &str) -> bool {
    let tags = reqwest::get(format!("http://{REGISTRY}/v2/{name}/tags/list"))
        .await
        .expect("registry answers");
    tags.status() == StatusCode::OK
}

#[tokio::test(flavor = "multi_thread")]
async fn another_tenant_cannot_take_over_a_failed_request_id() {
    let git = GitServer::start().await;
    let failing = RepoFixture::create(git.root.path(), "alice/app");
    failing.commit(
        &[("Dockerfile", "FROM localhost/busybox:latest\nRUN exit 3\n")],
        "fails",
    );
    failing.push();
    let other = RepoFixture::create(git.root.path(), "bob/other");
    other.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nRUN echo bob\n",
        )],
        "builds",
    );
    other.push();
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &ONE_AT_A_TIME).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let id = unique("req-");

    stack
        .publish_json(&json!({"id": id, "repo": "alice/app", "user_id": alice}))
        .await;
    let failed = expect_failed(stack.outcome(&id, BUILD_TIMEOUT).await);
    assert_eq!(failed.build.user_id.as_deref(), Some(alice.as_str()));
    let before = api.wait_state(&id, "failed", BUILD_TIMEOUT).await;

    stack
        .publish_json(&json!({"id": id, "repo": "bob/other", "user_id": bob}))
        .await;
    let rejected = stack
        .terminal_where(
            |e| e.build().request_id == id && e.routing_key() == "build.rejected",
            BUILD_TIMEOUT,
        )
        .await
        .unwrap_or_else(|| panic!("bob's request was not rejected\n{}", api.worker.log()));
    let Event::Rejected(rejected) = rejected else {
        unreachable!("filtered on build.rejected")
    };
    assert_eq!(rejected.field.as_deref(), Some("id"), "{rejected:?}");
    assert!(
        rejected.reason.contains("belongs to a different request"),
        "{}",
        rejected.reason
    );
    sentinel(&mut stack).await;

    let events: Vec<Event> = stack
        .seen
        .iter()
        .filter(|e| e.build().build_id == id)
        .cloned()
        .collect();
    assert_eq!(count(&events, "image.updated"), 0, "{events:?}");
    assert_eq!(
        count(&events, "build.started"),
        1,
        "only alice's: {events:?}"
    );
    assert!(!in_registry(&format!("{bob}/other")).await, "bob was built");
    assert_eq!(record(&api, &id).await, before, "alice's record changed");

    api.worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identical_repeat_gets_the_recorded_outcome_and_a_different_one_409() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "alice/app");
    repo.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nRUN echo once\n",
        )],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &ONE_AT_A_TIME).await;
    let alice = unique("alice");
    let id = unique("req-");
    let request = json!({"id": id, "repo": "alice/app", "user_id": alice, "tags": ["v1"]});

    let (status, answer) = api.post_json("/v1/builds", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let updated = expect_image(stack.outcome(&id, BUILD_TIMEOUT).await);
    let built = api.wait_state(&id, "succeeded", BUILD_TIMEOUT).await;

    // The identical request again, over the queue (a fresh message, not a redelivery) ...
    stack.publish_json(&request).await;
    sentinel(&mut stack).await;
    let events: Vec<Event> = stack
        .seen
        .iter()
        .filter(|e| e.build().build_id == id)
        .cloned()
        .collect();
    assert_eq!(count(&events, "image.updated"), 1, "{events:?}");
    assert_eq!(count(&events, "build.started"), 1, "{events:?}");
    assert_eq!(stack.ready_count(&stack.topology.build_queue).await, 0);

    // ... and over the API: 200 with the recorded image, nothing queued.
    let (status, answer) = api.post_json("/v1/builds", &request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(answer["state"], "succeeded", "{answer}");
    assert_eq!(answer["digest"], json!(updated.digest), "{answer}");

    // A different request under the same id: 409 naming `id`, never queued.
    for (field, value) in [
        ("user_id", json!(unique("bob"))),
        ("ref", json!("other")),
        ("tags", json!(["v2"])),
    ] {
        let mut different = request.clone();
        different[field] = value;
        let (status, answer) = api.post_json("/v1/builds", &different).await;
        assert_eq!(status, StatusCode::CONFLICT, "{field}: {answer}");
        assert_eq!(answer["error"]["field"], "id", "{answer}");
        assert_eq!(answer["error"]["code"], "conflict", "{answer}");
    }
    assert_eq!(stack.ready_count(&stack.topology.build_queue).await, 0);
    assert_eq!(record(&api, &id).await, built, "the record changed");

    api.worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_x_build_id_header_is_rejected_naming_it() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "alice/app");
    repo.commit(
        &[("Dockerfile", "FROM localhost/busybox:latest\nRUN echo hi\n")],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &ONE_AT_A_TIME).await;
    let id = unique("req-");
    let body = json!({"id": id, "repo": "alice/app", "user_id": unique("alice")});

    let connection = image_builder::amqp::connect(&stack.settings.amqp.url, "test-producer")
        .await
        .expect("broker connection");
    let producer = Publisher::open(&connection, stack.topology.clone())
        .await
        .expect("publisher");
    let meta = MessageMeta {
        attempt: 1,
        build_id: Some("x\"\nLABEL injected=\"yes".into()),
        ..MessageMeta::default()
    };
    producer
        .request(body.to_string().as_bytes(), meta.to_headers())
        .await
        .expect("publish");

    let rejected = stack.outcome(&id, BUILD_TIMEOUT).await;
    let Event::Rejected(rejected) = rejected else {
        panic!(
            "expected build.rejected, got {rejected:?}\n{}",
            api.worker.log()
        );
    };
    assert_eq!(
        rejected.field.as_deref(),
        Some("x-build-id"),
        "{rejected:?}"
    );
    assert!(!rejected.build.build_id.contains('\n'), "{rejected:?}");
    sentinel(&mut stack).await;
    let started = stack
        .seen
        .iter()
        .filter(|e| e.build().request_id == id && e.routing_key() == "build.started")
        .count();
    assert_eq!(started, 0, "a request with a hostile header was built");

    let _ = connection.close(200, "done".into()).await;
    api.worker.stop().await;
    stack.cleanup().await;
}
