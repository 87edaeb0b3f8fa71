//! Base images as users write them: short names resolve as docker's do, through the mapping and
//! mirrors of `[base_images]`, and a base pushed by the product itself builds `FROM` its own
//! (insecure, local) registry. Every test maps docker.io to a namespace of the local registry
//! (or to closed loopback ports), so no pull ever leaves 127.0.0.0/8.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::Event;
use serde_json::json;

use crate::support::{
    GitServer, REGISTRY, RepoFixture, Stack, Worker, expect_failed, expect_image, image_tree,
    unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

/// Puts the seeded busybox into the local registry as `<path>` (`ns/library/name:tag`).
fn seed(path: &str) {
    let out = Command::new("podman")
        .args([
            "push",
            "--quiet",
            "--tls-verify=false",
            "localhost/busybox:latest",
        ])
        .arg(format!("docker://{REGISTRY}/{path}"))
        .output()
        .expect("podman runs");
    assert!(
        out.status.success(),
        "seeding {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A config file (TOML) in its own temp dir, for `IMAGE_BUILDER_CONFIG`.
struct ConfigFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("image-builder.toml");
        std::fs::write(&path, text).expect("config written");
        Self { _dir: dir, path }
    }

    fn env(&self) -> (&'static str, &str) {
        (
            "IMAGE_BUILDER_CONFIG",
            self.path.to_str().expect("utf8 path"),
        )
    }
}

/// docker.io rewritten to `location`, with `mirrors` tried first (all plain HTTP).
fn docker_io_at(location: &str, mirrors: &[&str]) -> ConfigFile {
    let mirrors: Vec<String> = mirrors
        .iter()
        .map(|m| format!("{{ location = \"{m}\", insecure = true }}"))
        .collect();
    ConfigFile::new(&format!(
        "[[base_images.registries]]\nprefix = \"docker.io\"\nlocation = \"{location}\"\n\
         insecure = true\nmirrors = [{}]\n",
        mirrors.join(", ")
    ))
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn repo_with(git: &GitServer, name: &str, dockerfile: &str) {
    let repo = RepoFixture::create(git.root.path(), name);
    repo.commit(&[("Dockerfile", dockerfile)], "base image");
    repo.push();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_name_builds_from_the_mapped_location() {
    let (ns, name) = (unique("bi-loc-"), unique("ibbase"));
    seed(&format!("{ns}/library/{name}:1"));
    let config = docker_io_at(&format!("{REGISTRY}/{ns}"), &[]);
    let git = GitServer::start().await;
    repo_with(
        &git,
        "acme/short",
        &format!("FROM {name}:1\nRUN echo short > /short.txt\n"),
    );
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[config.env()]).await;
    stack
        .publish_json(&json!({"id": "short", "repo": "acme/short", "user_id": unique("u")}))
        .await;
    let event = stack.outcome("short", BUILD_TIMEOUT).await;
    let log = worker.log();
    image_tree::untag(&format!("docker.io/library/{name}:1"));
    let updated = expect_image(event);
    assert!(!updated.digest.is_empty());
    // podman named the image as docker would, and took it from the mapped location.
    assert!(
        log.contains(&format!("Trying to pull docker.io/library/{name}:1")),
        "{log}"
    );
    // The file podman read: one search registry, no prompt, the mapping.
    let written = worker.data_dir.path().join("data/podman/registries.conf");
    let conf: toml::Table = std::fs::read_to_string(&written)
        .expect("registries.conf written under the data dir")
        .parse()
        .expect("TOML");
    assert_eq!(
        conf["unqualified-search-registries"],
        toml::Value::Array(vec!["docker.io".into()])
    );
    assert_eq!(conf["short-name-mode"].as_str(), Some("disabled"));
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_mirror_is_used_and_nothing_else_is_asked() {
    // The image is only in the mirror's namespace; the location's is empty.
    let (location, mirror) = (unique("bi-loc-"), unique("bi-mirror-"));
    let (name, absent) = (unique("ibbase"), unique("ibabsent"));
    seed(&format!("{mirror}/library/{name}:1"));
    let location = format!("{REGISTRY}/{location}");
    let mirror = format!("{REGISTRY}/{mirror}");
    let config = docker_io_at(&location, &[&mirror]);
    let git = GitServer::start().await;
    repo_with(&git, "acme/mirrored", &format!("FROM {name}:1\nRUN true\n"));
    repo_with(&git, "acme/absent", &format!("FROM {absent}:1\nRUN true\n"));
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[config.env()]).await;
    let user = unique("u");
    stack
        .publish_json(&json!({"id": "mirrored", "repo": "acme/mirrored", "user_id": user}))
        .await;
    let event = stack.outcome("mirrored", BUILD_TIMEOUT).await;
    image_tree::untag(&format!("docker.io/library/{name}:1"));
    expect_image(event);

    // An image in neither place: podman's own words list every endpoint it tried, and they
    // are exactly the mirror, then the location, both on loopback. A missing image is the
    // repository's to fix: not retried.
    stack
        .publish_json(&json!({"id": "absent", "repo": "acme/absent", "user_id": user}))
        .await;
    let failed = expect_failed(stack.outcome("absent", BUILD_TIMEOUT).await);
    assert_eq!(failed.fault, Fault::User, "{failed:?}");
    let tried_mirror = format!("{mirror}/library/{absent}:1");
    let tried_location = format!("{location}/library/{absent}:1");
    assert!(
        failed.reason.contains(&format!(
            "the base image does not exist: {absent}:1 (docker.io/library/{absent}:1), looked \
             for at {tried_mirror} (mirror), then {tried_location}: "
        )),
        "{}",
        failed.reason
    );
    let podmans = failed
        .reason
        .split_once("(Mirrors also failed: [")
        .map(|(_, words)| words)
        .unwrap_or_else(|| panic!("podman's own words: {}", failed.reason));
    assert!(
        podmans.starts_with(&format!("{tried_mirror}: "))
            && podmans.contains(&format!("]): {tried_location}: ")),
        "{podmans}"
    );
    assert_eq!(podmans.matches("127.0.0.1:5000/").count(), 4, "{podmans}");
    assert!(!podmans.contains("docker.io/"), "{podmans}");
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_that_cannot_be_pulled_is_a_service_fault_naming_every_place() {
    let (ns, name) = (unique("bi-down-"), unique("ibbase"));
    let location = format!("127.0.0.1:{}/{ns}", closed_port());
    let mirror = format!("127.0.0.1:{}/cache", closed_port());
    let config = docker_io_at(&location, &[&mirror]);
    let git = GitServer::start().await;
    repo_with(&git, "acme/down", &format!("FROM {name}:1\nRUN true\n"));
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[config.env(), ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "2")],
    )
    .await;
    let id = unique("down-");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/down", "user_id": unique("u")}))
        .await;
    let failed = expect_failed(stack.outcome(&id, BUILD_TIMEOUT).await);
    assert_eq!(failed.fault, Fault::Service, "{failed:?}\n{}", worker.log());
    assert_eq!(failed.attempts, 2, "retried up to max_attempts: {failed:?}");
    let named = format!(
        "failed to pull base image {name}:1 (docker.io/library/{name}:1), looked for at \
         {mirror}/library/{name}:1 (mirror), then {location}/library/{name}:1: "
    );
    assert!(failed.reason.contains(&named), "{}", failed.reason);

    let events = stack.settle(&id, Duration::from_secs(2)).await;
    let retrying = events
        .iter()
        .filter(|e| matches!(e, Event::Retrying(_)))
        .count();
    assert_eq!(retrying, 1, "{events:?}");
    let dead = stack.drain_dead().await;
    assert_eq!(dead.len(), 1, "parked in the dead queue");
    let last_error = dead[0].1.last_error.as_deref().unwrap_or("");
    assert!(last_error.contains(&named), "{last_error}");
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_the_product_pushed_to_its_own_insecure_registry_builds_from_there() {
    let git = GitServer::start().await;
    repo_with(
        &git,
        "acme/layer-one",
        "FROM localhost/busybox:latest\nRUN echo one > /one.txt\n",
    );
    let mut stack = Stack::new().await;
    // The local env's registry speaks plain HTTP (registry.insecure = true): podman's pulls
    // from it need it marked insecure, as its pushes are.
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    stack
        .publish_json(&json!({"id": "one", "repo": "acme/layer-one", "user_id": user}))
        .await;
    let first = expect_image(stack.outcome("one", BUILD_TIMEOUT).await);
    let tag = first.tags.first().expect("a tag").clone();
    let base = format!("{}:{tag}", first.image);
    assert!(base.starts_with(&format!("{REGISTRY}/")), "{base}");
    let repo = RepoFixture::create(git.root.path(), "acme/layer-two");
    repo.commit(
        &[(
            "Dockerfile",
            &format!("FROM {base}\nRUN cat /one.txt && echo two > /two.txt\n"),
        )],
        "on top",
    );
    repo.push();
    stack
        .publish_json(&json!({"id": "two", "repo": "acme/layer-two", "user_id": user}))
        .await;
    let event = stack.outcome("two", BUILD_TIMEOUT).await;
    image_tree::untag(&base);
    let second = expect_image(event);
    assert_ne!(second.digest, first.digest);
    worker.stop().await;
    stack.cleanup().await;
}
