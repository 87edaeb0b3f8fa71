//! The bases a repository's last build used start pulling as its next build starts, beside the
//! source fetch (the Dockerfile, which names them, is known only after checkout).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::image_tree::{podman, untag};
use crate::support::{
    GitServer, REGISTRY, RepoFixture, Stack, Worker, expect_failed, expect_image, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

fn exists(image: &str) -> bool {
    Command::new("podman")
        .args(["image", "exists", image])
        .status()
        .expect("podman runs")
        .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_builds_base_is_pulled_though_the_next_fetch_never_delivers() {
    // A base only the local registry holds, so the engine has to pull it.
    let base = format!("{REGISTRY}/{}/base:1", unique("ibpf-"));
    podman(&[
        "push",
        "--quiet",
        "--tls-verify=false",
        "localhost/busybox:latest",
        &format!("docker://{base}"),
    ]);
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/prefetch");
    repo.commit(
        &[("Dockerfile", &format!("FROM {base}\nRUN echo one > /one\n"))],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let request = |id: &str| json!({"id": id, "repo": "acme/prefetch", "user_id": user});

    stack.publish_json(&request("first")).await;
    expect_image(stack.outcome("first", BUILD_TIMEOUT).await);
    untag(&base);
    assert!(!exists(&base), "{base} is gone from the local store");

    // The next fetch is refused: no checkout, no Dockerfile, no build.
    git.make_private("acme/prefetch", "a-token-the-request-lacks");
    stack.publish_json(&request("second")).await;
    let failed = expect_failed(stack.outcome("second", BUILD_TIMEOUT).await);
    assert!(failed.reason.contains("credentials"), "{failed:?}");
    // Yet the base the last build used is back: its pull started with the build, not after
    // the checkout. (Waits for the pull, which goes on after the build failed.)
    let deadline = Instant::now() + BUILD_TIMEOUT;
    while !exists(&base) {
        assert!(
            Instant::now() < deadline,
            "{base} was never pulled: {}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        worker.log().contains(&format!(
            "pulling base image {base} while the source is fetched"
        )),
        "{}",
        worker.log()
    );
    untag(&base);
    worker.stop().await;
    stack.cleanup().await;
}
