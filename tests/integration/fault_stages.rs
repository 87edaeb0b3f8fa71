//! Whose fault a failed build is comes from the stage that failed, never from what a build
//! printed: a RUN step cannot make its own failure look like ours and be retried.

use std::time::Duration;

use image_builder::error::Fault;
use serde_json::json;

use crate::support::{GitServer, RepoFixture, Stack, Worker, expect_failed, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn a_step_printing_podmans_pull_error_is_still_a_failing_step() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/gamer");
    // podman's own words for an unreachable base image, on stdout and stderr, then exit 125
    // (podman's own exit status for its errors).
    let lie = "Error: creating build container: initializing source docker://127.0.0.1:5999/x:1: \
               pinging container registry 127.0.0.1:5999: connect: connection refused";
    repo.commit(
        &[(
            "Dockerfile",
            &format!(
                "FROM localhost/busybox:latest\nRUN echo '{lie}'; echo '{lie}' >&2; exit 125\n"
            ),
        )],
        "gamer",
    );
    repo.push();
    let mut stack = Stack::new().await;
    // The stack's retry delays are short: a service fault would show as more attempts.
    let worker = Worker::spawn(&stack, &git, &[("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "3")]).await;
    stack
        .publish_json(&json!({"id": "gamer", "repo": "acme/gamer", "user_id": unique("u")}))
        .await;
    let failed = expect_failed(stack.outcome("gamer", BUILD_TIMEOUT).await);
    assert_eq!(failed.fault, Fault::User, "{failed:?}\n{}", worker.log());
    assert_eq!(failed.attempts, 1, "not retried: {failed:?}");
    assert!(
        failed.reason.contains("building at STEP"),
        "the reason is podman's, about the step: {}",
        failed.reason
    );
    assert!(
        !worker.log().contains("build.retrying") && !worker.log().contains("retrying in"),
        "no retry was scheduled:\n{}",
        worker.log()
    );
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_base_image_is_ours_and_retried() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/unreachable");
    // Nothing listens on that loopback port: the registry is "down".
    repo.commit(
        &[(
            "Dockerfile",
            "FROM 127.0.0.1:5999/nothing/here:1\nRUN true\n",
        )],
        "unreachable",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "2")]).await;
    stack
        .publish_json(&json!({"id": "down", "repo": "acme/unreachable", "user_id": unique("u")}))
        .await;
    let failed = expect_failed(stack.outcome("down", BUILD_TIMEOUT).await);
    assert_eq!(failed.fault, Fault::Service, "{failed:?}\n{}", worker.log());
    assert_eq!(failed.attempts, 2, "retried up to max_attempts: {failed:?}");
    assert!(
        failed
            .reason
            .contains("failed to pull base image 127.0.0.1:5999/nothing/here:1"),
        "{}",
        failed.reason
    );
    worker.stop().await;
    stack.cleanup().await;
}
