//! Fast builds: no rebuild of a built configuration, monorepo contexts, the per-build timeout.

use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::Event;
use serde_json::json;

use crate::support::{
    GitServer, REGISTRY, RepoFixture, Stack, Worker, expect_image, image_tree, registry_image,
    unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const BUSYBOX: &str = "localhost/busybox:latest";

/// Lines of the worker log that belong to one build.
fn build_lines(log: &str, build_id: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(build_id))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_request_is_answered_without_rebuilding_and_changes_rebuild() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/cached");
    let alt = "FROM localhost/busybox:latest\nARG FLAVOUR\nRUN echo \"flavour $FLAVOUR\"\n";
    let commit = repo.commit(
        &[("Dockerfile", alt), ("docker/alt.Dockerfile", alt)],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let request = |id: &str, extra: serde_json::Value| {
        let mut body = json!({"id": id, "repo": "acme/cached", "user_id": user, "build_args": {"FLAVOUR": "plain"}});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };

    stack.publish_json(&request("first", json!({}))).await;
    let first = expect_image(stack.outcome("first", BUILD_TIMEOUT).await);
    assert!(!first.cached);

    stack
        .publish_json(&request("again", json!({"tags": ["stable"]})))
        .await;
    let again = expect_image(stack.outcome("again", BUILD_TIMEOUT).await);
    assert!(again.cached, "same commit and configuration: {again:?}");
    assert_eq!(again.digest, first.digest);
    assert_eq!(again.commit, commit);
    let lines = build_lines(&worker.log(), &again.build.build_id);
    assert!(
        !lines.iter().any(|l| l.contains("building ")),
        "nothing was built: {lines:#?}"
    );
    // The extra tag now points at the same image.
    let (digest, _) = registry_image(&format!("{user}/cached"), "stable").await;
    assert_eq!(digest, first.digest);

    stack
        .publish_json(&request("arg", json!({"build_args": {"FLAVOUR": "spicy"}})))
        .await;
    let changed_arg = expect_image(stack.outcome("arg", BUILD_TIMEOUT).await);
    assert!(!changed_arg.cached, "a changed build arg rebuilds");
    assert_ne!(changed_arg.digest, first.digest);

    stack
        .publish_json(&request(
            "path",
            json!({"dockerfile": "docker/alt.Dockerfile"}),
        ))
        .await;
    let changed_path = expect_image(stack.outcome("path", BUILD_TIMEOUT).await);
    assert!(!changed_path.cached, "a changed Dockerfile path rebuilds");

    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn monorepo_context_and_dockerfile_paths() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/mono");
    let api = "FROM localhost/busybox:latest\nCOPY api.txt /api.txt\n";
    let web = "FROM localhost/busybox:latest\nCOPY web.txt /web.txt\n";
    // Lowercase `dockerfile`, as the docker CLI finds it; stages a `target` picks from.
    let site = "FROM localhost/busybox:latest AS base\nCOPY site.txt /site.txt\n\
                FROM base AS Test\nRUN echo tested > /tested\n\
                FROM base\nRUN echo final > /final\n";
    repo.commit(
        &[
            ("services/api/Containerfile", api),
            ("services/api/api.txt", "api\n"),
            ("services/web/build/web.Dockerfile", web),
            ("services/web/web.txt", "web\n"),
            ("services/site/dockerfile", site),
            ("services/site/site.txt", "site\n"),
        ],
        "monorepo",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");

    stack
        .publish_json(&json!({"id": "api", "repo": "acme/mono", "user_id": user, "context": "services/api", "image": "api"}))
        .await;
    stack
        .publish_json(&json!({"id": "web", "repo": "acme/mono", "user_id": user, "context": "services/web", "dockerfile": "build/web.Dockerfile", "image": "web"}))
        .await;
    stack
        .publish_json(
            &json!({"id": "root", "repo": "acme/mono", "user_id": user, "builder": "dockerfile"}),
        )
        .await;
    assert_eq!(
        expect_image(stack.outcome("api", BUILD_TIMEOUT).await).image,
        format!("127.0.0.1:5000/{user}/api")
    );
    assert_eq!(
        expect_image(stack.outcome("web", BUILD_TIMEOUT).await).image,
        format!("127.0.0.1:5000/{user}/web")
    );
    match stack.outcome("root", BUILD_TIMEOUT).await {
        Event::Failed(failed) => {
            assert_eq!(failed.fault, Fault::User);
            assert!(
                failed
                    .reason
                    .contains("no Containerfile, Dockerfile, dockerfile in context '.'"),
                "names what was looked for: {}",
                failed.reason
            );
        }
        other => panic!("expected build.failed, got {other:?}"),
    }

    // The last stage by default; the named one (in any case) with `target`.
    for (id, target, has, lacks) in [
        ("site", None, "final", "tested"),
        ("site-test", Some("test"), "tested", "final"),
    ] {
        let mut request = json!({"id": id, "repo": "acme/mono", "user_id": user,
            "context": "services/site", "image": id});
        if let Some(target) = target {
            request["target"] = json!(target.to_uppercase());
        }
        stack.publish_json(&request).await;
        let built = expect_image(stack.outcome(id, BUILD_TIMEOUT).await);
        let pulled = format!("{}@{}", built.image, built.digest);
        image_tree::podman(&["pull", "-q", "--tls-verify=false", &pulled]);
        let files = image_tree::tree(&pulled);
        assert!(files.contains_key("/site.txt"), "{id}: {files:?}");
        assert!(files.contains_key(&format!("/{has}")), "{id} has /{has}");
        assert!(
            !files.contains_key(&format!("/{lacks}")),
            "{id} lacks /{lacks}"
        );
    }
    stack
        .publish_json(
            &json!({"id": "no-stage", "repo": "acme/mono", "user_id": user,
            "context": "services/site", "target": "lint"}),
        )
        .await;
    match stack.outcome("no-stage", BUILD_TIMEOUT).await {
        Event::Failed(failed) => {
            assert_eq!(failed.fault, Fault::User);
            assert!(
                failed.reason.contains("target 'lint' is not a stage of")
                    && failed.reason.contains("base, test"),
                "{}",
                failed.reason
            );
        }
        other => panic!("expected build.failed, got {other:?}"),
    }
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn build_timeout_kills_the_process_tree() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/slow");
    // A sleep of a length unique to this run, so its process can be looked for (a fixed one
    // matched a stray process of another run).
    let seconds = 1000 + std::process::id() % 5000;
    repo.commit(
        &[(
            "Dockerfile",
            &format!("FROM localhost/busybox:latest\nRUN sleep {seconds}\n"),
        )],
        "slow",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__BUILD__TIMEOUT_SECS", "4"),
            ("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    stack
        .publish_json(&json!({"id": "slow", "repo": "acme/slow", "user_id": unique("u")}))
        .await;
    match stack.outcome("slow", BUILD_TIMEOUT).await {
        // The steps ran out of the build's time: the repository's to fix, not retried.
        Event::Failed(failed) => {
            assert_eq!(failed.fault, Fault::User);
            assert!(
                failed.reason.contains("build.timeout_secs = 4"),
                "{}",
                failed.reason
            );
        }
        other => panic!("expected build.failed, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let survivors = std::process::Command::new("pgrep")
        .args(["-f", &format!("sleep {seconds}")])
        .output()
        .expect("pgrep runs");
    assert!(
        survivors.stdout.is_empty(),
        "the build's processes survived the timeout: {}",
        String::from_utf8_lossy(&survivors.stdout)
    );
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn platforms_make_one_pushed_manifest_list() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/multi");
    // No RUN step: nothing needs emulation to build the arm64 image here.
    repo.commit(
        &[
            ("Dockerfile", "FROM scratch\nCOPY hello.txt /hello.txt\n"),
            ("hello.txt", "hello\n"),
        ],
        "multi",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let body =
        json!({"repo": "acme/multi", "user_id": user, "platforms": ["linux/amd64", "linux/arm64"]});
    let mut first = body.clone();
    first["id"] = json!("multi-1");
    stack.publish_json(&first).await;
    let updated = expect_image(stack.outcome("multi-1", BUILD_TIMEOUT).await);
    assert_eq!(updated.platforms, vec!["linux/amd64", "linux/arm64"]);

    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:5000/v2/{user}/multi/manifests/latest"))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .await
        .expect("registry answers");
    let digest = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let index: serde_json::Value = response.json().await.expect("index JSON");
    assert_eq!(digest.as_deref(), Some(updated.digest.as_str()));
    let mut archs: Vec<String> = index["manifests"]
        .as_array()
        .expect("a manifest list")
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str().map(str::to_owned))
        .collect();
    archs.sort();
    assert_eq!(archs, vec!["amd64", "arm64"], "{index}");

    let mut again = body;
    again["id"] = json!("multi-2");
    stack.publish_json(&again).await;
    let cached = expect_image(stack.outcome("multi-2", BUILD_TIMEOUT).await);
    assert!(cached.cached);
    assert_eq!(cached.digest, updated.digest);
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_dockerfile_nixpacks_generates_one_and_podman_builds_it() {
    let installed = std::process::Command::new("nixpacks")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        installed,
        "nixpacks is not installed; scripts/toolchain.sh installs it (cargo install nixpacks)"
    );
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/node");
    // nixpacks follows symlinks wherever they lead: it reads a copy without this one.
    repo.symlink("host", "/");
    repo.commit(
        &[
            (
                "package.json",
                r#"{"name":"node-app","version":"1.0.0","scripts":{"start":"node index.js"}}"#,
            ),
            ("index.js", "console.log('hello');\n"),
        ],
        "node app",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[("IMAGE_BUILDER__RETRY__MAX_ATTEMPTS", "1")]).await;
    stack
        .publish_json(&json!({"id": "node", "repo": "acme/node", "user_id": unique("u")}))
        .await;
    let event = stack.outcome("node", BUILD_TIMEOUT).await;
    let log = worker.log();
    assert!(
        log.contains("generating one with nixpacks") && log.contains(".nixpacks/Dockerfile"),
        "nixpacks planned the build and podman got its Dockerfile:\n{log}"
    );
    assert!(
        log.contains("left out symlink host -> /"),
        "nixpacks read a confined copy of the context:\n{log}"
    );
    // nixpacks' base image lives on ghcr.io, which these machines cannot reach; with internet
    // the same request builds. Without, the failure is ours (service) and names the image.
    match event {
        Event::ImageUpdated(updated) => assert!(!updated.cached),
        Event::Failed(failed) => {
            assert_eq!(failed.fault, Fault::Service, "{failed:?}");
            assert!(
                failed
                    .reason
                    .contains("failed to pull base image ghcr.io/railwayapp/nixpacks"),
                "{}",
                failed.reason
            );
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    worker.stop().await;
    stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_answers_do_not_wait_for_a_build_slot_and_builds_do() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/lanes");
    let slow = "FROM localhost/busybox:latest\nARG N\nRUN sleep 6 && echo \"slow $N\"\n";
    repo.commit(
        &[
            (
                "Dockerfile",
                "FROM localhost/busybox:latest\nCOPY a.txt /a.txt\n",
            ),
            ("a.txt", "a\n"),
            ("slow.Dockerfile", slow),
        ],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    // One build slot, two deliveries of lookahead.
    let worker = Worker::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__AMQP__PREFETCH", "1"),
            ("IMAGE_BUILDER__AMQP__LOOKAHEAD", "2"),
        ],
    )
    .await;
    let user = unique("u");
    let fast = json!({"id": "built", "repo": "acme/lanes", "user_id": user});
    stack.publish_json(&fast).await;
    expect_image(stack.outcome("built", BUILD_TIMEOUT).await);

    // A value unique to this run: a step podman has cached from an earlier run would not
    // sleep, and the slot would not be held.
    let slow_request = |id: &str| {
        json!({"id": id, "repo": "acme/lanes", "user_id": user, "image": "slow",
               "dockerfile": "slow.Dockerfile", "build_args": {"N": unique(id)}})
    };
    stack.publish_json(&slow_request("slow-1")).await;
    stack
        .event_where(
            0,
            |e| matches!(e, Event::Started(s) if s.build.request_id == "slow-1"),
            BUILD_TIMEOUT,
        )
        .await
        .expect("slow-1 starts");
    // Started comes before the fetch; the slot is taken after it. Wait until slow-1 builds, or
    // slow-2 (fetched alongside, by lookahead) could reach the slot first.
    let deadline = std::time::Instant::now() + BUILD_TIMEOUT;
    while !build_lines(&worker.log(), "build_id=slow-1")
        .iter()
        .any(|l| l.contains("building ") && l.contains("with podman"))
    {
        assert!(std::time::Instant::now() < deadline, "slow-1 never built");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.publish_json(&slow_request("slow-2")).await;
    let mut again = fast.clone();
    again["id"] = json!("again");
    stack.publish_json(&again).await;

    // The cached answer comes while slow-1 holds the only slot; slow-2 waits for it.
    let cached = expect_image(stack.outcome("again", BUILD_TIMEOUT).await);
    assert!(cached.cached);
    let order: Vec<String> = {
        stack.outcome("slow-2", BUILD_TIMEOUT).await;
        stack
            .seen
            .iter()
            .filter(|e| e.is_terminal())
            .map(|e| e.build().request_id.clone())
            .collect()
    };
    assert_eq!(
        order,
        ["built", "again", "slow-1", "slow-2"],
        "{:?}\n{}",
        stack.seen,
        worker.log()
    );
    let log = worker.log();
    let slow_2 = build_lines(&log, "slow-2");
    assert!(
        slow_2
            .iter()
            .any(|l| l.contains("waiting for a build slot")),
        "{slow_2:#?}"
    );
    worker.stop().await;
    stack.cleanup().await;
}

/// The layer digests of `name@reference`.
async fn layer_digests(name: &str, reference: &str) -> Vec<String> {
    let manifest: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{REGISTRY}/v2/{name}/manifests/{reference}"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("registry answers")
        .json()
        .await
        .expect("manifest JSON");
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_only_the_final_copy_reads_is_rebuilt_in_the_registry() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/incr");
    let dockerfile = "FROM localhost/busybox:latest\nCOPY deps.txt /deps.txt\n\
        RUN cp /deps.txt /deps.copy\nCOPY src/ /app/src/\nCMD [\"cat\", \"/app/src/main.txt\"]\n";
    repo.commit(
        &[
            ("Dockerfile", dockerfile),
            ("deps.txt", "deps 1\n"),
            ("src/main.txt", "one\n"),
            ("src/old.txt", "old\n"),
            ("README.md", "readme 1\n"),
        ],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let request = |id: &str| json!({"id": id, "repo": "acme/incr", "user_id": user});

    stack.publish_json(&request("first")).await;
    let first = expect_image(stack.outcome("first", BUILD_TIMEOUT).await);
    // image.updated says how and why, for a container manager deciding whether to redeploy.
    assert_eq!(first.how, image_builder::events::How::Full);
    assert_eq!(first.why, "first build of this configuration");
    let lines = build_lines(&worker.log(), &first.build.build_id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("first build of this configuration")),
        "{lines:#?}"
    );

    // Only files the final COPY reads (and one nothing reads) change; one goes, one comes.
    repo.remove("src/old.txt");
    let second_commit = repo.commit(
        &[
            ("src/main.txt", "two\n"),
            ("src/new/inner.txt", "inner\n"),
            ("README.md", "readme 2\n"),
        ],
        "two",
    );
    repo.push();
    stack.publish_json(&request("second")).await;
    let second = expect_image(stack.outcome("second", BUILD_TIMEOUT).await);
    assert!(!second.cached);
    assert_eq!(second.commit, second_commit);
    assert_eq!(second.how, image_builder::events::How::Incremental);
    assert!(
        second
            .why
            .starts_with("only files no step but the final COPYs reads changed: ")
            && second.why.contains("src/main.txt"),
        "{}",
        second.why
    );
    let lines = build_lines(&worker.log(), &second.build.build_id);
    assert!(
        lines.iter().any(|l| l.contains("incremental rebuild")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("building ")),
        "no engine build: {lines:#?}"
    );
    let name = format!("{user}/incr");
    let (before, after) = (
        layer_digests(&name, &first.digest).await,
        layer_digests(&name, &second.digest).await,
    );
    assert_eq!(before.len(), after.len());
    assert_eq!(
        before[..before.len() - 1],
        after[..after.len() - 1],
        "reused"
    );
    assert_ne!(before.last(), after.last(), "the COPY layer is new");
    let (_, labels) = registry_image(&name, &second_commit[..12]).await;
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        json!(second_commit)
    );

    // podman pulls the edited image and sees exactly the new tree on top of the old layers.
    let probe = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        probe.path().join("Dockerfile"),
        format!(
            "FROM {REGISTRY}/{name}@{}\nRUN test \"$(cat /app/src/main.txt)\" = two && \
             test -f /app/src/new/inner.txt && test ! -e /app/src/old.txt && \
             test \"$(cat /deps.copy)\" = \"deps 1\"\n",
            second.digest
        ),
    )
    .expect("probe Dockerfile");
    let probe_tag = format!("localhost/ibt-probe:{}", unique(""));
    let checked = std::process::Command::new("podman")
        .args([
            "build",
            "-q",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "-t",
        ])
        .arg(&probe_tag)
        .arg(probe.path())
        .output()
        .expect("podman runs");
    assert!(
        checked.status.success(),
        "the edited image is valid: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // The name only: removing the image would race other tests' builds (see incremental_diff).
    let _ = std::process::Command::new("podman")
        .args(["untag", &probe_tag])
        .output();

    // A file an earlier step reads: a full build.
    repo.commit(&[("deps.txt", "deps 2\n")], "three");
    repo.push();
    stack.publish_json(&request("third")).await;
    let third = expect_image(stack.outcome("third", BUILD_TIMEOUT).await);
    let lines = build_lines(&worker.log(), &third.build.build_id);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("deps.txt is read by a step before the final COPYs")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.contains("building ")), "{lines:#?}");
    worker.stop().await;
    stack.cleanup().await;
}

/// A Dockerfile that adds nothing builds the base image itself: forgetting the build's local
/// name must not untag the base (podman's `untag IMAGE` alone removes every name).
#[tokio::test(flavor = "multi_thread")]
async fn a_build_that_adds_nothing_leaves_the_base_image_named() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/bare");
    repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "bare");
    repo.push();
    // Names a killed worker of another test (or run) left behind are not this build's.
    let before = image_tree::names(BUSYBOX).unwrap_or_default();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let body = json!({"id": "bare", "repo": "acme/bare", "user_id": unique("u")});
    stack.publish_json(&body).await;
    let updated = expect_image(stack.outcome("bare", BUILD_TIMEOUT).await);
    let (_, labels) = registry_image(
        &format!("{}/bare", updated.build.user_id.clone().unwrap_or_default()),
        "latest",
    )
    .await;
    assert_eq!(labels["io.image-builder.build-id"], json!("bare"));
    // The worker forgets its local name on the build's path, and the base keeps its own.
    image_tree::expect_no_new_build_names(BUSYBOX, &before).await;
    worker.stop().await;
    stack.cleanup().await;
}

/// Builds that make one image (a bare `FROM`, build args aside) name it at once: each build's
/// name goes after its push, and none comes back. podman 4.3's `untag` writes an image's names
/// back without the one removed, so untags racing on one image resurrected each other's names
/// (seen: 219 names left on one image by the cluster test's 50 builds).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_builds_of_one_image_leave_no_names_behind() {
    const BUILDS: usize = 8;
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/same");
    repo.commit(&[("Dockerfile", "FROM localhost/busybox:latest\n")], "bare");
    repo.push();
    let before = image_tree::names(BUSYBOX).unwrap_or_default();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[("IMAGE_BUILDER__AMQP__PREFETCH", "4")]).await;
    let user = unique("u");
    let ids: Vec<String> = (0..BUILDS).map(|i| unique(&format!("same{i}-"))).collect();
    // An unused build arg changes the configuration (no cached answer), not the image.
    for (i, id) in ids.iter().enumerate() {
        stack
            .publish_json(&json!({"id": id, "repo": "acme/same", "user_id": user,
                "build_args": {"N": i.to_string()}}))
            .await;
    }
    for id in &ids {
        let updated = expect_image(stack.outcome(id, BUILD_TIMEOUT).await);
        assert!(!updated.cached, "{id} was answered from the cache");
    }
    image_tree::expect_no_new_build_names(BUSYBOX, &before).await;
    worker.stop().await;
    stack.cleanup().await;
}
