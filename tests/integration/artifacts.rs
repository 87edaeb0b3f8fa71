//! Artifacts end to end: the real binary in `run` mode builds with podman from the local git
//! server, exports the requested paths from the image's layers in the registry, stores them there
//! as OCI artifacts, records them and serves them over HTTP. What is served is compared with
//! the image itself as podman mounts it, not with a hard-coded listing alone.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use image_builder::error::Fault;
use image_builder::events::{Event, ImageUpdated};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::api::postgres_database;
use crate::support::{Api, GitServer, RepoFixture, Stack, image_tree, unique};

const BUILD_TIMEOUT: Duration = Duration::from_secs(180);
const REGISTRY: &str = "http://127.0.0.1:5000";

/// Files written by one step, then changed by the next: a deleted file, an overwritten file, a
/// directory replaced, symlinks (one pointing out of the image), and a file for the size bound.
const DOCKERFILE: &str = "FROM localhost/busybox:latest
RUN mkdir -p /app/dist/sub && echo one > /app/dist/a.txt && echo gone > /app/dist/gone.txt \\
 && echo old > /app/dist/over.txt && echo deep > /app/dist/sub/deep.txt \\
 && ln -s a.txt /app/dist/link && ln -s /etc/passwd /app/dist/abs && chmod 600 /app/dist/a.txt
RUN rm /app/dist/gone.txt && echo new > /app/dist/over.txt && rm -rf /app/dist/sub \\
 && mkdir /app/dist/sub && echo fresh > /app/dist/sub/fresh.txt
RUN dd if=/dev/zero of=/app/big.bin bs=1024 count=256 2>/dev/null
";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An artifact's entries in the form `image_tree::tree` gives the image's, keyed by the path in
/// the image (`/app/dist/a.txt` for `dist/a.txt` of `/app/dist`).
fn artifact_tree(tar_gz: &[u8], parent: &str) -> image_tree::Tree {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tar_gz));
    let mut out = image_tree::Tree::new();
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        let name = entry.path().expect("a path").to_string_lossy().into_owned();
        let header = entry.header().clone();
        let owner = format!(
            "{:o} {}:{}",
            header.mode().expect("mode") & 0o7777,
            header.uid().expect("uid"),
            header.gid().expect("gid")
        );
        let kind = header.entry_type();
        let shown = if kind.is_symlink() {
            let target = entry.link_name().expect("link").expect("a target");
            format!("symlink -> {}", target.display())
        } else if kind.is_dir() {
            format!("dir {owner}")
        } else if kind.is_hard_link() {
            let target = entry.link_name().expect("link").expect("a target");
            let digest = by_name
                .get(&target.to_string_lossy().into_owned())
                .cloned()
                .expect("a hard link to an earlier file");
            format!("file {owner} {digest}")
        } else {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("file bytes");
            let digest = hex::encode(Sha256::digest(&bytes))[..16].to_owned();
            by_name.insert(name.clone(), digest.clone());
            format!("file {owner} {digest}")
        };
        let key = format!("{parent}/{}", name.trim_end_matches('/'));
        assert!(out.insert(key.clone(), shown).is_none(), "{key} twice");
    }
    out
}

/// The image's own entries at and beneath `path`.
fn image_subtree(tree: &image_tree::Tree, path: &str) -> image_tree::Tree {
    tree.iter()
        .filter(|(k, _)| *k == path || k.starts_with(&format!("{path}/")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A document from the registry itself.
async fn registry_json(repository: &str, reference: &str, accept: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{REGISTRY}/v2/{repository}/manifests/{reference}"))
        .header("accept", accept)
        .send()
        .await
        .expect("the registry answers");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{repository}:{reference}"
    );
    response.json().await.expect("JSON")
}

async fn download(api: &Api, path: &str) -> (StatusCode, Vec<u8>, reqwest::header::HeaderMap) {
    let response = api
        .request(Method::GET, path)
        .send()
        .await
        .expect("API answers");
    let status = response.status();
    let headers = response.headers().clone();
    (
        status,
        response.bytes().await.expect("body").to_vec(),
        headers,
    )
}

fn expect_image(event: Event, api: &Api) -> ImageUpdated {
    match event {
        Event::ImageUpdated(updated) => updated,
        other => panic!(
            "expected image.updated, got {other:?}\n{}",
            api.worker.log()
        ),
    }
}

/// Build over HTTP with two artifacts (a directory changed by later layers, and busybox's
/// binary, a hard link in its layer); the event, the records, the registry documents and the
/// downloaded bytes agree with each other and with the image podman mounts. PostgreSQL store.
#[tokio::test(flavor = "multi_thread")]
async fn artifact_round_trip_matches_the_image() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/app");
    repo.commit(&[("Dockerfile", DOCKERFILE)], "one");
    repo.push();
    let mut stack = Stack::new().await;
    let url = postgres_database().await;
    let api = Api::spawn_scoped(
        &stack,
        &git,
        &[("IMAGE_BUILDER__STORE__URL", url.as_str())],
        &[("read", "someone-else")],
    )
    .await;
    let user = unique("u");
    let id = unique("art");
    let request = json!({"id": id, "repo": "acme/app", "user_id": user, "artifacts": [
        {"name": "dist", "path": "/app/./dist/"},
        {"name": "busybox", "path": "/bin/busybox"},
    ]});
    let (status, body) = api.post_json("/v1/builds", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let updated = expect_image(stack.outcome(&id, BUILD_TIMEOUT).await, &api);
    let names: Vec<(&str, &str)> = updated
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.path.as_str()))
        .collect();
    assert_eq!(names, [("dist", "/app/dist"), ("busybox", "/bin/busybox")]);
    api.wait_state(&id, "succeeded", Duration::from_secs(10))
        .await;

    // The records say what the event said.
    let (status, listed) = api.get_json(&format!("/v1/builds/{id}/artifacts")).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let listed = listed["artifacts"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for art in &updated.artifacts {
        let row = listed
            .iter()
            .find(|r| r["name"] == art.name.as_str())
            .unwrap_or_else(|| panic!("{} listed", art.name));
        assert_eq!(row["digest"], art.digest.as_str());
        assert_eq!(row["blob_digest"], art.blob_digest.as_str());
        assert_eq!(row["size"], art.size);
        assert_eq!(row["platform"], art.platform.as_str());
        assert_eq!(
            row["reference"],
            format!("{}@{}", updated.image, art.digest).as_str()
        );
    }

    // The registry holds each as an artifact of the image, listed under the referrers tag.
    let repository = updated
        .image
        .strip_prefix("127.0.0.1:5000/")
        .expect("image in the test registry");
    let oci_manifest = "application/vnd.oci.image.manifest.v1+json";
    for art in &updated.artifacts {
        let manifest = registry_json(repository, &art.digest, oci_manifest).await;
        assert_eq!(
            manifest["artifactType"],
            "application/vnd.image-builder.artifact.v1"
        );
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.empty.v1+json"
        );
        assert_eq!(manifest["subject"]["digest"], updated.digest.as_str());
        assert_eq!(manifest["layers"][0]["digest"], art.blob_digest.as_str());
        assert_eq!(
            manifest["layers"][0]["annotations"]["org.opencontainers.image.title"],
            format!("{}.tar.gz", art.name).as_str()
        );
    }
    let tag = updated.digest.replacen(':', "-", 1);
    let index = registry_json(repository, &tag, "application/vnd.oci.image.index.v1+json").await;
    let referrers: Vec<&str> = index["manifests"]
        .as_array()
        .map(|m| m.iter().filter_map(|d| d["digest"].as_str()).collect())
        .unwrap_or_default();
    for art in &updated.artifacts {
        assert!(referrers.contains(&art.digest.as_str()), "{index}");
    }

    // The bytes served are the blob, and the blob is the image's own files.
    let pulled = format!("{}@{}", updated.image, updated.digest);
    image_tree::podman(&["pull", "-q", "--tls-verify=false", &pulled]);
    let image = image_tree::tree(&pulled);
    for (art, parent) in updated.artifacts.iter().zip(["/app", "/bin"]) {
        let (status, bytes, headers) =
            download(&api, &format!("/v1/builds/{id}/artifacts/{}", art.name)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sha256(&bytes), art.blob_digest);
        assert_eq!(bytes.len() as u64, art.size);
        assert_eq!(
            headers
                .get("content-disposition")
                .and_then(|v| v.to_str().ok()),
            Some(format!("attachment; filename=\"{}.tar.gz\"", art.name).as_str())
        );
        let served = artifact_tree(&bytes, parent);
        let expected = image_subtree(&image, &art.path);
        assert!(!expected.is_empty(), "{} is in the image", art.path);
        assert_eq!(
            image_tree::differences(&expected, &served),
            Vec::<String>::new(),
            "{} differs from the image",
            art.name
        );
    }
    // ORAS, the ecosystem's artifact client, pulls it by its reference: the same files.
    let dist = &updated.artifacts[0];
    let (_, served, _) = download(&api, &format!("/v1/builds/{id}/artifacts/dist")).await;
    let pulled_dir = tempfile::tempdir().expect("oras out");
    let reference = format!("{}@{}", updated.image, dist.digest);
    let oras =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/oras-pull.sh"))
            .arg(&reference)
            .arg(pulled_dir.path())
            .output()
            .expect("oras-pull.sh runs");
    assert!(
        oras.status.success(),
        "oras pull {reference}: {}",
        String::from_utf8_lossy(&oras.stderr)
    );
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&served[..]));
    let mut files = 0;
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().expect("a path").into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("file bytes");
        let pulled = std::fs::read(pulled_dir.path().join(&name))
            .unwrap_or_else(|e| panic!("oras did not pull {}: {e}", name.display()));
        assert_eq!(pulled, bytes, "{} differs", name.display());
        files += 1;
    }
    assert!(files > 0, "the dist artifact holds files");

    // And what the Dockerfile did, spelled out.
    let (_, dist, _) = download(&api, &format!("/v1/builds/{id}/artifacts/dist")).await;
    let served = artifact_tree(&dist, "/app");
    assert!(!served.contains_key("/app/dist/gone.txt"), "{served:?}");
    assert!(!served.contains_key("/app/dist/sub/deep.txt"), "{served:?}");
    assert!(served.contains_key("/app/dist/sub/fresh.txt"), "{served:?}");
    assert_eq!(served["/app/dist/abs"], "symlink -> /etc/passwd");
    assert_eq!(served["/app/dist/link"], "symlink -> a.txt");
    assert!(
        served["/app/dist/a.txt"].starts_with("file 600 "),
        "{served:?}"
    );
    let over = hex::encode(Sha256::digest(b"new\n"));
    assert!(
        served["/app/dist/over.txt"].ends_with(&over[..16]),
        "{served:?}"
    );

    // Not found, and not another tenant's.
    let (status, _, _) = download(&api, &format!("/v1/builds/{id}/artifacts/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let other = api.as_key(&api.scoped[0]);
    let (status, body) = other.get_json(&format!("/v1/builds/{id}/artifacts")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = other
        .get_json("/v1/artifacts?repo=acme/app&name=dist")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    image_tree::untag(&pulled);
    stack.cleanup().await;
}

/// `GET /v1/artifacts`: 404 without a build; with `build=true` a 202 naming a queued build (the
/// same one when asked again meanwhile); once it succeeded, 200 with the artifact. A request
/// for another artifact of the image already built is answered from the registry (cached) and
/// still gets its artifact: the list is not part of the build key.
#[tokio::test(flavor = "multi_thread")]
async fn get_or_build_queues_once_then_answers_with_the_artifact() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/site");
    let commit = repo.commit(&[("Dockerfile", DOCKERFILE)], "one");
    repo.push();
    let mut stack = Stack::new().await;
    let api = Api::spawn(&stack, &git, &[]).await;
    let user = unique("u");
    let query = format!("/v1/artifacts?repo=acme/site&ref=main&name=dist&user_id={user}");

    let (status, body) = api.get_json(&query).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api.get_json(&format!("{query}&build=true")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "path");
    let (status, body) = api
        .get_json(&format!("{query}&build=true&path=/app/../../etc"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "path");

    let (status, queued) = api
        .get_json(&format!("{query}&build=true&path=/app/dist"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    let id = queued["id"].as_str().expect("a build id").to_owned();
    assert_eq!(
        queued["links"]["artifacts"],
        format!("/v1/builds/{id}/artifacts").as_str()
    );
    let (status, again) = api
        .get_json(&format!("{query}&build=true&path=/app/dist"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(
        again["id"],
        id.as_str(),
        "the pending build is named, not a second one"
    );
    assert_eq!(again["existing"], true);

    let updated = expect_image(stack.outcome(&id, BUILD_TIMEOUT).await, &api);
    assert!(!updated.cached);
    api.wait_state(&id, "succeeded", Duration::from_secs(10))
        .await;
    let (status, found) = api.get_json(&format!("{query}&build=true")).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["build_id"], id.as_str());
    assert_eq!(found["commit"], commit.as_str());
    assert_eq!(found["digest"], updated.artifacts[0].digest.as_str());
    let link = found["links"]["download"].as_str().expect("a link");
    let (status, bytes, _) = download(&api, link).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256(&bytes), updated.artifacts[0].blob_digest);

    // Same image configuration, another artifact list: cached, and exported all the same.
    let cached_id = unique("cached");
    let request = json!({"id": cached_id, "repo": "acme/site", "ref": "main", "user_id": user,
        "artifacts": [{"name": "dist", "path": "/app/dist"}, {"name": "over", "path": "/app/dist/over.txt"}]});
    let (status, body) = api.post_json("/v1/builds", &request).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let cached = expect_image(stack.outcome(&cached_id, BUILD_TIMEOUT).await, &api);
    assert!(cached.cached, "the image was built already");
    assert_eq!(cached.digest, updated.digest);
    assert_eq!(cached.artifacts.len(), 2);
    assert_eq!(
        cached.artifacts[0].digest, updated.artifacts[0].digest,
        "the same path of the same image is the same artifact"
    );
    api.wait_state(&cached_id, "succeeded", Duration::from_secs(10))
        .await;
    // Once more: every artifact is recorded for this image and still there, so it is reused
    // without reading a layer.
    let third_id = unique("again");
    let mut third = request.clone();
    third["id"] = json!(third_id);
    let (status, body) = api.post_json("/v1/builds", &third).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let reused = expect_image(stack.outcome(&third_id, BUILD_TIMEOUT).await, &api);
    assert_eq!(reused.artifacts, cached.artifacts);
    let logs = api.text(&format!("/v1/builds/{third_id}/logs")).await;
    assert!(logs.contains("already stored"), "{logs}");
    let logs = api.text(&format!("/v1/builds/{cached_id}/logs")).await;
    assert!(!logs.contains("already stored"), "{logs}");
    let (_, over, _) = download(&api, &format!("/v1/builds/{cached_id}/artifacts/over")).await;
    let served = artifact_tree(&over, "/app/dist");
    let new = hex::encode(Sha256::digest(b"new\n"));
    assert_eq!(served.len(), 1, "{served:?}");
    assert!(
        served["/app/dist/over.txt"].ends_with(&new[..16]),
        "{served:?}"
    );
    stack.cleanup().await;
}

/// A path that leaves the image is refused before any work (API and queue), naming the field;
/// a path the image lacks and an artifact over `artifacts.max_bytes` fail the build as the
/// user's fault, naming the path and the bound.
#[tokio::test(flavor = "multi_thread")]
async fn bad_artifact_paths_are_refused_or_fail_as_the_users_fault() {
    let git = GitServer::start().await;
    let repo = RepoFixture::create(git.root.path(), "acme/tool");
    repo.commit(&[("Dockerfile", DOCKERFILE)], "one");
    repo.push();
    let mut stack = Stack::new().await;
    // /app/big.bin is 256 KiB of zeros: small once compressed, over the bound unpacked.
    let api = Api::spawn(
        &stack,
        &git,
        &[("IMAGE_BUILDER__ARTIFACTS__MAX_BYTES", "200000")],
    )
    .await;
    let user = unique("u");

    let escaping = json!({"repo": "acme/tool", "user_id": user,
        "artifacts": [{"name": "etc", "path": "/app/../../etc"}]});
    let (status, body) = api.post_json("/v1/builds", &escaping).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "artifacts[0].path");
    let rejected_id = unique("esc");
    let mut queued = escaping.clone();
    queued["id"] = json!(rejected_id);
    stack.publish_json(&queued).await;
    match stack.outcome(&rejected_id, BUILD_TIMEOUT).await {
        Event::Rejected(rejected) => {
            assert_eq!(rejected.field.as_deref(), Some("artifacts[0].path"));
            assert_eq!(rejected.fault, Fault::Rejected);
        }
        other => panic!("expected build.rejected, got {other:?}"),
    }

    for (name, path, expected) in [
        ("nope", "/app/nope", "/app/nope"),
        ("big", "/app/big.bin", "artifacts.max_bytes"),
    ] {
        let id = unique(name);
        let request = json!({"id": id, "repo": "acme/tool", "user_id": user,
            "artifacts": [{"name": "dist", "path": "/app/dist"}, {"name": name, "path": path}]});
        let (status, body) = api.post_json("/v1/builds", &request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        match stack.outcome(&id, BUILD_TIMEOUT).await {
            Event::Failed(failed) => {
                assert_eq!(failed.fault, Fault::User, "{}", failed.reason);
                assert!(failed.reason.contains(expected), "{}", failed.reason);
                assert!(failed.reason.contains("artifacts[1]"), "{}", failed.reason);
            }
            other => panic!("expected build.failed, got {other:?}\n{}", api.worker.log()),
        }
        let build = api.wait_state(&id, "failed", Duration::from_secs(10)).await;
        assert_eq!(build["fault"], "user");
        let (_, listed) = api.get_json(&format!("/v1/builds/{id}/artifacts")).await;
        assert_eq!(
            listed["artifacts"],
            json!([]),
            "a failed build records none"
        );
    }
    stack.cleanup().await;
}

/// The download route streams from the registry and checks the digest on the way: a registry
/// that serves other bytes (the lying fake of `registry_client`) gets the response cut off,
/// never a complete body. The record is written straight into the store the API reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_download_whose_blob_is_not_its_digest_is_cut_off() {
    use image_builder::events::{ArtifactRef, BuildRef};
    use image_builder::ports::content_digest;
    use image_builder::store::{BuildState, BuildStore, NewBuild};

    let fake = crate::registry_client::fake::Fake::start().await;
    let git = GitServer::start().await;
    let stack = Stack::new().await;
    let url = postgres_database().await;
    let store = BuildStore::connect(&url).await.expect("store");
    let id = unique("lie");
    let new = NewBuild {
        id: id.clone(),
        request_id: id.clone(),
        user_id: Some("u1".into()),
        repo: Some("acme/app".into()),
        git_ref: Some("main".into()),
        request: json!({}),
        rebuild_of: None,
        fingerprint: Some(id.clone()),
    };
    store
        .create(&new, BuildState::Queued)
        .await
        .expect("create");
    let blob_digest = content_digest(b"the blob");
    let out = ImageUpdated {
        build: BuildRef {
            build_id: id.clone(),
            request_id: id.clone(),
            user_id: Some("u1".into()),
            repo: Some("acme/app".into()),
            git_ref: Some("main".into()),
        },
        commit: "c".repeat(40),
        image: format!("{}/tampered", fake.addr),
        tags: vec![],
        digest: content_digest(b"image"),
        platforms: vec![],
        cached: false,
        duration_ms: 1,
        finished_at: time::OffsetDateTime::now_utc(),
        how: Default::default(),
        why: String::new(),
        bases: Vec::new(),
        artifacts: vec![ArtifactRef {
            name: "dist".into(),
            path: "/app/dist".into(),
            platform: "linux/amd64".into(),
            digest: content_digest(b"manifest"),
            blob_digest: blob_digest.clone(),
            size: 8,
        }],
    };
    store
        .succeeded(&id, 1, &out, None)
        .await
        .expect("succeeded");

    let api = Api::spawn(
        &stack,
        &git,
        &[
            ("IMAGE_BUILDER__STORE__URL", url.as_str()),
            ("IMAGE_BUILDER__REGISTRY__HOST", fake.addr.as_str()),
        ],
    )
    .await;
    let (status, listed) = api.get_json(&format!("/v1/builds/{id}/artifacts")).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["artifacts"][0]["blob_digest"], blob_digest.as_str());
    // The one chunk is held back for the check, so the connection may end before the headers
    // are out; either way no complete response arrives.
    let served = match api
        .request(Method::GET, &format!("/v1/builds/{id}/artifacts/dist"))
        .send()
        .await
    {
        Ok(response) => response.bytes().await.map(|b| b.to_vec()),
        Err(cut) => Err(cut),
    };
    assert!(served.is_err(), "a complete body was served: {served:?}");
    assert!(
        api.worker.log().contains("has digest"),
        "the mismatch is logged:\n{}",
        api.worker.log()
    );
    drop(api);
    stack.cleanup().await;
}
