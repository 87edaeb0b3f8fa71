//! `RUN --mount=type=cache`: a hostile cache id (written out, from an ARG, or in a base image's
//! ONBUILD trigger) reaches no host directory, and one tenant's cache is never another's. A
//! writable bind, whose writes podman 4.3 keeps in the checkout, is refused too.
//! buildah 1.28 joins the id to its cache directory unconfined (seen: the host's /etc read from
//! a build), and kept one cache directory for every build on the host.

use std::path::Path;
use std::time::Duration;

use image_builder::error::Fault;
use serde_json::json;

use crate::support::image_blobs::file_of;
use crate::support::image_tree;
use crate::support::{GitServer, RepoFixture, Stack, Worker, expect_failed, expect_image, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);

/// A directory on the host, named by `probe`, that a mount escaping to it would create (buildah
/// creates a cache mount's directory before it mounts it).
fn escape_to(probe: &Path) -> String {
    let depth = "../".repeat(12);
    format!(
        "x/{depth}{}",
        probe.display().to_string().trim_start_matches('/')
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_ids_that_climb_out_are_refused_before_podman_mounts_them() {
    let git = GitServer::start().await;
    let probe = std::env::temp_dir().join(unique("ibt-escape-"));
    let base = format!("localhost/ibt-trigger-{}:x", unique(""));
    let id = escape_to(&probe);
    let cases = [
        (
            "written",
            format!(
                "FROM localhost/busybox:latest\n\
                 RUN --mount=type=cache,id={id},target=/h cat /h/hostname > /leak\n"
            ),
            "cache id with `..`",
        ),
        (
            "arg",
            format!(
                "FROM localhost/busybox:latest\nARG P={id}\n\
                 RUN --mount=type=cache,id=$P,target=/h touch /h/written\n"
            ),
            "names its cache id with a variable",
        ),
        (
            // podman 4.3 would keep these writes in the checkout, past the disk bound.
            "writable",
            "FROM localhost/busybox:latest\n\
             RUN --mount=type=bind,target=/ctx,rw sh -c 'echo pwned > /ctx/Dockerfile'\n"
                .to_owned(),
            "is a writable bind",
        ),
        (
            // What the parser cannot read cannot be checked, so it is not built.
            "unreadable",
            "FROM localhost/busybox:latest\nNOT an instruction\n".to_owned(),
            "Dockerfile cannot be read",
        ),
        (
            "trigger",
            format!("FROM {base}\nRUN true\n"),
            "has an ONBUILD trigger: RUN (line 2) --mount",
        ),
    ];
    // The trigger's base: built by raw podman in Docker's format (OCI has no triggers).
    image_tree::build_docker_format_base(
        &format!(
            "FROM localhost/busybox:latest\n\
             ONBUILD RUN --mount=type=cache,id={id},target=/h touch /h/written\n"
        ),
        &base,
    );

    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    for (name, dockerfile, _) in &cases {
        let repo = RepoFixture::create(git.root.path(), &format!("acme/{name}"));
        repo.commit(&[("Dockerfile", dockerfile)], "hostile");
        repo.push();
        stack
            .publish_json(
                &json!({"id": format!("{user}-{name}"), "repo": format!("acme/{name}"),
                                  "user_id": user}),
            )
            .await;
    }
    for (name, _, says) in &cases {
        let failed = expect_failed(
            stack
                .outcome(&format!("{user}-{name}"), BUILD_TIMEOUT)
                .await,
        );
        assert_eq!(failed.fault, Fault::User, "{name}: {failed:?}");
        assert_eq!(failed.attempts, 1, "{name}: a user fault is not retried");
        assert!(
            failed.reason.contains(says) && failed.reason.contains("cannot build this"),
            "{name}: {}",
            failed.reason
        );
    }
    assert!(
        !probe.exists(),
        "a hostile cache id created {} on the host",
        probe.display()
    );
    worker.stop().await;
    stack.cleanup().await;
    image_tree::untag(&base);
}

/// A file `/seen` written by the build, from the pushed image `<user>/<name>`.
async fn seen(user: &str, name: &str) -> String {
    file_of(&format!("{user}/{name}"), "seen")
        .await
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_mounts_are_kept_per_user_and_repository_and_never_shared() {
    let git = GitServer::start().await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    // Each build prints what the cache held before it, then leaves its own mark.
    let dockerfile = "FROM localhost/busybox:latest\nARG WHO\n\
        RUN --mount=type=cache,target=/c sh -c 'cat /c/mark 2>/dev/null || echo empty; \
        echo $WHO > /c/mark' > /seen\n";
    for name in ["app", "other"] {
        let repo = RepoFixture::create(git.root.path(), &format!("acme/{name}"));
        repo.commit(&[("Dockerfile", dockerfile)], "cache");
        repo.push();
    }
    // (user, repository, image name): one image per build, so each /seen is its own.
    let builds = [
        (&alice, "app", "a1"),
        (&bob, "app", "b1"),
        (&alice, "app", "a2"),
        (&alice, "other", "o1"),
    ];
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    for (user, repo, image) in builds {
        let id = unique("cm-");
        stack
            .publish_json(
                &json!({"id": id, "repo": format!("acme/{repo}"), "user_id": user,
                                  "image": image, "build_args": {"WHO": image}}),
            )
            .await;
        expect_image(stack.outcome(&id, BUILD_TIMEOUT).await);
    }
    assert_eq!(
        seen(&alice, "a1").await,
        "empty",
        "a new scope starts empty"
    );
    assert_eq!(
        seen(&bob, "b1").await,
        "empty",
        "bob never sees alice's cache, even of the same repository"
    );
    assert_eq!(
        seen(&alice, "a2").await,
        "a1",
        "alice's next build of the repository finds what her last one left"
    );
    assert_eq!(
        seen(&alice, "o1").await,
        "empty",
        "another repository has its own"
    );
    worker.stop().await;
    stack.cleanup().await;
}
