//! A build request on RabbitMQ becomes a pushed image.

use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::Event;
use serde_json::json;

use crate::support::{
    DOCKERFILE_WITH_RUN, GitServer, RepoFixture, Stack, Worker, assert_secret_absent,
    registry_image, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const QUIET: Duration = Duration::from_secs(2);

fn expect_image(event: &Event) -> &image_builder::events::ImageUpdated {
    match event {
        Event::ImageUpdated(updated) => updated,
        other => panic!("expected image.updated, got {other:?}"),
    }
}

fn expect_failed(event: &Event) -> &image_builder::events::BuildFailed {
    match event {
        Event::Failed(failed) => failed,
        other => panic!("expected build.failed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_readme_example_is_built_and_pushed_verbatim() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "vano2903/testing");
    let commit = repo.commit(
        &[("Dockerfile", DOCKERFILE_WITH_RUN), ("app.txt", "hi\n")],
        "first",
    );
    repo.push();
    git.make_private("vano2903/testing", "gho_xxx");

    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    // Verbatim from the original image builder's README (no id: the worker generates one).
    let body = r#"{"token": "gho_xxx", "userID": "18008", "type": "repo", "connector": "github", "repo": "vano2903/testing"}"#;
    stack.publish(body.as_bytes()).await;

    let outcome = stack
        .terminal_where(|_| true, BUILD_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("no outcome; log:\n{}", worker.log()));
    let updated = expect_image(&outcome).clone();
    assert_eq!(updated.commit, commit);
    assert_eq!(updated.image, "127.0.0.1:5000/18008/testing");
    assert_eq!(updated.build.user_id.as_deref(), Some("18008"));
    assert_eq!(updated.build.git_ref.as_deref(), Some("main"));
    assert!(!updated.build.request_id.is_empty(), "an id is generated");
    assert!(
        updated.tags.contains(&"latest".to_owned()),
        "{:?}",
        updated.tags
    );
    assert!(
        updated.tags.contains(&commit[..12].to_owned()),
        "{:?}",
        updated.tags
    );

    for tag in &updated.tags {
        let (digest, labels) = registry_image("18008/testing", tag).await;
        assert_eq!(digest, updated.digest, "registry digest of tag {tag}");
        assert_eq!(labels["org.opencontainers.image.revision"], commit.as_str());
        assert_eq!(labels["org.opencontainers.image.ref.name"], "main");
        assert!(labels.contains_key("org.opencontainers.image.created"));
        assert!(
            labels["org.opencontainers.image.source"]
                .as_str()
                .is_some_and(|s| s.ends_with("/vano2903/testing.git"))
        );
    }

    let all = stack.settle(&updated.build.request_id, QUIET).await;
    let pushed = all
        .iter()
        .filter(|e| matches!(e, Event::ImageUpdated(_)))
        .count();
    assert_eq!(pushed, 1, "exactly one image.updated: {all:?}");
    assert_secret_absent("gho_xxx", &worker, &stack);
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn branch_tag_and_sha_refs_build_the_right_commit() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/refs");
    let first = repo.commit(
        &[("Dockerfile", DOCKERFILE_WITH_RUN), ("v.txt", "1\n")],
        "one",
    );
    let main_head = repo.commit(&[("v.txt", "2\n")], "two");
    repo.checkout_new_branch("feature/login");
    let feature = repo.commit(&[("v.txt", "feature\n")], "feature");
    repo.checkout("main");
    repo.checkout_new_branch("release");
    let tagged = repo.commit(&[("v.txt", "tagged\n")], "tagged");
    repo.tag("v1.0");
    repo.push();

    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let cases = [
        ("feature/login", feature.as_str(), "feature-login"),
        ("v1.0", tagged.as_str(), "v1.0"),
        (first.as_str(), first.as_str(), first.as_str()),
    ];
    for (i, (git_ref, _, _)) in cases.iter().enumerate() {
        stack
            .publish_json(&json!({
                "id": format!("{user}-{i}"), "repo": "acme/refs", "ref": git_ref, "user_id": user,
            }))
            .await;
    }
    for (i, (git_ref, commit, tag)) in cases.iter().enumerate() {
        let event = stack.outcome(&format!("{user}-{i}"), BUILD_TIMEOUT).await;
        let updated = expect_image(&event);
        assert_eq!(&updated.commit, commit, "ref {git_ref}");
        assert!(
            updated.tags.contains(&tag.to_string()),
            "ref {git_ref}: {:?}",
            updated.tags
        );
        assert!(
            !updated.tags.contains(&"latest".to_owned()),
            "only the default branch is latest"
        );
        let (digest, labels) = registry_image(&format!("{user}/refs"), tag).await;
        assert_eq!(digest, updated.digest);
        assert_eq!(labels["org.opencontainers.image.revision"], *commit);
    }
    assert_ne!(main_head, first);

    // The `git` connector takes a full URL (http is allowed by the local config).
    let id = format!("{user}-url");
    let url = format!("{}/acme/refs.git", git.base_url);
    stack
        .publish_json(
            &json!({"id": id, "connector": "git", "repo": url, "ref": "v1.0", "user_id": user}),
        )
        .await;
    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    assert_eq!(expect_image(&event).commit, tagged);

    // A failing RUN step is the user's fault, final, with the step in the log tail.
    repo.checkout("main");
    repo.checkout_new_branch("broken");
    repo.commit(
        &[(
            "Dockerfile",
            "FROM localhost/busybox:latest\nRUN echo about to fail && exit 3\n",
        )],
        "broken",
    );
    repo.push();
    let id = format!("{user}-broken");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/refs", "ref": "broken", "user_id": user}))
        .await;
    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    let failed = expect_failed(&event);
    assert_eq!(failed.fault, Fault::User, "{failed:?}");
    assert_eq!(failed.attempts, 1);
    assert!(
        failed.log_tail.iter().any(|l| l.contains("about to fail")),
        "the RUN step ran and its output is in the tail: {:?}",
        failed.log_tail
    );

    // A ref that does not exist is a user fault too.
    let id = format!("{user}-missing");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/refs", "ref": "nope", "user_id": user}))
        .await;
    let event = stack.outcome(&id, BUILD_TIMEOUT).await;
    let failed = expect_failed(&event);
    assert_eq!(failed.fault, Fault::User);
    assert!(failed.reason.contains("nope"), "{}", failed.reason);

    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn private_repository_needs_the_token_and_never_leaks_it() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/private");
    // The RUN step prints the build arg, so redaction of build output is exercised for real.
    let dockerfile = "FROM localhost/busybox:latest\nARG API_KEY\nRUN echo \"key is $API_KEY\"\n";
    let commit = repo.commit(&[("Dockerfile", dockerfile)], "private");
    repo.push();
    let token = format!("ghp_{}", unique("secret"));
    git.make_private("acme/private", &token);

    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let base = json!({"repo": "acme/private", "user_id": user});

    let mut without = base.clone();
    without["id"] = json!(format!("{user}-none"));
    stack.publish_json(&without).await;
    let event = stack.outcome(&format!("{user}-none"), BUILD_TIMEOUT).await;
    let failed = expect_failed(&event);
    assert_eq!(failed.fault, Fault::User);
    assert!(failed.reason.contains("no token"), "{}", failed.reason);

    let mut wrong = base.clone();
    wrong["id"] = json!(format!("{user}-wrong"));
    wrong["token"] = json!("ghp_wrong_token_value");
    stack.publish_json(&wrong).await;
    let event = stack.outcome(&format!("{user}-wrong"), BUILD_TIMEOUT).await;
    let failed = expect_failed(&event);
    assert_eq!(failed.fault, Fault::User);
    assert!(failed.reason.contains("refused"), "{}", failed.reason);

    let mut right = base.clone();
    right["id"] = json!(format!("{user}-right"));
    right["token"] = json!(token);
    // A build arg is a secret as well: it reaches the RUN step but no log or event.
    right["build_args"] = json!({"API_KEY": format!("key-{token}")});
    stack.publish_json(&right).await;
    let event = stack.outcome(&format!("{user}-right"), BUILD_TIMEOUT).await;
    assert_eq!(expect_image(&event).commit, commit);

    stack.settle("", QUIET).await;
    assert_secret_absent(&token, &worker, &stack);
    assert_secret_absent("ghp_wrong_token_value", &worker, &stack);
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_ref_is_rejected_naming_the_field() {
    let git = GitServer::start().await;
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let id = unique("r");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/x", "user_id": "u1", "ref": "--upload-pack=touch /tmp/pwned"}))
        .await;
    match stack.outcome(&id, Duration::from_secs(30)).await {
        Event::Rejected(rejected) => {
            assert_eq!(rejected.field.as_deref(), Some("ref"));
            assert_eq!(rejected.fault, Fault::Rejected);
            assert!(
                rejected.reason.contains("must not start with '-'"),
                "{}",
                rejected.reason
            );
        }
        other => panic!("expected build.rejected, got {other:?}"),
    }
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_cli_waits_and_prints_the_outcome() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/cli");
    let commit = repo.commit(&[("Dockerfile", DOCKERFILE_WITH_RUN)], "cli");
    repo.push();
    let token = format!("ghp_{}", unique("cli"));
    git.make_private("acme/cli", &token);
    let stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;

    let user = unique("u");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args([
            "submit",
            "--repo",
            "acme/cli",
            "--user-id",
            &user,
            "--token-env",
            "CLI_TOKEN",
        ])
        .args(["--wait", "--timeout-secs", "180"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("IMAGE_BUILDER_ENV", "local")
        .env("CLI_TOKEN", &token)
        .env("IMAGE_BUILDER__AMQP__PREFIX", &stack.prefix)
        .env("IMAGE_BUILDER__RETRY__DELAYS_MS", "300,600")
        .output()
        .await
        .expect("submit runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let event: Event = serde_json::from_str(&stdout).expect("submit prints the event JSON");
    assert_eq!(expect_image(&event).commit, commit);
    assert!(!stdout.contains(&token));

    // A failing outcome exits non-zero.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args(["submit", "--repo", "acme/cli", "--user-id", &user, "--wait"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("IMAGE_BUILDER_ENV", "local")
        .env("IMAGE_BUILDER__AMQP__PREFIX", &stack.prefix)
        .env("IMAGE_BUILDER__RETRY__DELAYS_MS", "300,600")
        .output()
        .await
        .expect("submit runs");
    assert_eq!(output.status.code(), Some(1));
    let event: Event = serde_json::from_slice(&output.stdout).expect("event JSON");
    assert!(matches!(event, Event::Failed(_)), "{event:?}");
    worker.stop().await;
    stack.cleanup().await;
}
