//! Resolving a ref against real git servers: one ref listing round trip, a fetch only when the
//! mirror lacks the commit, a shallow first fetch deepened when an incremental diff needs an
//! earlier commit. Requests are counted at the smart-HTTP server, not timed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository};
use image_builder::error::{BuildError, Fault};
use image_builder::ports::{Checkout, SourceFetcher, SourceSpec};
use image_builder::request::{GitRef, RefKind};
use image_builder::source::{GitLimits, GitMirrors};
use serde_json::json;

use crate::egress::ctx_for;
use crate::git_limits::loopback;
use crate::support::git_server::{Requests, git_daemon};
use crate::support::{GitServer, RepoFixture, Stack, Worker, expect_image, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
/// Bounds each git call, so one that never returns fails the test instead of hanging the run.
const OUTER: Duration = Duration::from_secs(120);

fn mirrors(dir: &Path) -> GitMirrors {
    // libgit2's socket timeout is process-wide: the value git_limits uses.
    image_builder::source::configure_git_timeouts(Duration::from_secs(3));
    let limits = GitLimits {
        checkout_mb: 64,
        fetch_mb: 64,
        stall_secs: 3,
    };
    GitMirrors::new(dir.join("cache"), u64::MAX, limits, loopback())
}

fn spec(url: &str, git_ref: Option<&str>, kind: RefKind, token: Option<&str>) -> SourceSpec {
    SourceSpec {
        remote: url::Url::parse(url).expect("url"),
        username: "x-access-token".into(),
        token: token.map(|t| t.to_owned().into()),
        git_ref: git_ref.map(|r| GitRef::parse(r).expect("valid ref")),
        ref_kind: kind,
    }
}

/// Resolves `spec`; returns the checkout and the build log's lines.
async fn resolve(
    mirrors: &GitMirrors,
    spec: &SourceSpec,
    dir: &Path,
) -> (Result<Checkout, BuildError>, Vec<String>) {
    let ctx = ctx_for(dir, OUTER);
    let resolved = tokio::time::timeout(OUTER, mirrors.resolve(spec, &ctx))
        .await
        .expect("resolve returned");
    (resolved, ctx.log.tail(100))
}

/// The only mirror in the cache of `mirrors(dir)`.
fn mirror_dir(dir: &Path) -> PathBuf {
    let cache = dir.join("cache");
    let mut found = std::fs::read_dir(&cache)
        .expect("cache dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.extension().is_some_and(|e| e == "git"));
    let mirror = found.next().expect("a mirror");
    assert!(found.next().is_none(), "one mirror");
    mirror
}

fn has_commit(mirror: &Path, sha: &str) -> bool {
    let repo = Repository::open_bare(mirror).expect("mirror");
    repo.find_commit(Oid::from_str(sha).expect("sha")).is_ok()
}

fn fetched(log: &[String]) -> bool {
    !log.iter().any(|line| line.ends_with("no fetch"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_ref_is_answered_from_one_listing_and_a_moved_one_is_fetched() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/resolve");
    let one = fixture.commit(&[("README", "one\n")], "one");
    fixture.push();
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path());
    let spec = spec(
        &format!("{}/acme/resolve.git", git.base_url),
        None,
        RefKind::Repo,
        None,
    );

    let (first, log) = resolve(&mirrors, &spec, dir.path()).await;
    let first = first.expect("resolves");
    assert_eq!(
        (first.commit.as_str(), first.ref_name.as_str()),
        (one.as_str(), "main")
    );
    assert!(first.is_default_branch);
    assert!(fetched(&log), "{log:?}");
    let after_first = git.requests_for("acme/resolve");
    assert!(after_first.negotiations >= 1, "{after_first:?}");

    for round in 1..=3 {
        let (again, log) = resolve(&mirrors, &spec, dir.path()).await;
        assert_eq!(again.expect("resolves"), first);
        assert!(!fetched(&log), "{log:?}");
        assert_eq!(
            git.requests_for("acme/resolve"),
            Requests {
                listings: after_first.listings + round,
                negotiations: after_first.negotiations,
            },
            "one listing request per cached answer, no fetch"
        );
    }

    let two = fixture.commit(&[("README", "two\n")], "two");
    fixture.push();
    let (moved, log) = resolve(&mirrors, &spec, dir.path()).await;
    assert_eq!(moved.expect("resolves").commit, two);
    assert!(fetched(&log), "{log:?}");
    let after_move = git.requests_for("acme/resolve");
    assert!(
        after_move.negotiations > after_first.negotiations,
        "{after_move:?}"
    );
    // The fetch went over the listing's connection: no second listing.
    assert_eq!(
        after_move.listings,
        after_first.listings + 4,
        "one listing for the moved ref: {after_move:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.ends_with("fetched over the listing's connection")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_a_release_a_branch_and_a_sha_resolve_and_a_missing_ref_is_named() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/refs");
    let initial = fixture.commit(&[("README", "0\n")], "initial");
    let v1 = fixture.commit(&[("README", "1\n")], "one");
    fixture.tag("v1.0.0");
    let v12 = fixture.commit(&[("README", "2\n")], "two");
    fixture.tag("v1.2.0");
    fixture.checkout_new_branch("feature");
    let feature = fixture.commit(&[("feature", "f\n")], "feature");
    fixture.checkout("main");
    let main = fixture.commit(&[("README", "3\n")], "three");
    fixture.tag("v2.0.0-rc.1");
    fixture.push();
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path());
    let url = format!("{}/acme/refs.git", git.base_url);
    let want = |git_ref: Option<&str>, kind| spec(&url, git_ref, kind, None);

    let cases = [
        (None, RefKind::Repo, &main, "main", true),
        (Some("feature"), RefKind::Repo, &feature, "feature", false),
        (Some("v1.0.0"), RefKind::Tag, &v1, "v1.0.0", false),
        (None, RefKind::Release, &v12, "v1.2.0", false),
        // Not a tip: in no shallow fetch so far, so the whole history is fetched for it.
        (
            Some(initial.as_str()),
            RefKind::Repo,
            &initial,
            &initial,
            false,
        ),
    ];
    for (git_ref, kind, commit, name, default) in cases {
        let (resolved, log) = resolve(&mirrors, &want(git_ref, kind), dir.path()).await;
        let resolved = resolved.unwrap_or_else(|e| panic!("{git_ref:?} {kind:?}: {e}"));
        assert_eq!(
            (
                resolved.commit.as_str(),
                resolved.ref_name.as_str(),
                resolved.is_default_branch
            ),
            (commit.as_str(), name, default),
            "{git_ref:?} {kind:?}: {log:?}"
        );
    }
    // All of them are in the mirror now: answered from listings alone.
    let before = git.requests_for("acme/refs");
    for (git_ref, kind) in [(None, RefKind::Release), (Some("feature"), RefKind::Repo)] {
        let (resolved, log) = resolve(&mirrors, &want(git_ref, kind), dir.path()).await;
        resolved.expect("resolves");
        assert!(!fetched(&log), "{log:?}");
    }

    for (git_ref, kind, message) in [
        (Some("nope"), RefKind::Repo, "no branch or tag named nope"),
        (Some("feature"), RefKind::Tag, "no tag named feature"),
    ] {
        let (missing, _) = resolve(&mirrors, &want(git_ref, kind), dir.path()).await;
        let err = missing.expect_err("no such ref");
        assert_eq!(err.classify(), Fault::User, "{err}");
        assert!(
            matches!(&err, BuildError::RefNotFound(m) if m == message),
            "{err:?}"
        );
    }
    let after = git.requests_for("acme/refs");
    assert_eq!(after.negotiations, before.negotiations, "no fetch for any");
    assert_eq!(after.listings, before.listings + 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_repository_resolves_with_its_token_and_a_missing_or_wrong_one_is_refused() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/private");
    let head = fixture.commit(&[("README", "secret\n")], "one");
    fixture.push();
    git.make_private("acme/private", "s3cret-token");
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path());
    let url = format!("{}/acme/private.git", git.base_url);

    for round in 0..2 {
        let with_token = spec(&url, None, RefKind::Repo, Some("s3cret-token"));
        let (resolved, log) = resolve(&mirrors, &with_token, dir.path()).await;
        assert_eq!(resolved.expect("resolves with the token").commit, head);
        assert_eq!(fetched(&log), round == 0, "{log:?}");
        assert!(!log.iter().any(|l| l.contains("s3cret")), "{log:?}");
    }
    let (without, _) = resolve(&mirrors, &spec(&url, None, RefKind::Repo, None), dir.path()).await;
    let err = without.expect_err("no token");
    assert!(
        matches!(&err, BuildError::AuthRefused(m) if m.contains("has no token")),
        "{err:?}"
    );
    let wrong = spec(&url, None, RefKind::Repo, Some("wrong"));
    let (wrong, _) = resolve(&mirrors, &wrong, dir.path()).await;
    let err = wrong.expect_err("wrong token");
    assert!(
        matches!(&err, BuildError::AuthRefused(m) if m.contains("refused the token")),
        "{err:?}"
    );
    assert_eq!(err.classify(), Fault::User);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_fetch_is_shallow_and_an_incremental_diff_deepens_it() {
    let git = GitServer::start().await;
    let fixture = RepoFixture::create(git.root.path(), "acme/shallow");
    let c1 = fixture.commit(&[("a", "1\n"), ("b", "1\n")], "one");
    let c2 = fixture.commit(&[("a", "2\n")], "two");
    let c3 = fixture.commit(&[("b", "3\n")], "three");
    fixture.push();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let _daemon = git_daemon(git.root.path(), "127.0.0.1", port).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path());
    let spec = spec(
        &format!("git://127.0.0.1:{port}/acme/shallow.git"),
        Some("main"),
        RefKind::Repo,
        None,
    );
    let ctx = ctx_for(dir.path(), OUTER);

    let (first, _) = resolve(&mirrors, &spec, dir.path()).await;
    assert_eq!(first.expect("resolves").commit, c3);
    let mirror = mirror_dir(dir.path());
    assert!(mirror.join("shallow").is_file(), "a shallow mirror");
    assert!(!has_commit(&mirror, &c2), "depth 1: no history");
    let (again, log) = resolve(&mirrors, &spec, dir.path()).await;
    assert_eq!(again.expect("resolves").commit, c3);
    assert!(!fetched(&log), "{log:?}");

    // A warm rebuild of the next commit: its fetch is shallow too, and the diff against the
    // commit built before needs no history.
    let c4 = fixture.commit(&[("a", "4\n")], "four");
    fixture.push();
    let (next, _) = resolve(&mirrors, &spec, dir.path()).await;
    assert_eq!(next.expect("resolves").commit, c4);
    let changed = mirrors.changed_paths(&spec, &c3, &c4, &ctx).await;
    assert_eq!(changed.expect("diff"), Some(vec!["a".to_owned()]));
    assert!(!has_commit(&mirror, &c2), "still shallow");

    // An earlier commit this mirror never fetched: the history comes, the diff is made.
    let changed = mirrors.changed_paths(&spec, &c1, &c4, &ctx).await;
    assert_eq!(
        changed.expect("diff"),
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    assert!(has_commit(&mirror, &c2), "deepened");
    assert!(!mirror.join("shallow").exists(), "made whole");
    // A commit that is nowhere in the history still says "not there".
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let changed = mirrors.changed_paths(&spec, unknown, &c4, &ctx).await;
    assert_eq!(changed.expect("diff"), None);
}

/// A push that extends the ref a shallow mirror holds is fetched onto the mirror's tips: one
/// request, however many builds came before (libgit2 offers history in rounds of 20), and the
/// mirror stays shallow. A rewritten history is not fetched whole: the pack's header shows too
/// many objects, that fetch stops, and the tip alone comes.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_onto_the_mirrors_tip_is_one_request_and_a_rewritten_history_is_not_fetched_whole() {
    let git = GitServer::start().await;
    let name = "acme/ontotips";
    let fixture = RepoFixture::create(git.root.path(), name);
    let one = fixture.commit(&[("a", "1\n")], "one");
    let two = fixture.commit(&[("b", "2\n")], "two");
    fixture.push();
    let dir = tempfile::tempdir().expect("tempdir");
    let mirrors = mirrors(dir.path());
    let spec = spec(
        &format!("{}/{name}.git", git.base_url),
        Some("main"),
        RefKind::Repo,
        None,
    );
    let (first, _) = resolve(&mirrors, &spec, dir.path()).await;
    assert_eq!(first.expect("resolves").commit, two);
    let mirror = mirror_dir(dir.path());
    assert!(!has_commit(&mirror, &one), "a shallow first fetch");

    for n in 0..25 {
        let before = git.requests_for(name);
        let next = fixture.commit(&[("a", &format!("{n}\n"))], "next");
        fixture.push();
        let (resolved, log) = resolve(&mirrors, &spec, dir.path()).await;
        assert_eq!(resolved.expect("resolves").commit, next, "{log:?}");
        let after = git.requests_for(name);
        assert_eq!(
            after.negotiations,
            before.negotiations + 1,
            "push {n}: one fetch request: {log:?}"
        );
    }
    // Two commits in one push: both come, in one request.
    let before = git.requests_for(name);
    let between = fixture.commit(&[("b", "between\n")], "between");
    let last = fixture.commit(&[("b", "last\n")], "last");
    fixture.push();
    let (resolved, _) = resolve(&mirrors, &spec, dir.path()).await;
    assert_eq!(resolved.expect("resolves").commit, last);
    assert!(has_commit(&mirror, &between), "the history onto the tip");
    assert_eq!(git.requests_for(name).negotiations, before.negotiations + 1);
    assert!(!has_commit(&mirror, &one), "still shallow");
    assert!(mirror.join("shallow").is_file());

    // A history with nothing in common, 120 commits long, force-pushed over main.
    let work = fixture.work_dir();
    let git_in_work = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(work)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    };
    git_in_work(&["checkout", "-q", "--orphan", "rewritten"]);
    let root = fixture.commit(&[("c/0", "0\n")], "root");
    for n in 1..120 {
        fixture.commit(&[(&format!("c/{n}"), &format!("{n}\n"))], "more");
    }
    let rewritten = fixture.head();
    git_in_work(&["push", "-q", "-f", "origin", "rewritten:main"]);
    let (resolved, log) = resolve(&mirrors, &spec, dir.path()).await;
    assert_eq!(resolved.expect("resolves").commit, rewritten, "{log:?}");
    assert!(
        !has_commit(&mirror, &root),
        "the rewritten history was fetched whole: {log:?}"
    );
}

/// A worker whose mirror of the repository is gone (evicted, or a new replica sharing the store)
/// fetches it anew, shallow, and still edits the image it built before instead of building it
/// again: the diff fetches the history it needs.
#[tokio::test(flavor = "multi_thread")]
async fn a_warm_rebuild_on_a_new_shallow_mirror_takes_the_incremental_path() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/shallowincr");
    let dockerfile = "FROM localhost/busybox:latest\nCOPY deps.txt /deps.txt\n\
        RUN cp /deps.txt /deps.copy\nCOPY src/ /app/src/\n";
    repo.commit(
        &[
            ("Dockerfile", dockerfile),
            ("deps.txt", "deps\n"),
            ("src/main.txt", "one\n"),
        ],
        "one",
    );
    repo.commit(&[("README.md", "history\n")], "two");
    repo.push();
    let mut stack = Stack::new().await;
    let user = unique("u");
    let request = |id: &str| json!({"id": id, "repo": "acme/shallowincr", "user_id": user});
    let worker = Worker::spawn(&stack, &git, &[]).await;
    stack.publish_json(&request("first")).await;
    let first = expect_image(stack.outcome("first", BUILD_TIMEOUT).await);
    assert_eq!(first.how, image_builder::events::How::Full);

    // No build runs: the mirror goes as an eviction would take it.
    let cache = worker.data_dir.path().join("data").join("git-cache");
    assert!(
        cache.is_dir(),
        "the worker's git cache is {}",
        cache.display()
    );
    std::fs::remove_dir_all(&cache).expect("mirror removed");
    let third = repo.commit(&[("src/main.txt", "three\n")], "three");
    repo.push();
    stack.publish_json(&request("second")).await;
    let second = expect_image(stack.outcome("second", BUILD_TIMEOUT).await);
    assert_eq!(second.commit, third);
    let log = worker.log();
    assert_eq!(
        second.how,
        image_builder::events::How::Incremental,
        "{}\n{log}",
        second.why
    );
    assert!(
        log.contains("is not in the shallow mirror: fetching the history of refs/heads/main"),
        "{log}"
    );
    worker.stop().await;
    stack.cleanup().await;
}

/// A build's checkout is kept for the repository's next build, which writes only what its commit
/// changed, and the image is what a fresh checkout gives: the deleted file and the directory it
/// left empty are gone, the new file in a new directory is there, the changed one changed.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_build_of_a_repository_brings_the_kept_checkout_to_its_commit() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/kept");
    // A RUN after the COPY: built by podman from the checkout, never edited in the registry.
    let dockerfile = "FROM localhost/busybox:latest\nCOPY . /app\n\
        RUN find /app | sort > /seen && cat /app/a.txt >> /seen\n";
    repo.commit(
        &[
            ("Dockerfile", dockerfile),
            ("a.txt", "one\n"),
            ("gone/x.txt", "x\n"),
        ],
        "one",
    );
    repo.push();
    let mut stack = Stack::new().await;
    let worker = Worker::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let build = |id: &str, image: &str| json!({"id": id, "repo": "acme/kept", "user_id": user, "image": image});
    stack.publish_json(&build("kept-1", "kept1")).await;
    expect_image(stack.outcome("kept-1", BUILD_TIMEOUT).await);

    repo.remove("gone/x.txt");
    repo.commit(&[("a.txt", "two\n"), ("new/deep/y.txt", "y\n")], "two");
    repo.push();
    // The tree is kept just after the first build's outcome: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kept_trees(&worker) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkout kept:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.publish_json(&build("kept-2", "kept2")).await;
    expect_image(stack.outcome("kept-2", BUILD_TIMEOUT).await);
    let log = worker.log();
    assert!(
        log.contains("(2 file(s) written, 1 removed)"),
        "the kept tree was not used:\n{log}"
    );
    let seen = crate::support::image_blobs::file_of(&format!("{user}/kept2"), "seen").await;
    let want =
        "/app\n/app/Dockerfile\n/app/a.txt\n/app/new\n/app/new/deep\n/app/new/deep/y.txt\ntwo\n";
    assert_eq!(seen, want);
    worker.stop().await;
    stack.cleanup().await;
}

/// How many checkouts the worker keeps now.
fn kept_trees(worker: &Worker) -> usize {
    std::fs::read_dir(worker.data_dir.path().join("data/work/.kept"))
        .map(|dir| {
            dir.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}
