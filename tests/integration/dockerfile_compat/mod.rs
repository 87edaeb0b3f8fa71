//! The constructs real Dockerfiles use (issue 18, item 4), one fixture each: a repository the
//! worker builds, and raw `podman build --no-cache` of the same commit. The outcomes must match:
//! the same files (kind, mode, owner, content) and config (`image_tree::config`, with the
//! docker-only healthcheck, shell and triggers), or both fail and the worker's reason is the
//! clear one. Paths each fixture is about are also checked by name, so a construct that both
//! sides ignored the same way cannot pass unseen.
//!
//! All fixtures are published at once; reference builds and comparisons run beside the
//! worker, two podman jobs at a time.

mod fixtures;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Semaphore;

use crate::support::image_tree::{self, podman};
use crate::support::{GitServer, RepoFixture, Stack, Worker, expect_failed, expect_image, unique};
use fixtures::{Expect, Fixture};

const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// A repository holding the fixture's files (raw bytes: CRLF and BOM stay as written).
fn repo_of(git: &GitServer, fixture: &Fixture) -> RepoFixture {
    let repo = RepoFixture::create(git.root.path(), &format!("acme/{}", fixture.name));
    let work = repo.work_dir();
    let dockerfile = [("Dockerfile", fixture.dockerfile.clone())];
    for (path, bytes) in fixture.files.iter().chain(&dockerfile) {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(&file, bytes).expect("write");
    }
    repo.commit(&[], fixture.name);
    repo.push();
    repo
}

/// Raw podman's build of the fixture's commit under `tag`: Err is podman's stderr.
fn reference(fixture: &Fixture, repo: &RepoFixture, tag: &str) -> Result<(), String> {
    let commit = repo.head();
    match &fixture.expect {
        Expect::Same(extra) => image_tree::reference_build(repo.work_dir(), &commit, tag, extra),
        Expect::SameAs(text) => {
            let file = tempfile::NamedTempFile::new().expect("temp file");
            std::fs::write(file.path(), text).expect("write");
            let path = file.path().to_str().expect("utf8 path");
            image_tree::reference_build(repo.work_dir(), &commit, tag, &["--file", path])
        }
        Expect::BothFail(_) => image_tree::reference_build(repo.work_dir(), &commit, tag, &[]),
    }
}

/// Every way the worker's image differs from the reference and from what the fixture needs.
fn compare(fixture: &Fixture, worker_image: &str, reference: &str) -> Vec<String> {
    podman(&["pull", "-q", "--tls-verify=false", worker_image]);
    let (want, got) = (image_tree::tree(reference), image_tree::tree(worker_image));
    let mut out = image_tree::differences(&want, &got);
    for path in fixture.present {
        if !got.contains_key(*path) {
            out.push(format!("{path}: missing from the worker's image"));
        }
    }
    for path in fixture.absent {
        if got.contains_key(*path) {
            out.push(format!("{path}: should have been left out"));
        }
    }
    let (want, got) = (
        image_tree::config(reference),
        image_tree::config(worker_image),
    );
    if want != got {
        out.push(format!("config: {got:#}\n  raw podman: {want:#}"));
    }
    for key in fixture.config_set {
        if got[*key].is_null() {
            out.push(format!("config: {key} is not set"));
        }
    }
    // The pulled image carries a build id label: its only names are ours to remove.
    image_tree::untag(worker_image);
    image_tree::untag(reference);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn dockerfile_constructs_build_as_raw_podman_builds_them() {
    let started = Instant::now();
    let base = format!("localhost/ibt-onbuild-{}:x", unique(""));
    image_tree::build_docker_format_base(fixtures::ONBUILD_BASE, &base);
    let fixtures = Arc::new(fixtures::all(&base));
    let git = GitServer::start().await;
    let repos: Vec<RepoFixture> = fixtures.iter().map(|f| repo_of(&git, f)).collect();
    eprintln!("base and repositories ready after {:?}", started.elapsed());
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    for fixture in fixtures.iter() {
        let repo = format!("acme/{}", fixture.name);
        let request = json!({"id": fixture.name, "repo": repo, "user_id": user});
        stack.publish_json(&request).await;
    }

    let podman_jobs = Arc::new(Semaphore::new(2));
    let mut references = Vec::new();
    for (n, repo) in repos.into_iter().enumerate() {
        let tag = format!("localhost/ibt-compat-{}:{}", fixtures[n].name, unique(""));
        let (jobs, fixtures, built) = (podman_jobs.clone(), fixtures.clone(), tag.clone());
        references.push((
            tag,
            tokio::spawn(async move {
                let _job = jobs.acquire_owned().await.expect("semaphore");
                tokio::task::spawn_blocking(move || reference(&fixtures[n], &repo, &built))
                    .await
                    .expect("reference build")
            }),
        ));
    }

    let mut failures = Vec::new();
    let mut checks = Vec::new();
    for (n, (tag, built)) in references.into_iter().enumerate() {
        let fixture = &fixtures[n];
        let outcome = stack.outcome(fixture.name, BUILD_TIMEOUT).await;
        eprintln!(
            "{}: worker done after {:?}",
            fixture.name,
            started.elapsed()
        );
        if let Expect::BothFail(reason) = fixture.expect {
            let failed = expect_failed(outcome);
            if failed.fault.as_str() != "user" || !failed.reason.contains(reason) {
                failures.push(format!(
                    "{}: worker failed with {} fault: {}",
                    fixture.name,
                    failed.fault.as_str(),
                    failed.reason
                ));
            }
            if built.await.expect("reference task").is_ok() {
                failures.push(format!("{}: raw podman built it", fixture.name));
                image_tree::untag(&tag);
            }
            continue;
        }
        let updated = expect_image(outcome);
        let image = format!("{}@{}", updated.image, updated.digest);
        let (jobs, fixtures) = (podman_jobs.clone(), fixtures.clone());
        checks.push((
            fixture.name,
            tokio::spawn(async move {
                if let Err(stderr) = built.await.expect("reference task") {
                    return vec![format!("raw podman failed: {stderr}")];
                }
                let _job = jobs.acquire_owned().await.expect("semaphore");
                tokio::task::spawn_blocking(move || compare(&fixtures[n], &image, &tag))
                    .await
                    .expect("comparison")
            }),
        ));
    }
    for (name, check) in checks {
        let differences = check.await.expect("check task");
        if !differences.is_empty() {
            failures.push(format!("{name}: differs\n  {}", differences.join("\n  ")));
        }
    }
    eprintln!(
        "{} fixtures compared after {:?}",
        fixtures.len(),
        started.elapsed()
    );
    let log = worker.log();
    worker.stop().await;
    stack.cleanup().await;
    image_tree::untag(&base);
    for (fixture, line) in [
        (
            "copy_link",
            "dropped --link from COPY (line 4), COPY (line 5), COPY (line 8)",
        ),
        ("healthcheck", "building with --format docker"),
    ] {
        if !log.contains(line) {
            failures.push(format!("{fixture}: the build log lacks {line:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
