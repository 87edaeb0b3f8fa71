//! `pipeline::run` over in-process fakes: no git, podman or registry.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Job, run};
use crate::build_log::BuildLog;
use crate::error::{BuildError, Fault, RegistryError};
use crate::ports::Environment;
use crate::redact::Redactor;
use crate::request::{BuildRequest, RequestPolicy};
use crate::testing::{self, FakeEngine, FakeRegistry, FakeSource, RecordedDigests};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Fixture {
    env: Environment,
    source: Arc<FakeSource>,
    engine: Arc<FakeEngine>,
    registry: Arc<FakeRegistry>,
    recorded: Arc<RecordedDigests>,
    work: tempfile::TempDir,
}

fn fixture(slots: usize) -> Fixture {
    let work = tempfile::tempdir().expect("work dir");
    let source = Arc::new(FakeSource::new(COMMIT));
    let registry = Arc::new(FakeRegistry::default());
    let engine = Arc::new(FakeEngine::new(registry.clone()));
    let recorded = Arc::new(RecordedDigests::default());
    let env = testing::environment(
        work.path(),
        source.clone(),
        engine.clone(),
        registry.clone(),
        recorded.clone(),
        slots,
    );
    Fixture {
        env,
        source,
        engine,
        registry,
        recorded,
        work,
    }
}

fn job(id: &str) -> Job {
    let policy = RequestPolicy {
        max_body_bytes: 65536,
        allowed_schemes: vec!["https".into()],
    };
    let body = format!(r#"{{"id":"{id}","repo":"acme/app","user_id":"u1","tags":["v1"]}}"#);
    Job {
        request: BuildRequest::parse(body.as_bytes(), &policy, None).expect("valid request"),
        build_id: id.to_owned(),
        attempt: 1,
    }
}

async fn build(f: &Fixture, id: &str) -> Result<crate::events::ImageUpdated, BuildError> {
    let (job, log, cancel) = (
        job(id),
        BuildLog::new(Redactor::default()),
        CancellationToken::new(),
    );
    tokio::time::timeout(Duration::from_secs(10), run(&f.env, &job, &log, &cancel))
        .await
        .expect("the build ends")
}

#[tokio::test]
async fn a_build_is_pushed_under_every_tag_the_build_key_and_the_lineage_tag_each_once() {
    let f = fixture(1);
    let updated = build(&f, "r1").await.expect("pushed");
    assert!(!updated.cached);
    assert_eq!(updated.how, crate::events::How::Full);
    assert!(!updated.why.is_empty(), "a full build says why");
    assert_eq!(updated.image, "registry.test/u1/app");
    assert_eq!(updated.commit, COMMIT);
    assert_eq!(updated.tags, ["0123456789ab", "main", "latest", "v1"]);
    assert_eq!(f.engine.build_count(), 1);

    let mut written: Vec<String> = f
        .registry
        .tags_written()
        .into_iter()
        .map(|(repository, tag)| {
            assert_eq!(repository, "u1/app");
            tag
        })
        .collect();
    written.sort();
    let keys: Vec<&String> = written
        .iter()
        .filter(|t| t.starts_with("ib-") && !t.starts_with("ib-line-"))
        .collect();
    let lineage: Vec<&String> = written
        .iter()
        .filter(|t| t.starts_with("ib-line-"))
        .collect();
    assert_eq!((keys.len(), lineage.len()), (1, 1), "{written:?}");
    for tag in &updated.tags {
        assert_eq!(
            written.iter().filter(|t| *t == tag).count(),
            1,
            "{written:?}"
        );
    }
    assert!(
        std::fs::read_dir(f.work.path())
            .expect("work dir")
            .next()
            .is_none(),
        "the per-build work dir is removed"
    );
}

#[tokio::test]
async fn an_identical_recorded_build_is_answered_from_the_registry_without_a_build_slot() {
    let mut f = fixture(1);
    let first = build(&f, "r1").await.expect("pushed");
    f.recorded.trust(&first.image, &first.digest);
    // No slot at all: only an answer that needs none can finish.
    f.env.build_slots = Arc::new(tokio::sync::Semaphore::new(0));
    let second = build(&f, "r2").await.expect("answered");
    assert!(second.cached);
    assert_eq!(second.how, crate::events::How::Cached);
    assert!(second.why.contains(&first.digest), "{}", second.why);
    assert_eq!(second.digest, first.digest);
    assert_eq!(f.engine.build_count(), 1, "nothing built again");
    assert_eq!(
        f.source.checkouts.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn the_build_key_of_a_commit_being_fetched_is_checked_beside_the_fetch_once() {
    let mut f = fixture(1);
    let first = build(&f, "r1").await.expect("pushed");
    f.recorded.trust(&first.image, &first.digest);
    let key = f
        .registry
        .tags_written()
        .into_iter()
        .map(|(_, tag)| tag)
        .find(|t| t.starts_with("ib-") && !t.starts_with("ib-line-"))
        .expect("the build key was written");
    let looked_up = f.registry.lookups_of(&key);
    *f.source.fetching.lock().expect("lock") = Some(COMMIT.to_owned());
    f.env.build_slots = Arc::new(tokio::sync::Semaphore::new(0));
    let second = build(&f, "r2").await.expect("answered");
    assert!(second.cached);
    assert_eq!(f.registry.lookups_of(&key), looked_up + 1, "checked once");
}

#[tokio::test]
async fn the_image_an_edit_starts_from_is_read_once_beside_the_fetch_or_after_it() {
    for fetched in [true, false] {
        let mut f = fixture(1);
        f.env.settings = Arc::new(crate::ports::PipelineSettings {
            incremental: true,
            ..(*f.env.settings).clone()
        });
        if fetched {
            *f.source.fetching.lock().expect("lock") = Some(COMMIT.to_owned());
        }
        build(&f, "r1").await.expect("pushed");
        let lineage = f
            .registry
            .lookups
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.starts_with("ib-line-"))
            .count();
        assert_eq!(lineage, 1, "fetched: {fetched}");
    }
}

#[tokio::test]
async fn a_build_key_checked_for_another_commit_than_the_one_resolved_is_not_the_answer() {
    let mut f = fixture(1);
    let first = build(&f, "r1").await.expect("pushed");
    f.recorded.trust(&first.image, &first.digest);
    // The fetch announced the commit built before; the ref names another one by now.
    let other = "fedcba9876543210fedcba9876543210fedcba98";
    let source = Arc::new(FakeSource::new(other));
    *source.fetching.lock().expect("lock") = Some(COMMIT.to_owned());
    f.env.source = source;
    let second = build(&f, "r2").await.expect("pushed");
    assert!(!second.cached, "{}", second.why);
    assert_eq!(second.commit, other);
    assert_eq!(f.engine.build_count(), 2);
}

#[tokio::test]
async fn a_tag_this_service_did_not_record_is_built_again() {
    let f = fixture(1);
    build(&f, "r1").await.expect("pushed");
    let second = build(&f, "r2").await.expect("pushed");
    assert!(!second.cached);
    assert_eq!(f.engine.build_count(), 2);
}

#[tokio::test]
async fn errors_keep_their_fault() {
    let f = fixture(1);
    f.source
        .fail_next_resolve(BuildError::RefNotFound("nope".into()));
    let err = build(&f, "r1").await.expect_err("fails");
    assert_eq!(err.classify(), Fault::User, "{err}");

    f.engine
        .fail_next_build(BuildError::Engine(crate::error::EngineError::Said(
            "podman crashed".into(),
        )));
    let err = build(&f, "r2").await.expect_err("fails");
    assert_eq!(err.classify(), Fault::Service, "{err}");

    f.registry.fail_next_lookup(RegistryError::Status {
        status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
        doing: "for u1/app:latest".into(),
    });
    let err = build(&f, "r3").await.expect_err("fails");
    assert_eq!(err.classify(), Fault::Service, "{err}");
}

#[tokio::test]
async fn a_build_waiting_for_a_slot_can_be_cancelled() {
    let f = fixture(0);
    let cancel = CancellationToken::new();
    let log = BuildLog::new(Redactor::default());
    let job = job("r1");
    let run = run(&f.env, &job, &log, &cancel);
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(run, canceller);
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    assert!(
        log.tail(10)
            .iter()
            .any(|l| l.contains("waiting for a build slot"))
    );
    assert_eq!(f.engine.build_count(), 0);
}

fn base_image() -> crate::events::BaseImage {
    crate::events::BaseImage {
        stage: "0".into(),
        is_final: true,
        written: "reg.test/base:v1".into(),
        reference: "reg.test/base:v1".into(),
        digest: format!("sha256:{}", "1".repeat(64)),
        also: vec![],
    }
}

#[tokio::test]
async fn the_bases_are_reported_and_a_cached_answer_carries_those_of_the_image_it_reuses() {
    let f = fixture(1);
    f.engine.build_on(vec![base_image()]);
    let first = build(&f, "r1").await.expect("pushed");
    assert_eq!(first.bases, [base_image()]);
    f.recorded
        .trust_on(&first.image, &first.digest, first.bases.clone());
    f.engine.build_on(Vec::new());
    let second = build(&f, "r2").await.expect("answered");
    assert_eq!(second.how, crate::events::How::Cached);
    assert_eq!(second.bases, [base_image()]);
}

#[tokio::test]
async fn a_base_update_builds_the_same_configuration_again_and_pulls_the_moved_base() {
    let f = fixture(1);
    f.engine.build_on(vec![base_image()]);
    let first = build(&f, "r1").await.expect("pushed");
    f.recorded.trust(&first.image, &first.digest);
    let moved = format!("sha256:{}", "2".repeat(64));
    let mut rebuild = job("r2");
    rebuild.request.base_update = Some(crate::request::BaseUpdate {
        reference: "reg.test/base:v1".into(),
        digest: moved.clone(),
        commit: COMMIT.into(),
    });
    let log = BuildLog::new(Redactor::default());
    let updated = run(&f.env, &rebuild, &log, &CancellationToken::new())
        .await
        .expect("rebuilt");
    assert_eq!(f.engine.build_count(), 2, "not answered from the build key");
    assert_eq!(updated.how, crate::events::How::Full);
    assert_eq!(
        updated.why,
        format!("base reg.test/base:v1 moved to {moved}")
    );
    assert_eq!(updated.commit, COMMIT);
    let refreshed = f.engine.refreshed.lock().expect("lock").clone();
    assert_eq!(refreshed, [vec![], vec!["reg.test/base:v1".to_owned()]]);
}
