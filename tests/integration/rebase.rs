//! Differential test of the base swap in the registry (`image_edit::rebase`): an application
//! the worker built on base v1, moved onto base v2 by editing manifests, against
//! `podman build --no-cache` of the same commit on v2, compared file by file and in config
//! (`support::image_tree`). A new base whose settings a full build would inherit differently
//! is refused.

use std::time::Duration;

use image_builder::image_edit::{self, BaseImage, Rebase};
use image_builder::ports::ImageRegistry;
use image_builder::registry::RegistryClient;
use serde_json::json;

use crate::support::image_tree;
use crate::support::{GitServer, REGISTRY, RepoFixture, Stack, Worker, expect_image, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

/// Builds `dockerfile` (with `files` in its context) as `name` and pushes it; returns the
/// digest the registry holds.
fn push_base(name: &str, dockerfile: &str, files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write");
    for (path, content) in files {
        std::fs::write(dir.path().join(path), content).expect("write");
    }
    let context = dir.path().to_str().expect("utf8 path");
    image_tree::podman(&["build", "-q", "--isolation", "chroot", "-t", name, context]);
    let digest_file = dir.path().join("digest");
    let digest_path = digest_file.to_str().expect("utf8 path");
    image_tree::podman(&[
        "push",
        "-q",
        "--tls-verify=false",
        "--digestfile",
        digest_path,
        name,
    ]);
    std::fs::read_to_string(&digest_file)
        .expect("digest file")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_only_image_moved_onto_its_new_base_equals_a_full_build_on_it() {
    let ns = unique("rebase-");
    let (base_repo, base) = (format!("{ns}/base"), format!("{REGISTRY}/{ns}/base:1"));
    let v1 = push_base(
        &base,
        "FROM localhost/busybox:latest\nCOPY base.txt /base.txt\nENV BASE_MODE=1\n",
        &[("base.txt", "base v1\n")],
    );

    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/rebased");
    let dockerfile = format!(
        "FROM {base}\nCOPY app/ /app/\nWORKDIR /app\nENV MODE=prod\nCMD [\"cat\", \"/app/a.txt\"]\n"
    );
    repo.commit(
        &[("Dockerfile", &dockerfile), ("app/a.txt", "application\n")],
        "app on base 1",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    stack
        .publish_json(&json!({"id": "app", "repo": "acme/rebased", "user_id": unique("u")}))
        .await;
    let built = expect_image(stack.outcome("app", BUILD_TIMEOUT).await);
    worker.stop().await;
    let registry = RegistryClient::new(&stack.settings.registry);
    stack.cleanup().await;

    // The base moves: other content, one more layer, the same settings.
    let v2 = push_base(
        &base,
        "FROM localhost/busybox:latest\nCOPY base.txt /base.txt\nCOPY fix.txt /etc/fix.txt\n\
         ENV BASE_MODE=1\n",
        &[("base.txt", "base v2\n"), ("fix.txt", "security fix\n")],
    );
    assert_ne!(v1, v2);

    let repository = built
        .image
        .strip_prefix(&format!("{REGISTRY}/"))
        .expect("pushed to the local registry")
        .to_owned();
    let image = registry
        .manifest(&repository, &built.digest)
        .await
        .expect("registry")
        .expect("the built image");
    let scratch = tempfile::tempdir().expect("scratch");
    let labels = [("io.image-builder.rebased".to_owned(), "yes".to_owned())];
    let onto_v2 = Rebase {
        registry: &registry,
        repository: &repository,
        image: &image,
        old_base: BaseImage {
            repository: &base_repo,
            digest: &v1,
        },
        new_base: BaseImage {
            repository: &base_repo,
            digest: &v2,
        },
        labels: &labels,
        tags: &["rebased"],
        created: time::OffsetDateTime::now_utc(),
        scratch_dir: scratch.path(),
    };
    let rebased = image_edit::rebase(&onto_v2)
        .await
        .expect("registry")
        .expect("a COPY-only image on the same settings is rebased");

    // The reference: the same commit built from scratch on v2 (base:1 is v2 locally now).
    let reference = format!("localhost/{}:reference", unique("rebase-ref"));
    image_tree::reference_build(repo.work_dir(), &repo.head(), &reference, &[])
        .expect("reference build");
    let differences = image_tree::compare(&format!("{}:rebased", built.image), &reference);
    assert!(differences.is_empty(), "{differences:#?}");
    assert_ne!(rebased.digest, built.digest);

    // A base whose environment changed: a full build would inherit it, so no swap.
    let v3 = push_base(
        &base,
        "FROM localhost/busybox:latest\nCOPY base.txt /base.txt\nENV BASE_MODE=2\n",
        &[("base.txt", "base v3\n")],
    );
    let onto_v3 = Rebase {
        new_base: BaseImage {
            repository: &base_repo,
            digest: &v3,
        },
        tags: &["refused"],
        ..onto_v2
    };
    let refused = image_edit::rebase(&onto_v3)
        .await
        .expect("registry")
        .expect_err("the new base's Env differs");
    assert!(refused.contains("config Env"), "{refused}");
    image_tree::untag(&base);
}
