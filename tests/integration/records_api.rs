//! Build records and the HTTP API, against the real binary in `run` mode (worker + API), the
//! broker, the registry, podman and the git server; once with SQLite and once with PostgreSQL.

use std::time::Duration;

use image_builder::events::Event;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::api::{postgres_database, sign_github as sign};
use crate::support::{Api, GitServer, RepoFixture, Stack, assert_secret_absent, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const MARKER: &str = "hello-from-the-build-step";

fn states(build: &Value) -> Vec<String> {
    build["states"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|c| c["state"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_flow_with_sqlite() {
    http_flow(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_flow_with_postgres() {
    let url = postgres_database().await;
    http_flow(Some(url)).await;
}

/// Submit over HTTP -> build -> record with states, image, digest; logs; list, paging, filters;
/// versions and image lookup; auth and error answers; rebuild; delete.
async fn http_flow(store_url: Option<String>) {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/app");
    let dockerfile = format!("FROM localhost/busybox:latest\nRUN echo {MARKER}\n");
    let commit = repo.commit(&[("Dockerfile", dockerfile.as_str())], "one");
    repo.push();
    let token = format!("tok-{}", unique(""));
    git.make_private("acme/app", &token);
    let mut stack = Stack::new().await;
    let mut env = vec![];
    if let Some(url) = &store_url {
        env.push(("IMAGE_BUILDER__STORE__URL", url.as_str()));
    }
    let api = Api::spawn(&stack, &git, &env).await;
    let user = unique("u");

    // Auth and errors first: nothing here may start a build.
    let anonymous = api
        .client
        .get(format!("{}/v1/builds", api.base))
        .send()
        .await
        .expect("answer");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = api
        .client
        .get(format!("{}/v1/builds", api.base))
        .bearer_auth("not-the-key")
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = api.get_json("/v1/builds/no-such-build").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, body) = api
        .post_json(
            "/v1/builds",
            &json!({"repo": "acme/app", "user_id": user, "ref": "--upload-pack=x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "ref");
    let not_json = api
        .request(Method::POST, "/v1/builds")
        .body("{not json")
        .send()
        .await
        .expect("answer");
    assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
    let body: Value = not_json.json().await.expect("JSON error");
    assert_eq!(body["error"]["field"], "body");
    let (status, body) = api.get_json("/v1/builds?state=sleeping").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "state");

    // Submit, twice with one id: one build.
    let request = json!({"id": "first", "repo": "acme/app", "user_id": user, "token": token});
    let (status, body) = api.post_json("/v1/builds", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["id"], "first");
    assert_eq!(body["links"]["logs"], "/v1/builds/first/logs");
    let (status, again) = api.post_json("/v1/builds", &request).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["duplicate"], true);

    let Event::ImageUpdated(updated) = stack.outcome("first", BUILD_TIMEOUT).await else {
        panic!("expected image.updated:\n{}", api.worker.log());
    };
    let build = api
        .wait_state("first", "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(
        states(&build),
        ["queued", "running", "succeeded"],
        "{build}\n{}",
        api.worker.log()
    );
    assert_eq!(build["commit"], commit.as_str());
    assert_eq!(build["digest"], updated.digest.as_str());
    assert_eq!(build["image"], updated.image.as_str());
    assert_eq!(build["attempts"], 1);
    assert!(build["host"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(build["finished_at"].is_string() && build["started_at"].is_string());
    assert_eq!(build["request"]["has_token"], true);
    assert!(
        !build.to_string().contains(&token),
        "the record shows the token"
    );

    let logs = api.text("/v1/builds/first/logs").await;
    assert!(
        logs.contains(MARKER),
        "the build output is in the log:\n{logs}"
    );
    assert!(!logs.contains(&token), "the log leaks the token");
    let followed = api.text("/v1/builds/first/logs?follow=true").await;
    assert_eq!(
        followed, logs,
        "following a finished build gives the whole log and ends"
    );

    // A second build on a branch, and one that fails: lists, filters and paging.
    repo.checkout_new_branch("feature");
    let feature_commit = repo.commit(&[("extra.txt", "x")], "feature");
    repo.push();
    let (status, _) = api
        .post_json(
            "/v1/builds",
            &json!({"id": "second", "repo": "acme/app", "ref": "feature", "user_id": user, "token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = api
        .post_json(
            "/v1/builds",
            &json!({"id": "broken", "repo": "acme/app", "ref": "no-such-branch", "user_id": user, "token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(matches!(
        stack.outcome("second", BUILD_TIMEOUT).await,
        Event::ImageUpdated(_)
    ));
    assert!(matches!(
        stack.outcome("broken", BUILD_TIMEOUT).await,
        Event::Failed(_)
    ));
    api.wait_state("second", "succeeded", Duration::from_secs(10))
        .await;
    let broken = api
        .wait_state("broken", "failed", Duration::from_secs(10))
        .await;
    assert_eq!(broken["fault"], "user");
    assert!(
        broken["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-branch"))
    );

    let (_, all) = api.get_json("/v1/builds?repo=acme/app").await;
    let ids: Vec<&str> = all["builds"]
        .as_array()
        .expect("builds")
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids, ["broken", "second", "first"], "newest first");
    let (_, ok) = api.get_json("/v1/builds?state=succeeded&ref=feature").await;
    assert_eq!(ok["builds"].as_array().map(Vec::len), Some(1), "{ok}");
    assert_eq!(ok["builds"][0]["id"], "second");
    let mut paged = Vec::new();
    let mut path = "/v1/builds?limit=1".to_owned();
    loop {
        let (status, page) = api.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for b in page["builds"].as_array().expect("builds") {
            paged.push(b["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/builds?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        paged,
        ["broken", "second", "first"],
        "paging walks every build once"
    );
    let (status, body) = api.get_json("/v1/builds?cursor=garbage!").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "cursor");

    // What was built, and how to pull it.
    let (status, image) = api.get_json("/v1/images?repo=acme/app&ref=feature").await;
    assert_eq!(status, StatusCode::OK, "{image}");
    assert_eq!(image["commit"], feature_commit.as_str());
    let digest = image["digest"].as_str().expect("digest");
    assert!(
        image["pull"]
            .as_str()
            .is_some_and(|p| p.starts_with("podman pull ") && p.ends_with(digest)),
        "{image}"
    );
    let (status, _) = api
        .get_json("/v1/images?repo=acme/app&platform=linux/arm64")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no arm64 image was built");
    let (status, body) = api.get_json("/v1/images").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "repo");
    let (_, repos) = api.get_json("/v1/repos").await;
    assert_eq!(repos["repos"][0]["name"], "acme/app", "{repos}");
    let (status, versions) = api.get_json("/v1/repos/acme/app/versions").await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    let commits: Vec<&str> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["commit"].as_str())
        .collect();
    assert_eq!(commits, [feature_commit.as_str(), commit.as_str()]);
    let (status, _) = api.get_json("/v1/repos/acme/unknown/versions").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Rebuild: a new build of the same request, really built (not answered from the cache).
    let (status, body) = api.post_json("/v1/builds/first/rebuild", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rebuilt_id = body["id"].as_str().expect("new id").to_owned();
    assert_ne!(rebuilt_id, "first");
    assert_eq!(body["rebuild_of"], "first");
    // No token supplied: the private repository refuses the rebuild, a user fault.
    let Event::Failed(failed) = stack.outcome(&rebuilt_id, BUILD_TIMEOUT).await else {
        panic!("a rebuild without the token must fail");
    };
    assert_eq!(failed.fault, image_builder::error::Fault::User);
    let (status, body) = api
        .post_json("/v1/builds/first/rebuild", &json!({"token": token}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let rebuilt_id = body["id"].as_str().expect("new id").to_owned();
    let Event::ImageUpdated(rebuilt) = stack.outcome(&rebuilt_id, BUILD_TIMEOUT).await else {
        panic!("expected the rebuild to push:\n{}", api.worker.log());
    };
    assert!(!rebuilt.cached, "a rebuild builds");
    assert_eq!(rebuilt.commit, commit);
    let record = api
        .wait_state(&rebuilt_id, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(record["rebuild_of"], "first");
    let (status, body) = api
        .post_json("/v1/builds/first/rebuild", &json!({"tokn": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "tokn");

    // Versions as the older package server listed them: by ref, the newest of each ref, the last N.
    let version_ids = |versions: &Value| -> Vec<String> {
        versions["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter_map(|v| v["build_id"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, every) = api.get_json("/v1/repos/acme/app/versions").await;
    assert_eq!(
        version_ids(&every),
        [rebuilt_id.as_str(), "second", "first"]
    );
    let (_, feature) = api
        .get_json("/v1/repos/acme/app/versions?ref=feature")
        .await;
    assert_eq!(version_ids(&feature), ["second"], "{feature}");
    let (_, newest) = api
        .get_json("/v1/repos/acme/app/versions?newest_per_ref=true")
        .await;
    assert_eq!(
        version_ids(&newest),
        [rebuilt_id.as_str(), "second"],
        "one line per ref: {newest}"
    );
    let (_, last) = api.get_json("/v1/repos/acme/app/versions?limit=1").await;
    assert_eq!(version_ids(&last), [rebuilt_id.as_str()]);
    for (query, field) in [
        ("limit=0", "limit"),
        ("newest_per_ref=maybe", "newest_per_ref"),
        ("tag=v1", "tag"),
    ] {
        let (status, body) = api
            .get_json(&format!("/v1/repos/acme/app/versions?{query}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }

    // Metrics and probes.
    let metrics = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "image_builder_builds_total{outcome=\"succeeded\",cached=\"false\",fault=\"\"} 3"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"failed\",cached=\"false\",fault=\"user\"} 2"));
    assert!(metrics.contains(&format!(
        "image_builder_queue_depth{{queue=\"{}.builds\"}}",
        stack.prefix
    )));
    assert!(metrics.contains("image_builder_build_duration_seconds_count 5"));

    // Delete: gone, and so is its log.
    let deleted = api
        .request(Method::DELETE, "/v1/builds/second")
        .send()
        .await
        .expect("answer");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let (status, _) = api.get_json("/v1/builds/second").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get_json("/v1/builds/second/logs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    if store_url.is_none() {
        // The SQLite file is in the data dir: the scan covers the stored records and logs.
        assert_secret_absent(&token, &api.worker, &stack);
    }
    api.worker.shutdown().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_queued_and_running_builds() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/slowapp");
    let commit = repo.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nRUN echo started-sleeping && sleep 866\n",
        )],
        "slow",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[("IMAGE_BUILDER__AMQP__PREFETCH", "1")]).await;
    let user = unique("u");
    let image = unique("img");
    let submit =
        |id: &str| json!({"id": id, "repo": "acme/slowapp", "user_id": user, "image": image});

    let (status, _) = api.post_json("/v1/builds", &submit("running")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    api.wait_state("running", "running", BUILD_TIMEOUT).await;
    // Wait for the RUN step itself, so the cancel has a process tree to kill.
    let deadline = std::time::Instant::now() + BUILD_TIMEOUT;
    while !api
        .text("/v1/builds/running/logs")
        .await
        .contains("started-sleeping")
    {
        assert!(std::time::Instant::now() < deadline, "{}", api.worker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut follow = api
        .request(Method::GET, "/v1/builds/running/logs?follow=true")
        .send()
        .await
        .expect("follow");

    // One slot, taken: this one waits in the queue.
    let (status, _) = api.post_json("/v1/builds", &submit("waiting")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = api.post_json("/v1/builds/waiting/cancel", &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "cancelled");
    let Event::Cancelled(queued) = stack.outcome("waiting", Duration::from_secs(10)).await else {
        panic!("expected build.cancelled for the queued build");
    };
    assert!(!queued.was_running);

    let (status, body) = api.post_json("/v1/builds/running/cancel", &json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let Event::Cancelled(running) = stack.outcome("running", Duration::from_secs(20)).await else {
        panic!("expected build.cancelled:\n{}", api.worker.log());
    };
    assert!(running.was_running);
    // The follower sees the end of the log once the build is cancelled.
    let mut streamed = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), follow.chunk())
        .await
        .expect("the follow stream ends after the build")
        .expect("chunk")
    {
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(streamed.contains("started-sleeping"), "{streamed}");

    let survivors = std::process::Command::new("pgrep")
        .args(["-f", "sleep 866"])
        .output()
        .expect("pgrep runs");
    assert!(
        survivors.stdout.is_empty(),
        "the cancelled build's processes survive: {}",
        String::from_utf8_lossy(&survivors.stdout)
    );
    let build = api
        .wait_state("running", "cancelled", Duration::from_secs(10))
        .await;
    assert_eq!(states(&build), ["queued", "running", "cancelled"]);
    let short = &commit[..12];
    let pushed = reqwest::get(format!(
        "http://{}/v2/{user}/{image}/manifests/{short}",
        crate::support::REGISTRY
    ))
    .await
    .expect("registry answers");
    assert_eq!(pushed.status(), StatusCode::NOT_FOUND, "nothing was pushed");

    // The queued one reaches the worker now and is dropped, never built.
    let events = stack.settle("waiting", Duration::from_secs(3)).await;
    assert!(
        events.iter().all(|e| !matches!(e, Event::Started(_))),
        "the cancelled queued build started: {events:?}"
    );
    assert_eq!(
        api.wait_state("waiting", "cancelled", Duration::from_secs(5))
            .await["attempts"],
        0
    );
    let (status, _) = api.post_json("/v1/builds/running/cancel", &json!({})).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a finished build cannot be cancelled"
    );
    api.worker.shutdown().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_github_push_builds_that_commit_and_bad_signatures_start_nothing() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/hooked");
    let first = repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "one");
    let second = repo.commit(&[("b.txt", "b")], "two");
    repo.push();
    let mut stack = Stack::new().await;
    let secret = unique("hook-");
    // The platform user the repository is mapped to; the GitHub login ("acme") means nothing.
    let tenant = unique("t");
    let mapping = format!("acme/hooked={tenant}");
    let api = Api::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__WEBHOOKS__GITHUB_SECRET", secret.as_str()),
            ("IMAGE_BUILDER__WEBHOOKS__GITHUB_REPOS", mapping.as_str()),
        ],
    )
    .await;
    // The push of `first` (not the branch head): the build must be of exactly that commit.
    let push = |after: &str| {
        json!({"ref": "refs/heads/main", "before": "0".repeat(40), "after": after, "deleted": false,
               "repository": {"full_name": "acme/hooked", "owner": {"login": "acme"}}})
        .to_string()
    };
    let hook = |body: String, signature: Option<String>, delivery: &str| {
        let mut request = api
            .client
            .post(format!("{}/v1/webhooks/github", api.base))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        request.send()
    };

    let body = push(&first);
    let good = sign(&secret, body.as_bytes());
    let refused = [
        (hook(body.clone(), None, "d-missing").await, "missing"),
        (
            hook(
                body.clone(),
                Some(sign("wrong-secret", body.as_bytes())),
                "d-wrong",
            )
            .await,
            "wrong secret",
        ),
        (
            hook(push(&second), Some(good.clone()), "d-replayed").await,
            "replayed on another body",
        ),
        (
            hook(body.clone(), Some("sha256=00".into()), "d-garbage").await,
            "garbage",
        ),
    ];
    for (response, what) in refused {
        let response = response.expect("answer");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    let (_, none) = api.get_json("/v1/builds").await;
    assert_eq!(
        none["builds"],
        json!([]),
        "refused webhooks started nothing"
    );

    let response = hook(body.clone(), Some(good.clone()), "d-1")
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["id"], "gh-d-1");
    let Event::ImageUpdated(updated) = stack.outcome("gh-d-1", BUILD_TIMEOUT).await else {
        panic!(
            "expected the pushed commit to be built:\n{}",
            api.worker.log()
        );
    };
    assert_eq!(
        updated.commit, first,
        "the pushed commit, not the branch head"
    );
    assert_eq!(updated.build.user_id.as_deref(), Some(tenant.as_str()));
    // GitHub redelivers the same delivery: the same build, nothing new.
    let again = hook(body, Some(good), "d-1").await.expect("answer");
    assert_eq!(again.status(), StatusCode::OK);
    let (_, all) = api.get_json("/v1/builds").await;
    assert_eq!(all["builds"].as_array().map(Vec::len), Some(1), "{all}");
    api.worker.shutdown().await;
    stack.cleanup().await;
}

/// With shared records, a request id that already produced an image is never built or announced
/// again, whichever replica gets the repeat (a producer retrying, or a redelivery after a crash).
#[tokio::test(flavor = "multi_thread")]
async fn a_completed_request_is_not_built_again_by_any_replica() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/once");
    repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "one");
    repo.push();
    let mut stack = Stack::new().await;
    let url = postgres_database().await;
    let env = [("IMAGE_BUILDER__STORE__URL", url.as_str())];
    let a = crate::support::Worker::spawn(&stack, &git, &env).await;
    let b = crate::support::Worker::spawn(&stack, &git, &env).await;
    let body = json!({"id": "only-once", "repo": "acme/once", "user_id": unique("u")});
    stack.publish_json(&body).await;
    assert!(matches!(
        stack.outcome("only-once", BUILD_TIMEOUT).await,
        Event::ImageUpdated(_)
    ));
    for _ in 0..4 {
        stack.publish_json(&body).await;
    }
    let events = stack.settle("only-once", Duration::from_secs(5)).await;
    let updated = events
        .iter()
        .filter(|e| matches!(e, Event::ImageUpdated(_)))
        .count();
    let started = events
        .iter()
        .filter(|e| matches!(e, Event::Started(_)))
        .count();
    assert_eq!((started, updated), (1, 1), "{events:?}");
    let skipped = format!("{}{}", a.log(), b.log())
        .matches("build already succeeded")
        .count();
    assert_eq!(skipped, 4, "every repeat was acked as done");
    a.shutdown().await;
    b.shutdown().await;
    stack.cleanup().await;
}
