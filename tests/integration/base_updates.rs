//! When a base image moves, every configuration built on it is rebuilt once, on the new base,
//! with `why` naming the move: through the registry's push notifications, and by polling.
//! A registry of the test's own (notifications configured in its config.yml), two replicas
//! (worker + API each) on one PostgreSQL store, the base pushed from podman under another local
//! name so the workers' podman must pull the moved tag itself.

use std::path::Path;
use std::time::{Duration, Instant};

use image_builder::events::{Event, ImageUpdated};
use serde_json::json;

use crate::support::api::postgres_database;
use crate::support::image_blobs::valid_tar_entries;
use crate::support::image_tree::{podman, untag};
use crate::support::{
    Api, GitServer, RepoFixture, Stack, TestRegistry, expect_image, registry_image_at, unique,
};

const BUILD_TIMEOUT: Duration = Duration::from_secs(240);
/// Time for a second replica's duplicate to show up, were there one.
const QUIET: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_base_rebuilds_each_dependent_once_through_registry_notifications() {
    base_move_rebuilds_dependents(How::Notified).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_base_rebuilds_each_dependent_once_by_polling() {
    base_move_rebuilds_dependents(How::Polled).await;
}

#[derive(Clone, Copy, PartialEq)]
enum How {
    Notified,
    Polled,
}

async fn base_move_rebuilds_dependents(how: How) {
    let git = GitServer::start().await;
    let mut registry = TestRegistry::new();
    let base = format!("{}/{}/base:v1", registry.addr, unique("bases-"));
    let run_app = RepoFixture::create(git.root.path(), "acme/run-app");
    run_app.commit(
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM {base}\nRUN cp /base-version /seen-at-build\nCOPY app.txt /app.txt\n"
                ),
            ),
            ("app.txt", "run app\n"),
        ],
        "one",
    );
    run_app.push();
    let copy_app = RepoFixture::create(git.root.path(), "acme/copy-app");
    copy_app.commit(
        &[
            (
                "Dockerfile",
                &format!("FROM {base}\nCOPY app.txt /app.txt\n"),
            ),
            ("app.txt", "copy app\n"),
        ],
        "one",
    );
    copy_app.push();

    let url = postgres_database().await;
    let key = unique("notify-key-");
    let poll = if how == How::Polled { "300" } else { "0" };
    let env = [
        ("IMAGE_BUILDER__REGISTRY__HOST", registry.addr.as_str()),
        ("IMAGE_BUILDER__STORE__URL", url.as_str()),
        ("IMAGE_BUILDER__BASES__NOTIFY_KEY", key.as_str()),
        ("IMAGE_BUILDER__BASES__POLL_INTERVAL_MS", poll),
    ];
    let mut stack = Stack::new().await;
    let replicas = [
        Api::spawn(&stack, &git, &env).await,
        Api::spawn(&stack, &git, &env).await,
    ];
    // Both replicas are notified: the store, not the registry, makes the decision once.
    let notifications = if how == How::Notified {
        let endpoints: String = replicas
            .iter()
            .enumerate()
            .map(|(n, api)| {
                format!(
                    "    - name: replica{n}\n      url: {}/v1/registry-events\n      headers:\n        Authorization: [Bearer {key}]\n      timeout: 5s\n      threshold: 5\n      backoff: 200ms\n",
                    api.base
                )
            })
            .collect();
        format!("notifications:\n  endpoints:\n{endpoints}")
    } else {
        String::new()
    };
    registry.start_with(&notifications).await;
    if how == How::Notified {
        refuses_other_keys(&replicas[0], &key).await;
    }
    let logs = || {
        replicas
            .iter()
            .map(|r| r.worker.log())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };

    let local = format!("localhost/{}:v", unique("ibt-base-"));
    let v1 = push_base(&local, "1", &base);
    let user = unique("u");
    let (run_id, copy_id) = (unique("run-"), unique("copy-"));
    for (id, repo) in [(&run_id, "acme/run-app"), (&copy_id, "acme/copy-app")] {
        stack
            .publish_json(&json!({"id": id, "repo": repo, "user_id": user}))
            .await;
    }
    for id in [&run_id, &copy_id] {
        let first = expect_image(stack.outcome(id, BUILD_TIMEOUT).await);
        let recorded: Vec<(&str, bool, bool)> = first
            .bases
            .iter()
            .map(|b| (b.reference.as_str(), b.is_final, known_as(b, &v1)))
            .collect();
        assert_eq!(
            recorded,
            [(base.as_str(), true, true)],
            "{id}: {:?}",
            first.bases
        );
    }
    let started = stack.seen.len();

    let v2 = push_base(&local, "2", &base);
    assert_ne!(v1, v2);
    let why = format!("base {base} moved to {v2}");
    let rebuilt = |e: &Event, of: &str| matches!(e, Event::ImageUpdated(u) if u.why == why && u.build.request_id.starts_with(of));
    let mut updated: Vec<ImageUpdated> = Vec::new();
    for id in [&run_id, &copy_id] {
        let event = stack
            .event_where(started, |e| rebuilt(e, id), BUILD_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{id} was not rebuilt on the moved base; logs:\n{}", logs()));
        updated.push(expect_image(event));
    }
    stack.settle("", QUIET).await;
    let after: Vec<&Event> = stack.seen[started..].iter().collect();
    for id in [&run_id, &copy_id] {
        let rebuilds = after.iter().filter(|e| rebuilt(e, id)).count();
        assert_eq!(rebuilds, 1, "{id}: {after:?}");
        let starts = after
            .iter()
            .filter(
                |e| matches!(e, Event::Started(s) if s.build.request_id.starts_with(id.as_str())),
            )
            .count();
        assert_eq!(starts, 1, "{id} built once: {after:?}");
    }
    // The RUN step reads the base: built again. The COPY-only image: moved in the registry.
    assert_eq!(updated[0].how, image_builder::events::How::Full);
    assert_eq!(updated[1].how, image_builder::events::How::Rebased);
    for new in &updated {
        assert_eq!(new.bases.len(), 1);
        let on = &new.bases[0];
        assert!(
            known_as(on, &v2) && !known_as(on, &v1),
            "recorded on the new base: {on:?}"
        );
    }
    let commit = |r: &RepoFixture| r.head();
    assert_eq!(updated[0].commit, commit(&run_app));
    assert_eq!(updated[1].commit, commit(&copy_app));

    // The RUN step ran on the new base.
    let seen = file_in_image(
        &registry.addr,
        &format!("{user}/run-app"),
        &updated[0].digest,
        "seen-at-build",
    )
    .await;
    assert_eq!(seen.as_deref(), Some("base 2\n"));
    let (latest, _) = registry_image_at(&registry.addr, &format!("{user}/run-app"), "latest").await;
    assert_eq!(latest, updated[0].digest);
    // The swapped image has the new base's file and its own.
    let copy = format!("{user}/copy-app");
    let base_file = file_in_image(&registry.addr, &copy, &updated[1].digest, "base-version").await;
    assert_eq!(base_file.as_deref(), Some("base 2\n"));
    let own = file_in_image(&registry.addr, &copy, &updated[1].digest, "app.txt").await;
    assert_eq!(own.as_deref(), Some("copy app\n"));

    // One decision, whichever replica saw it first.
    let decisions = decisions(&url).await;
    assert_eq!(decisions, [(base.clone(), v2.clone(), 2)], "{}", logs());

    // Ours, and the name the workers pulled.
    untag(&format!("{local}1"));
    untag(&format!("{local}2"));
    untag(&base);
    for replica in replicas {
        replica.worker.stop().await;
    }
    registry.stop();
    stack.cleanup().await;
}

/// The notification route answers 401 to a missing or wrong key, 202 to the right one.
async fn refuses_other_keys(api: &Api, key: &str) {
    let url = format!("{}/v1/registry-events", api.base);
    let empty = json!({"events": []});
    for auth in [None, Some("Bearer wrong".to_owned()), Some(key.to_owned())] {
        let mut request = api.client.post(&url).json(&empty);
        if let Some(auth) = &auth {
            request = request.header("Authorization", auth);
        }
        let status = request.send().await.expect("API answers").status();
        assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED, "{auth:?}");
    }
    let right = api
        .client
        .post(&url)
        .header("Authorization", format!("Bearer {key}"))
        .json(&empty)
        .send()
        .await
        .expect("API answers");
    assert_eq!(right.status(), reqwest::StatusCode::ACCEPTED);
}

/// Whether the base image is the one the registry serves under `digest`.
fn known_as(base: &image_builder::events::BaseImage, digest: &str) -> bool {
    base.digest == digest || base.also.iter().any(|d| d == digest)
}

/// Builds `local<version>` (a file /base-version saying "base <version>") and pushes it as
/// `remote`; returns the digest the registry stores.
fn push_base(local: &str, version: &str, remote: &str) -> String {
    let dir = tempfile::tempdir().expect("context");
    std::fs::write(
        dir.path().join("Containerfile"),
        "FROM localhost/busybox:latest\nCOPY base-version /base-version\n",
    )
    .expect("containerfile");
    std::fs::write(dir.path().join("base-version"), format!("base {version}\n")).expect("file");
    let name = format!("{local}{version}");
    podman(&[
        "build",
        "--quiet",
        "-t",
        &name,
        &dir.path().to_string_lossy(),
    ]);
    let digest_file = dir.path().join("digest");
    podman(&[
        "push",
        "--tls-verify=false",
        "--digestfile",
        &digest_file.to_string_lossy(),
        &name,
        &format!("docker://{remote}"),
    ]);
    read_trimmed(&digest_file)
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("digest file")
        .trim()
        .to_owned()
}

/// The content of `path` in image `name@digest`, read from its layers (the last one wins).
async fn file_in_image(registry: &str, name: &str, digest: &str, path: &str) -> Option<String> {
    use std::io::Read;
    let client = reqwest::Client::new();
    let manifest: serde_json::Value = client
        .get(format!("http://{registry}/v2/{name}/manifests/{digest}"))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .expect("manifest")
        .json()
        .await
        .expect("manifest JSON");
    let mut found = None;
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let blob = layer["digest"].as_str().expect("layer digest");
        let raw = client
            .get(format!("http://{registry}/v2/{name}/blobs/{blob}"))
            .send()
            .await
            .expect("blob")
            .bytes()
            .await
            .expect("blob bytes");
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(raw.as_ref())
            .read_to_end(&mut tar)
            .expect("layer gunzips");
        for (entry, data) in valid_tar_entries(&tar).expect("valid tar") {
            if entry.trim_start_matches("./").trim_start_matches('/') == path {
                found = Some(String::from_utf8_lossy(&data).into_owned());
            }
        }
    }
    found
}

/// `base_moves` as the shared store holds it: (reference, digest, rebuilds published).
async fn decisions(url: &str) -> Vec<(String, String, i64)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("store");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows: Vec<(String, String, Option<i64>)> =
            sqlx::query_as("SELECT reference, digest, rebuilds FROM base_moves")
                .fetch_all(&mut conn)
                .await
                .expect("query");
        // `rebuilds` is written after the last publish, which the rebuilds' events can beat.
        if rows.iter().all(|r| r.2.is_some()) || Instant::now() > deadline {
            return rows
                .into_iter()
                .map(|(r, d, n)| (r, d, n.unwrap_or(-1)))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
