//! The `ib-` tags are image-builder's own: a request cannot ask for one, and an image planted
//! under one by whoever can push into the namespace is never answered as built (cached) nor
//! used as the base of an incremental rebuild.

use std::time::Duration;

use image_builder::events::Event;
use serde_json::json;

use crate::support::{
    GitServer, REGISTRY, RepoFixture, Stack, Worker, expect_image, registry_image, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// The repository's tags, from the registry.
async fn tags(name: &str) -> Vec<String> {
    let body: serde_json::Value = reqwest::get(format!("http://{REGISTRY}/v2/{name}/tags/list"))
        .await
        .expect("registry answers")
        .json()
        .await
        .expect("tags JSON");
    body["tags"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Pushes the base image under `name:tag`, as an attacker with push rights would; its digest.
async fn plant(name: &str, tag: &str) -> String {
    let pushed = std::process::Command::new("podman")
        .args([
            "push",
            "--quiet",
            "--tls-verify=false",
            "localhost/busybox:latest",
        ])
        .arg(format!("docker://{REGISTRY}/{name}:{tag}"))
        .status()
        .expect("podman runs");
    assert!(pushed.success(), "planted {name}:{tag}");
    registry_image(name, tag).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn planted_build_keys_are_never_trusted() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/forge");
    repo.commit(
        &[
            (
                "Dockerfile",
                "FROM localhost/busybox:latest\nCOPY a.txt /a.txt\n",
            ),
            ("a.txt", "one\n"),
        ],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let name = format!("{user}/forge");
    let request = |id: &str| json!({"id": id, "repo": "acme/forge", "user_id": user});

    stack.publish_json(&request("built")).await;
    let built = expect_image(stack.outcome("built", BUILD_TIMEOUT).await);
    let all = tags(&name).await;
    let key = all
        .iter()
        .find(|t| t.starts_with("ib-") && !t.starts_with("ib-line-"))
        .expect("a build key tag")
        .clone();
    let line = all
        .iter()
        .find(|t| t.starts_with("ib-line-"))
        .expect("a lineage tag")
        .clone();

    // The build key moved to a planted image: the identical request builds again.
    let planted = plant(&name, &key).await;
    assert_ne!(planted, built.digest);
    stack.publish_json(&request("again")).await;
    let again = expect_image(stack.outcome("again", BUILD_TIMEOUT).await);
    assert!(
        !again.cached,
        "a planted key is not a cached answer: {again:?}"
    );
    assert_ne!(again.digest, planted);
    assert!(
        worker
            .log()
            .contains("which this service did not record building"),
        "{}",
        worker.log()
    );

    // The lineage moved to a planted image: a change to the final COPY's file is built in
    // full, not edited on top of it.
    let planted = plant(&name, &line).await;
    repo.commit(&[("a.txt", "two\n")], "two");
    repo.push();
    stack.publish_json(&request("next")).await;
    let next = expect_image(stack.outcome("next", BUILD_TIMEOUT).await);
    assert_ne!(next.digest, planted);
    assert!(
        worker.log().contains("the lineage tag points at") && worker.log().contains("full build"),
        "{}",
        worker.log()
    );

    // A request cannot ask for a reserved tag.
    stack
        .publish_json(&json!({"id": "asks", "repo": "acme/forge", "user_id": user, "tags": [key]}))
        .await;
    match stack.outcome("asks", BUILD_TIMEOUT).await {
        Event::Rejected(rejected) => {
            assert_eq!(rejected.field.as_deref(), Some("tags[0]"), "{rejected:?}");
            assert!(rejected.reason.contains("reserved"), "{rejected:?}");
        }
        other => panic!("expected build.rejected, got {other:?}"),
    }
    worker.stop().await;
    stack.cleanup().await;
}
