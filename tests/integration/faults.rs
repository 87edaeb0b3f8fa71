//! Faults, retries and dead letters: nothing lost, nothing looping, every replica safe.

use std::collections::HashMap;
use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::Event;
use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::{
    GitServer, RepoFixture, Stack, TestRegistry, Worker, registry_image_at, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const QUIET: Duration = Duration::from_secs(2);

/// A Dockerfile whose RUN step takes `secs` and misses the layer cache for every distinct `N`.
fn slow_dockerfile(secs: u32) -> String {
    format!("FROM localhost/busybox:latest\nARG N\nRUN sleep {secs} && echo \"build $N\"\n")
}

fn count(events: &[Event], name: &str) -> usize {
    events.iter().filter(|e| e.routing_key() == name).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn service_fault_is_retried_through_the_tiers_until_the_registry_returns() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/retry");
    repo.commit(
        &[("Dockerfile", crate::support::DOCKERFILE_WITH_RUN)],
        "one",
    );
    repo.push();
    let mut registry = TestRegistry::new();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__REGISTRY__HOST", &registry.addr),
            ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "4"),
        ],
    )
    .await;
    let id = unique("retry-");
    let user = unique("u");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/retry", "user_id": user}))
        .await;

    // Two failed attempts with the registry down, then it comes back before the last attempt.
    let second_retry =
        |e: &Event| matches!(e, Event::Retrying(r) if r.build.request_id == id && r.attempt == 2);
    stack
        .event_where(0, second_retry, BUILD_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no second retry; log:\n{}", worker.log()));
    registry.start().await;

    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    let Event::ImageUpdated(updated) = &event else {
        panic!("expected image.updated, got {event:?}\n{}", worker.log());
    };
    let (digest, _) = registry_image_at(&registry.addr, &format!("{user}/retry"), "latest").await;
    assert_eq!(digest, updated.digest);

    let events = stack.settle(&id, QUIET).await;
    assert_eq!(count(&events, "image.updated"), 1, "{events:?}");
    assert_eq!(count(&events, "build.failed"), 0, "{events:?}");
    assert!(count(&events, "build.retrying") >= 2, "{events:?}");
    let retries: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Retrying(r) => Some((r.attempt, r.next_attempt, r.delay_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(retries[0], (1, 2, 300), "tier 1 delay");
    assert_eq!(retries[1], (2, 3, 600), "tier 2 delay");
    // A retry is a new attempt of the same build.
    let build_ids: std::collections::HashSet<_> =
        events.iter().map(|e| e.build().build_id.clone()).collect();
    assert_eq!(build_ids.len(), 1, "{events:?}");

    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn service_fault_ends_in_the_dead_queue_after_max_attempts() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/dead");
    repo.commit(
        &[("Dockerfile", crate::support::DOCKERFILE_WITH_RUN)],
        "one",
    );
    repo.push();
    let registry = TestRegistry::new(); // never started
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__REGISTRY__HOST", &registry.addr),
            ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    let id = unique("dead-");
    let body = json!({"id": id, "repo": "acme/dead", "user_id": "u1"}).to_string();
    stack.publish(body.as_bytes()).await;

    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    let Event::Failed(failed) = &event else {
        panic!("expected build.failed, got {event:?}");
    };
    assert_eq!(failed.fault, Fault::Service);
    assert_eq!(failed.attempts, 3);
    assert!(failed.reason.contains("registry"), "{}", failed.reason);

    let events = stack.settle(&id, QUIET).await;
    assert_eq!(count(&events, "build.failed"), 1, "{events:?}");
    assert_eq!(count(&events, "build.retrying"), 2, "{events:?}");
    assert_eq!(count(&events, "build.started"), 3, "{events:?}");

    let dead = stack.drain_dead().await;
    assert_eq!(dead.len(), 1, "one parked message");
    let (dead_body, meta) = &dead[0];
    // The request without secrets, with what the connector manager needs to ask again.
    let parked: serde_json::Value = serde_json::from_slice(dead_body).expect("dead body JSON");
    assert_eq!(parked["id"], json!(id));
    assert_eq!(parked["repo"], json!("acme/dead"));
    assert_eq!(parked["attempts"], json!(3));
    assert_eq!(parked["has_token"], json!(false));
    assert_eq!(meta.attempt, 3);
    assert!(
        meta.last_error
            .as_deref()
            .is_some_and(|e| e.contains("registry"))
    );
    worker.shutdown().await;
    assert_eq!(stack.ready_count(&stack.topology.build_queue).await, 0);
    stack.cleanup().await;
}

/// (body, field the rejection must name)
fn hostile_messages() -> Vec<(Vec<u8>, &'static str)> {
    let ok = |extra: serde_json::Value| {
        let mut base = json!({"repo": "acme/app", "user_id": "u1"});
        for (k, v) in extra.as_object().expect("object").iter() {
            base[k] = v.clone();
        }
        base.to_string().into_bytes()
    };
    let raw = |s: &str| s.as_bytes().to_vec();
    vec![
        (raw("not json"), "body"),
        (raw(""), "body"),
        (raw("[]"), "body"),
        (raw("\"string\""), "body"),
        (raw("null"), "body"),
        (vec![0xff, 0xfe, b'{', b'}'], "body"),
        (vec![b' '; 70_000], "body"),
        (raw("{}"), "repo"),
        (raw(r#"{"repo":"a/b"}"#), "user_id"),
        (raw(r#"{"repo":5,"user_id":"u1"}"#), "repo"),
        (raw(r#"{"repo":"a/b","user_id":7}"#), "user_id"),
        (ok(json!({"ref": "--upload-pack=touch /tmp/pwned"})), "ref"),
        (ok(json!({"ref": "-x"})), "ref"),
        (ok(json!({"ref": "a..b"})), "ref"),
        (ok(json!({"ref": "main\u{0}"})), "ref"),
        (ok(json!({"ref": "main\n"})), "ref"),
        (ok(json!({"ref": "HEAD~1"})), "ref"),
        (ok(json!({"ref": "@{-1}"})), "ref"),
        (ok(json!({"ref": 12})), "ref"),
        (ok(json!({"context": "../../etc"})), "context"),
        (ok(json!({"context": "/etc"})), "context"),
        (ok(json!({"context": "a/../../b"})), "context"),
        (ok(json!({"context": "-rf"})), "context"),
        (ok(json!({"context": "a\u{1}b"})), "context"),
        (ok(json!({"dockerfile": "/etc/passwd"})), "dockerfile"),
        (ok(json!({"dockerfile": "../Dockerfile"})), "dockerfile"),
        (
            ok(json!({"connector": "git", "repo": "file:///etc/passwd"})),
            "repo",
        ),
        (
            ok(json!({"connector": "git", "repo": "ftp://example.com/a/b"})),
            "repo",
        ),
        (
            ok(json!({"connector": "git", "repo": "ext::sh -c touch% /tmp/pwned"})),
            "repo",
        ),
        (
            ok(json!({"repo": "https://user:pw@example.com/a/b"})),
            "repo",
        ),
        (ok(json!({"repo": "git@github.com:a/b"})), "repo"),
        (ok(json!({"repo": "a/b/c"})), "repo"),
        (ok(json!({"repo": "--upload-pack=x/y"})), "repo"),
        (ok(json!({"connector": "svn"})), "connector"),
        (ok(json!({"connector": 1})), "connector"),
        (ok(json!({"user_id": "Alice"})), "user_id"),
        (ok(json!({"user_id": "../x"})), "user_id"),
        (ok(json!({"userID": "someone-else"})), "user_id"),
        (ok(json!({"platforms": ["linux/x"]})), "platforms[0]"),
        (ok(json!({"platforms": "linux/amd64"})), "platforms"),
        (ok(json!({"image": "UPPER"})), "image"),
        (ok(json!({"tags": ["-bad"]})), "tags[0]"),
        (ok(json!({"build_args": {"1X": "v"}})), "build_args.1X"),
        (ok(json!({"build_args": {"X": 1}})), "build_args.X"),
        (ok(json!({"labels": {"k": "a\nb"}})), "labels.k"),
        (ok(json!({"builder": "make"})), "builder"),
        (ok(json!({"type": "branch"})), "type"),
        (ok(json!({"type": "tag"})), "ref"),
        (ok(json!({"type": "release", "ref": "a".repeat(40)})), "ref"),
        (ok(json!({"id": "has space"})), "id"),
        (ok(json!({"id": "x".repeat(129)})), "id"),
        (ok(json!({"colour": "red"})), "colour"),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_and_malformed_messages_are_rejected_and_the_worker_keeps_serving() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/app");
    let commit = repo.commit(
        &[("Dockerfile", crate::support::DOCKERFILE_WITH_RUN)],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let cases = hostile_messages();
    assert!(cases.len() >= 40);

    for (body, field) in &cases {
        let from = stack.seen.len();
        stack.publish(body).await;
        let event = stack
            .event_where(from, Event::is_terminal, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| {
                let log = worker.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "no answer to {} within 60 s; worker log (newest first):\n{}",
                    String::from_utf8_lossy(body),
                    tail.join("\n")
                )
            });
        let Event::Rejected(rejected) = &event else {
            panic!(
                "expected build.rejected for {}, got {event:?}",
                String::from_utf8_lossy(body)
            );
        };
        assert_eq!(
            rejected.field.as_deref(),
            Some(*field),
            "body {}: {}",
            String::from_utf8_lossy(body),
            rejected.reason
        );
        assert_eq!(rejected.fault, Fault::Rejected);
        assert!(!rejected.reason.is_empty());
    }
    assert_eq!(
        count(&stack.seen, "build.started"),
        0,
        "nothing invalid was built"
    );

    let id = unique("good-");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/app", "user_id": unique("u")}))
        .await;
    match stack.outcome(&id, BUILD_TIMEOUT).await {
        Event::ImageUpdated(updated) => assert_eq!(updated.commit, commit),
        other => panic!("the worker stopped serving: {other:?}\n{}", worker.log()),
    }
    assert_eq!(
        count(&stack.seen, "build.rejected"),
        cases.len(),
        "one answer each"
    );

    // Anything unacked would be back in the queue once the worker is gone: nothing is.
    worker.shutdown().await;
    assert_eq!(stack.ready_count(&stack.topology.build_queue).await, 0);
    assert_eq!(stack.ready_count(&stack.topology.dead_queue).await, 0);
    stack.cleanup().await;
}

/// A request for `slow_dockerfile`: its own image, and `N` = its id so no layer is shared.
fn slow_request(repo: &str, user: &str, id: &str) -> serde_json::Value {
    json!({"id": id, "repo": repo, "user_id": user, "image": unique("img"), "build_args": {"N": id}})
}

async fn publish_batch(stack: &Stack, repo: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = unique(&format!("batch{i}-"));
        stack.publish_json(&slow_request(repo, "batch", &id)).await;
        ids.push(id);
    }
    ids
}

/// Each id has exactly one terminal event and it is image.updated.
fn assert_each_succeeded_once(stack: &Stack, ids: &[String]) {
    let mut terminal: HashMap<&str, Vec<&Event>> = HashMap::new();
    for event in stack.seen.iter().filter(|e| e.is_terminal()) {
        terminal
            .entry(event.build().request_id.as_str())
            .or_default()
            .push(event);
    }
    for id in ids {
        let events = terminal.get(id.as_str()).cloned().unwrap_or_default();
        assert_eq!(events.len(), 1, "request {id}: {events:?}");
        assert!(
            matches!(events[0], Event::ImageUpdated(_)),
            "request {id}: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_build_each_request_exactly_once() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/shared");
    repo.commit(&[("Dockerfile", &slow_dockerfile(1))], "one");
    repo.push();
    let mut stack = Stack::new().await;
    let a = Worker::spawn(&stack, &git, &[]).await;
    let b = Worker::spawn(&stack, &git, &[]).await;
    let ids = publish_batch(&stack, "acme/shared", 20).await;
    for id in &ids {
        stack.outcome(id, BUILD_TIMEOUT).await;
    }
    stack.settle("", QUIET).await;
    assert_each_succeeded_once(&stack, &ids);
    let started = stack
        .seen
        .iter()
        .filter_map(|e| match e {
            Event::Started(s) => Some((s.build.request_id.clone(), s.host.clone())),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(started.len(), 20, "each request built once: {started:?}");
    let hosts: std::collections::HashSet<_> = started.iter().map(|(_, h)| h).collect();
    assert_eq!(hosts.len(), 2, "both replicas took work: {hosts:?}");
    a.stop().await;
    b.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_replica_work_is_redelivered_and_completed_by_the_other() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/kill");
    repo.commit(&[("Dockerfile", &slow_dockerfile(3))], "one");
    repo.push();
    let mut stack = Stack::new().await;
    let a = Worker::spawn(&stack, &git, &[]).await;
    let b = Worker::spawn(&stack, &git, &[]).await;
    let a_host = format!(":{}", a.pid());
    let ids = publish_batch(&stack, "acme/kill", 20).await;

    // Kill A while it is building (it has started builds with no outcome yet).
    let a_started = stack
        .event_where(
            0,
            |e| matches!(e, Event::Started(s) if s.host.ends_with(&a_host)),
            BUILD_TIMEOUT,
        )
        .await
        .expect("replica A starts a build");
    let in_flight = a_started.build().request_id.clone();
    a.signal(Signal::SIGKILL);

    for id in &ids {
        stack.outcome(id, BUILD_TIMEOUT).await;
    }
    stack.settle("", QUIET).await;
    assert_each_succeeded_once(&stack, &ids);
    let finisher = stack.seen.iter().rev().find_map(|e| match e {
        Event::Started(s) if s.build.request_id == in_flight => Some(s.host.clone()),
        _ => None,
    });
    assert!(
        finisher.is_some_and(|h| !h.ends_with(&a_host)),
        "the killed build was redelivered to the other replica"
    );
    b.shutdown().await;
    assert_eq!(stack.ready_count(&stack.topology.build_queue).await, 0);
    stack.cleanup().await;
}

/// A worker with `env` busy on one build of `secs` seconds: (git server, stack, worker, id).
async fn worker_mid_build(
    repo_name: &str,
    secs: u32,
    env: &[(&str, &str)],
) -> (GitServer, Stack, Worker, String) {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), repo_name);
    repo.commit(&[("Dockerfile", &slow_dockerfile(secs))], "one");
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, env).await;
    let id = unique("term-");
    stack
        .publish_json(&slow_request(repo_name, "u1", &id))
        .await;
    stack
        .event_where(
            0,
            |e| matches!(e, Event::Started(s) if s.build.request_id == id),
            BUILD_TIMEOUT,
        )
        .await
        .expect("build starts");
    (git, stack, worker, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_running_build_finish_and_exits_zero() {
    let (_git, mut stack, mut worker, id) = worker_mid_build("acme/term", 3, &[]).await;
    worker.signal(Signal::SIGTERM);
    let code = worker.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "{}", worker.log());
    // The outcome was published before the worker exited.
    match stack.outcome(&id, Duration::from_secs(5)).await {
        Event::ImageUpdated(_) => {}
        other => panic!("expected image.updated, got {other:?}"),
    }
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_past_the_grace_period_requeues_the_build() {
    let (git, mut stack, mut worker, id) = worker_mid_build(
        "acme/grace",
        6,
        &[("IMAGE_BUILDER__AMQP__SHUTDOWN_GRACE_SECS", "1")],
    )
    .await;
    worker.signal(Signal::SIGTERM);
    let code = worker.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", worker.log());
    assert!(worker.log().contains("requeueing"), "{}", worker.log());
    assert!(
        stack.seen.iter().all(|e| !e.is_terminal()),
        "no outcome for a stopped build: {:?}",
        stack.seen
    );

    let next = Worker::spawn(&stack, &git, &[]).await;
    match stack.outcome(&id, BUILD_TIMEOUT).await {
        Event::ImageUpdated(_) => {}
        other => panic!("expected image.updated, got {other:?}"),
    }
    let events = stack.settle(&id, QUIET).await;
    assert_eq!(count(&events, "image.updated"), 1, "{events:?}");
    next.stop().await;
    stack.cleanup().await;
}
