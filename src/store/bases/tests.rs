use super::*;
use crate::events::{BuildRef, ImageUpdated};
use crate::store::{BuildState, NewBuild};

const OLD: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
const NEW: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000002";
const BASE: &str = "reg.test/base:v1";

async fn store() -> (tempfile::TempDir, BuildStore) {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("b.db").display());
    (dir, BuildStore::connect(&url).await.expect("store"))
}

fn base(stage: &str, is_final: bool, reference: &str, digest: &str) -> BaseImage {
    BaseImage {
        stage: stage.into(),
        is_final,
        written: reference.into(),
        reference: reference.into(),
        digest: digest.into(),
        also: vec![],
    }
}

/// Records build `id` of configuration `fingerprint` as pushed on `bases`.
async fn pushed(store: &BuildStore, id: &str, fingerprint: &str, bases: Vec<BaseImage>) {
    let new = NewBuild {
        id: id.into(),
        request_id: id.into(),
        user_id: Some("u".into()),
        repo: Some("acme/app".into()),
        git_ref: Some("main".into()),
        request: serde_json::json!({"id": id, "repo": "acme/app"}),
        rebuild_of: None,
        fingerprint: Some(fingerprint.into()),
    };
    store
        .create(&new, BuildState::Queued)
        .await
        .expect("create");
    let out = ImageUpdated {
        build: BuildRef {
            build_id: id.into(),
            request_id: id.into(),
            user_id: Some("u".into()),
            repo: Some("acme/app".into()),
            git_ref: Some("main".into()),
        },
        commit: "c".repeat(40),
        image: "reg.test/u/app".into(),
        tags: vec![],
        digest: format!("sha256:{id}"),
        platforms: vec![],
        cached: false,
        duration_ms: 1,
        finished_at: time::OffsetDateTime::now_utc(),
        artifacts: vec![],
        how: Default::default(),
        why: String::new(),
        bases,
    };
    store.succeeded(id, 1, &out, None).await.expect("succeeded");
    // finished_at is in milliseconds: the next build of a configuration is newer.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
}

#[tokio::test]
async fn only_each_configurations_newest_image_on_another_digest_depends_on_a_move() {
    let (_dir, store) = store().await;
    // Configuration a: built on the old digest, then again on the new one.
    pushed(&store, "a1", "fp-a", vec![base("0", true, BASE, OLD)]).await;
    pushed(&store, "a2", "fp-a", vec![base("0", true, BASE, NEW)]).await;
    // Configuration b: its newest image is on the old digest (in a builder stage).
    pushed(
        &store,
        "b1",
        "fp-b",
        vec![
            base("build", false, BASE, OLD),
            base("1", true, "reg.test/other:1", OLD),
        ],
    )
    .await;
    // Configuration c: moved away from the base altogether.
    pushed(&store, "c1", "fp-c", vec![base("0", true, BASE, OLD)]).await;
    pushed(
        &store,
        "c2",
        "fp-c",
        vec![base("0", true, "reg.test/x:1", OLD)],
    )
    .await;
    // Configuration e: on the new image, known locally by another digest first.
    let mut known = base("0", true, BASE, OLD);
    known.digest = "sha256:local".into();
    known.also = vec![NEW.into()];
    pushed(&store, "e1", "fp-e", vec![known.clone()]).await;
    assert_eq!(
        store
            .bases_of("reg.test/u/app", "sha256:e1")
            .await
            .expect("bases"),
        [known]
    );
    // Pinned references are never watched.
    pushed(
        &store,
        "d1",
        "fp-d",
        vec![base("0", true, "reg.test/p@sha256:1", OLD)],
    )
    .await;

    let dependents = store.dependents(BASE, &[NEW.into()]).await.expect("query");
    let ids: Vec<&str> = dependents.iter().map(|d| d.build_id.as_str()).collect();
    assert_eq!(ids, ["b1"]);
    assert_eq!(dependents[0].digest, OLD);
    assert_eq!(dependents[0].commit, "c".repeat(40));
    assert_eq!(dependents[0].request["id"], "b1");
    assert_eq!(
        store.watched_bases().await.expect("watched"),
        [BASE, "reg.test/other:1", "reg.test/x:1"]
    );
    assert_eq!(
        store
            .bases_of("reg.test/u/app", "sha256:b1")
            .await
            .expect("bases"),
        [
            base("1", true, "reg.test/other:1", OLD),
            base("build", false, BASE, OLD)
        ]
    );
}

#[tokio::test]
async fn a_move_is_decided_once_until_its_claim_lapses_unfinished() {
    let (_dir, store) = store().await;
    assert!(
        store
            .decide_base_move(BASE, NEW, "poll", "h1")
            .await
            .expect("decide")
    );
    assert!(
        !store
            .decide_base_move(BASE, NEW, "notification", "h2")
            .await
            .expect("decide")
    );
    // Another digest is another decision.
    assert!(
        store
            .decide_base_move(BASE, OLD, "poll", "h2")
            .await
            .expect("decide")
    );
    // A claim that lapsed before its rebuilds were published is taken over once.
    sqlx::query("UPDATE base_moves SET claim_until = 0 WHERE digest = $1")
        .bind(NEW)
        .execute(&store.writer)
        .await
        .expect("lapse");
    assert!(
        store
            .decide_base_move(BASE, NEW, "poll", "h2")
            .await
            .expect("decide")
    );
    assert!(
        !store
            .decide_base_move(BASE, NEW, "poll", "h3")
            .await
            .expect("decide")
    );
    store.base_move_done(BASE, NEW, 2).await.expect("done");
    sqlx::query("UPDATE base_moves SET claim_until = 0")
        .execute(&store.writer)
        .await
        .expect("lapse");
    assert!(
        !store
            .decide_base_move(BASE, NEW, "poll", "h3")
            .await
            .expect("decide")
    );
}
