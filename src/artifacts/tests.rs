//! `export_all` over the in-memory registry: a two-platform index (and an attestation entry,
//! skipped), a referrers tag that already lists someone else's referrer, and a second export of
//! the same image that must change nothing.

use std::io::Read;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

use super::*;
use crate::redact::Redactor;
use crate::testing::FakeRegistry;

const REPO: &str = "u1/app";

/// A gzip layer with one file.
fn layer(path: &str, body: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, path, body.as_bytes())
        .expect("append");
    tar.into_inner().expect("tar").finish().expect("gzip")
}

fn manifest_of(value: &Value) -> Manifest {
    let bytes = serde_json::to_vec(value).expect("json");
    Manifest {
        media_type: value["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: content_digest(&bytes),
        bytes,
    }
}

async fn blob(registry: &FakeRegistry, bytes: Vec<u8>) -> String {
    let digest = content_digest(&bytes);
    registry
        .upload_blob(REPO, &digest, bytes)
        .await
        .expect("upload");
    digest
}

/// An image for `arch` whose /app/out.txt says `body`, stored; returns its manifest.
async fn platform_image(registry: &FakeRegistry, arch: &str, body: &str) -> Manifest {
    let config = blob(
        registry,
        serde_json::to_vec(&json!({"os": "linux", "architecture": arch})).expect("json"),
    )
    .await;
    let layer = blob(registry, layer("app/out.txt", body)).await;
    let manifest = manifest_of(&json!({
        "schemaVersion": 2,
        "mediaType": oci::IMAGE_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": [{"mediaType": oci::TAR_GZIP, "digest": layer, "size": 1}],
    }));
    registry.put(REPO, &manifest);
    manifest
}

fn unpacked(bytes: &[u8]) -> String {
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut entry = archive
        .entries()
        .expect("entries")
        .next()
        .expect("one entry")
        .expect("entry");
    assert_eq!(entry.path().expect("path").to_string_lossy(), "out.txt");
    let mut body = String::new();
    entry.read_to_string(&mut body).expect("body");
    body
}

#[tokio::test]
async fn every_platform_of_an_index_gets_its_artifact_listed_under_the_referrers_tag() {
    let registry = FakeRegistry::default();
    let amd = platform_image(&registry, "amd64", "x86").await;
    let arm = platform_image(&registry, "arm64", "arm").await;
    let entry = |m: &Manifest, arch: &str| {
        json!({"mediaType": oci::IMAGE_MANIFEST, "digest": m.digest, "size": m.bytes.len(),
               "platform": {"os": if arch == "unknown" { "unknown" } else { "linux" }, "architecture": arch}})
    };
    let index = manifest_of(&json!({
        "schemaVersion": 2,
        "mediaType": oci::IMAGE_INDEX,
        "manifests": [entry(&amd, "amd64"), entry(&arm, "arm64"), entry(&amd, "unknown")],
    }));
    registry.put(REPO, &index);
    // A referrer someone else listed already (a signature) stays listed.
    let foreign = manifest_of(&json!({
        "schemaVersion": 2,
        "mediaType": oci::IMAGE_INDEX,
        "manifests": [{"mediaType": oci::IMAGE_MANIFEST, "digest": "sha256:5ig", "size": 3}],
    }));
    let tag = referrers_tag(&index.digest);
    registry.tag(REPO, &tag, &foreign).await.expect("tag");

    let scratch = tempfile::tempdir().expect("scratch");
    let specs = vec![ArtifactSpec {
        name: crate::request::ArtifactName::parse("out").expect("name"),
        path: crate::request::ImagePath::parse("/app/out.txt").expect("path"),
    }];
    let log = BuildLog::new(Redactor::default());
    let export = Export {
        registry: &registry,
        repository: REPO,
        image: &index,
        specs: &specs,
        max_bytes: 1 << 20,
        scratch_dir: scratch.path(),
        log: &log,
        recorded: &[],
    };
    let stored = export_all(&export).await.expect("exported");
    let platforms: Vec<&str> = stored.iter().map(|a| a.platform.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    for (artifact, body) in stored.iter().zip(["x86", "arm"]) {
        let manifest = registry
            .manifest(REPO, &artifact.digest)
            .await
            .expect("lookup")
            .expect("stored");
        let document: Value = serde_json::from_slice(&manifest.bytes).expect("json");
        assert_eq!(document["subject"]["digest"], index.digest.as_str());
        assert_eq!(document["subject"]["mediaType"], oci::IMAGE_INDEX);
        assert_eq!(
            document["annotations"][oci::PLATFORM],
            artifact.platform.as_str()
        );
        let bytes = registry
            .blob(REPO, &artifact.blob_digest)
            .await
            .expect("lookup")
            .expect("blob");
        assert_eq!(bytes.len() as u64, artifact.size);
        assert_eq!(unpacked(&bytes), body);
    }
    let empty = registry
        .blob(REPO, &content_digest(oci::EMPTY))
        .await
        .expect("lookup");
    assert_eq!(empty.as_deref(), Some(oci::EMPTY));

    let listed = |m: Option<Manifest>| -> Vec<String> {
        let m = m.expect("the referrers tag");
        let v: Value = serde_json::from_slice(&m.bytes).expect("json");
        v["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .filter_map(|d| d["digest"].as_str().map(str::to_owned))
            .collect()
    };
    let first = registry.manifest(REPO, &tag).await.expect("lookup");
    let first_digest = first.as_ref().map(|m| m.digest.clone());
    let mut expected = vec!["sha256:5ig".to_owned()];
    expected.extend(stored.iter().map(|a| a.digest.clone()));
    assert_eq!(listed(first), expected);

    // The same export again (a cached answer): the same artifacts, the index unchanged.
    let writes = registry.tags_written().len();
    let again = export_all(&export).await.expect("exported again");
    assert_eq!(again, stored);
    let second = registry.manifest(REPO, &tag).await.expect("lookup");
    assert_eq!(second.map(|m| m.digest), first_digest);
    let rewritten: Vec<_> = registry.tags_written()[writes..]
        .iter()
        .filter(|(_, t)| *t == tag)
        .cloned()
        .collect();
    assert!(
        rewritten.is_empty(),
        "an unchanged index is not written: {rewritten:?}"
    );

    // Recorded and still in the registry: reused, nothing read or written.
    let writes = registry.tags_written().len();
    let reusing = Export {
        recorded: &stored,
        ..export
    };
    assert_eq!(export_all(&reusing).await.expect("reused"), stored);
    assert_eq!(registry.tags_written().len(), writes);
    assert!(
        log.tail(1)[0].contains("already stored"),
        "{:?}",
        log.tail(1)
    );
    // A record whose manifest the registry lacks is exported again.
    let mut gone = stored.clone();
    gone[1].digest = content_digest(b"not in the registry");
    let stale = Export {
        recorded: &gone,
        ..reusing
    };
    assert_eq!(export_all(&stale).await.expect("exported"), stored);
    assert!(
        !log.tail(1)[0].contains("already stored"),
        "{:?}",
        log.tail(1)
    );
}

#[tokio::test]
async fn a_path_the_image_lacks_is_the_users_fault_naming_it() {
    let registry = FakeRegistry::default();
    let image = platform_image(&registry, "amd64", "x86").await;
    let scratch = tempfile::tempdir().expect("scratch");
    let specs = vec![ArtifactSpec {
        name: crate::request::ArtifactName::parse("dist").expect("name"),
        path: crate::request::ImagePath::parse("/app/dist").expect("path"),
    }];
    let log = BuildLog::new(Redactor::default());
    let export = Export {
        registry: &registry,
        repository: REPO,
        image: &image,
        specs: &specs,
        max_bytes: 1 << 20,
        scratch_dir: scratch.path(),
        log: &log,
        recorded: &[],
    };
    let err = export_all(&export).await.expect_err("missing");
    assert_eq!(err.classify(), crate::error::Fault::User);
    let reason = err.chain();
    assert!(reason.contains("/app/dist (artifacts[0].path"), "{reason}");
    assert!(
        registry
            .manifest(REPO, &referrers_tag(&image.digest))
            .await
            .expect("lookup")
            .is_none(),
        "nothing is listed for a failed export"
    );
}
