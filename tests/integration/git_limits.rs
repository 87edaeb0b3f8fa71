//! Hostile git hosts and repositories: a fetch or checkout fails naming the bound it passed,
//! releases its thread and the mirror's lock, and writes nothing big.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image_builder::build_log::BuildLog;
use image_builder::error::{BuildError, Fault};
use image_builder::events::Event;
use image_builder::ports::BuildCtx;
use image_builder::ports::{SourceFetcher, SourceSpec};
use image_builder::redact::Redactor;
use image_builder::source::{GitLimits, GitMirrors, NetworkPolicy};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::hostile_repos::{self, Mode, Relay};
use crate::support::{GitServer, Stack, Worker, unique};

/// libgit2's socket timeout is process-wide: every test here uses this one.
const STALL: Duration = Duration::from_secs(3);
/// Bounds each test, so a fetch that never returns fails it instead of hanging the run.
const OUTER: Duration = Duration::from_secs(240);

fn limits(checkout_mb: u64, fetch_mb: u64) -> GitLimits {
    image_builder::source::configure_git_timeouts(STALL);
    GitLimits {
        checkout_mb,
        fetch_mb,
        stall_secs: STALL.as_secs(),
    }
}

/// A mirror cache at `cache` (unbounded) with these limits, reaching loopback.
fn mirrors(cache: PathBuf, checkout_mb: u64, fetch_mb: u64) -> GitMirrors {
    GitMirrors::new(cache, u64::MAX, limits(checkout_mb, fetch_mb), loopback())
}

/// The local git server listens on loopback, which fetches reach only when allowed.
pub fn loopback() -> NetworkPolicy {
    NetworkPolicy::allowing(vec!["127.0.0.0/8".parse().expect("cidr")])
}

fn spec(base_url: &str, repo: &str) -> SourceSpec {
    SourceSpec {
        remote: url::Url::parse(&format!("{base_url}/{repo}.git")).expect("url"),
        username: "test".into(),
        token: None,
        git_ref: None,
        ref_kind: Default::default(),
    }
}

/// A build context with its own scratch dir, giving up after `time`.
fn build_ctx(scratch: &Path, time: Duration) -> BuildCtx {
    BuildCtx {
        log: BuildLog::new(Redactor::default()),
        cancel: CancellationToken::new(),
        deadline: Instant::now() + time,
        scratch_dir: scratch.to_owned(),
    }
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn size_of(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => size_of(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

async fn bounded<T>(work: impl Future<Output = T>) -> T {
    tokio::time::timeout(OUTER, work)
        .await
        .expect("the git call returned")
}

fn assert_limit(result: Result<impl std::fmt::Debug, BuildError>, setting: &str) {
    match result {
        Err(BuildError::LimitExceeded(reason)) => {
            assert!(reason.contains(setting), "{reason}");
        }
        other => panic!("expected LimitExceeded naming {setting}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_bomb_fails_the_checkout_before_anything_is_written() {
    let git = GitServer::start().await;
    // 1 MiB listed 16 times, three levels deep: 4 GiB once checked out.
    hostile_repos::git_bomb(git.root.path(), "acme/bomb", 1, 16, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path().join("cache"), 8, 64);
    let ctx = build_ctx(dir.path(), OUTER);
    let spec = spec(&git.base_url, "acme/bomb");

    let resolved = bounded(mirrors.resolve(&spec, &ctx)).await.expect("fetch");
    let dest = dir.path().join("src");
    let result = bounded(mirrors.checkout(&spec, &resolved.commit, &dest, &ctx)).await;

    assert_limit(result, "build.limits.checkout_mb = 8");
    assert_eq!(size_of(&dest), 0, "nothing is checked out");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_of_zeros_is_measured_as_it_would_be_written() {
    let git = GitServer::start().await;
    hostile_repos::zeros(git.root.path(), "acme/zeros", 40);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let ctx = build_ctx(dir.path(), OUTER);
    let spec = spec(&git.base_url, "acme/zeros");
    let dest = dir.path().join("src");

    let tight = mirrors(cache.clone(), 16, 64);
    let resolved = bounded(tight.resolve(&spec, &ctx)).await.expect("fetch");
    assert!(
        size_of(&cache) < 4 << 20,
        "40 MiB of zeros fetch as a few kilobytes"
    );
    let result = bounded(tight.checkout(&spec, &resolved.commit, &dest, &ctx)).await;
    assert_limit(result, "build.limits.checkout_mb = 16");
    assert_eq!(size_of(&dest), 0, "nothing is checked out");

    // Under a bound it fits, it is written whole: the measure is the written size.
    let roomy = mirrors(cache, 41, 64);
    bounded(roomy.checkout(&spec, &resolved.commit, &dest, &ctx))
        .await
        .expect("checkout");
    let written = std::fs::metadata(dest.join("zeros.bin")).expect("file");
    assert_eq!(written.len(), 40 << 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_past_fetch_mb_is_aborted_and_leaves_the_mirror_usable() {
    let git = GitServer::start().await;
    hostile_repos::incompressible(git.root.path(), "acme/big", 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let ctx = build_ctx(dir.path(), OUTER);
    let spec = spec(&git.base_url, "acme/big");

    let tight = mirrors(cache.clone(), 64, 1);
    assert_limit(
        bounded(tight.resolve(&spec, &ctx)).await,
        "build.limits.fetch_mb = 1",
    );
    assert!(
        size_of(&cache) < 1 << 20,
        "the partial pack is gone: {} bytes left",
        size_of(&cache)
    );

    let roomy = mirrors(cache, 64, 8);
    let resolved = bounded(roomy.resolve(&spec, &ctx))
        .await
        .expect("the same mirror fetches once the bound allows it");
    assert_eq!(resolved.ref_name, "main");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_git_host_fails_the_fetch_naming_the_stall_bound() {
    let git = GitServer::start().await;
    hostile_repos::incompressible(git.root.path(), "acme/silent", 1);
    let relay = Relay::start(&git.base_url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path().join("cache"), 64, 64);
    let ctx = build_ctx(dir.path(), OUTER);
    let spec = spec(&relay.base_url, "acme/silent");

    relay.set(Mode::Silent);
    match bounded(mirrors.resolve(&spec, &ctx)).await {
        Err(err @ BuildError::GitUnavailable(_)) => {
            assert!(
                err.to_string().contains("build.limits.git_stall_secs = 3"),
                "{err}"
            );
            assert_eq!(err.classify(), Fault::Service);
        }
        other => panic!("expected GitUnavailable, got {other:?}"),
    }

    // The stalled fetch let go of its thread and of the mirror's lock: the same mirror fetches.
    relay.set(Mode::Pass);
    let resolved = bounded(mirrors.resolve(&spec, &ctx)).await.expect("fetch");
    assert_eq!(resolved.ref_name, "main");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_fetch_stops_at_the_deadline() {
    let git = GitServer::start().await;
    // About 160 s through the slow relay.
    hostile_repos::incompressible(git.root.path(), "acme/slow", 8);
    let relay = Relay::start(&git.base_url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path().join("cache"), 64, 64);
    let spec = spec(&relay.base_url, "acme/slow");

    relay.set(Mode::Slow);
    let short = build_ctx(dir.path(), Duration::from_secs(3));
    let result = bounded(mirrors.resolve(&spec, &short)).await;
    assert!(matches!(result, Err(BuildError::TimedOut(_))), "{result:?}");

    // Had the fetch gone on past its deadline (minutes through the slow relay), it would hold
    // the mirror's lock well past this fetch's own deadline.
    relay.set(Mode::Pass);
    let ctx = build_ctx(dir.path(), Duration::from_secs(60));
    bounded(mirrors.resolve(&spec, &ctx))
        .await
        .expect("the mirror is free again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_fetch_lets_go_of_the_mirror() {
    let git = GitServer::start().await;
    hostile_repos::incompressible(git.root.path(), "acme/cancel", 8);
    let relay = Relay::start(&git.base_url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path().join("cache"), 64, 64);
    let spec = spec(&relay.base_url, "acme/cancel");

    relay.set(Mode::Slow);
    let cancelled = build_ctx(dir.path(), OUTER);
    let cancel = cancelled.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        cancel.cancel();
    });
    let result = bounded(mirrors.resolve(&spec, &cancelled)).await;
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");

    // Had the cancelled fetch gone on (minutes through the slow relay), it would hold the
    // mirror's lock well past this fetch's own deadline.
    relay.set(Mode::Pass);
    let ctx = build_ctx(dir.path(), Duration::from_secs(60));
    bounded(mirrors.resolve(&spec, &ctx))
        .await
        .expect("the mirror is free again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_bomb_fails_the_build_as_a_user_fault_naming_the_limit() {
    let git = GitServer::start().await;
    hostile_repos::git_bomb(git.root.path(), "acme/bomb", 1, 16, 3);
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(
        &stack,
        &git,
        &[("IMAGE_BUILDER__BUILD__LIMITS__CHECKOUT_MB", "8")],
    )
    .await;
    let id = unique("bomb-");
    stack
        .publish_json(&json!({"id": id, "repo": "acme/bomb", "user_id": unique("u")}))
        .await;

    let event = stack.outcome(&id, OUTER).await;
    let Event::Failed(failed) = &event else {
        panic!("expected build.failed, got {event:?}\n{}", worker.log());
    };
    assert_eq!(failed.fault, Fault::User, "{failed:?}");
    assert!(
        failed.reason.contains("build.limits.checkout_mb = 8"),
        "{failed:?}"
    );
    assert_eq!(failed.attempts, 1, "a user fault is not retried");

    worker.stop().await;
    stack.cleanup().await;
}
