//! What starts a build besides a request naming a ref: GitLab's push, tag push and release hooks
//! (token-checked), and requests of `type` "tag" and "release", against the binary, the broker,
//! the registry, podman and the git server.

use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::Event;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Api, GitServer, RepoFixture, Stack, Worker, expect_failed, expect_image, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const DOCKERFILE: &str = "FROM localhost/busybox:latest\nCOPY which /which\n";

fn build_ids(page: &Value) -> Vec<String> {
    page["builds"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|b| b["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_hooks_need_the_token_and_build_pushes_tags_and_releases_for_the_mapped_user() {
    let git = GitServer::start().await;
    // A subgroup path, as GitLab projects have; the tag and a branch share the name v1.0.0.
    let repo = RepoFixture::create(git.root.path(), "acme/platform/app");
    let tagged = repo.commit(&[("Dockerfile", DOCKERFILE), ("which", "tag")], "tagged");
    repo.tag("v1.0.0");
    repo.checkout_new_branch("v1.0.0");
    let branch = repo.commit(&[("which", "same-named branch")], "branch");
    repo.checkout("main");
    let head = repo.commit(&[("which", "main")], "main");
    repo.push();
    let mut stack = Stack::new().await;
    let secret = unique("gl-token-");
    let tenant = unique("t");
    let mapping = format!("Acme/Platform/App={tenant}");
    let api = Api::spawn(
        &stack,
        &git,
        &[
            (
                "IMAGE_BUILDER__CONNECTORS__GITLAB__BASE_URL",
                git.base_url.as_str(),
            ),
            ("IMAGE_BUILDER__WEBHOOKS__GITLAB_SECRET", secret.as_str()),
            ("IMAGE_BUILDER__WEBHOOKS__GITLAB_REPOS", mapping.as_str()),
        ],
    )
    .await;
    let hook = |event: &str, body: &Value, token: Option<&str>, key: &str| {
        let mut request = api
            .client
            .post(format!("{}/v1/webhooks/gitlab", api.base))
            .header("X-Gitlab-Event", event)
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.header("X-Gitlab-Token", token);
        }
        request.send()
    };
    // The pusher's user name is the tenant's own id: it must still not decide who builds.
    let push = |full_ref: &str, after: &str| {
        json!({"object_kind": "push", "ref": full_ref, "before": "0".repeat(40), "after": after,
            "checkout_sha": after, "user_username": tenant,
            "project": {"path_with_namespace": "acme/platform/app"}})
    };

    let tag_push = push("refs/tags/v1.0.0", &tagged);
    let wrong = format!("{secret}x");
    for (token, case) in [(None, "missing"), (Some(wrong.as_str()), "wrong")] {
        let response = hook("Tag Push Hook", &tag_push, token, &format!("k-{case}"))
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case} token");
        let body: Value = response.json().await.expect("JSON error");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("X-Gitlab-Token")),
            "{case}: {body}"
        );
    }
    let (_, none) = api.get_json("/v1/builds").await;
    assert!(build_ids(&none).is_empty(), "a refused hook built: {none}");

    let response = hook("Tag Push Hook", &tag_push, Some(&secret), "tag-1")
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let updated = expect_image(stack.outcome("gl-tag-1", BUILD_TIMEOUT).await);
    assert_eq!(
        updated.commit, tagged,
        "the tag, not the branch of the same name ({branch})"
    );
    assert_eq!(updated.build.user_id.as_deref(), Some(tenant.as_str()));
    assert!(
        updated.tags.iter().any(|t| t == "v1.0.0"),
        "{:?}",
        updated.tags
    );

    let response = hook(
        "Push Hook",
        &push("refs/heads/main", &head),
        Some(&secret),
        "push-1",
    )
    .await
    .expect("answer");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        expect_image(stack.outcome("gl-push-1", BUILD_TIMEOUT).await).commit,
        head
    );

    let release = json!({"object_kind": "release", "action": "create", "tag": "v1.0.0",
        "project": {"path_with_namespace": "acme/platform/app"}});
    let response = hook("Release Hook", &release, Some(&secret), "release-1")
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        expect_image(stack.outcome("gl-release-1", BUILD_TIMEOUT).await).commit,
        tagged
    );

    // GitLab retries a delivery under the same Idempotency-Key: nothing new is built.
    let response = hook("Release Hook", &release, Some(&secret), "release-1")
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["duplicate"], true, "{answer}");

    // A deleted tag and a project nobody is mapped to build nothing.
    let deleted = push("refs/tags/v1.0.0", &"0".repeat(40));
    let mut stranger = push("refs/heads/main", &head);
    stranger["project"]["path_with_namespace"] = json!("acme/platform/other");
    for (event, body, key) in [
        ("Tag Push Hook", &deleted, "deleted-1"),
        ("Push Hook", &stranger, "stranger-1"),
    ] {
        let response = hook(event, body, Some(&secret), key).await.expect("answer");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{key}");
        let answer: Value = response.json().await.expect("JSON");
        assert!(answer["ignored"].is_string(), "{key}: {answer}");
    }
    let (_, all) = api.get_json("/v1/builds").await;
    let mut ids = build_ids(&all);
    ids.sort();
    assert_eq!(ids, ["gl-push-1", "gl-release-1", "gl-tag-1"], "{all}");
    api.worker.shutdown().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn release_requests_build_the_highest_version_tag_and_tag_requests_only_tags() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/releases");
    repo.commit(&[("Dockerfile", DOCKERFILE), ("which", "1.2.0")], "1.2.0");
    repo.tag("v1.2.0");
    let newest = repo.commit(&[("which", "1.10.0")], "1.10.0");
    repo.tag("v1.10.0");
    repo.commit(&[("which", "2.0.0-rc.1")], "rc");
    repo.tag("v2.0.0-rc.1");
    repo.commit(&[("which", "nightly")], "nightly");
    repo.tag("nightly");
    // A branch that looks like a newer version is not a release.
    repo.checkout_new_branch("v9.9.9");
    repo.commit(&[("which", "branch")], "branch");
    repo.checkout("main");
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");

    let id = format!("{user}-release");
    stack
        .publish_json(
            &json!({"id": id, "repo": "acme/releases", "type": "release", "user_id": user}),
        )
        .await;
    let updated = expect_image(stack.outcome(&id, BUILD_TIMEOUT).await);
    assert_eq!(updated.commit, newest, "v1.10.0 is the highest release");
    assert!(
        updated.tags.iter().any(|t| t == "v1.10.0"),
        "{:?}",
        updated.tags
    );
    assert_eq!(updated.build.git_ref.as_deref(), Some("v1.10.0"));

    let id = format!("{user}-branch-as-tag");
    stack
        .publish_json(
            &json!({"id": id, "repo": "acme/releases", "type": "tag", "ref": "v9.9.9",
            "user_id": user}),
        )
        .await;
    let failed = expect_failed(stack.outcome(&id, BUILD_TIMEOUT).await);
    assert_eq!(failed.fault, Fault::User, "{failed:?}");
    assert!(
        failed.reason.contains("no tag named v9.9.9"),
        "{}",
        failed.reason
    );

    let id = format!("{user}-tag-without-ref");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/releases", "type": "tag", "user_id": user}))
        .await;
    let Event::Rejected(rejected) = stack.outcome(&id, BUILD_TIMEOUT).await else {
        panic!("a tag request without ref is rejected");
    };
    assert_eq!(rejected.field.as_deref(), Some("ref"), "{rejected:?}");
    worker.stop().await;
    stack.cleanup().await;
}
