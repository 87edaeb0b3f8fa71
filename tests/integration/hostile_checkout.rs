//! A repository that turns a copied folder into a symlink out of the checkout. Commit A holds a
//! real `h/proc/self/environ` that the Dockerfile's final COPY reads; commit B replaces the
//! folder `h` with a symlink to `/` and changes nothing else: exactly the change an
//! incremental rebuild takes on. Followed, it would pack the worker's own environment (every
//! IMAGE_BUILDER__* setting, passwords included) into the pushed image.

use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::Event;
use serde_json::json;

use crate::support::image_blobs::{stored_images, valid_tar_entries};
use crate::support::{
    GitServer, REGISTRY, RepoFixture, Stack, Worker, assert_secret_absent, expect_image, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

fn build_lines(log: &str, build_id: &str) -> Vec<String> {
    let span = format!("build_id={build_id} ");
    log.lines()
        .filter(|l| l.contains(&span))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_swapped_for_a_symlink_to_the_root_leaks_nothing_into_any_image() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/hostile");
    repo.commit(
        &[
            ("Dockerfile", "FROM scratch\nCOPY h/proc/self/environ /e\n"),
            ("h/proc/self/environ", "harmless 1\n"),
        ],
        "a",
    );
    repo.push();
    let marker = unique("ib-secret-marker-");
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[("IB_TEST_SECRET_MARKER", &marker)]).await;
    // The bait is real: the worker's own environ holds the marker.
    let environ = std::fs::read(format!("/proc/{}/environ", worker.pid())).expect("environ");
    assert!(
        environ
            .windows(marker.len())
            .any(|w| w == marker.as_bytes()),
        "the marker is in the worker's environment"
    );
    let user = unique("u");
    let name = format!("{user}/hostile");
    let request = |id: &str| json!({"id": id, "repo": "acme/hostile", "user_id": user});

    // A: a full build, the base of the next ones.
    stack.publish_json(&request("a")).await;
    expect_image(stack.outcome("a", BUILD_TIMEOUT).await);

    // A2: only the copied file changes, so the worker writes the COPY layer itself.
    repo.commit(&[("h/proc/self/environ", "harmless 2\n")], "a2");
    repo.push();
    stack.publish_json(&request("a2")).await;
    let a2 = expect_image(stack.outcome("a2", BUILD_TIMEOUT).await);
    let lines = build_lines(&worker.log(), &a2.build.build_id);
    assert!(
        lines.iter().any(|l| l.contains("incremental rebuild of")),
        "{lines:#?}"
    );

    // B: the folder becomes a symlink to the root.
    repo.replace_with_symlink("h", "/");
    repo.commit(&[], "b");
    repo.push();
    stack.publish_json(&request("b")).await;
    let b = stack.outcome("b", BUILD_TIMEOUT).await;
    let log = worker.log();
    let lines = build_lines(&log, &b.build().build_id);
    assert!(
        lines.iter().any(|l| l.contains(
            "full build: no incremental rebuild (COPY source h/proc/self/environ: h is a symlink)"
        )),
        "the incremental path refused the symlink: {lines:#?}"
    );
    match &b {
        // podman resolves the COPY source inside the context, where nothing is at that path.
        Event::Failed(failed) => assert_eq!(failed.fault, Fault::User, "{failed:?}"),
        Event::ImageUpdated(_) => {}
        other => panic!("unexpected outcome of b: {other:?}"),
    }

    // Nothing the registry holds for this image carries the marker, in any form.
    let (tags, stored) = stored_images(REGISTRY, &name).await;
    assert!(!tags.is_empty() && !stored.is_empty(), "{tags:?}");
    for item in &stored {
        assert!(!item.contains(&marker), "{} carries the marker", item.what);
    }

    // The layer the worker wrote for A2 is a valid tar holding exactly the new file.
    let manifest: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{REGISTRY}/v2/{name}/manifests/{}",
            a2.digest
        ))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("registry answers")
        .json()
        .await
        .expect("manifest JSON");
    let top = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["digest"].as_str())
        .expect("a top layer")
        .to_owned();
    let layer = stored
        .iter()
        .find(|s| s.what == format!("layer {top}"))
        .expect("the top layer was read");
    let entries = valid_tar_entries(&layer.tar).expect("valid tar");
    assert_eq!(
        entries,
        vec![("e".to_owned(), b"harmless 2\n".to_vec())],
        "the COPY layer"
    );
    assert_secret_absent(&marker, &worker, &stack);
    worker.stop().await;
    stack.cleanup().await;
}
